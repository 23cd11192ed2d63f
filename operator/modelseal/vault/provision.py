"""Vault access of one model: a policy and a Kubernetes-auth role, created and withdrawn.

Every function reads before it writes, so a second call with nothing changed writes
nothing (an operator resync does not touch Vault). Blocking (hvac); the operator calls
these from a worker thread. The policy and role documents come from
`modelseal.render.vault`; this module only moves them in and out of Vault.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions

from modelseal.vault.auth import (
    VaultAuthError,
    VaultConfig,
    call,
    kubernetes_login,
    token_login,
)

log = logging.getLogger(__name__)

#: Role fields compared to decide whether the role needs writing.
ROLE_FIELDS = (
    "bound_service_account_names",
    "bound_service_account_namespaces",
    "audience",
    "token_policies",
    "token_ttl",
    "token_max_ttl",
    "token_no_default_policy",
    "token_type",
    "alias_name_source",
)


@dataclass(frozen=True)
class Change:
    """What a call changed in Vault (for Events, metrics and audit records)."""

    policy_written: bool = False
    role_written: bool = False
    policy_deleted: bool = False
    role_deleted: bool = False

    @property
    def changed(self) -> bool:
        return self.policy_written or self.role_written or self.policy_deleted or self.role_deleted


def operator_login(
    addr: str,
    ca_file: Path | None,
    token_file: Path | None,
    k8s_mount: str,
    role: str,
    jwt_file: Path,
) -> hvac.Client:
    """The operator's own Vault client: a token file (dev) or Kubernetes auth."""
    cfg = VaultConfig(addr=addr, ca_file=ca_file, k8s_mount=k8s_mount)
    if token_file is not None:
        try:
            token = token_file.read_text().strip()
        except OSError as exc:
            raise VaultAuthError(f"cannot read the Vault token file {token_file}: {exc}") from None
        return token_login(cfg, token)
    return kubernetes_login(cfg, role, jwt_file)


def _addr(client: hvac.Client) -> str:
    return str(getattr(client, "url", "?"))


def _read(client: hvac.Client, path: str, what: str) -> dict[str, Any] | None:
    """GET a path; None when Vault says it does not exist."""

    def fn() -> Any:
        try:
            return client.adapter.get(f"/v1/{path}")
        except hvac.exceptions.InvalidPath:
            return None

    response = call(what, _addr(client), fn)
    if not isinstance(response, Mapping):
        return None
    data = response.get("data")
    return dict(data) if isinstance(data, Mapping) else None


def transit_key_exists(client: hvac.Client, mount: str, key: str) -> bool:
    return _read(client, f"{mount.strip('/')}/keys/{key}", f"read Transit key {key}") is not None


def _role_path(k8s_mount: str, role: str) -> str:
    return f"auth/{k8s_mount.strip('/')}/role/{role}"


def _policy_path(name: str) -> str:
    return f"sys/policies/acl/{name}"


def _role_matches(live: Mapping[str, Any], want: Mapping[str, Any]) -> bool:
    for field in ROLE_FIELDS:
        if field not in want:
            continue
        have = live.get(field)
        value = want[field]
        if isinstance(value, list):
            if sorted(str(v) for v in have or []) != sorted(str(v) for v in value):
                return False
        elif field == "token_type":
            # Vault reports "default-service" for a role asking for "service" on some versions.
            if str(have) not in (str(value), f"default-{value}"):
                return False
        elif have != value:
            return False
    return True


def ensure_access(
    client: hvac.Client,
    k8s_mount: str,
    policy_name: str,
    policy: str,
    role_name: str,
    role: Mapping[str, Any],
) -> Change:
    """Create or repair the model's policy and role; write only what differs."""
    policy_written = role_written = False
    live_policy = _read(client, _policy_path(policy_name), f"read policy {policy_name}")
    if live_policy is None or str(live_policy.get("policy", "")).strip() != policy.strip():
        call(
            f"write policy {policy_name}",
            _addr(client),
            lambda: client.adapter.post(
                f"/v1/{_policy_path(policy_name)}", json={"policy": policy}
            ),
        )
        policy_written = True
    path = _role_path(k8s_mount, role_name)
    live_role = _read(client, path, f"read role {role_name}")
    if live_role is None or not _role_matches(live_role, role):
        call(
            f"write role {role_name}",
            _addr(client),
            lambda: client.adapter.post(f"/v1/{path}", json=dict(role)),
        )
        role_written = True
    return Change(policy_written=policy_written, role_written=role_written)


def withdraw_access(
    client: hvac.Client, k8s_mount: str, policy_name: str, role_name: str
) -> Change:
    """Delete the model's role (first: no new logins) and then its policy; idempotent."""
    path = _role_path(k8s_mount, role_name)
    role_deleted = policy_deleted = False
    if _read(client, path, f"read role {role_name}") is not None:
        call(
            f"delete role {role_name}", _addr(client), lambda: client.adapter.delete(f"/v1/{path}")
        )
        role_deleted = True
    ppath = _policy_path(policy_name)
    if _read(client, ppath, f"read policy {policy_name}") is not None:
        call(
            f"delete policy {policy_name}",
            _addr(client),
            lambda: client.adapter.delete(f"/v1/{ppath}"),
        )
        policy_deleted = True
    return Change(role_deleted=role_deleted, policy_deleted=policy_deleted)


@dataclass(frozen=True)
class RoleBinding:
    role: str
    namespace: str
    service_account: str


def list_roles(client: hvac.Client, k8s_mount: str, prefix: str) -> list[RoleBinding]:
    """Our roles (names starting with `prefix_`) and what each is bound to."""
    mount = k8s_mount.strip("/")

    def fn() -> Any:
        try:
            return client.adapter.list(f"/v1/auth/{mount}/role")
        except hvac.exceptions.InvalidPath:
            return None

    response = call(f"list roles of auth/{mount}", _addr(client), fn)
    keys: list[str] = []
    if isinstance(response, Mapping):
        data = response.get("data") or {}
        keys = [str(k) for k in (data.get("keys") or [])]
    out: list[RoleBinding] = []
    for key in keys:
        if not key.startswith(f"{prefix}_"):
            continue
        role = _read(client, _role_path(mount, key), f"read role {key}") or {}
        namespaces = role.get("bound_service_account_namespaces") or [""]
        accounts = role.get("bound_service_account_names") or [""]
        out.append(RoleBinding(key, str(namespaces[0]), str(accounts[0])))
    return out
