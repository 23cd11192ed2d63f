"""Audit trail: N requests → N records across a restart, the chain verifies with
``modelseal audit verify``, and editing, deleting or reordering a line is detected."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from bench.gateway.harness import (
    GatewayProcess,
    call,
    digits_body,
    license_doc,
    write_keys,
    write_license,
)

from modelseal_devenv.triton import TritonServer

pytestmark = pytest.mark.integration

KEY = "audit-test-key-0123456789abcdef"


def verify(path: Path, key_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "modelseal",
            "audit",
            "verify",
            str(path),
            "--key-file",
            str(key_file),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def test_every_request_is_audited_and_tampering_is_named(
    tmp_path: Path, triton_server: TritonServer
) -> None:
    write_license(tmp_path / "license.json", license_doc("aud", ["digits"], quotas={"total": 70}))
    write_keys(tmp_path / "keys.json", {"alice": ("aud", KEY)})
    gw = GatewayProcess(
        tmp_path, triton_http_url=triton_server.http_url, triton_grpc_url=triton_server.grpc_url
    ).start()
    url = f"{gw.http_url}/v2/models/digits/infer"
    body = digits_body()
    statuses: list[int] = []
    try:
        for i in range(60):
            statuses.append(call(url, body, KEY if i % 10 else "wrong-key-0123456789abc")[0])
        gw.stop()
        gw.start()  # the chain goes on in the same file
        for _ in range(30):
            statuses.append(call(url, body, KEY)[0])
    finally:
        gw.stop()
    assert statuses.count(200) == 70 and statuses.count(401) == 6 and statuses.count(429) == 14

    records = [r for r in gw.audit_lines() if r["type"] == "request"]
    assert len(records) == 90
    assert [r["status"] for r in records] == statuses
    ok = records[1]
    assert ok["tenant"] == "aud" and ok["consumer"] == "alice" and ok["model"] == "digits"
    assert ok["decision"] == "allow" and ok["version"] == "1"
    assert ok["input_sha256"] == hashlib.sha256(body).hexdigest()
    assert ok["req_bytes"] == len(body) and ok["resp_bytes"] > 0 and ok["latency_ms"] > 0
    denied = [r for r in records if r["status"] == 429]
    assert all(r["decision"] == "deny" and r["limit"] == "total" for r in denied)
    unauth = records[0]
    assert unauth["status"] == 401 and unauth["tenant"] is None and unauth["decision"] == "reject"
    # never the input itself
    raw = gw.audit_file.read_bytes()
    first_value = json.dumps(json.loads(body)["inputs"][0]["data"][:4])[1:-1].encode()
    assert first_value not in raw and b"INPUT" not in raw

    result = verify(gw.audit_file, gw.hmac_key_file, "--strict")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK:" in result.stdout

    lines = gw.audit_file.read_bytes().splitlines(keepends=True)
    target = next(i for i, line in enumerate(lines) if b'"status":429' in line)

    edited = list(lines)
    edited[target] = edited[target].replace(b'"status":429', b'"status":200')
    deleted = lines[:target] + lines[target + 1 :]
    reordered = list(lines)
    reordered[target], reordered[target + 1] = reordered[target + 1], reordered[target]
    for name, content, needle in (
        ("edited", edited, "edited"),
        ("deleted", deleted, "missing"),
        ("reordered", reordered, "seq"),
    ):
        path = tmp_path / f"{name}.jsonl"
        path.write_bytes(b"".join(content))
        result = verify(path, gw.hmac_key_file)
        assert result.returncode == 1, (name, result.stdout)
        assert f"BROKEN at line {target + 1} " in result.stdout, (name, result.stdout)
        assert needle in result.stdout
