"""Idempotence and crash safety, counted in the API server's audit log.

* A resync or an operator restart with nothing changed makes zero write calls.
* An operator killed (SIGKILL) at random points of a reconcile converges on restart with
  exactly one of each object, one ReplicaSet, and no leaked Vault roles.
* A model deleted while the operator is down is cleaned up (Vault included) on restart.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from tests.integration.operator_helpers import Operator, OpsEnv, condition, wait_for
from tests.integration.test_operator import license_doc, model_doc

pytestmark = pytest.mark.integration

OWNED = ("ServiceAccount", "Secret", "ConfigMap", "Service", "NetworkPolicy", "Deployment")


def _quiet(env: OpsEnv, seconds: float, timeout: float = 90) -> int:
    """Wait until the operator has made no write for `seconds`; return the audit offset."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        offset = env.audit_offset()
        time.sleep(seconds)
        if not env.operator_writes(offset):
            return env.audit_offset()
    raise AssertionError(f"the operator kept writing: {env.operator_writes(offset)}")


def _ready(env: OpsEnv, ns: str, name: str) -> bool:
    pm = env.get_pm(ns, name)
    c = condition(pm, "Ready")
    return c.get("status") == "True" and c.get("observedGeneration") == (pm or {}).get(
        "metadata", {}
    ).get("generation")


def _world(env: OpsEnv, ns: str) -> str:
    """Pods' and nodes' readiness, to explain writes that external changes caused."""
    lines = []
    for pod in env.core().list_namespaced_pod(ns).items:
        conds = {
            c.type: (c.status, str(c.last_transition_time)) for c in pod.status.conditions or []
        }
        lines.append(f"pod {pod.metadata.name} {pod.status.phase} Ready={conds.get('Ready')}")
    for node in env.core().list_node().items:
        conds = {
            c.type: (c.status, str(c.last_transition_time)) for c in node.status.conditions or []
        }
        lines.append(f"node {node.metadata.name} Ready={conds.get('Ready')}")
    return "\n".join(lines)


def _reads(op: Operator) -> int:
    return int(
        sum(
            v
            for k, v in op.metrics().items()
            if k.startswith("modelseal_operator_api_calls_total") and 'verb="GET"' in k
        )
    )


def _explain(env: OpsEnv, ns: str, writes: list[dict[str, Any]], offset: int) -> str:
    return f"{writes}\n{_world(env, ns)}\npod status writes:\n" + "\n".join(
        env.pod_status_writes(ns, offset)
    )


ATTEMPTS = 3


def _writes_in(env: OpsEnv, ns: str, offset: int) -> list[dict[str, Any]]:
    """The operator's writes in the test's namespace. Another test's namespace may still
    be terminating (`drop_namespaces` does not wait) with a model whose finalizer this
    operator then honours: its writes there are a deletion's, not a resync's."""
    return [w for w in env.operator_writes(offset) if w["namespace"] == ns]


def test_zero_writes_on_resync_and_restart(ops_env: OpsEnv) -> None:
    """Nothing changed -> no write. "Nothing changed" is checked too: when someone else
    changed the models' Pods inside a measuring window (on a loaded machine the node
    controller sometimes marks kwok's Pods NotReady for a moment), the operator is right to
    write, so that window does not count and is measured again."""
    env = ops_env
    ns = env.namespace("idem")
    key = env.vault.create_transit_key()
    op = Operator(env, resync_interval_s=5).start()
    disturbed = 0
    try:
        # two embedded models: no license-wide quotas to share (issue 12 High 4)
        assert env.apply(license_doc(ns, quotas={}))[0]
        for name in ("alpha", "beta"):
            assert env.apply(model_doc(ns, name, key))[0]
        for name in ("alpha", "beta"):
            wait_for(lambda n=name: _ready(env, ns, n), f"{name} Ready", 120)
        for attempt in range(1, ATTEMPTS + 1):
            offset = _quiet(env, 4)
            reads_before = _reads(op)
            time.sleep(12)  # two periodic resyncs (every model and license, Vault included)
            writes = _writes_in(env, ns, offset)
            reads = _reads(op) - reads_before
            if env.pod_status_writes(ns, offset) and attempt < ATTEMPTS:
                disturbed += 1
                continue
            assert writes == [], _explain(env, ns, writes, offset)
            assert reads > 0, "the resync did not run"
            print(f"resync: 0 writes, {reads} reads in 12s")
            break
    finally:
        op.stop()

    try:
        for attempt in range(1, ATTEMPTS + 1):
            offset = env.audit_offset()
            restarted = Operator(env, resync_interval_s=5).start()
            try:
                # Wait until the new process has reconciled both models and the license.
                wait_for(
                    lambda o=restarted: (
                        o.metrics().get(
                            'modelseal_operator_reconciles_total{kind="ProtectedModel",result="ok"}',
                            0,
                        )
                        >= 2
                    ),
                    "restart reconciles",
                    60,
                )
                time.sleep(8)  # and one more periodic resync
                writes = _writes_in(env, ns, offset)
                if env.pod_status_writes(ns, offset) and attempt < ATTEMPTS:
                    disturbed += 1
                    _quiet(env, 4)
                    continue
                assert writes == [], _explain(env, ns, writes, offset)
                print(
                    f"restart: 0 writes, {_reads(restarted)} reads "
                    f"({disturbed} disturbed window(s) measured again)"
                )
                for name in ("alpha", "beta"):
                    assert _ready(env, ns, name)
                break
            finally:
                if attempt == ATTEMPTS or not env.pod_status_writes(ns, offset):
                    env.drop_namespaces()  # while an operator runs: finalizers honoured
                    time.sleep(2)
                restarted.stop()
    finally:
        env.drop_namespaces()


