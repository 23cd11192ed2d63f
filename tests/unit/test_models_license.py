"""License decisions, seats across a tenant's models, and status conditions (pure)."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

from modelseal.models import conditions
from modelseal.models.license import Reason, allocate_seats, decide, license_usage
from modelseal.models.spec import ModelSpec, parse_license, parse_model
from modelseal.models.status import (
    ArtifactState,
    KeyState,
    ModelObservation,
    WorkloadState,
    license_status,
    model_status,
)

DIGEST = "sha256tree:" + "cd" * 32
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def model(name: str = "digits", created: str = "2026-01-01T00:00:00Z", **spec: Any) -> ModelSpec:
    body: dict[str, Any] = {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": created,
        },
        "spec": {
            "tenant": "acme",
            "licenseRef": {"name": "gold"},
            "version": "1",
            "source": {"uri": "s3://bkt/x", "digest": DIGEST, "plaintextSize": "1Mi"},
            "vault": {"transitKey": "k"},
            "gateway": {"quotaStore": "redis", "redisUrl": "redis://r:6379/0"},
        },
    }
    for key, value in spec.items():
        body["spec"][key] = value
    return parse_model(body)


def lic(**spec: Any) -> Any:
    body: dict[str, Any] = {
        "metadata": {"name": "gold", "namespace": "team-a", "uid": "l", "generation": 4},
        "spec": {
            "tenant": "acme",
            "allowedModels": ["*"],
            "seats": {"maxReplicas": 4, "maxGPUs": 4},
        },
    }
    body["spec"].update(copy.deepcopy(spec))
    return parse_license(body)


def test_granted_with_expiry_as_next_change() -> None:
    end = "2026-07-01T00:00:00Z"
    d = decide(model(), lic(notAfter=end), [], NOW)
    assert d.granted and d.reason == Reason.GRANTED
    assert d.next_change == datetime(2026, 7, 1, tzinfo=UTC)


def test_each_refusal_reason() -> None:
    m = model()
    cases = [
        (None, Reason.NOT_FOUND, "does not exist"),
        (lic(tenant="globex"), Reason.TENANT_MISMATCH, "belongs to tenant globex"),
        (lic(revoked=True, revocationReason="unpaid"), Reason.REVOKED, "revoked: unpaid"),
        (lic(notBefore="2026-06-02T00:00:00Z"), Reason.NOT_YET_VALID, "valid from"),
        (lic(notAfter="2026-06-01T12:00:00Z"), Reason.EXPIRED, "expired at"),
        (lic(allowedModels=["other"]), Reason.MODEL_NOT_ALLOWED, "does not list model digits"),
        (lic(outputPolicy={"maxMode": "labels"}), Reason.OUTPUT_POLICY, "more revealing"),
        (lic(seats={"maxReplicas": 0, "maxGPUs": 0}), Reason.SEATS, "needs 1 replica"),
    ]
    for license_, reason, text in cases:
        d = decide(m, license_, [], NOW)
        assert not d.granted
        assert d.reason == reason, (reason, d)
        assert text in d.message


def test_not_yet_valid_reports_when_it_opens() -> None:
    d = decide(model(), lic(notBefore="2026-06-02T00:00:00Z"), [], NOW)
    assert d.next_change == datetime(2026, 6, 2, tzinfo=UTC)


def test_topk_ceiling() -> None:
    ceiling = lic(outputPolicy={"maxMode": "topK", "maxTopK": 3})
    assert decide(model(outputPolicy={"mode": "topK", "topK": 3}), ceiling, [], NOW).granted
    assert decide(model(outputPolicy={"mode": "labels"}), ceiling, [], NOW).granted
    too_many = decide(model(outputPolicy={"mode": "topK", "topK": 5}), ceiling, [], NOW)
    assert too_many.reason == Reason.OUTPUT_POLICY
    assert decide(model(), ceiling, [], NOW).reason == Reason.OUTPUT_POLICY


def test_seats_oldest_first_across_models() -> None:
    license_ = lic(seats={"maxReplicas": 3, "maxGPUs": 4})
    old = model("old", "2026-01-01T00:00:00Z", serving={"replicas": 2, "gpusPerReplica": 1})
    mid = model("mid", "2026-02-01T00:00:00Z", serving={"replicas": 2, "gpusPerReplica": 1})
    new = model("new", "2026-03-01T00:00:00Z", serving={"replicas": 1, "gpusPerReplica": 2})
    peers = [old, mid, new]
    assert decide(old, license_, peers, NOW).granted
    # mid does not fit (2+2 > 3 replicas) and so holds nothing; new fits after old.
    d_mid = decide(mid, license_, peers, NOW)
    assert d_mid.reason == Reason.SEATS
    assert "older models already hold 2 replicas and 2 GPUs" in d_mid.message
    assert decide(new, license_, peers, NOW).granted
    usage, grants = license_usage(license_, peers, NOW)
    assert (usage.models, usage.replicas, usage.gpus) == (3, 3, 4)
    assert not grants["team-a/mid"].granted


def test_models_failing_terms_hold_no_seats() -> None:
    license_ = lic(allowedModels=["b"], seats={"maxReplicas": 1, "maxGPUs": 0})
    a = model("a", "2026-01-01T00:00:00Z")  # not allowed: must not take the only seat
    b = model("b", "2026-02-01T00:00:00Z")
    assert decide(b, license_, [a, b], NOW).granted


def test_gpu_seats() -> None:
    license_ = lic(seats={"maxReplicas": 10, "maxGPUs": 2})
    big = model(serving={"replicas": 1, "gpusPerReplica": 4})
    d = decide(big, license_, [], NOW)
    assert d.reason == Reason.SEATS and "4 GPU(s)" in d.message


def test_allocate_is_order_independent() -> None:
    from modelseal.models.license import SeatClaim

    license_ = lic(seats={"maxReplicas": 2, "maxGPUs": 0})
    t = datetime(2026, 1, 1, tzinfo=UTC)
    claims = [SeatClaim(f"ns/m{i}", t + timedelta(days=i), 1, 0) for i in range(4)]
    a, _ = allocate_seats(license_, claims)
    b, _ = allocate_seats(license_, list(reversed(claims)))
    assert a == b
    assert [a[f"ns/m{i}"].granted for i in range(4)] == [True, True, False, False]


def obs(m: ModelSpec, **kw: Any) -> ModelObservation:
    from modelseal.models.spec import parse_meta

    meta = parse_meta(
        {"metadata": {"name": m.name, "namespace": m.namespace, "uid": m.uid, "generation": 2}}
    )
    base: dict[str, Any] = {
        "meta": meta,
        "spec": m,
        "decision": decide(m, lic(), [], NOW),
        "key": KeyState("True", "KeyProvisioned", "ok", role="modelseal_team-a_digits"),
        "workload": WorkloadState(True, 1, True, 1, 1, 1, 1),
        "artifact": ArtifactState("True", "Verified", "verified"),
        "endpoint": "digits.team-a.svc:8000",
        "granted_replicas": 1,
    }
    base.update(kw)
    return ModelObservation(**base)


def test_ready_status_and_idempotence() -> None:
    m = model()
    first = model_status(obs(m), None, NOW)
    ready = conditions.find(first["conditions"], "Ready")
    assert ready is not None and ready["status"] == "True" and ready["reason"] == "Serving"
    assert all(c["observedGeneration"] == 2 for c in first["conditions"])
    assert first["servedVersion"] == "1" and first["vaultRole"] == "modelseal_team-a_digits"
    # Recomputing later with the same observations changes nothing (no write).
    again = model_status(obs(m), first, NOW + timedelta(hours=1))
    assert again == first


def test_transition_time_moves_only_on_status_change() -> None:
    m = model()
    first = model_status(obs(m), None, NOW)
    later = NOW + timedelta(minutes=5)
    expired = decide(m, lic(notAfter="2026-06-01T00:00:00Z"), [], NOW)
    second = model_status(
        obs(m, decision=expired, key=KeyState("False", "AccessWithdrawn", "withdrawn")),
        first,
        later,
    )
    ready = conditions.find(second["conditions"], "Ready")
    assert ready is not None
    assert ready["status"] == "False" and ready["reason"] == Reason.EXPIRED
    assert ready["lastTransitionTime"] == "2026-06-01T12:05:00Z"
    art = conditions.find(second["conditions"], "ArtifactVerified")
    assert art is not None and art["lastTransitionTime"] == "2026-06-01T12:00:00Z"
    changed = {c["type"] for c in conditions.transitions(first["conditions"], second["conditions"])}
    assert changed == {"Ready", "LicenseValid", "KeyAccessible"}


def test_previous_version_recorded_on_rollout() -> None:
    v1 = model()
    status1 = model_status(obs(v1), None, NOW)
    v2 = model(
        version="2",
        source={"uri": "s3://bkt/y", "digest": "sha256tree:" + "ee" * 32, "plaintextSize": 10},
    )
    rolling = model_status(obs(v2, workload=WorkloadState(True, 1, True, 2, 1, 1, 1)), status1, NOW)
    assert rolling["servedVersion"] == "1" and "previousVersion" not in rolling
    done = model_status(obs(v2), rolling, NOW)
    assert done["servedVersion"] == "2"
    assert done["previousVersion"] == {
        "version": "1",
        "uri": "s3://bkt/x",
        "digest": DIGEST,
        "plaintextSize": 1024 * 1024,
    }


def test_invalid_spec_status() -> None:
    from modelseal.models.spec import parse_meta

    meta = parse_meta({"metadata": {"name": "x", "namespace": "n", "generation": 7}})
    status = model_status(
        ModelObservation(meta=meta, spec=None, spec_error="spec.tenant is required"), None, NOW
    )
    ready = conditions.find(status["conditions"], "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "InvalidSpec")
    assert ready["message"] == "spec.tenant is required"


def test_unseal_failure_is_degraded() -> None:
    m = model()
    status = model_status(
        obs(
            m,
            artifact=ArtifactState("False", "UnsealFailed", "digest mismatch"),
            workload=WorkloadState(True, 1, True, 1, 1, 0, 0),
        ),
        None,
        NOW,
    )
    assert conditions.find(status["conditions"], "Ready")["reason"] == "UnsealFailed"  # type: ignore[index]
    assert conditions.find(status["conditions"], "Degraded")["status"] == "True"  # type: ignore[index]


def test_license_status() -> None:
    license_ = lic(notAfter="2026-06-01T00:00:00Z")
    st = license_status(license_, 4, None, None, None, NOW)
    valid = conditions.find(st["conditions"], "Valid")
    expired = conditions.find(st["conditions"], "Expired")
    assert valid is not None and valid["status"] == "False" and valid["reason"] == Reason.EXPIRED
    assert expired is not None and expired["status"] == "True"
    revoked = license_status(lic(revoked=True), 4, None, None, None, NOW)
    assert conditions.find(revoked["conditions"], "Revoked")["status"] == "True"  # type: ignore[index]
    bad = license_status(None, 1, "spec.seats is required", None, None, NOW)
    assert conditions.find(bad["conditions"], "Valid")["reason"] == "InvalidSpec"  # type: ignore[index]


def test_vault_outage_does_not_unready_a_serving_model() -> None:
    m = model()
    outage = KeyState("Unknown", "VaultUnavailable", "cannot reach Vault")
    serving = model_status(obs(m, key=outage, error="cannot reach Vault"), None, NOW)
    assert conditions.find(serving["conditions"], "Ready")["status"] == "True"  # type: ignore[index]
    assert conditions.find(serving["conditions"], "Degraded")["status"] == "True"  # type: ignore[index]
    fresh = model_status(obs(m, key=outage, workload=WorkloadState()), None, NOW)
    assert conditions.find(fresh["conditions"], "Ready")["reason"] == "VaultUnavailable"  # type: ignore[index]
