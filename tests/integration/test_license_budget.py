"""One request budget per license across models, replicas and Pod restarts (issue 12,
High 4), with real gateways, a real Redis and the real Triton.

The gateways read license files rendered by the operator's own code
(``modelseal.render.license_config``) from ModelLicense and ProtectedModel bodies, so what
is shared is exactly what the operator renders: counters keyed by the license
(``<namespace>/<license>``), not by the model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from bench.gateway.harness import (
    GatewayProcess,
    call,
    digits_body,
    write_json_atomic,
    write_keys,
)
from tests.integration.operator_helpers import Operator, OpsEnv, condition
from tests.integration.test_operator import apply, license_doc, model_doc, wait_reason

from modelseal.models.spec import parse_license, parse_model
from modelseal.render.license_config import license_document
from modelseal_devenv.redis import RedisServer
from modelseal_devenv.triton import TritonServer

pytestmark = pytest.mark.integration

KEY = "budget-key-0123456789abcdef0123"
DIGEST = "sha256tree:" + "ab" * 32


def license_body(ns: str, name: str, quotas: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}", "generation": 1},
        "spec": {
            "tenant": "acme",
            "allowedModels": ["*"],
            "seats": {"maxReplicas": 4, "maxGPUs": 0},
            "quotas": quotas,
        },
    }


def model_body(ns: str, name: str, license_name: str, gateway: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"uid-{name}",
            "generation": 1,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": {
            "tenant": "acme",
            "licenseRef": {"name": license_name},
            "version": "1",
            "modelName": "digits",  # both serve the shared Triton's digits model
            "source": {"uri": "s3://bkt/x", "digest": DIGEST, "plaintextSize": "1Mi"},
            "vault": {"transitKey": "k"},
            "gateway": gateway,
        },
    }


def rendered_license_file(
    path: Path,
    ns: str,
    model: str,
    license_name: str,
    quotas: dict[str, Any],
    gateway: dict[str, Any],
) -> Path:
    """The license.json the operator renders into ``model``'s ConfigMap."""
    lic = parse_license(license_body(ns, license_name, quotas))
    spec = parse_model(model_body(ns, model, license_name, gateway))
    write_json_atomic(path, license_document(spec, lic, granted=True))
    return path


def model_gateway(
    tmp: Path,
    triton: TritonServer,
    model: str,
    quotas: dict[str, Any],
    *,
    redis_url: str = "",
    state_dir: Path | None = None,
    ns: str = "team-a",
) -> GatewayProcess:
    """The gateway of ProtectedModel ``model`` under license ``gold`` in ``ns``."""
    gateway = {"quotaStore": "redis", "redisUrl": redis_url} if redis_url else {}
    workdir = tmp / model
    workdir.mkdir(parents=True, exist_ok=True)
    lic_file = rendered_license_file(workdir / "license.json", ns, model, "gold", quotas, gateway)
    keys = workdir / "keys.json"
    write_keys(keys, {"c": ("acme", KEY)})
    return GatewayProcess(
        workdir,
        triton_http_url=triton.http_url,
        triton_grpc_url=triton.grpc_url,
        name=model,
        store="redis" if redis_url else "embedded",
        redis_url=redis_url,
        license_file=lic_file,
        keys_file=keys,
        state_dir=state_dir,
    )


def infer(gw: GatewayProcess, n: int) -> list[int]:
    url = f"{gw.http_url}/v2/models/digits/infer"
    body = digits_body()
    return [call(url, body, KEY)[0] for _ in range(n)]


def refused_limit(gw: GatewayProcess) -> str:
    status, _, body = call(f"{gw.http_url}/v2/models/digits/infer", digits_body(), KEY)
    assert status == 429
    return str(json.loads(body)["limit"])


def test_license_id_is_the_counter_key_for_every_model() -> None:
    a = license_document(
        parse_model(model_body("ns", "alpha", "gold", {})),
        parse_license(license_body("ns", "gold", {"perDay": 5})),
        granted=True,
    )
    b = license_document(
        parse_model(model_body("ns", "beta", "gold", {})),
        parse_license(license_body("ns", "gold", {"perDay": 5})),
        granted=True,
    )
    assert a["id"] == b["id"] == "ns/gold"
    assert a["quotas"] == b["quotas"] == {"per_day": 5}


