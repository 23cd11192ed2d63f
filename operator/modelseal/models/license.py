"""License decisions: may this model be served, with how many seats, and until when. Pure.

A decision is a function of the model, its license, the other models that draw on the same
license's seats, and the time. Seats (total replicas and total GPUs across every model
under the license) are granted oldest model first (creation time, then name), all or
nothing per model: a newer model can never take seats from an older one, and a model that
does not fit holds none, so the ones after it may still fit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import NamedTuple

from modelseal.models.license_spec import LicenseSpec
from modelseal.models.quota_budget import budget_problem
from modelseal.models.spec import ModelSpec


class Reason(StrEnum):
    """Reasons of a model's LicenseValid (and Ready) condition and of a license's Valid one."""

    GRANTED = "LicenseGranted"
    NOT_FOUND = "LicenseNotFound"
    INVALID = "LicenseInvalid"
    TENANT_MISMATCH = "LicenseTenantMismatch"
    REVOKED = "LicenseRevoked"
    NOT_YET_VALID = "LicenseNotYetValid"
    EXPIRED = "LicenseExpired"
    MODEL_NOT_ALLOWED = "ModelNotAllowed"
    OUTPUT_POLICY = "OutputPolicyExceedsLicense"
    SEATS = "SeatsExceeded"
    QUOTA_BUDGET = "QuotaBudgetNotShared"
    QUOTA_STATE = "QuotaStateNotDurable"
    VALID = "Valid"  # the ModelLicense's own Valid condition: within its window, not revoked


@dataclass(frozen=True)
class LicenseDecision:
    granted: bool
    reason: str
    message: str
    #: When the decision changes by itself (the window opens or closes); None if never.
    next_change: datetime | None = None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _fmt(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def check_terms(
    model: ModelSpec, lic: LicenseSpec | None, now: datetime, license_error: str | None = None
) -> LicenseDecision:
    """Everything but seats: existence, tenant, revocation, window, model, output policy."""
    name = model.license_name
    if license_error is not None:
        return LicenseDecision(
            False, Reason.INVALID, f"license {name} cannot be used: {license_error}"
        )
    if lic is None:
        return LicenseDecision(
            False,
            Reason.NOT_FOUND,
            f"ModelLicense {name} does not exist in namespace {model.namespace}",
        )
    if lic.tenant != model.tenant:
        return LicenseDecision(
            False,
            Reason.TENANT_MISMATCH,
            f"license {name} belongs to tenant {lic.tenant}, not to {model.tenant}",
        )
    if lic.revoked:
        why = f": {lic.revocation_reason}" if lic.revocation_reason else ""
        return LicenseDecision(False, Reason.REVOKED, f"license {name} is revoked{why}")
    if lic.not_before is not None and now < lic.not_before:
        return LicenseDecision(
            False,
            Reason.NOT_YET_VALID,
            f"license {name} is valid from {_fmt(lic.not_before)}",
            next_change=lic.not_before,
        )
    if lic.not_after is not None and now >= lic.not_after:
        return LicenseDecision(
            False, Reason.EXPIRED, f"license {name} expired at {_fmt(lic.not_after)}"
        )
    if not lic.allows(model.name):
        return LicenseDecision(
            False,
            Reason.MODEL_NOT_ALLOWED,
            f"license {name} does not list model {model.name} in allowedModels",
            next_change=lic.not_after,
        )
    ceiling = lic.output_ceiling
    policy = model.output_policy
    too_open = policy.rank > ceiling.rank or (
        policy.mode == "topK"
        and ceiling.mode == "topK"
        and ceiling.top_k is not None
        and (policy.top_k or 0) > ceiling.top_k
    )
    if too_open:
        return LicenseDecision(
            False,
            Reason.OUTPUT_POLICY,
            f"outputPolicy {policy.describe()} is more revealing than license {name} allows "
            f"({ceiling.describe()})",
            next_change=lic.not_after,
        )
    return LicenseDecision(
        True,
        Reason.GRANTED,
        f"license {name} of tenant {lic.tenant} is valid"
        + (f" until {_fmt(lic.not_after)}" if lic.not_after else " with no expiry"),
        next_change=lic.not_after,
    )


@dataclass(frozen=True)
class SeatClaim:
    """One model's ask on a license's seats."""

    key: str  # namespace/name
    created: datetime | None
    replicas: int
    gpus: int


@dataclass(frozen=True)
class SeatGrant:
    granted: bool
    message: str


@dataclass(frozen=True)
class SeatUsage:
    models: int
    replicas: int
    gpus: int


def allocate_seats(
    lic: LicenseSpec, claims: Iterable[SeatClaim]
) -> tuple[dict[str, SeatGrant], SeatUsage]:
    """Grant seats oldest first, all or nothing per model; returns grants and the totals."""
    ordered = sorted(claims, key=lambda c: (c.created or _EPOCH, c.key))
    used_replicas = used_gpus = 0
    grants: dict[str, SeatGrant] = {}
    for claim in ordered:
        fits = (
            used_replicas + claim.replicas <= lic.max_replicas
            and used_gpus + claim.gpus <= lic.max_gpus
        )
        if fits:
            used_replicas += claim.replicas
            used_gpus += claim.gpus
            grants[claim.key] = SeatGrant(
                True,
                f"{claim.replicas} replica(s) and {claim.gpus} GPU(s) granted; license "
                f"{lic.name} uses {used_replicas}/{lic.max_replicas} replicas and "
                f"{used_gpus}/{lic.max_gpus} GPUs",
            )
        else:
            grants[claim.key] = SeatGrant(
                False,
                f"needs {claim.replicas} replica(s) and {claim.gpus} GPU(s), but license "
                f"{lic.name} allows {lic.max_replicas} replicas and {lic.max_gpus} GPUs in "
                f"total and older models already hold {used_replicas} replicas and "
                f"{used_gpus} GPUs",
            )
    usage = SeatUsage(models=len(ordered), replicas=used_replicas, gpus=used_gpus)
    return grants, usage


def claim_of(model: ModelSpec) -> SeatClaim:
    return SeatClaim(
        key=model.key,
        created=model.created,
        replicas=model.serving.replicas,
        gpus=model.serving.total_gpus,
    )


def decide(
    model: ModelSpec,
    lic: LicenseSpec | None,
    peers: Iterable[ModelSpec],
    now: datetime,
    license_error: str | None = None,
    *,
    require_durable_quota_state: bool = False,
) -> LicenseDecision:
    """The full decision for `model`: its terms, then its seats among `peers`, then whether
    it counts the license's quotas in the same store as the others (one budget).

    `peers` are the other parsed models naming the same license (the model itself may be
    among them; it is replaced by the given version). Only peers that pass the terms
    themselves compete for seats.
    """
    terms = check_terms(model, lic, now, license_error)
    if not terms.granted or lic is None:
        return terms
    claims = {model.key: claim_of(model)}
    others = [p for p in peers if p.key != model.key and check_terms(p, lic, now).granted]
    for peer in others:
        claims[peer.key] = claim_of(peer)
    grants, _usage = allocate_seats(lic, claims.values())
    grant = grants[model.key]
    if not grant.granted:
        return LicenseDecision(False, Reason.SEATS, grant.message, next_change=lic.not_after)
    problem = budget_problem(model, lic, others, require_durable=require_durable_quota_state)
    if problem is not None:
        return LicenseDecision(False, problem.reason, problem.message, next_change=lic.not_after)
    return terms


def license_usage(
    lic: LicenseSpec, models: Iterable[ModelSpec], now: datetime
) -> tuple[SeatUsage, Mapping[str, SeatGrant]]:
    """Seat usage of a license over the models that name it (for the license's status)."""
    named = list(models)
    eligible = [m for m in named if check_terms(m, lic, now).granted]
    grants, usage = allocate_seats(lic, (claim_of(m) for m in eligible))
    return SeatUsage(models=len(named), replicas=usage.replicas, gpus=usage.gpus), grants


class LicenseState(NamedTuple):
    """The license itself, without any model: the reason and message of its Valid
    condition, and when that changes by itself (the window opens or closes; None: never)."""

    reason: Reason
    message: str
    next_change: datetime | None


def license_state(lic: LicenseSpec, now: datetime) -> LicenseState:
    """The state of the license itself, without any model."""
    if lic.revoked:
        why = f": {lic.revocation_reason}" if lic.revocation_reason else ""
        return LicenseState(Reason.REVOKED, f"revoked{why}", None)
    if lic.not_before is not None and now < lic.not_before:
        return LicenseState(
            Reason.NOT_YET_VALID, f"valid from {_fmt(lic.not_before)}", lic.not_before
        )
    if lic.not_after is not None and now >= lic.not_after:
        return LicenseState(Reason.EXPIRED, f"expired at {_fmt(lic.not_after)}", None)
    until = f" until {_fmt(lic.not_after)}" if lic.not_after else " with no expiry"
    return LicenseState(Reason.VALID, f"valid{until}", lic.not_after)
