"""KServe v2 HTTP/REST front end (on ``modelseal.gateway.http_server``).

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
characters, oversized header lines) or whose headers never complete never reach a
handler; the server reports them to ``audit_unhandled``, which writes their audit record.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

from modelseal.gateway.core import AUDIT_UNAVAILABLE, UNAUTHORIZED, Ctx, Gateway
from modelseal.gateway.errors import GatewayError
from modelseal.gateway.http_server import (
    BodyIncomplete,
    BodyTooLarge,
    HttpRequest,
    HttpResponse,
    json_response,
)
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
_IHCL = IHCL.lower()
_REFUSED = re.compile(
    r"^/v2/(repository|systemsharedmemory|cudasharedmemory|logging|trace)(/|$)"
    r"|^/v2/models/(stats$|[^/]+(/versions/[^/]+)?/(config|stats|generate|generate_stream|trace)$)"
)
# the routes: (model, version) from the path; a segment is anything but "/"
_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")
_MODEL = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready)?$")
_HEAD_OR_GET = frozenset({"GET", "HEAD"})


def error_response(exc: GatewayError) -> HttpResponse:
    headers: dict[str, str] = {}
    if exc.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="modelseal"'
    if exc.retry_after is not None:
        headers["Retry-After"] = str(exc.retry_after)
    # 408, 413: the rest of the body is not worth reading
    return json_response(exc.status, exc.body(), headers, close=exc.status in (408, 413))


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

    def __init__(self, front: HttpFront, request: HttpRequest, model: str, version: str) -> None:
        self.front = front
        self.request = request
        self.model = model
        self.version = version
        self.headers = {"Content-Type": "application/json"}
        self.body = self.header = self.binary = b""
        self.req: dict[str, Any] = {}

    def credentials(self) -> tuple[list[str], list[str]]:
        return _credentials(self.request)

    async def read(self) -> bytes:
        encoding = (self.request.header("content-encoding") or "identity").lower()
        if encoding != "identity":
            raise GatewayError(415, f"Content-Encoding {encoding!r} is not accepted")
        self.body = await self.front.read_body(self.request)
        return self.body

    def parse(self, ctx: Ctx, body: bytes) -> None:
        self.header, self.binary = split_body(body, self.request.header(_IHCL))
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
        ihcl = self.request.header(_IHCL)
        if ihcl is not None:
            headers[IHCL] = ihcl
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

    def __init__(
        self,
        front: HttpFront,
        request: HttpRequest,
        model: str | None,
        version: str = "",
        ready: bool = False,
    ) -> None:
        self.request = request
        self.upstream = front.gw.upstream
        self.model = model
        self.version = version
        if model is None:
            self.path = "/v2"
        else:
            self.path = _model_path(model, version) + ("/ready" if ready else "")

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

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """The router: one handler per path; a path's other methods are ``other``'s."""
        path, method = request.path, request.method
        match = _INFER.match(path)
        if match is not None:
            return await self.infer(request, match[1], match[2] or "")
        if method in _HEAD_OR_GET:
            if path == "/v2/health/live":
                return await self._health("/v2/health/live")
            if path == "/v2/health/ready":
                return await self.ready()
            if path == "/v2":
                return await self.server_metadata(request)
            match = _MODEL.match(path)
            if match is not None:
                return await self.model_get(request, match[1], match[2] or "", bool(match[3]))
        return await self.other(request)

    async def _run(
        self, request: HttpRequest, route: str, step: Callable[[Ctx], Awaitable[Answer]]
    ) -> HttpResponse:
        """Decode, run the data plane, encode its answer or refusal; audit."""
        ctx = Ctx("http", route, request.remote, time.perf_counter())
        outcome = await self.plane.serve(ctx, lambda: step(ctx))
        if isinstance(outcome, GatewayError):
            resp = error_response(outcome)
        elif isinstance(outcome, UpstreamResponse):
            resp = _from_upstream(outcome)
        else:
            resp = outcome
        ctx.status = resp.status
        ctx.resp_bytes = len(resp.body)
        if not await self.plane.finish(ctx):
            return json_response(503, {"error": AUDIT_UNAVAILABLE})
        return resp

    # -- health (not audited) -------------------------------------------------------------
    async def ready(self) -> HttpResponse:
        if self.gw.licenses_file.value is None or self.gw.keys_file.value is None:
            return HttpResponse(503)
        return await self._health("/v2/health/ready")

    async def _health(self, path: str) -> HttpResponse:
        try:
            up = await self.gw.upstream.request("GET", path)
        except UpstreamError:
            return HttpResponse(503)
        return HttpResponse(up.status)

    # -- audited routes -------------------------------------------------------------------
    async def server_metadata(self, request: HttpRequest) -> HttpResponse:
        lookup = HttpLookup(self, request, None)
        return await self._run(
            request, "server_metadata", lambda ctx: self.plane.lookup(ctx, lookup)
        )

    async def model_get(
        self, request: HttpRequest, model: str, version: str, ready: bool
    ) -> HttpResponse:
        route = "model_ready" if ready else "model_metadata"
        lookup = HttpLookup(self, request, model, version, ready)
        return await self._run(request, route, lambda ctx: self.plane.lookup(ctx, lookup))

    async def other(self, request: HttpRequest) -> HttpResponse:
        async def step(ctx: Ctx) -> Answer:
            ctx.reason = f"{request.method} {request.path[:200]}"
            if _REFUSED.match(request.path):
                await self.plane.refuse(
                    ctx, 403, "refused: this endpoint is not offered by the gateway"
                )
            await self.plane.refuse(ctx, 404, "not found")

        return await self._run(request, "refused", step)

    async def infer(self, request: HttpRequest, model: str, version: str) -> HttpResponse:
        async def step(ctx: Ctx) -> Answer:
            if request.method != "POST":
                raise GatewayError(405, "inference needs POST")
            return await self.plane.infer(ctx, HttpInference(self, request, model, version))

        return await self._run(request, "infer", step)

    async def read_body(self, request: HttpRequest) -> bytes:
        length = request.content_length
        too_large = f"request body larger than {self.max_bytes} bytes"
        if length is not None and length > self.max_bytes:
            raise GatewayError(413, too_large)
        try:
            return await request.read(self.body_timeout)
        except TimeoutError:
            raise GatewayError(
                408, f"request body not received within {self.body_timeout:g}s"
            ) from None
        except BodyTooLarge:
            raise GatewayError(413, too_large) from None
        except BodyIncomplete as exc:
            raise GatewayError(400, str(exc)) from None


Answer = HttpResponse | UpstreamResponse


def _credentials(request: HttpRequest) -> tuple[list[str], list[str]]:
    return request.header_all("authorization"), request.header_all("x-api-key")


def _model_path(model: str, version: str) -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "")


def _from_upstream(up: UpstreamResponse) -> HttpResponse:
    """Triton's answer, passed on (its binary-extension header too)."""
    headers = {"Content-Type": _ctype(up.content_type)}
    if up.header_length is not None:
        headers[IHCL] = up.header_length
    return HttpResponse(up.status, up.body, headers)


def _ctype(value: str | None) -> str:
    if not value:
        return "application/json"
    return value.split(";", 1)[0].strip() or "application/json"


def _upstream_error(body: bytes) -> str:
    try:
        return "triton: " + str(json.loads(body).get("error", ""))[:300]
    except (ValueError, AttributeError):
        return "triton: error"


def audit_unhandled(gateway: Gateway) -> Callable[[str, int, str, str | None, float], None]:
    """The audit record of a request no handler saw: its headers never completed
    (``incomplete_headers``) or the parser refused it (``malformed``)."""

    def audit(route: str, status: int, reason: str, remote: str | None, t0: float) -> None:
        ctx = Ctx("http", route, remote, t0)
        ctx.status = status
        ctx.reason = reason
        gateway.finish(ctx)

    return audit


__all__ = [
    "UNAUTHORIZED",
    "HttpFront",
    "audit_unhandled",
    "error_response",
]