def test_two_models_under_one_license_share_one_limit(
    tmp_path: Path, triton_server: TritonServer, redis_server: RedisServer
) -> None:
    quotas = {"perDay": 10}
    ns = f"share-{tmp_path.name[-8:]}".lower().replace("_", "-")
    a = model_gateway(tmp_path, triton_server, "alpha", quotas, redis_url=redis_server.url, ns=ns)
    b = model_gateway(tmp_path, triton_server, "beta", quotas, redis_url=redis_server.url, ns=ns)
    a.start()
    b.start()
    try:
        assert infer(a, 6) == [200] * 6
        assert infer(b, 6) == [200] * 4 + [429] * 2  # one budget: 10 in all, not 10 each
        assert refused_limit(a) == "per_day"
        assert refused_limit(b) == "per_day"
    finally:
        a.stop()
        b.stop()


@pytest.mark.parametrize("store", ["redis", "embedded-claim"])
def test_ninety_percent_then_pod_deleted_next_eleven_percent_refused(
    store: str, tmp_path: Path, triton_server: TritonServer, redis_server: RedisServer
) -> None:
    """Use 90% of perDay, kill the gateway (the Pod is deleted) and start a new one: of the
    next 11%, only the remaining 10% is admitted."""
    quotas = {"perDay": 100}
    ns = f"restart-{store}-{tmp_path.name[-6:]}".lower().replace("_", "-")
    redis_url = redis_server.url if store == "redis" else ""
    claim = tmp_path / "claim"  # the PersistentVolumeClaim: outlives the Pod
    first = model_gateway(
        tmp_path / "pod-1",
        triton_server,
        "alpha",
        quotas,
        redis_url=redis_url,
        state_dir=claim,
        ns=ns,
    )
    first.start()
    try:
        assert infer(first, 90) == [200] * 90
    finally:
        first.kill()  # SIGKILL: no graceful snapshot
    second = model_gateway(
        tmp_path / "pod-2",
        triton_server,
        "alpha",
        quotas,
        redis_url=redis_url,
        state_dir=claim,
        ns=ns,
    )
    second.start()
    try:
        assert infer(second, 11) == [200] * 10 + [429]
        assert refused_limit(second) == "per_day"
    finally:
        second.stop()


def test_operator_refuses_what_cannot_be_one_budget(ops_env: OpsEnv) -> None:
    """The real operator (chart default quota_require_durable_state on): a second model
    under a license whose oldest model counts in its embedded store is refused with
    QuotaBudgetNotShared (no replicas, revoked license file); an embedded model without a
    claim under a license counting days is refused with QuotaStateNotDurable; one with a
    claim gets the PVC as its quota-state volume."""
    env = ops_env
    op = Operator(env, quota_require_durable_state=True).start()
    ns = env.namespace("budget")
    try:
        key = env.vault.create_transit_key()
        claim = {"quotaStore": "embedded", "quotaStateClaimName": "quota-state"}
        apply(env, license_doc(ns, quotas={"perDay": 100}))
        apply(env, license_doc(ns, name="silver", quotas={"perDay": 100}))
        apply(env, model_doc(ns, "first", key, gateway=claim))
        wait_reason(env, ns, "first", "LicenseGranted", ctype="LicenseValid")
        apply(env, model_doc(ns, "second", key, gateway=claim))
        pm = wait_reason(env, ns, "second", "QuotaBudgetNotShared", ctype="LicenseValid")
        assert "model first (the oldest) counts them in its embedded store" in str(
            condition(pm, "LicenseValid")["message"]
        )
        assert condition(pm, "Ready")["status"] == "False"
        apply(env, model_doc(ns, "third", key, license_name="silver"))
        pm = wait_reason(env, ns, "third", "QuotaStateNotDurable", ctype="LicenseValid")
        assert "emptyDir that deleting the Pod resets" in str(
            condition(pm, "LicenseValid")["message"]
        )
        dep = env.apps().read_namespaced_deployment("first", ns)
        volumes = {v.name: v for v in dep.spec.template.spec.volumes}
        assert volumes["quota-state"].persistent_volume_claim.claim_name == "quota-state"
        second = env.apps().read_namespaced_deployment("second", ns)
        assert second.spec.replicas == 0
        cm = env.core().read_namespaced_config_map("second-license", ns)
        assert json.loads(cm.data["license.json"])["revoked"] is True
    finally:
        env.drop_namespaces()
        op.stop()
