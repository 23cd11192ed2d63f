"""The license file format: parsing, refusals, and the pure license check."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from modelseal.quota.license import (
    License,
    LicenseError,
    Limits,
    OutputFilter,
    check_license,
    parse_licenses,
)

NOW = datetime(2025, 6, 15, 12, 0, tzinfo=UTC)


def lic_json(**over: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "ns/acme-gold",
        "tenant": "acme",
        "models": ["digits", "identity"],
        "valid": {"not_before": "2025-01-01T00:00:00Z", "not_after": "2026-01-01T00:00:00Z"},
        "revoked": False,
        "quotas": {"rate_per_second": 5, "burst": 10, "per_day": 100, "total": 1000},
        "model_quotas": {"digits": {"per_day": 7, "concurrent": 2}},
        "output_policy": {"mode": "top-k", "k": 3},
    }
    base.update(over)
    return base


def test_full_license_parses() -> None:
    lics = parse_licenses(json.dumps(lic_json()))
    lic = lics["acme"]
    assert lic.id == "ns/acme-gold"
    assert lic.models == frozenset({"digits", "identity"})
    assert lic.quotas == Limits(rate_per_second=5, burst=10, per_day=100, total=1000)
    assert lic.limits_for("digits") == Limits(per_day=7, concurrent=2)
    assert lic.limits_for("identity") == Limits()
    assert lic.output_policy == OutputFilter("top-k", 3)
    assert lic.not_before == datetime(2025, 1, 1, tzinfo=UTC)


def test_list_form_and_defaults() -> None:
    data = {"licenses": [{"tenant": "a", "models": ["m"]}, {"tenant": "b", "models": ["m"]}]}
    lics = parse_licenses(json.dumps(data).encode())
    assert set(lics) == {"a", "b"}
    assert lics["a"].id == "a"
    assert lics["a"].quotas == Limits()
    assert lics["a"].output_policy == OutputFilter("full", 1)
    assert lics["a"].not_after is None


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ("{not json", "not JSON"),
        (json.dumps([1, 2]), "not valid"),
        (json.dumps(lic_json(revokd=True)), "revokd"),
        (json.dumps(lic_json(models=[])), "models"),
        (json.dumps(lic_json(tenant="bad tenant")), "tenant"),
        (json.dumps(lic_json(tenant="{x}")), "tenant"),
        (json.dumps(lic_json(models=["../etc"])), "model name"),
        (json.dumps(lic_json(quotas={"per_day": -1})), "per_day"),
        (json.dumps(lic_json(quotas={"rate_per_second": 0})), "rate_per_second"),
        (json.dumps(lic_json(quotas={"burst": 5})), "burst"),
        (json.dumps(lic_json(quotas={"rate_per_second": 2e6})), "rate_per_second"),
        (json.dumps(lic_json(quotas={"per_day": "10"})), "per_day"),
        (json.dumps(lic_json(output_policy={"mode": "top-k"})), "needs k"),
        (json.dumps(lic_json(output_policy={"mode": "scores"})), "mode"),
        (json.dumps(lic_json(model_quotas={"other": {}})), "model_quotas"),
        (
            json.dumps(
                lic_json(
                    valid={
                        "not_before": "2026-01-01T00:00:00Z",
                        "not_after": "2025-01-01T00:00:00Z",
                    }
                )
            ),
            "later",
        ),
        (json.dumps(lic_json(valid={"not_after": "2026-01-01T00:00:00"})), "time zone"),
        (json.dumps({"licenses": [lic_json(), lic_json(id="other")]}), "twice"),
        (json.dumps({"licenses": [lic_json(), lic_json(tenant="b")]}), "twice"),
    ],
)
def test_bad_license_files_are_refused_with_reason(doc: str, needle: str) -> None:
    with pytest.raises(LicenseError, match=needle):
        parse_licenses(doc)


def _lic(**over: object) -> License:
    return parse_licenses(json.dumps(lic_json(**over)))["acme"]


def test_check_license_ok() -> None:
    assert check_license(_lic(), "digits", NOW) is None


def test_check_license_refusals() -> None:
    refusal = check_license(_lic(revoked=True), "digits", NOW)
    assert refusal is not None and refusal.reason == "revoked"
    refusal = check_license(_lic(), "other", NOW)
    assert refusal is not None and refusal.reason == "model_not_licensed"
    refusal = check_license(_lic(), "digits", datetime(2024, 12, 31, 23, 59, tzinfo=UTC))
    assert refusal is not None and refusal.reason == "not_yet_valid"
    end = datetime(2026, 1, 1, tzinfo=UTC)
    refusal = check_license(_lic(), "digits", end)
    assert refusal is not None and refusal.reason == "expired"
    assert check_license(_lic(), "digits", end - timedelta(microseconds=1)) is None


def test_revocation_wins_over_everything() -> None:
    refusal = check_license(_lic(revoked=True), "nope", datetime(2030, 1, 1, tzinfo=UTC))
    assert refusal is not None and refusal.reason == "revoked"


def test_effective_burst() -> None:
    assert Limits(rate_per_second=2.5).effective_burst == 3
    assert Limits(rate_per_second=0.1).effective_burst == 1
    assert Limits(rate_per_second=2, burst=9).effective_burst == 9
    assert Limits().effective_burst is None
