"""Attacks on the operator's side of a model's identity and life cycle (issue 12: C2, High 3,
High 10), against the real API server and the real Vault of the operator tests.

* The squat (C2): before ProtectedModel ``gpt`` exists, a tenant creates Deployment
  ``squat`` with ``serviceAccountName: gpt`` and a projected token of audience ``vault``.
  The model's account is ``gpt-<uid[:8]>`` (unknowable beforehand), so the squat gets
  nothing; when it switches to the real account, the operator withdraws the Vault role,
  names the intruder and deletes its Pods.
* The planted Pod (C2, High 3): a Pod created with the model's real account past admission
  (as cluster admin: the ``helm uninstall``/``install`` gap) loses the model its Vault role
  until the operator has deleted the Pod.
* Vault down (High 10): a deleted or revoked model stops serving at once, Vault or not.

No admission policies are installed on this control plane: these tests show what the
operator alone guarantees (the chart's policies are attacked in tests/integration/
test_admission.py). Pods run on kwok nodes, so "the token the kubelet projects into the
squat Pod" is requested here through the TokenRequest API, bound to that Pod, with the
projection's audience: the same token a kubelet would mount.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import hvac
import hvac.exceptions
import pytest
from kubernetes import client as k8s

from tests.attack.conftest import AttackLedger
from tests.integration.operator_helpers import (
    Operator,
    OpsEnv,
    _sa_token,
    condition,
    ops_cluster,
    ops_env,
    wait_for,
)
from tests.integration.test_admission import bind_mallory_admin
from tests.integration.test_operator import (
    apply,
    license_doc,
    model_doc,
    op,
    vault_name,
    wait_reason,
)

# the operator tests' own control plane, Vault and operator process
__all__ = ["op", "ops_cluster", "ops_env"]

pytestmark = pytest.mark.integration


@pytest.fixture
def ns(ops_env: OpsEnv, op: Operator) -> Iterator[str]:
    name = ops_env.namespace("atk")
    yield name
    ops_env.drop_namespaces()  # while the operator runs: finalizers honoured


#: The clients `as_tenant` made, closed when the module ends (a client left to the
#: garbage collector with its TLS connection open is a ResourceWarning, an error here).
_TENANT_CLIENTS: list[Any] = []


@pytest.fixture(scope="module", autouse=True)
def _close_tenant_clients() -> Iterator[None]:
    yield
    while _TENANT_CLIENTS:
        _TENANT_CLIENTS.pop().close()


def as_tenant(env: OpsEnv, ns: str) -> Any:
    """mallory: admin of the namespace (the usual rights of a tenant team)."""
    bind_mallory_admin(env.api, ns)
    api = env.cluster.api_client()
    api.set_default_header("Impersonate-User", "mallory")
    _TENANT_CLIENTS.append(api)
    return api


def token_volume() -> dict[str, Any]:
    return {
        "name": "vault-token",
        "projected": {
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": "vault",
                        "expirationSeconds": 600,
                        "path": "t",
                    }
                }
            ]
        },
    }


def pod_spec(account: str) -> dict[str, Any]:
    return {
        "serviceAccountName": account,
        "automountServiceAccountToken": False,
        "containers": [
            {
                "name": "thief",
                "image": "registry.example/thief:1",
                "command": ["sleep", "infinity"],
                "volumeMounts": [{"name": "vault-token", "mountPath": "/var/run/vault"}],
            }
        ],
        "volumes": [token_volume()],
    }


def squat_deployment(name: str, account: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec(account)},
        },
    }


def pods_of(env: OpsEnv, ns: str, app: str) -> list[Any]:
    items = env.core().list_namespaced_pod(ns, label_selector=f"app={app}").items
    return [p for p in items if not p.metadata.deletion_timestamp]


def pods_running_as(env: OpsEnv, ns: str, account: str) -> list[Any]:
    items = (
        env.core()
        .list_namespaced_pod(ns, field_selector=f"spec.serviceAccountName={account}")
        .items
    )
    return [p for p in items if not p.metadata.deletion_timestamp]


def pod_token(env: OpsEnv, pod: Any) -> str:
    """The token the kubelet would project into `pod` (audience vault, bound to the Pod)."""
    body = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(
            audiences=["vault"],
            expiration_seconds=600,
            bound_object_ref=k8s.V1BoundObjectReference(
                kind="Pod", api_version="v1", name=pod.metadata.name, uid=pod.metadata.uid
            ),
        )
    )
    result = env.core().create_namespaced_service_account_token(
        pod.spec.service_account_name, pod.metadata.namespace, body
    )
    return str(result.status.token)


def steal(env: OpsEnv, role: str, jwt: str, key: str, wrapped: str) -> bool:
    """Log in to the model's role with `jwt` and unwrap `wrapped`; True if that worked."""
    thief = hvac.Client(url=env.vault.addr)
    try:
        thief.auth.kubernetes.login(role=role, jwt=jwt)
        thief.secrets.transit.decrypt_data(key, wrapped)
    except hvac.exceptions.VaultError:
        return False
    return True


