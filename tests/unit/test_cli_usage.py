"""`modelseal usage` (issue 14) on ModelLicense objects as the operator's usage writer
leaves them (built with the writer's own pure functions); against the real API server in
tests/integration/test_license_usage.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from tests.unit.test_models_license import lic

from modelseal.cli import main as cli_main
from modelseal.models import conditions, usage

NOW = datetime(2026, 6, 30, 22, 15, tzinfo=UTC)


def license_object(day: int) -> dict[str, Any]:
    spec = {
        "tenant": "acme",
        "allowedModels": ["*"],
        "seats": {"maxReplicas": 1, "maxGPUs": 0},
        "quotas": {"perDay": 10, "perMonth": 1000},
    }
    parsed = lic(quotas=spec["quotas"])
    reading = usage.Reading(
        NOW,
        "redis://q:6379/0",
        usage.Counts(day, day, day),
        {"digits": usage.Counts(day, day, day)},
    )
    figures = usage.usage_figures(parsed, reading)
    quota = usage.quota_condition(parsed, reading)
    return {
        "apiVersion": "modelseal.io/v1alpha1",
        "kind": "ModelLicense",
        "metadata": {"name": "gold", "namespace": "team-a"},
        "spec": spec,
        "status": {
            "conditions": conditions.merge(None, [quota], 1, NOW),
            "usage": {"models": 1, "requests": figures},
        },
    }


def test_table_shows_windows_models_and_quota(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ml.json"
    path.write_text(json.dumps({"kind": "List", "items": [license_object(10)]}))
    assert cli_main.main(["usage", "-f", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["LICENSE", "TENANT", "WINDOW", "USED", "LIMIT", "REMAINING", "RESETS"]
    assert out[1].split() == ["gold", "acme", "day", "10", "10", "0", "2026-07-01T00:00:00Z"]
    assert out[2].split() == ["gold", "acme", "month", "10", "1000", "990", "2026-07-01T00:00:00Z"]
    assert out[3].split() == ["gold", "acme", "lifetime", "10", "-", "-", "never"]
    assert "gold: model digits: day 10, month 10, lifetime 10" in out
    assert any(
        line.startswith("gold: QuotaExhausted=True (DailyQuotaExhausted): the license's perDay")
        and "[read 2026-06-30T22:15:00Z from redis://q:6379/0]" in line
        for line in out
    )


def test_json_output_and_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(license_object(3))))
    assert cli_main.main(["usage", "-f", "-", "-o", "json", "gold"]) == 0
    (got,) = json.loads(capsys.readouterr().out)
    assert got["license"] == "gold" and got["tenant"] == "acme"
    assert got["windows"]["day"]["remaining"] == 7
    assert got["quotaExhausted"]["status"] == "False"


def test_not_read_yet_and_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fresh = license_object(1)
    fresh["status"] = {"conditions": []}
    path = tmp_path / "fresh.json"
    path.write_text(json.dumps(fresh))
    assert cli_main.main(["usage", "-f", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ["gold", "acme", "-", "-", "-", "-", "-"]
    assert "not read yet" in out
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert cli_main.main(["usage", "-f", str(bad)]) == 1
    assert "is not JSON" in capsys.readouterr().err
    assert cli_main.main(["usage", "-f", str(tmp_path / "missing.json")]) == 4
    assert "cannot read" in capsys.readouterr().err
    assert cli_main.main(["usage", "-f", str(path), "other"]) == 1
    assert "no ModelLicense found" in capsys.readouterr().err


def test_cluster_access_problems_say_what_is_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No usable kubeconfig, or no API server behind it: exit 4 with the reason."""
    from modelseal_devenv.common import free_port

    assert cli_main.main(["usage", "--kubeconfig", str(tmp_path / "absent")]) == 4
    err = capsys.readouterr().err
    assert "cannot load the Kubernetes configuration" in err and "absent" in err
    config = tmp_path / "config"
    config.write_text(
        json.dumps(
            {
                "current-context": "c",
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "c"}}],
                "clusters": [
                    {"name": "c", "cluster": {"server": f"http://127.0.0.1:{free_port()}"}}
                ],
                "users": [{"name": "c", "user": {"token": "secret-token-value"}}],
            }
        )
    )
    assert cli_main.main(["usage", "--kubeconfig", str(config), "-n", "team-a"]) == 4
    err = capsys.readouterr().err
    assert "the API server refused" in err and "Unreachable" in err
    assert "secret-token-value" not in err
