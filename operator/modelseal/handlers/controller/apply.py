"""The objects a model owns: created when missing, put back when they drifted.

`modelseal.policies.objects` decides what each object needs; this writes it and tells of
it (the drift-repair metric, a log line, an Event)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from typing import Any

from modelseal.handlers.auditing import model_audit_key
from modelseal.handlers.controller.context import Context
from modelseal.handlers.controller.events import Events, log_about
from modelseal.handlers.usage_export_secret import ensure_usage_export_secret
from modelseal.handlers.workqueue import RetryLater
from modelseal.k8s import api as k8s
from modelseal.k8s.api import ApiError
from modelseal.models.spec import ModelSpec
from modelseal.policies import objects
from modelseal.render import manifests
from modelseal.render.compare import update_body
from modelseal.render.model import Rendered
from modelseal.render.names import LABEL_VERSION


class Applier:
    def __init__(self, ctx: Context, events: Events) -> None:
        self.ctx = ctx
        self.events = events

    async def apply(
        self, rendered: Rendered, live: Mapping[str, dict[str, Any]], ref: Mapping[str, str]
    ) -> dict[str, Any] | None:
        """Create what is missing and put back what drifted; returns the live Deployment."""
        created: list[str] = []
        deployment = live.get("Deployment")
        for obj in rendered.objects():
            desired = objects.stamp(obj)
            kind = k8s.KINDS[obj["kind"]]
            name = obj["metadata"]["name"]
            namespace = obj["metadata"]["namespace"]
            found = live.get(obj["kind"])
            action = objects.apply_action(desired, found)
            if found is None:
                try:
                    result = await self.ctx.kube.create(kind, namespace, desired)
                except ApiError as exc:
                    if not exc.conflict:
                        raise
                    raise RetryLater(f"{obj['kind']} {name} appeared meanwhile") from None
                created.append(f"{obj['kind']} {name}")
            elif isinstance(action, objects.Update):
                result = await self.ctx.kube.replace(
                    kind, namespace, name, update_body(desired, found)
                )
                await self._updated(obj, action, rendered.replicas, ref)
            else:
                result = found
            if obj["kind"] == "Deployment":
                deployment = result
        if created:
            await self.events.post(ref, "Normal", "Created", "created " + ", ".join(created))
        return deployment

    async def _updated(
        self,
        obj: Mapping[str, Any],
        action: objects.Update,
        replicas: int,
        ref: Mapping[str, str],
    ) -> None:
        kind, name = obj["kind"], obj["metadata"]["name"]
        if action.drift:
            self.ctx.metrics.drift_repairs.labels(kind).inc()
            shown = action.shown()
            log_about(logging.WARNING, ref, "%s %s drifted (%s); put back", kind, name, shown)
            await self.events.post(
                ref,
                "Warning",
                "DriftRepaired",
                f"{kind} {name} was changed outside the operator ({shown}); put back",
            )
            return
        log_about(logging.INFO, ref, "%s %s updated", kind, name)
        if kind == "Deployment":
            version = obj["spec"]["template"]["metadata"]["labels"][LABEL_VERSION]
            await self.events.post(
                ref,
                "Normal",
                "Updated",
                f"Deployment {name}: {replicas} replica(s), version {version}",
            )

    async def ensure_control_secret(
        self, spec: ModelSpec, live: dict[str, Any] | None, name: str, ref: Mapping[str, str]
    ) -> None:
        """The random token for Triton's restricted APIs (created once, never compared) and
        the gateway's audit checkpoint key (derived from the platform key and put back when
        it differs; without one, random and made once). Values are never logged."""
        want_audit = model_audit_key(self.ctx.settings, spec.namespace, spec.name)
        values = objects.control_secret_values(live, want_audit)
        if values is None:
            return
        token = values.token or secrets.token_hex(32)
        audit_key = values.audit_key or secrets.token_hex(32)
        desired = manifests.control_secret(spec, self.ctx.settings, token, audit_key)
        if live is None:
            await self.ctx.kube.create(k8s.SECRET, spec.namespace, desired)
            return
        body = update_body(desired, live)
        body["stringData"] = desired["stringData"]
        await self.ctx.kube.replace(k8s.SECRET, spec.namespace, name, body)
        await self.events.post(
            ref, "Warning", "DriftRepaired", f"Secret {name} lost or changed a key: put back"
        )

    async def ensure_usage_export(self, spec: ModelSpec, ref: Mapping[str, str]) -> str | None:
        """The model's copy of the usage export token (``usage_export_secret``): made with
        the model's other objects, so that its Pods do not wait for the usage writer's next
        round; why it cannot be made, or None (reported like missing Redis credentials)."""
        return await ensure_usage_export_secret(
            self.ctx.kube, self.ctx.settings, spec, ref, self.events.post
        )

    async def ensure_redis_auth(
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
        s = self.ctx.settings
        kube = self.ctx.kube
        name = rendered.names.redis_auth_secret
        if rendered.redis_auth is None:
            if live is not None and objects.owned(live, spec.uid):
                try:
                    gone = await kube.delete(
                        k8s.SECRET, spec.namespace, name, uid=objects.uid_of(live)
                    )
                except ApiError as exc:
                    if not exc.conflict:
                        raise
                    gone = False
                if gone:
                    log_about(logging.INFO, ref, "Secret %s deleted (no quota Redis)", name)
            return None
        where = f"{s.redis_auth_secret_namespace}/{s.redis_auth_secret}"
        source = await kube.get(k8s.SECRET, s.redis_auth_secret_namespace, s.redis_auth_secret)
        problem = objects.redis_source_problem(where, source)
        if source is None or problem:
            return problem
        desired = manifests.redis_auth_secret(spec, s, source.get("data") or {})
        if live is None:
            try:
                await kube.create(k8s.SECRET, spec.namespace, desired)
            except ApiError as exc:
                if not exc.conflict:
                    raise
                raise RetryLater(f"Secret {name} appeared meanwhile") from None
            log_about(
                logging.INFO, ref, "Secret %s created (quota Redis user from %s)", name, where
            )
            return None
        if objects.secret_in_sync(desired, live):
            return None
        body = update_body(desired, live)
        body.pop("stringData", None)
        body["data"] = desired["data"]
        await kube.replace(k8s.SECRET, spec.namespace, name, body)
        self.ctx.metrics.drift_repairs.labels("Secret").inc()
        log_about(logging.WARNING, ref, "Secret %s differed from %s; put back", name, where)
        await self.events.post(
            ref, "Warning", "DriftRepaired", f"Secret {name} differed from {where}; put back"
        )
        return None
