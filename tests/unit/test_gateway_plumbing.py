"""Gateway plumbing: followed files, the RESP parser, the upstream pool, gRPC helpers."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from aiohttp import web
from tritonclient.grpc import service_pb2 as pb

from modelseal.gateway.grpc_front import (
    check_grpc_request,
    decode_bytes_tensor,
    encode_bytes_tensor,
    restrict_grpc_request,
    restrict_grpc_response,
)
from modelseal.gateway.kserve import BadRequest, ModelMeta
from modelseal.gateway.reload import WatchedFile
from modelseal.gateway.upstream import HttpPool
from modelseal.quota.license import OutputFilter
from modelseal.quota.output import PlannedOutput
from modelseal.store.resp import RespError, RespUnavailable, _Incomplete, _parse, encode
from modelseal.testing import settings_for_tests


def test_watched_file(tmp_path: Path) -> None:
    path = tmp_path / "f.json"
    watched: WatchedFile[int] = WatchedFile(path, lambda b: int(b), "number file")
    change = watched.poll()
    assert change is not None and change.what == "missing" and watched.value is None
    assert watched.poll() is None  # still missing: nothing new
    path.write_text("41")
    change = watched.poll()
    assert change is not None and change.what == "loaded" and watched.value == 41
    assert watched.poll() is None
    tmp = tmp_path / "new"
    tmp.write_text("not a number")
    os.replace(tmp, path)  # how a ConfigMap mount changes
    change = watched.poll()
    assert change is not None and change.what == "invalid"
    assert watched.value is None and watched.error  # fail closed, never the stale value
    tmp.write_text("42")
    os.replace(tmp, path)
    assert watched.poll() is not None and watched.value == 42


def test_resp_encode_and_parse() -> None:
    assert (
        encode(("SET", "k", 5, b"\x00"))
        == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n5\r\n$1\r\n\x00\r\n"
    )
    buf = bytearray(b"*3\r\n:1\r\n$3\r\nabc\r\n*2\r\n:-2\r\n$-1\r\n+OK\r\n-ERR bad\r\n")
    value, pos = _parse(buf, 0)
    assert value == [1, b"abc", [-2, None]]
    value, pos = _parse(buf, pos)
    assert value == "OK"
    value, pos = _parse(buf, pos)
    assert isinstance(value, RespError) and str(value) == "ERR bad"
    assert pos == len(buf)
    for partial in (b"*2\r\n:1\r\n", b"$5\r\nab", b":12", b"*2\r\n:1"):
        with pytest.raises(_Incomplete):
            _parse(bytearray(partial), 0)
    with pytest.raises(RespUnavailable):
        _parse(bytearray(b"?x\r\n"), 0)


async def test_http_pool_keeps_alive_and_recovers(unused_tcp_port: int) -> None:
    seen: list[str] = []

    async def echo(request: web.Request) -> web.Response:
        seen.append(request.headers.get("X-N", ""))
        body = await request.read()
        return web.Response(
            body=body[::-1],
            content_type="application/json",
            headers={"Inference-Header-Content-Length": "1"},
        )

    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        await resp.write(b"ab")
        await resp.write(b"cd")
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/chunked", chunked)
    runner = web.AppRunner(app, keepalive_timeout=0.2)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    pool = HttpPool("127.0.0.1", unused_tcp_port, 4)
    try:
        resp = await pool.request("POST", "/echo", b"abc", {"X-N": "1"})
        assert (resp.status, resp.body, resp.content_type, resp.header_length) == (
            200,
            b"cba",
            "application/json",
            "1",
        )
        results = await asyncio.gather(
            *(pool.request("POST", "/echo", b"x", {"X-N": str(i)}) for i in range(10))
        )
        assert all(r.body == b"x" for r in results)
        assert len(pool._idle) <= 4
        await asyncio.sleep(0.5)  # the server closes idle connections: the pool reopens
        assert (await pool.request("POST", "/echo", b"zz", None)).body == b"zz"
        assert (await pool.request("GET", "/chunked", None, None)).body == b"abcd"
        assert (await pool.request("GET", "/missing", None, None)).status == 404
    finally:
        pool.close()
        await runner.cleanup()
    with pytest.raises(OSError):
        await HttpPool("127.0.0.1", unused_tcp_port, 1).request("GET", "/", None, None)


META = ModelMeta.from_json(
    {
        "name": "m",
        "versions": ["1"],
        "inputs": [
            {"name": "X", "datatype": "FP32", "shape": [-1, 2]},
            {"name": "S", "datatype": "BYTES", "shape": [-1]},
        ],
        "outputs": [{"name": "P", "datatype": "FP32", "shape": [-1, 5]}],
    }
)


def grpc_req(raw: bool = True) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    x = req.inputs.add(name="X", datatype="FP32", shape=[1, 2])
    s = req.inputs.add(name="S", datatype="BYTES", shape=[2])
    if raw:
        req.raw_input_contents.append(b"\0" * 8)
        req.raw_input_contents.append(encode_bytes_tensor([b"a", b"bc"]))
    else:
        x.contents.fp32_contents.extend([1.0, 2.0])
        s.contents.bytes_contents.extend([b"a", b"bc"])
    return req


def test_bytes_tensor_round_trip() -> None:
    items = [b"", b"x", b"hello" * 10]
    assert decode_bytes_tensor(encode_bytes_tensor(items)) == items
    for bad in (b"\x05\x00\x00\x00ab", b"\x01\x00"):
        with pytest.raises(BadRequest):
            decode_bytes_tensor(bad)


def test_grpc_request_checks() -> None:
    assert check_grpc_request(grpc_req(), META) is None
    assert check_grpc_request(grpc_req(raw=False), META) is None
    req = grpc_req()
    out = req.outputs.add(name="P")
    out.parameters["classification"].int64_param = 7
    assert check_grpc_request(req, META) == [("P", 7)]

    def broken(change: str) -> pb.ModelInferRequest:
        r = grpc_req()
        if change == "size":
            r.raw_input_contents[0] = b"\0" * 7
        elif change == "count":
            r.raw_input_contents[1] = encode_bytes_tensor([b"a"])
        elif change == "dtype":
            r.inputs[0].datatype = "INT8"
        elif change == "shape":
            r.inputs[0].shape[1] = 3
        elif change == "missing":
            del r.inputs[1]
            del r.raw_input_contents[1]
        elif change == "raw count":
            del r.raw_input_contents[1]
        elif change == "shm":
            r.inputs[0].parameters["shared_memory_region"].string_param = "x"
        elif change == "output":
            r.outputs.add(name="nope")
        elif change == "empty":
            r.ClearField("inputs")
        return r

    for change in (
        "size",
        "count",
        "dtype",
        "shape",
        "missing",
        "raw count",
        "shm",
        "output",
        "empty",
    ):
        with pytest.raises(BadRequest):
            check_grpc_request(broken(change), META)
    r = grpc_req(raw=False)
    r.inputs[0].contents.fp32_contents.append(3.0)
    with pytest.raises(BadRequest):
        check_grpc_request(r, META)


def test_grpc_output_policy() -> None:
    req = grpc_req()
    req.outputs.add(name="P")
    forward = pb.ModelInferRequest.FromString(restrict_grpc_request(req, [PlannedOutput("P", 2)]))
    assert [(o.name, o.parameters["classification"].int64_param) for o in forward.outputs] == [
        ("P", 2)
    ]

    resp = pb.ModelInferResponse(model_name="m", model_version="1", id="r")
    resp.outputs.add(name="P", datatype="BYTES", shape=[1, 2])
    resp.raw_output_contents.append(encode_bytes_tensor([b"0.9:3:three", b"0.1:1:one"]))
    resp.outputs.add(name="RAW", datatype="FP32", shape=[1, 5])
    resp.raw_output_contents.append(b"\0" * 20)
    raw, dropped = restrict_grpc_response(
        resp.SerializeToString(), OutputFilter("labels-only", 2), [PlannedOutput("P", 2)]
    )
    out = pb.ModelInferResponse.FromString(raw)
    assert dropped == ["RAW"]
    assert [o.name for o in out.outputs] == ["P"] and out.id == "r"
    assert decode_bytes_tensor(out.raw_output_contents[0]) == [b"three", b"one"]
    raw, dropped = restrict_grpc_response(
        resp.SerializeToString(), OutputFilter("top-k", 1), [PlannedOutput("P", 1)]
    )
    assert dropped == ["P", "RAW"]  # two classes where one was allowed: withheld


@pytest.mark.parametrize(
    ("over", "needs"),
    [
        ({"quota_store": "embedded", "audit_sink": "file"}, "quota_store=redis"),
        ({"quota_store": "redis", "audit_sink": "stdout"}, "audit_sink=file or webhook"),
    ],
)
def test_workers_refuse_what_would_break_a_guarantee(
    tmp_path: Path, over: dict[str, str], needs: str
) -> None:
    from modelseal.gateway.main import check_workers

    settings = settings_for_tests(tmp_path, gateway_workers=2, **over)
    with pytest.raises(ValueError, match=needs):
        check_workers(settings)
    check_workers(settings_for_tests(tmp_path, gateway_workers=1, **over))


def test_worker_settings(tmp_path: Path) -> None:
    from modelseal.gateway.main import worker_settings

    base = settings_for_tests(
        tmp_path,
        quota_store="redis",
        gateway_workers=3,
        gateway_instance="gw",
        gateway_metrics_port=9000,
        audit_state_file=tmp_path / "chain.json",
    )
    w2 = worker_settings(base, 2, {"http": 8123, "grpc": 8124})
    assert (w2.gateway_http_port, w2.gateway_grpc_port, w2.gateway_metrics_port) == (
        8123,
        8124,
        9002,
    )
    assert w2.gateway_instance == "gw-w2"
    assert w2.audit_file == tmp_path / "audit-w2.jsonl"
    assert w2.audit_state_file == tmp_path / "chain-w2.json"


@pytest.mark.parametrize(
    "raw",
    [
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n",
    ],
)
def test_upstream_response_parsed_from_any_split(raw: bytes) -> None:
    """Triton's answer may arrive in pieces of any size: nothing before it is whole, and
    exactly the response is taken from the buffer (the rest stays)."""
    from modelseal.gateway.upstream import _parse_response

    for cut in range(len(raw)):
        assert _parse_response(bytearray(raw[:cut])) is None
    buf = bytearray(raw + b"HTTP/1.1")
    parsed = _parse_response(buf)
    assert parsed is not None
    resp, keep = parsed
    assert (resp.status, resp.body, keep) == (200, b"abcd", True)
    assert buf == b"HTTP/1.1"
