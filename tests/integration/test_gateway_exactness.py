"""Exactness: three gateway processes share one Redis; 2,000 concurrent requests against a
budget of 100 → exactly 100 reach Triton (Triton's own statistics) and 1,900 get 429."""

from __future__ import annotations

import asyncio
import collections
import json
from pathlib import Path

import aiohttp
import pytest
from bench.gateway.harness import (
    GatewayProcess,
    license_doc,
    triton_success_count,
    write_keys,
    write_license,
)

from modelseal_devenv.models import sample_digits
from modelseal_devenv.redis import RedisServer
from modelseal_devenv.triton import TritonServer

pytestmark = pytest.mark.integration

KEY = "exactness-key-0123456789abcdef"


async def test_three_gateways_share_an_exact_budget(
    tmp_path: Path, triton_server: TritonServer, redis_server: RedisServer
) -> None:
    write_license(
        tmp_path / "license.json", license_doc("exact", ["digits"], quotas={"total": 100})
    )
    write_keys(tmp_path / "keys.json", {"c1": ("exact", KEY)})
    with redis_server.client() as client:
        client.flushall()
    gateways = [
        GatewayProcess(
            tmp_path,
            name=f"gw{i}",
            store="redis",
            redis_url=redis_server.url,
            triton_http_url=triton_server.http_url,
            triton_grpc_url=triton_server.grpc_url,
            # Exactness is what is tested, not Redis latency: 667 requests at once per
            # gateway on 2 shared cores can keep a reply waiting past the harness's 0.5 s,
            # and every request of that connection then fails closed (503), which is right
            # but not this test's subject (tests/integration/test_gateway_redis_store.py).
            env={"MODELSEAL_REDIS_TIMEOUT_S": "5"},
        )
        for i in range(3)
    ]
    for gw in gateways:
        gw.start()
    try:
        images, _ = sample_digits(1)
        body = json.dumps(
            {
                "inputs": [
                    {
                        "name": "INPUT",
                        "datatype": "FP32",
                        "shape": [1, 64],
                        "data": images.flatten().tolist(),
                    }
                ]
            }
        ).encode()
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        before = triton_success_count(triton_server.http_url, "digits")

        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            start = asyncio.Event()

            async def one(i: int) -> tuple[int, str]:
                url = f"{gateways[i % 3].http_url}/v2/models/digits/infer"
                await start.wait()
                async with session.post(url, data=body, headers=headers) as resp:
                    text = await resp.text()
                    return resp.status, text

            tasks = [asyncio.create_task(one(i)) for i in range(2000)]
            await asyncio.sleep(0)
            start.set()
            results = await asyncio.gather(*tasks)

        after = triton_success_count(triton_server.http_url, "digits")
        codes = collections.Counter(status for status, _ in results)
        assert codes == {200: 100, 429: 1900}, codes
        assert after - before == 100
        refusals = [json.loads(text) for status, text in results if status == 429]
        assert all(r["limit"] == "total" for r in refusals)
        # each gateway audited exactly what it answered
        for gw in gateways:
            gw.stop()
        allowed = denied = 0
        for gw in gateways:
            records = [r for r in gw.audit_lines() if r["type"] == "request"]
            allowed += sum(r["decision"] == "allow" and r["status"] == 200 for r in records)
            denied += sum(r["decision"] == "deny" and r["status"] == 429 for r in records)
        assert (allowed, denied) == (100, 1900)
        with redis_server.client() as client:
            totals = [int(client.get(k) or 0) for k in client.keys("modelseal:{exact}:*:t")]
        assert sorted(totals) == [100, 100]  # the tenant scope and the (tenant, model) scope
    finally:
        for gw in gateways:
            gw.stop()
