"""The keep-alive HTTP/1.1 client to Triton (``HttpPool``), used by ``Upstream``.

A small client rather than a general client library: Triton is one known server on
loopback that answers with ``Content-Length`` (or chunked) bodies, and a lean client costs
several times less CPU per request. Each connection is an ``asyncio.Protocol`` that parses
the answer as it arrives and hands it to one future per request.

Retries: a request is sent again on a fresh connection only when it provably never left
the gateway (the pooled connection was found closed before a byte was written), or, for a
GET, when a pooled connection closed before any byte of the answer (the server had closed
it idle). An inference POST whose connection drops after it was written is never sent
again. ``take_ready`` hands out a free slot with an idle connection without awaiting, for
``Upstream.request``'s fast path; ``send`` waits for a slot and opens connections.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass


class _NotSent(ConnectionResetError):
    """The pooled connection was closed before the request was written: safe to resend."""


class ConnectFailed(OSError):
    """A new connection to Triton could not be opened, before anything was sent."""


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str | None
    header_length: str | None


_MAX_HEAD = 1 << 20  # bytes of status line and headers
_IDEMPOTENT = frozenset({"GET", "HEAD"})


class _Conn(asyncio.Protocol):
    """One keep-alive connection to Triton: the answer is parsed as it arrives and handed
    to one future per request (cheaper than stream reader calls)."""

    __slots__ = ("buf", "fut", "loop", "lost", "transport", "used")

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()  # created by loop.create_connection
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.fut: asyncio.Future[tuple[UpstreamResponse, bool]] | None = None
        self.lost = False
        self.used = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        fut = self.fut
        if fut is None or fut.done():
            return  # nothing asked: the connection will not be reused (see exchange)
        try:
            done = _parse_response(self.buf)
        except ValueError as exc:
            self.fut = None
            fut.set_exception(exc)
            return
        if done is not None:
            self.fut = None
            fut.set_result(done)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        fut = self.fut
        if fut is not None and not fut.done():
            self.fut = None
            if exc is not None and not self.buf:
                fut.set_exception(ConnectionResetError(str(exc)))
            else:
                fut.set_exception(asyncio.IncompleteReadError(bytes(self.buf), None))

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def exchange(self, payload: bytes) -> tuple[UpstreamResponse, bool]:
        transport = self.transport
        if self.lost or transport is None or transport.is_closing():
            raise _NotSent("connection to Triton closed")
        if self.buf:  # bytes nobody asked for: the stream is out of step
            raise ValueError("unexpected bytes from Triton")
        fut = self.start(payload)
        try:
            return await fut
        finally:
            self.fut = None

    def start(self, payload: bytes) -> asyncio.Future[tuple[UpstreamResponse, bool]]:
        """Write a request on an open connection; the future of its answer."""
        assert self.transport is not None
        fut: asyncio.Future[tuple[UpstreamResponse, bool]]
        fut = self.loop.create_future()
        self.fut = fut
        self.transport.write(payload)
        return fut

    @property
    def ready(self) -> bool:
        """Open, idle and in step: a request can be written on it now."""
        transport = self.transport
        return not (self.lost or transport is None or transport.is_closing() or self.buf)


def _parse_response(buf: bytearray) -> tuple[UpstreamResponse, bool] | None:
    """One whole response from the start of ``buf`` (then removed from it), or None while
    it is incomplete. Raises ValueError for what is not an HTTP/1.x response."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        if len(buf) > _MAX_HEAD:
            raise ValueError("Triton's response headers are too large")
        return None
    lines = bytes(buf[:end]).split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    fields: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields[name.strip().lower()] = value.strip()
    start = end + 4
    if b"transfer-encoding" in fields:
        parsed = _chunked(buf, start)
        if parsed is None:
            return None
        body, stop = parsed
    else:
        stop = start + int(fields.get(b"content-length", b"0"))
        if len(buf) < stop:
            return None
        body = bytes(buf[start:stop])
    del buf[:stop]
    keep = fields.get(b"connection", b"").lower() != b"close" and lines[0].startswith(b"HTTP/1.1")
    ctype = fields.get(b"content-type")
    ihcl = fields.get(b"inference-header-content-length")
    return (
        UpstreamResponse(
            status,
            body,
            ctype.decode("latin-1") if ctype is not None else None,
            ihcl.decode("latin-1") if ihcl is not None else None,
        ),
        keep,
    )