def wrapped_data_key(env: OpsEnv, key: str) -> str:
    admin = env.vault.client()
    return str(admin.secrets.transit.generate_data_key(key, "wrapped")["data"]["ciphertext"])


def test_squat_planted_before_the_model_gets_no_key(
    ops_env: OpsEnv, op: Operator, ns: str, attack_ledger: AttackLedger
) -> None:
    env = ops_env
    mallory = as_tenant(env, ns)
    key = env.vault.create_transit_key()
    wrapped = wrapped_data_key(env, key)
    apply(env, license_doc(ns))
    # Before the model exists: a Deployment naming the model's name as its account.
    apps = k8s.AppsV1Api(mallory)
    apps.create_namespaced_deployment(ns, squat_deployment("squat", "gpt"))

    apply(env, model_doc(ns, "gpt", key))
    pm = wait_reason(env, ns, "gpt", "Serving", timeout=120)
    account = f"gpt-{pm['metadata']['uid'][:8]}"
    role_name = vault_name(ns, "gpt")
    assert pm["status"]["serviceAccountName"] == account != "gpt"
    role = env.vault_role(role_name)
    assert role is not None and role["bound_service_account_names"] == [account]
    # The operator made no account named after the model: the squat still cannot start.
    assert env.raw("ServiceAccount", ns, "gpt") is None
    assert not pods_of(env, ns, "squat")

    # The squatter makes the account `gpt` itself and its Pods start: their Vault token is
    # refused by the model's role (bound to the model's real account only).
    k8s.CoreV1Api(mallory).create_namespaced_service_account(ns, {"metadata": {"name": "gpt"}})
    apps.patch_namespaced_deployment(
        "squat", ns, {"spec": {"template": {"metadata": {"annotations": {"retry": "1"}}}}}
    )
    squat_pod = wait_for(lambda: (p := pods_of(env, ns, "squat")) and p[0], "squat Pod", 60)
    assert squat_pod.spec.service_account_name == "gpt"
    stolen = steal(env, role_name, pod_token(env, squat_pod), key, wrapped)
    attack_ledger.record_leaked(int(stolen))
    assert not stolen, "a token of the account named after the model unwrapped the key"
    assert condition(env.get_pm(ns, "gpt"), "KeyAccessible")["status"] == "True"

    # The squatter switches to the model's real account (no admission here: the gap
    # between `helm uninstall` and `install`). The operator names it, withdraws the role
    # and deletes its Pods; the model's own Pods keep running.
    switched = time.monotonic()
    offset = env.audit_offset()
    apps.patch_namespaced_deployment(
        "squat", ns, {"spec": {"template": {"spec": {"serviceAccountName": account}}}}
    )
    pm = wait_reason(env, ns, "gpt", "ServiceAccountInUse", ctype="KeyAccessible", timeout=30)
    noticed_s = time.monotonic() - switched
    key_cond = condition(pm, "KeyAccessible")
    assert key_cond["status"] == "False"
    assert "Deployment/squat" in key_cond["message"] and account in key_cond["message"]
    assert env.vault_role(role_name) is None
    assert pm["status"]["vaultRole"] == ""
    # Whatever Pod the squat gets with the real account is deleted, and its token (or any
    # token of the real account) unwraps nothing while the squat exists.
    jwt = _sa_token(env.api, ns, account, ["vault"], 600)
    stolen = steal(env, role_name, jwt, key, wrapped)
    attack_ledger.record_leaked(int(stolen))
    assert not stolen, "a token of the model's account unwrapped the key beside an intruder"
    # (The ReplicaSet replaces each deleted Pod at once; the operator deletes each again.)
    wait_for(
        lambda: [
            w
            for w in env.operator_writes(offset)
            if (w["verb"], w["resource"], w["code"]) == ("delete", "pods", 200)
            and str(w["name"]).startswith("squat-")
        ],
        "the operator deleting the squat's Pods",
        30,
    )
    reasons = {(e["type"], e["reason"]) for e in env.events(ns, "gpt")}
    assert ("Warning", "ServiceAccountInUse") in reasons, reasons
    dep = env.raw("Deployment", ns, "gpt")
    assert dep is not None and dep["spec"]["replicas"] == 1, "the model itself keeps running"
    wait_for(
        lambda: [
            r
            for r in op.audit_records()
            if r.get("action") == "key_access.withdrawn"
            and "Deployment/squat" in str(r.get("reason"))
        ],
        "an audit record of the withdrawal naming the squat",
        10,
    )

    # The squat removed: the model gets its key back.
    apps.delete_namespaced_deployment("squat", ns, propagation_policy="Foreground")
    wait_reason(env, ns, "gpt", "KeyProvisioned", ctype="KeyAccessible", timeout=60)
    assert env.vault_role(role_name) is not None
    assert not [p for p in pods_running_as(env, ns, account) if p.metadata.labels.get("app")]
    print(f"intruding Deployment noticed after {noticed_s:.1f}s")


