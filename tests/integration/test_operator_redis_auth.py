"""The operator gives a model's gateway working quota Redis credentials (issue 12, High 2).

Real API server, real Vault, real ``redis-server`` with the chart's ACL file: the operator
(told where the chart's auth Secret is, as the chart tells it) copies the user and password
into ``<model>-redis-auth`` in the model's namespace; the files the kubelet would mount into
the gateway from the rendered volume log the gateway's own store in to Redis and count a
request. While the chart's Secret is missing the model reports it (Degraded). The password
is in no env var, argument, ConfigMap or operator log line; an edited copy is put back on
the next resync, and the copy is deleted once the model stops using Redis.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
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
    condition,
    wait_for,
)
from tests.integration.test_operator import apply, license_doc, model_doc, wait_reason

from modelseal.config import Settings
from modelseal.gateway.wiring import build_store
from modelseal.quota.policy import EngineLimits
from modelseal.store.base import Scope

pytestmark = pytest.mark.integration

SOURCE = "modelseal-redis-auth"


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[tuple[int, str]]:
    password = secrets.token_urlsafe(36)
    with acl_redis(tmp_path / "redis", chart_acl(password)) as port:
        yield port, password


def _source(env: OpsEnv, password: str) -> None:
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": SOURCE, "namespace": OPERATOR_NS},
        "type": "Opaque",
        "data": chart_auth_data(password),
    }
    core = env.core()
    if env.raw("Secret", OPERATOR_NS, SOURCE) is None:
        core.create_namespaced_secret(OPERATOR_NS, body)
    else:
        core.replace_namespaced_secret(SOURCE, OPERATOR_NS, body)


async def _count_one(settings: Settings) -> tuple[bool, int]:
    """One request counted by the gateway's own store: (admitted, the day's count after)."""
    store = build_store(settings)
    try:
        scope = Scope("gold|*", "acme", EngineLimits(per_day=5))
        now = int(time.time() * 1000)
        admission = await store.admit((scope,), now, "it-1")
        return admission.decision.allowed, (await store.usage(scope, now)).day
    finally:
        await store.close()


async def test_gateway_gets_working_credentials(
    ops_env: OpsEnv, tmp_path: Path, redis_port: tuple[int, str]
) -> None:
    env = ops_env
    port, password = redis_port
    op = Operator(
        env,
        resync_interval_s=3,
        redis_auth_secret=SOURCE,
        redis_auth_secret_namespace=OPERATOR_NS,
    ).start()
    ns = env.namespace("redis")
    try:
        key = env.vault.create_transit_key()
        apply(env, license_doc(ns))
        url = f"redis://127.0.0.1:{port}/0"
        apply(
            env,
            model_doc(ns, "counted", key, gateway={"quotaStore": "redis", "redisUrl": url}),
        )
        # the chart's Secret is not there yet: the model says so, and gets no copy
        degraded = wait_reason(env, ns, "counted", "ReconcileError", ctype="Degraded")
        assert f"{OPERATOR_NS}/{SOURCE}" in condition(degraded, "Degraded")["message"]
        assert env.raw("Secret", ns, "counted-redis-auth") is None
        _source(env, password)
        secret = wait_for(
            lambda: env.raw("Secret", ns, "counted-redis-auth"), "counted-redis-auth", 60
        )
        dep = wait_for(lambda: env.raw("Deployment", ns, "counted"), "Deployment counted", 60)
        pm = env.get_pm(ns, "counted")
        assert pm is not None
        # owned by the model, the two keys only, equal to the chart's
        (owner,) = secret["metadata"]["ownerReferences"]
        assert owner["uid"] == pm["metadata"]["uid"] and owner["controller"] is True
        source = chart_auth_data(password)
        assert secret["data"] == {k: source[k] for k in ("username", "password")}

        pod = dep["spec"]["template"]["spec"]
        containers = {c["name"]: c for c in pod["containers"] + pod["initContainers"]}
        gateway = containers["gateway"]
        gw_env = {e["name"]: e.get("value") for e in gateway["env"]}
        # the files as the kubelet lays them out from the rendered volume
        mounts = mount_secret_volume(
            gateway, pod["volumes"], {"counted-redis-auth": secret}, tmp_path / "kubelet"
        )
        settings = Settings(
            quota_store="redis",
            redis_url=gw_env["MODELSEAL_REDIS_URL"],
            redis_username_file=remap(gw_env["MODELSEAL_REDIS_USERNAME_FILE"], mounts),
            redis_password_file=remap(gw_env["MODELSEAL_REDIS_PASSWORD_FILE"], mounts),
        )
        assert await _count_one(settings) == (True, 1)
        # the other containers get nothing of it
        for name in ("unsealer", "triton"):
            c = containers[name]
            assert "redis-auth" not in json.dumps(c.get("volumeMounts")), name
            assert "REDIS" not in json.dumps(c.get("env")), name

        # the password, plain or base64, only in the Secrets themselves
        b64 = base64.b64encode(password.encode()).decode()
        configmaps = env.core().list_namespaced_config_map(ns).items
        exposed = json.dumps(dep) + json.dumps([cm.data for cm in configmaps])
        exposed += op.log_path.read_text(errors="replace")
        assert password not in exposed and b64 not in exposed

        # an edited copy is put back on the next resync
        env.core().patch_namespaced_secret(
            "counted-redis-auth", ns, {"data": {"password": base64.b64encode(b"x").decode()}}
        )

        def restored() -> bool:
            live = env.raw("Secret", ns, "counted-redis-auth") or {}
            return (live.get("data") or {}).get("password") == source["password"]

        wait_for(restored, "counted-redis-auth put back", 30)

        # back to the embedded store: the copy is deleted, the gateway mounts nothing
        env.custom().patch_namespaced_custom_object(
            "modelseal.io",
            "v1alpha1",
            ns,
            "protectedmodels",
            "counted",
            {"spec": {"gateway": {"quotaStore": "embedded", "redisUrl": None}}},
        )
        wait_for(lambda: env.raw("Secret", ns, "counted-redis-auth") is None, "copy deleted", 30)

        def unmounted() -> bool:
            dep = env.raw("Deployment", ns, "counted") or {}
            return "redis-auth" not in json.dumps(dep["spec"]["template"]["spec"])

        wait_for(unmounted, "Deployment without the redis-auth volume", 30)
    finally:
        # Deleted while the operator runs, so that its finalizer is honoured.
        env.drop_namespaces()
        try:
            wait_for(lambda: env.get_pm(ns, "counted") is None, "model deleted", 60)
        finally:
            op.stop()
            if env.raw("Secret", OPERATOR_NS, SOURCE) is not None:
                env.core().delete_namespaced_secret(SOURCE, OPERATOR_NS)
