"""Attacks on Vault as a compromised Modelseal operator (issue 12, Medium 7).

The operator logs in with the policy `modelseal.render.operator_policy` generates from the
platform's tenancy declaration (namespace ``acme`` may use key ``acme-key``, ``globex``
``globex-key``). Against the real Vault test server: the operator's own provisioning
(policy and role of a model in ``acme``, read before write, then withdrawn) works with it,
and every way a compromised operator could use its token to reach a key its namespace was
not given is refused by Vault itself: a policy body naming another namespace's key or
with an extra rule, a policy under an undeclared namespace, a role bound to another
namespace (alone or beside its own), other token policies, Vault's ``policies`` alias,
rewriting its own policy, reading an undeclared key.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import hvac
import pytest

from modelseal.config import Settings
from modelseal.models.spec import parse_model
from modelseal.models.tenancy import parse_tenancy
from modelseal.render.operator_policy import operator_policy
from modelseal.render.vault import policy_document, vault_access
from modelseal.vault import provision
from modelseal.vault.auth import VaultAuthError, call
from modelseal_devenv.vault import VaultServer
from tests.unit.test_models_spec import model_body

pytestmark = pytest.mark.integration

MOUNT, K8S = "transit", "kubernetes"
ALL = 'capabilities = ["update"]'


@pytest.fixture(scope="module")
def keys(vault_server: VaultServer) -> dict[str, str]:
    tag = secrets.token_hex(3)
    return {
        ns: vault_server.create_transit_key(f"{ns}-key-{tag}")
        for ns in ("acme", "globex", "undeclared")
    }


@pytest.fixture(scope="module")
def operator_client(vault_server: VaultServer, keys: dict[str, str]) -> hvac.Client:
    """A token carrying only the generated operator policy."""
    tenancy = parse_tenancy(
        {
            "unlisted": "Refuse",
            "namespaces": {
                "acme": {"transitKeys": [keys["acme"]]},
                "globex": {"transitKeys": [keys["globex"]]},
            },
        }
    )
    hcl = operator_policy(
        tenancy, prefix="modelseal", transit_mount=MOUNT, kubernetes_mount=K8S, audience="vault"
    )
    root = vault_server.client()
    name = f"modelseal-operator-{secrets.token_hex(3)}"
    root.sys.create_or_update_policy(name=name, policy=hcl)
    token = root.auth.token.create(policies=[name], no_default_policy=True, ttl="1h")
    return vault_server.client(token["auth"]["client_token"])


def _model(ns: str, key: str) -> Any:
    body = model_body(vault={"transitKey": key})
    body["metadata"]["namespace"] = ns
    body["metadata"]["uid"] = secrets.token_hex(8)
    return parse_model(body)


def test_operator_policy_lets_the_operator_provision_its_namespace(
    operator_client: hvac.Client, keys: dict[str, str]
) -> None:
    """Control: what the operator really writes for a model in acme passes, is read back
    unchanged (no second write) and is withdrawn."""
    spec = _model("acme", keys["acme"])
    access = vault_access(spec, Settings())
    assert provision.transit_key_exists(operator_client, MOUNT, keys["acme"])
    args = (K8S, access.policy_name, access.policy, access.role_name, access.role)
    assert provision.ensure_access(operator_client, *args).changed
    assert not provision.ensure_access(operator_client, *args).changed
    assert provision.withdraw_access(
        operator_client, K8S, access.policy_name, access.role_name
    ).changed


def _role(ns: str, **override: Any) -> dict[str, Any]:
    return {
        "bound_service_account_names": ["digits-12345678"],
        "bound_service_account_namespaces": [ns],
        "audience": "vault",
        "token_policies": [f"modelseal_{ns}_digits"],
        "token_ttl": 600,
        "token_max_ttl": 1800,
        "token_no_default_policy": True,
        "token_type": "service",
        "alias_name_source": "serviceaccount_uid",
        **override,
    }


def _attacks(keys: dict[str, str]) -> dict[str, Callable[[hvac.Client], Any]]:
    acme, globex, other = keys["acme"], keys["globex"], keys["undeclared"]

    def policy(name: str, body: str) -> Callable[[hvac.Client], Any]:
        return lambda c: c.adapter.post(f"/v1/sys/policies/acl/{name}", json={"policy": body})

    def role(name: str, body: dict[str, Any]) -> Callable[[hvac.Client], Any]:
        return lambda c: c.adapter.post(f"/v1/auth/{K8S}/role/{name}", json=body)

    return {
        "policy-with-another-namespaces-key": policy(
            "modelseal_acme_steal", policy_document(MOUNT, globex)
        ),
        "policy-with-an-undeclared-key": policy(
            "modelseal_acme_steal", policy_document(MOUNT, other)
        ),
        "policy-with-an-extra-rule": policy(
            "modelseal_acme_steal",
            policy_document(MOUNT, acme) + f'path "{MOUNT}/decrypt/*" {{ {ALL} }}\n',
        ),
        "policy-under-an-undeclared-namespace": policy(
            "modelseal_undeclared_x", policy_document(MOUNT, other)
        ),
        "policy-outside-the-prefix": policy("steal", policy_document(MOUNT, globex)),
        "rewrite-own-policy": policy("modelseal-operator", 'path "*" { capabilities = ["sudo"] }'),
        "role-bound-to-another-namespace": role(
            "modelseal_acme_steal", _role("acme", bound_service_account_namespaces=["globex"])
        ),
        "role-bound-to-two-namespaces": role(
            "modelseal_acme_steal",
            _role("acme", bound_service_account_namespaces=["acme", "globex"]),
        ),
        "role-with-another-namespaces-policy": role(
            "modelseal_acme_steal", _role("acme", token_policies=["modelseal_globex_digits"])
        ),
        "role-with-an-extra-policy": role(
            "modelseal_acme_steal",
            _role("acme", token_policies=["modelseal_acme_digits", "modelseal-operator"]),
        ),
        "role-with-the-policies-alias": role(
            "modelseal_acme_steal", _role("acme", policies=["modelseal_globex_digits"])
        ),
        "role-with-a-namespace-selector": role(
            "modelseal_acme_steal",
            _role("acme", bound_service_account_namespace_selector='{"matchLabels":{}}'),
        ),
        "read-an-undeclared-key": lambda c: c.adapter.get(f"/v1/{MOUNT}/keys/{other}"),
        "decrypt-directly": lambda c: c.adapter.post(
            f"/v1/{MOUNT}/decrypt/{acme}", json={"ciphertext": "vault:v1:AAAA"}
        ),
    }


ATTACKS = list(_attacks({"acme": "a", "globex": "g", "undeclared": "u"}))


@pytest.mark.parametrize("attack", ATTACKS)
def test_compromised_operator_cannot_reach_other_keys(
    operator_client: hvac.Client, keys: dict[str, str], attack: str, attack_ledger: Any
) -> None:
    """Vault answers 403 (permission denied): nothing is written."""
    do = _attacks(keys)[attack]
    with pytest.raises(VaultAuthError, match="permission denied"):
        call(attack, "vault", lambda: do(operator_client))
    attack_ledger.record_leaked(0)
