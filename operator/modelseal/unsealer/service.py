"""The unsealer role: a native sidecar that unseals the model into tmpfs, then guards it.

Life cycle::

    starting -> unsealing -> ready -> revoking -> revoked
        |           \\-> failed (the process exits non-zero; kubelet restarts it)
        \\-> revoking (the license is revoked already: an earlier run's files are wiped)
    revoking -> failed (the wipe failed: liveness 503, the kubelet restarts the container)

`revoking` lasts while Triton unloads the model and the files are wiped; `revoked` is
reported only once the files are gone, so a client that sees it can rely on it.

- HTTP (`control_api.py`) on `unsealer_bind_address:unsealer_port`: `GET /healthz`
  (alive), `GET /readyz` (200 only while the model is published: use it as the startup
  and readiness probe), `GET /status` (JSON, no secrets), `POST /revoke` (bearer token
  from `unsealer_control_token_file` when set).
- Revocation (POST /revoke, or the license file showing every license of the model
  revoked or expired): readiness goes 503 at once, the ready marker is removed, Triton is
  asked to unload each model (`POST /v2/repository/models/<name>/unload`), and the files
  are overwritten with zeros and removed. Revocation is final for this process.
- SIGTERM: the published files are wiped before exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, ClientTimeout

from modelseal.config import TRITON_CONTROL_HEADER, Settings
from modelseal.crypto import BundleError, sign
from modelseal.crypto import format as fmt
from modelseal.crypto.stream import SecretBytes
from modelseal.logging import setup_logging as json_logging
from modelseal.quota.license import LicenseError, parse_licenses
from modelseal.sources import SourceError, open_source
from modelseal.vault import auth, transit
from modelseal.vault.auth import VaultError

from .control_api import ControlApi
from .engine import (
    UnsealError,
    UnsealOptions,
    UnsealReport,
    check_memory_fs,
    clean_stale_staging,
    peak_rss_kib,
    unseal_stream,
    wipe_tree,
)
from .license_check import revocation_reason
from .limits import harden_process
from .states import EXIT_CONFIG, EXIT_IO, ConfigError, UnsealerState, exit_code_for

log = logging.getLogger("modelseal.unsealer")


def setup_logging(level: str) -> None:
    # No tracebacks: an exception's text could quote what the unsealer worked on.
    # Request libraries never log bodies; their debug chatter stays out regardless.
    json_logging(
        level,
        quiet=("aiohttp.access", "urllib3", "botocore", "boto3", "s3transfer"),
        tracebacks=False,
    )


class Unsealer:
    def __init__(self, settings: Settings) -> None:
        self.s = settings
        self.state = UnsealerState.STARTING
        self.reason = ""
        self.report: UnsealReport | None = None
        self.models: list[str] = list(settings.unsealer_triton_models)
        self.started_at = time.time()
        self.ready_at: float | None = None
        self.revoked_at: float | None = None
        self.api = ControlApi(self, settings.unsealer_bind_address, settings.unsealer_port)
        self._revoke_lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._cancel = threading.Event()  # asks a running unseal to give up
        self._control_token: str | None = None
        self._license_warned = ""

    # ------------------------------------------------------------------ configuration

    @property
    def repository(self) -> Path:
        return self.s.model_dir / self.s.unsealer_repository_subdir

    @property
    def repository_path(self) -> str:
        return str(self.repository)

    @property
    def control_token(self) -> str | None:
        return self._control_token

    @property
    def marker(self) -> Path:
        return self.s.model_dir / self.s.unsealer_ready_marker

    @property
    def license_file(self) -> Path:
        return self.s.unsealer_license_file or self.s.license_file

    def validate(self) -> tuple[fmt.BundleDigest, list[Any] | None]:
        s = self.s
        if not s.bundle_uri:
            raise ConfigError("MODELSEAL_BUNDLE_URI is not set")
        if not s.bundle_digest:
            raise ConfigError(
                "MODELSEAL_BUNDLE_DIGEST is not set: the unsealer only unseals a pinned bundle"
            )
        try:
            pinned = fmt.parse_digest(s.bundle_digest)
        except BundleError as exc:
            raise ConfigError(f"MODELSEAL_BUNDLE_DIGEST: {exc}") from None
        sub = s.unsealer_repository_subdir
        if not sub or "/" in sub or sub in (".", "..") or sub.startswith("."):
            raise ConfigError("MODELSEAL_UNSEALER_REPOSITORY_SUBDIR must be a plain folder name")
        if "/" in s.unsealer_ready_marker or s.unsealer_ready_marker in ("", ".", ".."):
            raise ConfigError("MODELSEAL_UNSEALER_READY_MARKER must be a plain file name")
        if not s.model_dir.is_dir():
            raise ConfigError(f"model_dir {s.model_dir} does not exist")
        trusted = None
        if s.bundle_trusted_keys_file is not None:
            try:
                trusted = list(sign.load_public_keys(s.bundle_trusted_keys_file.read_bytes()))
            except OSError as exc:
                raise ConfigError(
                    f"cannot read trusted keys {s.bundle_trusted_keys_file}: {exc.strerror}"
                ) from None
        if s.unsealer_control_token_file is not None:
            try:
                self._control_token = s.unsealer_control_token_file.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"cannot read the control token file: {exc.strerror}") from None
            if not self._control_token:
                raise ConfigError("the control token file is empty")
        if s.vault_token_file is None and not s.unsealer_vault_role:
            raise ConfigError(
                "no Vault credentials: set MODELSEAL_UNSEALER_VAULT_ROLE (Kubernetes auth) "
                "or MODELSEAL_VAULT_TOKEN_FILE (development)"
            )
        return pinned, trusted

    # ----------------------------------------------------------------------- unseal

    def _vault_client(self) -> Any:
        s = self.s
        cfg = auth.VaultConfig(
            addr=s.vault_addr,
            ca_file=s.vault_ca_file,
            token_file=s.vault_token_file,
            k8s_role=s.unsealer_vault_role,
            k8s_mount=s.vault_kubernetes_mount,
            jwt_file=s.service_account_token_file,
        )
        return auth.login(cfg, env={})

    def unseal_blocking(self, pinned: fmt.BundleDigest, trusted: list[Any] | None) -> UnsealReport:
        s = self.s
        check_memory_fs(s.model_dir, s.allow_non_tmpfs)
        removed = clean_stale_staging(s.model_dir)
        if removed:
            log.warning("removed %d staging folder(s) left by an earlier run", removed)
        self.marker.unlink(missing_ok=True)
        if os.path.lexists(self.repository):
            log.warning("wiping a model published by an earlier run; unsealing it again")
            wipe_tree(self.repository)
        client = self._vault_client()
        try:

            def unwrap(env: fmt.Envelope) -> SecretBytes:
                key_name = s.bundle_transit_key or env.key_name
                key = transit.unwrap_data_key(
                    client, key_name, env.wrapped_key, s.vault_transit_mount
                )
                if s.vault_token_file is None:
                    auth.revoke_self(client)  # a Kubernetes-auth token: not needed any more
                return key

            with open_source(
                s.bundle_uri,
                timeout_s=s.unsealer_source_timeout_s,
                ca_file=s.unsealer_source_ca_file,
                s3_endpoint_url=s.unsealer_s3_endpoint_url or None,
                allow_http=s.unsealer_allow_http_source,
            ) as stream:
                return unseal_stream(
                    stream,
                    self.repository,
                    unwrap,
                    UnsealOptions(
                        workers=s.unseal_workers,
                        pinned_digest=pinned,
                        trusted_keys=trusted,
                        allow_non_tmpfs=s.allow_non_tmpfs,
                        expected_key_name=s.bundle_transit_key or None,
                        progress=self._check_cancel,
                    ),
                )
        finally:
            if s.vault_token_file is None:
                # a token we got from Kubernetes auth: not needed any more. (A token file
                # is someone else's token; leave it alone.)
                auth.revoke_self(client)
            auth.close(client)

    def _check_cancel(self, _n: int) -> None:
        if self._cancel.is_set():
            raise UnsealError("unseal cancelled: the unsealer is stopping")

    def write_marker(self) -> None:
        assert self.report is not None
        core = self.report.header.core
        data = json.dumps(
            {
                "digest": self.report.digest,
                "plaintext_size": core.plaintext_size,
                "files": core.file_count,
                "models": self.models,
                "repository": str(self.repository),
                "published_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ).encode()
        tmp = self.marker.with_name(self.marker.name + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, self.marker)

    # ------------------------------------------------------------------- revocation

    def license_verdict(self, now: datetime) -> str | None:
        """A reason to revoke, from the license file, or None (an unreadable or invalid
        file is warned about and changes nothing: the operator is told by the gateway)."""
        path = self.license_file
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn_license(f"cannot read license file {path}: {exc.strerror}")
            return None
        try:
            licenses = parse_licenses(data)
        except LicenseError as exc:
            self._warn_license(f"license file {path} is invalid: {exc}")
            return None
        self._license_warned = ""
        return revocation_reason(licenses, self.models, now)

    def _warn_license(self, message: str) -> None:
        if message != self._license_warned:
            log.warning(message)
            self._license_warned = message

    async def watch_license(self) -> None:
        while self.state is UnsealerState.READY:
            verdict = self.license_verdict(datetime.now(UTC))
            if verdict:
                await self.revoke(verdict)
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.s.unsealer_license_poll_s)
            if self._stop.is_set():
                return

    async def unload_models(self) -> None:
        base = self.s.triton_http_url.rstrip("/")
        # Triton's repository API is restricted to holders of the pod's control token.
        headers = {TRITON_CONTROL_HEADER: self._control_token} if self._control_token else {}
        async with ClientSession(timeout=ClientTimeout(total=15)) as http:
            for name in self.models:
                url = f"{base}/v2/repository/models/{name}/unload"
                try:
                    async with http.post(url, json={}, headers=headers) as resp:
                        if resp.status == 200:
                            log.info("Triton unloaded model %s", name)
                        else:
                            text = (await resp.text())[:200]
                            log.warning("Triton unload of %s: HTTP %s %s", name, resp.status, text)
                except Exception as exc:
                    log.warning("Triton unload of %s failed: %s", name, type(exc).__name__)

    async def revoke(self, reason: str) -> None:
        async with self._revoke_lock:
            if self.state is UnsealerState.REVOKED:
                return
            previous = self.state
            # readiness turns 503 at once; `revoked` waits until the files are gone
            self.state = UnsealerState.REVOKING
            self.reason = reason
            self.revoked_at = time.time()
            log.warning("revoking the model: %s", reason, extra={"state": self.state})
            self.marker.unlink(missing_ok=True)
            # An earlier run's model may still be loaded (this container restarted while
            # Triton kept running): unload it as well.
            if previous is UnsealerState.READY or await asyncio.to_thread(
                os.path.lexists, self.repository
            ):
                await self.unload_models()
            failure = await asyncio.to_thread(self._wipe)
            if failure is not None:
                # Not `revoked`: a client must be able to rely on that meaning "wiped".
                # Liveness fails in this state, so the kubelet restarts the container,
                # whose start finds the license revoked and wipes again.
                self.state = UnsealerState.FAILED
                self.reason = f"{reason}; the model files could not be wiped: {failure}"
                log.error("revocation incomplete: %s", self.reason, extra={"state": self.state})
                return
            self.state = UnsealerState.REVOKED
            log.warning("model files wiped", extra={"state": self.state})

    def _wipe(self) -> str | None:
        """Wipe the published model; the failure's message, or None when it is gone."""
        try:
            wipe_tree(self.repository)
        except UnsealError as exc:
            log.error("%s", exc)
            return str(exc)
        return None

    # ----------------------------------------------------------------------- main

    async def main(self) -> int:
        try:
            pinned, trusted = self.validate()
        except ConfigError as exc:
            log.error("configuration error: %s", exc, extra={"state": UnsealerState.FAILED})
            return EXIT_CONFIG
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stop.set)
        await self.api.start()
        try:
            verdict = self.license_verdict(datetime.now(UTC)) if self.models else None
            watcher: asyncio.Task[None] | None = None
            if verdict:
                log.error("not unsealing: %s", verdict, extra={"state": self.state})
                # a model an earlier run of this container published is wiped too
                await self.revoke(verdict)
            else:
                code = await self._unseal(pinned, trusted)
                if code:
                    return code
                watcher = asyncio.create_task(self.watch_license())
            # stay up (readiness tells the state) until SIGTERM
            await self._stop.wait()
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            return 0
        finally:
            if self.state is UnsealerState.READY:
                log.info("stopping: wiping the published model")
                self.state = UnsealerState.STOPPING
                self.marker.unlink(missing_ok=True)
                await asyncio.to_thread(self._wipe)
            await self.api.stop()

    async def _unseal(self, pinned: fmt.BundleDigest, trusted: list[Any] | None) -> int:
        self.state = UnsealerState.UNSEALING
        log.info("unsealing %s", _source_name(self.s.bundle_uri), extra={"state": self.state})
        task = asyncio.ensure_future(asyncio.to_thread(self.unseal_blocking, pinned, trusted))
        stopper = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            # stop requested mid-unseal: let the thread finish or fail, then clean up
            log.warning("stop requested while unsealing; cancelling the unseal")
            self._cancel.set()
            with contextlib.suppress(Exception):
                await task
            self._wipe()
            return 0
        stopper.cancel()
        try:
            self.report = task.result()
        except Exception as exc:
            self.state, self.reason = UnsealerState.FAILED, str(exc)
            log.error("unseal failed: %s", exc, extra={"state": self.state})
            return (
                exit_code_for(exc)
                if isinstance(exc, (BundleError, VaultError, SourceError, UnsealError, OSError))
                else EXIT_IO
            )
        if not self.models:
            self.models = self.report.result.manifest.top_level_dirs
        self.write_marker()
        self.state, self.ready_at = UnsealerState.READY, time.time()
        core = self.report.header.core
        log.info(
            "model published: %d files, %d bytes in %.2fs (%s); peak RSS %s KiB",
            core.file_count,
            core.plaintext_size,
            self.report.seconds,
            self.report.fstype,
            peak_rss_kib(),
            extra={"state": self.state, "digest": self.report.digest},
        )
        return 0


def _source_name(uri: str) -> str:
    from modelseal.sources import redact

    return redact(uri)


def run(settings: Settings) -> None:
    # First thing: no core dump and no ptrace of a process that will hold the data key
    # and plaintext (issue 12, item 12).
    hardened = harden_process()
    setup_logging(settings.log_level)
    log.info(
        "core dumps off (RLIMIT_CORE %s), dumpable %s",
        hardened["core_limit"],
        hardened["dumpable"],
    )
    code = asyncio.run(Unsealer(settings).main())
    if code:
        sys.exit(code)
