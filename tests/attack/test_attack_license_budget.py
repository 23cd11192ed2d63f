"""Attacks on a license's request budget (issue 12, High 4), as a tenant with edit rights
in the namespace makes them: spread the calls over the license's models, delete the model
Pods to reset their counters, and add a model that counts in a store of its own. Real
gateways, the real Redis and the real Triton; the license files are the operator's own
rendering (``modelseal.render``) of what its license decision allows."""

from __future__ import annotations

from pathlib import Path

from bench.gateway.harness import GatewayProcess

from modelseal.config import Settings
from modelseal.models.license import decide
from modelseal.models.quota_budget import NOT_SHARED
from modelseal.models.spec import parse_license, parse_model
from modelseal.render.model import render_model
from modelseal_devenv.redis import RedisServer
from modelseal_devenv.triton import TritonServer
from tests.attack.conftest import AttackLedger
from tests.integration.test_license_budget import (
    infer,
    license_body,
    model_body,
    model_gateway,
)

PER_DAY = 12


def _audited(gws: list[GatewayProcess]) -> int:
    return sum(1 for gw in gws for r in gw.audit_lines() if r.get("type") == "request")


def test_spreading_calls_and_deleting_pods_never_exceeds_the_license_budget(
    tmp_path: Path,
    triton_server: TritonServer,
    redis_server: RedisServer,
    attack_ledger: AttackLedger,
) -> None:
    quotas = {"perDay": PER_DAY}
    ns = f"atk-budget-{tmp_path.name[-6:]}".lower().replace("_", "-")
    url = redis_server.url
    a = model_gateway(tmp_path / "a1", triton_server, "alpha", quotas, redis_url=url, ns=ns)
    b = model_gateway(tmp_path / "b1", triton_server, "beta", quotas, redis_url=url, ns=ns)
    gws = [a, b]
    codes: list[int] = []
    a.start()
    b.start()
    try:
        codes += infer(a, PER_DAY // 2)
        codes += infer(b, PER_DAY // 2)
        codes += infer(a, 2) + infer(b, 2)  # both models: the same budget is used up
    finally:
        a.kill()  # `kubectl delete pod` of both model Pods
        b.kill()
    a2 = model_gateway(tmp_path / "a2", triton_server, "alpha", quotas, redis_url=url, ns=ns)
    b2 = model_gateway(tmp_path / "b2", triton_server, "beta", quotas, redis_url=url, ns=ns)
    gws += [a2, b2]
    a2.start()
    b2.start()
    try:
        codes += infer(a2, 3) + infer(b2, 3)
    finally:
        a2.stop()
        b2.stop()
    # Killed gateways may lose the records still queued; the new ones lose none.
    attack_ledger.record_lost(max(0, 6 - _audited([a2, b2])))
    assert codes.count(200) == PER_DAY, codes
    assert codes[:PER_DAY] == [200] * PER_DAY
    assert set(codes[PER_DAY:]) == {429}
    assert _audited([a2, b2]) == 6


def test_a_model_counting_in_its_own_store_is_refused(
    tmp_path: Path,
    triton_server: TritonServer,
    redis_server: RedisServer,
    attack_ledger: AttackLedger,
) -> None:
    """The tenant adds a second ProtectedModel under the license whose gateway would count
    in an embedded store of its own (a fresh budget). The license decision refuses it, and
    what the operator then renders for it makes its gateway answer 403 to every call."""
    quotas = {"perDay": PER_DAY}
    ns = "atk-own-store"
    lic = parse_license(license_body(ns, "gold", quotas))
    first = parse_model(
        model_body(ns, "alpha", "gold", {"quotaStore": "redis", "redisUrl": redis_server.url})
    )
    body = model_body(ns, "sneaky", "gold", {"quotaStore": "embedded"})
    body["metadata"]["creationTimestamp"] = "2026-02-01T00:00:00Z"
    sneaky = parse_model(body)
    now = first.created
    assert now is not None
    decision = decide(sneaky, lic, [first, sneaky], now)
    assert not decision.granted and decision.reason == NOT_SHARED
    rendered = render_model(sneaky, lic, decision.granted, Settings())
    cm = next(o for o in rendered.objects() if o["kind"] == "ConfigMap")
    assert rendered.replicas == 0
    gw = model_gateway(tmp_path, triton_server, "sneaky", quotas, state_dir=tmp_path / "own")
    gw.license_file.write_text(cm["data"]["license.json"])  # what the operator renders
    gw.start(wait_ready=False)
    try:
        codes = infer(gw, 5)
    finally:
        gw.stop()
    attack_ledger.record_lost(max(0, 5 - _audited([gw])))
    assert codes == [403] * 5


def test_deleting_the_pod_of_an_embedded_model_on_a_claim_resets_nothing(
    tmp_path: Path, triton_server: TritonServer, attack_ledger: AttackLedger
) -> None:
    """The embedded store on its PersistentVolumeClaim (``quotaStateClaimName``): the tenant
    uses the day's quota, deletes the Pod (SIGKILL, no snapshot) and calls the new one."""
    quotas = {"perDay": PER_DAY}
    claim = tmp_path / "claim"
    first = model_gateway(tmp_path / "p1", triton_server, "alpha", quotas, state_dir=claim)
    first.start()
    try:
        codes = infer(first, PER_DAY)
    finally:
        first.kill()
    second = model_gateway(tmp_path / "p2", triton_server, "alpha", quotas, state_dir=claim)
    second.start()
    try:
        codes += infer(second, 4)
    finally:
        second.stop()
    attack_ledger.record_lost(max(0, 4 - _audited([second])))
    assert codes == [200] * PER_DAY + [429] * 4
