"""KServe v2 HTTP/REST front end (aiohttp).

Offered (everything else is refused and audited):

* ``GET /v2/health/live``, ``GET /v2/health/ready``: no key needed, not audited (probes).
  Ready means Triton is ready and the license and keys files are loaded.
* ``GET /v2``: server metadata (key needed).
* ``GET /v2/models/{m}[/versions/{v}]``, ``GET .../ready``: model metadata and
  readiness (key and a license for the model needed; not counted against quotas).
* ``POST /v2/models/{m}[/versions/{v}]/infer``: inference, metered, output policy applied.
  JSON and the binary tensor extension (``Inference-Header-Content-Length``) are
  accepted; compressed bodies are not (415).

Refused with 403: the model repository API, shared-memory registration, logging, trace
settings, model configuration and statistics, generate. Unknown paths: 404.

Requests that the HTTP parser itself refuses (a header with CR/LF or other control
characters, oversized header lines) never reach a handler; the access-log hook writes
their audit record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from modelseal.gateway.core import AUDIT_UNAVAILABLE, UNAUTHORIZED, Ctx, Gateway
from modelseal.gateway.errors import GatewayError
from modelseal.gateway.kserve import (
    ModelMeta,
    check_request,
    check_unicode,
    parse_json,
    split_body,
)
from modelseal.gateway.pipeline import DataPlane
from modelseal.gateway.upstream import UpstreamError, UpstreamResponse
from modelseal.quota.license import OutputFilter
from modelseal.quota.output import (
    PlannedOutput,
    restrict_http_request,
    restrict_http_response,
)

log = logging.getLogger("modelseal.gateway.http")

IHCL = "Inference-Header-Content-Length"
AUDITED = "modelseal.audited"
_REFUSED = re.compile(
    r"^/v2/(repository|systemsharedmemory|cudasharedmemory|logging|trace)(/|$)"
    r"|^/v2/models/(stats$|[^/]+(/versions/[^/]+)?/(config|stats|generate|generate_stream|trace)$)"
)


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers=headers,
    )


def error_response(exc: GatewayError) -> web.Response:
    headers: dict[str, str] = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="modelseal"'
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    resp = _json(exc.status, exc.body(), headers)
    if exc.status in (408, 413):
        resp.force_close()  # the rest of the body is not worth reading
    return resp


class HttpInference:
    """``pipeline.Inference`` for one KServe v2 JSON (or binary-extension) request."""

    __slots__ = (
        "binary",
        "body",
        "front",
        "header",
        "headers",
        "model",
        "req",
        "request",
        "version",
    )

    def __init__(self, front: HttpFront, request: web.Request) -> None:
        self.front = front
        self.request = request
        self.model: str = request.match_info["model"]
        self.version: str = request.match_info.get("version", "")
        self.headers = {"Content-Type": "application/json"}
        self.body = self.header = self.binary = b""
        self.req: dict[str, Any] = {}

    def credentials(self) -> tuple[list[str], list[str]]:
        return _credentials(self.request)

    async def read(self) -> bytes:
        encoding = self.request.headers.get("Content-Encoding", "identity").lower()
        if encoding != "identity":
            raise GatewayError(415, f"Content-Encoding {encoding!r} is not accepted")
        self.body = await self.front.read_body(self.request)
        return self.body

    def parse(self, ctx: Ctx, body: bytes) -> None:
        self.header, self.binary = split_body(body, self.request.headers.get(IHCL))
        req = self.req = parse_json(self.header)
        if isinstance(req.get("id"), str):
            ctx.request_id = req["id"][:200]  # the audit record escapes what UTF-8 cannot hold
        check_unicode(self.header, req)

    def check(self, meta: ModelMeta) -> list[tuple[str, int | None]] | None:
        return check_request(self.req, meta, len(self.binary))

    def forward(self, plan: list[PlannedOutput] | None) -> bytes:
        headers = self.headers
        if plan is not None:
            rewritten = json.dumps(restrict_http_request(self.req, plan)).encode()
            if self.binary:
                headers[IHCL] = str(len(rewritten))
                headers["Content-Type"] = "application/octet-stream"
            return rewritten + self.binary
        if IHCL in self.request.headers:
            headers[IHCL] = self.request.headers[IHCL]
            headers["Content-Type"] = "application/octet-stream"
        return self.body

    async def send(self, payload: bytes, hold_s: float) -> UpstreamResponse:
        path = _model_path(self.model, self.version) + "/infer"
        return await self.front.gw.upstream.request("POST", path, payload, self.headers)

    def answer(
        self,
        ctx: Ctx,
        reply: UpstreamResponse,
        policy: OutputFilter,
        plan: list[PlannedOutput] | None,
    ) -> tuple[UpstreamResponse, list[str]]:
        if reply.status != 200:
            ctx.reason = _upstream_error(reply.body)
            return reply, []
        if plan is None:
            return reply, []
        if reply.header_length is not None:
            raise GatewayError(502, "Triton answered in binary: the output policy cannot apply")
        try:
            answer = json.loads(reply.body)
            if not isinstance(answer, dict):
                raise ValueError("not an object")
        except ValueError:
            raise GatewayError(502, "Triton's answer is not JSON", decision="error") from None
        restricted, dropped = restrict_http_response(answer, policy, plan)
        body = json.dumps(restricted).encode()
        return UpstreamResponse(200, body, "application/json", None), dropped


class HttpLookup:
    """``pipeline.Lookup``: server or model metadata, model readiness."""

    __slots__ = ("model", "path", "request", "upstream", "version")

    def __init__(self, front: HttpFront, request: web.Request, model: str | None) -> None:
        self.request = request
        self.upstream = front.gw.upstream
        self.model = model
        self.version: str = request.match_info.get("version", "")
        if model is None:
            self.path = "/v2"
        else:
            ready = "/ready" if request.path.endswith("/ready") else ""
            self.path = _model_path(model, self.version) + ready

    def credentials(self) -> tuple[list[str], list[str]]:
        return _credentials(self.request)

    async def send(self, ctx: Ctx, hold_s: float) -> UpstreamResponse:
        up = await self.upstream.request("GET", self.path)
        if up.status >= 400:
            ctx.reason = _upstream_error(up.body)
        return up


class HttpFront:
    def __init__(self, gateway: Gateway, plane: DataPlane | None = None) -> None:
        self.gw = gateway
        self.plane = plane or DataPlane(gateway)
        self.max_bytes = gateway.settings.max_request_bytes
        self.body_timeout = gateway.settings.gateway_body_timeout_s

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.max_bytes, handler_args={})
        r = app.router
        r.add_get("/v2/health/live", self.live)
        r.add_get("/v2/health/ready", self.ready)
        r.add_route("*", "/v2/models/{model}/infer", self.infer)
        r.add_route("*", "/v2/models/{model}/versions/{version}/infer", self.infer)
        r.add_get("/v2/models/{model}", self.model_get)
        r.add_get("/v2/models/{model}/versions/{version}", self.model_get)
        r.add_get("/v2/models/{model}/ready", self.model_get)
        r.add_get("/v2/models/{model}/versions/{version}/ready", self.model_get)
        r.add_get("/v2", self.server_metadata)
        r.add_route("*", "/{tail:.*}", self.other)
        return app

    async def _run(
        self, request: web.Request, route: str, step: Callable[[Ctx], Awaitable[Answer]]
    ) -> web.StreamResponse:
        """Decode, run the data plane, encode its answer or refusal; audit."""
        request[AUDITED] = True
        ctx = Ctx("http", route, request.remote, time.perf_counter())
        outcome = await self.plane.serve(ctx, lambda: step(ctx))
        if isinstance(outcome, GatewayError):
            resp = error_response(outcome)
        elif isinstance(outcome, UpstreamResponse):
            resp = _from_upstream(outcome)
        else:
            resp = outcome
        ctx.status = resp.status
        ctx.resp_bytes = len(resp.body) if isinstance(resp.body, bytes) else 0
        if not await self.plane.finish(ctx):
            return _json(503, {"error": AUDIT_UNAVAILABLE})
        return resp

    # -- health (not audited) -------------------------------------------------------------
    async def live(self, request: web.Request) -> web.StreamResponse:
        request[AUDITED] = True
        return await self._health("/v2/health/live")

    async def ready(self, request: web.Request) -> web.StreamResponse:
        request[AUDITED] = True
        if self.gw.licenses_file.value is None or self.gw.keys_file.value is None:
            return web.Response(status=503)
        return await self._health("/v2/health/ready")

    async def _health(self, path: str) -> web.Response:
        try:
            up = await self.gw.upstream.request("GET", path)
        except UpstreamError:
            return web.Response(status=503)
        return web.Response(status=up.status)

    # -- audited routes -------------------------------------------------------------------
    async def server_metadata(self, request: web.Request) -> web.StreamResponse:
        lookup = HttpLookup(self, request, None)
        return await self._run(
            request, "server_metadata", lambda ctx: self.plane.lookup(ctx, lookup)
        )

    async def model_get(self, request: web.Request) -> web.StreamResponse:
        route = "model_ready" if request.path.endswith("/ready") else "model_metadata"
        lookup = HttpLookup(self, request, request.match_info["model"])
        return await self._run(request, route, lambda ctx: self.plane.lookup(ctx, lookup))

    async def other(self, request: web.Request) -> web.StreamResponse:
        async def step(ctx: Ctx) -> Answer:
            ctx.reason = f"{request.method} {request.path[:200]}"
            if _REFUSED.match(request.path):
                await self.plane.refuse(
                    ctx, 403, "refused: this endpoint is not offered by the gateway"
                )
            await self.plane.refuse(ctx, 404, "not found")

        return await self._run(request, "refused", step)

    async def infer(self, request: web.Request) -> web.StreamResponse:
        async def step(ctx: Ctx) -> Answer:
            if request.method != "POST":
                raise GatewayError(405, "inference needs POST")
            return await self.plane.infer(ctx, HttpInference(self, request))

        return await self._run(request, "infer", step)

    async def read_body(self, request: web.Request) -> bytes:
        length = request.content_length
        if length is not None and length > self.max_bytes:
            raise GatewayError(413, f"request body larger than {self.max_bytes} bytes")
        if request.content.is_eof() and request.content.total_bytes <= self.max_bytes:
            return await request.read()  # already all here: no timer needed
        try:
            async with asyncio.timeout(self.body_timeout):
                return await request.read()
        except TimeoutError:
            raise GatewayError(
                408, f"request body not received within {self.body_timeout:g}s"
            ) from None
        except web.HTTPRequestEntityTooLarge:
            raise GatewayError(413, f"request body larger than {self.max_bytes} bytes") from None


Answer = web.Response | UpstreamResponse


def _credentials(request: web.Request) -> tuple[list[str], list[str]]:
    headers = request.headers
    return headers.getall("Authorization", []), headers.getall("X-API-Key", [])


def _model_path(model: str, version: str) -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")


def _from_upstream(up: UpstreamResponse) -> web.Response:
    """Triton's answer, passed on (its binary-extension header too)."""
    headers = {"Content-Type": _ctype(up.content_type)}  # as a header: half the cost of
    if up.header_length is not None:  # aiohttp's content_type= (it parses it again)
        headers[IHCL] = up.header_length
    return web.Response(status=up.status, body=up.body, headers=headers)


