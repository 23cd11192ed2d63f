"""The gateway's read-only ``GET /usage`` (issue 14): the embedded store's counters for the
operator, over a real HTTP listener, only with the token derived from the model's audit
key; and which Pod the operator asks (``modelseal.handlers.usage_pods.pick_pod``)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from tests.unit.test_models_license import lic, model

from modelseal.gateway.core import Gateway
from modelseal.gateway.usage_read import usage_handler
from modelseal.handlers.usage_pods import pick_pod, usage_pod_view
from modelseal.quota.license import parse_licenses
from modelseal.render.license_config import license_document
from modelseal.store.base import scopes_for
from modelseal.store.usage_report import (
    USAGE_PATH,
    Counted,
    authorized,
    license_counts,
    usage_read_token,
)
from modelseal.testing import settings_for_tests

KEY = b"0123456789abcdef0123456789abcdef"


async def _serve(gw: Gateway) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_get(USAGE_PATH, usage_handler(gw))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}{USAGE_PATH}"


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[Gateway]:
    (tmp_path / "audit-key").write_bytes(KEY + b"\n")  # as a mounted file may end
    m = model("fraud", modelName="digits", gateway={"quotaStore": "embedded"})
    doc = license_document(m, lic(quotas={"perDay": 10}), True)
    (tmp_path / "license.json").write_text(json.dumps(doc))
    gw = Gateway(settings_for_tests(tmp_path, audit_hmac_key_file=tmp_path / "audit-key"))
    await gw.store.start()
    gw.reload()
    try:
        yield gw
    finally:
        await gw.store.close()
        await gw.upstream.close()


async def _get(url: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with aiohttp.ClientSession() as s, s.get(url, headers=headers) as r:
        return r.status, (await r.json() if r.status == 200 else await r.text())


async def test_counts_only_with_the_token(gateway: Gateway) -> None:
    (license_,) = parse_licenses(gateway.settings.license_file.read_bytes()).values()
    now = int(time.time() * 1000)
    for i in range(3):
        assert (
            await gateway.store.admit(scopes_for(license_, "digits"), now, f"r{i}")
        ).decision.allowed
    runner, url = await _serve(gateway)
    try:
        assert (await _get(url, None))[0] == 401
        assert (await _get(url, usage_read_token(b"another model's key 0123456")))[0] == 401
        assert (await _get(url, KEY.decode()))[0] == 401  # the key itself is not the token
        status, report = await _get(url, usage_read_token(KEY))
    finally:
        await runner.cleanup()
    assert status == 200
    counts = license_counts(report, "team-a/gold")
    assert counts is not None
    assert counts.total == Counted(3, 3, 3)
    # keyed by the ProtectedModel (model_counters), not the Triton name
    assert counts.models == {"team-a/fraud": Counted(3, 3, 3)}
    assert license_counts(report, "team-a/other") is None


async def test_no_audit_key_no_endpoint(tmp_path: Path) -> None:
    gw = Gateway(settings_for_tests(tmp_path))
    await gw.store.start()
    runner, url = await _serve(gw)
    try:
        assert (await _get(url, usage_read_token(KEY)))[0] == 404
    finally:
        await runner.cleanup()
        await gw.store.close()
        await gw.upstream.close()


def test_authorization_header_forms() -> None:
    token = usage_read_token(KEY)
    assert authorized(token, f"Bearer {token}")
    assert authorized(token, f"bearer {token}")
    assert not authorized(token, f"Basic {token}")
    assert not authorized(token, "Bearer ")
    assert not authorized(token, None)


@pytest.mark.parametrize(
    "report",
    [
        {"v": 2, "licenses": []},
        {"v": 1},
        {"v": 1, "licenses": [{"id": "x", "total": [1, 2], "models": {}}]},
        {"v": 1, "licenses": [{"id": "x", "total": [1, 2, -3], "models": {}}]},
        {"v": 1, "licenses": [{"id": "x", "total": [1, 2, 3], "models": []}]},
    ],
)
def test_a_report_of_another_shape_is_refused(report: Any) -> None:
    with pytest.raises(ValueError):
        license_counts(report, "x")


def _pod(name: str, created: str, **over: Any) -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {
            "name": name,
            "creationTimestamp": created,
            "ownerReferences": [{"kind": "ReplicaSet", "name": "fraud-1", "controller": True}],
        },
        "spec": {"serviceAccountName": "fraud-5b1e2c3d"},
        "status": {"phase": "Running", "podIP": "10.0.0.7"},
    }
    for path, value in over.items():
        section, key = path.split("__")
        pod[section][key] = value
    return pod


def test_the_newest_running_pod_of_the_deployment_is_asked() -> None:
    sa = "fraud-5b1e2c3d"
    old = _pod("old", "2026-06-01T00:00:00Z")
    new = _pod("new", "2026-06-02T00:00:00Z")
    assert pick_pod([new, old], sa) is new
    pending = _pod("pending", "2026-06-03T00:00:00Z", status__phase="Pending")
    going = _pod("going", "2026-06-03T00:00:00Z", metadata__deletionTimestamp="2026-06-03T01:00Z")
    planted = _pod("planted", "2026-06-03T00:00:00Z", metadata__ownerReferences=[])
    other_sa = _pod("other", "2026-06-03T00:00:00Z", spec__serviceAccountName="default")
    assert pick_pod([old, pending, going, planted, other_sa], sa) is old
    assert pick_pod([pending, planted], sa) is None


def test_the_kept_view_of_a_pod_picks_as_the_whole_pod_does() -> None:
    sa = "fraud-5b1e2c3d"
    pods = [
        _pod("old", "2026-06-01T00:00:00Z"),
        _pod("new", "2026-06-02T00:00:00Z"),
        _pod("pending", "2026-06-03T00:00:00Z", status__phase="Pending"),
        _pod("going", "2026-06-03T00:00:00Z", metadata__deletionTimestamp="2026-06-03T01:00Z"),
        _pod("planted", "2026-06-03T00:00:00Z", metadata__ownerReferences=[]),
        _pod("other", "2026-06-03T00:00:00Z", spec__serviceAccountName="default"),
        _pod("no-ip", "2026-06-04T00:00:00Z", status__podIP=None),
        _pod(
            "not-controller",
            "2026-06-04T00:00:00Z",
            metadata__ownerReferences=[{"kind": "ReplicaSet", "controller": False}],
        ),
    ]
    for pod in pods:
        pod["metadata"]["labels"] = {"modelseal.io/model": "fraud"}
        pod["spec"]["containers"] = [{"name": "triton", "image": "x", "env": [{"name": "A"}]}]
        pod["status"]["containerStatuses"] = [{"name": "triton", "ready": True}]
    for n in range(len(pods) + 1):
        for chosen in (pods[:n], pods[n:], pods[::-1][:n]):
            whole = pick_pod(chosen, sa)
            view = pick_pod([usage_pod_view(p) for p in chosen], sa)
            assert (whole and whole["metadata"]["name"]) == (view and view["metadata"]["name"])
    kept = usage_pod_view(pods[0])
    assert "containers" not in kept["spec"] and "containerStatuses" not in kept["status"]
    assert kept["metadata"]["labels"] == {"modelseal.io/model": "fraud"}
