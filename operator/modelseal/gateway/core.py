"""The gateway's decisions, shared by the HTTP and gRPC front ends.

Every metered request goes through the same steps, in this order, and each refusal has
its status, its reason, an audit record and its metrics:

1. the API key → consumer → tenant (401, one message for every failure); a key is found
   by a lookup, and the few slow scrypt checks are bounded (503 beyond them: see
   ``modelseal.gateway.keys``), so a flood of unknown keys costs little and never queues;
2. room in the audit queue is reserved (``block``: wait; ``reject``: 503), so the record
   of a request that is let through can always be written. Only then: an unauthenticated
   request reserves nothing and waits for nothing; its refusal is written if the queue
   has room, else counted as dropped (``AuditLog.dropped``) and logged;
3. the tenant's license: loaded, not revoked, inside its validity window, the model
   allowed (403; 503 when the license or keys file is missing or broken);
4. the request itself: size (413), body arrival time (408), JSON and tensors checked
   against the model's metadata (400), unknown model (404), the output policy (403);
5. the quotas, in one atomic store call (429 with ``Retry-After``; 503 if the store is
   unreachable: never an unmetered request);
6. Triton; its answer is cut to the output policy; the concurrency slot is given back
   once Triton is done (after a timeout too: ``release_after``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from modelseal.audit.chain import now_iso
from modelseal.audit.keyfile import read_hmac_key
from modelseal.audit.log import AuditLog, AuditOverflow, AuditWriterDead
from modelseal.audit.sinks import Sink
from modelseal.config import Settings
from modelseal.gateway.errors import Decision, GatewayError
from modelseal.gateway.keys import (
    Consumer,
    KeyRing,
    KeyTable,
    parse_keys,
    presented_key,
)
from modelseal.gateway.metrics import GatewayMetrics
from modelseal.gateway.reload import Change, WatchedFile
from modelseal.gateway.upstream import Upstream
from modelseal.gateway.wiring import build_sink, build_store
from modelseal.quota.license import License, check_license, parse_licenses
from modelseal.quota.policy import LIMIT_MESSAGES, retry_after_seconds
from modelseal.store.base import CounterStore, Lease, StoreUnavailable, Ticket, scopes_for

log = logging.getLogger("modelseal.gateway")

UNAUTHORIZED = "missing or invalid API key"
AUDIT_UNAVAILABLE = "audit trail unavailable: answer withheld"


@dataclass(slots=True)
class Ctx:
    """What one request did, for its audit record and metrics."""

    proto: str
    route: str
    remote: str | None
    t0: float
    consumer: Consumer | None = None
    license: License | None = None
    model: str = ""
    version: str = ""
    decision: Decision = "reject"
    limit: str | None = None
    status: int = 0
    reason: str = ""
    upstream_s: float = 0.0
    req_bytes: int = 0
    resp_bytes: int = 0
    input_sha256: str | None = None
    request_id: str | None = None
    reserved: bool = False
    lease: Lease | None = None
    ticket: Ticket | None = None  # what admit counted, to refund it
    meter: bool = False  # counted against quotas (inference)


class Gateway:
    def __init__(
        self,
        settings: Settings,
        *,
        store: CounterStore | None = None,
        sink: Sink | None = None,
        metrics: GatewayMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.instance = settings.gateway_instance or socket.gethostname()
        self.metrics = metrics or GatewayMetrics()
        self.store = store or build_store(settings)
        self.store_kind = self.store.kind
        hmac_key = None
        if settings.audit_hmac_key_file is not None:
            hmac_key = read_hmac_key(settings.audit_hmac_key_file)
        else:
            log.warning("audit_hmac_key_file is not set: audit checkpoints are not signed")
        self.sink = sink or build_sink(settings)
        self.sink.on_error = self._sink_error
        self.audit = AuditLog(
            self.sink,
            gateway=self.instance,
            hmac_key=hmac_key,
            checkpoint_every=settings.audit_checkpoint_every,
            capacity=settings.audit_queue_size,
            overflow=settings.audit_overflow_policy,
            batch_max=settings.audit_batch_max,
            checkpoint_interval_s=settings.audit_checkpoint_interval_s,
            state_file=settings.audit_state_file,
        )
        self.audit.on_depth = self.metrics.audit_depth.set
        self.keys = KeyRing()
        self.licenses_file: WatchedFile[dict[str, License]] = WatchedFile(
            settings.license_file, parse_licenses, "license file"
        )
        self.keys_file: WatchedFile[KeyTable] = WatchedFile(
            settings.api_keys_file, parse_keys, "API keys file"
        )
        self.upstream = Upstream(
            settings.triton_http_url,
            settings.triton_grpc_url,
            timeout_s=settings.gateway_upstream_timeout_s,
            connections=settings.gateway_upstream_connections,
            metadata_ttl_s=settings.gateway_metadata_ttl_s,
            max_message_bytes=max(settings.max_request_bytes, 64 * 1024 * 1024),
        )
        self._lease_ids = itertools.count()
        self._background: set[asyncio.Task[Any]] = set()
        self._holding: set[asyncio.Task[None]] = set()
        self._reload_task: asyncio.Task[None] | None = None
        self._store_ok = True
        self._written_seen = 0
        self._scopes: dict[tuple[str, str], Any] = {}
        self._children: dict[tuple[Any, ...], Any] = {}
        self._gauged: dict[tuple[str, str], float] = {}
        self._known_for: dict[str, License] | None = None
        self._known_models: frozenset[str] = frozenset()

    # -- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.start()
        await self.audit.start()
        await self.upstream.start()
        self.reload()
        self.metrics.store_up.labels(self.store_kind).set(1)
        self._reload_task = asyncio.create_task(self._reload_loop(), name="gateway-reload")
        self.event("gateway_started", store=self.store_kind)

    async def stop(self) -> None:
        if self._reload_task is not None:
            self._reload_task.cancel()
            await asyncio.gather(self._reload_task, return_exceptions=True)
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        for task in list(self._holding):  # timed-out requests Triton is still running
            task.cancel()
        if self._holding:
            await asyncio.gather(*self._holding, return_exceptions=True)
        self.event("gateway_stopped")
        await self.upstream.close()
        await self.audit.close()
        await self.store.close()

    def liveness_problems(self) -> list[str]:
        """Why this gateway cannot serve as it must any more (``/healthz`` answers 503 then,
        and the kubelet restarts the container): a stopped audit writer would otherwise
        leave every metered request waiting for a record that is never written."""
        problems = []
        if self.audit.dead is not None:
            problems.append(f"audit writer stopped: {self.audit.dead}")
        task = self._reload_task
        if task is not None and task.done():
            problems.append("the reload loop of the license and keys files stopped")
        return problems

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- followed files -------------------------------------------------------------------
    def reload(self) -> None:
        for watched, label in ((self.licenses_file, "license"), (self.keys_file, "api_keys")):
            change = watched.poll()
            if change is None:
                continue
            self._on_change(label, change)
            if watched is self.keys_file:
                self.keys.replace(self.keys_file.value)
                table = self.keys_file.value
                if table is not None and table.scrypt_without_id:
                    log.warning(
                        "API keys file: %d scrypt entries have no key_id: every unknown key "
                        "costs a scrypt check for each (bounded, but slow); issue keys as "
                        "<key_id>.<secret> and name their key_id",
                        len(table.scrypt_without_id),
                    )
        self.metrics.audit_records.inc(self.audit.written - self._written_seen)
        self._written_seen = self.audit.written

    def _on_change(self, label: str, change: Change) -> None:
        ok = change.what == "loaded"
        self.metrics.config_state.labels(label).set(1 if ok else 0)
        self.metrics.config_reloads.labels(label, change.what).inc()
        details: dict[str, Any] = {"file": label, "result": change.what, "message": change.message}
        if ok and label == "license" and self.licenses_file.value is not None:
            details["licenses"] = sorted(
                f"{lic.id}{' (revoked)' if lic.revoked else ''}"
                for lic in self.licenses_file.value.values()
            )
        if ok:
            log.info("%s", change.message)
        else:
            log.error("%s: refusing every request until it is fixed", change.message)
        self.event("config_" + change.what, **details)

    async def _reload_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.gateway_reload_interval_s)
            try:
                self.reload()
            except Exception:
                log.exception("reload failed")

    # -- audit and metrics ----------------------------------------------------------------
    def _sink_error(self, reason: str) -> None:
        self.metrics.audit_sink_errors.labels(self.sink.name).inc()

    def event(self, what: str, **details: Any) -> None:
        self.audit.emit(
            {"type": "event", "ts": now_iso(), "gw": self.instance, "event": what, **details}
        )

    async def reserve_audit(self, ctx: Ctx) -> None:
        if self.audit.try_reserve():
            ctx.reserved = True
            return
        if self.audit.dead is None:
            self.metrics.audit_overflow.labels(self.audit.overflow).inc()
        try:
            await self.audit.reserve()
        except AuditWriterDead:
            raise GatewayError(
                503, "audit trail unavailable: request not served", decision="error"
            ) from None
        except AuditOverflow as exc:
            log.error("audit queue full: request refused (policy reject)")
            raise GatewayError(503, str(exc), decision="error") from None
        ctx.reserved = True

    def finish(self, ctx: Ctx) -> asyncio.Future[None] | None:
        """Write the audit record (under the reservation) and the metrics of a request.

        For a request that was let through (``allow``): a future, done once its record is
        durable (``AuditLog.submit``); the front end awaits it before it sends the answer,
        so that no answer leaves without its record on disk. Else None: a refusal's
        answer need not wait."""
        latency = time.perf_counter() - ctx.t0
        lic = ctx.license
        tenant = ctx.consumer.tenant if ctx.consumer else ""
        record = {
            "type": "request",
            "ts": now_iso(),
            "gw": self.instance,
            "proto": ctx.proto,
            "route": ctx.route,
            "remote": ctx.remote,
            "tenant": tenant or None,
            "consumer": ctx.consumer.id if ctx.consumer else None,
            "license": lic.id if lic else None,
            "model": ctx.model or None,
            "version": ctx.version or None,
            "decision": ctx.decision,
            "limit": ctx.limit,
            "status": ctx.status,
            "reason": ctx.reason[:500] or None,
            "latency_ms": round(latency * 1000, 3),
            "upstream_ms": round(ctx.upstream_s * 1000, 3),
            "req_bytes": ctx.req_bytes,
            "resp_bytes": ctx.resp_bytes,
            "input_sha256": ctx.input_sha256,
            "request_id": ctx.request_id,
            # counted by the quota store and not refunded: billed (modelseal.audit.usage)
            "metered": ctx.ticket is not None,
        }
        durable = None
        if ctx.reserved:
            ctx.reserved = False
            durable = self.audit.submit(record, durable=ctx.decision == "allow")
        else:
            self.audit.emit(record)
        model = self.model_label(ctx.model)
        self._child(self.metrics.requests, tenant, model, str(ctx.status), ctx.proto).inc()
        if ctx.upstream_s:
            self._child(self.metrics.upstream, ctx.proto).observe(ctx.upstream_s)
        self._child(self.metrics.overhead, ctx.proto).observe(max(0.0, latency - ctx.upstream_s))
        return durable

    async def durable(self, pending: asyncio.Future[None] | None) -> bool:
        """Wait for a served request's record to be durable (``finish``'s future). False
        when it never will be (the audit writer stopped): the answer is then withheld."""
        if pending is None:
            return True
        try:
            await pending
        except AuditWriterDead:
            return False
        return True

    def model_label(self, model: str) -> str:
        """The ``model`` label of a request: its name only when a loaded license names that
        model, else ``unknown``. The name comes from the request, before authentication:
        as a label, random names would each add a series, without bound."""
        if not model:
            return ""
        licenses = self.licenses_file.value
        if licenses is not self._known_for:
            self._known_for = licenses
            self._known_models = frozenset(
                m for lic in (licenses or {}).values() for m in lic.models
            )
        return model if model in self._known_models else "unknown"

    def _child(self, metric: Any, *labels: str) -> Any:
        """A labelled metric, looked up once (``labels()`` costs more than the update)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            if len(self._children) > 50_000:
                self._children.clear()
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- the steps ------------------------------------------------------------------------
    async def authenticate(
        self, ctx: Ctx, authorization: list[str], api_keys: list[str]
    ) -> Consumer:
        """The consumer of the presented key (steps 1 and 2: then room for its record)."""
        if self.keys_file.value is None:
            raise GatewayError(503, f"gateway not ready: {self.keys_file.error}", decision="error")
        key = presented_key(authorization, api_keys)
        consumer = None
        if key is not None:
            consumer, _, slow = self.keys.lookup_fast(key)
            if slow:  # KeysBusy: 503 (``errors.ERROR_RULES``)
                consumer = await self.keys.lookup(key)
        if consumer is None:
            self.metrics.auth_failures.inc()
            raise GatewayError(401, UNAUTHORIZED)
        ctx.consumer = consumer
        await self.reserve_audit(ctx)  # only now: see step 2 above
        return consumer

    def license_for(self, ctx: Ctx, consumer: Consumer, model: str) -> License:
        licenses = self.licenses_file.value
        if licenses is None:
            raise GatewayError(
                503, f"gateway not ready: {self.licenses_file.error}", decision="error"
            )
        lic = licenses.get(consumer.tenant)
        if lic is None:
            raise GatewayError(403, f"no license for tenant {consumer.tenant}")
        ctx.license = lic
        refusal = check_license(lic, model, datetime.now(UTC))
        if refusal is not None:
            raise GatewayError(403, refusal.message, limit=refusal.reason)
        return lic

    async def admit(self, ctx: Ctx, lic: License, model: str) -> None:
        scopes = self._scopes.get((lic.id, model))
        if scopes is None or scopes[0] is not lic:
            scopes = (lic, scopes_for(lic, model))
            self._scopes[(lic.id, model)] = scopes
        scopes = scopes[1]
        lease_id = f"{self.instance}:{next(self._lease_ids)}"
        now_ms = int(time.time() * 1000)
        try:
            admission = await self.store.admit(scopes, now_ms, lease_id)
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels(self.store_kind).inc()
            if self._store_ok:
                self._store_ok = False
                self.metrics.store_up.labels(self.store_kind).set(0)
                log.error("quota store unavailable, refusing requests: %s", exc)
                self.event("store_unavailable", store=self.store_kind, message=str(exc))
            raise GatewayError(
                503,
                f"quota store unavailable ({self.store_kind}): request not served",
                decision="error",
            ) from None
        if not self._store_ok:
            self._store_ok = True
            self.metrics.store_up.labels(self.store_kind).set(1)
            log.info("quota store available again")
            self.event("store_available", store=self.store_kind)
        decision = admission.decision
        tenant = lic.tenant
        now = time.monotonic()
        if not decision.allowed or now - self._gauged.get((tenant, model), 0.0) > 0.1:
            self._gauged[(tenant, model)] = now  # refreshed at most 10 times a second
            rem = decision.remaining
            gauge = self.metrics.remaining
            self._child(gauge, tenant, model, "tokens").set(rem.tokens)
            self._child(gauge, tenant, model, "per_day").set(rem.per_day)
            self._child(gauge, tenant, model, "per_month").set(rem.per_month)
            self._child(gauge, tenant, model, "total").set(rem.total)
        if not decision.allowed:
            limit = decision.limit or "unknown"
            self.metrics.quota_rejections.labels(tenant, model, limit).inc()
            scope = "tenant" if decision.scope == 0 else f"model {model}"
            raise GatewayError(
                429,
                f"quota exceeded ({scope}): {LIMIT_MESSAGES.get(limit, limit)}",
                decision="deny",
                limit=limit,
                retry_after=retry_after_seconds(decision),
            )
        ctx.decision = "allow"
        ctx.lease = admission.lease
        ctx.ticket = admission.ticket

    async def refund(self, ctx: Ctx) -> bool:
        """Give back what ``admit`` counted for a request that never reached Triton (the
        connection could not be opened), atomically in the store: counts, token, leases.
        False if the store could not do it (the request then stays counted)."""
        ticket = ctx.ticket
        if ticket is None:
            return False
        ctx.ticket = None
        try:
            await self.store.refund(ticket)
        except StoreUnavailable as exc:
            self.metrics.store_errors.labels(self.store_kind).inc()
            log.error("quota refund failed (the request stays counted): %s", exc)
            ctx.ticket = ticket  # still counted, so still billed
            return False
        ctx.lease = None  # the refund gave the leases back too
        tenant = ctx.consumer.tenant if ctx.consumer else ""
        self.metrics.quota_refunds.labels(tenant, ctx.model).inc()
        return True

    def release(self, ctx: Ctx) -> None:
        lease = ctx.lease
        if lease is not None:
            ctx.lease = None
            self.store.release_soon(lease)

    def release_after(self, ctx: Ctx, running: asyncio.Future[Any]) -> None:
        """The request timed out but Triton is still at it (``running``): its concurrency
        slot is given back only once Triton answers or the connection drops, at the
        latest after ``quota_lease_s`` (when the store would expire it anyway; the
        connection is then dropped). Not waiting would let a tenant start one more
        computation per timeout, beyond its ``concurrent`` limit."""
        lease, ctx.lease = ctx.lease, None
        task = asyncio.get_running_loop().create_task(self._hold(running, lease))
        self._holding.add(task)
        task.add_done_callback(self._holding.discard)

    async def _hold(self, running: asyncio.Future[Any], lease: Lease | None) -> None:
        try:
            done, _ = await asyncio.wait([running], timeout=self.settings.quota_lease_s)
            if not done:
                log.warning(
                    "Triton still busy %gs after a timeout: connection dropped",
                    self.settings.quota_lease_s,
                )
                running.cancel()
        except asyncio.CancelledError:
            running.cancel()  # shutting down
            raise
        finally:
            if lease is not None:
                self.store.release_soon(lease)