def _ctype(value: str | None) -> str:
    if not value:
        return "application/json"
    return value.split(";", 1)[0].strip() or "application/json"


def _upstream_error(body: bytes) -> str:
    try:
        return "triton: " + str(json.loads(body).get("error", ""))[:300]
    except (ValueError, AttributeError):
        return "triton: error"


def incomplete_headers_audit(gateway: Gateway) -> Callable[[int, str, str | None, float], None]:
    """The audit record of a connection whose request headers never completed."""

    def audit(status: int, reason: str, remote: str | None, t0: float) -> None:
        ctx = Ctx("http", "incomplete_headers", remote, t0)
        ctx.status = status
        ctx.reason = reason
        gateway.finish(ctx)

    return audit


def access_logger_class(gateway: Gateway) -> type[AbstractAccessLogger]:
    """An access logger that audits requests no handler saw (refused by the HTTP parser)."""

    class AuditAccessLogger(AbstractAccessLogger):
        def log(self, request: BaseRequest, response: StreamResponse, time_s: float) -> None:
            try:
                if request.get(AUDITED):
                    return
                remote = request.remote
            except Exception:
                remote = None
            ctx = Ctx("http", "malformed", remote, time.perf_counter() - time_s)
            ctx.status = response.status
            ctx.reason = "malformed HTTP request, refused by the parser"
            gateway.finish(ctx)

    return AuditAccessLogger


__all__ = [
    "UNAUTHORIZED",
    "HttpFront",
    "access_logger_class",
    "error_response",
    "incomplete_headers_audit",
]