def _chunked(buf: bytearray, pos: int) -> tuple[bytes, int] | None:
    """A whole chunked body from ``pos``: (body, end position), None while incomplete."""
    parts: list[bytes] = []
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        size = int(bytes(buf[pos:eol]).split(b";", 1)[0].strip(), 16)
        pos = eol + 2
        if size == 0:
            if len(buf) < pos + 2:
                return None
            return b"".join(parts), pos + 2  # no trailers expected
        if len(buf) < pos + size + 2:
            return None
        parts.append(bytes(buf[pos : pos + size]))
        pos += size + 2


class _Slots:
    """At most ``n`` exchanges at a time; unlike ``asyncio.Semaphore`` a free slot can be
    taken without awaiting (the fast path of ``Upstream.request``)."""

    __slots__ = ("free", "waiters")

    def __init__(self, n: int) -> None:
        self.free = n
        self.waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def try_take(self) -> bool:
        if self.free > 0 and not self.waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give()  # handed a slot, but gone: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(fut)
            raise

    def give(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


class HttpPool:
    """Keep-alive HTTP/1.1 connections to one server; at most ``limit`` at a time."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[_Conn] = []
        self._slots = _Slots(limit)
        self._closed = False
        self._host_line = f"Host: {host}:{port}\r\n"

    async def _open(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Conn, self.host, self.port)
        return conn

    def encode(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> bytes:
        head = [f"{method} {path} HTTP/1.1\r\n", self._host_line]
        if headers:
            head += [f"{k}: {v}\r\n" for k, v in headers.items()]
        head.append(f"Content-Length: {len(body) if body else 0}\r\n\r\n")
        return "".join(head).encode("latin-1") + (body or b"")

    async def request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> UpstreamResponse:
        return await self.send(method, self.encode(method, path, body, headers))

    def take_ready(self) -> _Conn | None:
        """A free slot and an idle connection ready for a request, taken now; or None
        (then ``send`` waits for a slot or opens a connection)."""
        if not self._idle or not self._slots.try_take():
            return None
        while self._idle:
            conn = self._idle.pop()
            if conn.ready:
                return conn
            conn.close()
        self._slots.give()
        return None

    def done(self, conn: _Conn, keep: bool) -> None:
        """An exchange of ``take_ready``'s connection ended with an answer."""
        if keep and not self._closed and not conn.lost and not conn.buf:
            conn.used = True
            self._idle.append(conn)
        else:
            conn.close()
        self._slots.give()

    def drop(self, conn: _Conn) -> None:
        """An exchange of ``take_ready``'s connection ended without a usable answer."""
        conn.close()
        self._slots.give()

    async def send(self, method: str, payload: bytes) -> UpstreamResponse:
        await self._slots.take()
        try:
            conn = None
            while self._idle:  # skip connections the server closed while they were idle
                conn = self._idle.pop()
                if not conn.lost:
                    break
                conn = None
            if conn is None:
                try:
                    conn = await self._open()
                except OSError as exc:
                    raise ConnectFailed(str(exc)) from exc
            try:
                try:
                    resp, keep = await conn.exchange(payload)
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    nothing = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
                    resend = isinstance(exc, _NotSent) or (
                        method in _IDEMPOTENT and conn.used and nothing
                    )
                    if not resend:
                        raise  # an inference may have run: never sent twice
                    conn.close()  # the server had closed it while idle: once more
                    try:
                        conn = await self._open()
                    except OSError as exc:  # it never got the request: refundable too
                        raise ConnectFailed(str(exc)) from exc
                    resp, keep = await conn.exchange(payload)
            except BaseException:
                conn.close()
                raise
            if keep and not self._closed and not conn.lost and not conn.buf:
                conn.used = True
                self._idle.append(conn)
            else:
                conn.close()
            return resp
        finally:
            self._slots.give()

    def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()
