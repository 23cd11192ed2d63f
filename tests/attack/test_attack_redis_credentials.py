"""Attacks on the quota Redis credentials as the operator hands them out (issue 12, High 2),
against the real API server, the real Vault, the operator process and a real
``redis-server`` running the chart's ACL file (default user off, protected mode on).

* The Redis password is looked for everywhere in a model's namespace but the model's
  ``<model>-redis-auth`` Secret (ConfigMaps, the Deployment, ReplicaSets, Pods, Events,
  ProtectedModels, licenses, Services, other Secrets; read as cluster admin, so more than
  a tenant sees): it is nowhere. The tenant who administers the namespace cannot read the
  chart's own Secret in the operator's namespace.
* A pod labelled like a model pod but without the mounted Secret (another namespace's pod
  cannot mount it; a copied Deployment in the same namespace without the volume) tries to
  write counters: without, and with guessed, credentials Redis refuses every command; the
  gateway's store fails closed; the counters hold what the real gateway counted.
* The Redis NetworkPolicy selects namespaces by ``kubernetes.io/metadata.name``: a tenant
  (even a cluster admin) who labels another namespace with a watched namespace's name does
  not get that label (the API server keeps it equal to the name), so a model-labelled pod
  there stays outside the policy. No CNI enforces NetworkPolicies in this environment: the
  chart's rendered policy is evaluated here against the namespaces' real labels.

What remains (docs/gateway-security.md): whoever may read Secrets in a model's namespace
holds that gateway's credentials.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis as redis_py
from kubernetes.client.exceptions import ApiException
from redis.backoff import NoBackoff
from redis.retry import Retry

from modelseal.config import Settings
from modelseal.gateway.wiring import build_store
from modelseal.quota.policy import EngineLimits
from modelseal.store.base import Scope, StoreUnavailable
from tests.attack.conftest import AttackLedger
from tests.attack.test_attack_operator import as_tenant
from tests.fixtures.redis_acl import (
    acl_redis,
    chart_acl,
    chart_auth_data,
    mount_secret_volume,
    remap,
)
from tests.integration.operator_helpers import (
    OPERATOR_NS,
    Operator,
    OpsEnv,
    ops_cluster,
    ops_env,
    wait_for,
)
from tests.integration.test_chart_static import build_helm, render
from tests.integration.test_operator import apply, license_doc, model_doc

__all__ = ["ops_cluster", "ops_env"]  # the operator tests' own control plane and Vault

pytestmark = pytest.mark.integration

SOURCE = "modelseal-redis-auth"
MODEL = "metered"
COPY = f"{MODEL}-redis-auth"
_NO_RETRY: dict[str, Any] = {"retry": Retry(NoBackoff(), 0), "socket_timeout": 10}


class Stage:
    def __init__(self, port: int, password: str, admin_pw: str) -> None:
        self.port = port
        self.password = password
        self.admin_pw = admin_pw
        self.url = f"redis://127.0.0.1:{port}/0"

    def admin(self) -> redis_py.Redis:
        return redis_py.Redis(
            host="127.0.0.1", port=self.port, username="admin", password=self.admin_pw
        )


@pytest.fixture(scope="module")
def stage(ops_env: OpsEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    """The chart's Redis and auth Secret, and an operator told where that Secret is."""
    password = secrets.token_urlsafe(36)
    admin_pw = secrets.token_urlsafe(24)
    acl = chart_acl(password) + f"user admin on >{admin_pw} ~* &* +@all\n"
    with acl_redis(tmp_path_factory.mktemp("redis-cred") / "redis", acl) as port:
        ops_env.core().create_namespaced_secret(
            OPERATOR_NS,
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": SOURCE, "namespace": OPERATOR_NS},
                "type": "Opaque",
                "data": chart_auth_data(password),
            },
        )
        op = Operator(
            ops_env,
            resync_interval_s=5,
            redis_auth_secret=SOURCE,
            redis_auth_secret_namespace=OPERATOR_NS,
        ).start()
        try:
            yield Stage(port, password, admin_pw)
        finally:
            op.stop()
            ops_env.core().delete_namespaced_secret(SOURCE, OPERATOR_NS)


@pytest.fixture
def ns(ops_env: OpsEnv, stage: Stage) -> Iterator[str]:
    name = ops_env.namespace("rcred")
    yield name
    ops_env.drop_namespaces()  # while the operator runs: finalizers honoured
    wait_for(lambda: ops_env.get_pm(name, MODEL) is None, "model deleted", 60)


