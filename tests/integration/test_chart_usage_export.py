"""The chart passes usageExport.url to the operator (MODELSEAL_USAGE_EXPORT_URL), which
renders it into every model's gateway (tests/golden/cases/usage-export); off by default."""

from __future__ import annotations

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
