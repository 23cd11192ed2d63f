"""Vault garbage collection: our Vault roles whose model is gone (a crash between steps,
a manual edit) are withdrawn."""

from __future__ import annotations

import logging
from typing import Any

from modelseal.handlers.controller.context import MODELS, Context, Memory
from modelseal.models.spec import API_VERSION, MODEL_KIND, parse_meta
from modelseal.policies import gates
from modelseal.render.names import vault_name
from modelseal.vault import provision

log = logging.getLogger("modelseal.operator")


class VaultGarbageCollector:
    def __init__(self, ctx: Context, memory: Memory) -> None:
        self.ctx = ctx
        self.memory = memory

    async def collect(self) -> list[str]:
        """Delete our Vault roles whose model is gone; returns the roles removed."""
        s = self.ctx.settings
        roles = await self.ctx.vault.run(
            "list_roles",
            lambda c: provision.list_roles(c, s.vault_kubernetes_mount, s.vault_policy_prefix),
        )
        removed: list[str] = []
        for binding in roles:
            found = gates.orphaned_model(
                s.vault_policy_prefix, s.namespaces, binding.role, binding.namespace
            )
            if found is None:
                continue  # not one of ours after all, or not watched
            namespace, model = found
            async with self.memory.lock(f"{namespace}/{model}"):
                body = await self.ctx.kube.get(MODELS, namespace, model)
                if body is not None and not parse_meta(body).deleting:
                    continue
                if await self._withdraw(namespace, model):
                    removed.append(binding.role)
                    self.ctx.auditor.record(
                        "key_access.withdrawn",
                        {
                            "apiVersion": API_VERSION,
                            "kind": MODEL_KIND,
                            "namespace": namespace,
                            "name": model,
                            "uid": "",
                        },
                        vault_role=binding.role,
                        reason="orphaned role (model no longer exists)",
                    )
                    log.warning("removed orphaned Vault role %s", binding.role)
        return removed

    async def _withdraw(self, namespace: str, model: str) -> bool:
        s = self.ctx.settings
        policy = role = vault_name(s.vault_policy_prefix, namespace, model)

        def withdraw(c: Any) -> provision.Change:
            return provision.withdraw_access(c, s.vault_kubernetes_mount, policy, role)

        change: provision.Change = await self.ctx.vault.run("withdraw", withdraw)
        return change.changed
