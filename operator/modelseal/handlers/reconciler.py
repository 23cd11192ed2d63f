"""The operator's reconcile loop for ProtectedModels and ModelLicenses (no kopf here).

Level-triggered: whatever woke it (a watch event on the model, its license or one of its
objects, a timer, a resync), a reconcile reads the current state, decides with the pure
modules (`modelseal.models`, `modelseal.render`, `modelseal.policies`) and writes only
what differs:

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

Each concern is a module of `modelseal.handlers.controller`; `Reconciler` here is the
work queue in front of them (one reconcile of a model at a time, retries, metrics) and
what the kopf handlers call.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from modelseal.config import Settings
from modelseal.handlers.auditing import Auditor
from modelseal.handlers.controller.apply import Applier
from modelseal.handlers.controller.context import (
    LICENSES,
    MODELS,
    Context,
    Enqueue,
    Memory,
    WakeupCause,
    license_key,
    model_key,
    utc_now,
)
from modelseal.handlers.controller.deletion import ModelDeletion
from modelseal.handlers.controller.events import Events
from modelseal.handlers.controller.gc import VaultGarbageCollector
from modelseal.handlers.controller.identity import AccountIndex, IdentityGuard
from modelseal.handlers.controller.licensebook import LicenseBook
from modelseal.handlers.controller.licenses import LicenseReconciler
from modelseal.handlers.controller.models import ModelReconciler
from modelseal.handlers.controller.pods import ModelPods
from modelseal.handlers.controller.status import StatusWriter
from modelseal.handlers.controller.vaultstep import VaultStep
from modelseal.handlers.metrics import Metrics
from modelseal.handlers.vaultio import VaultSession
from modelseal.handlers.workqueue import RESYNC, WorkQueue, run_class
from modelseal.k8s import api as k8s
from modelseal.k8s.api import ApiError, Kube
from modelseal.k8s.cache import CachedKube, Seen, WatchCache, read_through
from modelseal.models.identity import INDEXABLE, service_account_of
from modelseal.policies.wakes import WakeFilter
from modelseal.render.names import LABEL_MODEL, MANAGED_BY

log = logging.getLogger("modelseal.operator")

#: How long a reconcile waits for the followers' first listings (`Reconciler.synced`)
#: before it reads for itself: a listing of every Pod takes seconds, not minutes, even
#: at thousands of objects; a follower whose listing keeps failing must not stop the
#: operator.
SYNC_WAIT_S = 60.0


class Reconciler:
    """The work queue in front of the controllers, and what the kopf handlers call."""

    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        vault: VaultSession,
        metrics: Metrics,
        auditor: Auditor,
        now: Callable[[], datetime] = utc_now,
    ) -> None:
        self.settings = settings
        self.kube = kube
        self.vault = vault
        self.metrics = metrics
        self.auditor = auditor
        self.now = now
        # Retries back off to 15 s at most: a Vault outage heals within that once it ends.
        self.queue = WorkQueue(
            self._work, concurrency=4, on_depth=metrics.queue_depth.set, max_backoff_s=15.0
        )
        # The owned objects' reads come from the watch cache once kopf feeds it
        # (`modelseal.handlers.operator` enables it); everything else from the API server.
        self.cache = WatchCache("app.kubernetes.io/managed-by", MANAGED_BY)
        self.cache.on_news = self.owned_news
        #: Pods and every workload kind by the account they run as (the followers feed
        #: it; their first listings seed it, `scope_listed`).
        self.accounts = AccountIndex()
        #: Each model's Pods (the Pod follower feeds it).
        self.pods = ModelPods()
        #: The licenses and their models as the watches show them (`licensebook`).
        self.book = LicenseBook()
        #: What each watched object last looked like to a reconcile (`policies.wakes`).
        self.wakes = WakeFilter()
        cached = CachedKube(kube, self.cache)
        ctx = Context(settings, cached, vault, metrics, auditor, now)
        self.memory = Memory()
        enqueue = Enqueue(self._controller_add)
        events = Events(kube, now)
        self.event = events.post
        vault_step = VaultStep(ctx, events)
        status = StatusWriter(ctx, events)
        self.status = status
        self.models = ModelReconciler(
            ctx,
            self.memory,
            enqueue,
            vault_step,
            Applier(ctx, events),
            IdentityGuard(ctx, events, self.accounts),
            status,
            self.pods,
            self.book,
        )
        self.licenses = LicenseReconciler(ctx, self.memory, enqueue, status)
        self.deletion = ModelDeletion(ctx, self.memory, enqueue, vault_step, self.models.forget)
        self.garbage = VaultGarbageCollector(ctx, self.memory)
        self.enqueue = enqueue
        self._unlisted: set[tuple[str, str | None]] = set()
        self._followed: frozenset[str] = frozenset()
        #: Set once every followed kind was listed in every scope (set while none is).
        self.synced = asyncio.Event()
        self.synced.set()

    # --- queue ---------------------------------------------------------------------------
    def enqueue_model(
        self, namespace: str, name: str, delay: float = 0.0, source: str = "ProtectedModel"
    ) -> None:
        self.metrics.wakeups.labels(source).inc()
        self.queue.add(model_key(namespace, name), delay)

    def enqueue_license(self, namespace: str, name: str, delay: float = 0.0) -> None:
        self.metrics.wakeups.labels("ModelLicense").inc()
        self.queue.add(license_key(namespace, name), delay)

    def _controller_add(self, key: str, delay: float, cause: WakeupCause) -> None:
        self.metrics.wakeups.labels(cause).inc()
        self.queue.add(key, delay)

    def model_changed(
        self,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        event_type: str | None = None,
    ) -> None:
        """A ProtectedModel's watch event: reconcile it, unless the event is only the echo
        of our own status patch (the reconcile that made it knew all of it) or changed
        nothing a reconcile reads (kopf's own annotations: `modelseal.policies.wakes`)."""
        self.book.observe_model(event_type, body)
        relevant = self.wakes.changed("ProtectedModel", event_type, body)
        if event_type == "DELETED":
            return  # the finalizer's handler saw it first
        echo = self.status.model_echoes.is_echo(namespace, name, body)
        if relevant and not echo:
            self.enqueue_model(namespace, name)

    def license_changed(
        self,
        namespace: str,
        name: str,
        body: Mapping[str, Any],
        event_type: str | None = None,
    ) -> None:
        """A ModelLicense's watch event (as `model_changed`)."""
        self.book.observe_license(event_type, body)
        if not self.status.license_echoes.is_echo(namespace, name, body):
            self.enqueue_license(namespace, name)

    def owned_changed(
        self, kind: str, event_type: str | None, body: Mapping[str, Any], identity: bool
    ) -> None:
        """A watch event of an owned kind (ours or not): the watch cache follows it; one of
        ours wakes its model, unless it is the echo of our own write; with `identity`
        (Pods, Deployments) it is also checked for a model's ServiceAccount."""
        meta = body.get("metadata") or {}
        namespace = str(meta.get("namespace"))
        seen = self.cache.observe(kind, event_type, body)
        if kind == "Pod":
            self.pods.observe(event_type, body)
        filed = identity and self.accounts.observe(kind, event_type, body)
        model = _our_model(body)
        # Even an echo goes through the wake filter, so that it knows the latest state.
        relevant = model is not None and self.wakes.changed(kind, event_type, body)
        if seen is not Seen.NEWS:
            return  # our echo, or held until our write in flight ends (`owned_news`)
        if event_type is None and not self.synced.is_set():
            # The followers' first listings: kopf's listing of the models wakes every
            # model, to run once they are done; a wake-up per listed object would run
            # most of them twice (1,100 reconciles more after a restart at 1,000 models).
            return
        if relevant and model is not None:
            self.enqueue_model(namespace, model, source=kind)
        if filed:
            self.workload_seen(namespace, kind, body)

    def owned_news(self, kind: str, body: Mapping[str, Any]) -> None:
        """An event held while our write of its object was in flight was not that write's
        echo (the watch cache tells, `WatchCache.written`): wake as for any change."""
        namespace = str((body.get("metadata") or {}).get("namespace"))
        if (model := _our_model(body)) is not None:
            self.enqueue_model(namespace, model, source=kind)
        if kind in INDEXABLE:
            self.workload_seen(namespace, kind, body)

    def identity_changed(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a kind watched only for the account index (ReplicaSets and the
        other workloads that make Pods): it wakes a model only when it changed what the
        index holds (a ReplicaSet's replica counts do not)."""
        if self.accounts.observe(kind, event_type, body):
            namespace = str((body.get("metadata") or {}).get("namespace"))
            self.workload_seen(namespace, kind, body)

    def workload_seen(self, namespace: str, kind: str, body: Mapping[str, Any]) -> None:
        """A Pod or workload changed: check its model again if it runs as a model's account.

        Cheap (a dict lookup); the reconcile that follows makes the real decision."""
        model = self.memory.accounts.get((namespace, service_account_of(kind, body)))
        if model is not None:
            self.enqueue_model(namespace, model, source=f"identity:{kind}")

    async def _work(self, key: str) -> float | None:
        kind, namespace, name = key.split("/", 2)
        if not self.synced.is_set():
            # As controller-runtime waits for its caches to sync before its workers start:
            # a reconcile before the followers' first listings would list the namespace's
            # Pods and workloads and GET the owned objects itself, every one of the first
            # hundreds at once (after a restart at 1,000 models the operator's memory
            # jumped by 50 MB in two seconds; issue 13 §3). Past the bound, it does so.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.synced.wait(), SYNC_WAIT_S)
        started = time.monotonic()
        # A drift check of the periodic resync reads the owned objects from the API
        # server (and refreshes the cache with them); runs woken by events use the cache.
        read_through(run_class() == RESYNC)
        label = "ProtectedModel" if kind == "pm" else "ModelLicense"
        try:
            if kind == "pm":
                async with self.memory.lock(f"{namespace}/{name}"):
                    result = await self.models.reconcile(namespace, name)
            else:
                result = await self.licenses.reconcile(namespace, name)
        except Exception as exc:
            stage = "kubernetes" if isinstance(exc, ApiError) else "internal"
            self.metrics.errors.labels(label, stage).inc()
            self.metrics.reconciles.labels(label, "error").inc()
            raise
        finally:
            self.metrics.reconcile_seconds.labels(label).observe(time.monotonic() - started)
        self.metrics.reconciles.labels(label, "ok").inc()
        return result

    # --- the watch-fed state ---------------------------------------------------------------
    def follow(self, kinds: Iterable[str]) -> None:
        """`kinds` are listed, then watched, by our own followers (`modelseal.k8s.watch`),
        in every scope: their first listings seed the indexes (`scope_listed`)."""
        self._unlisted = {(kind, scope) for kind in kinds for scope in self._scopes()}
        self._followed = frozenset(k for k, _ in self._unlisted)
        if self._unlisted:
            self.synced.clear()

    def scope_listed(self, kind: str, scope: str | None) -> None:
        """The follower of `kind` in `scope` finished a listing: the callbacks saw each
        object. Once every scope of a kind has been listed, the watch cache answers
        "absent" for it; once every workload kind has, the account index and the index
        of models' Pods answer instead of listing."""
        if (kind, scope) not in self._unlisted:
            return  # a listing again after a watch expired
        self._unlisted.discard((kind, scope))
        if not self._unlisted:
            self.synced.set()
        if any(k == kind for k, _ in self._unlisted):
            return
        self.cache.listed(kind)
        if not any(k in INDEXABLE for k, _ in self._unlisted) and not self.accounts.ready:
            self.accounts.seeded()
            self.pods.seeded()
            log.info("account and Pod indexes seeded from the first listings")

    async def seed_indexes(self) -> None:
        """List once what no follower lists: the licenses and models into the license
        book (kopf watches them), and which objects exist of any cached kind not
        followed. Each listing is retried until it succeeds."""
        await _until_done("license book", self._seed_book)
        self.book.seeded()
        for name in self.cache.listed_kinds_missing():
            if name in self._followed:
                continue
            await _until_done(f"{name} listing", functools.partial(self._seed_present, name))
            self.cache.listed(name)

    def _scopes(self) -> list[str | None]:
        return [*self.settings.namespaces] or [None]

    async def _seed_book(self) -> None:
        for ns in self._scopes():
            async for page in self.kube.list_pages(LICENSES, ns, limit=100):
                self.book.seed_licenses(page)
            async for page in self.kube.list_pages(MODELS, ns, limit=100):
                self.book.seed_models(page)

    async def _seed_present(self, name: str) -> None:
        for ns in self._scopes():
            pages = self.kube.list_pages(k8s.KINDS[name], ns, limit=500, metadata_only=True)
            async for page in pages:
                self.cache.seed_present(name, page)

    # --- what the kopf handlers call -----------------------------------------------------
    async def reconcile_model(self, namespace: str, name: str) -> float | None:
        return await self.models.reconcile(namespace, name)

    async def reconcile_license(self, namespace: str, name: str) -> float | None:
        return await self.licenses.reconcile(namespace, name)

    async def delete_model(self, body: Mapping[str, Any]) -> None:
        """Finalizer work: stop serving, then withdraw the model's Vault access."""
        await self.deletion.delete_model(body)

    async def collect_vault_garbage(self) -> list[str]:
        """Delete our Vault roles whose model is gone (a crash between steps, a manual edit)."""
        return await self.garbage.collect()

    async def resync_all(self) -> None:
        """Enqueue every model and license (periodic drift check, Vault included).

        These runs read the owned objects from the API server, not the watch cache (a
        watch resumed after a gap can miss a deletion), and refresh the cache with them."""
        self.memory.gone_secrets.clear()
        scopes: list[str | None] = [*self.settings.namespaces] or [None]
        # Only the names are needed: metadata-only pages, not every model whole at once
        # (1,000 models with their status were tens of MB of Python objects; issue 13 §3).
        for ns in scopes:
            async for page in self.kube.list_pages(MODELS, ns, limit=500, metadata_only=True):
                for item in page:
                    m = item.get("metadata") or {}
                    key = model_key(str(m.get("namespace")), str(m.get("name")))
                    self.metrics.wakeups.labels("resync").inc()
                    self.queue.add(key, background=True)  # behind every event-driven run
            async for page in self.kube.list_pages(LICENSES, ns, limit=500, metadata_only=True):
                for item in page:
                    m = item.get("metadata") or {}
                    key = license_key(str(m.get("namespace")), str(m.get("name")))
                    self.queue.add(key, background=True)


def _our_model(body: Mapping[str, Any]) -> str | None:
    """The model an object of ours belongs to (its label), or None for anyone else's."""
    labels = (body.get("metadata") or {}).get("labels") or {}
    model = labels.get(LABEL_MODEL)
    ours = bool(model) and labels.get("app.kubernetes.io/managed-by") == MANAGED_BY
    return str(model) if ours else None


async def _until_done(what: str, attempt: Callable[[], Awaitable[None]]) -> None:
    """Run `attempt` until it raises no `ApiError` (waits doubling to 30 s between)."""
    delay = 1.0
    while True:
        try:
            await attempt()
            return
        except ApiError as exc:
            log.warning("%s not seeded yet: %s; retrying in %.0fs", what, exc, delay)
            await asyncio.sleep(delay)
            delay = min(30.0, delay * 2)
