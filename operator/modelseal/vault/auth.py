"""Vault login helpers: a token (dev, CI, a model owner's shell) or Kubernetes auth with a
projected ServiceAccount token (model pods, the operator).

Resolution order of `login_from_env` (used by the CLI and the unsealer):

1. `VAULT_TOKEN` (environment) or the file named by `token_file` / `VAULT_TOKEN_FILE`;
2. Kubernetes auth when a role is given (`role` / `VAULT_K8S_ROLE`), with the JWT read from
   `jwt_file` (the projected ServiceAccount token);
3. `~/.vault-token` (what `vault login` writes).

Tokens and JWTs are read from files at call time and never logged or put in messages.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests


class VaultError(Exception):
    """A Vault call failed."""


class VaultUnreachableError(VaultError):
    """Vault could not be reached (connection refused, DNS, TLS, timeout)."""


class VaultAuthError(VaultError):
    """Login failed or the token lacks the rights for the call."""


class TransitError(VaultError):
    """A Transit call failed (missing key, wrong key, key version below
    min_decryption_version, ...)."""


T = TypeVar("T")
DEFAULT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class VaultConfig:
    addr: str
    ca_file: Path | None = None
    namespace: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    token_file: Path | None = None
    k8s_role: str = ""
    k8s_mount: str = "kubernetes"
    jwt_file: Path | None = None


def call(what: str, addr: str, fn: Callable[[], T]) -> T:
    """Run one hvac call, mapping its exceptions to ours with a clear message."""
    try:
        return fn()
    except requests.exceptions.Timeout:
        raise VaultUnreachableError(f"{what}: Vault at {addr} did not answer in time") from None
    except requests.exceptions.SSLError as exc:
        raise VaultUnreachableError(
            f"{what}: TLS error talking to Vault at {addr}: {exc}"
        ) from None
    except requests.exceptions.ConnectionError:
        raise VaultUnreachableError(f"{what}: cannot reach Vault at {addr}") from None
    except hvac.exceptions.Forbidden as exc:
        raise VaultAuthError(f"{what}: permission denied by Vault ({_vault_text(exc)})") from None
    except hvac.exceptions.Unauthorized as exc:
        raise VaultAuthError(f"{what}: not authorised by Vault ({_vault_text(exc)})") from None
    except hvac.exceptions.VaultError as exc:
        raise VaultError(f"{what}: Vault refused: {_vault_text(exc)}") from None


def _vault_text(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list) and errors:
        return "; ".join(str(e) for e in errors)[:500]
    return str(exc).split(", on ")[0][:500]


def _client(cfg: VaultConfig, token: str | None = None) -> hvac.Client:
    verify: bool | str = str(cfg.ca_file) if cfg.ca_file else True
    return hvac.Client(
        url=cfg.addr, token=token, verify=verify, timeout=cfg.timeout_s, namespace=cfg.namespace
    )


def _read_secret_file(path: Path, what: str) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        raise VaultAuthError(f"cannot read the {what} file {path}: {exc.strerror}") from None
    if not value:
        raise VaultAuthError(f"the {what} file {path} is empty")
    return value


def token_login(cfg: VaultConfig, token: str) -> hvac.Client:
    """A client using `token`; checks the token with a lookup-self."""
    client = _client(cfg, token)
    call("token lookup", cfg.addr, client.auth.token.lookup_self)
    return client


def kubernetes_login(cfg: VaultConfig, role: str, jwt_file: Path) -> hvac.Client:
    """Log in with Vault's Kubernetes auth method using a (projected) ServiceAccount JWT."""
    jwt = _read_secret_file(jwt_file, "ServiceAccount token")
    client = _client(cfg)
    call(
        f"Kubernetes-auth login (role {role!r}, mount {cfg.k8s_mount!r})",
        cfg.addr,
        lambda: client.auth.kubernetes.login(role=role, jwt=jwt, mount_point=cfg.k8s_mount),
    )
    return client


def login(cfg: VaultConfig, env: Mapping[str, str] | None = None) -> hvac.Client:
    """Log in following the resolution order in the module docstring."""
    env = os.environ if env is None else env
    token = env.get("VAULT_TOKEN", "").strip()
    if token:
        return token_login(cfg, token)
    token_file = cfg.token_file or (Path(env["VAULT_TOKEN_FILE"]) if env.get("VAULT_TOKEN_FILE")
                                    else None)  # fmt: skip
    if token_file is not None:
        return token_login(cfg, _read_secret_file(token_file, "Vault token"))
    role = cfg.k8s_role or env.get("VAULT_K8S_ROLE", "")
    if role:
        if cfg.jwt_file is None:
            raise VaultAuthError("Kubernetes auth needs a ServiceAccount token file")
        return kubernetes_login(cfg, role, cfg.jwt_file)
    home_token = Path(env.get("HOME", str(Path.home()))) / ".vault-token"
    if home_token.is_file():
        return token_login(cfg, _read_secret_file(home_token, "Vault token"))
    raise VaultAuthError(
        "no Vault credentials: set VAULT_TOKEN or a token file, or a Kubernetes-auth role"
    )


def config_from_env(env: Mapping[str, str] | None = None, **overrides: Any) -> VaultConfig:
    """A VaultConfig from the usual VAULT_* variables (VAULT_ADDR, VAULT_CACERT,
    VAULT_NAMESPACE, VAULT_TOKEN_FILE, VAULT_K8S_ROLE, VAULT_K8S_MOUNT, VAULT_K8S_JWT_FILE);
    keyword overrides that are not None win."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {
        "addr": env.get("VAULT_ADDR", "http://127.0.0.1:8200"),
        "ca_file": Path(env["VAULT_CACERT"]) if env.get("VAULT_CACERT") else None,
        "namespace": env.get("VAULT_NAMESPACE") or None,
        "token_file": Path(env["VAULT_TOKEN_FILE"]) if env.get("VAULT_TOKEN_FILE") else None,
        "k8s_role": env.get("VAULT_K8S_ROLE", ""),
        "k8s_mount": env.get("VAULT_K8S_MOUNT", "kubernetes"),
        "jwt_file": Path(env["VAULT_K8S_JWT_FILE"]) if env.get("VAULT_K8S_JWT_FILE") else None,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    return VaultConfig(**values)


def revoke_self(client: hvac.Client) -> None:
    """Best effort: revoke the client's own token once it is no longer needed."""
    with contextlib.suppress(Exception):
        client.auth.token.revoke_self()


def close(client: hvac.Client) -> None:
    with contextlib.suppress(Exception):
        client.adapter.close()
