"""The floor of `make bench-gateway` (bench/gateway/floor.py) does the round trips it
claims to: one Lua script in the real Redis, Triton's real answer passed on, one fsynced
line per request. A reference that skipped one would flatter every ratio against it."""

from __future__ import annotations

import json
from pathlib import Path

import redis as redis_py
from bench.gateway.bench import start_floor
from bench.gateway.floor import COUNTER_KEY
from bench.gateway.harness import call, digits_body

from modelseal_devenv.redis import RedisServer
from modelseal_devenv.triton import TritonServer

PATH = "/v2/models/digits/infer"


def test_the_floor_counts_in_redis_answers_from_triton_and_logs_each_request(
    tmp_path: Path,
    redis_server: RedisServer,
    redis_client: redis_py.Redis,
    triton_server: TritonServer,
) -> None:
    body = digits_body(2)
    status, _, direct = call(triton_server.http_url + PATH, body)
    assert status == 200
    process, url = start_floor(tmp_path, redis_server, triton_server.http_url, path=PATH)
    try:
        answers = [call(url + PATH, body) for _ in range(3)]
    finally:
        process.stop()
    assert [a[0] for a in answers] == [200, 200, 200]
    assert all(json.loads(a[2]) == json.loads(direct) for a in answers)
    assert int(redis_client.get(COUNTER_KEY) or 0) == 3
    lines = (tmp_path / "floor-audit.jsonl").read_text().splitlines()
    assert [json.loads(line)["n"] for line in lines] == [1, 2, 3]
    assert all(json.loads(line)["out"] == len(direct) for line in lines)
