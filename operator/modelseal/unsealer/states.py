"""The unsealer's states and exit codes (what probes, `/status` and the kubelet see)."""

from __future__ import annotations

from enum import StrEnum

from modelseal.crypto import BundleError
from modelseal.vault.auth import VaultError

EXIT_BUNDLE = 1
EXIT_CONFIG = 2
EXIT_VAULT = 3
EXIT_IO = 4


class ConfigError(Exception):
    pass


class UnsealerState(StrEnum):
    """The states `/status`, `/readyz` and `/healthz` report (`service`'s machine)."""

    STARTING = "starting"
    UNSEALING = "unsealing"
    READY = "ready"
    REVOKING = "revoking"
    REVOKED = "revoked"
    FAILED = "failed"
    STOPPING = "stopping"


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, ConfigError):
        return EXIT_CONFIG
    if isinstance(exc, BundleError):
        return EXIT_BUNDLE
    if isinstance(exc, VaultError):
        return EXIT_VAULT
    return EXIT_IO
