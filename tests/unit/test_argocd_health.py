"""The Argo CD health checks (Lua) for ProtectedModel and ModelLicense, run by Debian's Lua.

The scripts live in Argo CD's own layout (argocd/resource_customizations/<group>/<kind>/
health.lua with health_test.yaml and testdata/), so they can be sent upstream as they are.
Argo CD runs them with the resource as the global ``obj`` and reads ``status`` and
``message`` from the table they return; ``run_health`` does the same with ``lua5.4``.
tests/integration/test_chart_install.py runs them again on objects read back from the real
API server after their status was written through the /status subresource.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CUSTOMIZATIONS = REPO / "argocd" / "resource_customizations" / "modelseal.io"
KINDS = ("ProtectedModel", "ModelLicense")
ARGO_STATUSES = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"}

# The harness: the object is the global `obj` (as in Argo CD), the script's returned table
# is printed as two lines. `os`/`io` stay reachable for the harness only.
_HARNESS = """
local script = assert(loadfile(%s))
local hs = script()
assert(type(hs) == "table", "health script must return a table")
io.write(tostring(hs.status), "\\n", tostring(hs.message or ""), "\\n")
"""


def lua_binary() -> str:
    found = shutil.which("lua5.4") or shutil.which("lua")
    if found is None:
        pytest.fail("lua5.4 is missing: run devenv/install-system-deps.sh (Debian package lua5.4)")
    return found


def to_lua(value: Any) -> str:
    """A Lua literal for a JSON-like value: lists become 1-based arrays, as in Argo CD."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"not representable: {value}")
        return repr(value)
    if isinstance(value, str):
        # A JSON string literal is a valid Lua string literal except for \\u escapes and
        # "/" escapes; ensure_ascii=False keeps non-ASCII as UTF-8 bytes, which Lua passes on.
        return json.dumps(value, ensure_ascii=False).replace("\\/", "/")
    if isinstance(value, list):
        return "{" + ", ".join(to_lua(v) for v in value) + "}"
    if isinstance(value, dict):
        items = (f"[{to_lua(str(k))}] = {to_lua(v)}" for k, v in value.items() if v is not None)
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"cannot turn {type(value).__name__} into Lua")


def run_health(kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Run the health script of ``kind`` on ``obj`` with lua5.4; return (status, message)."""
    script = CUSTOMIZATIONS / kind / "health.lua"
    program = f"obj = {to_lua(obj)}\n" + _HARNESS % to_lua(str(script))
    result = subprocess.run(
        [lua_binary(), "-"], input=program, capture_output=True, text=True, check=False, timeout=30
    )
    assert result.returncode == 0, f"lua failed on {kind}: {result.stderr}"
    status, message = result.stdout.split("\n")[:2]
    return status, message


def _cases() -> list[tuple[str, dict[str, Any], str, str]]:
    cases = []
    for kind in KINDS:
        spec = yaml.safe_load((CUSTOMIZATIONS / kind / "health_test.yaml").read_text())
        for test in spec["tests"]:
            obj = yaml.safe_load((CUSTOMIZATIONS / kind / test["inputPath"]).read_text())
            expected = test["healthStatus"]
            cases.append((kind, obj, expected["status"], expected["message"]))
    return cases


CASES = _cases()


@pytest.mark.parametrize(
    ("kind", "obj", "status", "message"),
    CASES,
    ids=[f"{c[0]}-{c[1]['metadata']['name']}-{c[2]}-{i}" for i, c in enumerate(CASES)],
)
def test_health_matches_argo_test_table(
    kind: str, obj: dict[str, Any], status: str, message: str
) -> None:
    assert run_health(kind, obj) == (status, message)


def test_every_state_is_covered() -> None:
    pm = {c[2] for c in CASES if c[0] == "ProtectedModel"}
    ml = {c[2] for c in CASES if c[0] == "ModelLicense"}
    assert {"Healthy", "Progressing", "Degraded"} <= pm
    assert {"Healthy", "Progressing", "Degraded", "Suspended"} <= ml
    assert {c[2] for c in CASES} <= ARGO_STATUSES


def test_testdata_is_the_crd_kind() -> None:
    for kind, obj, _, _ in CASES:
        assert obj["apiVersion"] == "modelseal.io/v1alpha1"
        assert obj["kind"] == kind


@pytest.mark.parametrize("kind", KINDS)
def test_script_is_lua_5_1_compatible(kind: str) -> None:
    """Argo CD embeds gopher-lua (Lua 5.1): no 5.2+ syntax such as goto, //, bit operators."""
    text = (CUSTOMIZATIONS / kind / "health.lua").read_text()
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines())
    for token in ("goto ", "::", "//", "<<", ">>", "utf8.", "table.unpack", "&", "|"):
        assert token not in code, f"{kind}/health.lua uses {token!r}, which Lua 5.1 lacks"


