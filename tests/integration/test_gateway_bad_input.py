"""Bad input: each case gets a clear 4xx, costs no quota, is audited, and the gateway
stays up. Runs against a real gateway process in front of the real Triton."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

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

from modelseal_devenv.triton import TritonServer

pytestmark = pytest.mark.integration

KEY = "bad-input-key-0123456789abcdef"
MAX_BYTES = 64 * 1024


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, triton_server: TritonServer
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("badinput")
    # a budget of exactly the good requests this module sends: a bad one that consumed
    # quota would make the last good request fail with 429
    write_license(
        tmp / "license.json", license_doc("bad", ["digits", "ghost"], quotas={"total": 2})
    )
    write_keys(tmp / "keys.json", {"c": ("bad", KEY)})
    gateway = GatewayProcess(
        tmp,
        triton_http_url=triton_server.http_url,
        triton_grpc_url=triton_server.grpc_url,
        env={
            "MODELSEAL_MAX_REQUEST_BYTES": str(MAX_BYTES),
            "MODELSEAL_GATEWAY_BODY_TIMEOUT_S": "1",
            "MODELSEAL_GATEWAY_HEADER_TIMEOUT_S": "1",
        },
    ).start()
    status, _, _ = call(f"{gateway.http_url}/v2/models/digits/infer", digits_body(), KEY)
    assert status == 200
    # its record is written by the audit writer a moment later: wait, so that the first
    # case does not count it as its own
    gateway.wait_audit(lambda lines: any(r["type"] == "request" for r in lines))
    yield gateway
    gateway.stop()


def digits(**change: Any) -> bytes:
    inp = {"name": "INPUT", "datatype": "FP32", "shape": [1, 64], "data": [1.0] * 64}
    inp.update(change)
    return json.dumps({"inputs": [inp]}).encode()


def raw_http(gw: GatewayProcess, head: bytes, body: bytes = b"", pause: float = 0.0) -> int:
    """Send bytes as they are (what an HTTP client library would refuse to send)."""
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as sock:
        sock.sendall(head + body)
        if pause:
            time.sleep(pause)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ", 2)[1]) if data else 0


def post(
    path: str = "/v2/models/digits/infer", body: bytes = b"", **headers: str
) -> Callable[[GatewayProcess], int]:
    def run(gw: GatewayProcess) -> int:
        hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
        key = hdrs.pop("key", KEY)
        return call(gw.http_url + path, body, key if key else None, headers=hdrs, method="POST")[0]

    return run


def raw(head: str, body: bytes = b"", pause: float = 0.0) -> Callable[[GatewayProcess], int]:
    def run(gw: GatewayProcess) -> int:
        return raw_http(gw, head.encode("latin-1"), body, pause)

    return run


def stalled_after_a_request(gw: GatewayProcess) -> int:
    """A keep-alive connection: one whole request, then half the headers of the next."""
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as sock:
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        first = sock.recv(4096)
        assert first.startswith(b"HTTP/1.1 200"), first
        time.sleep(0.3)  # the connection sits idle first (the pipelined case is its own)
        sock.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nAuthoriz")
        data = sock.recv(4096)
    return int(data.split(b" ", 2)[1]) if data else 0


def _infer_head(extra: str, length: int) -> str:
    return (
        "POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    )


GOOD = digits()
CASES: list[tuple[str, Callable[[GatewayProcess], int], int]] = [
    ("malformed json", post(body=b'{"inputs": [{"name": "INPUT",'), 400),
    ("json array", post(body=b"[1, 2, 3]"), 400),
    ("not utf-8", post(body=b"\xff\xfe{}"), 400),
    ("no inputs", post(body=b'{"outputs": []}'), 400),
    ("unknown input", post(body=digits(name="PIXELS")), 400),
    ("wrong datatype", post(body=digits(datatype="INT32")), 400),
    ("wrong rank", post(body=digits(shape=[64])), 400),
    ("wrong dimension", post(body=digits(shape=[1, 63], data=[1.0] * 63)), 400),
    ("too few elements", post(body=digits(data=[1.0] * 10)), 400),
    ("strings for FP32", post(body=digits(data=["x"] * 64)), 400),
    ("negative dimension", post(body=digits(shape=[-1, 64])), 400),
    (
        "binary size mismatch",
        post(
            body=json.dumps(
                {
                    "inputs": [
                        {
                            "name": "INPUT",
                            "datatype": "FP32",
                            "shape": [1, 64],
                            "parameters": {"binary_data_size": 12},
                        }
                    ]
                }
            ).encode()
            + b"\0" * 12,
            Inference_Header_Content_Length="100",
        ),
        400,
    ),
    ("shared memory", post(body=digits(parameters={"shared_memory_region": "r"})), 400),
    (
        "unknown output",
        post(body=json.dumps({**json.loads(GOOD), "outputs": [{"name": "X"}]}).encode()),
        400,
    ),
    ("oversized body", post(body=b"[" + b"1.0," * (MAX_BYTES // 4) + b"1]"), 413),
    (
        "oversized chunked body",
        raw(
            "POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            f"Authorization: Bearer {KEY}\r\n\r\n",
            b"".join(b"%x\r\n%s\r\n" % (4096, b"1" * 4096) for _ in range(MAX_BYTES // 4096 + 2))
            + b"0\r\n\r\n",
        ),
        413,
    ),
    (
        "slow client",
        raw(_infer_head(f"Authorization: Bearer {KEY}\r\n", 1000), b'{"inputs"', pause=2.0),
        408,
    ),
    (
        "headers never finished",
        raw("POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nAuthorization: Bear"),
        408,
    ),
    ("headers trickle in", raw("POST /v2/models/digits/infer HTTP/1.1\r\n", b"Ho", 0.3), 408),
    ("headers stall on a kept-alive connection", stalled_after_a_request, 408),
    ("gzip body", post(body=GOOD, Content_Encoding="gzip"), 415),
    ("not licensed model", post("/v2/models/identity/infer", GOOD), 403),
    ("licensed but not served", post("/v2/models/ghost/infer", GOOD), 404),
    ("bad version", post("/v2/models/digits/versions/abc/infer", GOOD), 400),
    ("bad model name", post("/v2/models/-x/infer", GOOD), 400),
    ("GET on infer", lambda gw: call(f"{gw.http_url}/v2/models/digits/infer", key=KEY)[0], 405),
    ("no key", post(body=GOOD, key=""), 401),
    ("wrong key", post(body=GOOD, key="x" * 30), 401),
    ("basic auth", post(body=GOOD, key="", Authorization="Basic " + KEY), 401),
    ("key with spaces", post(body=GOOD, key="", Authorization=f"Bearer {KEY} extra"), 401),
    ("key with tab", raw(_infer_head(f"Authorization: Bearer {KEY}\tX\r\n", len(GOOD)), GOOD), 401),
    ("key with quote", post(body=GOOD, key="", X_API_Key=KEY + '"'), 401),
    ("two keys", post(body=GOOD, X_API_Key=KEY), 401),
    (
        "latin-1 bytes in key",
        raw(_infer_head(f"Authorization: Bearer {KEY}\xe9\xff\r\n", len(GOOD)), GOOD),
        401,
    ),
    (
        "header injection CRLF",
        raw(_infer_head(f"Authorization: Bearer {KEY}\rX-Tenant: other\r\n", len(GOOD)), GOOD),
        400,
    ),
    ("NUL in key", raw(_infer_head(f"Authorization: Bearer {KEY}\x00\r\n", len(GOOD)), GOOD), 400),
    (
        "huge header",
        raw(_infer_head(f"Authorization: Bearer {'a' * 20000}\r\n", len(GOOD)), GOOD),
        400,
    ),
    ("repository control", post("/v2/repository/models/digits/unload", b"{}"), 403),
    ("shared memory register", post("/v2/systemsharedmemory/region/r/register", b"{}"), 403),
    ("trace settings", post("/v2/trace/setting", b"{}"), 403),
    ("model config", lambda gw: call(f"{gw.http_url}/v2/models/digits/config", key=KEY)[0], 403),
    ("unknown path", lambda gw: call(f"{gw.http_url}/admin", key=KEY)[0], 404),
]


@pytest.mark.parametrize(("name", "send", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_and_audited(
    gw: GatewayProcess, name: str, send: Callable[[GatewayProcess], int], expected: int
) -> None:
    count = len([r for r in gw.audit_lines() if r["type"] == "request"])
    assert send(gw) == expected
    records = gw.wait_audit(
        lambda lines: len([r for r in lines if r["type"] == "request"]) >= count + 1
    )
    mine = [r for r in records if r["type"] == "request"][count:]
    assert len(mine) == 1, mine
    assert mine[0]["status"] == expected
    assert mine[0]["decision"] in ("reject", "deny")
    assert mine[0]["reason"]


def test_client_leaving_half_way_through_its_headers_is_audited(gw: GatewayProcess) -> None:
    count = len([r for r in gw.audit_lines() if r["type"] == "request"])
    with socket.create_connection(("127.0.0.1", gw.http_port), timeout=10) as sock:
        sock.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\n")
        time.sleep(0.2)
    records = gw.wait_audit(
        lambda lines: len([r for r in lines if r["type"] == "request"]) >= count + 1
    )
    mine = [r for r in records if r["type"] == "request"][count:]
    assert [(r["route"], r["status"], r["decision"]) for r in mine] == [
        ("incomplete_headers", 400, "reject")
    ]


def test_gateway_still_serves_and_no_quota_was_used(
    gw: GatewayProcess, triton_server: TritonServer
) -> None:
    before = triton_success_count(triton_server.http_url, "digits")
    status, _, body = call(f"{gw.http_url}/v2/models/digits/infer", digits_body(), KEY)
    assert status == 200, body  # the second of a budget of two
    assert triton_success_count(triton_server.http_url, "digits") == before + 1
    assert triton_server.model_ready("digits")  # the unload attempt did nothing
    status, _, body = call(f"{gw.http_url}/v2/models/digits/infer", digits_body(), KEY)
    assert status == 429
    assert gw.metric("modelseal_gateway_auth_failures_total") >= 7
    assert gw.running


def test_unauthorized_answers_are_all_alike(gw: GatewayProcess) -> None:
    answers = {
        call(f"{gw.http_url}/v2/models/digits/infer", GOOD, key)[2]
        for key in (None, "y" * 40, "short", KEY + "x")
    }
    assert answers == {b'{"error": "missing or invalid API key"}'}
