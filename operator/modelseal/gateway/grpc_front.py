"""KServe v2 gRPC front end (``inference.GRPCInferenceService``, grpc.aio).

Offered: ``ServerLive``, ``ServerReady`` (no key, not audited), ``ServerMetadata``,
``ModelMetadata``, ``ModelReady`` (key and license needed), ``ModelInfer`` (metered,
output policy applied). ``ModelStreamInfer`` answers UNIMPLEMENTED; every other method
(model repository, shared memory, statistics, configuration, trace, log settings) answers
PERMISSION_DENIED and is audited.

The key travels as metadata ``authorization: Bearer <key>`` or ``x-api-key: <key>``.
Refusals map to gRPC codes: 401 UNAUTHENTICATED, 403 PERMISSION_DENIED, 400
INVALID_ARGUMENT, 404 NOT_FOUND, 429 RESOURCE_EXHAUSTED (trailing metadata
``retry-after`` in seconds, and the limit in the details), 503 UNAVAILABLE.

Messages are handled as bytes: a request is parsed to be checked, and forwarded as the
client's own bytes unless the output policy rewrites it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc  # type: ignore[import-untyped]
from tritonclient.grpc import service_pb2 as pb

from modelseal.gateway.core import GRPC_CODES, Ctx, Gateway, GatewayError
from modelseal.gateway.kserve import (
    DTYPE_SIZES,
    BadRequest,
    ModelMeta,
    check_names,
    check_shape,
)
from modelseal.gateway.upstream import GRPC_SERVICE, UnknownModel, UpstreamError
from modelseal.quota.license import OutputPolicy
from modelseal.quota.output import (
    OutputPolicyError,
    PlannedOutput,
    plan_outputs,
    restrict_values,
)

_NOT_CONNECTED = "failed to connect to all addresses"
log = logging.getLogger("modelseal.gateway.grpc")

_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_REFUSED = frozenset(
    {
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "RepositoryModelLoad",
        "RepositoryModelUnload",
        "SystemSharedMemoryStatus",
        "SystemSharedMemoryRegister",
        "SystemSharedMemoryUnregister",
        "CudaSharedMemoryStatus",
        "CudaSharedMemoryRegister",
        "CudaSharedMemoryUnregister",
        "TraceSetting",
        "LogSettings",
    }
)
_HTTP_OF_GRPC = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "UNIMPLEMENTED": 501,
}


def _retrieve(fut: asyncio.Future[Any]) -> None:
    """Mark a background call's outcome as seen (no "never retrieved" warning)."""
    if not fut.cancelled():
        fut.exception()


def decode_bytes_tensor(raw: bytes) -> list[bytes]:
    """Triton's serialized BYTES tensor: each element a 4-byte little-endian length + data."""
    out: list[bytes] = []
    pos = 0
    while pos < len(raw):
        if pos + 4 > len(raw):
            raise BadRequest("BYTES tensor is truncated")
        (n,) = struct.unpack_from("<I", raw, pos)
        pos += 4
        if pos + n > len(raw):
            raise BadRequest("BYTES tensor is truncated")
        out.append(raw[pos : pos + n])
        pos += n
    return out


