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

from modelseal.gateway.http_pool import (
    _IDEMPOTENT,
    ConnectFailed,
    HttpPool,
    UpstreamResponse,
    _Conn,
    _parse_response,
)
from modelseal.gateway.kserve import ModelMeta

__all__ = [
    "GRPC_SERVICE",
    "ConnectFailed",
    "HttpPool",
    "UnknownModel",
    "Upstream",
    "UpstreamError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "_parse_response",
]

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


class UnknownModel(LookupError):
    """Triton does not serve the model (or that version)."""


@dataclass(slots=True)
class _Cached:
    meta: ModelMeta | None
    error: str
    until: float


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
        pool = self._pool
        assert pool is not None, "upstream not started"
        payload = pool.encode(method, path, body, headers)
        conn = pool.take_ready()
        if conn is None:
            return await self._send(pool, method, payload)
        # fast path: a pooled connection is ready; no task, shield or timeout scope (their
        # cost was a tenth of the gateway's CPU per request), one timer instead
        fut = conn.start(payload)
        timer = fut.get_loop().call_later(self.timeout_s, _expire, pool, conn, fut)
        try:
            resp, keep = await fut
        except _Expired as exc:
            raise UpstreamTimeout("Triton did not answer in time", running=exc.running) from None
        except asyncio.CancelledError:
            timer.cancel()
            pool.drop(conn)  # the caller is gone: drop the connection
            raise
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            timer.cancel()
            pool.drop(conn)
            nothing = not isinstance(exc, asyncio.IncompleteReadError) or not exc.partial
            if method in _IDEMPOTENT and nothing:  # closed by the server while idle
                return await self._send(pool, method, payload)
            raise UpstreamError(f"Triton is unreachable: {type(exc).__name__}") from exc
        except (OSError, asyncio.LimitOverrunError, ValueError) as exc:
            timer.cancel()
            pool.drop(conn)
            raise UpstreamError(f"Triton is unreachable: {type(exc).__name__}") from exc
        timer.cancel()
        pool.done(conn, keep)
        return resp

    async def _send(self, pool: HttpPool, method: str, payload: bytes) -> UpstreamResponse:
        """The general path: waits for a slot, opens connections, retries what is safe to
        retry; as a task, so that past the timeout the exchange goes on (``running``)."""
        exchange = asyncio.ensure_future(pool.send(method, payload))
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


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a background exchange's outcome as seen (no "never retrieved" warning)."""
    if not fut.cancelled():
        fut.exception()


class _Expired(Exception):
    """The upstream timeout passed; ``running`` is the exchange going on."""

    def __init__(self, running: asyncio.Future[UpstreamResponse]) -> None:
        super().__init__("expired")
        self.running = running


def _expire(
    pool: HttpPool, conn: _Conn, fut: asyncio.Future[tuple[UpstreamResponse, bool]]
) -> None:
    """Timer of the fast path: stop the caller's wait, not the exchange. The connection
    now answers into ``inner``; ``running`` gets the answer (or the connection's end) and
    the slot is given back then. Cancelling ``running`` drops the connection."""
    if fut.done():
        return
    loop = fut.get_loop()
    inner: asyncio.Future[tuple[UpstreamResponse, bool]] = loop.create_future()
    running: asyncio.Future[UpstreamResponse] = loop.create_future()
    conn.fut = inner

    def settle(done: asyncio.Future[tuple[UpstreamResponse, bool]]) -> None:
        if done.cancelled():
            pool.drop(conn)
            running.cancel()
            return
        exc = done.exception()
        if exc is not None:
            pool.drop(conn)
            if not running.done():
                running.set_exception(exc)
            return
        resp, keep = done.result()
        pool.done(conn, keep)
        if not running.done():
            running.set_result(resp)

    def abandoned(r: asyncio.Future[UpstreamResponse]) -> None:
        if r.cancelled() and not inner.done():
            inner.cancel()

    inner.add_done_callback(settle)
    running.add_done_callback(abandoned)
    running.add_done_callback(_retrieve)
    fut.set_exception(_Expired(running))
