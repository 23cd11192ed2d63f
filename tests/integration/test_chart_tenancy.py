"""The chart's tenancy rendering (issue 12, Medium 7 and 11), statically, with the built helm.

The admission policy and the operator must agree: the image patterns the chart renders into
CEL are compiled here and must allow exactly what `modelseal.models.tenancy` allows; the
ConfigMap the operator reads must parse to the declaration given in the values. The
policies themselves are attacked on a real API server in
tests/attack/test_attack_tenancy_admission.py.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.integration.test_chart_static import CHART, RELEASE_NS, by_kind, helm, render
from tests.unit.test_tenancy import DECL

from modelseal.models.tenancy import image_allowed, parse_tenancy_text

pytestmark = pytest.mark.integration

__all__ = ["helm"]  # the session fixture of test_chart_static.py, by its name

DIGEST = "sha256:" + "c" * 64
IMAGES = [
    "nvcr.io/nvidia/tritonserver",
    "nvcr.io/nvidia/tritonserver:24.08-py3",
    f"nvcr.io/nvidia/tritonserver@{DIGEST}",
    f"nvcr.io/nvidia/tritonserver:1@{DIGEST}",
    "nvcr.io/nvidia/tritonserver-evil:1",
    "nvcr.io/nvidia/tritonserver/evil:1",
    "nvcrxio/nvidia/tritonserver:1",
    "evil.io/nvcr.io/nvidia/tritonserver:1",
    "registry.acme.io/triton/server:1",
    "registry.acme.io/triton/a/b",
    "registry.acme.io/triton",
    "registry.acme.io/triton/",
    "registry.acme.io/tritonx/a:1",
    "registry.acme.io/triton/../x:1",
    "registry.acme.io/triton/A:1",
    "nvcr.io/nvidia/tritonserver:1\nevil",
    "nvcr.io/nvidia/tritonserver:1\n",
]


@pytest.fixture(scope="module")
def docs(helm: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    values = tmp_path_factory.mktemp("tenancy") / "values.yaml"
    values.write_text(yaml.safe_dump({"tenancy": DECL}))
    return render(helm, values)


def _policy(docs: list[dict[str, Any]], suffix: str) -> dict[str, Any]:
    found = [
        p
        for p in by_kind(docs, "ValidatingAdmissionPolicy")
        if p["metadata"]["name"].endswith(suffix)
    ]
    assert len(found) == 1, [p["metadata"]["name"] for p in found]
    return found[0]


def test_rendered_image_patterns_allow_what_the_operator_allows(
    docs: list[dict[str, Any]],
) -> None:
    policy = _policy(docs, "-tenancy")
    variables = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}
    grants = json.loads(variables["grants"])  # a CEL map literal written as JSON
    assert set(grants) == {"team-a", "team-b"}
    assert grants["team-a"]["keys"] == ["digits-key"] and grants["team-b"]["images"] == []
    entries = tuple(DECL["namespaces"]["team-a"]["images"])  # type: ignore[index]
    for image in IMAGES:
        # RE2 (CEL matches): ^...$ is the whole text; $ never matches before a final newline.
        chart = any(re.fullmatch(p, image) for p in grants["team-a"]["images"])
        assert chart is image_allowed(image, entries), image


def test_configmap_carries_the_declaration(docs: list[dict[str, Any]]) -> None:
    (cm,) = [d for d in by_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-tenancy")]
    text = cm["data"]["tenancy.json"]
    tenancy = parse_tenancy_text(text, "tenancy.json")
    assert tenancy.namespaces["team-a"].transit_keys == ("digits-key",)
    assert json.loads(text) == DECL
    (dep,) = by_kind(docs, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "tenancy")
    assert env["MODELSEAL_TENANCY_FILE"] == f"{mount['mountPath']}/tenancy.json"
    volume = next(v for v in pod["volumes"] if v["name"] == "tenancy")
    assert volume["configMap"]["name"] == cm["metadata"]["name"]


def _env(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = by_kind(docs, "Deployment")
    return {
        e["name"]: e.get("value") for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]
    }


def test_operator_namespace_guard_only_when_cluster_wide(helm: Path) -> None:
    cluster_wide = render(helm)
    policy = _policy(cluster_wide, "-operator-namespaces")
    assert policy["spec"]["failurePolicy"] == "Fail"
    (binding,) = [
        b
        for b in by_kind(cluster_wide, "ValidatingAdmissionPolicyBinding")
        if b["spec"]["policyName"] == policy["metadata"]["name"]
    ]
    assert binding["spec"]["matchResources"]["namespaceSelector"] == {
        "matchExpressions": [
            {"key": "modelseal.io/enabled", "operator": "NotIn", "values": ["true"]}
        ]
    }
    rules = policy["spec"]["matchConstraints"]["resourceRules"]
    covered = {r for rule in rules for r in rule["resources"]}
    assert {"deployments", "serviceaccounts", "configmaps", "secrets", "pods"} <= covered
    assert _env(cluster_wide)["MODELSEAL_MODEL_NAMESPACE_LABEL"] == "modelseal.io/enabled=true"
    watched = render(helm, sets=("operator.watchNamespaces={a}",))
    names = [p["metadata"]["name"] for p in by_kind(watched, "ValidatingAdmissionPolicy")]
    assert not [n for n in names if n.endswith("-operator-namespaces")]
    assert "MODELSEAL_MODEL_NAMESPACE_LABEL" not in _env(watched)
    off = render(helm, sets=("rbac.modelNamespaceLabel=",))
    names = [p["metadata"]["name"] for p in by_kind(off, "ValidatingAdmissionPolicy")]
    assert not [n for n in names if n.endswith("-operator-namespaces")]


def test_unlisted_any_drops_the_undeclared_namespace_check(helm: Path) -> None:
    docs = render(helm, sets=("tenancy.unlisted=Any",))
    checks = [v["expression"] for v in _policy(docs, "-tenancy")["spec"]["validations"]]
    assert "variables.listed" not in checks and len(checks) == 2
    refuse = render(helm)
    checks = [v["expression"] for v in _policy(refuse, "-tenancy")["spec"]["validations"]]
    assert checks[0] == "variables.listed"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ("tenancy.unlisted=Sometimes", "unlisted"),
        ("tenancy.namespaces.Team_A.transitKeys={k}", "Team_A"),
        ("tenancy.namespaces.a.transitKeys={k*}", "transitKeys"),
        ("tenancy.namespaces.a.images={Evil/x:1}", "images"),
        ("rbac.modelNamespaceLabel=no-value", "modelNamespaceLabel"),
    ],
)
def test_bad_tenancy_values_are_refused_by_the_schema(helm: Path, sets: str, message: str) -> None:

    result = subprocess.run(
        [str(helm), "template", "ms", str(CHART), "--namespace", RELEASE_NS, "--set", sets],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0, result.stdout[:200]
    assert message in result.stderr, result.stderr