@pytest.mark.parametrize("kind", KINDS)
def test_empty_and_odd_objects_do_not_crash(kind: str) -> None:
    odd: list[dict[str, Any]] = [
        {},
        {"metadata": {}},
        {"status": {}},
        {"status": {"conditions": []}},
        {"metadata": {"generation": 3}, "status": {"conditions": [{"type": "Ready"}]}},
        {"status": {"conditions": [{"type": "Valid", "status": "False"}]}},
    ]
    for obj in odd:
        status, _ = run_health(kind, obj)
        assert status in ARGO_STATUSES


def test_argocd_cm_snippet_carries_the_scripts() -> None:
    """argocd/argocd-cm-health.yaml (for users to merge into argocd-cm) has the exact scripts."""
    cm = yaml.safe_load((REPO / "argocd" / "argocd-cm-health.yaml").read_text())
    for kind in KINDS:
        key = f"resource.customizations.health.modelseal.io_{kind}"
        assert cm["data"][key] == (CUSTOMIZATIONS / kind / "health.lua").read_text()


# --- statuses computed by the operator's own status code ----------------------------------
# The same pure functions the operator writes status with (modelseal.models.status), fed
# with observations for each situation; the Lua must read what the operator writes.


def _operator_model_cases() -> list[tuple[str, dict[str, Any], str]]:
    from datetime import UTC, datetime

    from modelseal.models import license as lic_mod
    from modelseal.models import status as st
    from modelseal.models.spec import parse_license, parse_meta, parse_model

    base = yaml.safe_load((CUSTOMIZATIONS / "ProtectedModel/testdata/healthy.yaml").read_text())
    base.pop("status")
    lic_body = yaml.safe_load((CUSTOMIZATIONS / "ModelLicense/testdata/valid.yaml").read_text())
    lic_body.pop("status")
    now = datetime(2026, 6, 1, tzinfo=UTC)
    model, meta, lic = parse_model(base), parse_meta(base), parse_license(lic_body)
    granted = lic_mod.check_terms(model, lic, now)
    assert granted.granted, granted
    key_ok = st.KeyState("True", "KeyProvisioned", "role ok", role="modelseal-t-digits")
    done = st.WorkloadState(
        exists=True,
        desired=1,
        observed_current=True,
        replicas=1,
        updated=1,
        ready=1,
        available=1,
    )
    verified = st.ArtifactState("True", "Verified", "digest and signature verified")

    def status_of(**kw: Any) -> dict[str, Any]:
        fields: dict[str, Any] = {
            "meta": meta,
            "spec": model,
            "decision": granted,
            "key": key_ok,
            "workload": done,
            "artifact": verified,
            "endpoint": "digits.tenant-a.svc:8000",
            "granted_replicas": 1,
        }
        fields.update(kw)
        return st.model_status(st.ModelObservation(**fields), None, now)

    expired_lic = parse_license(
        {**lic_body, "spec": {**lic_body["spec"], "notAfter": "2026-03-01T00:00:00Z"}}
    )
    idle = st.WorkloadState(exists=True, desired=0, observed_current=True)
    scaled = parse_model({**base, "spec": {**base["spec"], "serving": {"replicas": 0}}})
    cases = [
        ("serving", status_of(), "Healthy"),
        (
            "rolling-out",
            status_of(workload=st.WorkloadState(True, 1, True, 2, 0, 1, 1)),
            "Progressing",
        ),
        (
            "not-evaluated",
            status_of(decision=None, key=None, workload=st.WorkloadState()),
            "Progressing",
        ),
        (
            "license-expired",
            status_of(decision=lic_mod.check_terms(model, expired_lic, now), workload=idle),
            "Degraded",
        ),
        (
            "key-missing",
            status_of(
                key=st.KeyState("False", "KeyNotFound", "no transit key digits"),
                workload=st.WorkloadState(),
            ),
            "Degraded",
        ),
        (
            "artifact-tampered",
            status_of(
                artifact=st.ArtifactState("False", "DigestMismatch", "bundle digest differs")
            ),
            "Degraded",
        ),
        (
            "rollout-stuck",
            status_of(workload=st.WorkloadState(True, 1, True, 1, 1, 0, 0, deadline_exceeded=True)),
            "Degraded",
        ),
        ("reconcile-error", status_of(error="Vault is unreachable"), "Degraded"),
        ("scaled-to-zero", status_of(spec=scaled, workload=idle, granted_replicas=0), "Suspended"),
    ]
    out = []
    for name, status, expected in cases:
        obj = {
            **base,
            "metadata": {**base["metadata"], "generation": meta.generation},
            "status": status,
        }
        out.append((name, obj, expected))
    return out


