"""The CRDs and the code agree: every status field the operator writes exists in the
schema (the API server would prune it, and the operator would rewrite it forever), and the
spec parser accepts what the schema defaults."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from modelseal.models.license import decide
from modelseal.models.license import license_usage as usage_of
from modelseal.models.spec import parse_license, parse_meta, parse_model
from modelseal.models.status import (
    ArtifactState,
    KeyState,
    ModelObservation,
    WorkloadState,
    license_status,
    model_status,
)

CRDS = Path(__file__).resolve().parents[2] / "crds"
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def schema(name: str) -> dict[str, Any]:
    doc = yaml.safe_load((CRDS / f"{name}.modelseal.io.yaml").read_text())
    (version,) = doc["spec"]["versions"]
    return dict(version["schema"]["openAPIV3Schema"])


def assert_covered(value: Any, node: dict[str, Any], path: str) -> None:
    if node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string"):
        return
    if isinstance(value, dict):
        props = node.get("properties")
        assert props is not None, f"{path}: schema has no properties"
        for key, sub in value.items():
            assert key in props, f"{path}.{key} is not in the CRD schema (it would be pruned)"
            assert_covered(sub, props[key], f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            assert_covered(item, node["items"], f"{path}[{i}]")


def _model_body() -> dict[str, Any]:
    return {
        "metadata": {"name": "m", "namespace": "n", "uid": "u", "generation": 2},
        "spec": {
            "tenant": "acme",
            "licenseRef": {"name": "gold"},
            "version": "2",
            "source": {"uri": "s3://bkt/k", "digest": "sha256tree:" + "a" * 64, "plaintextSize": 9},
            "vault": {"transitKey": "k"},
        },
    }


def test_model_status_fields_exist_in_the_schema() -> None:
    body = _model_body()
    model = parse_model(body)
    lic = parse_license(
        {
            "metadata": {"name": "gold", "namespace": "n"},
            "spec": {
                "tenant": "acme",
                "allowedModels": ["*"],
                "seats": {"maxReplicas": 1, "maxGPUs": 0},
            },
        }
    )
    obs = ModelObservation(
        meta=parse_meta(body),
        spec=model,
        decision=decide(model, lic, [], NOW),
        key=KeyState("True", "KeyProvisioned", "", role="r"),
        workload=WorkloadState(True, 1, True, 1, 1, 1, 1),
        artifact=ArtifactState("True", "Verified", ""),
        endpoint="m.n.svc:8000",
        granted_replicas=1,
    )
    previous = {
        "servedVersion": "1",
        "servedDigest": "sha256tree:" + "b" * 64,
        "servedUri": "s3://bkt/old",
        "servedPlaintextSize": 5,
    }
    status = model_status(obs, previous, NOW)
    assert "previousVersion" in status
    assert_covered(status, schema("protectedmodels")["properties"]["status"], "status")
    usage, _ = usage_of(lic, [model], NOW)
    lstatus = license_status(lic, 1, None, usage, None, NOW)
    assert_covered(lstatus, schema("modellicenses")["properties"]["status"], "status")


def test_schema_defaults_parse() -> None:
    """The defaults the API server fills in are values the parser accepts."""
    spec = schema("protectedmodels")["properties"]["spec"]["properties"]
    body = _model_body()
    for key in ("serving", "gateway", "outputPolicy", "rollout", "networkPolicy"):
        default = spec[key].get("default", {})
        filled = dict(default)
        for sub, node in spec[key].get("properties", {}).items():
            if "default" in node and sub not in filled:
                filled[sub] = node["default"]
        body["spec"][key] = filled
    model = parse_model(body)
    assert model.serving.replicas == 1 and model.rollout.max_unavailable == 1
