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
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from modelseal.gateway.core import UNAUTHORIZED, Ctx, Gateway, GatewayError
from modelseal.gateway.kserve import (
    BadRequest,
    check_names,
    check_request,
    check_unicode,
    parse_json,
    split_body,
)
from modelseal.gateway.upstream import UnknownModel, UpstreamError
from modelseal.quota.output import (
    OutputPolicyError,
    plan_outputs,
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


class HttpFront:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
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

    # -- shared ---------------------------------------------------------------------------
    async def _run(self, request: web.Request, route: str, step: Any) -> web.StreamResponse:
        request[AUDITED] = True
        ctx = Ctx("http", route, request.remote, time.perf_counter())
        try:
            resp: web.Response = await step(request, ctx)
        except GatewayError as exc:
            if ctx.decision != "allow":
                ctx.decision = exc.decision
            ctx.limit = exc.limit if exc.limit is not None else ctx.limit
            ctx.reason = exc.message
            resp = error_response(exc)
        except Exception as exc:
            log.exception("internal error on %s", request.path)
            ctx.decision = "error"
            ctx.reason = f"internal error: {type(exc).__name__}"
            resp = _json(500, {"error": "internal gateway error"})
        finally:
            self.gw.release(ctx)
        ctx.status = resp.status
        ctx.resp_bytes = len(resp.body) if isinstance(resp.body, bytes) else 0
        self.gw.finish(ctx)
        return resp

    async def _auth(self, request: web.Request, ctx: Ctx) -> None:
        headers = request.headers
        await self.gw.authenticate(
            ctx, headers.getall("Authorization", []), headers.getall("X-API-Key", [])
        )

    async def _passthrough(self, ctx: Ctx, path: str) -> web.Response:
        t = time.perf_counter()
        try:
            up = await self.gw.upstream.request("GET", path)
        except UpstreamError as exc:
            raise GatewayError(504 if exc.timeout else 502, str(exc), decision="error") from None
        finally:
            ctx.upstream_s = time.perf_counter() - t
        ctx.decision = "allow"
        if up.status >= 400:
            ctx.reason = _upstream_error(up.body)
        return web.Response(status=up.status, body=up.body, content_type=_ctype(up.content_type))

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

    # -- metadata -------------------------------------------------------------------------
    async def server_metadata(self, request: web.Request) -> web.StreamResponse:
        async def step(request: web.Request, ctx: Ctx) -> web.Response:
            await self._auth(request, ctx)
            return await self._passthrough(ctx, "/v2")

        return await self._run(request, "server_metadata", step)

    async def model_get(self, request: web.Request) -> web.StreamResponse:
        route = "model_ready" if request.path.endswith("/ready") else "model_metadata"

        async def step(request: web.Request, ctx: Ctx) -> web.Response:
            model = request.match_info["model"]
            version = request.match_info.get("version", "")
            try:
                check_names(model, version)
            except BadRequest as exc:
                raise GatewayError(400, str(exc)) from None
            ctx.model, ctx.version = model, version
            await self._auth(request, ctx)
            assert ctx.consumer is not None
            self.gw.license_for(ctx, ctx.consumer, model)
            path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "")
            return await self._passthrough(ctx, path + ("/ready" if route == "model_ready" else ""))

        return await self._run(request, route, step)

    async def other(self, request: web.Request) -> web.StreamResponse:
        async def step(request: web.Request, ctx: Ctx) -> web.Response:
            if self.gw.audit.try_reserve():
                ctx.reserved = True
            ctx.reason = f"{request.method} {request.path[:200]}"
            if _REFUSED.match(request.path):
                raise GatewayError(403, "refused: this endpoint is not offered by the gateway")
            raise GatewayError(404, "not found")

        return await self._run(request, "refused", step)

    # -- inference ------------------------------------------------------------------------
    async def infer(self, request: web.Request) -> web.StreamResponse:
        return await self._run(request, "infer", self._infer)

    async def _read_body(self, request: web.Request) -> bytes:
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

    async def _infer(self, request: web.Request, ctx: Ctx) -> web.Response:
        gw = self.gw
        if request.method != "POST":
            raise GatewayError(405, "inference needs POST")
        model = request.match_info["model"]
        version = request.match_info.get("version", "")
        try:
            check_names(model, version)
        except BadRequest as exc:
            raise GatewayError(400, str(exc)) from None
        ctx.model, ctx.version = model, version
        await self._auth(request, ctx)
        assert ctx.consumer is not None
        lic = gw.license_for(ctx, ctx.consumer, model)
        encoding = request.headers.get("Content-Encoding", "identity").lower()
        if encoding != "identity":
            raise GatewayError(415, f"Content-Encoding {encoding!r} is not accepted")
        body = await self._read_body(request)
        ctx.req_bytes = len(body)
        ctx.input_sha256 = hashlib.sha256(body).hexdigest()
        try:
            header, binary = split_body(body, request.headers.get(IHCL))
            req = parse_json(header)
            if isinstance(req.get("id"), str):
                ctx.request_id = req["id"][:200]  # the audit record escapes what UTF-8 cannot hold
            check_unicode(header, req)
            meta = await gw.upstream.metadata(model, version)
            requested = check_request(req, meta, len(binary))
        except BadRequest as exc:
            raise GatewayError(400, str(exc)) from None
        except UnknownModel as exc:
            raise GatewayError(404, str(exc)) from None
        except UpstreamError as exc:
            raise GatewayError(504 if exc.timeout else 502, str(exc), decision="error") from None
        ctx.version = version or meta.served_version
        policy = lic.output_policy
        plan = None
        headers = {"Content-Type": "application/json"}
        if policy.restricted:
            try:
                plan = plan_outputs(policy, meta.output_types, requested)
            except OutputPolicyError as exc:
                raise GatewayError(403, str(exc)) from None
            rewritten = json.dumps(restrict_http_request(req, plan)).encode()
            if binary:
                headers[IHCL] = str(len(rewritten))
                headers["Content-Type"] = "application/octet-stream"
            forward = rewritten + binary
        else:
            forward = body
            if IHCL in request.headers:
                headers[IHCL] = request.headers[IHCL]
                headers["Content-Type"] = "application/octet-stream"

        await gw.admit(ctx, lic, model)  # 429 / 503 raise from here
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        t = time.perf_counter()
        try:
            up = await gw.upstream.request("POST", path, forward, headers)
        except UpstreamError as exc:
            message = str(exc)
            if exc.running is not None:
                gw.release_after(ctx, exc.running)  # Triton is still computing it
            if exc.unsent and await gw.refund(ctx):
                message += " (not counted against the quota)"
            raise GatewayError(504 if exc.timeout else 502, message, decision="error") from None
        finally:
            ctx.upstream_s = time.perf_counter() - t
            gw.release(ctx)
        if up.status != 200:
            ctx.reason = _upstream_error(up.body)
            return web.Response(
                status=up.status, body=up.body, content_type=_ctype(up.content_type)
            )
        if plan is None:
            out_headers = {IHCL: up.header_length} if up.header_length is not None else None
            return web.Response(
                body=up.body, content_type=_ctype(up.content_type), headers=out_headers
            )
        if up.header_length is not None:
            raise GatewayError(502, "Triton answered in binary: the output policy cannot apply")
        try:
            answer = json.loads(up.body)
            if not isinstance(answer, dict):
                raise ValueError("not an object")
        except ValueError:
            raise GatewayError(502, "Triton's answer is not JSON", decision="error") from None
        restricted, dropped = restrict_http_response(answer, policy, plan)
        if dropped:
            gw.metrics.policy_dropped.labels(lic.tenant, model).inc(len(dropped))
            ctx.reason = f"output policy withheld {dropped}"
        return _json(200, restricted)


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
