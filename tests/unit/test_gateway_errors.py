"""The gateway's one error table (issue 15 item 2): which error becomes which refusal
(HTTP status, audit decision, gRPC code), and how each front encodes a refusal. The
fronts and the data plane are exercised end to end by tests/integration/test_gateway_*;
here each row of the table is checked on its own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc  # type: ignore[import-untyped]
import pytest

from modelseal.gateway.core import Ctx, Gateway
from modelseal.gateway.errors import (
    ERROR_RULES,
    GRPC_CODE_OF,
    HTTP_OF_TRITON_CODE,
    INTERNAL_ERROR,
    Decision,
    GatewayError,
    GrpcCode,
    grpc_code_of,
    refusal,
)
from modelseal.gateway.grpc_front import abort_args
from modelseal.gateway.http_front import error_response
from modelseal.gateway.keys import KeysBusy
from modelseal.gateway.kserve import BadRequest
from modelseal.gateway.pipeline import DataPlane
from modelseal.gateway.upstream import UnknownModel, UpstreamError, UpstreamTimeout
from modelseal.quota.output import OutputPolicyError
from modelseal.testing import settings_for_tests


@pytest.mark.parametrize(
    ("error", "status", "decision", "code", "retry_after"),
    [
        (BadRequest("shape [2] does not match"), 400, "reject", "INVALID_ARGUMENT", None),
        (UnknownModel("model 'x' is not served"), 404, "reject", "NOT_FOUND", None),
        (OutputPolicyError("output scores is withheld"), 403, "reject", "PERMISSION_DENIED", None),
        (UpstreamTimeout("Triton did not answer in time"), 504, "error", "DEADLINE_EXCEEDED", None),
        (
            UpstreamError("Triton did not answer in time", timeout=True),
            502,
            "error",
            "UNAVAILABLE",
            None,
        ),
        (UpstreamError("Triton is unreachable: OSError"), 502, "error", "UNAVAILABLE", None),
        (UpstreamError("Triton is unreachable", unsent=True), 502, "error", "UNAVAILABLE", None),
        (KeysBusy("too many slow key checks"), 503, "error", "UNAVAILABLE", 1),
    ],
)
def test_each_mapped_error_becomes_its_refusal(
    error: Exception, status: int, decision: Decision, code: str, retry_after: int | None
) -> None:
    err = refusal(error)
    assert (err.status, err.decision, err.retry_after, err.limit) == (
        status,
        decision,
        retry_after,
        None,
    )
    assert type(err.status) is int  # not an enum member: plain in the audit record
    assert err.message == str(error)
    assert grpc_code_of(err.status) == code
    assert refusal(error, " (not counted)").message == f"{error} (not counted)"


def test_upstream_timeout_is_504_only_as_its_own_type() -> None:
    """One rule per type, subclass first: ``UpstreamTimeout`` (504) is an
    ``UpstreamError`` (502) and must not fall to the base's row."""
    assert isinstance(UpstreamTimeout("x"), UpstreamError)
    assert UpstreamTimeout("x").timeout is True
    assert refusal(UpstreamTimeout("x")).status == 504


def test_no_rule_is_shadowed_by_an_earlier_one() -> None:
    for i, rule in enumerate(ERROR_RULES):
        for earlier in ERROR_RULES[:i]:
            assert not issubclass(rule.error, earlier.error), (rule, earlier)


def test_every_rule_has_a_grpc_code() -> None:
    for rule in ERROR_RULES:
        assert rule.status in GRPC_CODE_OF, rule


def test_grpc_codes_are_real_status_codes() -> None:
    for code in GrpcCode:
        assert getattr(grpc.StatusCode, code).name == code
    for status, code in GRPC_CODE_OF.items():
        assert grpc_code_of(status) is code
    for name in HTTP_OF_TRITON_CODE:
        assert hasattr(grpc.StatusCode, name)


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, "INVALID_ARGUMENT"),
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (405, "UNKNOWN"),
        (408, "DEADLINE_EXCEEDED"),
        (413, "RESOURCE_EXHAUSTED"),
        (415, "INVALID_ARGUMENT"),
        (429, "RESOURCE_EXHAUSTED"),
        (500, "INTERNAL"),
        (501, "UNKNOWN"),
        (502, "UNAVAILABLE"),
        (503, "UNAVAILABLE"),
        (504, "DEADLINE_EXCEEDED"),
    ],
)
def test_grpc_code_of_each_status(status: int, code: str) -> None:
    assert grpc_code_of(status) == code


