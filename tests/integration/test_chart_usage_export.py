"""The chart passes usageExport.url to the operator (MODELSEAL_USAGE_EXPORT_URL), which
renders it into every model's gateway (tests/golden/cases/usage-export); off by default.
usageExport.tokenSecret.name travels by name only, with a Role to read that one Secret
(tests/golden/cases/usage-export-token-embedded: the gateway's file mount)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tests.integration.test_chart_static import by_kind, helm, render  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def _operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (dep,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-operator")]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_usage_export_url_reaches_the_operator(helm: Path) -> None:  # noqa: F811
    assert "MODELSEAL_USAGE_EXPORT_URL" not in _operator_env(render(helm))
    url = "https://metering.example.com/events"
    env = _operator_env(render(helm, sets=(f"usageExport.url={url}",)))
    assert env["MODELSEAL_USAGE_EXPORT_URL"] == url


def test_usage_export_token_secret_by_name_only(helm: Path) -> None:  # noqa: F811
    url = "https://metering.example.com/events"
    plain = render(helm, sets=(f"usageExport.url={url}",))
    assert "MODELSEAL_USAGE_EXPORT_TOKEN_SECRET" not in _operator_env(plain)
    assert not [
        r for r in by_kind(plain, "Role") if r["metadata"]["name"].endswith("-usage-export")
    ]
    docs = render(helm, sets=(f"usageExport.url={url}", "usageExport.tokenSecret.name=billing"))
    env = _operator_env(docs)
    assert env["MODELSEAL_USAGE_EXPORT_TOKEN_SECRET"] == "billing"
    assert env["MODELSEAL_USAGE_EXPORT_TOKEN_SECRET_NAMESPACE"]  # the release namespace
    assert sorted(k for k in env if k.startswith("MODELSEAL_USAGE_EXPORT")) == [
        "MODELSEAL_USAGE_EXPORT_TOKEN_SECRET",
        "MODELSEAL_USAGE_EXPORT_TOKEN_SECRET_NAMESPACE",
        "MODELSEAL_USAGE_EXPORT_URL",
    ]  # the Secret's name, never the token
    (role,) = [r for r in by_kind(docs, "Role") if r["metadata"]["name"].endswith("-usage-export")]
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["billing"],
            "verbs": ["get"],
        }
    ]
    # The token Secret alone, without an endpoint, grants nothing.
    alone = render(helm, sets=("usageExport.tokenSecret.name=billing",))
    assert "MODELSEAL_USAGE_EXPORT_TOKEN_SECRET" not in _operator_env(alone)


def test_operator_pods_are_named_for_model_network_policies(helm: Path) -> None:  # noqa: F811
    """A model that limits its callers admits the operator on its metrics port (GET /usage
    of the embedded store's counters): the operator knows its namespace and labels."""
    env = _operator_env(render(helm))
    labels = json.loads(env["MODELSEAL_OPERATOR_POD_LABELS"])
    assert labels["app.kubernetes.io/component"] == "operator"
    assert env["MODELSEAL_OPERATOR_POD_NAMESPACE"]
