"""The ProtectedModel reconcile: gather its inputs, decide (`modelseal.policies`), apply.

1. gather: the model, its license and the other models drawing on its seats (the
   license decision), the live objects of its names, who runs as its ServiceAccount;
2. Pods of intruders are deleted (`identity`);
3. the conflicts with objects the model does not own;
4. when the model may not run: serving stops first (zero replicas, the license file says
   revoked), then Vault is withdrawn, so that a Vault outage never keeps it serving; when
   it may: the Vault step first, then the objects, with serving held as it is through a
   Vault problem or an intruder (`vaultstep`, `apply`);
5. the status, with an Event and an audit record per decision (`status`); the license is
   re-evaluated when the model's claim on its seats changed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelseal.handlers.controller.apply import Applier
from modelseal.handlers.controller.context import (
    LICENSES,
    MODELS,
    Context,
    Enqueue,
    Memory,
    models_of_license,
)
from modelseal.handlers.controller.events import log_about
from modelseal.handlers.controller.identity import IdentityGuard, Workloads
from modelseal.handlers.controller.licensebook import LicenseBook
from modelseal.handlers.controller.pods import ModelPods
from modelseal.handlers.controller.status import StatusWriter
from modelseal.handlers.controller.vaultstep import VaultStep
from modelseal.handlers.tenancy import TenancySource
from modelseal.handlers.workqueue import RetryLater
from modelseal.k8s import api as k8s
from modelseal.k8s.cache import reading_through
from modelseal.models import tenancy
from modelseal.models.identity import IdentityCheck
from modelseal.models.license import LicenseDecision, decide
from modelseal.models.spec import MODEL_KIND, LicenseSpec, ModelSpec, ObjectMeta, parse_meta
from modelseal.models.status import KeyState, ModelObservation, WorkloadState
from modelseal.policies import gates, licensing, objects, readiness, reporting
from modelseal.policies.gates import LEGACY_ACCOUNT, REDIS_AUTH, Gate
from modelseal.render import manifests
from modelseal.render.model import Rendered, render_model
from modelseal.render.names import LABEL_MODEL, Names
from modelseal.vault.auth import VaultError

Live = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Inputs:
    """What a model's decisions are made on, gathered before any of them."""

    spec: ModelSpec
    names: Names
    lic: LicenseSpec | None
    decision: LicenseDecision
    live: Live
    identity: IdentityCheck
    workloads: Workloads


@dataclass(frozen=True)
class Outcome:
    """What the Vault step and the objects came to."""

    key: KeyState
    error: str | None
    effective: bool
    rendered: Rendered
    deployment: dict[str, Any] | None


