"""The gateway's HTTP/1.1 server: one ``asyncio.Protocol`` per connection over httptools
(the llhttp parser), handing each request to one handler coroutine.

Why not aiohttp's server (used here before): on this path aiohttp cost about 42 us of CPU
per request for an empty handler, this protocol about 11 us (same load generator, same
machine, ``bench/gateway``), and the gateway's CPU per request is what issue 13 measures.
The metrics/health listener stays on aiohttp: it is not on the hot path.

What the server guarantees (each has a test in ``tests/integration/test_gateway_bad_input.py``
or ``tests/unit/test_gateway_http_server.py``):

* **Strict parsing.** llhttp with no leniencies: a header with CR, LF or NUL, a bad chunk
  size or a second ``Content-Length`` ends the connection with ``400`` and an audit
  record (``malformed``). Lines over ``MAX_LINE`` bytes, headers over ``MAX_HEAD`` bytes in
  all or more than ``MAX_HEADERS`` fields: ``400`` too.
* **Header deadline.** From the first byte of a request until its headers are complete
  the client has ``header_timeout_s``; then ``408``, audited, connection closed. A client
  that closes half-way through its headers is audited too. Unlike the aiohttp guard this
  replaces, pipelined requests are covered: every byte passes through this parser.
* **Body.** The handler reads the body (``HttpRequest.read``) with its own deadline and
  size limit, so that authentication can refuse a request before its body is read. A
  declared or received body over ``max_body`` bytes is not kept. An answer sent before the
  request's body was complete closes the connection (its remaining bytes are not read).
* **One answer at a time, in order.** Pipelined requests wait their turn (at most
  ``MAX_QUEUED`` parsed; reading pauses beyond that, and while the transport's write
  buffer is full).
* **Keep-alive** per HTTP/1.1 (``Connection: close``, HTTP/1.0); idle connections close
  after ``idle_timeout_s``. ``Expect: 100-continue`` is answered when the handler starts.
* **Shutdown** (``stop``): no new connections, idle ones closed, answers under way get
  ``Connection: close``, and whatever is still open after the grace period is closed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.utils
import http
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httptools

log = logging.getLogger("modelseal.gateway.http")

MAX_LINE = 8190  # bytes of the request line, or of one header field (name and value)
MAX_HEAD = 64 * 1024  # bytes of the request line and all headers
MAX_HEADERS = 128
MAX_QUEUED = 8  # parsed requests waiting for the handler on one connection

Audit = Callable[[int, str, str | None, float], None]
"""``(status, reason, remote address, start time)``: the audit record of a request no
handler saw."""


class BodyTooLarge(Exception):
    """The request's body is larger than the server's limit (it was not kept)."""


class BodyIncomplete(Exception):
    """The connection closed before the request's body was complete."""


class _Malformed(Exception):
    """Raised from a parser callback: the request breaks one of our limits."""


