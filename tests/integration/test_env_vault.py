"""The Vault test server does what the product relies on: Transit envelope operations and
Kubernetes-auth login bound to one ServiceAccount.

No test prints a data key or token: secrets are compared with hmac.compare_digest into a
local bool, so that a failing assert shows no secret.
"""

from __future__ import annotations

import base64
import hmac
from typing import Any

import hvac.exceptions
import pytest
from tests.fixtures.vault import request_sa_token

from modelseal_devenv.vault import TRANSIT_MOUNT, VaultServer, vault_version

pytestmark = pytest.mark.integration


def _datakey(client: Any, key: str) -> tuple[str, str]:
    """(plaintext base64, wrapped ciphertext) of a fresh 256-bit data key."""
    data = client.secrets.transit.generate_data_key(
        name=key, key_type="plaintext", bits=256, mount_point=TRANSIT_MOUNT
    )["data"]
    return str(data["plaintext"]), str(data["ciphertext"])


def _decrypt(client: Any, key: str, ciphertext: str) -> str:
    return str(
        client.secrets.transit.decrypt_data(
            name=key, ciphertext=ciphertext, mount_point=TRANSIT_MOUNT
        )["data"]["plaintext"]
    )


def test_server_is_the_pinned_version(vault_server: VaultServer) -> None:
    client = vault_server.client()
    assert vault_server.version == vault_version()  # what devenv/go/vault/go.mod pins
    assert client.sys.read_health_status(method="GET")["version"] == vault_server.version
    assert not client.sys.is_sealed()
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    assert mounts["transit/"]["type"] == "transit"
    assert client.sys.list_auth_methods()["data"]["kubernetes/"]["type"] == "kubernetes"
    assert vault_server.root_token not in repr(vault_server)


def test_transit_datakey_round_trip(vault_server: VaultServer, transit_key: str) -> None:
    client = vault_server.client()
    plaintext, ciphertext = _datakey(client, transit_key)
    assert len(base64.b64decode(plaintext)) == 32
    assert ciphertext.startswith("vault:v1:")
    same = hmac.compare_digest(_decrypt(client, transit_key, ciphertext), plaintext)
    assert same, "Transit decrypt did not give back the data key"

    wrapped_only = client.secrets.transit.generate_data_key(
        name=transit_key, key_type="wrapped", bits=256, mount_point=TRANSIT_MOUNT
    )["data"]
    assert "plaintext" not in wrapped_only or not wrapped_only["plaintext"]
    assert len(base64.b64decode(_decrypt(client, transit_key, wrapped_only["ciphertext"]))) == 32


def test_rotate_and_rewrap(vault_server: VaultServer, transit_key: str) -> None:
    client = vault_server.client()
    plaintext, v1 = _datakey(client, transit_key)
    client.secrets.transit.rotate_key(name=transit_key, mount_point=TRANSIT_MOUNT)
    info = client.secrets.transit.read_key(name=transit_key, mount_point=TRANSIT_MOUNT)["data"]
    assert info["latest_version"] == 2

    v2 = client.secrets.transit.rewrap_data(
        name=transit_key, ciphertext=v1, mount_point=TRANSIT_MOUNT
    )["data"]["ciphertext"]
    assert v2.startswith("vault:v2:")
    assert v2 != v1
    same_v2 = hmac.compare_digest(_decrypt(client, transit_key, v2), plaintext)
    same_v1 = hmac.compare_digest(_decrypt(client, transit_key, v1), plaintext)
    assert same_v2, "rewrapped data key does not decrypt to the same key"
    assert same_v1, "old ciphertext no longer decrypts before min_decryption_version moves"


def test_min_decryption_version_refuses_old_ciphertext(
    vault_server: VaultServer, transit_key: str
) -> None:
    client = vault_server.client()
    plaintext, v1 = _datakey(client, transit_key)
    client.secrets.transit.rotate_key(name=transit_key, mount_point=TRANSIT_MOUNT)
    v2 = client.secrets.transit.rewrap_data(
        name=transit_key, ciphertext=v1, mount_point=TRANSIT_MOUNT
    )["data"]["ciphertext"]
    client.secrets.transit.update_key_configuration(
        name=transit_key, min_decryption_version=2, mount_point=TRANSIT_MOUNT
    )

    with pytest.raises(hvac.exceptions.InvalidRequest, match="disallowed by policy"):
        _decrypt(client, transit_key, v1)
    with pytest.raises(hvac.exceptions.InvalidRequest, match="disallowed by policy"):
        client.secrets.transit.rewrap_data(
            name=transit_key, ciphertext=v1, mount_point=TRANSIT_MOUNT
        )
    same = hmac.compare_digest(_decrypt(client, transit_key, v2), plaintext)
    assert same, "current-version ciphertext stopped decrypting"


