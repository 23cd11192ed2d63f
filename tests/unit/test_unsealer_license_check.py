"""`revocation_reason`: when the unsealer wipes the model it guards (table-driven)."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from modelseal.quota.license import parse_licenses
from modelseal.unsealer.license_check import revocation_reason

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
PAST = "2026-11-30T00:00:00Z"
FUTURE = "2027-01-01T00:00:00Z"


def _lic(tenant: str, models: list[str], **extra: object) -> dict[str, object]:
    return {"tenant": tenant, "models": models, **extra}


CASES = [
    ("no license names the model", [_lic("acme", ["other"], revoked=True)], None),
    ("one valid license", [_lic("acme", ["m"])], None),
    ("revoked", [_lic("acme", ["m"], revoked=True)], "license acme is revoked"),
    (
        "expired",
        [_lic("acme", ["m"], valid={"not_after": PAST})],
        "license acme expired at 2026-11-30T00:00:00+00:00",
    ),
    ("not expired yet", [_lic("acme", ["m"], valid={"not_after": FUTURE})], None),
    (
        "one revoked, one still valid: the valid one keeps it",
        [_lic("acme", ["m"], revoked=True), _lic("beta", ["m"])],
        None,
    ),
    (
        "every covering license gone: each is named",
        [_lic("acme", ["m"], revoked=True), _lic("beta", ["m"], valid={"not_after": PAST})],
        "license acme is revoked; license beta expired at 2026-11-30T00:00:00+00:00",
    ),
]


@pytest.mark.parametrize(("what", "licenses", "expected"), CASES, ids=[c[0] for c in CASES])
def test_revocation_reason(
    what: str, licenses: list[dict[str, object]], expected: str | None
) -> None:
    parsed = parse_licenses(json.dumps({"licenses": licenses}))
    assert revocation_reason(parsed, ["m"], NOW) == expected, what


def test_expiry_is_inclusive_of_the_instant() -> None:
    parsed = parse_licenses(
        json.dumps({"licenses": [_lic("acme", ["m"], valid={"not_after": "2026-12-01T12:00:00Z"})]})
    )
    assert revocation_reason(parsed, ["m"], NOW) is not None
