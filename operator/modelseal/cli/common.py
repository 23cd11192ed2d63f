"""Shared pieces of the `modelseal` commands: exit codes, error reporting, Vault options,
progress bars."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import hvac

# Exit codes (documented in `modelseal --help`).
EXIT_OK = 0
EXIT_FAILED = 1  # the bundle is bad, or verification failed
EXIT_USAGE = 2  # argparse's own code for bad arguments
EXIT_VAULT = 3  # Vault unreachable, login refused, Transit refused
EXIT_IO = 4  # source/destination problems: missing file, not tmpfs, no room, fetch failed

EXIT_CODES_HELP = """exit codes:
  0  success
  1  the bundle is damaged, tampered with or does not match the pin/signature
  2  bad command-line arguments
  3  Vault problem (unreachable, login refused, Transit refused)
  4  file, source or target problem (missing, not tmpfs, no room, fetch failed)
"""


class CommandError(Exception):
    """An error to print as `modelseal: error: ...` with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def classify(exc: BaseException) -> int | None:
    """The exit code for a known error type, else None (a bug: let it raise)."""
    from modelseal.crypto import BundleError
    from modelseal.sources import SourceError
    from modelseal.unsealer.engine import UnsealError
    from modelseal.vault.auth import VaultError

    if isinstance(exc, CommandError):
        return exc.code
    if isinstance(exc, BundleError):
        return EXIT_FAILED
    if isinstance(exc, VaultError):
        return EXIT_VAULT
    if isinstance(exc, (SourceError, UnsealError, OSError)):
        return EXIT_IO
    return None


def describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror}{where}"
    return str(exc) or type(exc).__name__


DEFAULT_TRANSIT_MOUNT = "transit"
TRANSIT_MOUNT_ENV = "MODELSEAL_VAULT_TRANSIT_MOUNT"  # the operator's setting of the same name


def configured_transit_mount(args: argparse.Namespace) -> str:
    """The Transit mount to use: --transit-mount, else $MODELSEAL_VAULT_TRANSIT_MOUNT, else
    ``transit``. Never the bundle's: see ``checked_transit_mount``."""
    mount = args.transit_mount or os.environ.get(TRANSIT_MOUNT_ENV) or DEFAULT_TRANSIT_MOUNT
    return str(mount).strip("/")


def checked_transit_mount(args: argparse.Namespace, envelope_mount: str) -> str:
    """The configured mount, once the bundle's key envelope agrees with it.

    The envelope is read before the data key is unwrapped, so nothing has authenticated it
    yet: were its mount used, a tampered bundle could send the owner's Vault token to
    another path (``secret/data/...``, another engine). A bundle naming another mount is
    refused (exit 1) before any Vault call."""
    mount = configured_transit_mount(args)
    if envelope_mount.strip("/") != mount:
        raise CommandError(
            f"the bundle's key envelope names Transit mount {envelope_mount[:128]!r}, but the "
            f"configured mount is {mount!r}; the envelope is not authenticated before the "
            "key is unwrapped, so it never chooses a Vault path. If that mount is really "
            f"yours, pass --transit-mount (or set {TRANSIT_MOUNT_ENV}).",
            EXIT_FAILED,
        )
    return mount


def add_vault_options(parser: argparse.ArgumentParser, transit_key_required: bool) -> None:
    group = parser.add_argument_group(
        "Vault",
        "Credentials come from VAULT_TOKEN, a token file (--vault-token-file or "
        "VAULT_TOKEN_FILE), Kubernetes auth (--vault-role / VAULT_K8S_ROLE with "
        "--vault-jwt-file), or ~/.vault-token, in that order.",
    )
    group.add_argument(
        "--vault-addr",
        default=None,
        help="Vault address (default: $VAULT_ADDR, else http://127.0.0.1:8200).",
    )
    group.add_argument(
        "--vault-cacert", type=Path, default=None, help="CA bundle for Vault's TLS ($VAULT_CACERT)."
    )
    group.add_argument(
        "--vault-token-file", type=Path, default=None, help="File holding a Vault token."
    )
    group.add_argument(
        "--vault-role",
        default=None,
        help="Kubernetes-auth role to log in with ($VAULT_K8S_ROLE).",
    )
    group.add_argument(
        "--vault-k8s-mount",
        default=None,
        help="Mount path of Vault's Kubernetes auth method (default: kubernetes).",
    )
    group.add_argument(
        "--vault-jwt-file",
        type=Path,
        default=None,
        help="ServiceAccount token for Kubernetes auth (default: "
        "/var/run/secrets/kubernetes.io/serviceaccount/token).",
    )
    group.add_argument(
        "--transit-mount",
        default=None,
        help=f"Mount path of the Transit engine (default: ${TRANSIT_MOUNT_ENV}, else "
        "'transit'). A bundle whose key envelope names another mount is refused: the "
        "envelope never chooses where the Vault token goes.",
    )
    group.add_argument(
        "--transit-key",
        required=transit_key_required,
        default=None,
        help="Transit key that wraps the data key."
        + ("" if transit_key_required else " Default: the key named in the bundle."),
    )


def vault_client(args: argparse.Namespace) -> hvac.Client:
    from modelseal.vault import auth

    jwt_file = args.vault_jwt_file
    if jwt_file is None and (args.vault_role or os.environ.get("VAULT_K8S_ROLE")):
        jwt_file = Path(
            os.environ.get("VAULT_K8S_JWT_FILE")
            or "/var/run/secrets/kubernetes.io/serviceaccount/token"
        )
    cfg = auth.config_from_env(
        addr=args.vault_addr,
        ca_file=args.vault_cacert,
        token_file=args.vault_token_file,
        k8s_role=args.vault_role,
        k8s_mount=args.vault_k8s_mount,
        jwt_file=jwt_file,
    )
    return auth.login(cfg)


@contextmanager
def progress_bar(
    total: int, desc: str, enabled: bool, unit: str = "B"
) -> Iterator[Callable[[int], None] | None]:
    """A thread-safe tqdm byte counter on stderr, or None when disabled / not a tty."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    bar: Any = tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        dynamic_ncols=True,
        leave=False,
    )
    try:
        yield bar.update
    finally:
        bar.close()


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{n} B"
        size /= 1024
    return f"{n} B"
