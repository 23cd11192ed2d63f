"""The finalizer's work when a model is deleted: stop serving, then withdraw Vault."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

from modelseal.handlers.controller.context import Context, Enqueue, Memory
from modelseal.handlers.controller.events import log_about
from modelseal.handlers.controller.vaultstep import VaultStep
from modelseal.k8s import api as k8s
from modelseal.k8s.api import ApiError
from modelseal.models.spec import MODEL_KIND, ObjectMeta, parse_meta
from modelseal.policies import gates, licensing, objects, reporting
from modelseal.render.model import render_model
from modelseal.render.names import Names


class ModelDeletion:
    def __init__(
        self,
        ctx: Context,
        memory: Memory,
        enqueue: Enqueue,
        vault: VaultStep,
        forget: Callable[[str], None],
    ) -> None:
        self.ctx = ctx
        self.memory = memory
        self.enqueue = enqueue
        self.vault = vault
        self.forget = forget

    async def delete_model(self, body: Mapping[str, Any]) -> None:
        """Finalizer work: stop serving, then withdraw the model's Vault access.

        Serving stops first and does not depend on Vault: the Deployment is scaled to zero
        and deleted, the license file is turned into a revocation (the gateway answers 403,
        the unsealer wipes its tmpfs) and the model's ServiceAccount is deleted (its tokens
        stop passing Vault's TokenReview). Then the Vault role and policy are withdrawn;
        that raises while Vault cannot be reached, and the caller retries until it can.
        """
        meta = parse_meta(body)
        names = self.ctx.names(meta.namespace, meta.name, meta.uid)
        ref = reporting.ref(MODEL_KIND, meta)
        async with self.memory.lock(meta.key):
            stop_error: ApiError | None = None
            try:
                await self._stop_serving(body, meta, names, ref)
            except ApiError as exc:
                stop_error = exc  # Vault is still withdrawn below; then retried
                log_about(logging.WARNING, ref, "could not stop serving yet: %s", exc)
            await self.vault.withdraw(names.vault_policy, names.vault_role, ref, "model deleted")
            if stop_error is not None:
                raise stop_error
        self.forget(meta.key)
        if (license_name := licensing.license_ref_name(body)) is not None:
            # Seats freed: the license's other models may now fit.
            self.enqueue.license(meta.namespace, license_name)
            self.memory.license_seen.pop(f"{meta.namespace}/{license_name}", None)

    async def _stop_serving(
        self, body: Mapping[str, Any], meta: ObjectMeta, names: Names, ref: Mapping[str, str]
    ) -> None:
        """Kubernetes only (no Vault): no replicas, revoked license file, no ServiceAccount."""
        kube = self.ctx.kube
        ns = meta.namespace
        deployment = names.deployment
        dep = await kube.get(k8s.DEPLOYMENT, ns, deployment)
        if dep is not None and objects.owned(dep, meta.uid):
            if objects.replicas_of(dep):
                await kube.merge_patch(k8s.DEPLOYMENT, ns, deployment, {"spec": {"replicas": 0}})
            with contextlib.suppress(ApiError):
                if await kube.delete(k8s.DEPLOYMENT, ns, deployment, uid=objects.uid_of(dep)):
                    log_about(
                        logging.INFO, ref, "Deployment %s deleted (model deleted)", deployment
                    )
        spec, _ = gates.parsed_model(body)
        if spec is not None:
            revoked = render_model(spec, None, False, self.ctx.settings).license_config
            config = revoked["metadata"]["name"]
            live = await kube.get(k8s.CONFIG_MAP, ns, config)
            if (patch := objects.revoked_config_patch(live, revoked, meta.uid)) is not None:
                await kube.merge_patch(k8s.CONFIG_MAP, ns, config, patch)
        # The model's account, and the one named after the model before issue 12.
        for account in (names.service_account, meta.name):
            sa = await kube.get(k8s.SERVICE_ACCOUNT, ns, account)
            if sa is not None and objects.owned(sa, meta.uid):
                with contextlib.suppress(ApiError):
                    await kube.delete(k8s.SERVICE_ACCOUNT, ns, account, uid=objects.uid_of(sa))
