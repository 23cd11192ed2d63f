"""The chart's platform audit key (issue 12, Medium 8): a Secret made once and kept, mounted
as a file into the operator (never an env value); or an existing Secret named in values."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tests.integration.test_chart_static import by_kind, helm, render  # noqa: F401 - fixture

pytestmark = pytest.mark.integration


def _operator(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (dep,) = [d for d in by_kind(docs, "Deployment") if d["metadata"]["name"].endswith("-operator")]
    return dep


def test_the_platform_audit_key_is_a_kept_secret_mounted_as_a_file(helm: Path) -> None:  # noqa: F811
    docs = render(helm)
    (secret,) = [
        s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == "ms-modelseal-audit-key"
    ]
    assert secret["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert len(secret["stringData"]["key"]) == 64
    pod = _operator(docs)["spec"]["template"]["spec"]
    (op,) = pod["containers"]
    env = {e["name"]: e for e in op["env"]}
    assert env["MODELSEAL_AUDIT_HMAC_KEY_FILE"]["value"] == "/etc/modelseal/audit-key/key"
    assert env["MODELSEAL_AUDIT_STATE_FILE"]["value"] == "/tmp/audit-chain.json"
    assert secret["stringData"]["key"] not in str(op)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "audit-key"]
    assert volume["secret"] == {
        "secretName": "ms-modelseal-audit-key",
        "defaultMode": 0o440,
        "items": [{"key": "key", "path": "key"}],
    }
    assert {"name": "audit-key", "mountPath": "/etc/modelseal/audit-key", "readOnly": True} in op[
        "volumeMounts"
    ]


def test_an_existing_secret_replaces_the_charts(helm: Path) -> None:  # noqa: F811
    docs = render(helm, sets=("audit.hmacKeySecret.name=vendor-audit", "audit.hmacKeySecret.key=k"))
    assert not [s for s in by_kind(docs, "Secret") if s["metadata"]["name"].endswith("audit-key")]
    pod = _operator(docs)["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "audit-key"]
    assert volume["secret"]["secretName"] == "vendor-audit"
    assert volume["secret"]["items"] == [{"key": "k", "path": "key"}]
