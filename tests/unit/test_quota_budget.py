"""One budget per license (issue 12, High 4): which model configurations the license
decision refuses because they would count a license's quotas more than once, or in
counters that deleting the Pod resets; and the PVC option of the embedded store."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.test_models_license import NOW, lic, model

from modelseal.config import Settings
from modelseal.models.license import Reason, decide
from modelseal.models.quota_budget import NOT_DURABLE, NOT_SHARED, budget_problem, counter_home
from modelseal.models.spec import SpecError
from modelseal.render.model import render_model

EMBEDDED: dict[str, Any] = {"quotaStore": "embedded"}
REDIS_A: dict[str, Any] = {"quotaStore": "redis", "redisUrl": "redis://quota.ns.svc:6379/0"}
REDIS_B: dict[str, Any] = {"quotaStore": "redis", "redisUrl": "redis://other.ns.svc:6379/0"}
QUOTAS = {"perDay": 100}


def test_two_models_on_one_redis_share_the_budget() -> None:
    license_ = lic(quotas=QUOTAS)
    a = model("a", "2026-01-01T00:00:00Z", gateway=REDIS_A)
    b = model("b", "2026-02-01T00:00:00Z", gateway=dict(REDIS_A, redisUrl="redis://QUOTA.ns.svc/"))
    assert counter_home(a) == counter_home(b)  # same server: default port and database
    assert decide(a, license_, [a, b], NOW).granted
    assert decide(b, license_, [a, b], NOW).granted


def test_embedded_cannot_be_shared_the_oldest_keeps_serving() -> None:
    license_ = lic(quotas=QUOTAS)
    old = model("old", "2026-01-01T00:00:00Z", gateway=EMBEDDED)
    new = model("new", "2026-02-01T00:00:00Z", gateway=REDIS_A)
    assert decide(old, license_, [old, new], NOW).granted
    d = decide(new, license_, [old, new], NOW)
    assert not d.granted and d.reason == Reason.QUOTA_BUDGET == NOT_SHARED
    assert "model old (the oldest) counts them in its embedded store" in d.message
    assert "quotaStore redis with the same redisUrl" in d.message
    # rendered as a withdrawn license: the younger model's gateway refuses every call
    doc = render_model(new, license_, d.granted, Settings()).objects()
    assert any(
        o["kind"] == "ConfigMap" and '"revoked": true' in o["data"]["license.json"] for o in doc
    )


def test_two_embedded_models_under_one_license_are_refused() -> None:
    license_ = lic(quotas={"total": 10})
    old = model("old", "2026-01-01T00:00:00Z", gateway=EMBEDDED)
    new = model("new", "2026-02-01T00:00:00Z", gateway=EMBEDDED)
    assert decide(old, license_, [old, new], NOW).granted
    assert decide(new, license_, [old, new], NOW).reason == NOT_SHARED


def test_different_redis_servers_are_two_budgets() -> None:
    license_ = lic(quotas={"ratePerSecond": 5})
    old = model("old", "2026-01-01T00:00:00Z", gateway=REDIS_A)
    new = model("new", "2026-02-01T00:00:00Z", gateway=REDIS_B)
    d = decide(new, license_, [old, new], NOW)
    assert d.reason == NOT_SHARED and "redis://quota.ns.svc:6379/0" in d.message
    other_db = model(
        "db1", "2026-03-01T00:00:00Z", gateway=dict(REDIS_A, redisUrl="redis://quota.ns.svc:6379/1")
    )
    assert decide(other_db, license_, [old, other_db], NOW).reason == NOT_SHARED


def test_no_license_wide_quotas_no_shared_budget() -> None:
    license_ = lic(modelQuotas={"a": {"perDay": 5}, "b": {"perDay": 5}})
    a = model("a", "2026-01-01T00:00:00Z", gateway=EMBEDDED)
    b = model("b", "2026-02-01T00:00:00Z", gateway=EMBEDDED)
    assert budget_problem(b, license_, [a]) is None
    assert decide(b, license_, [a, b], NOW).granted


def test_peers_refused_by_terms_do_not_count() -> None:
    license_ = lic(quotas=QUOTAS, allowedModels=["b"])
    a = model("a", "2026-01-01T00:00:00Z", gateway=EMBEDDED)  # not allowed by the license
    b = model("b", "2026-02-01T00:00:00Z", gateway=REDIS_A)
    assert decide(b, license_, [a, b], NOW).granted


def test_durable_state_required_for_day_month_total() -> None:
    license_ = lic(quotas=QUOTAS)
    m = model("m", gateway=EMBEDDED)
    assert decide(m, license_, [m], NOW).granted  # the setting is off by default
    d = decide(m, license_, [m], NOW, require_durable_quota_state=True)
    assert d.reason == Reason.QUOTA_STATE == NOT_DURABLE
    assert "emptyDir that deleting the Pod resets" in d.message
    claimed = model("m", gateway=dict(EMBEDDED, quotaStateClaimName="m-quota"))
    assert decide(claimed, license_, [claimed], NOW, require_durable_quota_state=True).granted
    # rate and concurrency are not windows: nothing to keep across a restart
    rate_only = lic(quotas={"ratePerSecond": 3, "maxConcurrent": 2})
    assert decide(m, rate_only, [m], NOW, require_durable_quota_state=True).granted
    # a per-model total counts too
    per_model = lic(modelQuotas={"m": {"total": 9}})
    assert decide(m, per_model, [m], NOW, require_durable_quota_state=True).reason == NOT_DURABLE


def test_claim_renders_a_pvc_volume() -> None:
    m = model("m", gateway=dict(EMBEDDED, quotaStateClaimName="m-quota"))
    objects = render_model(m, lic(quotas=QUOTAS), True, Settings()).objects()
    dep = next(o for o in objects if o["kind"] == "Deployment")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["quota-state"] == {
        "name": "quota-state",
        "persistentVolumeClaim": {"claimName": "m-quota"},
    }
    plain = render_model(model("p", gateway=EMBEDDED), lic(), True, Settings()).objects()
    dep = next(o for o in plain if o["kind"] == "Deployment")
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["quota-state"] == {"name": "quota-state", "emptyDir": {}}


@pytest.mark.parametrize(
    ("gateway", "extra", "message"),
    [
        (dict(REDIS_A, quotaStateClaimName="x"), {}, "only used with quotaStore embedded"),
        (dict(EMBEDDED, quotaStateClaimName="Bad_Name"), {}, "not a valid claim name"),
        (
            dict(EMBEDDED, quotaStateClaimName="ok"),
            {"rollout": {"maxSurge": 1, "maxUnavailable": 0}},
            "needs spec.rollout.maxSurge 0",
        ),
    ],
)
def test_claim_bad_input_is_refused_clearly(
    gateway: dict[str, Any], extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(SpecError, match=message):
        model("m", gateway=gateway, **extra)
