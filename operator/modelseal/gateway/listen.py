"""The HTTP listener: our own socket (``SO_REUSEPORT`` for worker processes) and a guard
around aiohttp's per-connection protocol for clients that never finish their headers.

aiohttp has a body timeout (ours, in the handler) and an idle keep-alive timeout, but
nothing for a request whose headers trickle in or stop half-way: such a connection stayed
open until the idle timeout and left no audit record. ``HeaderGuard`` starts a timer when
the first bytes of a request's headers arrive and stops it when aiohttp has parsed them;
if it fires, the client gets ``408`` (``Connection: close``), the connection is closed and
an audit record is written. A client that closes its connection half-way through its
headers is audited too. The timer starts only on bytes that reach an idle handler (a new
connection, or one waiting for its next request): bytes that arrive while a request is
handled are its body (the handler's body timeout covers them) or what aiohttp reads and
drops after answering.

Limit: the start of a pipelined request that arrives while the one before it is still
being handled (or in the same read as a complete request) is kept by aiohttp's parser
where the guard cannot see it; if that client then stalls, its connection is closed by the
idle timeout, as before, without a record.

The guard reads two attributes of aiohttp's ``RequestHandler`` (``_request_count``,
``_waiter``; aiohttp is pinned) and a unit test checks that they are still there.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_runner import BaseSite

Audit = Callable[[int, str, str | None, float], None]


def listening_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A bound TCP socket; with ``reuse_port`` several processes share the port and the
    kernel spreads connections over them."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


class HeaderGuard(asyncio.Protocol):
    """Wraps one aiohttp ``RequestHandler`` (a protocol): same events, plus a deadline
    for request headers."""

    __slots__ = (
        "_audit",
        "_h",
        "_remote",
        "_started",
        "_timeout",
        "_timer",
        "_transport",
    )

    def __init__(self, handler: Any, timeout_s: float, audit: Audit) -> None:
        self._h = handler
        self._timeout = timeout_s
        self._audit = audit
        self._timer: asyncio.TimerHandle | None = None
        self._started = 0.0
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._remote = str(peer[0]) if peer else None
        self._h.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        h = self._h
        before = h._request_count
        h.data_received(data)
        if h._request_count != before:  # headers complete: a request is under way
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            return
        waiter = h._waiter
        idle = before == 0 or (waiter is not None and not waiter.done())
        if self._timer is None and data and idle:
            # no request yet on this connection, or the handler waits for the next one:
            # these are the first bytes of a request's headers
            self._started = time.perf_counter()
            self._timer = asyncio.get_running_loop().call_later(self._timeout, self._expired)

    def _expired(self) -> None:
        self._timer = None
        message = f"request headers not received within {self._timeout:g}s"
        transport = self._transport
        if transport is not None and not transport.is_closing():
            body = json.dumps({"error": message}).encode()
            transport.write(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            self._h.force_close()
            transport.close()
        self._audit(408, message, self._remote, self._started)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:  # the client left half-way through its headers
            self._timer.cancel()
            self._timer = None
            self._audit(
                400,
                "connection closed before the request headers were complete",
                self._remote,
                self._started,
            )
        self._h.connection_lost(exc)

    def eof_received(self) -> bool | None:
        result: bool | None = self._h.eof_received()
        return result

    def pause_writing(self) -> None:
        self._h.pause_writing()

    def resume_writing(self) -> None:
        self._h.resume_writing()


class GuardedSite(web.SockSite):
    """``SockSite`` whose connections are wrapped in ``HeaderGuard``."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        header_timeout_s: float,
        audit: Audit,
        backlog: int = 2048,
        shutdown_timeout: float = 10.0,
    ) -> None:
        super().__init__(runner, sock, backlog=backlog, shutdown_timeout=shutdown_timeout)
        self._header_timeout = header_timeout_s
        self._audit_cb = audit

    async def start(self) -> None:
        await BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        timeout, audit = self._header_timeout, self._audit_cb

        def factory() -> HeaderGuard:
            return HeaderGuard(server(), timeout, audit)

        self._server = await asyncio.get_running_loop().create_server(
            factory, sock=self._sock, backlog=self._backlog
        )
