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
from modelseal.k8s import api as k8s
from modelseal.k8s.api import ApiError
from modelseal.models.identity import IdentityCheck, check_identity
from modelseal.models.spec import ModelSpec
from modelseal.policies import objects
from modelseal.policies.gates import LEGACY_ACCOUNT

Workloads = dict[str, list[dict[str, Any]]]


class IdentityGuard:
    def __init__(self, ctx: Context, events: Events) -> None:
        self.ctx = ctx
        self.events = events

    async def check(self, spec: ModelSpec, account: str) -> tuple[IdentityCheck, Workloads]:
        """List what runs (or would run) Pods as `account` in the model's namespace."""
        ns = spec.namespace
        kube = self.ctx.kube
        pods, *lists = await asyncio.gather(
            kube.list(k8s.POD, ns, field_selector=f"spec.serviceAccountName={account}"),
            *(kube.list(kind, ns) for kind in k8s.WORKLOADS),
        )
        found: Workloads = {"Pod": pods}
        for kind, items in zip(k8s.WORKLOADS, lists, strict=True):
            found[kind.kind] = items
        names = self.ctx.names(ns, spec.name, spec.uid)
        return check_identity(account, spec.uid, names.deployment, found), found

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
        workloads: Mapping[str, list[dict[str, Any]]],
        ref: Mapping[str, str],
    ) -> None:
        """Delete the ServiceAccount named after the model (before issue 12) once none of the
        model's own Pods runs as it any more; only when the model owns it."""
        legacy = live.get(LEGACY_ACCOUNT)
        if legacy is None or not objects.owned(legacy, spec.uid):
            return
        kube = self.ctx.kube
        names = self.ctx.names(spec.namespace, spec.name, spec.uid)
        pods = await kube.list(
            k8s.POD, spec.namespace, field_selector=f"spec.serviceAccountName={spec.name}"
        )
        found = {**workloads, "Pod": pods}
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