def test_persistent_server_keeps_keys_across_restart_and_crash() -> None:
    with VaultServer(persistent=True) as vault:
        addr, token = vault.addr, vault.root_token
        key = vault.create_transit_key()
        plaintext, ciphertext = _datakey(vault.client(), key)

        vault.restart()
        assert (vault.addr, vault.root_token) == (addr, token)
        same = hmac.compare_digest(_decrypt(vault.client(), key, ciphertext), plaintext)
        assert same, "data key changed across a clean restart"

        vault.restart(hard=True)  # SIGKILL, then start + unseal
        same = hmac.compare_digest(_decrypt(vault.client(), key, ciphertext), plaintext)
        assert same, "data key changed across a crash"


def test_inmem_restart_gives_fresh_server_with_engines() -> None:
    with VaultServer() as vault:
        key = vault.create_transit_key()
        vault.restart()
        client = vault.client()
        assert "transit/" in client.sys.list_mounted_secrets_engines()["data"]
        assert "kubernetes/" in client.sys.list_auth_methods()["data"]
        with pytest.raises(hvac.exceptions.InvalidPath):
            client.secrets.transit.read_key(name=key, mount_point=TRANSIT_MOUNT)


# --- Kubernetes auth against the real test API server -------------------------------------


@pytest.fixture
def two_service_accounts(kube_api: Any, kube_namespace: str) -> str:
    """``model-a`` and ``model-b`` in a fresh namespace; returns the namespace."""
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(kube_api)
    for sa in ("model-a", "model-b"):
        core.create_namespaced_service_account(
            kube_namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=sa))
        )
    return kube_namespace


def test_kubernetes_auth_login_bound_to_one_service_account(
    vault_with_k8s_auth: VaultServer, kube_api: Any, two_service_accounts: str, transit_key: str
) -> None:
    vault = vault_with_k8s_auth
    namespace = two_service_accounts
    policy = f"decrypt-{transit_key}"
    vault.write_policy(
        policy, f'path "{TRANSIT_MOUNT}/decrypt/{transit_key}" {{ capabilities = ["update"] }}\n'
    )
    role = f"model-a-{namespace}"
    vault.create_kubernetes_role(
        role,
        service_account="model-a",
        namespace=namespace,
        policies=[policy],
        audience="vault",
    )
    plaintext, ciphertext = _datakey(vault.client(), transit_key)

    jwt_a = request_sa_token(kube_api, namespace, "model-a", ["vault"])
    jwt_b = request_sa_token(kube_api, namespace, "model-b", ["vault"])
    jwt_a_wrong_audience = request_sa_token(kube_api, namespace, "model-a", [])

    model = vault.client(token="")
    login = model.auth.kubernetes.login(role=role, jwt=jwt_a)
    assert set(login["auth"]["policies"]) == {"default", policy}
    assert login["auth"]["metadata"]["service_account_namespace"] == namespace
    same = hmac.compare_digest(_decrypt(model, transit_key, ciphertext), plaintext)
    assert same, "the model's login token could not unwrap its data key"
    # The policy allows decrypt only: no datakey, no key reads.
    with pytest.raises(hvac.exceptions.Forbidden):
        _datakey(model, transit_key)

    other = vault.client(token="")
    with pytest.raises(hvac.exceptions.Forbidden, match="service account name not authorized"):
        other.auth.kubernetes.login(role=role, jwt=jwt_b)
    with pytest.raises(hvac.exceptions.Forbidden):
        other.auth.kubernetes.login(role=role, jwt=jwt_a_wrong_audience)
    with pytest.raises(hvac.exceptions.Forbidden):
        other.auth.kubernetes.login(role=role, jwt=jwt_a[:-4] + "AAAA")