def encode_bytes_tensor(items: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def _params_ok(params: Any, where: str) -> None:
    for key in params:
        if str(key).startswith("shared_memory"):
            raise BadRequest(f"{where}: shared memory is not offered by the gateway")


def check_grpc_request(req: Any, meta: ModelMeta) -> list[tuple[str, int | None]] | None:
    """The gRPC counterpart of ``kserve.check_request``."""
    if not req.inputs:
        raise BadRequest("inputs must not be empty")
    _params_ok(req.parameters, "request")
    raw = req.raw_input_contents
    if raw and len(raw) != len(req.inputs):
        raise BadRequest("raw_input_contents must have one entry per input")
    seen: set[str] = set()
    for i, inp in enumerate(req.inputs):
        want = meta.input(inp.name)
        if want is None:
            raise BadRequest(f"model {meta.name} has no input {inp.name!r}")
        if inp.name in seen:
            raise BadRequest(f"input {inp.name} is given twice")
        seen.add(inp.name)
        if inp.datatype != want.datatype:
            raise BadRequest(
                f"input {inp.name}: datatype {inp.datatype!r}, the model expects {want.datatype}"
            )
        shape = list(inp.shape)
        check_shape(inp.name, shape, want.shape)
        _params_ok(inp.parameters, f"input {inp.name}")
        elements = math.prod(shape)
        if raw:
            if inp.HasField("contents"):
                raise BadRequest(f"input {inp.name}: both contents and raw_input_contents")
            size = DTYPE_SIZES.get(inp.datatype)
            if size is not None:
                if len(raw[i]) != elements * size:
                    raise BadRequest(
                        f"input {inp.name}: {len(raw[i])} bytes, shape {shape} of "
                        f"{inp.datatype} needs {elements * size}"
                    )
            elif len(decode_bytes_tensor(raw[i])) != elements:
                raise BadRequest(f"input {inp.name}: element count does not match {shape}")
        else:
            field = _CONTENTS_FIELD.get(inp.datatype)
            if field is None:
                raise BadRequest(f"input {inp.name}: {inp.datatype} needs raw_input_contents")
            count = len(getattr(inp.contents, field))
            if count != elements:
                raise BadRequest(
                    f"input {inp.name}: {count} elements of data, shape {shape} needs {elements}"
                )
    missing = [t.name for t in meta.inputs if t.name not in seen]
    if missing:
        raise BadRequest(f"missing inputs: {missing}")
    if not req.outputs:
        return None
    known = {t.name for t in meta.outputs}
    requested: list[tuple[str, int | None]] = []
    for out in req.outputs:
        if out.name not in known:
            raise BadRequest(f"model {meta.name} has no output {out.name!r}")
        _params_ok(out.parameters, f"output {out.name}")
        cls = None
        if "classification" in out.parameters:
            cls = int(out.parameters["classification"].int64_param)
        requested.append((out.name, cls))
    return requested


def restrict_grpc_request(req: Any, plan: list[PlannedOutput]) -> bytes:
    req.ClearField("outputs")
    for p in plan:
        out = req.outputs.add()
        out.name = p.name
        out.parameters["classification"].int64_param = p.classification
    return bytes(req.SerializeToString())


def restrict_grpc_response(
    raw: bytes, policy: OutputPolicy, plan: list[PlannedOutput]
) -> tuple[bytes, list[str]]:
    resp = pb.ModelInferResponse.FromString(raw)
    out = pb.ModelInferResponse(model_name=resp.model_name, model_version=resp.model_version)
    out.id = resp.id
    by_name = {p.name: p for p in plan}
    dropped: list[str] = []
    for i, tensor in enumerate(resp.outputs):
        planned = by_name.get(tensor.name)
        restricted = None
        if planned is not None and tensor.datatype == "BYTES":
            try:
                if resp.raw_output_contents:
                    items = decode_bytes_tensor(resp.raw_output_contents[i])
                else:
                    items = list(tensor.contents.bytes_contents)
                values = [v.decode() for v in items]
                restricted = restrict_values(values, list(tensor.shape), planned, policy)
            except (BadRequest, UnicodeDecodeError, IndexError):
                restricted = None
        if restricted is None:
            dropped.append(tensor.name)
            continue
        kept = out.outputs.add()
        kept.name = tensor.name
        kept.datatype = "BYTES"
        kept.shape.extend(tensor.shape)
        out.raw_output_contents.append(encode_bytes_tensor([v.encode() for v in restricted]))
    return bytes(out.SerializeToString()), dropped


Handler = Callable[[bytes, Any], Awaitable[bytes]]


class GrpcFront:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        timeout = gateway.settings.gateway_upstream_timeout_s
        self.timeout = timeout
        self._routes: dict[str, Handler] = {
            "ServerLive": self._health("ServerLive"),
            "ServerReady": self._health("ServerReady"),
            "ServerMetadata": self._metadata("ServerMetadata", pb.ServerMetadataRequest),
            "ModelMetadata": self._metadata("ModelMetadata", pb.ModelMetadataRequest),
            "ModelReady": self._metadata("ModelReady", pb.ModelReadyRequest),
            "ModelInfer": self.model_infer,
        }

    def handler(self) -> Any:
        front = self

        class _Generic(grpc.GenericRpcHandler):  # type: ignore[misc]
            def service(self, details: Any) -> Any:
                service, _, name = str(details.method).lstrip("/").partition("/")
                if service != GRPC_SERVICE:
                    return None
                fn = front._routes.get(name)
                if fn is not None:
                    return grpc.unary_unary_rpc_method_handler(fn)
                if name == "ModelStreamInfer":
                    return grpc.stream_stream_rpc_method_handler(front._stream_refused)
                if name in _REFUSED:
                    return grpc.unary_unary_rpc_method_handler(front._refused(name))
                return None

        return _Generic()

    # -- shared ---------------------------------------------------------------------------
    async def _run(
        self, context: Any, route: str, step: Callable[[Ctx], Awaitable[bytes]]
    ) -> bytes:
        ctx = Ctx("grpc", route, context.peer(), time.perf_counter())
        code = None
        details = ""
        trailing: tuple[tuple[str, str], ...] = ()
        result = b""
        try:
            result = await step(ctx)
            ctx.status = ctx.status or 200
        except GatewayError as exc:
            if ctx.decision != "allow":
                ctx.decision = exc.decision
            ctx.limit = exc.limit if exc.limit is not None else ctx.limit
            ctx.reason = exc.message
            ctx.status = exc.status
            code = getattr(grpc.StatusCode, GRPC_CODES.get(exc.status, "UNKNOWN"))
            details = exc.message
            if exc.limit is not None:
                details += f" [limit={exc.limit}]"
            if exc.retry_after is not None:
                trailing = (("retry-after", str(exc.retry_after)),)
        except Exception as exc:
            log.exception("internal error in %s", route)
            ctx.decision, ctx.status = "error", 500
            ctx.reason = f"internal error: {type(exc).__name__}"
            code, details = grpc.StatusCode.INTERNAL, "internal gateway error"
        finally:
            self.gw.release(ctx)
        ctx.resp_bytes = len(result)
        self.gw.finish(ctx)
        if code is not None:
            await context.abort(code, details, trailing_metadata=trailing)
        return result

    async def _auth(self, context: Any, ctx: Ctx) -> None:
        metadata = context.invocation_metadata() or ()
        auth = [str(v) for k, v in metadata if k == "authorization"]
        keys = [str(v) for k, v in metadata if k == "x-api-key"]
        await self.gw.authenticate(ctx, auth, keys)

    async def _call(self, ctx: Ctx, name: str, request: bytes) -> bytes:
        """One call to Triton. Past the upstream timeout the client gets 504 at once, but
        the call goes on (deadline: ``quota_lease_s``) so that the concurrency slot is
        held until Triton is done with it (``Gateway.release_after``)."""
        t = time.perf_counter()
        hold_s = max(self.timeout, self.gw.settings.quota_lease_s)
        call = asyncio.ensure_future(self.gw.upstream.grpc_method(name)(request, timeout=hold_s))
        try:
            async with asyncio.timeout(self.timeout):
                answer: bytes = await asyncio.shield(call)
            return answer
        except TimeoutError:
            call.add_done_callback(_retrieve)
            self.gw.release_after(ctx, call)
            raise GatewayError(504, "Triton: did not answer in time", decision="error") from None
        except asyncio.CancelledError:
            call.cancel()
            raise
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            status = _HTTP_OF_GRPC.get(code.name, 502)
            message = exc.details() or code.name
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                text = f"Triton: {message}"
                # gRPC core's words for "no connection could be opened": nothing was sent
                unsent = code == grpc.StatusCode.UNAVAILABLE and _NOT_CONNECTED in message
                if unsent and await self.gw.refund(ctx):
                    text += " (not counted against the quota)"
                raise GatewayError(
                    502 if code == grpc.StatusCode.UNAVAILABLE else 504,
                    text,
                    decision="error",
                ) from None
            raise GatewayError(status, f"triton: {message}") from None
        finally:
            ctx.upstream_s = time.perf_counter() - t
            self.gw.release(ctx)

    # -- methods --------------------------------------------------------------------------
    def _health(self, name: str) -> Handler:
        async def health(request: bytes, context: Any) -> bytes:
            try:
                answer: bytes = await self.gw.upstream.grpc_method(name)(request, timeout=5)
                return answer
            except grpc.aio.AioRpcError as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"Triton: {exc.details()}")
                raise  # not reached

        return health

    def _metadata(self, name: str, message: Any) -> Handler:
        async def method(request: bytes, context: Any) -> bytes:
            async def step(ctx: Ctx) -> bytes:
                await self._auth(context, ctx)
                if name != "ServerMetadata":
                    try:
                        parsed = message.FromString(request)
                        check_names(parsed.name, parsed.version)
                    except BadRequest as exc:
                        raise GatewayError(400, str(exc)) from None
                    except Exception:
                        raise GatewayError(400, "request is not a valid message") from None
                    ctx.model, ctx.version = parsed.name, parsed.version
                    assert ctx.consumer is not None
                    self.gw.license_for(ctx, ctx.consumer, parsed.name)
                ctx.decision = "allow"
                return await self._call(ctx, name, request)

            return await self._run(context, name, step)

        return method

    def _refused(self, name: str) -> Handler:
        async def refused(request: bytes, context: Any) -> bytes:
            async def step(ctx: Ctx) -> bytes:
                if self.gw.audit.try_reserve():
                    ctx.reserved = True
                raise GatewayError(403, f"refused: {name} is not offered by the gateway")

            return await self._run(context, name, step)

        return refused

    async def _stream_refused(self, request_iterator: Any, context: Any) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "streaming inference is not offered by the gateway"
        )
        yield b""  # pragma: no cover - makes this an async generator

    async def model_infer(self, request: bytes, context: Any) -> bytes:
        async def step(ctx: Ctx) -> bytes:
            gw = self.gw
            ctx.req_bytes = len(request)
            try:
                req = pb.ModelInferRequest.FromString(request)
            except Exception:
                raise GatewayError(400, "request is not a valid ModelInferRequest") from None
            model, version = req.model_name, req.model_version
            try:
                check_names(model, version)
            except BadRequest as exc:
                raise GatewayError(400, str(exc)) from None
            ctx.model, ctx.version = model, version
            ctx.request_id = req.id[:200] or None
            await self._auth(context, ctx)
            assert ctx.consumer is not None
            lic = gw.license_for(ctx, ctx.consumer, model)
            ctx.input_sha256 = hashlib.sha256(request).hexdigest()
            try:
                meta = await gw.upstream.metadata(model, version)
                requested = check_grpc_request(req, meta)
            except BadRequest as exc:
                raise GatewayError(400, str(exc)) from None
            except UnknownModel as exc:
                raise GatewayError(404, str(exc)) from None
            except UpstreamError as exc:
                raise GatewayError(
                    504 if exc.timeout else 502, str(exc), decision="error"
                ) from None
            ctx.version = version or meta.served_version
            policy = lic.output_policy
            plan = None
            forward = request
            if policy.restricted:
                try:
                    plan = plan_outputs(policy, meta.output_types, requested)
                except OutputPolicyError as exc:
                    raise GatewayError(403, str(exc)) from None
                forward = restrict_grpc_request(req, plan)
            await gw.admit(ctx, lic, model)
            answer = await self._call(ctx, "ModelInfer", forward)
            if plan is None:
                return answer
            try:
                restricted, dropped = restrict_grpc_response(answer, policy, plan)
            except Exception:
                raise GatewayError(502, "Triton's answer is unreadable", decision="error") from None
            if dropped:
                gw.metrics.policy_dropped.labels(lic.tenant, model).inc(len(dropped))
                ctx.reason = f"output policy withheld {dropped}"
            return restricted

        return await self._run(context, "ModelInfer", step)
