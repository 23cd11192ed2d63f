"""A small pipelining Redis client (RESP2) for the gateway's hot path.

Every command a request issues (the admit script, a lease release) is appended to one
output buffer and written in one ``write`` per event-loop turn; replies are parsed as they
arrive and handed, in order, to the waiting futures. Under load many requests share one
write and one read, which costs a fraction of a general-purpose client's per-command work.

Scope: one connection (reopened on demand after a failure), AUTH and SELECT from the URL,
``redis://`` and ``rediss://`` (TLS). Replies: simple strings, errors, integers, bulk
strings, arrays (nested). A command that does not get its reply within ``timeout_s``, or
whose connection drops, raises ``RespUnavailable``.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from typing import Any, cast
from urllib.parse import unquote, urlsplit


class RespError(RuntimeError):
    """Redis answered with an error reply."""


class RespUnavailable(ConnectionError):
    """Redis could not be reached, dropped the connection, or did not answer in time."""


def encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        else:
            data = str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Incomplete(Exception):
    pass


def _parse(buf: bytearray, pos: int) -> tuple[Any, int]:
    """One reply from ``buf`` at ``pos``: (value, next position); _Incomplete if short."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        raise _Incomplete
    kind = buf[pos]
    line = bytes(buf[pos + 1 : end])
    nxt = end + 2
    if kind == 58:  # ':'
        return int(line), nxt
    if kind == 36:  # '$'
        n = int(line)
        if n < 0:
            return None, nxt
        if len(buf) < nxt + n + 2:
            raise _Incomplete
        return bytes(buf[nxt : nxt + n]), nxt + n + 2
    if kind == 42:  # '*'
        n = int(line)
        if n < 0:
            return None, nxt
        items = []
        for _ in range(n):
            if nxt < len(buf) and buf[nxt] == 58:  # integer element: the common case
                end = buf.find(b"\r\n", nxt)
                if end < 0:
                    raise _Incomplete
                items.append(int(buf[nxt + 1 : end]))
                nxt = end + 2
                continue
            item, nxt = _parse(buf, nxt)
            items.append(item)
        return items, nxt
    if kind == 43:  # '+'
        return line.decode(), nxt
    if kind == 45:  # '-'
        return RespError(line.decode(errors="replace")), nxt
    raise RespUnavailable(f"unexpected reply type {chr(kind)!r} from Redis")


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        # one entry per command sent, in order: its future, or None for a command whose
        # reply is read and dropped (``RespClient.send``: no future, no callback)
        self.waiting: collections.deque[asyncio.Future[Any] | None] = collections.deque()
        self.buf = bytearray()
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # not an isinstance check: uvloop's transports do not subclass asyncio.Transport
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        try:
            while pos < len(buf):
                value, pos2 = _parse(buf, pos)
                pos = pos2
                fut = self.waiting.popleft()
                if fut is not None and not fut.done():
                    if isinstance(value, RespError):
                        fut.set_exception(value)
                    else:
                        fut.set_result(value)
        except _Incomplete:
            pass
        except (RespUnavailable, ValueError, IndexError) as exc:
            self._fail(RespUnavailable(f"bad reply from Redis: {exc}"))
            if self.transport is not None:
                self.transport.close()
            return
        del buf[:pos]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RespUnavailable(f"connection to Redis lost: {exc or 'closed'}"))

    def _fail(self, exc: Exception) -> None:
        self.lost = exc
        while self.waiting:
            fut = self.waiting.popleft()
            if fut is not None and not fut.done():
                fut.set_exception(exc)


class RespClient:
    def __init__(
        self,
        url: str,
        *,
        timeout_s: float = 1.0,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        """``username``/``password``, when given, replace what the URL holds (the gateway
        reads them from files; see ``modelseal.gateway.wiring.build_store``)."""
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"unsupported Redis URL scheme {parts.scheme!r}")
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 6379
        self.tls = parts.scheme == "rediss"
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        if password is not None:
            self.username, self.password = username, password
        path = parts.path.lstrip("/")
        self.db = int(path) if path else 0
        self.timeout_s = timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None  # the one this client runs on
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._sent_at: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        self._watchdog: asyncio.TimerHandle | None = None

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        ctx = ssl.create_default_context() if self.tls else None
        try:
            async with asyncio.timeout(self.timeout_s):
                _, proto = await loop.create_connection(_Protocol, self.host, self.port, ssl=ctx)
        except (OSError, TimeoutError) as exc:
            raise RespUnavailable(
                f"cannot connect to Redis at {self.host}:{self.port}: {exc}"
            ) from None
        setup: list[tuple[Any, ...]] = []
        if self.password is not None:
            auth = ("AUTH", self.username, self.password) if self.username else None
            setup.append(auth or ("AUTH", self.password))
        if self.db:
            setup.append(("SELECT", self.db))
        for args in setup:
            fut = loop.create_future()
            proto.waiting.append(fut)
            assert proto.transport is not None
            proto.transport.write(encode(args))
            try:
                async with asyncio.timeout(self.timeout_s):
                    await fut
            except (RespError, TimeoutError) as exc:
                proto.transport.close()
                raise RespUnavailable(f"Redis refused {args[0]}: {exc}") from None
        return proto

    async def _connection(self) -> _Protocol:
        self._loop = asyncio.get_running_loop()
        proto = self._proto
        if proto is not None and proto.lost is None:
            return proto
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            proto = await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        self._proto = proto
        return proto

    def _flush(self) -> None:
        self._flush_scheduled = False
        proto = self._proto
        data = b"".join(self._out)
        self._out.clear()
        if proto is not None and proto.transport is not None and proto.lost is None:
            proto.transport.write(data)

    async def call(self, *args: Any) -> Any:
        return await self.call_raw(encode(args))

    async def call_raw(self, command: bytes) -> Any:
        """Send one already encoded command and wait for its reply."""
        proto = self._proto
        loop = self._loop
        if proto is None or proto.lost is not None or loop is None:
            proto = await self._connection()
            loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        proto.waiting.append(fut)
        self._out.append(command)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        self._sent_at.append((loop.time(), fut))
        if self._watchdog is None:
            self._watchdog = loop.call_later(self.timeout_s / 4, self._check_overdue)
        return await fut

    def _check_overdue(self) -> None:
        """One timer for all calls: a reply older than ``timeout_s`` fails the connection
        (and with it every call waiting on it), cheaper than a timer per call."""
        self._watchdog = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        sent = self._sent_at
        while sent and sent[0][1].done():
            sent.popleft()
        if sent and now - sent[0][0] > self.timeout_s:
            proto = self._proto
            self._proto = None
            error = RespUnavailable(f"Redis did not answer within {self.timeout_s:g}s")
            if proto is not None:
                proto._fail(error)
                if proto.transport is not None:
                    proto.transport.abort()
            while sent:
                _, fut = sent.popleft()
                if not fut.done():
                    fut.set_exception(error)
        if sent:
            self._watchdog = loop.call_later(self.timeout_s / 4, self._check_overdue)

    def send(self, *args: Any) -> None:
        """Fire and forget (the reply is read and dropped); for lease releases."""
        proto = self._proto
        loop = self._loop
        if proto is None or proto.lost is not None or loop is None:
            return
        proto.waiting.append(None)  # its reply (or error) is read and dropped
        self._out.append(encode(args))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    async def close(self) -> None:
        proto = self._proto
        self._proto = None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