def test_pod_planted_with_the_models_account_is_removed_and_withdraws_the_key(
    ops_env: OpsEnv, op: Operator, ns: str, attack_ledger: AttackLedger
) -> None:
    env = ops_env
    key = env.vault.create_transit_key()
    apply(env, license_doc(ns))
    apply(env, model_doc(ns, "gpt", key))
    pm = wait_reason(env, ns, "gpt", "Serving", timeout=120)
    account = pm["status"]["serviceAccountName"]
    role_name = vault_name(ns, "gpt")
    assert env.vault_role(role_name) is not None
    offset = env.audit_offset()

    # Created as cluster admin, past any admission: the uninstall/install gap.
    planted = f"planted-{uuid.uuid4().hex[:4]}"
    started = time.monotonic()
    env.core().create_namespaced_pod(
        ns, {"metadata": {"name": planted, "labels": {"app": "planted"}}, "spec": pod_spec(account)}
    )

    # The operator names it (a Warning Event and the KeyAccessible condition; the condition
    # may turn back within a second, once the Pod is gone, so the Event is what is waited
    # for), withdraws the Vault role and deletes the Pod under its own identity. Ready turns
    # False with the same reason and message (an Event of its own); Events are listed in the
    # order of their generated names, so the KeyAccessible one is picked by its prefix.
    def named() -> dict[str, Any] | None:
        for e in env.events(ns, "gpt"):
            message = str(e["message"])
            if (
                e["reason"] == "ServiceAccountInUse"
                and message.startswith("KeyAccessible=False")
                and f"Pod/{planted}" in message
            ):
                return e
        return None

    event = wait_for(named, "a KeyAccessible=False Warning Event naming the planted Pod", 30)
    noticed_s = time.monotonic() - started
    assert event["type"] == "Warning"
    assert account in event["message"]
    wait_for(
        lambda: not any(p.metadata.name == planted for p in pods_running_as(env, ns, account)),
        "planted Pod deleted",
        30,
    )
    deletes = [
        w
        for w in env.operator_writes(offset)
        if w["verb"] == "delete" and w["resource"] == "pods" and w["name"] == planted
    ]
    assert deletes and deletes[0]["code"] == 200, deletes
    withdrawn = wait_for(
        lambda: [
            r
            for r in op.audit_records()
            if r.get("action") == "key_access.withdrawn"
            and f"Pod/{planted}" in str(r.get("reason"))
        ],
        "an audit record of the Vault withdrawal naming the planted Pod",
        10,
    )
    assert withdrawn[0]["vault_role"] == role_name
    wait_for(
        lambda: [
            r
            for r in op.audit_records()
            if r.get("action") == "identity.intruder_deleted" and r.get("pod") == planted
        ],
        "an audit record of the deletion",
        10,
    )
    reasons = {(e["type"], e["reason"]) for e in env.events(ns, "gpt")}
    assert ("Warning", "IntruderDeleted") in reasons, reasons
    attack_ledger.record_leaked(0)
    # Once the Pod is gone the model's own Pods get their key back; they never stopped.
    wait_reason(env, ns, "gpt", "KeyProvisioned", ctype="KeyAccessible", timeout=60)
    wait_reason(env, ns, "gpt", "Serving", timeout=60)
    dep = env.raw("Deployment", ns, "gpt")
    assert dep is not None and dep["spec"]["replicas"] == 1
    print(f"planted Pod named in the status after {noticed_s:.1f}s")


