"""ModelLicense request usage: read from the quota store, written to the license's status
(issue 14).

Every ``usage_status_interval_s`` (default 30 s) the writer lists the licenses and models
it watches and, for each license, reads the license-wide counters and each model's own
from the store the license's models count in (``modelseal.models.quota_budget``: the
oldest model's; with one budget per license they all count there), then:

* writes ``status.usage.requests`` and the ``QuotaExhausted`` condition, only when a figure
  or the condition changed, and at most once per interval per license, so that N licenses
  cause at most N status writes per interval however busy the tenants are. The write carries
  the license's resourceVersion: a concurrent change wins and the next round writes again;
* posts an Event when a window crosses 80% and 100% of its limit (compared with the figures
  last written, whose ``period`` tells a new day or month from the old one);
* sets the Prometheus gauges of usage and remaining quota per tenant and window.

The store is read with the gateway's own counter code (``modelseal.store.redis``, the key
prefix ``redis_key_prefix``) as the chart's Redis user, whose password the operator reads
from ``redis_auth_secret`` and keeps in memory only. The embedded store's counters live in
the model's Pod: the operator asks each model's gateway for them (``GET /usage``,
authenticated, ``modelseal.handlers.usage_pods``) and sums the license-wide counts over the
models' Pods (each gateway counts only its own requests). A license none of whose models
has a running Pod shows QuotaExhausted Unknown (``UsageNotReadable``, saying so); a gateway
that does not answer, Unknown (``QuotaStoreUnavailable``, naming the Pod and the error).

With a usage export token (``usage_export_token_secret``) each round also keeps every
model's copy of it (``handlers/usage_export_secret.py``), which the model's gateway mounts.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge

from modelseal.config import Settings
from modelseal.handlers.usage_export_secret import (
    Source,
    ensure_usage_export_secret,
    read_source,
)
from modelseal.handlers.usage_pods import GatewayUnreadable, GatewayUsageReader
from modelseal.k8s import api as k8s
from modelseal.k8s.api import ApiError, Kube
from modelseal.k8s.cache import slim
from modelseal.models import conditions as cond
from modelseal.models import usage
from modelseal.models.license import check_terms
from modelseal.models.quota_budget import counter_home
from modelseal.models.spec import (
    GROUP,
    LICENSE_KIND,
    LICENSE_PLURAL,
    MODEL_KIND,
    MODEL_PLURAL,
    VERSION,
    LicenseSpec,
    ModelSpec,
    SpecError,
    parse_license,
    parse_model,
)
from modelseal.quota.license import Limits
from modelseal.render.manifests import needs_usage_token
from modelseal.store.base import StoreUnavailable, license_scope, model_scope
from modelseal.store.redis import RedisStore

log = logging.getLogger("modelseal.operator.usage")

MODELS = k8s.custom_kind(MODEL_KIND, GROUP, VERSION, MODEL_PLURAL)
LICENSES = k8s.custom_kind(LICENSE_KIND, GROUP, VERSION, LICENSE_PLURAL)


class PostEvent(Protocol):
    async def __call__(
        self, involved: Mapping[str, str], type_: str, reason: str, message: str
    ) -> None: ...


class UsageMetrics:
    """Gauges per tenant (and license, window), on the operator's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ["namespace", "license", "tenant", "window"]
        self.used = Gauge(
            "modelseal_license_requests_used",
            "Requests counted in the license's quota window (day, month, lifetime), read "
            "from the quota store.",
            labels,
            registry=registry,
        )
        self.remaining = Gauge(
            "modelseal_license_requests_remaining",
            "Requests left in the license's quota window (only windows with a limit).",
            labels,
            registry=registry,
        )
        self.exhausted = Gauge(
            "modelseal_license_quota_exhausted",
            "1 while one of the license's request quotas is used up (QuotaExhausted=True).",
            ["namespace", "license", "tenant"],
            registry=registry,
        )
        self.writes = Counter(
            "modelseal_operator_usage_status_writes_total",
            "ModelLicense status writes made by the usage writer.",
            registry=registry,
        )
        self.read_errors = Counter(
            "modelseal_operator_usage_read_errors_total",
            "Quota store reads of the usage writer that failed.",
            registry=registry,
        )
        self._seen: set[tuple[str, str, str]] = set()

    def show(self, lic: LicenseSpec, figures: Mapping[str, Any] | None, exhausted: bool) -> None:
        who = (lic.namespace, lic.name, lic.tenant)
        self._seen.add(who)
        self.exhausted.labels(*who).set(1 if exhausted else 0)
        for window in usage.Window:
            fig = (figures or {}).get(window.value)
            if not isinstance(fig, Mapping):
                continue
            self.used.labels(*who, window.value).set(int(fig["used"]))
            if "remaining" in fig:
                self.remaining.labels(*who, window.value).set(int(fig["remaining"]))

    def forget_except(self, keep: set[tuple[str, str, str]]) -> None:
        """Drop the series of licenses that are gone (bounded label sets)."""
        for who in self._seen - keep:
            for gauge in (self.used, self.remaining):
                for window in usage.Window:
                    with contextlib.suppress(KeyError):
                        gauge.remove(*who, window.value)
            with contextlib.suppress(KeyError):
                self.exhausted.remove(*who)
        self._seen &= keep


