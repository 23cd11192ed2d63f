"""Attacks on the operator's half of the tenancy declaration (issue 12, Medium 7), with the
real operator, API server and Vault of the operator tests, and no admission policies (what
the operator alone guarantees: admission off, or a model older than the declaration).

The platform declares namespace A may use key A and namespace B key B. The operator runs
with that declaration (a file, as the chart mounts it) and logs in to Vault with the
*narrow* policy `modelseal vault-operator-policy` generates from it (not the broad
example), so these tests also show that the operator does its work under that policy.

* A model in A naming B's key gets no Vault policy or role, no Deployment, and conditions
  naming the key (control: A's own key is provisioned under the narrow policy).
* The platform narrows the declaration under a running model: its Vault role is withdrawn
  and its Deployment scaled to zero.
* Cluster-wide mode (Medium 11): a model in a namespace without the Modelseal label gets
  nothing until the platform labels the namespace.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelseal.models.tenancy import parse_tenancy
from modelseal.render.operator_policy import operator_policy
from tests.integration.operator_helpers import (
    OPERATOR_NS,
    OPERATOR_SA,
    Operator,
    OpsEnv,
    condition,
    ops_cluster,
    ops_env,
    wait_for,
)
from tests.integration.test_operator import apply, license_doc, model_doc, vault_name

__all__ = ["ops_cluster", "ops_env"]

pytestmark = pytest.mark.integration

NARROW = "modelseal-operator-narrow"
LABEL = "modelseal.io/enabled=true"


def label(env: OpsEnv, ns: str) -> None:
    env.core().patch_namespace(ns, {"metadata": {"labels": {"modelseal.io/enabled": "true"}}})


class Tenants:
    def __init__(self, env: OpsEnv, path: Path) -> None:
        self.env, self.path = env, path
        self.a, self.b = env.namespace("tna"), env.namespace("tnb")
        self.c = env.namespace("tnc")  # declared, but not labelled for Modelseal
        for ns in (self.a, self.b):
            label(env, ns)
        self.key_a, self.key_b = env.vault.create_transit_key(), env.vault.create_transit_key()
        self.key_c = env.vault.create_transit_key()

    def declaration(self, a_keys: list[str]) -> dict[str, Any]:
        return {
            "unlisted": "Refuse",
            "namespaces": {
                self.a: {"transitKeys": a_keys},
                self.b: {"transitKeys": [self.key_b]},
                self.c: {"transitKeys": [self.key_c]},
            },
        }

    def declare(self, a_keys: list[str]) -> None:
        self.path.write_text(json.dumps(self.declaration(a_keys)))


@pytest.fixture(scope="module")
def tenants(ops_env: OpsEnv) -> Iterator[Tenants]:
    env = ops_env
    t = Tenants(env, env.workdir / "tenancy.json")
    t.declare([t.key_a])
    # The operator's narrow Vault policy for this declaration, and a role for it.
    hcl = operator_policy(
        parse_tenancy(t.declaration([t.key_a])),
        prefix="modelseal",
        transit_mount="transit",
        kubernetes_mount="kubernetes",
        audience="vault",
    )
    admin = env.vault.client()
    admin.sys.create_or_update_policy(NARROW, hcl)
    admin.adapter.post(
        f"/v1/auth/kubernetes/role/{NARROW}",
        json={
            "bound_service_account_names": [OPERATOR_SA],
            "bound_service_account_namespaces": [OPERATOR_NS],
            "token_policies": [NARROW],
            "token_ttl": 3600,
        },
    )
    # As the chart runs it when it watches the whole cluster.
    operator = Operator(
        env,
        resync_interval_s=5,
        tenancy_file=str(t.path),
        operator_vault_role=NARROW,
        model_namespace_label=LABEL,
    ).start()
    try:
        apply(env, license_doc(t.a))
        apply(env, license_doc(t.c))
        yield t
    finally:
        env.drop_namespaces()
        operator.stop()


def _reason(env: OpsEnv, ns: str, name: str, ctype: str, reason: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        c = condition(env.get_pm(ns, name), ctype)
        return c if c.get("reason") == reason else None

    try:
        found: dict[str, Any] = wait_for(check, f"{ctype} {reason} on {ns}/{name}", timeout=90)
    except AssertionError as exc:
        status = (env.get_pm(ns, name) or {}).get("status")
        raise AssertionError(f"{exc}; status: {status}") from None
    return found


def test_another_namespaces_key_gets_nothing(tenants: Tenants, ops_env: OpsEnv) -> None:
    env, t = ops_env, tenants
    # Control: the namespace's own key is provisioned, under the narrow Vault policy.
    apply(env, model_doc(t.a, "own", t.key_a))
    _reason(env, t.a, "own", "KeyAccessible", "KeyProvisioned")
    assert env.vault_role(vault_name(t.a, "own")) is not None
    # The attack: vendor B's key from namespace A.
    apply(env, model_doc(t.a, "steal", t.key_b))
    ready = _reason(env, t.a, "steal", "Ready", "NotAllowedInNamespace")
    assert ready["status"] == "False"
    assert f"Transit key {t.key_b} is not allowed in namespace {t.a}" in ready["message"]
    assert f"(allowed: {t.key_a})" in ready["message"]
    key = condition(env.get_pm(t.a, "steal"), "KeyAccessible")
    assert (key["status"], key["reason"]) == ("False", "NotAllowedInNamespace"), key
    assert env.vault_role(vault_name(t.a, "steal")) is None
    assert env.vault_policy(vault_name(t.a, "steal")) is None
    assert env.raw("Deployment", t.a, "steal") is None


def test_narrowing_the_declaration_withdraws_a_running_model(
    tenants: Tenants, ops_env: OpsEnv
) -> None:
    env, t = ops_env, tenants
    # A license of its own (a license's quotas are one budget, kept by one model here).
    apply(env, license_doc(t.a, name="solo"))
    apply(env, model_doc(t.a, "later", t.key_a, license_name="solo"))
    _reason(env, t.a, "later", "KeyAccessible", "KeyProvisioned")
    assert env.vault_role(vault_name(t.a, "later")) is not None
    try:
        t.declare([])  # the platform takes key A away from namespace A
        ready = _reason(env, t.a, "later", "Ready", "NotAllowedInNamespace")
        assert f"Transit key {t.key_a} is not allowed" in ready["message"]
        assert "(allowed: none)" in ready["message"]
        wait_for(lambda: env.vault_role(vault_name(t.a, "later")) is None, "the role withdrawn")
        assert env.vault_policy(vault_name(t.a, "later")) is None
        dep = env.raw("Deployment", t.a, "later")
        assert dep is not None and dep["spec"]["replicas"] == 0, dep
    finally:
        t.declare([t.key_a])


def test_an_unlabelled_namespace_is_not_served(tenants: Tenants, ops_env: OpsEnv) -> None:
    """Medium 11, the operator's half: in the cluster-wide mode a model in a namespace the
    platform did not label (declared or not) gets nothing and a condition naming the label;
    once the platform labels it, the model is served."""
    env, t = ops_env, tenants
    apply(env, model_doc(t.c, "unlabelled", t.key_c))
    ready = _reason(env, t.c, "unlabelled", "Ready", "NotAllowedInNamespace")
    assert f"namespace {t.c} is not labelled {LABEL}" in ready["message"], ready
    assert env.vault_role(vault_name(t.c, "unlabelled")) is None
    assert env.raw("Deployment", t.c, "unlabelled") is None
    label(env, t.c)  # the platform opens the namespace; the next resync serves it
    _reason(env, t.c, "unlabelled", "KeyAccessible", "KeyProvisioned")
    assert env.vault_role(vault_name(t.c, "unlabelled")) is not None
