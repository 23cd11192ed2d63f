"""Several worker processes on one port (SO_REUSEPORT) share exact Redis counters, each
with its own verifiable audit chain; the combinations that would break a guarantee are
refused with a clear error."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from bench.gateway.harness import (
    GatewayProcess,
    call,
    digits_body,
    license_doc,
    triton_success_count,
    write_keys,
    write_license,
)

from modelseal_devenv.redis import RedisServer
from modelseal_devenv.triton import TritonServer

pytestmark = pytest.mark.integration

KEY = "workers-key-0123456789abcdefghi"


def test_workers_share_exact_counters_and_audit_separately(
    tmp_path: Path, triton_server: TritonServer
) -> None:
    write_license(tmp_path / "license.json", license_doc("wk", ["digits"], quotas={"total": 40}))
    write_keys(tmp_path / "keys.json", {"c": ("wk", KEY)})
    before = triton_success_count(triton_server.http_url, "digits")
    with RedisServer(tmp_path / "redis") as redis:
        gw = GatewayProcess(
            tmp_path,
            name="wk",
            triton_http_url=triton_server.http_url,
            triton_grpc_url=triton_server.grpc_url,
            store="redis",
            redis_url=redis.url,
            env={"MODELSEAL_GATEWAY_WORKERS": "3"},
        ).start()
        try:
            url = f"{gw.http_url}/v2/models/digits/infer"
            body = digits_body()
            # each call is a new connection: the kernel spreads them over the workers
            with ThreadPoolExecutor(24) as pool:
                codes = list(pool.map(lambda _: call(url, body, KEY)[0], range(150)))
            assert codes.count(200) == 40 and codes.count(429) == 110, codes
            gw.wait_audit(
                lambda _: sum(r["type"] == "request" for r in gw.all_audit_lines()) >= 150
            )
        finally:
            gw.stop()
    assert triton_success_count(triton_server.http_url, "digits") - before == 40
    files = gw.audit_files()
    assert [f.name for f in files] == ["audit-wk-w1.jsonl", "audit-wk-w2.jsonl", "audit-wk.jsonl"]
    per_file = [
        sum(1 for line in f.read_text().splitlines() if json.loads(line)["type"] == "request")
        for f in files
    ]
    assert sum(per_file) == 150
    assert sum(1 for n in per_file if n > 0) >= 2, per_file  # more than one worker served
    for f in files:  # one chain per worker, each verifies
        done = subprocess.run(
            [sys.executable, "-m", "modelseal", "audit", "verify", str(f)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
