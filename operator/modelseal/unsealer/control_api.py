"""The unsealer's HTTP endpoints: probes, status and the revocation control.

`GET /healthz` (alive; 503 in state ``failed``), `GET /readyz` (200 only in state
``ready``), `GET /status` (JSON, no secrets), `POST /revoke` (bearer control token when
one is configured). The endpoints only read the unsealer's state and ask it to revoke; the
life cycle lives in `service.py`.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from .engine import UnsealReport, peak_rss_kib
from .limits import dump_state
from .states import UnsealerState

log = logging.getLogger("modelseal.unsealer")


class Observed(Protocol):
    """What the endpoints read of the unsealer."""

    state: UnsealerState
    reason: str
    models: list[str]
    report: UnsealReport | None

    @property
    def repository_path(self) -> str: ...

    @property
    def control_token(self) -> str | None: ...

    async def revoke(self, reason: str) -> None: ...


def status_body(unsealer: Observed) -> dict[str, Any]:
    out: dict[str, Any] = {
        "state": unsealer.state,
        "reason": unsealer.reason,
        "models": unsealer.models,
        "repository": unsealer.repository_path,
        "peak_rss_kib": peak_rss_kib(),
        "core_dumps": dump_state(),
    }
    report = unsealer.report
    if report is not None:
        core = report.header.core
        out.update(
            digest=report.digest,
            plaintext_size=core.plaintext_size,
            files=core.file_count,
            unseal_seconds=round(report.seconds, 3),
            signer=report.result.signer,
            unseal_workers=report.plan.workers if report.plan else None,
            unseal_write_mode=report.write_mode,
        )
    return out


Handler = Callable[[web.Request], Awaitable[web.Response]]


class ControlApi:
    def __init__(self, unsealer: Observed, bind_address: str, port: int) -> None:
        self.unsealer = unsealer
        self.bind_address = bind_address
        self.port = port  # the bound port once started (0 asks for a free one)
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4096)
        app.router.add_get("/healthz", self.h_health)
        app.router.add_get("/readyz", self.h_ready)
        app.router.add_get("/status", self.h_status)
        app.router.add_post("/revoke", self.h_revoke)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.bind_address, self.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("unsealer listening on %s:%s", self.bind_address, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def h_health(self, request: web.Request) -> web.Response:
        # `failed` while running means a revocation could not wipe the model: restart.
        u = self.unsealer
        code = 503 if u.state is UnsealerState.FAILED else 200
        return web.json_response({"state": u.state}, status=code)

    async def h_ready(self, request: web.Request) -> web.Response:
        u = self.unsealer
        code = 200 if u.state is UnsealerState.READY else 503
        return web.json_response({"state": u.state, "reason": u.reason}, status=code)

    async def h_status(self, request: web.Request) -> web.Response:
        return web.json_response(status_body(self.unsealer))

    async def h_revoke(self, request: web.Request) -> web.Response:
        token = self.unsealer.control_token
        if token is not None:
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                return web.json_response({"error": "unauthorized"}, status=401)
        reason = "revoked through the control endpoint"
        with contextlib.suppress(Exception):
            body = await request.json()
            if isinstance(body, dict) and isinstance(body.get("reason"), str):
                reason = body["reason"][:200]
        await self.unsealer.revoke(reason)
        return web.json_response(status_body(self.unsealer))
