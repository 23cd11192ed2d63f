"""The connections to Triton (loopback): pooled HTTP, one gRPC channel, metadata cache.

The HTTP side is a small keep-alive HTTP/1.1 client (``HttpPool``) rather than a general
client library: Triton is one known server on loopback that answers with
``Content-Length`` bodies, and a lean client costs several times less CPU per request.

Retries: a request is sent again on a fresh connection only when it provably never left
the gateway (the pooled connection was found closed before a byte was written), or, for a
GET, when a pooled connection closed before any byte of the answer (the server had closed
it idle). An inference POST whose connection drops after it was written is never sent
again: Triton may have run it, so it is reported (and stays counted), never run twice.
When no connection can be opened at all (``ConnectFailed``, reported as
``UpstreamError.unsent``), Triton never got the request and produced nothing: the gateway
refunds its quota.

Timeouts: past ``timeout_s`` the caller gets ``UpstreamTimeout`` at once, but the exchange
goes on (``UpstreamError.running``) until Triton answers or the connection drops (gRPC:
until its deadline), so that the gateway can hold the request's concurrency slot until
Triton is really done with it (``Gateway.release_after``). HTTP and gRPC calls report
their failures alike (``UpstreamError``), so that the data plane handles them in one place.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import grpc  # type: ignore[import-untyped]

from modelseal.gateway.kserve import ModelMeta

GRPC_SERVICE = "inference.GRPCInferenceService"
_NOT_CONNECTED = "failed to connect to all addresses"
_NEGATIVE_TTL_S = 1.0


class UpstreamError(RuntimeError):
    """Triton could not be reached or did not answer in time. ``unsent``: no byte of the
    request was sent (the connection could not be opened), so Triton never saw it."""

    def __init__(
        self,
        message: str,
        timeout: bool = False,
        unsent: bool = False,
        running: asyncio.Future[Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.timeout = timeout
        self.unsent = unsent
        self.running = running  # timed out, still waiting for Triton: done when Triton is


class UpstreamTimeout(UpstreamError):
    """Triton did not answer within the upstream timeout (``timeout`` is True)."""

    def __init__(self, message: str, running: asyncio.Future[Any] | None = None) -> None:
        super().__init__(message, timeout=True, running=running)


class _NotSent(ConnectionResetError):
    """The pooled connection was closed before the request was written: safe to resend."""


class ConnectFailed(OSError):
    """A new connection to Triton could not be opened, before anything was sent."""


class UnknownModel(LookupError):
    """Triton does not serve the model (or that version)."""


@dataclass(slots=True)
class _Cached:
    meta: ModelMeta | None
    error: str
    until: float


@dataclass(frozen=True, slots=True)
class UpstreamResponse:
    status: int
    body: bytes
    content_type: str | None
    header_length: str | None


class Upstream:
    def __init__(
        self,
        http_url: str,
        grpc_target: str,
        *,
        timeout_s: float = 60.0,
        connections: int = 256,
        metadata_ttl_s: float = 30.0,
        max_message_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.http_url = http_url.rstrip("/")
        self.grpc_target = grpc_target.removeprefix("grpc://").removeprefix("http://")
        self.timeout_s = timeout_s
        self.connections = connections
        self.metadata_ttl_s = metadata_ttl_s
        self.max_message_bytes = max_message_bytes
        self._pool: HttpPool | None = None
        self._channel: Any = None
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[ModelMeta]] = {}
        self._grpc_methods: dict[str, Any] = {}

    async def start(self) -> None:
        host, _, port = self.http_url.removeprefix("http://").partition(":")
        self._pool = HttpPool(host, int(port or 80), self.connections)
        options = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
        ]
        self._channel = grpc.aio.insecure_channel(self.grpc_target, options=options)

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    # -- HTTP ------------------------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        assert self._pool is not None, "upstream not started"
        exchange = asyncio.ensure_future(self._pool.request(method, path, body, headers))
        try:
            async with asyncio.timeout(self.timeout_s):
                return await asyncio.shield(exchange)
        except TimeoutError as exc:
            exchange.add_done_callback(_retrieve)
            raise UpstreamTimeout("Triton did not answer in time", running=exchange) from exc
        except asyncio.CancelledError:
            exchange.cancel()  # the caller is gone: drop the connection
            raise
        except ConnectFailed as exc:
            cause = type(exc.__cause__).__name__ if exc.__cause__ else "OSError"
            raise UpstreamError(f"Triton is unreachable: {cause}", unsent=True) from exc
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            raise UpstreamError(f"Triton is unreachable: {type(exc).__name__}") from exc

    async def metadata(self, model: str, version: str) -> ModelMeta:
        key = (model, version)
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and cached.until > now:
            if cached.meta is None:
                raise UnknownModel(cached.error)
            return cached.meta
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[ModelMeta] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            meta = await self._fetch_metadata(model, version)
        except BaseException as exc:
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # retrieved: no "never retrieved" warning without waiters
            raise
        else:
            fut.set_result(meta)
            return meta
        finally:
            self._inflight.pop(key, None)

    async def _fetch_metadata(self, model: str, version: str) -> ModelMeta:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
        resp = await self.request("GET", path)
        now = time.monotonic()
        if resp.status != 200:
            try:
                error = str(json.loads(resp.body).get("error", ""))
            except ValueError:
                error = ""
            what = f"model {model!r}" + (f" version {version}" if version else "")
            message = f"{what} is not served" + (f": {error}" if error else "")
            if resp.status in (400, 404):
                self._cache[(model, version)] = _Cached(None, message, now + _NEGATIVE_TTL_S)
                raise UnknownModel(message)
            raise UpstreamError(f"Triton answered {resp.status} for the metadata of {what}")
        try:
            meta = ModelMeta.from_json(json.loads(resp.body))
        except (ValueError, KeyError, TypeError) as exc:
            raise UpstreamError(f"Triton sent unreadable metadata: {exc}") from exc
        self._cache[(model, version)] = _Cached(meta, "", now + self.metadata_ttl_s)
        return meta

    def forget(self, model: str, version: str) -> None:
        self._cache.pop((model, version), None)

    # -- gRPC ------------------------------------------------------------------------------
    async def grpc_call(self, name: str, request: bytes, hold_s: float) -> bytes:
        """One raw call of a method. Past ``timeout_s``: ``UpstreamTimeout`` at once, the
        call going on (deadline ``hold_s``) as ``running``. Triton unreachable or past the
        deadline: ``UpstreamError`` (``unsent`` when no connection could be opened). Any
        other gRPC error is Triton's own answer: ``grpc.aio.AioRpcError``, raised as is."""
        call = asyncio.ensure_future(self.grpc_method(name)(request, timeout=hold_s))
        try:
            async with asyncio.timeout(self.timeout_s):
                answer: bytes = await asyncio.shield(call)
            return answer
        except TimeoutError:
            call.add_done_callback(_retrieve)
            raise UpstreamTimeout("Triton: did not answer in time", running=call) from None
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise
            message = f"Triton: {exc.details() or code.name}"
            if code == grpc.StatusCode.DEADLINE_EXCEEDED:
                raise UpstreamTimeout(message) from None
            # gRPC core's words for "no connection could be opened": nothing was sent
            raise UpstreamError(message, unsent=_NOT_CONNECTED in message) from None

    def grpc_method(self, name: str) -> Any:
        """A raw (bytes in, bytes out) unary callable for one method of the service."""
        method = self._grpc_methods.get(name)
        if method is None:
            assert self._channel is not None, "upstream not started"
            method = self._channel.unary_unary(f"/{GRPC_SERVICE}/{name}")
            self._grpc_methods[name] = method
        return method


