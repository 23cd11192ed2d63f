"""kopf wiring: which events wake which reconcile. The only module that imports kopf.

* ProtectedModel events → reconcile the model (create, update, resume, and any change of
  its status or metadata: the reconcile is level-triggered and writes nothing when in sync).
* ProtectedModel deletion → stop serving (Deployment scaled to zero and deleted, license
  file revoked, ServiceAccount deleted), then withdraw its Vault access under our finalizer
  (``<api_group>/finalizer``), retried until Vault answers; ownerReferences remove the rest.
* ModelLicense events → reconcile the license, which re-evaluates the models naming it.
* Events of objects we own (labelled ``app.kubernetes.io/managed-by``) → reconcile their
  model: a drifted Deployment is put back within a watch event's delay. Every event of
  the owned kinds also feeds the reconciler's watch cache (`modelseal.k8s.cache`), which
  answers the reconcile's reads of those objects instead of a GET each.
* Events of any Pod or workload that runs as a model's ServiceAccount → reconcile that
  model: an intruder loses the model's Vault role (and its Pods) within a watch event's
  delay rather than at the next resync.

The last two are not kopf's watches but our own followers (`modelseal.k8s.watch`,
started with the operator): they hand each object on as it is decoded, so that a
listing of thousands of Pods is never queued whole in kopf's per-object backlogs.

kopf's own persistence uses our prefix (annotations ``<api_group>/…``), posts no Events
of its own (we post ours), and runs standalone (no peering objects to write).

Bounds (issue 13 §3): kopf runs at most ``operator_kopf_worker_limit`` per-object workers
per watched resource (its default is one task per object with pending events, unbounded);
the reconciler runs ``operator_workers`` reconciles at once, with at most
``operator_api_concurrency`` Kubernetes calls in flight (its client's connections) and as
many Vault calls (their thread pool), and folds
the events of one object within ``operator_coalesce_s`` into one reconcile.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import json
import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from modelseal import fastjson
from modelseal.config import Settings
from modelseal.handlers.licenses_usage import UsageWriter
from modelseal.handlers.reconciler import Reconciler
from modelseal.k8s import api as k8s
from modelseal.k8s.access import utc_from_epoch
from modelseal.k8s.api import ApiError, Kube, KubeClient
from modelseal.k8s.watch import Follower, OnEvent, Restart
from modelseal.models.spec import GROUP, LICENSE_PLURAL, MODEL_PLURAL, VERSION
from modelseal.vault.auth import VaultError

log = logging.getLogger("modelseal.operator")

#: (group, version, plural, kind) of the kinds the operator owns objects of.
OWNED = (
    ("apps", "v1", "deployments", "Deployment"),
    ("", "v1", "services", "Service"),
    ("", "v1", "configmaps", "ConfigMap"),
    ("", "v1", "serviceaccounts", "ServiceAccount"),
    ("", "v1", "pods", "Pod"),
    ("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy"),
)
#: Of those, the kinds whose every Pod or Deployment is checked for a model's account.
IDENTITY_KINDS = frozenset({"Pod", "Deployment"})
#: The other kinds that make Pods, watched only for the account index (who runs as a
#: model's ServiceAccount): their events feed the index and wake the model whose account
#: one names, nothing else (our own ReplicaSets carry the model's labels, but their
#: changes show in the Deployment's status, which wakes the model already).
IDENTITY_ONLY = (
    ("apps", "v1", "replicasets", "ReplicaSet"),
    ("apps", "v1", "statefulsets", "StatefulSet"),
    ("apps", "v1", "daemonsets", "DaemonSet"),
    ("batch", "v1", "jobs", "Job"),
    ("batch", "v1", "cronjobs", "CronJob"),
)


class NoDiffBaseStorage(kopf.DiffBaseStorage):
    """kopf's diff base, for an operator whose only change handler is a deletion handler.

    kopf keeps the "essence" of each object (spec, labels, annotations) to tell a
    create or an update from an event that changed nothing, and stores it in the object
    (an annotation, ``last-handled-configuration``) after handling each create or update.
    The operator has no create, update or resume handler (every ProtectedModel change goes
    to the reconciler's queue through an event handler; only the deletion is kopf's, and a
    deletion is told by ``deletionTimestamp``, not by a diff), so that annotation was a
    second PATCH of every new model (after the finalizer's), a write of the whole object to
    etcd sent to every watcher of models, for nothing: 1,000 of the 57,000 requests of a
    1,000-model rollout, each among the slowest (83 ms; issue 13 §3).

    Every essence is empty, the stored one too: kopf sees no change to handle and stores
    nothing. Building it copied every event's body as well (profiled: a third of the
    operator's main-thread CPU at 1,000 models). A change handler registered here would
    never run; `changing_handlers_are_deletions_only` checks the registry for one at start.
    Annotations written by an earlier version stay on their objects, unread."""

    def build(
        self,
        *,
        body: kopf.Body,
        extra_fields: Iterable[kopf.FieldSpec] | None = None,
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return kopf.BodyEssence()

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def changing_handlers_are_deletions_only(registry: kopf.OperatorRegistry) -> bool:
    """Whether kopf's change handlers are all deletion handlers (`NoDiffBaseStorage`
    gives kopf no diff base, so a create, update or resume handler would never run)."""
    # kopf is pinned; its registry has no public listing of the handlers.
    handlers = registry._changing.get_all_handlers()
    return all(h.reason == kopf.Reason.DELETE for h in handlers)


class _WatchJson:
    """What kopf's watch stream calls as ``json``: `modelseal.fastjson` (orjson where it
    reads what the standard library reads, the standard library otherwise)."""

    loads = staticmethod(fastjson.loads)
    dumps = staticmethod(json.dumps)


def decode_watch_events_with_orjson() -> bool:
    """Let kopf's watch stream decode its events with orjson.

    kopf 1.45 decodes every watch event with the standard library's ``json.loads`` (its
    ``kopf._cogs.clients.api.stream``); profiled at 1,000 models (issue 13 §3) that was a
    quarter of the operator's CPU, the Pod, Deployment and ReplicaSet events being ~20 KB
    each. orjson is several times faster and `fastjson` returns what the standard library
    returns. kopf is pinned; a kopf whose module no longer reads ``json.loads`` there is
    left alone (False) and a unit test says so."""
    stream_module = importlib.import_module("kopf._cogs.clients.api")
    current = getattr(stream_module, "json", None)
    if current is _WatchJson:
        return True
    if current is not json:
        return False
    setattr(stream_module, "json", _WatchJson)  # noqa: B010 (a module of kopf, no stubs)
    return True


def configure_kopf(kopf_settings: kopf.OperatorSettings, settings: Settings) -> None:
    decode_watch_events_with_orjson()
    api_group = settings.api_group
    p = kopf_settings.persistence
    p.finalizer = f"{api_group}/finalizer"
    p.progress_storage = kopf.AnnotationsProgressStorage(prefix=api_group)
    p.diffbase_storage = NoDiffBaseStorage()
    kopf_settings.posting.enabled = False
    kopf_settings.peering.standalone = True
    # kopf lists each watched kind whole (one response) at start and after a watch gap:
    # at 1,000 models the Pods, Deployments and ReplicaSets were each ~20 MB of JSON,
    # ~100 MB as Python objects, decoded at once (peak RSS 768 MB after a restart; issue
    # 13 §3). In pages, each page's events are handed on before the next is read.
    kopf_settings.watching.chunk_size = 100
    kopf_settings.watching.server_timeout = 300
    kopf_settings.watching.client_timeout = 330
    kopf_settings.networking.request_timeout = 60
    # Our event handlers only enqueue (the model's delete handler is the one that calls
    # out), so a worker is busy for microseconds. The pool is bounded so that a burst of
    # new objects does not become one task (and one finalizer PATCH in flight) per object
    # at once; its idle workers leave after 50 ms. An idle worker holds its slot and the
    # last event's whole body: with 1 s (and 32 workers), a kind's events were handled at
    # ~32 objects a second, and after a restart at 1,000 models the listed Pods,
    # Deployments and ReplicaSets waited in kopf's backlogs, whole, for a minute (peak RSS
    # 785 MB; issue 13 §3).
    kopf_settings.queueing.worker_limit = settings.operator_kopf_worker_limit
    kopf_settings.queueing.idle_timeout = 0.05
    # kopf's thread pool runs only our synchronous login and probe handlers.
    kopf_settings.execution.max_workers = 2


def bound_reconciler(reconciler: Reconciler, settings: Settings) -> None:
    """The reconciler's bounds: its queue's workers and coalescing, and (in the running
    event loop) the thread pool its blocking Vault client runs in (the Kubernetes client
    is bounded by its connections, `KubeClient`)."""
    reconciler.queue.configure(
        concurrency=settings.operator_workers, coalesce_s=settings.operator_coalesce_s
    )
    asyncio.get_running_loop().set_default_executor(
        ThreadPoolExecutor(
            max_workers=settings.operator_api_concurrency, thread_name_prefix="modelseal-io"
        )
    )


def connection_info(client: KubeClient) -> kopf.ConnectionInfo:
    """kopf's credentials from our client's (a token file read again, an exec plugin's
    credential renewed: kopf asks again when the server answers 401)."""
    access = client.access
    token = client.tokens.token(renew=True)  # runs an exec plugin again, once
    credential = client.tokens.credential()
    return kopf.ConnectionInfo(
        server=access.server,
        ca_data=access.ca_pem,
        insecure=access.insecure or None,
        scheme="Bearer" if token else None,
        token=token,
        certificate_data=(credential.certificate_pem if credential else None)
        or access.certificate_pem,
        private_key_data=(credential.key_pem if credential else None) or access.key_pem,
        default_namespace=access.namespace,
        expiration=utc_from_epoch(credential.expires if credential else None),
    )


def build_registry(
    settings: Settings, reconciler: Reconciler, background: list[asyncio.Task[None]]
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**_: Any) -> kopf.ConnectionInfo:
        # The reconciler's own access (in-cluster, else the kubeconfig), so that kopf's
        # watches and our calls are one identity; kopf calls this again on a 401.
        return connection_info(reconciler.kube.api)

    @kopf.on.startup(registry=registry)
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure_kopf(settings, _settings)
        bound_reconciler(reconciler, _settings)
        await reconciler.auditor.start()
        background.append(asyncio.create_task(_periodic(reconciler, _resync_s), name="resync"))
        background.append(asyncio.create_task(usage_writer.run(), name="license-usage"))
        background.append(asyncio.create_task(reconciler.seed_indexes(), name="indexes"))
        for follower in followers(reconciler, watch_kube, [*_settings.namespaces] or [None]):
            name = f"follow-{follower.kind.plural}"
            background.append(asyncio.create_task(follower.run(), name=name))

    _settings = settings
    # The followers' own connections: each watch holds one for as long as it lasts, so
    # they must not take the reconciler's bounded pool (`operator_api_concurrency`).
    watch_kube = Kube(
        KubeClient(reconciler.kube.api.access, max_connections=0), reconciler.kube.on_call
    )
    usage_writer = UsageWriter(
        settings, reconciler.kube, reconciler.metrics.registry, reconciler.event, reconciler.now
    )
    _resync_s = settings.resync_interval_s

    @kopf.on.cleanup(registry=registry)
    async def cleanup(**_: Any) -> None:
        for task in background:
            task.cancel()
        for task in background:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await usage_writer.close()
        await watch_kube.close()
        await reconciler.queue.close()
        await reconciler.auditor.close()
        reconciler.vault.close()

    @kopf.on.event(GROUP, VERSION, MODEL_PLURAL, registry=registry)
    async def model_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        meta = body.get("metadata") or {}
        reconciler.model_changed(str(meta.get("namespace")), str(meta.get("name")), body, type)

    @kopf.on.delete(GROUP, VERSION, MODEL_PLURAL, registry=registry, optional=False)
    async def model_deleted(body: kopf.Body, **_: Any) -> None:
        try:
            await reconciler.delete_model(dict(body))
        except VaultError as exc:
            raise kopf.TemporaryError(f"cannot withdraw Vault access yet: {exc}", delay=5) from exc
        except ApiError as exc:
            raise kopf.TemporaryError(f"cannot stop serving yet: {exc}", delay=5) from exc

    @kopf.on.event(GROUP, VERSION, LICENSE_PLURAL, registry=registry)
    async def license_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        meta = body.get("metadata") or {}
        reconciler.license_changed(str(meta.get("namespace")), str(meta.get("name")), body, type)

    # The owned kinds (ours or not: the cache follows a key it answers for whoever
    # changes it, `modelseal.k8s.cache`), Pods and every workload kind are followed by
    # our own list-and-watch (`modelseal.k8s.watch`), not kopf: each object goes to the
    # reconciler as it is decoded. One of ours wakes its model (a drifted Deployment is
    # put back within a watch event's delay); any Pod or workload (not only ours) that
    # runs as a model's ServiceAccount wakes that model's check at once, and the account
    # index follows every one of them, so that the check reads no lists.
    reconciler.cache.enable()
    reconciler.follow(kind for _, _, _, kind in FOLLOWED)

    @kopf.on.probe(id="queue", registry=registry)
    def queue_probe(**_: Any) -> int:
        return reconciler.queue.pending()

    if not changing_handlers_are_deletions_only(registry):
        raise RuntimeError("a kopf change handler other than on.delete needs kopf's diff base")
    return registry


#: What the operator follows with its own list-and-watch (group, version, plural, kind).
FOLLOWED = OWNED + IDENTITY_ONLY


def followers(reconciler: Reconciler, kube: Kube, scopes: list[str | None]) -> list[Follower]:
    """A follower of each followed kind in each scope (over `kube`), feeding the
    reconciler."""
    out: list[Follower] = []
    for group, version, plural, kind in FOLLOWED:
        api_kind = k8s.Kind(kind, group, version, plural)
        on_event = (
            _owned_handler(reconciler, kind)
            if (group, version, plural, kind) in OWNED
            else _identity_handler(reconciler, kind)
        )
        for scope in scopes:
            out.append(
                Follower(
                    kube,
                    api_kind,
                    scope,
                    on_event,
                    on_listed=functools.partial(reconciler.scope_listed, kind, scope),
                    on_restart=functools.partial(_count_restart, reconciler, kind),
                )
            )
    return out


def _count_restart(reconciler: Reconciler, kind: str, why: Restart) -> None:
    reconciler.metrics.watch_restarts.labels(kind, why).inc()


def _owned_handler(reconciler: Reconciler, kind: str) -> OnEvent:
    return functools.partial(reconciler.owned_changed, kind, identity=kind in IDENTITY_KINDS)


def _identity_handler(reconciler: Reconciler, kind: str) -> OnEvent:
    return functools.partial(reconciler.identity_changed, kind)


async def _periodic(reconciler: Reconciler, interval_s: float) -> None:
    """Resync every model and license, and collect orphaned Vault roles, now and then."""
    first = True
    while True:
        await asyncio.sleep(min(30.0, interval_s) if first else interval_s)
        first = False
        try:
            removed = await reconciler.collect_vault_garbage()
            if removed:
                log.warning("collected %d orphaned Vault role(s)", len(removed))
        except VaultError as exc:
            log.warning("Vault garbage collection skipped: %s", exc)
        except Exception:
            log.exception("Vault garbage collection failed")
        try:
            await reconciler.resync_all()
        except Exception:
            log.exception("resync failed")
