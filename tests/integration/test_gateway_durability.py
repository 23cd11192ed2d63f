"""Counters survive gateway restarts and crashes in both store modes, and Redis restarts;
with Redis down the gateway fails closed (503), never serving an unmetered request."""

from __future__ import annotations

import json
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

KEY = "durability-key-0123456789abcdef"


def setup_files(tmp: Path, tenant: str, quotas: dict[str, int]) -> None:
    write_license(tmp / "license.json", license_doc(tenant, ["digits"], quotas=quotas))
    write_keys(tmp / "keys.json", {"c": (tenant, KEY)})


def infer_codes(gw: GatewayProcess, n: int) -> list[int]:
    url = f"{gw.http_url}/v2/models/digits/infer"
    body = digits_body()
    return [call(url, body, KEY)[0] for _ in range(n)]


def gateway(tmp: Path, triton: TritonServer, **kw: str) -> GatewayProcess:
    return GatewayProcess(
        tmp, triton_http_url=triton.http_url, triton_grpc_url=triton.grpc_url, **kw
    )


def test_embedded_counters_survive_restart_and_crash(
    tmp_path: Path, triton_server: TritonServer
) -> None:
    setup_files(tmp_path, "dur-embedded", {"per_day": 6, "total": 9})
    before = triton_success_count(triton_server.http_url, "digits")
    gw = gateway(tmp_path, triton_server).start()
    try:
        assert infer_codes(gw, 4) == [200] * 4
        gw.stop()  # graceful: snapshot written
        gw.start()
        assert infer_codes(gw, 3) == [200, 200, 429]
        gw.kill()  # crash: only the journal is left
        gw.start()
        assert infer_codes(gw, 2) == [429, 429]
        status, headers, body = call(f"{gw.http_url}/v2/models/digits/infer", digits_body(), KEY)
        assert status == 429 and json.loads(body)["limit"] == "per_day"
        assert 0 < int(headers["Retry-After"]) <= 86400
    finally:
        gw.stop()
    assert triton_success_count(triton_server.http_url, "digits") - before == 6


def test_redis_counters_survive_gateway_and_redis_restarts(
    tmp_path: Path, triton_server: TritonServer
) -> None:
    setup_files(tmp_path, "dur-redis", {"total": 7})
    before = triton_success_count(triton_server.http_url, "digits")
    with RedisServer(tmp_path / "redis") as redis:
        gw = gateway(tmp_path, triton_server, store="redis", redis_url=redis.url).start()
        try:
            assert infer_codes(gw, 3) == [200] * 3
            gw.kill()
            gw.start()
            assert infer_codes(gw, 2) == [200] * 2
            redis.stop()
            redis.start()  # same port, data from its append-only file
            assert infer_codes(gw, 3) == [200, 200, 429]
            gw.stop()
            gw.start()
            assert infer_codes(gw, 1) == [429]
        finally:
            gw.stop()
    assert triton_success_count(triton_server.http_url, "digits") - before == 7


def test_redis_down_fails_closed(tmp_path: Path, triton_server: TritonServer) -> None:
    setup_files(tmp_path, "dur-down", {"total": 100})
    with RedisServer(tmp_path / "redis") as redis:
        gw = gateway(tmp_path, triton_server, store="redis", redis_url=redis.url).start()
        try:
            assert infer_codes(gw, 2) == [200, 200]
            before = triton_success_count(triton_server.http_url, "digits")
            redis.stop()
            url = f"{gw.http_url}/v2/models/digits/infer"
            for _ in range(5):
                status, _, body = call(url, digits_body(), KEY)
                assert status == 503
                assert "quota store unavailable (redis)" in json.loads(body)["error"]
            assert triton_success_count(triton_server.http_url, "digits") == before
            assert gw.metric("modelseal_gateway_store_errors_total", store="redis") >= 5
            assert gw.metric("modelseal_gateway_store_up", store="redis") == 0
            assert "quota store unavailable" in gw.log_path.read_text()

            redis.start()
            assert infer_codes(gw, 2) == [200, 200]
            assert gw.metric("modelseal_gateway_store_up", store="redis") == 1
            gw.stop()
            records = gw.audit_lines()
            events = [r["event"] for r in records if r["type"] == "event"]
            assert "store_unavailable" in events and "store_available" in events
            refused = [r for r in records if r["type"] == "request" and r["status"] == 503]
            assert len(refused) == 5 and all(r["decision"] == "error" for r in refused)
        finally:
            gw.stop()