_MAX_HEAD = 1 << 20  # bytes of status line and headers
_IDEMPOTENT = frozenset({"GET", "HEAD"})


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a background exchange's outcome as seen (no "never retrieved" warning)."""
    if not fut.cancelled():
        fut.exception()


class _Conn(asyncio.Protocol):
    """One keep-alive connection to Triton: the answer is parsed as it arrives and handed
    to one future per request (cheaper than stream reader calls)."""

    __slots__ = ("buf", "fut", "lost", "transport", "used")

    def __init__(self) -> None:
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
        fut: asyncio.Future[tuple[UpstreamResponse, bool]]
        fut = asyncio.get_running_loop().create_future()
        self.fut = fut
        transport.write(payload)
        try:
            return await fut
        finally:
            self.fut = None


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


class HttpPool:
    """Keep-alive HTTP/1.1 connections to one server; at most ``limit`` at a time."""

    def __init__(self, host: str, port: int, limit: int) -> None:
        self.host = host
        self.port = port
        self._idle: list[_Conn] = []
        self._gate = asyncio.Semaphore(limit)
        self._closed = False
        self._host_line = f"Host: {host}:{port}\r\n"

    async def _open(self) -> _Conn:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(_Conn, self.host, self.port)
        return conn

    async def request(
        self, method: str, path: str, body: bytes | None, headers: Mapping[str, str] | None
    ) -> UpstreamResponse:
        head = [f"{method} {path} HTTP/1.1\r\n", self._host_line]
        if headers:
            head += [f"{k}: {v}\r\n" for k, v in headers.items()]
        head.append(f"Content-Length: {len(body) if body else 0}\r\n\r\n")
        payload = "".join(head).encode("latin-1") + (body or b"")
        async with self._gate:
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

    def close(self) -> None:
        self._closed = True
        for conn in self._idle:
            conn.close()
        self._idle.clear()
