"""Two ProtectedModels with the same Triton model name under one license (issue 14): their
own counters are keyed by the ProtectedModel (``model_counters`` in the gateway's license
file), so that one model's per-model quota neither takes the other's requests nor limits
them, and the operator's status shows each apart."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from tests.unit.test_models_license import lic, model

from modelseal.quota.license import LicenseError, Limits, parse_licenses
from modelseal.render.license_config import license_document
from modelseal.store.base import Scope, license_scope, model_scope, scopes_for
from modelseal.store.embedded import EmbeddedStore


def _gateway_scopes(name: str) -> tuple[Scope, ...]:
    """The scopes the gateway of ProtectedModel ``name`` (Triton name ``digits``) counts
    in, from the license file the operator renders for it."""
    license_ = lic(modelQuotas={"digits-a": {"perDay": 2}})
    m = model(name, modelName="digits")
    (parsed,) = parse_licenses(json.dumps(license_document(m, license_, True))).values()
    return scopes_for(parsed, "digits")


def test_same_model_name_two_models_two_counter_keys() -> None:
    a, b = _gateway_scopes("digits-a"), _gateway_scopes("digits-b")
    assert a[0].key == b[0].key == "team-a/gold|*"  # one license-wide budget
    assert (a[1].key, b[1].key) == (
        "team-a/gold|m:team-a/digits-a",
        "team-a/gold|m:team-a/digits-b",
    )
    assert a[1].limits.per_day == 2 and b[1].limits.per_day == -1  # each its own quota


async def test_one_models_quota_does_not_count_the_others_requests(tmp_path: Path) -> None:
    # One store for both, as with Redis: only the keys keep them apart.
    store = EmbeddedStore(tmp_path, fsync_interval_s=0)
    store.open()
    try:
        a, b = _gateway_scopes("digits-a"), _gateway_scopes("digits-b")
        now = int(time.time() * 1000)
        allowed = [(await store.admit(b, now, f"b{i}")).decision.allowed for i in range(5)]
        assert allowed == [True] * 5  # b has no per-model quota
        allowed = [(await store.admit(a, now, f"a{i}")).decision.allowed for i in range(3)]
        assert allowed == [True, True, False]  # a's 2 per day, not used up by b's 5
        # What the operator reads for status: each ProtectedModel's own counts.
        got_a = await store.usage(
            model_scope("team-a/gold", "acme", "team-a/digits-a", Limits()), now
        )
        got_b = await store.usage(
            model_scope("team-a/gold", "acme", "team-a/digits-b", Limits()), now
        )
        assert (got_a.day, got_b.day) == (2, 5)
        assert (await store.usage(license_scope("team-a/gold", "acme"), now)).day == 7
    finally:
        await store.close()


def test_license_file_without_model_counters_keys_by_name() -> None:
    doc = {"id": "x/gold", "tenant": "acme", "models": ["digits"]}
    (parsed,) = parse_licenses(json.dumps(doc)).values()
    assert scopes_for(parsed, "digits")[1].key == "x/gold|m:digits"


@pytest.mark.parametrize(
    ("counters", "problem"),
    [
        ({"other": "team-a/x"}, "model_counters names models not in models"),
        ({"digits": "a b"}, "not valid"),
    ],
)
def test_model_counters_checked(counters: dict[str, str], problem: str) -> None:
    doc = {"tenant": "acme", "models": ["digits"], "model_counters": counters}
    with pytest.raises(LicenseError, match=problem):
        parse_licenses(json.dumps(doc))
