"""The status of a ProtectedModel and of a ModelLicense, computed from what the operator saw.

Pure: the reconciler gathers observations (license decision, Vault key state, the
Deployment's and Pods' state), this module turns them into conditions and fields, and the
reconciler writes the result only when it differs from the stored status.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from modelseal.models import usage as usage_conditions
from modelseal.models.conditions import Condition, Status, merge
from modelseal.models.license import LicenseDecision, Reason, SeatUsage, license_state
from modelseal.models.license_spec import LicenseSpec
from modelseal.models.resource import ObjectMeta
from modelseal.models.spec import ModelSpec

# Condition types of a ProtectedModel.
READY = "Ready"
LICENSE_VALID = "LicenseValid"
KEY_ACCESSIBLE = "KeyAccessible"
ARTIFACT_VERIFIED = "ArtifactVerified"
PROGRESSING = "Progressing"
DEGRADED = "Degraded"
MODEL_CONDITIONS = (READY, LICENSE_VALID, KEY_ACCESSIBLE, ARTIFACT_VERIFIED, PROGRESSING, DEGRADED)

# Condition types of a ModelLicense.
VALID = "Valid"
EXPIRED = "Expired"
QUOTA_EXHAUSTED = "QuotaExhausted"
REVOKED = "Revoked"


class ConditionReason(StrEnum):
    """Reasons this module sets on a ProtectedModel's and a ModelLicense's conditions.

    Others come from where the decision is made: `modelseal.models.license.Reason` (license
    decisions), `modelseal.models.usage.QuotaReason`, the key and artifact states, and
    `modelseal.models.tenancy`. A StrEnum: each compares equal to its string, as stored.
    """

    INVALID_SPEC = "InvalidSpec"
    OBJECT_CONFLICT = "ObjectConflict"
    RECONCILING = "Reconciling"
    SCALED_TO_ZERO = "ScaledToZero"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    ROLLING_OUT = "RollingOut"
    SERVING = "Serving"
    NOT_EVALUATED = "NotEvaluated"
    SCALING_DOWN = "ScalingDown"
    ROLLOUT_COMPLETE = "RolloutComplete"
    IDLE = "Idle"
    RECONCILE_ERROR = "ReconcileError"
    REPLICAS_UNAVAILABLE = "ReplicasUnavailable"
    AS_EXPECTED = "AsExpected"
    EXPIRED = "Expired"
    WITHIN_WINDOW = "WithinWindow"
    REVOKED = "Revoked"
    NOT_REVOKED = "NotRevoked"
    NOT_RUNNING = "NotRunning"


@dataclass(frozen=True)
class KeyState:
    """Whether the model's unsealer can reach its Transit key (policy + role in place)."""

    status: Status
    reason: str  # KeyProvisioned | KeyNotFound | VaultUnavailable | VaultError | AccessWithdrawn
    message: str
    role: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "True"


@dataclass(frozen=True)
class WorkloadState:
    """What the owned Deployment reports."""

    exists: bool = False
    desired: int = 0
    observed_current: bool = False
    replicas: int = 0
    updated: int = 0
    ready: int = 0
    available: int = 0
    deadline_exceeded: bool = False

    @property
    def complete(self) -> bool:
        return (
            self.exists
            and self.observed_current
            and self.updated == self.desired
            and self.replicas == self.desired
            and self.available == self.desired
            and self.ready >= self.desired
        )


@dataclass(frozen=True)
class ArtifactState:
    status: Status = "Unknown"
    reason: str = ConditionReason.NOT_RUNNING
    message: str = "no unsealer of the current version has run yet"


@dataclass(frozen=True)
class ModelObservation:
    meta: ObjectMeta
    spec: ModelSpec | None
    spec_error: str | None = None
    # Reason of the conditions when spec is None: InvalidSpec, or NotAllowedInNamespace
    # (a valid spec that its namespace may not use: modelseal.models.tenancy).
    spec_reason: str = ConditionReason.INVALID_SPEC
    decision: LicenseDecision | None = None
    key: KeyState | None = None
    workload: WorkloadState = field(default_factory=WorkloadState)
    artifact: ArtifactState = field(default_factory=ArtifactState)
    conflict: str | None = None
    error: str | None = None  # a reconcile error (API, Vault) that is being retried
    endpoint: str = ""
    granted_replicas: int = 0
    service_account: str = ""  # the model's ServiceAccount (`<name>-<uid[:8]>`)


