"""Rendering and drift detection: what counts as drift and what the server may add."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest

from modelseal.config import Settings
from modelseal.models.spec import ModelSpec, parse_model
from modelseal.render import manifests
from modelseal.render.compare import conflict, differences, update_body
from modelseal.render.model import render_model
from modelseal.render.vault import _ttl_seconds

DIGEST = "sha256tree:" + "12" * 32


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in list(os.environ):
        if key.startswith("MODELSEAL_"):
            monkeypatch.delenv(key)
    return Settings()


def model(**spec: Any) -> ModelSpec:
    body: dict[str, Any] = {
        "metadata": {"name": "digits", "namespace": "ns", "uid": "u-1", "generation": 1},
        "spec": {
            "tenant": "acme",
            "licenseRef": {"name": "gold"},
            "version": "1",
            "source": {"uri": "s3://bkt/x", "digest": DIGEST, "plaintextSize": "1Gi"},
            "vault": {"transitKey": "k"},
            "serving": {"gpusPerReplica": 1, "resources": {"requests": {"cpu": "1000m"}}},
        },
    }
    body["spec"].update(spec)
    return parse_model(body)


def server_view(obj: dict[str, Any]) -> dict[str, Any]:
    """What the API server hands back: defaults, status, bookkeeping, canonical quantities."""
    live = copy.deepcopy(obj)
    live["metadata"].update(
        {
            "resourceVersion": "42",
            "uid": "x",
            "generation": 3,
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "managedFields": [{"manager": "modelseal"}],
            "annotations": {"deployment.kubernetes.io/revision": "2"},
        }
    )
    live["metadata"]["labels"]["someone-else"] = "label"
    live["status"] = {"replicas": 1}
    if obj["kind"] == "Deployment":
        tmpl = live["spec"]["template"]
        tmpl["metadata"]["creationTimestamp"] = None
        triton = tmpl["spec"]["containers"][0]
        triton["resources"]["requests"]["cpu"] = "1"  # canonical form of 1000m
        tmpl["spec"]["hostNetwork"] = False
        live["spec"]["paused"] = False
    if obj["kind"] == "Service":
        live["spec"]["clusterIP"] = "10.96.0.10"
        live["spec"]["clusterIPs"] = ["10.96.0.10"]
        live["spec"]["ipFamilies"] = ["IPv4"]
        live["spec"]["ipFamilyPolicy"] = "SingleStack"
    return live


def test_server_defaults_are_not_drift(settings: Settings) -> None:
    for obj in render_model(model(), None, True, settings).objects():
        assert differences(obj, server_view(obj)) == [], obj["kind"]


def _deployment(settings: Settings) -> dict[str, Any]:
    return render_model(model(), None, True, settings).deployment


DRIFTS = [
    ("replicas above seats", lambda d: d["spec"].__setitem__("replicas", 5), "spec.replicas"),
    (
        "other image",
        lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__(
            "image", "evil:latest"
        ),
        "spec.template.spec.containers[0].image",
    ),
    (
        "sidecar removed",
        lambda d: d["spec"]["template"]["spec"].__setitem__("initContainers", []),
        "spec.template.spec.initContainers",
    ),
    (
        "debug container added",
        lambda d: d["spec"]["template"]["spec"]["containers"].append(
            {"name": "debug", "image": "busybox"}
        ),
        "spec.template.spec.containers",
    ),
    (
        "hostPID",
        lambda d: d["spec"]["template"]["spec"].__setitem__("hostPID", True),
        "spec.template.spec.hostPID",
    ),
    (
        "tmpfs to disk",
        lambda d: d["spec"]["template"]["spec"]["volumes"][0]["emptyDir"].pop("medium"),
        "spec.template.spec.volumes[0].emptyDir.medium",
    ),
    ("paused", lambda d: d["spec"].__setitem__("paused", True), "spec.paused"),
    (
        "gpu changed",
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"].__setitem__(
            "nvidia.com/gpu", "4"
        ),
        "nvidia.com/gpu",
    ),
    (
        "label removed",
        lambda d: d["metadata"]["labels"].pop("modelseal.io/model"),
        "metadata.labels.modelseal.io/model",
    ),
    (
        "apparmor annotation",
        lambda d: d["spec"]["template"]["metadata"]["annotations"].__setitem__(
            "container.apparmor.security.beta.kubernetes.io/triton", "unconfined"
        ),
        "spec.template.metadata.annotations",
    ),
]


@pytest.mark.parametrize(("case", "edit", "path"), DRIFTS, ids=[d[0] for d in DRIFTS])
def test_drift_is_detected_and_repaired(
    settings: Settings, case: str, edit: Any, path: str
) -> None:
    desired = _deployment(settings)
    live = server_view(desired)
    edit(live)
    diffs = differences(desired, live)
    assert diffs, case
    assert any(path in d for d in diffs), diffs
    repaired = update_body(desired, live)
    assert differences(desired, repaired) == []
    # The repair keeps what others own: their labels, annotations, resourceVersion.
    assert repaired["metadata"]["resourceVersion"] == "42"
    assert repaired["metadata"]["labels"]["someone-else"] == "label"
    assert "status" not in repaired


def test_rollout_restart_annotation_is_tolerated(settings: Settings) -> None:
    desired = _deployment(settings)
    live = server_view(desired)
    live["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"] = "now"
    assert differences(desired, live) == []


def test_service_update_keeps_cluster_ip(settings: Settings) -> None:
    desired = render_model(model(), None, True, settings).service
    live = server_view(desired)
    live["spec"]["externalIPs"] = ["1.2.3.4"]
    assert differences(desired, live) == ["spec.externalIPs"]
    body = update_body(desired, live)
    assert body["spec"]["clusterIP"] == "10.96.0.10"
    assert "externalIPs" not in body["spec"]


def test_configmap_data_drift(settings: Settings) -> None:
    desired = render_model(model(), None, True, settings).license_config
    live = server_view(desired)
    live["data"]["license.json"] = '{"tenant": "acme", "revoked": false}'
    assert differences(desired, live) == ["data.license.json"]
    live = server_view(desired)
    live["binaryData"] = {"x": "AA=="}
    assert differences(desired, live) == ["binaryData"]


def test_ownership_conflicts(settings: Settings) -> None:
    desired = render_model(model(), None, True, settings).service_account
    foreign = copy.deepcopy(desired)
    foreign["metadata"]["ownerReferences"] = []
    assert "not managed by this ProtectedModel" in (conflict(desired, foreign) or "")
    other = copy.deepcopy(desired)
    other["metadata"]["ownerReferences"][0]["uid"] = "other"
    assert "controlled by ProtectedModel digits" in (conflict(desired, other) or "")
    assert conflict(desired, desired) is None
    assert "metadata.ownerReferences" in differences(desired, other)


def test_tmpfs_and_unsealer_memory_follow_plaintext(settings: Settings) -> None:
    dep = render_model(model(), None, True, settings).deployment
    pod = dep["spec"]["template"]["spec"]
    models = next(v for v in pod["volumes"] if v["name"] == "models")
    assert models["emptyDir"] == {"medium": "Memory", "sizeLimit": "1077Mi"}  # 1Gi + 2% + 32Mi
    unsealer = pod["initContainers"][0]
    assert unsealer["resources"]["limits"]["memory"] == "1333Mi"  # + 256Mi for the process


def test_not_granted_means_zero_replicas(settings: Settings) -> None:
    r = render_model(model(), None, False, settings)
    assert r.replicas == 0 and r.deployment["spec"]["replicas"] == 0


def test_version_change_changes_template_only(settings: Settings) -> None:
    a = render_model(model(), None, True, settings).deployment
    b = render_model(
        model(
            version="2",
            source={
                "uri": "s3://bkt/y",
                "digest": "sha256tree:" + "34" * 32,
                "plaintextSize": "1Gi",
            },
        ),
        None,
        True,
        settings,
    ).deployment
    assert a["spec"]["selector"] == b["spec"]["selector"]
    assert a["spec"]["template"] != b["spec"]["template"]
    assert manifests.template_hash(a["spec"]["template"]) != manifests.template_hash(
        b["spec"]["template"]
    )


def test_ttl_parsing() -> None:
    assert _ttl_seconds("10m") == 600
    assert _ttl_seconds("90") == 90
    assert _ttl_seconds("1h") == 3600
    with pytest.raises(ValueError, match="seconds"):
        _ttl_seconds("ten minutes")
