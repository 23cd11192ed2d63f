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

import logging
import math
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc  # type: ignore[import-untyped]
from tritonclient.grpc import service_pb2 as pb

from modelseal.gateway.core import AUDIT_UNAVAILABLE, Ctx, Gateway
from modelseal.gateway.errors import HTTP_OF_TRITON_CODE, GatewayError, grpc_code_of
from modelseal.gateway.kserve import DTYPE_SIZES, BadRequest, ModelMeta, check_shape
from modelseal.gateway.pipeline import DataPlane
from modelseal.gateway.upstream import GRPC_SERVICE, Upstream
from modelseal.quota.license import OutputFilter
from modelseal.quota.output import PlannedOutput, restrict_values

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
    raw: bytes, policy: OutputFilter, plan: list[PlannedOutput]
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


def _credentials(context: Any) -> tuple[list[str], list[str]]:
    metadata = context.invocation_metadata() or ()
    auth = [str(v) for k, v in metadata if k == "authorization"]
    keys = [str(v) for k, v in metadata if k == "x-api-key"]
    return auth, keys


def abort_args(exc: GatewayError) -> tuple[Any, str, tuple[tuple[str, str], ...]]:
    """A refusal as gRPC answers it: (status code, details, trailing metadata)."""
    details = exc.message
    if exc.limit is not None:
        details += f" [limit={exc.limit}]"
    trailing = (("retry-after", str(exc.retry_after)),) if exc.retry_after is not None else ()
    return getattr(grpc.StatusCode, grpc_code_of(exc.status)), details, trailing


async def _triton_call(upstream: Upstream, name: str, request: bytes, hold_s: float) -> bytes:
    """One call to Triton; a gRPC error Triton itself answered becomes a refusal."""
    try:
        return await upstream.grpc_call(name, request, hold_s)
    except grpc.aio.AioRpcError as exc:
        code = exc.code()
        status = HTTP_OF_TRITON_CODE.get(code.name, 502)
        raise GatewayError(status, f"triton: {exc.details() or code.name}") from None


class GrpcInference:
    """``pipeline.Inference`` for one ``ModelInfer`` call (the message parsed already)."""

    __slots__ = ("context", "model", "raw", "req", "upstream", "version")

    def __init__(self, front: GrpcFront, ctx: Ctx, raw: bytes, context: Any) -> None:
        ctx.req_bytes = len(raw)
        try:
            self.req = pb.ModelInferRequest.FromString(raw)
        except Exception:
            raise GatewayError(400, "request is not a valid ModelInferRequest") from None
        self.raw = raw
        self.context = context
        self.upstream = front.gw.upstream
        self.model: str = self.req.model_name
        self.version: str = self.req.model_version
        ctx.request_id = self.req.id[:200] or None

    def credentials(self) -> tuple[list[str], list[str]]:
        return _credentials(self.context)

    async def read(self) -> bytes:
        return self.raw

    def parse(self, ctx: Ctx, body: bytes) -> None:
        pass  # parsed when decoded

    def check(self, meta: ModelMeta) -> list[tuple[str, int | None]] | None:
        return check_grpc_request(self.req, meta)

    def forward(self, plan: list[PlannedOutput] | None) -> bytes:
        return self.raw if plan is None else restrict_grpc_request(self.req, plan)

    async def send(self, payload: bytes, hold_s: float) -> bytes:
        return await _triton_call(self.upstream, "ModelInfer", payload, hold_s)

    def answer(
        self, ctx: Ctx, reply: bytes, policy: OutputFilter, plan: list[PlannedOutput] | None
    ) -> tuple[bytes, list[str]]:
        if plan is None:
            return reply, []
        try:
            return restrict_grpc_response(reply, policy, plan)
        except Exception:
            raise GatewayError(502, "Triton's answer is unreadable", decision="error") from None


class GrpcLookup:
    """``pipeline.Lookup``: ``ServerMetadata``, ``ModelMetadata``, ``ModelReady``."""

    __slots__ = ("context", "model", "name", "raw", "upstream", "version")

    def __init__(self, front: GrpcFront, name: str, raw: bytes, context: Any) -> None:
        self.name = name
        self.raw = raw
        self.context = context
        self.upstream = front.gw.upstream
        self.model: str | None = None
        self.version = ""
        message = _LOOKUPS[name]
        if message is not None:
            try:
                parsed = message.FromString(raw)
            except Exception:
                raise GatewayError(400, "request is not a valid message") from None
            self.model, self.version = parsed.name, parsed.version

    def credentials(self) -> tuple[list[str], list[str]]:
        return _credentials(self.context)

    async def send(self, ctx: Ctx, hold_s: float) -> bytes:
        return await _triton_call(self.upstream, self.name, self.raw, hold_s)


_LOOKUPS: dict[str, Any] = {
    "ServerMetadata": None,
    "ModelMetadata": pb.ModelMetadataRequest,
    "ModelReady": pb.ModelReadyRequest,
}


class GrpcFront:
    def __init__(self, gateway: Gateway, plane: DataPlane | None = None) -> None:
        self.gw = gateway
        self.plane = plane or DataPlane(gateway)
        self._routes: dict[str, Handler] = {
            "ServerLive": self._health("ServerLive"),
            "ServerReady": self._health("ServerReady"),
            "ServerMetadata": self._lookup("ServerMetadata"),
            "ModelMetadata": self._lookup("ModelMetadata"),
            "ModelReady": self._lookup("ModelReady"),
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

    async def _run(
        self, context: Any, route: str, step: Callable[[Ctx], Awaitable[bytes]]
    ) -> bytes:
        """Decode, run the data plane, encode its answer or refusal; audit."""
        ctx = Ctx("grpc", route, context.peer(), time.perf_counter())
        outcome = await self.plane.serve(ctx, lambda: step(ctx))
        if isinstance(outcome, GatewayError):
            ctx.status = outcome.status
            await self.plane.finish(ctx)  # a refusal: nothing to withhold
            code, details, trailing = abort_args(outcome)
            await context.abort(code, details, trailing_metadata=trailing)
            raise AssertionError("not reached: abort raises")
        ctx.status = ctx.status or 200
        ctx.resp_bytes = len(outcome)
        if not await self.plane.finish(ctx):
            await context.abort(grpc.StatusCode.UNAVAILABLE, AUDIT_UNAVAILABLE)
        return outcome

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

    def _lookup(self, name: str) -> Handler:
        async def method(request: bytes, context: Any) -> bytes:
            async def step(ctx: Ctx) -> bytes:
                return await self.plane.lookup(ctx, GrpcLookup(self, name, request, context))

            return await self._run(context, name, step)

        return method

    def _refused(self, name: str) -> Handler:
        async def refused(request: bytes, context: Any) -> bytes:
            async def step(ctx: Ctx) -> bytes:
                await self.plane.refuse(ctx, 403, f"refused: {name} is not offered by the gateway")

            return await self._run(context, name, step)

        return refused

    async def _stream_refused(self, request_iterator: Any, context: Any) -> Any:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "streaming inference is not offered by the gateway"
        )
        yield b""  # pragma: no cover - makes this an async generator

    async def model_infer(self, request: bytes, context: Any) -> bytes:
        async def step(ctx: Ctx) -> bytes:
            return await self.plane.infer(ctx, GrpcInference(self, ctx, request, context))

        return await self._run(context, "ModelInfer", step)
