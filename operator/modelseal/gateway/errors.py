"""Refusals and the one table that maps errors to statuses (HTTP status and gRPC code).

The steps of a request (``modelseal.gateway.pipeline``) raise either a ``GatewayError``
(a refusal with its status already chosen) or one of the errors in ``ERROR_RULES``; the
data plane turns the latter into a ``GatewayError`` with ``refusal``, in this one place.
The protocol fronts then only encode: the HTTP front answers ``GatewayError.status`` with
``GatewayError.body()``; the gRPC front aborts with ``GRPC_CODE_OF[status]``.

The rules are tried in order and the first whose type matches wins: a subclass is listed
before its base (``UpstreamTimeout`` before ``UpstreamError``).
"""

from __future__ import annotations

from enum import StrEnum
from http import HTTPStatus
from typing import Any, Literal, NamedTuple

from modelseal.gateway.keys import KeysBusy
from modelseal.gateway.kserve import BadRequest
from modelseal.gateway.upstream import UnknownModel, UpstreamError, UpstreamTimeout
from modelseal.quota.output import OutputPolicyError

Decision = Literal["allow", "deny", "reject", "error"]


class GatewayError(Exception):
    """A refusal: HTTP status, message for the client, audit decision."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        decision: Decision = "reject",
        limit: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.decision: Decision = decision
        self.limit = limit
        self.retry_after = retry_after

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": self.message}
        if self.limit is not None:
            out["limit"] = self.limit
        if self.retry_after is not None:
            out["retry_after_s"] = self.retry_after
        return out


class GrpcCode(StrEnum):
    """The gRPC status codes the gateway answers with (names of ``grpc.StatusCode``)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    NOT_FOUND = "NOT_FOUND"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    INTERNAL = "INTERNAL"
    UNAVAILABLE = "UNAVAILABLE"
    UNIMPLEMENTED = "UNIMPLEMENTED"
    UNKNOWN = "UNKNOWN"


GRPC_CODE_OF: dict[int, GrpcCode] = {
    HTTPStatus.BAD_REQUEST: GrpcCode.INVALID_ARGUMENT,
    HTTPStatus.UNAUTHORIZED: GrpcCode.UNAUTHENTICATED,
    HTTPStatus.FORBIDDEN: GrpcCode.PERMISSION_DENIED,
    HTTPStatus.NOT_FOUND: GrpcCode.NOT_FOUND,
    HTTPStatus.REQUEST_TIMEOUT: GrpcCode.DEADLINE_EXCEEDED,
    HTTPStatus.REQUEST_ENTITY_TOO_LARGE: GrpcCode.RESOURCE_EXHAUSTED,
    HTTPStatus.UNSUPPORTED_MEDIA_TYPE: GrpcCode.INVALID_ARGUMENT,
    HTTPStatus.TOO_MANY_REQUESTS: GrpcCode.RESOURCE_EXHAUSTED,
    HTTPStatus.INTERNAL_SERVER_ERROR: GrpcCode.INTERNAL,
    HTTPStatus.BAD_GATEWAY: GrpcCode.UNAVAILABLE,
    HTTPStatus.SERVICE_UNAVAILABLE: GrpcCode.UNAVAILABLE,
    HTTPStatus.GATEWAY_TIMEOUT: GrpcCode.DEADLINE_EXCEEDED,
}
"""The gRPC code of each HTTP status the gateway refuses with (others: UNKNOWN)."""

HTTP_OF_TRITON_CODE: dict[str, int] = {
    GrpcCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    GrpcCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    GrpcCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    GrpcCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    GrpcCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    GrpcCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    GrpcCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    GrpcCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
}
"""The status recorded for a gRPC error code that Triton itself answered (others: 502)."""


def grpc_code_of(status: int) -> GrpcCode:
    return GRPC_CODE_OF.get(status, GrpcCode.UNKNOWN)


class ErrorRule(NamedTuple):
    """An error raised by a step, and the refusal it becomes."""

    error: type[Exception]
    status: HTTPStatus
    decision: Decision
    retry_after: int | None = None


ERROR_RULES: tuple[ErrorRule, ...] = (
    ErrorRule(BadRequest, HTTPStatus.BAD_REQUEST, "reject"),
    ErrorRule(UnknownModel, HTTPStatus.NOT_FOUND, "reject"),
    ErrorRule(OutputPolicyError, HTTPStatus.FORBIDDEN, "reject"),
    ErrorRule(UpstreamTimeout, HTTPStatus.GATEWAY_TIMEOUT, "error"),
    ErrorRule(UpstreamError, HTTPStatus.BAD_GATEWAY, "error"),
    ErrorRule(KeysBusy, HTTPStatus.SERVICE_UNAVAILABLE, "error", retry_after=1),
)

MAPPED: tuple[type[Exception], ...] = tuple(rule.error for rule in ERROR_RULES)
"""The error types ``refusal`` maps (for an ``except`` clause)."""

INTERNAL_ERROR = "internal gateway error"


def refusal(exc: Exception, suffix: str = "") -> GatewayError:
    """The refusal of a mapped error (its message, plus ``suffix``); any other error is an
    internal one (500, a message that says nothing of it)."""
    if isinstance(exc, GatewayError):
        return exc
    for rule in ERROR_RULES:
        if isinstance(exc, rule.error):
            return GatewayError(
                int(rule.status),
                str(exc) + suffix,
                decision=rule.decision,
                retry_after=rule.retry_after,
            )
    return GatewayError(int(HTTPStatus.INTERNAL_SERVER_ERROR), INTERNAL_ERROR, decision="error")
