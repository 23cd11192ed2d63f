"""The connections to Triton (loopback): pooled HTTP, one gRPC channel, metadata cache."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import grpc  # type: ignore[import-untyped]

from modelseal.gateway.kserve import ModelMeta

GRPC_SERVICE = "inference.GRPCInferenceService"
_NEGATIVE_TTL_S = 1.0


class UpstreamError(RuntimeError):
    """Triton could not be reached or did not answer in time."""

    def __init__(self, message: str, timeout: bool = False) -> None:
        super().__init__(message)
        self.timeout = timeout


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
        self._session: aiohttp.ClientSession | None = None
        self._channel: Any = None
        self._cache: dict[tuple[str, str], _Cached] = {}
        self._inflight: dict[tuple[str, str], asyncio.Future[ModelMeta]] = {}
        self._grpc_methods: dict[str, Any] = {}

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=self.connections, keepalive_timeout=60, enable_cleanup_closed=False
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=self.timeout_s),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        options = [
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.max_receive_message_length", self.max_message_bytes),
        ]
        self._channel = grpc.aio.insecure_channel(self.grpc_target, options=options)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "upstream not started"
        return self._session

    # -- HTTP ------------------------------------------------------------------------------
    async def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> UpstreamResponse:
        try:
            async with self.session.request(
                method, self.http_url + path, data=body, headers=headers
            ) as resp:
                data = await resp.read()
                return UpstreamResponse(
                    resp.status,
                    data,
                    resp.headers.get("Content-Type"),
                    resp.headers.get("Inference-Header-Content-Length"),
                )
        except TimeoutError as exc:
            raise UpstreamError("Triton did not answer in time", timeout=True) from exc
        except aiohttp.ClientError as exc:
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
    def grpc_method(self, name: str) -> Any:
        """A raw (bytes in, bytes out) unary callable for one method of the service."""
        method = self._grpc_methods.get(name)
        if method is None:
            assert self._channel is not None, "upstream not started"
            method = self._channel.unary_unary(f"/{GRPC_SERVICE}/{name}")
            self._grpc_methods[name] = method
        return method