def _ready(obs: ModelObservation) -> Condition:
    spec, wl = obs.spec, obs.workload
    if spec is None:
        return Condition(READY, "False", obs.spec_reason, obs.spec_error or "invalid spec")
    if obs.conflict:
        return Condition(READY, "False", ConditionReason.OBJECT_CONFLICT, obs.conflict)
    if obs.decision is not None and not obs.decision.granted:
        return Condition(READY, "False", obs.decision.reason, obs.decision.message)
    # Vault unreachable (Unknown) does not stop Pods that already serve their model.
    still_serving = obs.key is not None and obs.key.status == "Unknown" and wl.complete
    if obs.key is not None and not obs.key.ok and not (still_serving and wl.desired > 0):
        return Condition(READY, "False", obs.key.reason, obs.key.message)
    if obs.decision is None or obs.key is None:
        return Condition(
            READY, "Unknown", ConditionReason.RECONCILING, obs.error or "not evaluated yet"
        )
    if spec.serving.replicas == 0:
        return Condition(
            READY, "False", ConditionReason.SCALED_TO_ZERO, "spec.serving.replicas is 0"
        )
    if obs.artifact.status == "False":
        return Condition(READY, "False", obs.artifact.reason, obs.artifact.message)
    if not wl.complete:
        if wl.deadline_exceeded:
            return Condition(
                READY,
                "False",
                ConditionReason.PROGRESS_DEADLINE_EXCEEDED,
                f"version {spec.version}: {wl.ready}/{wl.desired} replicas ready and the "
                "rollout is stuck",
            )
        return Condition(
            READY,
            "False",
            ConditionReason.ROLLING_OUT,
            f"version {spec.version}: {wl.updated}/{wl.desired} replicas updated, {wl.ready} ready",
        )
    return Condition(
        READY,
        "True",
        ConditionReason.SERVING,
        f"serving version {spec.version} on {wl.ready}/{wl.desired} replicas at {obs.endpoint}",
    )


def _license(obs: ModelObservation) -> Condition:
    if obs.spec is None:
        return Condition(
            LICENSE_VALID, "Unknown", ConditionReason.INVALID_SPEC, "the spec cannot be read"
        )
    if obs.decision is None:
        return Condition(LICENSE_VALID, "Unknown", ConditionReason.NOT_EVALUATED, obs.error or "")
    status: Status = "True" if obs.decision.granted else "False"
    return Condition(LICENSE_VALID, status, obs.decision.reason, obs.decision.message)


def _key(obs: ModelObservation) -> Condition:
    if obs.spec is None:
        if obs.spec_reason != ConditionReason.INVALID_SPEC and obs.key is not None:
            # Withdrawn because of the reason; or Vault could not be asked (its own reason).
            why = obs.spec_reason if obs.key.status == "False" else obs.key.reason
            return Condition(KEY_ACCESSIBLE, obs.key.status, why, obs.key.message)
        return Condition(
            KEY_ACCESSIBLE, "Unknown", ConditionReason.INVALID_SPEC, "the spec cannot be read"
        )
    if obs.key is None:
        return Condition(KEY_ACCESSIBLE, "Unknown", ConditionReason.NOT_EVALUATED, obs.error or "")
    return Condition(KEY_ACCESSIBLE, obs.key.status, obs.key.reason, obs.key.message)


def _artifact(obs: ModelObservation) -> Condition:
    a = obs.artifact
    return Condition(ARTIFACT_VERIFIED, a.status, a.reason, a.message)


def _progressing(obs: ModelObservation) -> Condition:
    wl = obs.workload
    if wl.deadline_exceeded:
        return Condition(
            PROGRESSING,
            "False",
            ConditionReason.PROGRESS_DEADLINE_EXCEEDED,
            "the Deployment stopped progressing",
        )
    if wl.exists and wl.desired == 0 and wl.replicas > 0:
        return Condition(
            PROGRESSING, "True", ConditionReason.SCALING_DOWN, f"{wl.replicas} Pod(s) still running"
        )
    if wl.exists and wl.desired > 0 and not wl.complete:
        return Condition(
            PROGRESSING,
            "True",
            ConditionReason.ROLLING_OUT,
            f"{wl.updated}/{wl.desired} replicas updated, {wl.available} available",
        )
    if wl.exists and wl.desired > 0:
        return Condition(
            PROGRESSING, "False", ConditionReason.ROLLOUT_COMPLETE, "all replicas are current"
        )
    return Condition(PROGRESSING, "False", ConditionReason.IDLE, "no replicas are asked for")


def _degraded(obs: ModelObservation) -> Condition:
    wl = obs.workload
    if obs.error:
        return Condition(DEGRADED, "True", ConditionReason.RECONCILE_ERROR, obs.error)
    if obs.artifact.status == "False":
        return Condition(DEGRADED, "True", obs.artifact.reason, obs.artifact.message)
    if wl.deadline_exceeded:
        return Condition(
            DEGRADED,
            "True",
            ConditionReason.PROGRESS_DEADLINE_EXCEEDED,
            "the rollout did not finish in time",
        )
    if (
        wl.exists
        and wl.observed_current
        and wl.desired > 0
        and wl.updated == wl.desired
        and wl.available < wl.desired
        and wl.replicas == wl.desired
    ):
        return Condition(
            DEGRADED,
            "True",
            ConditionReason.REPLICAS_UNAVAILABLE,
            f"{wl.available}/{wl.desired} replicas available",
        )
    return Condition(DEGRADED, "False", ConditionReason.AS_EXPECTED, "")