def test_model_deleted_while_vault_is_down_stops_serving_at_once(
    ops_env: OpsEnv, op: Operator, ns: str
) -> None:
    env = ops_env
    key = env.vault.create_transit_key()
    apply(env, license_doc(ns))
    apply(env, model_doc(ns, "doomed", key))
    pm = wait_reason(env, ns, "doomed", "Serving", timeout=120)
    account = pm["status"]["serviceAccountName"]
    assert env.core().list_namespaced_pod(ns, label_selector="modelseal.io/model=doomed").items
    env.vault.crash()
    try:
        started = time.monotonic()
        env.kubectl("delete", "pm", "doomed", "-n", ns, "--wait=false")
        wait_for(
            lambda: (
                (d := env.raw("Deployment", ns, "doomed")) is None or d["spec"]["replicas"] == 0
            ),
            "Deployment scaled down or deleted",
            20,
        )
        stopped_s = time.monotonic() - started
        wait_for(
            lambda: (
                not [
                    p
                    for p in env.core()
                    .list_namespaced_pod(ns, label_selector="modelseal.io/model=doomed")
                    .items
                    if not p.metadata.deletion_timestamp
                ]
            ),
            "the model's Pods terminating",
            30,
        )
        # Its account is gone (its tokens pass no TokenReview), its license file says
        # revoked; the finalizer still holds the model until Vault is cleaned up.
        wait_for(lambda: env.raw("ServiceAccount", ns, account) is None, "account deleted", 20)
        cm = env.raw("ConfigMap", ns, "doomed-license")
        assert cm is None or '"revoked": true' in cm["data"]["license.json"]
        held = env.get_pm(ns, "doomed")
        assert held is not None and held["metadata"].get("deletionTimestamp")
    finally:
        env.vault.start()
    wait_for(lambda: env.get_pm(ns, "doomed") is None, "model gone once Vault is back", 60)
    assert env.vault_role(vault_name(ns, "doomed")) is None
    assert env.vault_policy(vault_name(ns, "doomed")) is None
    print(f"serving stopped {stopped_s:.1f}s after the delete, Vault down")


def test_model_revoked_while_vault_is_down_stops_serving_at_once(
    ops_env: OpsEnv, op: Operator, ns: str
) -> None:
    env = ops_env
    key = env.vault.create_transit_key()
    apply(env, license_doc(ns))
    apply(env, model_doc(ns, "cut", key))
    wait_reason(env, ns, "cut", "Serving", timeout=120)
    env.vault.crash()
    try:
        started = time.monotonic()
        apply(env, license_doc(ns, revoked=True, revocationReason="contract ended"))
        wait_for(
            lambda: (env.raw("Deployment", ns, "cut") or {}).get("spec", {}).get("replicas") == 0,
            "Deployment scaled to zero",
            20,
        )
        stopped_s = time.monotonic() - started
        cm = env.raw("ConfigMap", ns, "cut-license")
        assert cm is not None and '"revoked": true' in cm["data"]["license.json"]
        assert ready_reason(env, ns, "cut") == "LicenseRevoked"
    finally:
        env.vault.start()
    wait_reason(env, ns, "cut", "AccessWithdrawn", ctype="KeyAccessible", timeout=60)
    assert env.vault_role(vault_name(ns, "cut")) is None
    print(f"serving stopped {stopped_s:.1f}s after the revocation, Vault down")


def ready_reason(env: OpsEnv, ns: str, name: str) -> str:
    def check() -> str | None:
        reason = condition(env.get_pm(ns, name), "Ready").get("reason")
        return str(reason) if reason == "LicenseRevoked" else None

    return str(wait_for(check, "Ready reason LicenseRevoked", 20))