def _objects(env: OpsEnv, ns: str, name: str) -> dict[str, int]:
    from kubernetes import client

    selector = f"modelseal.io/model={name}"
    core = client.CoreV1Api(env.api)
    apps = client.AppsV1Api(env.api)
    net = client.NetworkingV1Api(env.api)
    return {
        "ServiceAccount": len(
            core.list_namespaced_service_account(ns, label_selector=selector).items
        ),
        "Secret": len(core.list_namespaced_secret(ns, label_selector=selector).items),
        "ConfigMap": len(core.list_namespaced_config_map(ns, label_selector=selector).items),
        "Service": len(core.list_namespaced_service(ns, label_selector=selector).items),
        "NetworkPolicy": len(net.list_namespaced_network_policy(ns, label_selector=selector).items),
        "Deployment": len(apps.list_namespaced_deployment(ns, label_selector=selector).items),
    }


def _our_roles(env: OpsEnv, ns: str) -> list[str]:
    return sorted(r for r in env.vault_roles() if r.startswith(f"modelseal_{ns}_"))


@pytest.mark.parametrize("kill_after_writes", [0, 1, 3, 5, 8])
def test_killed_mid_reconcile_converges(ops_env: OpsEnv, kill_after_writes: int) -> None:
    """SIGKILL the operator after its n-th write of a fresh model, then restart it."""
    env = ops_env
    ns = env.namespace("crash")
    key = env.vault.create_transit_key()
    assert env.apply(license_doc(ns))[0]
    op = Operator(env, resync_interval_s=5).start()
    offset = env.audit_offset()
    try:
        assert env.apply(model_doc(ns, "digits", key))[0]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            writes = [w for w in env.operator_writes(offset) if w["namespace"] == ns]
            if len(writes) >= kill_after_writes:
                break
            time.sleep(0.005)
        op.kill()
        done_before = [f"{w['verb']} {w['resource']}" for w in env.operator_writes(offset)]
    finally:
        op.stop()
    restarted = Operator(env, resync_interval_s=5).start()
    try:
        wait_for(lambda: _ready(env, ns, "digits"), "Ready after restart", 120)
        _quiet(env, 3)
        assert _objects(env, ns, "digits") == {k: 1 for k in OWNED}
        rs = (
            env.apps()
            .list_namespaced_replica_set(ns, label_selector="modelseal.io/model=digits")
            .items
        )
        assert len(rs) == 1, [r.metadata.name for r in rs]
        assert _our_roles(env, ns) == [f"modelseal_{ns}_digits"]
        pm = env.get_pm(ns, "digits")
        assert pm is not None
        assert pm["metadata"]["finalizers"] == ["modelseal.io/finalizer"]
        print(f"killed after {len(done_before)} writes ({done_before}); converged")
        # Deleting still cleans Vault after the crash.
        env.kubectl("delete", "pm", "digits", "-n", ns, "--timeout=60s")
        assert _our_roles(env, ns) == []
    finally:
        env.drop_namespaces()
        restarted.stop()


def test_deleted_while_down_is_cleaned_up_on_restart(ops_env: OpsEnv) -> None:
    env = ops_env
    ns = env.namespace("down")
    key = env.vault.create_transit_key()
    op = Operator(env, resync_interval_s=5).start()
    try:
        assert env.apply(license_doc(ns))[0]
        assert env.apply(model_doc(ns, "digits", key))[0]
        wait_for(lambda: _ready(env, ns, "digits"), "Ready", 120)
    finally:
        op.stop()
    env.kubectl("delete", "pm", "digits", "-n", ns, "--wait=false")
    time.sleep(2)
    pm: Any = env.get_pm(ns, "digits")
    assert pm is not None and pm["metadata"].get("deletionTimestamp"), "finalizer must hold it"
    assert _our_roles(env, ns) == [f"modelseal_{ns}_digits"]
    op = Operator(env, resync_interval_s=5).start()
    try:
        wait_for(lambda: env.get_pm(ns, "digits") is None, "model gone", 60)
        assert _our_roles(env, ns) == []
        # An orphaned role (made by hand here) is collected by the periodic sweep.
        admin = env.vault.client()
        admin.sys.create_or_update_policy(
            f"modelseal_{ns}_ghost", 'path "x" { capabilities = ["read"] }'
        )
        admin.adapter.post(
            f"/v1/auth/kubernetes/role/modelseal_{ns}_ghost",
            json={
                "bound_service_account_names": ["ghost"],
                "bound_service_account_namespaces": [ns],
                "token_policies": [f"modelseal_{ns}_ghost"],
            },
        )
        # (the role goes first, its policy a Vault call later: wait for both)
        wait_for(
            lambda: _our_roles(env, ns) == [] and env.vault_policy(f"modelseal_{ns}_ghost") is None,
            "orphaned role and policy collected",
            30,
        )
    finally:
        env.drop_namespaces()
        op.stop()
