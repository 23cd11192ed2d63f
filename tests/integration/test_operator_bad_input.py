"""What the schema cannot refuse, the operator reports: each case gets ``Ready=False`` with a
reason naming the problem, no Vault role, no running Pods — and the operator keeps running.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from tests.integration.operator_helpers import Operator, OpsEnv, condition, wait_for
from tests.integration.test_operator import license_doc, model_doc

pytestmark = pytest.mark.integration


def _iso(delta: timedelta) -> str:
    return (datetime.now(UTC) + delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def _foreign_service(env: OpsEnv, ns: str) -> None:
    env.core().create_namespaced_service(
        ns,
        {
            "metadata": {"name": "digits"},
            "spec": {"ports": [{"port": 80}], "selector": {"app": "someone-else"}},
        },
    )


# (case, license spec changes (None: no license), model spec changes, setup, reason, text)
CASES: list[
    tuple[
        str, dict[str, Any] | None, dict[str, Any], Callable[[OpsEnv, str], None] | None, str, str
    ]
] = [
    ("no license", None, {}, None, "LicenseNotFound", "does not exist"),
    (
        "license of another tenant",
        {"tenant": "globex"},
        {},
        None,
        "LicenseTenantMismatch",
        "belongs to tenant globex",
    ),
    (
        "GPUs above the license",
        {"seats": {"maxReplicas": 4, "maxGPUs": 2}},
        {"serving": {"replicas": 1, "gpusPerReplica": 4}},
        None,
        "SeatsExceeded",
        "4 GPU(s)",
    ),
    (
        "replicas above the license",
        {"seats": {"maxReplicas": 2, "maxGPUs": 8}},
        {
            "serving": {"replicas": 3, "gpusPerReplica": 1},
            "gateway": {"quotaStore": "redis", "redisUrl": "redis://redis:6379/0"},
        },
        None,
        "SeatsExceeded",
        "3 replica(s)",
    ),
    (
        "model not licensed",
        {"allowedModels": ["other"]},
        {},
        None,
        "ModelNotAllowed",
        "does not list model digits",
    ),
    (
        "output above the ceiling",
        {"outputPolicy": {"maxMode": "labels"}},
        {"outputPolicy": {"mode": "topK", "topK": 5}},
        None,
        "OutputPolicyExceedsLicense",
        "more revealing",
    ),
    (
        "license not yet valid",
        {"notBefore": _iso(timedelta(days=30))},
        {},
        None,
        "LicenseNotYetValid",
        "valid from",
    ),
    (
        "license expired",
        {"notBefore": _iso(timedelta(days=-30)), "notAfter": _iso(timedelta(days=-1))},
        {},
        None,
        "LicenseExpired",
        "expired at",
    ),
    (
        "license revoked",
        {"revoked": True, "revocationReason": "unpaid invoice"},
        {},
        None,
        "LicenseRevoked",
        "unpaid invoice",
    ),
    (
        "transit key missing",
        {},
        {"vault": {"transitKey": "no-such-key"}},
        None,
        "KeyNotFound",
        "transit/no-such-key does not exist",
    ),
    (
        "name taken by a foreign object",
        {},
        {},
        _foreign_service,
        "ObjectConflict",
        "not managed by this ProtectedModel",
    ),
]


@pytest.fixture(scope="module")
def op(ops_env: OpsEnv) -> Iterator[Operator]:
    operator = Operator(ops_env, resync_interval_s=30).start()
    try:
        yield operator
    finally:
        ops_env.drop_namespaces()
        time.sleep(2)  # let the operator release the finalizers
        operator.stop()


@pytest.mark.parametrize(
    ("case", "lic", "spec", "setup", "reason", "text"), CASES, ids=[c[0] for c in CASES]
)
def test_refused_with_a_reason(
    ops_env: OpsEnv,
    op: Operator,
    case: str,
    lic: dict[str, Any] | None,
    spec: dict[str, Any],
    setup: Callable[[OpsEnv, str], None] | None,
    reason: str,
    text: str,
) -> None:
    env = ops_env
    ns = env.namespace("bad")
    key = env.vault.create_transit_key()
    if setup is not None:
        setup(env, ns)
    if lic is not None:
        ok, out = env.apply(license_doc(ns, **lic))
        assert ok, out
    ok, out = env.apply(model_doc(ns, "digits", key, **spec))
    assert ok, out

    def refused() -> dict[str, Any] | None:
        pm = env.get_pm(ns, "digits")
        c = condition(pm, "Ready")
        return pm if c.get("reason") == reason else None

    pm = wait_for(refused, f"{case}: Ready reason {reason}", timeout=60)
    ready = condition(pm, "Ready")
    assert ready["status"] == "False"
    assert text in ready["message"], ready
    assert ready["observedGeneration"] == pm["metadata"]["generation"]
    assert env.vault_role(f"modelseal_{ns}_digits") is None
    dep = env.raw("Deployment", ns, "digits")
    if reason == "ObjectConflict":
        assert dep is None  # nothing is created next to a foreign object
    else:
        assert dep is not None and dep["spec"]["replicas"] == 0
    assert any(e["type"] == "Warning" and e["reason"] == reason for e in env.events(ns, "digits"))
    assert op.healthy()


def test_enough_cases_and_operator_still_up(op: Operator) -> None:
    assert len(CASES) >= 10
    assert op.healthy()
    metrics = op.metrics()
    assert metrics.get('modelseal_operator_models{condition="Ready",status="False"}', 0) >= 1
