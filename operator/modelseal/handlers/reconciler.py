"""The operator's reconcile loop for ProtectedModels and ModelLicenses (no kopf here).

Level-triggered: whatever woke it (a watch event on the model, its license or one of its
objects, a timer, a resync), a reconcile reads the current state, decides with the pure
modules (`modelseal.models`, `modelseal.render`) and writes only what differs:

1. the model and its license (and the other models drawing on the license's seats);
2. who runs as the model's ServiceAccount (``<name>-<uid[:8]>``, not guessable before the
   model exists): Pods and workloads the model does not own are intruders
   (`modelseal.models.identity`); their Pods are deleted;
3. the license decision; then Vault: the Transit key must exist, and the model's policy
   and role are created or repaired while the license grants it and no intruder uses the
   account, and withdrawn otherwise (KeyAccessible=False, ServiceAccountInUse);
4. the owned objects (ServiceAccount, triton-control Secret, the quota Redis credentials
   Secret when the gateway needs one, license ConfigMap, Service, NetworkPolicy,
   Deployment): created when missing, put back when they drifted, with
   zero replicas while the model may not run. When it may not run, this comes before the
   Vault withdrawal, so that a Vault outage never keeps it serving;
5. the status (conditions with observedGeneration, endpoint, replicas, served version,
   ServiceAccount), patched only when it changed, with an Event and an audit record per
   decision.

Nothing is written when nothing changed, so a resync or an operator restart costs reads
only. Vault access is never provisioned before kopf's finalizer is on the model, so a
deletion always passes through `delete_model`, which stops serving and then withdraws it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from modelseal.config import Settings
from modelseal.handlers.auditing import Auditor, model_audit_key
from modelseal.handlers.metrics import Metrics
from modelseal.handlers.tenancy import TenancySource
from modelseal.handlers.vaultio import VaultSession
from modelseal.handlers.workqueue import RetryLater, WorkQueue
from modelseal.k8s import api as k8s
from modelseal.k8s.api import ApiError, Kube
from modelseal.models import conditions as cond
from modelseal.models import tenancy
from modelseal.models.identity import (
    REASON_IN_USE,
    IdentityCheck,
    check_identity,
    service_account_of,
)
from modelseal.models.license import LicenseDecision, decide, license_state, license_usage
from modelseal.models.spec import (
    API_VERSION,
    GROUP,
    LICENSE_KIND,
    LICENSE_PLURAL,
    MODEL_KIND,
    MODEL_PLURAL,
    VERSION,
    LicenseSpec,
    ModelSpec,
    ObjectMeta,
    SpecError,
    parse_license,
    parse_meta,
    parse_model,
)
from modelseal.models.status import (
    ARTIFACT_VERIFIED,
    DEGRADED,
    KEY_ACCESSIBLE,
    LICENSE_VALID,
    MODEL_CONDITIONS,
    READY,
    VALID,
    ArtifactState,
    KeyState,
    ModelObservation,
    WorkloadState,
    license_status,
    model_status,
)
from modelseal.render import manifests
from modelseal.render.compare import conflict, differences, update_body
from modelseal.render.model import Rendered, render_model
from modelseal.render.names import (
    ANNOTATION_DIGEST,
    LABEL_MODEL,
    LABEL_VERSION,
    Names,
    names_for,
    parse_vault_name,
    vault_name,
)
from modelseal.render.vault import vault_access
from modelseal.vault import provision
from modelseal.vault.auth import VaultError, VaultUnreachableError

log = logging.getLogger("modelseal.operator")

MODELS = k8s.custom_kind(MODEL_KIND, GROUP, VERSION, MODEL_PLURAL)
LICENSES = k8s.custom_kind(LICENSE_KIND, GROUP, VERSION, LICENSE_PLURAL)
ANNOTATION_RENDERED = "modelseal.io/rendered-hash"
COMPONENT = "modelseal-operator"
#: Conditions whose transitions become Events (and, for the license, audit records).
EVENT_CONDITIONS = (READY, LICENSE_VALID, KEY_ACCESSIBLE, ARTIFACT_VERIFIED, DEGRADED)
APPLY_ORDER = ("ServiceAccount", "ConfigMap", "Service", "NetworkPolicy", "Deployment")
#: How often a model whose ServiceAccount is used by an intruder is checked again (s).
INTRUDER_RECHECK_S = 10.0
#: Key of `_live_objects` for the ServiceAccount named after the model (before issue 12).
LEGACY_ACCOUNT = "LegacyServiceAccount"
#: Key of `_live_objects` for the model's copy of the quota Redis credentials.
REDIS_AUTH = "RedisAuthSecret"


def _now() -> datetime:
    return datetime.now(UTC)


def _ref(kind: str, meta: ObjectMeta | Mapping[str, Any]) -> dict[str, str]:
    if isinstance(meta, ObjectMeta):
        return {
            "apiVersion": API_VERSION,
            "kind": kind,
            "namespace": meta.namespace,
            "name": meta.name,
            "uid": meta.uid,
        }
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "namespace": str(meta.get("namespace", "")),
        "name": str(meta.get("name", "")),
        "uid": str(meta.get("uid", "")),
    }


def _stamp(desired: dict[str, Any]) -> dict[str, Any]:
    """The desired object with a hash of itself in an annotation (tells drift from updates)."""
    digest = hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()[:16]
    out = copy.deepcopy(desired)
    out["metadata"].setdefault("annotations", {})[ANNOTATION_RENDERED] = digest
    return out


def _merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning `old` into `new` (lists are replaced whole)."""
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = _merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif before != value:
            patch[key] = value
    return patch


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        vault: VaultSession,
        metrics: Metrics,
        auditor: Auditor,
        now: Callable[[], datetime] = _now,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.vault = vault
        self.metrics = metrics
        self.auditor = auditor
        self.now = now
        self.tenancy = TenancySource(settings.tenancy_file, settings.model_namespace_label)
        self.finalizer = f"{settings.api_group}/finalizer"
        # Retries back off to 15 s at most: a Vault outage heals within that once it ends.
        self.queue = WorkQueue(
            self._work, concurrency=4, on_depth=metrics.queue_depth.set, max_backoff_s=15.0
        )
        self._locks: dict[str, asyncio.Lock] = {}
        self._model_claims: dict[str, tuple[Any, ...]] = {}
        self._license_seen: dict[str, tuple[Any, ...]] = {}
        self._model_conditions: dict[str, dict[str, str]] = {}
        # (namespace, ServiceAccount) -> model name: which model an account belongs to, so
        # that a Pod or workload appearing with it wakes that model's check at once.
        self._accounts: dict[tuple[str, str], str] = {}

    # --- queue ---------------------------------------------------------------------------
    def enqueue_model(self, namespace: str, name: str, delay: float = 0.0) -> None:
        self.queue.add(f"pm/{namespace}/{name}", delay)

    def workload_seen(self, namespace: str, kind: str, body: Mapping[str, Any]) -> None:
        """A Pod or workload changed: check its model again if it runs as a model's account.

        Cheap (a dict lookup); the reconcile that follows makes the real decision."""
        model = self._accounts.get((namespace, service_account_of(kind, body)))
        if model is not None:
            self.enqueue_model(namespace, model)

    def enqueue_license(self, namespace: str, name: str, delay: float = 0.0) -> None:
        self.queue.add(f"ml/{namespace}/{name}", delay)

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _work(self, key: str) -> float | None:
        kind, namespace, name = key.split("/", 2)
        started = time.monotonic()
        label = "ProtectedModel" if kind == "pm" else "ModelLicense"
        try:
            if kind == "pm":
                async with self._lock(f"{namespace}/{name}"):
                    result = await self.reconcile_model(namespace, name)
            else:
                result = await self.reconcile_license(namespace, name)
        except Exception as exc:
            stage = "kubernetes" if isinstance(exc, ApiError) else "internal"
            self.metrics.errors.labels(label, stage).inc()
            self.metrics.reconciles.labels(label, "error").inc()
            raise
        finally:
            self.metrics.reconcile_seconds.labels(label).observe(time.monotonic() - started)
        self.metrics.reconciles.labels(label, "ok").inc()
        return result

    # --- Events --------------------------------------------------------------------------
    async def event(
        self, involved: Mapping[str, str], type_: str, reason: str, message: str
    ) -> None:
        """Post a core/v1 Event about a custom resource (best effort)."""
        now = self.now()
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{involved['name']}.",
                "namespace": involved["namespace"],
                "labels": {"app.kubernetes.io/managed-by": COMPONENT},
            },
            "involvedObject": dict(involved),
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": COMPONENT,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.kube.create(k8s.EVENT, involved["namespace"], body)
        except ApiError as exc:
            log.warning("could not post Event %s: %s", reason, exc)

    def _log(self, level: int, ref: Mapping[str, str], msg: str, *args: Any) -> None:
        log.log(level, msg, *args, extra={"k8s_ref": dict(ref)})

    # --- ProtectedModel ------------------------------------------------------------------
    async def reconcile_model(self, namespace: str, name: str) -> float | None:
        body = await self.kube.get(MODELS, namespace, name)
        key = f"{namespace}/{name}"
        if body is None:
            self._forget_model(key)
            return None
        meta = parse_meta(body)
        ref = _ref(MODEL_KIND, meta)
        if meta.deleting:
            return None  # the delete handler withdraws access; owners' GC removes the rest
        if self.finalizer not in ((body.get("metadata") or {}).get("finalizers") or []):
            # kopf adds the finalizer first; provisioning waits for it (see module docs).
            self._log(logging.DEBUG, ref, "waiting for the finalizer before reconciling")
            return None
        status_before = dict(body.get("status") or {})
        now = self.now()
        try:
            spec: ModelSpec | None = parse_model(body)
            spec_error = None
        except SpecError as exc:
            spec, spec_error = None, str(exc)

        if spec is None:
            obs = await self._invalid_model(meta, spec_error or "invalid spec")
            await self._write_model_status(body, ref, obs, status_before, now, None)
            return None
        # The platform's tenancy declaration: a key or image the namespace may not use.
        if not_allowed := await self.tenancy.check(spec, self.kube):
            obs = await self._invalid_model(meta, not_allowed, tenancy.REASON_NOT_ALLOWED)
            await self._write_model_status(body, ref, obs, status_before, now, None)
            return None

        names = names_for(namespace, name, meta.uid, self.settings.vault_policy_prefix)
        self._accounts[(namespace, names.service_account)] = name
        lic, lic_error = await self._license_for(spec)
        peers = await self._peers(spec) if lic is not None else []
        decision = decide(
            spec,
            lic,
            peers,
            now,
            lic_error,
            require_durable_quota_state=self.settings.quota_require_durable_state,
        )
        live = await self._live_objects(spec)
        # Who else runs as the model's ServiceAccount (checked before every grant).
        identity, workloads = await self._identity(spec, names.service_account)
        if identity.pods_to_delete:
            await self._delete_intruders(spec, identity, ref)
        preview = render_model(spec, lic, decision.granted, self.settings)
        conflicts = [
            c
            for obj in preview.objects()
            if (found := live.get(obj["kind"])) is not None and (c := conflict(obj, found))
        ]
        secret_live = live.get("Secret")
        secret_name = preview.names.control_secret
        if secret_live is not None:
            c = conflict(manifests.control_secret(spec, self.settings, ""), secret_live)
            if c:
                conflicts.append(c)
        redis_live = live.get(REDIS_AUTH)
        if preview.redis_auth is not None and redis_live is not None:
            blank = dict.fromkeys(manifests.REDIS_AUTH_KEYS, "")
            c = conflict(manifests.redis_auth_secret(spec, self.settings, blank), redis_live)
            if c:
                conflicts.append(c)
        conflict_msg = "; ".join(conflicts) or None

        deployment = live.get("Deployment")
        if not decision.granted or conflict_msg:
            # The model may not run: stop serving first (zero replicas, the license file
            # says revoked so the gateway answers 403 and the unsealer wipes), and only then
            # withdraw Vault, so that a Vault outage never keeps it serving.
            effective = False
            rendered = render_model(spec, lic, effective, self.settings)
            redis_error = None
            if not conflict_msg:
                await self._ensure_control_secret(spec, secret_live, secret_name, ref)
                redis_error = await self._ensure_redis_auth(spec, rendered, redis_live, ref)
                deployment = await self._apply(rendered, live, ref)
            key_state, error = await self._vault_step(spec, decision, conflict_msg, identity, ref)
            error = error or redis_error
        else:
            key_state, error = await self._vault_step(spec, decision, conflict_msg, identity, ref)
            # Vault being down is no license decision: the license stays granted in what the
            # gateway and unsealer read, so running Pods keep serving and new ones wait for
            # Vault. Likewise while an intruder holds the account: the Vault role is gone,
            # the running Pods (which hold their model already) are left as they are.
            hold = key_state.reason in ("VaultUnavailable", "VaultError", REASON_IN_USE)
            effective = key_state.ok or hold
            rendered = render_model(spec, lic, effective, self.settings)
            if hold:
                # Leave the replica count alone.
                keep = int(((deployment or {}).get("spec") or {}).get("replicas") or 0)
                rendered = _with_replicas(rendered, keep)
            await self._ensure_control_secret(spec, secret_live, secret_name, ref)
            # Missing credentials are reported (Degraded) and retried; the Pods wait for the
            # Secret's volume meanwhile (the gateway never runs without them).
            error = error or await self._ensure_redis_auth(spec, rendered, redis_live, ref)
            deployment = await self._apply(rendered, live, ref)
        if not conflict_msg:
            await self._migrate_service_account(spec, live, workloads, ref)

        workload = _workload(deployment, rendered.replicas)
        artifact = await self._artifact(spec, workload)
        obs = ModelObservation(
            meta=meta,
            spec=spec,
            decision=decision,
            key=key_state,
            workload=workload,
            artifact=artifact,
            conflict=conflict_msg,
            error=error,
            endpoint=rendered.endpoint,
            granted_replicas=rendered.replicas,
            service_account=names.service_account,
        )
        await self._write_model_status(body, ref, obs, status_before, now, spec)

        # The license's seat usage follows its models.
        claim = (spec.license_name, spec.serving.replicas, spec.serving.total_gpus, effective)
        if self._model_claims.get(key) != claim:
            self._model_claims[key] = claim
            self.enqueue_license(namespace, spec.license_name)

        if error:
            raise RetryLater(error)
        delay = _seconds_until(decision.next_change, now)
        if not identity.clear:
            # Look again soon: the role comes back as soon as the intruders are gone.
            delay = min(delay, INTRUDER_RECHECK_S) if delay is not None else INTRUDER_RECHECK_S
        return delay

    async def _invalid_model(
        self, meta: ObjectMeta, message: str, reason: str = "InvalidSpec"
    ) -> ModelObservation:
        """A spec the operator cannot act on: no Pods (first), then no Vault access."""
        names = names_for(meta.namespace, meta.name, meta.uid, self.settings.vault_policy_prefix)
        ref = _ref(MODEL_KIND, meta)
        dep = await self.kube.get(k8s.DEPLOYMENT, meta.namespace, names.deployment)
        if dep is not None and _owned(dep, meta.uid) and (dep.get("spec") or {}).get("replicas"):
            await self.kube.merge_patch(
                k8s.DEPLOYMENT, meta.namespace, names.deployment, {"spec": {"replicas": 0}}
            )
            dep = await self.kube.get(k8s.DEPLOYMENT, meta.namespace, names.deployment)
        key = KeyState("False", "AccessWithdrawn", f"no Vault access: {message}")
        error = None
        try:
            await self._withdraw(names.vault_policy, names.vault_role, ref, message)
        except VaultError as exc:
            key = KeyState("Unknown", "VaultUnavailable", str(exc))
            error = str(exc)
        return ModelObservation(
            meta=meta,
            spec=None,
            spec_error=message,
            spec_reason=reason,
            key=key,
            workload=_workload(dep, 0)
            if dep is not None and _owned(dep, meta.uid)
            else WorkloadState(),
            error=error,
            service_account=names.service_account,
        )

    async def _license_for(self, spec: ModelSpec) -> tuple[LicenseSpec | None, str | None]:
        body = await self.kube.get(LICENSES, spec.namespace, spec.license_name)
        if body is None:
            return None, None
        try:
            return parse_license(body), None
        except SpecError as exc:
            return None, str(exc)

    async def _peers(self, spec: ModelSpec) -> list[ModelSpec]:
        peers: list[ModelSpec] = []
        for item in await self.kube.list(MODELS, spec.namespace):
            meta = parse_meta(item)
            if meta.name == spec.name or meta.deleting:
                continue
            try:
                peer = parse_model(item)
            except SpecError:
                continue
            if peer.license_name == spec.license_name:
                peers.append(peer)
        return peers

    async def _live_objects(self, spec: ModelSpec) -> dict[str, dict[str, Any]]:
        names = names_for(spec.namespace, spec.name, spec.uid, self.settings.vault_policy_prefix)
        wanted = {
            "ServiceAccount": (k8s.SERVICE_ACCOUNT, names.service_account),
            # Named after the model, as before issue 12: migrated away (see below).
            LEGACY_ACCOUNT: (k8s.SERVICE_ACCOUNT, spec.name),
            "ConfigMap": (k8s.CONFIG_MAP, names.license_config),
            "Service": (k8s.SERVICE, names.service),
            "NetworkPolicy": (k8s.NETWORK_POLICY, names.network_policy),
            "Deployment": (k8s.DEPLOYMENT, names.deployment),
            "Secret": (k8s.SECRET, names.control_secret),
            REDIS_AUTH: (k8s.SECRET, names.redis_auth_secret),
        }
        results = await asyncio.gather(
            *(self.kube.get(kind, spec.namespace, name) for kind, name in wanted.values())
        )
        return {k: v for k, v in zip(wanted, results, strict=True) if v is not None}

    # --- who runs as the model's ServiceAccount ---------------------------------------------
    async def _identity(
        self, spec: ModelSpec, account: str
    ) -> tuple[IdentityCheck, dict[str, list[dict[str, Any]]]]:
        """List what runs (or would run) Pods as `account` in the model's namespace."""
        ns = spec.namespace
        pods, *lists = await asyncio.gather(
            self.kube.list(k8s.POD, ns, field_selector=f"spec.serviceAccountName={account}"),
            *(self.kube.list(kind, ns) for kind in k8s.WORKLOADS),
        )
        objects: dict[str, list[dict[str, Any]]] = {"Pod": pods}
        for kind, items in zip(k8s.WORKLOADS, lists, strict=True):
            objects[kind.kind] = items
        names = names_for(ns, spec.name, spec.uid, self.settings.vault_policy_prefix)
        return check_identity(account, spec.uid, names.deployment, objects), objects

    async def _delete_intruders(
        self, spec: ModelSpec, identity: IdentityCheck, ref: Mapping[str, str]
    ) -> None:
        """Delete Pods that run as the model's ServiceAccount without being the model's."""
        for name, uid in identity.pods_to_delete:
            try:
                gone = await self.kube.delete(k8s.POD, spec.namespace, name, uid=uid or None)
            except ApiError as exc:
                if exc.conflict:  # another Pod of that name by now: the next check sees it
                    continue
                raise
            if not gone:
                continue
            self.metrics.drift_repairs.labels("Pod").inc()
            self._log(
                logging.WARNING,
                ref,
                "deleted Pod %s: it ran as the model's ServiceAccount %s",
                name,
                identity.service_account,
            )
            self.auditor.record(
                "identity.intruder_deleted",
                dict(ref),
                pod=name,
                service_account=f"{spec.namespace}/{identity.service_account}",
            )
            await self.event(
                ref,
                "Warning",
                "IntruderDeleted",
                f"deleted Pod {name}: it ran as the model's ServiceAccount "
                f"{identity.service_account} without belonging to the model",
            )

    async def _migrate_service_account(
        self,
        spec: ModelSpec,
        live: Mapping[str, dict[str, Any]],
        workloads: Mapping[str, list[dict[str, Any]]],
        ref: Mapping[str, str],
    ) -> None:
        """Delete the ServiceAccount named after the model (before issue 12) once none of the
        model's own Pods runs as it any more; only when the model owns it."""
        legacy = live.get(LEGACY_ACCOUNT)
        if legacy is None or not _owned(legacy, spec.uid):
            return
        names = names_for(spec.namespace, spec.name, spec.uid, self.settings.vault_policy_prefix)
        pods = await self.kube.list(
            k8s.POD, spec.namespace, field_selector=f"spec.serviceAccountName={spec.name}"
        )
        objects = {**workloads, "Pod": pods}
        still = check_identity(spec.name, spec.uid, names.deployment, objects).own_pods
        if still:
            return
        uid = str((legacy.get("metadata") or {}).get("uid") or "") or None
        try:
            gone = await self.kube.delete(k8s.SERVICE_ACCOUNT, spec.namespace, spec.name, uid=uid)
        except ApiError as exc:
            if exc.conflict:
                return
            raise
        if gone:
            await self.event(
                ref,
                "Normal",
                "ServiceAccountMigrated",
                f"ServiceAccount {spec.name} replaced by {names.service_account}",
            )

    # --- Vault ---------------------------------------------------------------------------
    async def _withdraw(
        self, policy: str, role: str, ref: Mapping[str, str], why: str
    ) -> provision.Change:
        mount = self.settings.vault_kubernetes_mount
        change = await self.vault.run(
            "withdraw", lambda c: provision.withdraw_access(c, mount, policy, role)
        )
        if change.changed:
            if change.role_deleted:
                self.metrics.vault_writes.labels("role_delete").inc()
            if change.policy_deleted:
                self.metrics.vault_writes.labels("policy_delete").inc()
            self._log(logging.INFO, ref, "Vault access withdrawn (%s): role %s", why, role)
            self.auditor.record(
                "key_access.withdrawn",
                dict(ref),
                vault_role=role,
                vault_policy=policy,
                reason=why,
            )
            await self.event(ref, "Normal", "VaultAccessWithdrawn", f"role {role} removed: {why}")
        return change

    async def _vault_step(
        self,
        spec: ModelSpec,
        decision: LicenseDecision,
        conflict_msg: str | None,
        identity: IdentityCheck,
        ref: Mapping[str, str],
    ) -> tuple[KeyState, str | None]:
        access = vault_access(spec, self.settings)
        account = str(access.role["bound_service_account_names"][0])  # type: ignore[index]
        s = self.settings
        try:
            if not decision.granted or conflict_msg:
                why = decision.message if not decision.granted else (conflict_msg or "")
                await self._withdraw(access.policy_name, access.role_name, ref, why)
                return KeyState("False", "AccessWithdrawn", f"no Vault role while: {why}"), None
            if not identity.clear:
                # Never grant (and withdraw) while a workload we do not own uses the account.
                message = identity.message()
                await self._withdraw(access.policy_name, access.role_name, ref, message)
                return KeyState("False", REASON_IN_USE, message), None
            exists = await self.vault.run(
                "key_check",
                lambda c: provision.transit_key_exists(c, s.vault_transit_mount, spec.transit_key),
            )
            if not exists:
                await self._withdraw(
                    access.policy_name, access.role_name, ref, "Transit key missing"
                )
                return (
                    KeyState(
                        "False",
                        "KeyNotFound",
                        f"Transit key {s.vault_transit_mount}/{spec.transit_key} does not exist "
                        f"in Vault at {s.vault_addr}",
                    ),
                    None,
                )
            change = await self.vault.run(
                "provision",
                lambda c: provision.ensure_access(
                    c,
                    s.vault_kubernetes_mount,
                    access.policy_name,
                    access.policy,
                    access.role_name,
                    access.role,
                ),
            )
            if change.changed:
                if change.policy_written:
                    self.metrics.vault_writes.labels("policy_write").inc()
                if change.role_written:
                    self.metrics.vault_writes.labels("role_write").inc()
                self._log(logging.INFO, ref, "Vault access provisioned: role %s", access.role_name)
                self.auditor.record(
                    "key_access.provisioned",
                    dict(ref),
                    tenant=spec.tenant,
                    license=spec.license_name,
                    vault_role=access.role_name,
                    vault_policy=access.policy_name,
                    transit_key=f"{s.vault_transit_mount}/{spec.transit_key}",
                    service_account=f"{spec.namespace}/{account}",
                    token_ttl=access.role["token_ttl"],
                )
                await self.event(
                    ref,
                    "Normal",
                    "VaultAccessProvisioned",
                    f"role {access.role_name} (ServiceAccount {spec.namespace}/{account}) may "
                    f"decrypt with {s.vault_transit_mount}/{spec.transit_key} only",
                )
            return (
                KeyState(
                    "True",
                    "KeyProvisioned",
                    f"role {access.role_name} may decrypt with "
                    f"{s.vault_transit_mount}/{spec.transit_key} only",
                    role=access.role_name,
                ),
                None,
            )
        except VaultUnreachableError as exc:
            self.metrics.errors.labels("ProtectedModel", "vault").inc()
            return KeyState("Unknown", "VaultUnavailable", str(exc)), str(exc)
        except VaultError as exc:
            self.metrics.errors.labels("ProtectedModel", "vault").inc()
            return KeyState("Unknown", "VaultError", str(exc)), str(exc)

    # --- objects -------------------------------------------------------------------------
    async def _ensure_control_secret(
        self, spec: ModelSpec, live: dict[str, Any] | None, name: str, ref: Mapping[str, str]
    ) -> None:
        """The random token for Triton's restricted APIs (created once, never compared) and
        the gateway's audit checkpoint key (derived from the platform key and put back when
        it differs; without one, random and made once). Values are never logged."""
        key, audit = manifests.CONTROL_TOKEN_KEY, manifests.AUDIT_KEY_KEY
        data = (live or {}).get("data") or {}
        have = {k: base64.b64decode(v).decode() for k, v in data.items() if k in (key, audit)}
        want_audit = model_audit_key(self.settings, spec.namespace, spec.name)
        if (
            live is not None
            and key in have
            and have.get(audit)
            and (want_audit is None or have[audit] == want_audit)
        ):
            return
        token = have.get(key) or secrets.token_hex(32)
        audit_key = want_audit or have.get(audit) or secrets.token_hex(32)
        desired = manifests.control_secret(spec, self.settings, token, audit_key)
        if live is None:
            await self.kube.create(k8s.SECRET, spec.namespace, desired)
        else:
            body = update_body(desired, live)
            body["stringData"] = desired["stringData"]
            await self.kube.replace(k8s.SECRET, spec.namespace, name, body)
            await self.event(
                ref, "Warning", "DriftRepaired", f"Secret {name} lost or changed a key: put back"
            )

    async def _ensure_redis_auth(
        self,
        spec: ModelSpec,
        rendered: Rendered,
        live: dict[str, Any] | None,
        ref: Mapping[str, str],
    ) -> str | None:
        """The model's copy of the quota Redis user and password (`Rendered.redis_auth`).

        Copied from ``settings.redis_auth_secret`` (read by name, in the operator's
        namespace), put back when it differs from it (a new password, an edit), deleted when
        the model no longer needs it. Returns why it cannot be made (the source is missing),
        or None. The values are never logged, compared only as the API server holds them."""
        s = self.settings
        name = rendered.names.redis_auth_secret
        if rendered.redis_auth is None:
            if live is not None and _owned(live, spec.uid):
                uid = str((live.get("metadata") or {}).get("uid") or "") or None
                try:
                    gone = await self.kube.delete(k8s.SECRET, spec.namespace, name, uid=uid)
                except ApiError as exc:
                    if not exc.conflict:
                        raise
                    gone = False
                if gone:
                    self._log(logging.INFO, ref, "Secret %s deleted (no quota Redis)", name)
            return None
        where = f"{s.redis_auth_secret_namespace}/{s.redis_auth_secret}"
        source = await self.kube.get(k8s.SECRET, s.redis_auth_secret_namespace, s.redis_auth_secret)
        if source is None:
            return (
                f"Secret {where} with the quota Redis credentials does not exist "
                "(the chart makes it with redis.enabled)"
            )
        data = source.get("data") or {}
        missing = [k for k in manifests.REDIS_AUTH_KEYS if not data.get(k)]
        if missing:
            return f"Secret {where} has no {' or '.join(missing)} for the quota Redis"
        desired = manifests.redis_auth_secret(spec, s, data)
        if live is None:
            try:
                await self.kube.create(k8s.SECRET, spec.namespace, desired)
            except ApiError as exc:
                if not exc.conflict:
                    raise
                raise RetryLater(f"Secret {name} appeared meanwhile") from None
            self._log(
                logging.INFO, ref, "Secret %s created (quota Redis user from %s)", name, where
            )
            return None
        if live.get("data") == desired["data"] and not differences(desired, live):
            return None
        body = update_body(desired, live)
        body.pop("stringData", None)
        body["data"] = desired["data"]
        await self.kube.replace(k8s.SECRET, spec.namespace, name, body)
        self.metrics.drift_repairs.labels("Secret").inc()
        self._log(logging.WARNING, ref, "Secret %s differed from %s; put back", name, where)
        await self.event(
            ref, "Warning", "DriftRepaired", f"Secret {name} differed from {where}; put back"
        )
        return None

    async def _apply(
        self, rendered: Rendered, live: Mapping[str, dict[str, Any]], ref: Mapping[str, str]
    ) -> dict[str, Any] | None:
        """Create what is missing and put back what drifted; returns the live Deployment."""
        created: list[str] = []
        deployment = live.get("Deployment")
        for obj in rendered.objects():
            desired = _stamp(obj)
            kind = k8s.KINDS[obj["kind"]]
            name = obj["metadata"]["name"]
            namespace = obj["metadata"]["namespace"]
            found = live.get(obj["kind"])
            if found is None:
                try:
                    result = await self.kube.create(kind, namespace, desired)
                except ApiError as exc:
                    if not exc.conflict:
                        raise
                    raise RetryLater(f"{obj['kind']} {name} appeared meanwhile") from None
                created.append(f"{obj['kind']} {name}")
            else:
                diffs = differences(desired, found)
                if not diffs:
                    result = found
                else:
                    ours = (found.get("metadata") or {}).get("annotations") or {}
                    drift = (
                        ours.get(ANNOTATION_RENDERED)
                        == desired["metadata"]["annotations"][ANNOTATION_RENDERED]
                    )
                    result = await self.kube.replace(
                        kind, namespace, name, update_body(desired, found)
                    )
                    if drift:
                        self.metrics.drift_repairs.labels(obj["kind"]).inc()
                        shown = ", ".join(diffs[:6]) + (" …" if len(diffs) > 6 else "")
                        self._log(
                            logging.WARNING,
                            ref,
                            "%s %s drifted (%s); put back",
                            obj["kind"],
                            name,
                            shown,
                        )
                        await self.event(
                            ref,
                            "Warning",
                            "DriftRepaired",
                            f"{obj['kind']} {name} was changed outside the operator ({shown}); "
                            "put back",
                        )
                    else:
                        self._log(logging.INFO, ref, "%s %s updated", obj["kind"], name)
                        if obj["kind"] == "Deployment":
                            await self.event(
                                ref,
                                "Normal",
                                "Updated",
                                f"Deployment {name}: {rendered.replicas} replica(s), version "
                                f"{obj['spec']['template']['metadata']['labels'][LABEL_VERSION]}",
                            )
            if obj["kind"] == "Deployment":
                deployment = result
        if created:
            await self.event(ref, "Normal", "Created", "created " + ", ".join(created))
        return deployment

    async def _artifact(self, spec: ModelSpec, workload: WorkloadState) -> ArtifactState:
        """What the unsealers of the current version say about the bundle."""
        pods = await self.kube.list(k8s.POD, spec.namespace, f"{LABEL_MODEL}={spec.name}")
        current = [
            p
            for p in pods
            if ((p.get("metadata") or {}).get("labels") or {}).get(LABEL_VERSION) == spec.version
            and ((p.get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_DIGEST)
            == spec.source.digest
            and not (p.get("metadata") or {}).get("deletionTimestamp")
        ]
        failure = None
        verified = None
        for pod in current:
            status = pod.get("status") or {}
            for cs in status.get("initContainerStatuses") or []:
                if cs.get("name") != "unsealer":
                    continue
                last = ((cs.get("lastState") or {}).get("terminated")) or {}
                now_term = ((cs.get("state") or {}).get("terminated")) or {}
                for term in (now_term, last):
                    if term and int(term.get("exitCode") or 0) != 0:
                        text = str(term.get("message") or term.get("reason") or "").strip()
                        failure = (
                            f"unsealer in Pod {pod['metadata']['name']} failed "
                            f"(exit {term.get('exitCode')}): {text[-400:]}"
                        )
                if cs.get("started") or cs.get("ready"):
                    verified = pod["metadata"]["name"]
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in status.get("conditions") or []
            )
            if ready:
                verified = pod["metadata"]["name"]
        if verified:
            return ArtifactState(
                "True",
                "Verified",
                f"bundle {spec.source.digest} verified and decrypted into memory (Pod {verified})",
            )
        if failure:
            return ArtifactState("False", "UnsealFailed", failure)
        if workload.desired == 0:
            return ArtifactState(
                "Unknown", "NotRunning", f"no Pods of version {spec.version} are asked for"
            )
        return ArtifactState(
            "Unknown", "Pending", f"waiting for an unsealer of version {spec.version}"
        )

    # --- status --------------------------------------------------------------------------
    async def _write_model_status(
        self,
        body: Mapping[str, Any],
        ref: Mapping[str, str],
        obs: ModelObservation,
        before: dict[str, Any],
        now: datetime,
        spec: ModelSpec | None,
    ) -> None:
        after = model_status(obs, before, now)
        key = f"{ref['namespace']}/{ref['name']}"
        self._track_conditions(key, after)
        if after == before:
            return
        patch = _merge_patch(before, after)
        await self.kube.merge_patch(
            MODELS, ref["namespace"], ref["name"], {"status": patch}, sub="status"
        )
        for change in cond.transitions(before.get("conditions"), after["conditions"]):
            ctype = str(change["type"])
            if ctype not in EVENT_CONDITIONS:
                continue
            good = (change["status"] == "True") != (ctype == DEGRADED)
            await self.event(
                ref,
                "Normal" if good else "Warning",
                str(change["reason"]),
                f"{ctype}={change['status']}: {change['message']}",
            )
            if ctype == LICENSE_VALID:
                self.metrics.license_decisions.labels(str(change["reason"])).inc()
                self.auditor.record(
                    "license.decision",
                    dict(ref),
                    tenant=spec.tenant if spec else None,
                    license=spec.license_name if spec else None,
                    granted=change["status"] == "True",
                    reason=change["reason"],
                    message=change["message"],
                    replicas=obs.granted_replicas,
                    gpus=(spec.serving.gpus_per_replica * obs.granted_replicas) if spec else 0,
                )
            level = logging.INFO if good else logging.WARNING
            self._log(
                level,
                ref,
                "%s=%s (%s): %s",
                ctype,
                change["status"],
                change["reason"],
                change["message"],
            )

    def _track_conditions(self, key: str, status: Mapping[str, Any]) -> None:
        self._model_conditions[key] = {
            str(c["type"]): str(c["status"]) for c in status.get("conditions") or []
        }
        self._refresh_model_gauge()

    def _refresh_model_gauge(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for ctype in MODEL_CONDITIONS:
            for value in ("True", "False", "Unknown"):
                counts[(ctype, value)] = 0
        for conds in self._model_conditions.values():
            for ctype, value in conds.items():
                counts[(ctype, value)] = counts.get((ctype, value), 0) + 1
        for (ctype, value), n in counts.items():
            self.metrics.models.labels(ctype, value).set(n)

    def _forget_model(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        for account in [a for a, m in self._accounts.items() if a[0] == namespace and m == name]:
            del self._accounts[account]
        self._model_conditions.pop(key, None)
        self._model_claims.pop(key, None)
        self._locks.pop(key, None)
        self._refresh_model_gauge()

    # --- deletion --------------------------------------------------------------------------
    async def delete_model(self, body: Mapping[str, Any]) -> None:
        """Finalizer work: stop serving, then withdraw the model's Vault access.

        Serving stops first and does not depend on Vault: the Deployment is scaled to zero
        and deleted, the license file is turned into a revocation (the gateway answers 403,
        the unsealer wipes its tmpfs) and the model's ServiceAccount is deleted (its tokens
        stop passing Vault's TokenReview). Then the Vault role and policy are withdrawn;
        that raises while Vault cannot be reached, and the caller retries until it can.
        """
        meta = parse_meta(body)
        names = names_for(meta.namespace, meta.name, meta.uid, self.settings.vault_policy_prefix)
        ref = _ref(MODEL_KIND, meta)
        async with self._lock(meta.key):
            stop_error: ApiError | None = None
            try:
                await self._stop_serving(body, meta, names, ref)
            except ApiError as exc:
                stop_error = exc  # Vault is still withdrawn below; then retried
                self._log(logging.WARNING, ref, "could not stop serving yet: %s", exc)
            await self._withdraw(names.vault_policy, names.vault_role, ref, "model deleted")
            if stop_error is not None:
                raise stop_error
        self._forget_model(meta.key)
        spec = (body.get("spec") or {}) if isinstance(body.get("spec"), Mapping) else {}
        lic_ref = spec.get("licenseRef") if isinstance(spec.get("licenseRef"), Mapping) else None
        if lic_ref and isinstance(lic_ref.get("name"), str):
            # Seats freed: the license's other models may now fit.
            self.enqueue_license(meta.namespace, lic_ref["name"])
            self._license_seen.pop(f"{meta.namespace}/{lic_ref['name']}", None)

    async def _stop_serving(
        self, body: Mapping[str, Any], meta: ObjectMeta, names: Names, ref: Mapping[str, str]
    ) -> None:
        """Kubernetes only (no Vault): no replicas, revoked license file, no ServiceAccount."""
        ns = meta.namespace
        deployment = names.deployment
        dep = await self.kube.get(k8s.DEPLOYMENT, ns, deployment)
        if dep is not None and _owned(dep, meta.uid):
            if (dep.get("spec") or {}).get("replicas"):
                await self.kube.merge_patch(
                    k8s.DEPLOYMENT, ns, deployment, {"spec": {"replicas": 0}}
                )
            dep_uid = str((dep.get("metadata") or {}).get("uid") or "") or None
            with contextlib.suppress(ApiError):
                if await self.kube.delete(k8s.DEPLOYMENT, ns, deployment, uid=dep_uid):
                    self._log(
                        logging.INFO, ref, "Deployment %s deleted (model deleted)", deployment
                    )
        try:
            spec: ModelSpec | None = parse_model(body)
        except SpecError:
            spec = None
        if spec is not None:
            revoked = render_model(spec, None, False, self.settings).license_config
            cm = await self.kube.get(k8s.CONFIG_MAP, ns, revoked["metadata"]["name"])
            if cm is not None and _owned(cm, meta.uid) and cm.get("data") != revoked["data"]:
                await self.kube.merge_patch(
                    k8s.CONFIG_MAP,
                    ns,
                    revoked["metadata"]["name"],
                    {"data": _merge_patch(cm.get("data") or {}, revoked["data"])},
                )
        # The model's account, and the one named after the model before issue 12.
        for account in (names.service_account, meta.name):
            sa = await self.kube.get(k8s.SERVICE_ACCOUNT, ns, account)
            if sa is not None and _owned(sa, meta.uid):
                sa_uid = str((sa.get("metadata") or {}).get("uid") or "") or None
                with contextlib.suppress(ApiError):
                    await self.kube.delete(k8s.SERVICE_ACCOUNT, ns, account, uid=sa_uid)

    # --- ModelLicense --------------------------------------------------------------------
    async def reconcile_license(self, namespace: str, name: str) -> float | None:
        body = await self.kube.get(LICENSES, namespace, name)
        key = f"{namespace}/{name}"
        models = await self.kube.list(MODELS, namespace)
        named = [
            m
            for m in models
            if isinstance((m.get("spec") or {}).get("licenseRef"), Mapping)
            and m["spec"]["licenseRef"].get("name") == name
        ]
        if body is None:
            if self._license_seen.pop(key, None) is not None or named:
                for m in named:
                    self.enqueue_model(namespace, m["metadata"]["name"])
            return None
        meta = parse_meta(body)
        ref = _ref(LICENSE_KIND, meta)
        now = self.now()
        try:
            lic: LicenseSpec | None = parse_license(body)
            error = None
        except SpecError as exc:
            lic, error = None, str(exc)
        parsed: list[ModelSpec] = []
        for m in named:
            try:
                parsed.append(parse_model(m))
            except SpecError:
                continue
        usage = license_usage(lic, parsed, now)[0] if lic is not None else None
        before = dict(body.get("status") or {})
        after = license_status(lic, meta.generation, error, usage, before, now)
        if after != before:
            await self.kube.merge_patch(
                LICENSES, namespace, name, {"status": _merge_patch(before, after)}, sub="status"
            )
            for change in cond.transitions(before.get("conditions"), after["conditions"]):
                if change["type"] != VALID:
                    continue
                good = change["status"] == "True"
                await self.event(
                    ref,
                    "Normal" if good else "Warning",
                    str(change["reason"]),
                    f"license {name} of tenant {lic.tenant if lic else '?'}: {change['message']}",
                )
                self.auditor.record(
                    "license.state",
                    dict(ref),
                    tenant=lic.tenant if lic else None,
                    valid=good,
                    reason=change["reason"],
                    message=change["message"],
                )
        # Re-evaluate the license's models when its terms or state changed.
        state = license_state(lic, now) if lic is not None else ("InvalidSpec", error, None)
        seen = (meta.uid, meta.generation, state[0])
        if self._license_seen.get(key) != seen:
            self._license_seen[key] = seen
            for m in named:
                self.enqueue_model(namespace, m["metadata"]["name"])
        delay = _seconds_until(state[2], now)
        if delay is not None:
            # A window still opens or closes: also look again every expiry_check_interval_s
            # (a safety net against clock steps; it costs reads only).
            delay = min(delay, max(1.0, self.settings.expiry_check_interval_s))
        return delay

    # --- safety nets -----------------------------------------------------------------------
    async def resync_all(self) -> None:
        """Enqueue every model and license (periodic drift check, Vault included)."""
        scopes: list[str | None] = [*self.settings.namespaces] or [None]
        for ns in scopes:
            for item in await self.kube.list(MODELS, ns):
                m = item.get("metadata") or {}
                self.enqueue_model(str(m.get("namespace")), str(m.get("name")))
            for item in await self.kube.list(LICENSES, ns):
                m = item.get("metadata") or {}
                self.enqueue_license(str(m.get("namespace")), str(m.get("name")))

    async def collect_vault_garbage(self) -> list[str]:
        """Delete our Vault roles whose model is gone (a crash between steps, a manual edit)."""
        s = self.settings
        roles = await self.vault.run(
            "list_roles",
            lambda c: provision.list_roles(c, s.vault_kubernetes_mount, s.vault_policy_prefix),
        )
        removed: list[str] = []
        for binding in roles:
            if s.namespaces and binding.namespace not in s.namespaces:
                continue
            parsed = parse_vault_name(s.vault_policy_prefix, binding.role)
            if parsed is None or parsed[0] != binding.namespace:
                continue  # not one of ours after all
            namespace, model = parsed
            key = f"{namespace}/{model}"
            async with self._lock(key):
                body = await self.kube.get(MODELS, namespace, model)
                if body is not None and not parse_meta(body).deleting:
                    continue
                ref = {
                    "apiVersion": API_VERSION,
                    "kind": MODEL_KIND,
                    "namespace": namespace,
                    "name": model,
                    "uid": "",
                }
                policy = role = vault_name(s.vault_policy_prefix, namespace, model)

                def withdraw(c: Any, policy: str = policy, role: str = role) -> provision.Change:
                    return provision.withdraw_access(c, s.vault_kubernetes_mount, policy, role)

                change = await self.vault.run("withdraw", withdraw)
                if change.changed:
                    removed.append(binding.role)
                    self.auditor.record(
                        "key_access.withdrawn",
                        ref,
                        vault_role=binding.role,
                        reason="orphaned role (model no longer exists)",
                    )
                    log.warning("removed orphaned Vault role %s", binding.role)
        return removed


def _owned(obj: Mapping[str, Any], uid: str) -> bool:
    return any(
        r.get("uid") == uid and r.get("controller")
        for r in (obj.get("metadata") or {}).get("ownerReferences") or []
    )


def _with_replicas(rendered: Rendered, replicas: int) -> Rendered:
    dep = copy.deepcopy(rendered.deployment)
    dep["spec"]["replicas"] = replicas
    return dataclasses.replace(rendered, deployment=dep, replicas=replicas)


def _workload(dep: Mapping[str, Any] | None, desired: int) -> WorkloadState:
    if dep is None:
        return WorkloadState(exists=False, desired=desired)
    status = dep.get("status") or {}
    meta = dep.get("metadata") or {}
    deadline = any(
        c.get("type") == "Progressing"
        and c.get("status") == "False"
        and c.get("reason") == "ProgressDeadlineExceeded"
        for c in status.get("conditions") or []
    )
    return WorkloadState(
        exists=True,
        desired=int((dep.get("spec") or {}).get("replicas") or 0),
        observed_current=int(status.get("observedGeneration") or 0)
        >= int(meta.get("generation") or 0),
        replicas=int(status.get("replicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        available=int(status.get("availableReplicas") or 0),
        deadline_exceeded=deadline,
    )


def _seconds_until(moment: datetime | None, now: datetime) -> float | None:
    if moment is None:
        return None
    return max(0.5, (moment - now).total_seconds() + 0.5)