def _ref(body: Mapping[str, Any]) -> dict[str, str]:
    meta = body.get("metadata") or {}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": LICENSE_KIND,
        "name": str(meta.get("name")),
        "namespace": str(meta.get("namespace")),
        "uid": str(meta.get("uid") or ""),
    }


class UsageWriter:
    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        registry: CollectorRegistry,
        event: PostEvent,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.event = event
        self.now = now
        self.monotonic = monotonic
        self.metrics = UsageMetrics(registry)
        self._last_write: dict[str, float] = {}
        self._stores: dict[str, RedisStore] = {}
        self._credentials: tuple[str, str] | None = None
        self.gateways = GatewayUsageReader(kube, settings)
        self._token_problems: dict[str, str] = {}

    # --- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        interval = self.settings.usage_status_interval_s
        first = True
        while True:
            # The first round soon after start, so that a license's first figures (or why
            # there are none) do not wait a whole interval.
            await asyncio.sleep(min(interval, 5.0) if first else interval)
            first = False
            try:
                await self.round()
            except ApiError as exc:
                log.warning("license usage round skipped: %s", exc)
            except Exception:
                log.exception("license usage round failed")

    async def close(self) -> None:
        await self.gateways.close()
        for store in self._stores.values():
            await store.close()
        self._stores.clear()

    async def round(self) -> int:
        """Read every license's usage once and write what changed; returns the writes."""
        try:
            return await self._round()
        finally:
            self.gateways.end_round()

    async def _round(self) -> int:
        writes = 0
        seen: set[tuple[str, str, str]] = set()
        self._credentials = None  # read again each round: a new password is picked up
        model_uids: set[str] = set()
        scopes: list[str | None] = [*self.settings.namespaces] or [None]
        token_source = None
        if needs_usage_token(self.settings):
            token_source = await read_source(self.kube, self.settings)
        for ns in scopes:
            licenses = await self.kube.list(LICENSES, ns)
            models = await self._models_of(ns)
            model_uids |= {str((m.get("metadata") or {}).get("uid")) for m in models}
            if token_source is not None:
                await self.copy_usage_token(models, token_source)
            by_license: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
            for m in models:
                ref = (m.get("spec") or {}).get("licenseRef")
                if isinstance(ref, Mapping):
                    key = (str((m.get("metadata") or {}).get("namespace")), str(ref.get("name")))
                    by_license.setdefault(key, []).append(m)
            for body in licenses:
                meta = body.get("metadata") or {}
                key = (str(meta.get("namespace")), str(meta.get("name")))
                try:
                    lic = parse_license(body)
                except SpecError:
                    continue
                seen.add((lic.namespace, lic.name, lic.tenant))
                if await self.update(body, lic, by_license.get(key, [])):
                    writes += 1
        self.metrics.forget_except(seen)
        self.gateways.forget_except(model_uids)
        live = {f"{n}/{name}" for n, name, _ in seen}
        for gone in set(self._last_write) - live:
            del self._last_write[gone]
        return writes

    # --- the usage export's token ------------------------------------------------------
    async def _models_of(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every model of `namespace` (None: all), without status and managedFields, which
        nothing here reads: listed whole, the 1,000 models of a large cluster were tens of
        megabytes of Python objects at every round."""
        out: list[dict[str, Any]] = []
        async for page in self.kube.list_pages(MODELS, namespace, limit=100):
            out.extend(slim({k: v for k, v in m.items() if k != "status"}) for m in page)
        return out

    async def copy_usage_token(self, bodies: Sequence[Mapping[str, Any]], source: Source) -> None:
        """Each model's copy of the usage export token (``usage_export_secret``), which its
        gateway mounts as a file. A problem (the platform's Secret missing) is logged once
        until it changes; the Pods wait for the Secret meanwhile, and so does no request
        go unbilled: the gateway starts only with its token file."""
        for body in bodies:
            try:
                spec = parse_model(body)
            except SpecError:
                continue
            if (body.get("metadata") or {}).get("deletionTimestamp"):
                continue
            ref = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": MODEL_KIND,
                "name": spec.name,
                "namespace": spec.namespace,
                "uid": spec.uid,
            }
            try:
                problem = await ensure_usage_export_secret(
                    self.kube, self.settings, spec, ref, self.event, source
                )
            except ApiError as exc:
                problem = f"usage export token copy: {exc}"
            if problem and self._token_problems.get(spec.key) != problem:
                log.warning("model %s: %s", spec.key, problem)
            if problem:
                self._token_problems[spec.key] = problem
            else:
                self._token_problems.pop(spec.key, None)

    # --- one license ---------------------------------------------------------------------
    async def update(
        self, body: Mapping[str, Any], lic: LicenseSpec, model_bodies: list[Mapping[str, Any]]
    ) -> bool:
        """Read and, when due and changed, write one license's usage; True if written."""
        status = dict(body.get("status") or {})
        conditions = status.get("conditions")
        if not isinstance(conditions, list) or not conditions:
            return False  # the license reconcile writes the first status
        models: list[ModelSpec] = []
        for m in model_bodies:
            try:
                spec = parse_model(m)
            except SpecError:
                continue
            if check_terms(spec, lic, self.now()).granted:
                models.append(spec)
        reading = await self.read(lic, models)
        figures = usage.usage_figures(lic, reading)
        condition = usage.quota_condition(lic, reading)
        self.metrics.show(lic, figures, condition.status == "True")
        old_usage = status.get("usage") if isinstance(status.get("usage"), Mapping) else {}
        assert isinstance(old_usage, Mapping)
        old_figures = old_usage.get("requests")
        old_figures = old_figures if isinstance(old_figures, Mapping) else None
        old_cond = cond.find(conditions, usage.QUOTA_EXHAUSTED)
        cond_same = old_cond is not None and all(
            old_cond.get(k) == v
            for k, v in (
                ("status", condition.status),
                ("reason", condition.reason),
                ("message", condition.message[: cond.MAX_MESSAGE]),
            )
        )
        keep_figures = figures is None  # nothing read: the last figures stay
        if (keep_figures or usage.same_figures(old_figures, figures)) and cond_same:
            return False
        key = lic.key
        mono = self.monotonic()
        if not usage.write_due(
            self._last_write.get(key), mono, self.settings.usage_status_interval_s
        ):
            return False
        generation = int((body.get("metadata") or {}).get("generation") or 0)
        merged = cond.merge(conditions, [condition], generation, self.now())[0]
        new_conditions = [
            merged if c.get("type") == usage.QUOTA_EXHAUSTED else c for c in conditions
        ]
        if old_cond is None:
            new_conditions.append(merged)
        patch: dict[str, Any] = {
            "metadata": {"resourceVersion": (body.get("metadata") or {}).get("resourceVersion")},
            "status": {"conditions": new_conditions},
        }
        if not keep_figures:
            patch["status"]["usage"] = {"requests": figures}
        try:
            await self.kube.merge_patch(LICENSES, lic.namespace, lic.name, patch, sub="status")
        except ApiError as exc:
            if exc.conflict or exc.not_found:
                return False  # changed or gone meanwhile: the next round sees the new one
            raise
        self._last_write[key] = mono
        self.metrics.writes.inc()
        if figures is not None:
            for crossing in usage.crossings(old_figures, figures):
                await self.event(
                    _ref(body),
                    "Warning",
                    f"QuotaAt{crossing.percent}Percent",
                    crossing.message(lic.name, lic.tenant),
                )
        return True

    # --- the store -----------------------------------------------------------------------
    async def read(self, lic: LicenseSpec, models: list[ModelSpec]) -> usage.Reading:
        now = self.now()
        if not models:
            return usage.Reading(
                now, "", unreadable=True, error="no model is served under this license"
            )
        oldest = min(models, key=lambda m: (m.created or now, m.key))
        home = counter_home(oldest)
        if home.kind != "redis" or not oldest.gateway.redis_url:
            embedded = [m for m in models if counter_home(m).kind == "embedded"]
            return await self.read_gateways(lic, sorted(embedded, key=lambda m: m.key), now)
        sharing = [m for m in models if counter_home(m) == home]
        try:
            store = await self._store(oldest.gateway.redis_url)
            now_ms = int(now.timestamp() * 1000)
            total = await store.usage(license_scope(lic.key, lic.tenant), now_ms)
            per_model: dict[str, usage.Counts] = {}
            for m in sharing:
                # keyed by the ProtectedModel (license_config: model_counters), not modelName
                got = await store.usage(model_scope(lic.key, lic.tenant, m.key, Limits()), now_ms)
                per_model[m.name] = usage.Counts(got.day, got.month, got.total)
        except (StoreUnavailable, ApiError, ValueError) as exc:
            self.metrics.read_errors.inc()
            return usage.Reading(now, home.where, error=f"quota Redis {home.where}: {exc}")
        return usage.Reading(
            now, home.where, usage.Counts(total.day, total.month, total.total), per_model
        )

    async def read_gateways(
        self, lic: LicenseSpec, models: list[ModelSpec], now: datetime
    ) -> usage.Reading:
        """Embedded stores: each model's counters from its own gateway (``usage_pods``)."""
        where = "embedded: " + ", ".join(m.name for m in models)
        try:
            got = await self.gateways.read(lic.key, models)
        except (GatewayUnreadable, ApiError) as exc:
            self.metrics.read_errors.inc()
            return usage.Reading(now, where, error=str(exc))
        if not got.pods:
            return usage.Reading(
                now,
                where,
                unreadable=True,
                error="the counters live in the embedded store inside each model's Pod, and "
                f"no Pod of {', '.join(got.not_running)} runs to be asked",
            )
        t = got.total
        store = f"embedded (gateway {', '.join(got.pods)}"
        if got.not_running:
            store += f"; not running, not counted: {', '.join(got.not_running)}"
        return usage.Reading(
            now,
            store + ")",
            usage.Counts(t.day, t.month, t.lifetime),
            {name: usage.Counts(c.day, c.month, c.lifetime) for name, c in got.models.items()},
        )

    async def _store(self, url: str) -> RedisStore:
        s = self.settings
        username = password = None
        if s.redis_auth_secret:
            if self._credentials is None:
                secret = await self.kube.get(
                    k8s.SECRET, s.redis_auth_secret_namespace, s.redis_auth_secret
                )
                data = (secret or {}).get("data") or {}
                if "password" not in data:
                    raise ValueError(
                        f"Secret {s.redis_auth_secret_namespace}/{s.redis_auth_secret} holds "
                        "no Redis password"
                    )
                self._credentials = (
                    base64.b64decode(data.get("username") or "").decode(),
                    base64.b64decode(data["password"]).decode(),
                )
            username, password = self._credentials
        cache_key = f"{url}\x00{username or ''}\x00{hash(password)}"
        store = self._stores.get(cache_key)
        if store is None:
            for old_key in [k for k in self._stores if k.startswith(f"{url}\x00")]:
                await self._stores.pop(old_key).close()  # credentials changed
            store = RedisStore(
                url,
                prefix=s.redis_key_prefix,
                timeout_s=s.redis_timeout_s,
                username=username or None,
                password=password,
            )
            self._stores[cache_key] = store
        return store