def model_conditions(obs: ModelObservation) -> list[Condition]:
    return [
        _ready(obs),
        _license(obs),
        _key(obs),
        _artifact(obs),
        _progressing(obs),
        _degraded(obs),
    ]


def model_status(
    obs: ModelObservation, previous: Mapping[str, Any] | None, now: datetime
) -> dict[str, Any]:
    """The whole new status; equal to `previous` when nothing changed."""
    prev = dict(previous or {})
    conditions = merge(prev.get("conditions"), model_conditions(obs), obs.meta.generation, now)
    status: dict[str, Any] = {
        "observedGeneration": obs.meta.generation,
        "conditions": conditions,
        "replicas": obs.granted_replicas,
        "readyReplicas": obs.workload.ready,
    }
    if obs.endpoint:
        status["endpoint"] = obs.endpoint
    if obs.service_account:
        status["serviceAccountName"] = obs.service_account
    spec = obs.spec
    if spec is not None:
        status["tenant"] = spec.tenant
        if obs.key is not None and obs.key.ok and obs.key.role:
            status["vaultRole"] = obs.key.role
        else:
            status["vaultRole"] = ""
    # What is served: the current spec once its rollout completed, else what was before.
    served: dict[str, Any] = {
        k: prev[k]
        for k in ("servedVersion", "servedDigest", "servedUri", "servedPlaintextSize")
        if k in prev
    }
    previous_version = prev.get("previousVersion")
    if spec is not None and obs.workload.complete and obs.workload.desired > 0:
        now_served: dict[str, Any] = {
            "servedVersion": spec.version,
            "servedDigest": spec.source.digest,
            "servedUri": spec.source.uri,
            "servedPlaintextSize": spec.source.plaintext_bytes,
        }
        if served.get("servedDigest") and (
            served.get("servedDigest") != spec.source.digest
            or served.get("servedVersion") != spec.version
        ):
            previous_version = {
                "version": served.get("servedVersion", ""),
                "uri": served.get("servedUri", ""),
                "digest": served.get("servedDigest", ""),
                "plaintextSize": served.get("servedPlaintextSize", 0),
            }
        served = now_served
    status.update(served)
    if previous_version:
        status["previousVersion"] = previous_version
    return status


# --- ModelLicense ------------------------------------------------------------------------


def license_conditions(
    lic: LicenseSpec | None, error: str | None, now: datetime, quota: Condition | None = None
) -> list[Condition]:
    """``quota``: the QuotaExhausted condition the usage writer last set (it reads the quota
    store; see ``modelseal.models.usage``), kept as it is."""
    if lic is None:
        msg = error or "invalid spec"
        return [
            Condition(VALID, "False", ConditionReason.INVALID_SPEC, msg),
            Condition(EXPIRED, "Unknown", ConditionReason.INVALID_SPEC, msg),
            Condition(REVOKED, "Unknown", ConditionReason.INVALID_SPEC, msg),
            Condition(QUOTA_EXHAUSTED, "Unknown", ConditionReason.INVALID_SPEC, msg),
        ]
    reason, message, _next = license_state(lic, now)
    valid: Status = "True" if reason == Reason.VALID else "False"
    expired: Status = "True" if reason == Reason.EXPIRED else "False"
    revoked: Status = "True" if lic.revoked else "False"
    return [
        Condition(VALID, valid, reason, message),
        Condition(
            EXPIRED,
            expired,
            ConditionReason.EXPIRED if expired == "True" else ConditionReason.WITHIN_WINDOW,
            message if expired == "True" else "",
        ),
        Condition(
            REVOKED,
            revoked,
            ConditionReason.REVOKED if lic.revoked else ConditionReason.NOT_REVOKED,
            lic.revocation_reason or "" if lic.revoked else "",
        ),
        quota or usage_conditions.quota_condition(lic, None),
    ]


def license_status(
    lic: LicenseSpec | None,
    generation: int,
    error: str | None,
    usage: SeatUsage | None,
    previous: Mapping[str, Any] | None,
    now: datetime,
) -> dict[str, Any]:
    prev = dict(previous or {})
    status: dict[str, Any] = {
        "observedGeneration": generation,
        "conditions": merge(
            prev.get("conditions"),
            license_conditions(lic, error, now, usage_conditions.carried_quota_condition(prev)),
            generation,
            now,
        ),
    }
    if lic is not None and usage is not None:
        u: dict[str, Any] = {
            "models": usage.models,
            "replicas": usage.replicas,
            "gpus": usage.gpus,
            "seats": f"{usage.replicas}/{lic.max_replicas}",
            "gpuSeats": f"{usage.gpus}/{lic.max_gpus}",
        }
        old_usage = prev.get("usage")
        if isinstance(old_usage, Mapping) and "requests" in old_usage:
            u["requests"] = old_usage["requests"]
        status["usage"] = u
    return status
