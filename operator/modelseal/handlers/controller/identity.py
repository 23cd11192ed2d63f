"""Who runs as the model's ServiceAccount (`modelseal.models.identity` decides).

Pods the model does not own that run as its account are deleted; the ServiceAccount named
after the model (before issue 12) is deleted once none of the model's Pods runs as it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from modelseal.handlers.controller.context import Context
from modelseal.handlers.controller.events import Events, log_about
from modelseal.handlers.controller.filing import Filing
from modelseal.k8s import api as k8s
from modelseal.k8s.api import ApiError
from modelseal.models.identity import (
    INDEXABLE,
    IdentityCheck,
    check_identity,
    identity_view,
    service_account_of,
)
from modelseal.models.spec import ModelSpec
from modelseal.policies import objects
from modelseal.policies.gates import LEGACY_ACCOUNT

Workloads = dict[str, list[dict[str, Any]]]


class AccountIndex:
    """Pods and the workloads that make them (`INDEXABLE`) by the ServiceAccount they run
    as: their `identity_view`, fed by the operator's followers of those kinds (`observe`:
    their listings, then their watches; `modelseal.k8s.watch`). Complete once each kind
    was listed (`seeded`): every object that exists is in it, with the state of its
    latest event. It can still name an object that is gone (a deletion not yet seen; the
    identity check then lists, see `IdentityGuard.check`)."""

    def __init__(self) -> None:
        #: filed under (kind, namespace, account)
        self._filing: Filing[tuple[str, str, str]] = Filing()

    def __len__(self) -> int:
        return len(self._filing)

    @property
    def ready(self) -> bool:
        return self._filing.ready

    def observe(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> bool:
        """File a watch event; True when it changed what the index holds of the object
        (new, gone, another account, owner or deletion mark): only then can it change an
        identity verdict (a status update of a model's own Pod cannot)."""
        uid = str((body.get("metadata") or {}).get("uid") or "")
        if not uid or kind not in INDEXABLE:
            return False
        if event_type == "DELETED":
            return self._filing.remove(uid)
        return self._file(kind, uid, body)

    def seeded(self) -> None:
        """Every kind was listed once (each object observed): the index answers from now
        on."""
        self._filing.seeded()

    def running_as(self, kind: str, namespace: str, account: str) -> list[dict[str, Any]]:
        return list(self._filing.under((kind, namespace, account)).values())

    def _file(self, kind: str, uid: str, body: Mapping[str, Any]) -> bool:
        namespace = str((body.get("metadata") or {}).get("namespace") or "")
        where = (kind, namespace, service_account_of(kind, body))
        return self._filing.put(uid, where, identity_view(kind, body))


class IdentityGuard:
    def __init__(self, ctx: Context, events: Events, accounts: AccountIndex) -> None:
        self.ctx = ctx
        self.events = events
        self.accounts = accounts

    async def check(self, spec: ModelSpec, account: str) -> tuple[IdentityCheck, Workloads]:
        """What runs (or would run) Pods as `account` in the model's namespace.

        With the account index complete, what runs as the account comes from it (no
        list); a verdict other than clear is checked again with every kind listed, since
        an index can still hold an object deleted while a watch was away, or not yet hold
        the ReplicaSet of the model's own new Pod. The views are a subset of what the lists
        hold, so an intruder the lists would show is never missed: the model owns fewer
        of them, never more."""
        names = self.ctx.names(spec.namespace, spec.name, spec.uid)
        if self.accounts.ready:
            found = self._indexed(spec.namespace, account)
            verdict = check_identity(account, spec.uid, names.deployment, found)
            if verdict.clear:
                return verdict, found
        found = await self.list_all(spec.namespace, account)
        return check_identity(account, spec.uid, names.deployment, found), found

    def _indexed(self, ns: str, account: str) -> Workloads:
        """What the index holds as running as `account`: every kind is indexed."""
        return {kind: self.accounts.running_as(kind, ns, account) for kind in INDEXABLE}

    async def list_all(self, ns: str, account: str) -> Workloads:
        """The Pods running as `account` and every workload of the namespace, listed."""
        kube = self.ctx.kube
        pods, *lists = await asyncio.gather(
            kube.list(k8s.POD, ns, field_selector=f"spec.serviceAccountName={account}"),
            *(kube.list(kind, ns) for kind in k8s.WORKLOADS),
        )
        found: Workloads = {"Pod": pods}
        for kind, items in zip(k8s.WORKLOADS, lists, strict=True):
            found[kind.kind] = items
        return found

    async def delete_intruders(
        self, spec: ModelSpec, identity: IdentityCheck, ref: Mapping[str, str]
    ) -> None:
        """Delete Pods that run as the model's ServiceAccount without being the model's."""
        for name, uid in identity.pods_to_delete:
            try:
                gone = await self.ctx.kube.delete(k8s.POD, spec.namespace, name, uid=uid or None)
            except ApiError as exc:
                if exc.conflict:  # another Pod of that name by now: the next check sees it
                    continue
                raise
            if not gone:
                continue
            self.ctx.metrics.drift_repairs.labels("Pod").inc()
            log_about(
                logging.WARNING,
                ref,
                "deleted Pod %s: it ran as the model's ServiceAccount %s",
                name,
                identity.service_account,
            )
            self.ctx.auditor.record(
                "identity.intruder_deleted",
                dict(ref),
                pod=name,
                service_account=f"{spec.namespace}/{identity.service_account}",
            )
            await self.events.post(
                ref,
                "Warning",
                "IntruderDeleted",
                f"deleted Pod {name}: it ran as the model's ServiceAccount "
                f"{identity.service_account} without belonging to the model",
            )

    async def migrate_service_account(
        self,
        spec: ModelSpec,
        live: Mapping[str, dict[str, Any]],
        ref: Mapping[str, str],
    ) -> None:
        """Delete the ServiceAccount named after the model (before issue 12) once none of the
        model's own Pods runs as it any more; only when the model owns it."""
        legacy = live.get(LEGACY_ACCOUNT)
        if legacy is None or not objects.owned(legacy, spec.uid):
            return
        kube = self.ctx.kube
        names = self.ctx.names(spec.namespace, spec.name, spec.uid)
        # Every workload of the namespace (the model's ReplicaSets of either account).
        found = await self.list_all(spec.namespace, spec.name)
        if check_identity(spec.name, spec.uid, names.deployment, found).own_pods:
            return
        try:
            gone = await kube.delete(
                k8s.SERVICE_ACCOUNT, spec.namespace, spec.name, uid=objects.uid_of(legacy)
            )
        except ApiError as exc:
            if exc.conflict:
                return
            raise
        if gone:
            await self.events.post(
                ref,
                "Normal",
                "ServiceAccountMigrated",
                f"ServiceAccount {spec.name} replaced by {names.service_account}",
            )
