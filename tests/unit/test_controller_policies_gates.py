"""The operator's reconcile decisions (modelseal.policies.gates, .licensing), table-driven.

Pure functions over inputs the controllers gather first: no client, no fake of one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modelseal.config import Settings
from modelseal.models.identity import REASON_IN_USE, IdentityCheck, Intruder
from modelseal.models.license import LicenseDecision, SeatGrant
from modelseal.models.spec import ModelSpec, ObjectMeta, parse_license, parse_model
from modelseal.models.status import KeyState
from modelseal.policies import gates, licensing
from modelseal.policies.gates import Gate, Provision, Withdraw
from modelseal.render.model import render_model

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DIGEST = "sha256tree:" + "cd" * 32
FINALIZER = "modelseal.io/finalizer"
SETTINGS = Settings()


def body(name: str = "digits", license_name: str = "gold", **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "team-a",
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            **meta,
        },
        "spec": {
            "tenant": "acme",
            "licenseRef": {"name": license_name},
            "version": "1",
            "source": {"uri": "s3://bkt/x", "digest": DIGEST, "plaintextSize": "1Mi"},
            "vault": {"transitKey": "k"},
            "gateway": {"quotaStore": "redis", "redisUrl": "redis://r:6379/0"},
        },
    }


def model(name: str = "digits", license_name: str = "gold") -> ModelSpec:
    return parse_model(body(name, license_name))


def license_body(**spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "gold", "namespace": "team-a", "uid": "l", "generation": 4},
        "spec": {
            "tenant": "acme",
            "allowedModels": ["*"],
            "seats": {"maxReplicas": 4, "maxGPUs": 4},
            **spec,
        },
    }


GRANTED = LicenseDecision(True, "Granted", "granted")
REFUSED = LicenseDecision(False, "Expired", "license gold expired")
CLEAR = IdentityCheck(service_account="digits-uid")
INTRUDED = IdentityCheck(service_account="digits-uid", intruders=(Intruder("Pod", "evil"),))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, Gate.GONE),
        (body(), Gate.NO_FINALIZER),
        (body(finalizers=["other/finalizer"]), Gate.NO_FINALIZER),
        (body(finalizers=[FINALIZER]), Gate.PROCEED),
        (body(finalizers=[FINALIZER], deletionTimestamp="2026-06-01T00:00:00Z"), Gate.DELETING),
        (body(deletionTimestamp="2026-06-01T00:00:00Z"), Gate.DELETING),
    ],
    ids=["gone", "no finalizer", "foreign finalizer", "proceed", "deleting", "deleting first"],
)
def test_gate(given: dict[str, Any] | None, expected: Gate) -> None:
    assert gates.gate(given, FINALIZER) is expected


@pytest.mark.parametrize(
    ("given", "spec_ok", "error_part"),
    [
        (body(), True, None),
        ({**body(), "spec": {"tenant": "acme"}}, False, "spec"),
    ],
    ids=["readable", "unreadable"],
)
def test_parsed_model(given: dict[str, Any], spec_ok: bool, error_part: str | None) -> None:
    spec, error = gates.parsed_model(given)
    assert (spec is not None) is spec_ok
    if error_part is None:
        assert error is None
    else:
        assert error is not None and error_part in error


@pytest.mark.parametrize(
    ("given", "lic_ok", "has_error"),
    [
        (None, False, False),
        (license_body(), True, False),
        (license_body(seats="many"), False, True),
    ],
    ids=["no license", "readable", "unreadable"],
)
def test_parsed_license(given: dict[str, Any] | None, lic_ok: bool, has_error: bool) -> None:
    lic, error = gates.parsed_license(given)
    assert (lic is not None) is lic_ok
    assert (error is not None) is has_error


def test_peers_are_other_live_readable_models_of_the_same_license() -> None:
    items = [
        body("digits"),  # the model itself
        body("other"),
        body("elsewhere", license_name="silver"),
        body("leaving", deletionTimestamp="2026-06-01T00:00:00Z"),
        {**body("broken"), "spec": {"licenseRef": {"name": "gold"}}},
    ]
    assert [p.name for p in gates.peers(model(), items)] == ["other"]


def _owned_by(uid: str, kind: str = "ProtectedModel") -> dict[str, Any]:
    return {"ownerReferences": [{"kind": kind, "name": "x", "uid": uid, "controller": True}]}


@pytest.mark.parametrize(
    ("live", "expected_parts"),
    [
        ({}, []),
        ({"Deployment": {"metadata": {"name": "digits", **_owned_by("uid-digits")}}}, []),
        (
            {"Deployment": {"metadata": {"name": "digits"}}},
            ["Deployment digits already exists and is not managed by this ProtectedModel"],
        ),
        (
            {"Service": {"metadata": {"name": "digits", **_owned_by("u2", "ProtectedModel")}}},
            ["Service digits is controlled by ProtectedModel x, not by this model"],
        ),
        (
            {
                "Deployment": {"metadata": {"name": "digits"}},
                "Secret": {"metadata": {"name": "digits-control"}},
            },
            ["Deployment digits already exists", "Secret digits-control already exists"],
        ),
    ],
    ids=["nothing live", "ours", "unowned", "someone else's", "two, joined"],
)
def test_conflicts(live: dict[str, Any], expected_parts: list[str]) -> None:
    spec = model()
    preview = render_model(spec, None, True, SETTINGS)
    found = gates.conflicts(spec, SETTINGS, preview, live)
    if not expected_parts:
        assert found is None
        return
    assert found is not None
    parts = found.split("; ")
    assert len(parts) == len(expected_parts)
    for part, want in zip(parts, expected_parts, strict=True):
        assert part.startswith(want)


@pytest.mark.parametrize(
    ("decision", "conflict", "identity", "plan", "reason", "why"),
    [
        (GRANTED, None, CLEAR, Provision, None, None),
        (REFUSED, None, CLEAR, Withdraw, "AccessWithdrawn", "license gold expired"),
        (REFUSED, "Deployment x taken", CLEAR, Withdraw, "AccessWithdrawn", "license gold"),
        (GRANTED, "Deployment x taken", CLEAR, Withdraw, "AccessWithdrawn", "Deployment x"),
        (GRANTED, None, INTRUDED, Withdraw, REASON_IN_USE, "used by workloads"),
        (REFUSED, None, INTRUDED, Withdraw, "AccessWithdrawn", "license gold expired"),
    ],
    ids=[
        "granted: provision",
        "refused",
        "refused and conflict: the license says why",
        "conflict",
        "intruder: never granted",
        "refused beats intruder",
    ],
)
def test_vault_plan(
    decision: LicenseDecision,
    conflict: str | None,
    identity: IdentityCheck,
    plan: type,
    reason: str | None,
    why: str | None,
) -> None:
    got = gates.vault_plan(decision, conflict, identity)
    assert isinstance(got, plan)
    assert gates.may_run(decision, conflict) is (decision.granted and not conflict)
    if isinstance(got, Withdraw):
        assert got.key.status == "False"
        assert got.key.reason == reason
        assert why is not None and why in got.why
        assert got.why in got.key.message


def test_key_states_name_the_key_and_role() -> None:
    spec = model()
    missing = gates.key_missing(spec, SETTINGS)
    assert missing.why == "Transit key missing"
    assert (missing.key.status, missing.key.reason) == ("False", "KeyNotFound")
    assert f"{SETTINGS.vault_transit_mount}/k does not exist" in missing.key.message
    ok = gates.key_provisioned(spec, SETTINGS, "role-1")
    assert (ok.status, ok.reason, ok.role) == ("True", "KeyProvisioned", "role-1")
    assert ok.message == f"role role-1 may decrypt with {SETTINGS.vault_transit_mount}/k only"
    assert gates.invalid_key("bad").message == "no Vault access: bad"


@pytest.mark.parametrize(
    ("unreachable", "reason"), [(True, "VaultUnavailable"), (False, "VaultError")]
)
def test_vault_failed(unreachable: bool, reason: str) -> None:
    key = gates.vault_failed(RuntimeError("sealed"), unreachable=unreachable)
    assert (key.status, key.reason, key.message) == ("Unknown", reason, "sealed")


@pytest.mark.parametrize(
    ("key", "holds", "serves"),
    [
        (KeyState("True", "KeyProvisioned", ""), False, True),
        (KeyState("Unknown", "VaultUnavailable", ""), True, True),
        (KeyState("Unknown", "VaultError", ""), True, True),
        (KeyState("False", REASON_IN_USE, ""), True, True),
        (KeyState("False", "KeyNotFound", ""), False, False),
        (KeyState("False", "AccessWithdrawn", ""), False, False),
    ],
    ids=["provisioned", "vault down", "vault error", "intruder", "no key", "withdrawn"],
)
def test_hold_and_serve(key: KeyState, holds: bool, serves: bool) -> None:
    assert gates.holds(key) is holds
    assert gates.serves(key) is serves


def test_claim_changes_with_what_the_license_counts() -> None:
    spec = model()
    assert gates.claim(spec, True) == ("gold", spec.serving.replicas, spec.serving.total_gpus, True)
    assert gates.claim(spec, True) != gates.claim(spec, False)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (None, None),
        (NOW + timedelta(seconds=30), 30.5),
        (NOW - timedelta(seconds=30), 0.5),
        (NOW, 0.5),
    ],
    ids=["never", "ahead", "past", "now"],
)
def test_seconds_until(moment: datetime | None, expected: float | None) -> None:
    assert gates.seconds_until(moment, NOW) == expected


@pytest.mark.parametrize(
    ("next_change", "clear", "expected"),
    [
        (None, True, None),
        (None, False, gates.INTRUDER_RECHECK_S),
        (NOW + timedelta(hours=1), True, 3600.5),
        (NOW + timedelta(hours=1), False, gates.INTRUDER_RECHECK_S),
        (NOW + timedelta(seconds=3), False, 3.5),
    ],
    ids=["nothing", "intruder", "window", "intruder sooner", "window sooner"],
)
def test_next_look(next_change: datetime | None, clear: bool, expected: float | None) -> None:
    decision = LicenseDecision(True, "Granted", "", next_change)
    assert gates.next_look(decision, clear, NOW) == expected


@pytest.mark.parametrize(
    ("namespaces", "role", "bound", "expected"),
    [
        ([], "modelseal_team-a_digits", "team-a", ("team-a", "digits")),
        (["team-a"], "modelseal_team-a_digits", "team-a", ("team-a", "digits")),
        (["team-b"], "modelseal_team-a_digits", "team-a", None),
        ([], "modelseal_team-a_digits", "team-b", None),
        ([], "other_team-a_digits", "team-a", None),
        ([], "modelseal_team-a", "team-a", None),
    ],
    ids=["ours", "watched", "not watched", "bound elsewhere", "other prefix", "not a model"],
)
def test_orphaned_model(
    namespaces: list[str], role: str, bound: str, expected: tuple[str, str] | None
) -> None:
    assert gates.orphaned_model("modelseal", namespaces, role, bound) == expected


# --- licensing ------------------------------------------------------------------------------
def test_models_naming_and_readable() -> None:
    items = [
        body("a"),
        body("b", license_name="silver"),
        {"metadata": {"name": "c"}, "spec": {"licenseRef": "gold"}},
        {"metadata": {"name": "d"}},
        {**body("e"), "spec": {"licenseRef": {"name": "gold"}}},
    ]
    named = licensing.models_naming(items, "gold")
    assert [m["metadata"]["name"] for m in named] == ["a", "e"]
    assert [m.name for m in licensing.readable(named)] == ["a"]


@pytest.mark.parametrize(
    ("spec", "error", "reason", "moment"),
    [
        (None, "bad seats", "InvalidSpec", None),
        ({}, None, "Valid", None),
        ({"notAfter": "2026-07-01T00:00:00Z"}, None, "Valid", "2026-07-01"),
        ({"revoked": True}, None, "LicenseRevoked", None),
    ],
    ids=["invalid", "no expiry", "expires", "revoked"],
)
def test_license_state(
    spec: dict[str, Any] | None, error: str | None, reason: str, moment: str | None
) -> None:
    lic = None if spec is None else parse_license(license_body(**spec))
    got_reason, message, got_moment = licensing.state(lic, error, NOW)
    assert got_reason == reason
    if spec is None:
        assert message == error
    assert (got_moment.date().isoformat() if got_moment else None) == moment


def test_license_seen_changes_with_uid_generation_and_state() -> None:
    meta = ObjectMeta("team-a", "gold", "l", 4, None, False)
    assert licensing.seen(meta, "Valid") == licensing.seen(meta, "Valid")
    assert licensing.seen(meta, "Valid") != licensing.seen(meta, "Expired")
    newer = ObjectMeta("team-a", "gold", "l", 5, None, False)
    assert licensing.seen(meta, "Valid") != licensing.seen(newer, "Valid")


@pytest.mark.parametrize(
    ("moment", "interval", "expected"),
    [
        (None, 60.0, None),
        (NOW + timedelta(hours=1), 60.0, 60.0),
        (NOW + timedelta(seconds=10), 60.0, 10.5),
        (NOW + timedelta(hours=1), 0.1, 1.0),
    ],
    ids=["no window", "safety net", "window first", "net at least 1 s"],
)
def test_license_next_look(
    moment: datetime | None, interval: float, expected: float | None
) -> None:
    assert licensing.next_look(moment, NOW, interval) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (body(), "gold"),
        ({"spec": {"licenseRef": {"name": 3}}}, None),
        ({"spec": {"licenseRef": "gold"}}, None),
        ({"spec": "x"}, None),
        ({}, None),
    ],
    ids=["named", "not a string", "not a map", "spec not a map", "no spec"],
)
def test_license_ref_name(given: dict[str, Any], expected: str | None) -> None:
    assert licensing.license_ref_name(given) == expected


def _said(status: str, reason: str) -> dict[str, Any]:
    return {"conditions": [{"type": "LicenseValid", "status": status, "reason": reason}]}


@pytest.mark.parametrize(
    ("status", "reason", "granted", "moved"),
    [
        ("True", "LicenseGranted", False, True),  # serving without a seat: revoke
        ("False", "SeatsExceeded", True, True),  # refused for seats, a seat is free
        ("True", "LicenseGranted", True, False),
        ("False", "SeatsExceeded", False, False),
        ("False", "LicenseExpired", True, False),  # refused for another reason
        ("Unknown", "NotEvaluated", True, False),
        (None, None, False, False),  # not decided yet: its own reconcile does it
    ],
)
def test_seats_moved(status: str | None, reason: str | None, granted: bool, moved: bool) -> None:
    item = body("b")
    if status is not None and reason is not None:
        item["status"] = _said(status, reason)
    grants = {"team-a/b": SeatGrant(granted, "")}
    assert licensing.seats_moved([item], grants) == (["b"] if moved else [])
    # a model the allocation does not know (not eligible) is not its business
    assert licensing.seats_moved([item], {}) == []