@dataclass(slots=True)
class HttpResponse:
    """An answer: ``headers`` must not name Content-Length or Connection (the server
    writes them); ``close`` ends the connection after it."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")


def json_response(
    status: int, body: object, headers: dict[str, str] | None = None, *, close: bool = False
) -> HttpResponse:
    hdrs = {"Content-Type": "application/json"}
    if headers:
        hdrs.update(headers)
    return HttpResponse(status, json.dumps(body).encode(), hdrs, close)


class HttpRequest:
    """One request: its head as parsed, its body as it arrives."""

    __slots__ = (
        "_error",
        "_multi",
        "_parts",
        "_waiter",
        "complete",
        "expect_continue",
        "headers",
        "keep_alive",
        "method",
        "path",
        "query",
        "received",
        "remote",
        "started",
        "too_large",
    )

    def __init__(
        self,
        method: str,
        path: str,
        query: str,
        headers: dict[str, str],
        multi: dict[str, list[str]] | None,
        remote: str | None,
        started: float,
    ) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers  # lower-case name -> first value (latin-1 text)
        self._multi = multi  # only the names that came more than once
        self.remote = remote
        self.started = started
        self._parts: list[bytes] = []
        self.received = 0
        self.complete = False
        self.too_large = False
        self.keep_alive = True
        self.expect_continue = False
        self._waiter: asyncio.Future[None] | None = None
        self._error: BodyIncomplete | None = None

    def header(self, name: str) -> str | None:
        """The first value of a header (``name`` in lower case)."""
        return self.headers.get(name)

    def header_all(self, name: str) -> list[str]:
        """Every value of a header, in order (``name`` in lower case)."""
        if self._multi is not None and name in self._multi:
            return list(self._multi[name])
        value = self.headers.get(name)
        return [] if value is None else [value]

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self, timeout_s: float) -> bytes:
        """The whole body. Raises ``BodyTooLarge``, ``TimeoutError``, ``BodyIncomplete``."""
        if self._error is not None:
            raise self._error
        if not self.complete:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            async with asyncio.timeout(timeout_s):
                await asyncio.shield(self._waiter)
        if self.too_large:
            raise BodyTooLarge
        parts = self._parts
        if len(parts) != 1:
            parts[:] = [b"".join(parts)]
        return parts[0]

    # -- fed by the connection ------------------------------------------------------------
    def _body(self, data: bytes, limit: int) -> None:
        self.received += len(data)
        if self.received > limit:
            if not self.too_large:
                self.too_large = True
                self._parts.clear()
                self._wake(None)  # the reader need not wait for what it will not get
            return
        self._parts.append(data)

    def _broken(self, error: BodyIncomplete) -> None:
        """The body will never be complete (the connection closed, or its framing broke)."""
        self._error = error
        self._wake(error)

    def _done(self) -> None:
        self.complete = True
        self._wake(None)

    def _wake(self, exc: BaseException | None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if exc is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(exc)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


@dataclass(frozen=True, slots=True)
class Limits:
    max_body: int
    header_timeout_s: float
    idle_timeout_s: float


_REASONS = {s.value: s.phrase.encode() for s in http.HTTPStatus}
_date_cache: list[object] = [0, b""]


def _date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = email.utils.formatdate(now, usegmt=True).encode()
    value = _date_cache[1]
    assert isinstance(value, bytes)
    return value


def encode_response(resp: HttpResponse, *, head_only: bool, close: bool) -> bytes:
    """The bytes of an answer (no body for HEAD)."""
    out = [
        b"HTTP/1.1 %d %s\r\nDate: %s\r\nContent-Length: %d\r\n"
        % (resp.status, _REASONS.get(resp.status, b"Unknown"), _date(), len(resp.body))
    ]
    for name, value in resp.headers.items():
        if "\r" in value or "\n" in value:  # never from a client, but never pass one on
            raise ValueError(f"header {name} holds a line break")
        out.append(f"{name}: {value}\r\n".encode("latin-1"))
    if close:
        out.append(b"Connection: close\r\n")
    out.append(b"\r\n")
    if resp.body and not head_only:
        out.append(resp.body)
    return b"".join(out)


def _error_bytes(status: int, message: str) -> bytes:
    return encode_response(json_response(status, {"error": message}), head_only=False, close=True)


class HttpConnection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    __slots__ = (
        "_failure",
        "_head_bytes",
        "_head_timer",
        "_headers",
        "_idle_timer",
        "_in_head",
        "_multi",
        "_nheaders",
        "_parser",
        "_paused",
        "_queue",
        "_request",
        "_serving",
        "_started",
        "_url",
        "remote",
        "server",
        "transport",
    )

    def __init__(self, server: HttpServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.remote: str | None = None
        self._parser = httptools.HttpRequestParser(self)
        self._queue: collections.deque[HttpRequest] = collections.deque()
        self._request: HttpRequest | None = None  # the one whose body is arriving
        self._serving = False
        self._paused = False
        # (status, message, start, answered by the handler of the request it broke)
        self._failure: tuple[int, str, float, bool] | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._in_head = False
        self._head_bytes = 0
        self._started = 0.0
        self._url = b""
        self._headers: dict[str, str] = {}
        self._multi: dict[str, list[str]] | None = None
        self._nheaders = 0

    # -- asyncio.Protocol -----------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = str(peer[0]) if peer else None
        self.server.connections.add(self)
        self._arm_idle()

    def data_received(self, data: bytes) -> None:
        if self._failure is not None:
            return  # the connection is ending; nothing more is read
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        in_head = self._in_head
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # a protocol switch is not offered: answer what came, then close
            self._fail(400, "protocol upgrade is not offered")
            return
        except (httptools.HttpParserError, _Malformed) as exc:
            cause = exc.__context__ if isinstance(exc.__context__, _Malformed) else exc
            self._fail(400, f"malformed HTTP request: {_short(cause)}")
            return
        if self._in_head:
            self._head_bytes += len(data) if in_head else 0
            if self._head_bytes > MAX_HEAD:
                self._fail(400, f"malformed HTTP request: headers over {MAX_HEAD} bytes")

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        for timer in (self._head_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._idle_timer = None
        if self._in_head and self._failure is None:  # the client left half-way
            self._in_head = False
            self.server.audit_route(
                "incomplete_headers",
                400,
                "connection closed before the request headers were complete",
                self.remote,
                self._started,
            )
        if self._request is not None and not self._request.complete:
            self._request._broken(
                BodyIncomplete("connection closed before the request body was complete")
            )
        self.transport = None

    def pause_writing(self) -> None:
        self._pause()

    def resume_writing(self) -> None:
        self._resume()

    # -- httptools callbacks --------------------------------------------------------------
    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._started = time.perf_counter()
        self._url = b""
        self._headers = {}
        self._multi = None
        self._nheaders = 0
        loop = asyncio.get_running_loop()
        self._head_timer = loop.call_later(self.server.limits.header_timeout_s, self._head_late)

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_LINE:
            raise _Malformed(f"request line over {MAX_LINE} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(name) + len(value) > MAX_LINE:
            raise _Malformed(f"header field over {MAX_LINE} bytes")
        self._nheaders += 1
        if self._nheaders > MAX_HEADERS:
            raise _Malformed(f"more than {MAX_HEADERS} header fields")
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers = self._headers
        if key in headers:
            multi = self._multi if self._multi is not None else {}
            self._multi = multi
            multi.setdefault(key, [headers[key]]).append(text)
        else:
            headers[key] = text

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        parser = self._parser
        try:
            parsed = httptools.parse_url(self._url)
        except httptools.HttpParserInvalidURLError:
            raise _Malformed("invalid request target") from None
        coding = self._headers.get("transfer-encoding")
        if coding is not None and coding.strip().lower() != "chunked":
            # llhttp frames "gzip, chunked" as chunked; no other coding is decoded here
            raise _Malformed(f"Transfer-Encoding {coding[:40]!r} is not accepted")
        path = (parsed.path or b"/").decode("latin-1")
        request = HttpRequest(
            parser.get_method().decode("latin-1"),
            _unquote(path),
            (parsed.query or b"").decode("latin-1"),
            self._headers,
            self._multi,
            self.remote,
            self._started,
        )
        request.keep_alive = parser.should_keep_alive()
        request.expect_continue = request.headers.get("expect", "").lower() == "100-continue"
        self._request = request
        self._queue.append(request)
        if len(self._queue) >= MAX_QUEUED:
            self._pause()
        if not self._serving:
            self._serving = True
            asyncio.get_running_loop().create_task(self._serve())

    def on_body(self, body: bytes) -> None:
        request = self._request
        if request is not None:
            request._body(body, self.server.limits.max_body)

    def on_message_complete(self) -> None:
        request = self._request
        if request is not None:
            self._request = None
            request._done()

    # -- answering ------------------------------------------------------------------------
    async def _serve(self) -> None:
        queue = self._queue
        try:
            while queue:
                request = queue[0]
                if request.expect_continue and not request.complete and not request.too_large:
                    self._write(b"HTTP/1.1 100 Continue\r\n\r\n")
                try:
                    resp = await self.server.handler(request)
                except Exception:
                    log.exception("internal error in the HTTP handler")
                    resp = json_response(500, {"error": "internal error"}, close=True)
                queue.popleft()
                if self._paused and len(queue) < MAX_QUEUED:
                    self._resume()
                close = (
                    resp.close
                    or not request.keep_alive
                    or not request.complete
                    or self.server.closing
                )
                data = encode_response(resp, head_only=request.method == "HEAD", close=close)
                transport = self.transport
                if transport is None or transport.is_closing():
                    return
                transport.write(data)
                if close:
                    transport.close()
                    return
            if self._request is None and not self._in_head:
                self._arm_idle()
        finally:
            self._serving = False
            if self._failure is not None:
                self._end_with_failure()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _fail(self, status: int, message: str) -> None:
        """Stop reading; answer what is queued, then ``status`` and close; audit it."""
        if self._failure is not None:
            return
        started = self._started if self._in_head else time.perf_counter()
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        broken = self._request is not None and not self._request.complete
        self._failure = (status, message, started, broken)
        if self.transport is not None:
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()
        if self._request is not None and broken:
            # its handler answers (400, audited as that request) and the connection ends
            self._request._broken(BodyIncomplete(message))
        if not self._serving:
            self._end_with_failure()

    def _end_with_failure(self) -> None:
        assert self._failure is not None
        status, message, started, answered = self._failure
        transport = self.transport
        if answered:  # its request's handler said it and wrote the audit record
            if transport is not None:
                transport.close()
            return
        route = "incomplete_headers" if status == 408 else "malformed"
        self.server.audit_route(route, status, message, self.remote, started)
        if transport is not None and not transport.is_closing():
            transport.write(_error_bytes(status, message))
            transport.close()

    def _head_late(self) -> None:
        self._head_timer = None
        timeout = self.server.limits.header_timeout_s
        self._fail(408, f"request headers not received within {timeout:g}s")

    def _arm_idle(self) -> None:
        if self._idle_timer is None and self.transport is not None:
            self._idle_timer = asyncio.get_running_loop().call_later(
                self.server.limits.idle_timeout_s, self._idle_over
            )

    def _idle_over(self) -> None:
        self._idle_timer = None
        if not self._serving and not self._in_head and self.transport is not None:
            self.transport.close()

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()

    def _resume(self) -> None:
        if self._paused and self.transport is not None and self._failure is None:
            self._paused = False
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    @property
    def idle(self) -> bool:
        return not self._serving and not self._in_head


class HttpServer:
    """Serves ``handler`` on a bound socket."""

    def __init__(
        self,
        handler: Handler,
        limits: Limits,
        audit_route: Callable[[str, int, str, str | None, float], None],
    ) -> None:
        self.handler = handler
        self.limits = limits
        self.audit_route = audit_route
        self.connections: set[HttpConnection] = set()
        self.closing = False
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, sock: socket.socket, backlog: int = 2048) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpConnection(self), sock=sock, backlog=backlog
        )
        self.port = int(sock.getsockname()[1])

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop accepting, let answers under way finish (``grace_s``), close the rest."""
        self.closing = True
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + grace_s
        while True:
            for conn in list(self.connections):
                if conn.idle and conn.transport is not None:
                    conn.transport.close()
            if not self.connections or time.monotonic() >= deadline:
                break
            await asyncio.sleep(0.05)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


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


def _unquote(path: str) -> str:
    if "%" not in path:
        return path
    from urllib.parse import unquote

    return unquote(path, errors="surrogateescape")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:200]


__all__ = [
    "MAX_HEAD",
    "MAX_HEADERS",
    "MAX_LINE",
    "BodyIncomplete",
    "BodyTooLarge",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "Limits",
    "encode_response",
    "json_response",
    "listening_socket",
]
