"""The data plane: the one sequence of steps every request goes through, whatever its
protocol (the steps themselves are in ``modelseal.gateway.core``; their order and
statuses are described there).

The protocol fronts (``http_front``, ``grpc_front``) only decode and encode: a front
turns its request into an ``Inference`` or a ``Lookup`` (the few things that differ
between the protocols: where the key travels, how the body is read, checked, rewritten
for the output policy and sent), hands it to ``DataPlane`` inside ``DataPlane.serve``, and
encodes what comes back: an answer, or a ``GatewayError``. Every error a step raises
becomes a ``GatewayError`` in ``serve``, through the one table in
``modelseal.gateway.errors``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NoReturn, Protocol, TypeVar

from modelseal.gateway.core import Ctx, Gateway
from modelseal.gateway.errors import MAPPED, GatewayError, refusal
from modelseal.gateway.kserve import ModelMeta, check_names
from modelseal.gateway.upstream import UpstreamError
from modelseal.quota.license import OutputFilter
from modelseal.quota.output import PlannedOutput, plan_outputs

log = logging.getLogger("modelseal.gateway")

R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)
Requested = list[tuple[str, int | None]] | None
NOT_COUNTED = " (not counted against the quota)"


class Inference(Protocol[R]):
    """One inference request, as a front decoded it (``R``: the front's answer)."""

    model: str
    version: str

    def credentials(self) -> tuple[list[str], list[str]]:
        """The presented ``Authorization`` values and API key values."""
        ...

    async def read(self) -> bytes:
        """The whole request body (raises ``GatewayError`` for 413, 408, 415)."""
        ...

    def parse(self, ctx: Ctx, body: bytes) -> None:
        """Parse the body (``BadRequest``); note the client's request id in ``ctx``."""
        ...

    def check(self, meta: ModelMeta) -> Requested:
        """Check the request against the model (``BadRequest``); the requested outputs."""
        ...

    def forward(self, plan: list[PlannedOutput] | None) -> bytes:
        """The bytes for Triton: the client's own, or rewritten to ``plan``."""
        ...

    async def send(self, payload: bytes, hold_s: float) -> R:
        """Triton's answer (``UpstreamError`` when there is none)."""
        ...

    def answer(
        self, ctx: Ctx, reply: R, policy: OutputFilter, plan: list[PlannedOutput] | None
    ) -> tuple[R, list[str]]:
        """The answer for the client, cut to the policy; the outputs withheld."""
        ...


class Lookup(Protocol[R_co]):
    """A metadata or readiness request (not metered), as a front decoded it."""

    model: str | None  # None: the server's own metadata
    version: str

    def credentials(self) -> tuple[list[str], list[str]]: ...

    async def send(self, ctx: Ctx, hold_s: float) -> R_co:
        """Triton's answer (``UpstreamError`` when there is none)."""
        ...


class DataPlane:
    def __init__(self, gateway: Gateway) -> None:
        self.gw = gateway
        settings = gateway.settings
        self.hold_s = max(settings.gateway_upstream_timeout_s, settings.quota_lease_s)

    async def serve(self, ctx: Ctx, step: Callable[[], Awaitable[R]]) -> R | GatewayError:
        """Run one request's steps: their answer, or the refusal, already noted in
        ``ctx`` (the front then encodes it, sets ``ctx.status`` and calls ``finish``)."""
        try:
            return await step()
        except GatewayError as exc:
            err = exc
        except MAPPED as exc:
            err = refusal(exc)
        except Exception as exc:
            log.exception("internal error in %s %s", ctx.proto, ctx.route)
            err = refusal(exc)
            ctx.decision = err.decision
            ctx.reason = f"internal error: {type(exc).__name__}"
            return err
        finally:
            self.gw.release(ctx)
        if ctx.decision != "allow":
            ctx.decision = err.decision
        if err.limit is not None:
            ctx.limit = err.limit
        ctx.reason = err.message
        return err

    async def infer(self, ctx: Ctx, call: Inference[R]) -> R:
        """Steps 1 to 6 of ``modelseal.gateway.core`` for one inference."""
        gw = self.gw
        model, version = call.model, call.version
        check_names(model, version)
        ctx.model, ctx.version = model, version
        consumer = await gw.authenticate(ctx, *call.credentials())
        lic = gw.license_for(ctx, consumer, model)
        body = await call.read()
        ctx.req_bytes = len(body)
        ctx.input_sha256 = hashlib.sha256(body).hexdigest()
        call.parse(ctx, body)
        meta = await gw.upstream.metadata(model, version)
        requested = call.check(meta)
        ctx.version = version or meta.served_version
        policy = lic.output_policy
        plan = plan_outputs(policy, meta.output_types, requested) if policy.restricted else None
        payload = call.forward(plan)
        await gw.admit(ctx, lic, model)  # 429 / 503 raise from here
        t = time.perf_counter()
        try:
            reply = await call.send(payload, self.hold_s)
        except UpstreamError as exc:
            if exc.running is not None:
                gw.release_after(ctx, exc.running)  # Triton is still computing it
            refunded = exc.unsent and await gw.refund(ctx)
            raise refusal(exc, NOT_COUNTED if refunded else "") from None
        finally:
            ctx.upstream_s = time.perf_counter() - t
            gw.release(ctx)
        answer, dropped = call.answer(ctx, reply, policy, plan)
        if dropped:
            gw.metrics.policy_dropped.labels(lic.tenant, model).inc(len(dropped))
            ctx.reason = f"output policy withheld {dropped}"
        return answer

    async def lookup(self, ctx: Ctx, call: Lookup[R]) -> R:
        """Metadata or readiness: the key, the license for the model, then Triton."""
        gw = self.gw
        model = call.model
        if model is not None:
            check_names(model, call.version)
            ctx.model, ctx.version = model, call.version
        consumer = await gw.authenticate(ctx, *call.credentials())
        if model is not None:
            gw.license_for(ctx, consumer, model)
        ctx.decision = "allow"
        t = time.perf_counter()
        try:
            return await call.send(ctx, self.hold_s)
        finally:
            ctx.upstream_s = time.perf_counter() - t

    async def finish(self, ctx: Ctx) -> bool:
        """Write the request's audit record and metrics (``Gateway.finish``) and, for a
        request let through, wait until the record is durable. False when it never will
        be: the front then withholds the answer."""
        return await self.gw.durable(self.gw.finish(ctx))

    async def refuse(self, ctx: Ctx, status: int, message: str) -> NoReturn:
        """A method or path the gateway does not offer: refused, audited if there is room."""
        if self.gw.audit.try_reserve():
            ctx.reserved = True
        raise GatewayError(status, message)