def _operator_license_cases() -> list[tuple[str, dict[str, Any], str]]:
    from datetime import UTC, datetime

    from modelseal.models import status as st
    from modelseal.models.license import SeatUsage
    from modelseal.models.spec import parse_license

    body = yaml.safe_load((CUSTOMIZATIONS / "ModelLicense/testdata/valid.yaml").read_text())
    body.pop("status")
    usage = SeatUsage(models=1, replicas=1, gpus=1)

    def obj_at(when: datetime, **spec: Any) -> dict[str, Any]:
        b = {**body, "spec": {**body["spec"], **spec}}
        status = st.license_status(parse_license(b), 1, None, usage, None, when)
        return {**b, "status": status}

    june = datetime(2026, 6, 1, tzinfo=UTC)

    def used(count: int) -> dict[str, Any]:
        """What the usage writer leaves after reading ``count`` requests this month (issue
        14), then a license reconcile that keeps its QuotaExhausted condition."""
        from modelseal.models import conditions
        from modelseal.models import usage as requests

        obj = obj_at(june)
        reading = requests.Reading(june, "redis://q:6379/0", requests.Counts(count, count, count))
        quota = requests.quota_condition(parse_license(obj), reading)
        written = {
            **obj["status"],
            "conditions": conditions.merge(obj["status"]["conditions"], [quota], 1, june)
            + [c for c in obj["status"]["conditions"] if c["type"] != quota.type],
        }
        status = st.license_status(parse_license(obj), 1, None, usage, written, june)
        return {**obj, "status": status}

    return [
        ("valid", obj_at(june), "Healthy"),
        ("within-quota", used(99_999), "Healthy"),
        ("quota-exhausted", used(100_000), "Degraded"),
        ("expired", obj_at(datetime(2027, 6, 1, tzinfo=UTC)), "Degraded"),
        ("not-yet-valid", obj_at(datetime(2025, 6, 1, tzinfo=UTC)), "Suspended"),
        ("revoked", obj_at(june, revoked=True, revocationReason="contract ended"), "Degraded"),
        (
            "invalid-spec",
            {
                **body,
                "status": st.license_status(None, 1, "spec.seats is required", None, None, june),
            },
            "Degraded",
        ),
    ]


OPERATOR_CASES = [("ProtectedModel", *c) for c in _operator_model_cases()] + [
    ("ModelLicense", *c) for c in _operator_license_cases()
]


@pytest.mark.parametrize(
    ("kind", "name", "obj", "status"),
    OPERATOR_CASES,
    ids=[f"{c[0]}-{c[1]}" for c in OPERATOR_CASES],
)
def test_health_of_operator_written_status(
    kind: str, name: str, obj: dict[str, Any], status: str
) -> None:
    got, message = run_health(kind, obj)
    assert got == status, (name, message, obj["status"]["conditions"])
    assert message