def _deploy(env: OpsEnv, ns: str, stage: Stage) -> tuple[dict[str, Any], dict[str, Any]]:
    """A model with the chart's Redis; (its Deployment, its credentials Secret) once made."""
    key = env.vault.create_transit_key()
    apply(env, license_doc(ns))
    apply(env, model_doc(ns, MODEL, key, gateway={"quotaStore": "redis", "redisUrl": stage.url}))
    secret = wait_for(lambda: env.raw("Secret", ns, COPY), COPY, 60)
    dep = wait_for(lambda: env.raw("Deployment", ns, MODEL), f"Deployment {MODEL}", 60)
    return dep, secret


def _list_json(api: Any, path: str) -> str:
    resp = api.call_api(
        path,
        "GET",
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    return str(resp.data.decode())


def test_tenant_finds_no_redis_password_outside_the_models_secret(
    ops_env: OpsEnv, stage: Stage, ns: str, attack_ledger: AttackLedger
) -> None:
    env = ops_env
    _deploy(env, ns, stage)
    mallory = as_tenant(env, ns)
    needles = [stage.password, base64.b64encode(stage.password.encode()).decode()]
    found: dict[str, int] = {}
    try:
        for path in (
            f"/api/v1/namespaces/{ns}/configmaps",
            f"/apis/apps/v1/namespaces/{ns}/deployments",
            f"/apis/apps/v1/namespaces/{ns}/replicasets",
            f"/api/v1/namespaces/{ns}/pods",
            f"/api/v1/namespaces/{ns}/events",
            f"/api/v1/namespaces/{ns}/services",
            f"/apis/modelseal.io/v1alpha1/namespaces/{ns}/protectedmodels",
            f"/apis/modelseal.io/v1alpha1/namespaces/{ns}/modellicenses",
        ):
            # read as cluster admin: everything stored there, more than a tenant sees
            text = _list_json(env.api, path)
            found[path] = sum(text.count(n) for n in needles)
        # the Secrets: only the model's copy holds it
        listed = json.loads(_list_json(env.api, f"/api/v1/namespaces/{ns}/secrets"))
        for item in listed["items"]:
            if item["metadata"]["name"] != COPY:
                found[f"secret {item['metadata']['name']}"] = sum(
                    json.dumps(item).count(n) for n in needles
                )
        # the chart's Secret in the operator's namespace is not the tenant's to read
        try:
            _list_json(mallory, f"/api/v1/namespaces/{OPERATOR_NS}/secrets/{SOURCE}")
            found["chart secret readable"] = 1
        except ApiException as exc:
            assert exc.status == 403, exc
    finally:
        mallory.close()
    leaked = sum(found.values())
    attack_ledger.record_leaked(leaked)
    assert leaked == 0, found


async def test_pod_without_the_mounted_secret_cannot_write_counters(
    ops_env: OpsEnv, stage: Stage, ns: str, tmp_path: Path, attack_ledger: AttackLedger
) -> None:
    env = ops_env
    dep, secret = _deploy(env, ns, stage)
    pod = dep["spec"]["template"]["spec"]
    gateway = next(c for c in pod["containers"] if c["name"] == "gateway")
    gw_env = {e["name"]: e.get("value") for e in gateway["env"]}
    mounts = mount_secret_volume(gateway, pod["volumes"], {COPY: secret}, tmp_path / "kubelet")
    real = Settings(
        quota_store="redis",
        redis_url=gw_env["MODELSEAL_REDIS_URL"],
        redis_username_file=remap(gw_env["MODELSEAL_REDIS_USERNAME_FILE"], mounts),
        redis_password_file=remap(gw_env["MODELSEAL_REDIS_PASSWORD_FILE"], mounts),
    )
    scope = Scope(f"{ns}|*", "acme", EngineLimits(per_day=3))
    now = int(time.time() * 1000)

    # the real gateway counts three requests: the day's quota is used up
    store = build_store(real)
    try:
        admitted = [(await store.admit((scope,), now, f"r{i}")).decision.allowed for i in range(4)]
    finally:
        await store.close()
    assert admitted == [True, True, True, False]
    admin = stage.admin()
    with admin:
        keys = sorted(k.decode() for k in admin.scan_iter("modelseal:*"))
        before = {k: admin.dump(k) for k in keys}
    assert keys, "the gateway wrote no counter"

    # the copied pod: the gateway's image and URL, but no mounted Secret
    attempts: dict[str, str] = {}
    bare = build_store(Settings(quota_store="redis", redis_url=stage.url))
    try:
        await bare.admit((scope,), now, "bare")
        attempts["gateway store without files"] = "done"
    except StoreUnavailable as exc:
        attempts["gateway store without files"] = str(exc)[:60]
    finally:
        await bare.close()
    guesses: list[tuple[str | None, str | None]] = [
        (None, None),
        ("default", ""),
        ("default", stage.password[:-1]),
        ("modelseal", ""),
        ("modelseal", "modelseal"),
        ("modelseal", base64.b64encode(stage.password.encode()).decode()),
    ]
    for i, (user, pw) in enumerate(guesses):
        client = redis_py.Redis(
            host="127.0.0.1", port=stage.port, username=user, password=pw, **_NO_RETRY
        )
        for name, argv in (
            ("DEL", ("DEL", *keys)),
            ("FLUSHALL", ("FLUSHALL",)),
            ("HSET", ("HSET", keys[0], "d", "0")),
            ("EVAL", ("EVAL", "return redis.call('DEL', KEYS[1])", 1, keys[0])),
        ):
            label = f"{user}/{'guess' + str(i) if pw else 'none'} {name}"
            try:
                client.execute_command(*argv)
                attempts[label] = "done"
            except redis_py.exceptions.RedisError as exc:
                attempts[label] = type(exc).__name__
        client.close()
    with stage.admin() as admin:
        after = {
            k: admin.dump(k) for k in sorted(k.decode() for k in admin.scan_iter("modelseal:*"))
        }
    print(f"redis attempts: {attempts}")
    changed = [k for k in set(before) | set(after) if before.get(k) != after.get(k)]
    attack_ledger.record_leaked(sum(1 for v in attempts.values() if v == "done"))
    assert all(v != "done" for v in attempts.values()), attempts
    # NOAUTH, or (for the admission script's size) "unauthenticated multibulk length"
    assert "auth" in attempts["gateway store without files"].lower(), attempts
    assert changed == [], changed
    # and the real gateway still sees its quota used up
    store = build_store(real)
    try:
        assert not (await store.admit((scope,), now, "r5")).decision.allowed
    finally:
        await store.close()


def _selects(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector against `labels` ({} selects everything)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": not (key in labels and labels[key] in values),
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def _admitted(
    policy: Mapping[str, Any],
    namespace: str,
    ns_labels: Mapping[str, str],
    pod: Mapping[str, str],
) -> bool:
    """Whether a pod with `pod` labels in `namespace` may reach the policy's pods. A peer
    without a namespaceSelector selects pods in the policy's own namespace only."""
    for rule in policy["spec"]["ingress"]:
        for peer in rule.get("from") or []:
            if "namespaceSelector" in peer:
                in_namespace = _selects(peer["namespaceSelector"], ns_labels)
            else:
                in_namespace = namespace == policy["metadata"]["namespace"]
            if in_namespace and _selects(peer.get("podSelector") or {}, pod):
                return True
    return False


def test_model_labelled_pod_in_another_namespace_is_outside_the_redis_policy(
    ops_env: OpsEnv, stage: Stage, ns: str, attack_ledger: AttackLedger
) -> None:
    env = ops_env
    docs = render(build_helm(), sets=("redis.enabled=true", f"operator.watchNamespaces={{{ns}}}"))
    (policy,) = [
        d
        for d in docs
        if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "ms-modelseal-redis"
    ]
    model_pod = {
        "app.kubernetes.io/name": "modelseal-model",
        "app.kubernetes.io/managed-by": "modelseal-operator",
        "modelseal.io/model": MODEL,
    }
    other = env.namespace("elsewhere")
    # the attacker names their namespace after the watched one, by label
    forged: dict[str, str] = {}
    try:
        env.core().patch_namespace(
            other, {"metadata": {"labels": {"kubernetes.io/metadata.name": ns}}}
        )
        forged["patch"] = "accepted"
    except ApiException as exc:
        forged["patch"] = f"refused {exc.status}"
    labels_other = dict(env.core().read_namespace(other).metadata.labels or {})
    labels_model = dict(env.core().read_namespace(ns).metadata.labels or {})
    print(f"forged label: {forged}; {other} labels: {labels_other}")
    reached = _admitted(policy, other, labels_other, model_pod)
    # a pod labelled like the operator (whose pods may read the counters) in that namespace
    (operator,) = [
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "ms-modelseal-operator"
    ]
    operator_pod = dict(operator["spec"]["template"]["metadata"]["labels"])
    reached_as_operator = _admitted(policy, other, labels_other, operator_pod)
    attack_ledger.record_leaked(int(reached) + int(reached_as_operator))
    assert labels_other.get("kubernetes.io/metadata.name") == other
    assert not reached
    assert not reached_as_operator
    # controls: a model pod in the watched namespace passes; an unlabelled pod there not;
    # the operator's own pods in the release namespace pass
    assert _admitted(policy, ns, labels_model, model_pod)
    assert not _admitted(policy, ns, labels_model, {"app": "x"})
    release_ns = policy["metadata"]["namespace"]
    assert _admitted(policy, release_ns, {"kubernetes.io/metadata.name": release_ns}, operator_pod)
