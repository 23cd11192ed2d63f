"""The model's Vault access: provisioned while it may run, withdrawn otherwise.

`modelseal.policies.gates.vault_plan` decides; this writes to Vault and tells of it (a
metric per write, a log line, an audit record and an Event per change).

What the last pass found or made in Vault for a model (its Transit key there, its policy
and role as wanted) is remembered, so that a pass woken by an event does not read Vault
again when nothing it needs changed (three reads a pass, a sixth of the operator's CPU in
a rollout, in the blocking client's threads; issue 13 §3). Vault has no watch: the
periodic resync's passes read it again (`reading_through`), so a role or policy changed or
deleted behind the operator's back is put back within a resync, as the drift of its
Kubernetes objects is. Any Vault error or withdrawal forgets the model."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from typing import Any

import orjson

from modelseal.handlers.controller.context import Context
from modelseal.handlers.controller.events import Events, log_about
from modelseal.k8s.cache import reading_through
from modelseal.models.identity import IdentityCheck
from modelseal.models.license import LicenseDecision
from modelseal.models.spec import ModelSpec
from modelseal.models.status import KeyState
from modelseal.policies import gates
from modelseal.render.vault import VaultAccess, vault_access
from modelseal.vault import provision
from modelseal.vault.auth import VaultError, VaultUnreachableError


def _wanted(spec: ModelSpec, access: VaultAccess, transit_mount: str) -> bytes:
    """Everything the Vault step of `spec` checks, as one comparable value: the SHA-256
    of it (the policy text alone is kilobytes; 32 bytes are kept per model)."""
    return hashlib.sha256(
        orjson.dumps(
            {
                "uid": spec.uid,
                "key": f"{transit_mount}/{spec.transit_key}",
                "policy": [access.policy_name, access.policy],
                "role": [access.role_name, access.role],
            },
            option=orjson.OPT_SORT_KEYS,
        )
    ).digest()


class VaultStep:
    def __init__(self, ctx: Context, events: Events) -> None:
        self.ctx = ctx
        self.events = events
        #: role name -> `_wanted` of the model whose access was last found or made so.
        self._provisioned: dict[str, bytes] = {}

    async def withdraw(
        self, policy: str, role: str, ref: Mapping[str, str], why: str
    ) -> provision.Change:
        """Delete the model's role and policy (raises VaultError while Vault cannot)."""
        self._provisioned.pop(role, None)
        mount = self.ctx.settings.vault_kubernetes_mount
        change = await self.ctx.vault.run(
            "withdraw", lambda c: provision.withdraw_access(c, mount, policy, role)
        )
        if change.changed:
            writes = self.ctx.metrics.vault_writes
            if change.role_deleted:
                writes.labels("role_delete").inc()
            if change.policy_deleted:
                writes.labels("policy_delete").inc()
            log_about(logging.INFO, ref, "Vault access withdrawn (%s): role %s", why, role)
            self.ctx.auditor.record(
                "key_access.withdrawn",
                dict(ref),
                vault_role=role,
                vault_policy=policy,
                reason=why,
            )
            await self.events.post(
                ref, "Normal", "VaultAccessWithdrawn", f"role {role} removed: {why}"
            )
        return change

    async def run(
        self,
        spec: ModelSpec,
        decision: LicenseDecision,
        conflict_msg: str | None,
        identity: IdentityCheck,
        ref: Mapping[str, str],
    ) -> tuple[KeyState, str | None]:
        """The key state after the step, and the error to retry on (Vault's), if any."""
        access = vault_access(spec, self.ctx.settings)
        s = self.ctx.settings
        try:
            plan = gates.vault_plan(decision, conflict_msg, identity)
            if isinstance(plan, gates.Provision):
                wanted = _wanted(spec, access, s.vault_transit_mount)
                if not reading_through() and self._provisioned.get(access.role_name) == wanted:
                    return gates.key_provisioned(spec, s, access.role_name), None
                # Forgotten before any call, so that a Vault error leaves it forgotten.
                self._provisioned.pop(access.role_name, None)
                exists = await self.ctx.vault.run(
                    "key_check",
                    lambda c: provision.transit_key_exists(
                        c, s.vault_transit_mount, spec.transit_key
                    ),
                )
                if exists:
                    await self._provision(spec, access, ref)
                    self._provisioned[access.role_name] = wanted
                    return gates.key_provisioned(spec, s, access.role_name), None
                plan = gates.key_missing(spec, s)
            await self.withdraw(access.policy_name, access.role_name, ref, plan.why)
            return plan.key, None
        except VaultUnreachableError as exc:
            self.ctx.metrics.errors.labels("ProtectedModel", "vault").inc()
            return gates.vault_failed(exc, unreachable=True), str(exc)
        except VaultError as exc:
            self.ctx.metrics.errors.labels("ProtectedModel", "vault").inc()
            return gates.vault_failed(exc, unreachable=False), str(exc)

    async def _provision(
        self, spec: ModelSpec, access: VaultAccess, ref: Mapping[str, str]
    ) -> None:
        s = self.ctx.settings
        account = str(access.role["bound_service_account_names"][0])  # type: ignore[index]

        def ensure(c: Any) -> provision.Change:
            return provision.ensure_access(
                c,
                s.vault_kubernetes_mount,
                access.policy_name,
                access.policy,
                access.role_name,
                access.role,
            )

        change = await self.ctx.vault.run("provision", ensure)
        if not change.changed:
            return
        if change.policy_written:
            self.ctx.metrics.vault_writes.labels("policy_write").inc()
        if change.role_written:
            self.ctx.metrics.vault_writes.labels("role_write").inc()
        log_about(logging.INFO, ref, "Vault access provisioned: role %s", access.role_name)
        key = f"{s.vault_transit_mount}/{spec.transit_key}"
        self.ctx.auditor.record(
            "key_access.provisioned",
            dict(ref),
            tenant=spec.tenant,
            license=spec.license_name,
            vault_role=access.role_name,
            vault_policy=access.policy_name,
            transit_key=key,
            service_account=f"{spec.namespace}/{account}",
            token_ttl=access.role["token_ttl"],
        )
        await self.events.post(
            ref,
            "Normal",
            "VaultAccessProvisioned",
            f"role {access.role_name} (ServiceAccount {spec.namespace}/{account}) may "
            f"decrypt with {key} only",
        )
