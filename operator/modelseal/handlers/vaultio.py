"""The operator's Vault session: lazy login, re-login on an expired token, timed calls.

Blocking hvac calls run in a worker thread; one call at a time per session keeps the
client's connection pool simple.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TypeVar

import hvac

from modelseal.config import Settings
from modelseal.handlers.metrics import Metrics
from modelseal.vault import provision
from modelseal.vault.auth import VaultAuthError, VaultError, VaultUnreachableError, close

log = logging.getLogger(__name__)
T = TypeVar("T")


class VaultSession:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._client: hvac.Client | None = None
        self._lock = asyncio.Lock()

    def _login(self) -> hvac.Client:
        s = self.settings
        return provision.operator_login(
            addr=s.vault_addr,
            ca_file=s.vault_ca_file,
            token_file=s.vault_token_file,
            k8s_mount=s.vault_kubernetes_mount,
            role=s.operator_vault_role,
            jwt_file=s.operator_token_file,
        )

    def _call(self, op: str, fn: Callable[[hvac.Client], T]) -> T:
        started = time.monotonic()
        try:
            for attempt in (1, 2):
                if self._client is None:
                    self._client = self._login()
                try:
                    return fn(self._client)
                except VaultAuthError:
                    # An expired or revoked operator token: log in again, once.
                    close(self._client)
                    self._client = None
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")  # pragma: no cover
        except VaultUnreachableError:
            self.metrics.vault_errors.labels(op, "unreachable").inc()
            raise
        except VaultAuthError:
            self.metrics.vault_errors.labels(op, "auth").inc()
            raise
        except VaultError:
            self.metrics.vault_errors.labels(op, "refused").inc()
            raise
        finally:
            self.metrics.vault_seconds.labels(op).observe(time.monotonic() - started)

    async def run(self, op: str, fn: Callable[[hvac.Client], T]) -> T:
        async with self._lock:
            return await asyncio.to_thread(self._call, op, fn)

    def close(self) -> None:
        if self._client is not None:
            close(self._client)
            self._client = None