class ModelReconciler:
    def __init__(
        self,
        ctx: Context,
        memory: Memory,
        enqueue: Enqueue,
        vault: VaultStep,
        applier: Applier,
        identity: IdentityGuard,
        status: StatusWriter,
        pods: ModelPods,
        book: LicenseBook,
    ) -> None:
        self.ctx = ctx
        self.pods = pods
        self.book = book
        self.memory = memory
        self.enqueue = enqueue
        self.vault = vault
        self.applier = applier
        self.identity = identity
        self.status = status
        self.tenancy = TenancySource(ctx.settings.tenancy_file, ctx.settings.model_namespace_label)
        self.finalizer = f"{ctx.settings.api_group}/finalizer"

    def forget(self, key: str) -> None:
        """Drop what is remembered of the model `key` (it is gone)."""
        self.memory.forget_model(key)
        self.status.forget_model(key)

    async def reconcile(self, namespace: str, name: str) -> float | None:
        body = await self.ctx.kube.get(MODELS, namespace, name)
        key = f"{namespace}/{name}"
        gate = gates.gate(body, self.finalizer)
        if body is None or gate is Gate.GONE:
            self.forget(key)
            return None
        meta = parse_meta(body)
        ref = reporting.ref(MODEL_KIND, meta)
        if gate is Gate.DELETING:
            return None  # the delete handler withdraws access; owners' GC removes the rest
        if gate is Gate.NO_FINALIZER:
            # kopf adds the finalizer first; provisioning waits for it (see module docs).
            log_about(logging.DEBUG, ref, "waiting for the finalizer before reconciling")
            return None
        before = dict(body.get("status") or {})
        now = self.ctx.now()
        spec, spec_error = gates.parsed_model(body)
        if spec is None:
            obs = await self._invalid(meta, spec_error or "invalid spec")
            await self.status.write_model(ref, obs, before, now, None)
            return None
        # The platform's tenancy declaration: a key or image the namespace may not use.
        if not_allowed := await self.tenancy.check(spec, self.ctx.kube):
            obs = await self._invalid(meta, not_allowed, tenancy.REASON_NOT_ALLOWED)
            await self.status.write_model(ref, obs, before, now, None)
            return None

        inputs = await self._gather(spec, now, before)
        if inputs.identity.pods_to_delete:
            await self.identity.delete_intruders(spec, inputs.identity, ref)
        preview = render_model(spec, inputs.lic, inputs.decision.granted, self.ctx.settings)
        conflict_msg = gates.conflicts(spec, self.ctx.settings, preview, inputs.live)
        out = await self._act(inputs, conflict_msg, preview.names.control_secret, ref)
        if not conflict_msg:
            await self.identity.migrate_service_account(spec, inputs.live, ref)

        workload = readiness.workload_state(out.deployment, out.rendered.replicas)
        pods = await self._pods(spec)
        obs = ModelObservation(
            meta=meta,
            spec=spec,
            decision=inputs.decision,
            key=out.key,
            workload=workload,
            artifact=readiness.artifact_state(spec, pods, workload),
            conflict=conflict_msg,
            error=out.error,
            endpoint=out.rendered.endpoint,
            granted_replicas=out.rendered.replicas,
            service_account=inputs.names.service_account,
        )
        await self.status.write_model(ref, obs, before, now, spec)

        # The license's seat usage follows its models.
        claim = gates.claim(spec, out.effective)
        if self.memory.claims.get(key) != claim:
            self.memory.claims[key] = claim
            self.enqueue.license(namespace, spec.license_name)

        if out.error:
            raise RetryLater(out.error)
        return gates.next_look(inputs.decision, inputs.identity.clear, now)

    async def _pods(self, spec: ModelSpec) -> list[dict[str, Any]]:
        """The model's Pods: from the index of the Pod watch once it is seeded; listed
        before that, and by the periodic resync (which puts the index right with what it
        found: a deletion the watch missed while away)."""
        if self.pods.ready and not reading_through():
            return self.pods.of(spec.namespace, spec.name)
        listing = self.pods.begin(spec.namespace, spec.name)
        found = await self.ctx.kube.list(k8s.POD, spec.namespace, f"{LABEL_MODEL}={spec.name}")
        self.pods.fill(listing, found)
        return found

    async def _gather(self, spec: ModelSpec, now: datetime, status: dict[str, Any]) -> Inputs:
        names = self.ctx.names(spec.namespace, spec.name, spec.uid)
        self.memory.accounts[(spec.namespace, names.service_account)] = spec.name
        lic, decision = await self._license_decision(spec, now, status)
        live = await self._live_objects(spec, names)
        # Who else runs as the model's ServiceAccount (checked before every grant).
        identity, workloads = await self.identity.check(spec, names.service_account)
        return Inputs(spec, names, lic, decision, live, identity, workloads)

    async def _license_decision(
        self, spec: ModelSpec, now: datetime, status: dict[str, Any]
    ) -> tuple[LicenseSpec | None, LicenseDecision]:
        """The license and the decision on it: on the watch's view of the license and its
        models when that confirms what the status says (`licensebook`), else (a change,
        the view not seeded, the resync) on a fresh GET of the license and LIST of its
        models."""
        ns, name = spec.namespace, spec.license_name
        if self.book.ready and not reading_through():
            lic, lic_error = gates.parsed_license(self.book.license(ns, name))
            models = self.book.models_naming(ns, name) if lic is not None else []
            decision = self._decide(spec, now, lic, lic_error, models)
            if licensing.confirms(decision, status):
                return lic, decision
        lic, lic_error = gates.parsed_license(await self.ctx.kube.get(LICENSES, ns, name))
        models = (
            await models_of_license(self.ctx.kube, self.memory, ns, name) if lic is not None else []
        )
        return lic, self._decide(spec, now, lic, lic_error, models)

    def _decide(
        self,
        spec: ModelSpec,
        now: datetime,
        lic: LicenseSpec | None,
        lic_error: str | None,
        models: list[dict[str, Any]],
    ) -> LicenseDecision:
        return decide(
            spec,
            lic,
            gates.peers(spec, models),
            now,
            lic_error,
            require_durable_quota_state=self.ctx.settings.quota_require_durable_state,
        )

    async def _act(
        self,
        inputs: Inputs,
        conflict_msg: str | None,
        secret_name: str,
        ref: dict[str, str],
    ) -> Outcome:
        spec, lic, live = inputs.spec, inputs.lic, inputs.live
        settings = self.ctx.settings
        secret_live = live.get("Secret")
        redis_live = live.get(REDIS_AUTH)
        deployment = live.get("Deployment")
        if not gates.may_run(inputs.decision, conflict_msg):
            # The model may not run: stop serving first (zero replicas, the license file
            # says revoked so the gateway answers 403 and the unsealer wipes), and only then
            # withdraw Vault, so that a Vault outage never keeps it serving.
            rendered = render_model(spec, lic, False, settings)
            redis_error = None
            if not conflict_msg:
                await self.applier.ensure_control_secret(spec, secret_live, secret_name, ref)
                redis_error = await self.applier.ensure_redis_auth(spec, rendered, redis_live, ref)
                deployment = await self.applier.apply(rendered, live, ref)
            key, error = await self.vault.run(
                spec, inputs.decision, conflict_msg, inputs.identity, ref
            )
            return Outcome(key, error or redis_error, False, rendered, deployment)
        key, error = await self.vault.run(spec, inputs.decision, conflict_msg, inputs.identity, ref)
        # Vault being down is no license decision: the license stays granted in what the
        # gateway and unsealer read, so running Pods keep serving and new ones wait for
        # Vault. Likewise while an intruder holds the account: the Vault role is gone,
        # the running Pods (which hold their model already) are left as they are.
        effective = gates.serves(key)
        rendered = render_model(spec, lic, effective, settings)
        if gates.holds(key):
            # Leave the replica count alone.
            rendered = objects.with_replicas(rendered, objects.replicas_of(deployment))
        await self.applier.ensure_control_secret(spec, secret_live, secret_name, ref)
        # Missing credentials are reported (Degraded) and retried; the Pods wait for the
        # Secret's volume meanwhile (the gateway never runs without them).
        error = error or await self.applier.ensure_redis_auth(spec, rendered, redis_live, ref)
        if not error:
            export = (spec.namespace, inputs.names.usage_export_secret, spec.uid)
            if manifests.needs_usage_token(settings) or export not in self.memory.gone_secrets:
                error = await self.applier.ensure_usage_export(spec, ref)
                if not error and not manifests.needs_usage_token(settings):
                    self.memory.gone_secrets.add(export)
        deployment = await self.applier.apply(rendered, live, ref)
        return Outcome(key, error, effective, rendered, deployment)

    async def _invalid(
        self, meta: ObjectMeta, message: str, reason: str = "InvalidSpec"
    ) -> ModelObservation:
        """A spec the operator cannot act on: no Pods (first), then no Vault access."""
        kube = self.ctx.kube
        names = self.ctx.names(meta.namespace, meta.name, meta.uid)
        ref = reporting.ref(MODEL_KIND, meta)
        dep = await kube.get(k8s.DEPLOYMENT, meta.namespace, names.deployment)
        if dep is not None and objects.owned(dep, meta.uid) and objects.replicas_of(dep):
            await kube.merge_patch(
                k8s.DEPLOYMENT, meta.namespace, names.deployment, {"spec": {"replicas": 0}}
            )
            dep = await kube.get(k8s.DEPLOYMENT, meta.namespace, names.deployment)
        key = gates.invalid_key(message)
        error = None
        try:
            await self.vault.withdraw(names.vault_policy, names.vault_role, ref, message)
        except VaultError as exc:
            key = gates.vault_failed(exc, unreachable=True)
            error = str(exc)
        return ModelObservation(
            meta=meta,
            spec=None,
            spec_error=message,
            spec_reason=reason,
            key=key,
            workload=readiness.workload_state(dep, 0)
            if dep is not None and objects.owned(dep, meta.uid)
            else WorkloadState(),
            error=error,
            service_account=names.service_account,
        )

    async def _live_objects(self, spec: ModelSpec, names: Names) -> Live:
        wanted = {
            "ServiceAccount": (k8s.SERVICE_ACCOUNT, names.service_account),
            # Named after the model, as before issue 12: migrated away (`identity`).
            LEGACY_ACCOUNT: (k8s.SERVICE_ACCOUNT, spec.name),
            "ConfigMap": (k8s.CONFIG_MAP, names.license_config),
            "Service": (k8s.SERVICE, names.service),
            "NetworkPolicy": (k8s.NETWORK_POLICY, names.network_policy),
            "Deployment": (k8s.DEPLOYMENT, names.deployment),
            "Secret": (k8s.SECRET, names.control_secret),
            REDIS_AUTH: (k8s.SECRET, names.redis_auth_secret),
        }
        # The quota Redis credentials' copy, when the model needs none: read until found
        # absent (an owned one is deleted by `ensure_redis_auth`), then not again.
        redis = (spec.namespace, names.redis_auth_secret, spec.uid)
        redis_needed = manifests.needs_redis_auth(spec, self.ctx.settings)
        if not redis_needed and redis in self.memory.gone_secrets:
            del wanted[REDIS_AUTH]
        results = await asyncio.gather(
            *(self.ctx.kube.get(kind, spec.namespace, name) for kind, name in wanted.values())
        )
        live = {k: v for k, v in zip(wanted, results, strict=True) if v is not None}
        if not redis_needed and REDIS_AUTH in wanted and REDIS_AUTH not in live:
            self.memory.gone_secrets.add(redis)
        return live