@pytest.mark.parametrize(
    "error", [KeyError("vault-token s.abcdef"), RuntimeError("password=hunter2"), ValueError()]
)
def test_an_unmapped_error_is_internal_and_says_nothing_of_itself(error: Exception) -> None:
    err = refusal(error)
    assert (err.status, err.decision, err.message) == (500, "error", INTERNAL_ERROR)
    assert str(error) not in str(err.body()) or not str(error)


def test_a_refusal_is_kept_as_it_is() -> None:
    mine = GatewayError(429, "quota exceeded", decision="deny", limit="per_day", retry_after=7)
    assert refusal(mine) is mine


# -- the fronts' encodings --------------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "headers", "closes"),
    [
        (GatewayError(401, "missing or invalid API key"), {"WWW-Authenticate"}, False),
        (
            GatewayError(429, "quota exceeded", decision="deny", limit="rate", retry_after=3),
            {"Retry-After"},
            False,
        ),
        (GatewayError(503, "busy", decision="error", retry_after=1), {"Retry-After"}, False),
        (GatewayError(408, "body not received"), set(), True),
        (GatewayError(413, "too large"), set(), True),
        (GatewayError(400, "bad"), set(), False),
        (refusal(UpstreamTimeout("Triton did not answer in time")), set(), False),
    ],
)
def test_http_encoding(err: GatewayError, headers: set[str], closes: bool) -> None:
    resp = error_response(err)
    assert resp.status == err.status
    assert resp.content_type == "application/json"
    assert headers <= set(resp.headers)
    assert ("Retry-After" in resp.headers) == (err.retry_after is not None)
    if err.retry_after is not None:
        assert resp.headers["Retry-After"] == str(err.retry_after)
    assert resp.close is closes
    assert isinstance(resp.body, bytes) and err.message.encode() in resp.body


@pytest.mark.parametrize(
    ("err", "code", "details", "trailing"),
    [
        (
            GatewayError(401, "missing or invalid API key"),
            "UNAUTHENTICATED",
            "missing or invalid API key",
            (),
        ),
        (
            GatewayError(429, "quota exceeded", decision="deny", limit="per_day", retry_after=60),
            "RESOURCE_EXHAUSTED",
            "quota exceeded [limit=per_day]",
            (("retry-after", "60"),),
        ),
        (refusal(KeysBusy("busy")), "UNAVAILABLE", "busy", (("retry-after", "1"),)),
        (refusal(BadRequest("bad shape")), "INVALID_ARGUMENT", "bad shape", ()),
        (GatewayError(405, "no"), "UNKNOWN", "no", ()),
    ],
)
def test_grpc_encoding(
    err: GatewayError, code: str, details: str, trailing: tuple[tuple[str, str], ...]
) -> None:
    assert abort_args(err) == (getattr(grpc.StatusCode, code), details, trailing)


# -- the data plane notes each refusal in the request's record --------------------------


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[DataPlane]:
    gw = Gateway(settings_for_tests(tmp_path))
    try:
        yield DataPlane(gw)
    finally:
        await gw.store.close()
        await gw.upstream.close()


def _ctx(decision: Decision = "reject") -> Ctx:
    ctx = Ctx("http", "infer", "127.0.0.1", time.perf_counter())
    ctx.decision = decision
    return ctx


@pytest.mark.parametrize(
    ("raised", "before", "status", "decision", "limit", "reason"),
    [
        (BadRequest("bad"), "reject", 400, "reject", None, "bad"),
        (UnknownModel("not served"), "reject", 404, "reject", None, "not served"),
        (UpstreamTimeout("late"), "allow", 504, "allow", None, "late"),  # admitted: stays allow
        (UpstreamError("down"), "reject", 502, "error", None, "down"),
        (
            GatewayError(429, "quota", decision="deny", limit="tokens"),
            "reject",
            429,
            "deny",
            "tokens",
            "quota",
        ),
        (KeyError("secret-value"), "allow", 500, "error", None, "internal error: KeyError"),
    ],
)
async def test_serve_notes_the_refusal(
    plane: DataPlane,
    raised: Exception,
    before: Decision,
    status: int,
    decision: Decision,
    limit: str | None,
    reason: str,
) -> None:
    ctx = _ctx(before)

    async def step() -> bytes:
        await asyncio.sleep(0)
        raise raised

    outcome = await plane.serve(ctx, step)
    assert isinstance(outcome, GatewayError)
    assert outcome.status == status
    assert (ctx.decision, ctx.limit, ctx.reason) == (decision, limit, reason)
    assert "secret-value" not in outcome.message


async def test_serve_passes_an_answer_through(plane: DataPlane) -> None:
    ctx = _ctx("allow")

    async def step() -> bytes:
        return b"answer"

    assert await plane.serve(ctx, step) == b"answer"
    assert (ctx.decision, ctx.reason) == ("allow", "")
