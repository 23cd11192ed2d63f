"""KServe v2 request checks against model metadata."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelseal.gateway.kserve import (
    BadRequest,
    ModelMeta,
    check_names,
    check_request,
    parse_json,
    split_body,
)

META = ModelMeta.from_json(
    {
        "name": "digits",
        "versions": ["1", "3", "2"],
        "inputs": [
            {"name": "INPUT", "datatype": "FP32", "shape": [-1, 4]},
            {"name": "MASK", "datatype": "BOOL", "shape": [-1, 4]},
        ],
        "outputs": [{"name": "PROBS", "datatype": "FP32", "shape": [-1, 10]}],
    }
)


def req(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "inputs": [
            {
                "name": "INPUT",
                "datatype": "FP32",
                "shape": [2, 4],
                "data": [[1, 2.5, 3, 4], [5, 6, 7, 8]],
            },
            {"name": "MASK", "datatype": "BOOL", "shape": [2, 4], "data": [True] * 8},
        ]
    }
    base.update(over)
    return base


def test_good_requests() -> None:
    assert check_request(req(), META, 0) is None
    outs = check_request(
        req(outputs=[{"name": "PROBS", "parameters": {"classification": 3}}], id="r1"), META, 0
    )
    assert outs == [("PROBS", 3)]
    binary = req()
    binary["inputs"][0] = {
        "name": "INPUT",
        "datatype": "FP32",
        "shape": [1, 4],
        "parameters": {"binary_data_size": 16},
    }
    binary["inputs"][1]["shape"] = [1, 4]
    binary["inputs"][1]["data"] = [False] * 4
    assert check_request(binary, META, 16) is None
    assert META.served_version == "3"
    assert META.output_types == [("PROBS", "FP32")]


def _inp(i: int, **change: Any) -> dict[str, Any]:
    r = req()
    r["inputs"][i].update(change)
    return r


BAD: list[tuple[str, dict[str, Any], int, str]] = [
    ("no inputs", req(inputs=[]), 0, "non-empty"),
    ("inputs not list", req(inputs={}), 0, "non-empty"),
    ("input not object", req(inputs=[1]), 0, "object"),
    ("no name", _inp(0, name=None), 0, "name"),
    ("unknown input", _inp(0, name="X"), 0, "no input"),
    ("duplicate", req(inputs=[req()["inputs"][0], req()["inputs"][0]]), 0, "twice"),
    ("missing input", req(inputs=[req()["inputs"][0]]), 0, "missing"),
    ("datatype", _inp(0, datatype="INT32"), 0, "datatype"),
    ("shape type", _inp(0, shape="2,4"), 0, "list of integers"),
    ("shape bool", _inp(0, shape=[True, 4]), 0, "list of integers"),
    ("rank", _inp(0, shape=[8]), 0, "rank"),
    ("dim", _inp(0, shape=[2, 5]), 0, "does not match"),
    ("negative", _inp(0, shape=[-2, 4]), 0, "does not match"),
    ("count", _inp(0, data=[1, 2, 3]), 0, "elements"),
    ("element type", _inp(0, data=["a"] * 8), 0, "datatype"),
    ("bool for float", _inp(0, data=[True] * 8), 0, "datatype"),
    ("int for bool", _inp(1, data=[1] * 8), 0, "datatype"),
    ("ragged", _inp(0, data=[[1, 2, 3, 4], 5, 6, 7, 8]), 0, "mixes"),
    (
        "no data",
        _inp(0, data=None)
        | {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [2, 4]}, req()["inputs"][1]]},
        0,
        "no data",
    ),
    ("both", _inp(0, parameters={"binary_data_size": 32}), 32, "both"),
    ("binary size", _inp(0, parameters={"binary_data_size": 3}), 0, "binary"),
    ("binary total", req(), 5, "binary data is 5 bytes"),
    ("shm", _inp(0, parameters={"shared_memory_region": "x"}), 0, "shared memory"),
    ("params type", _inp(0, parameters=[1]), 0, "parameters must be"),
    ("id type", req(id=5), 0, "id"),
    ("outputs type", req(outputs={}), 0, "outputs must be a list"),
    ("output unknown", req(outputs=[{"name": "X"}]), 0, "no output"),
    ("output no name", req(outputs=[{}]), 0, "name"),
    (
        "classification",
        req(outputs=[{"name": "PROBS", "parameters": {"classification": -1}}]),
        0,
        "classification",
    ),
]


@pytest.mark.parametrize(("name", "body", "binary", "needle"), BAD, ids=[b[0] for b in BAD])
def test_bad_requests(name: str, body: dict[str, Any], binary: int, needle: str) -> None:
    with pytest.raises(BadRequest, match=needle):
        check_request(body, META, binary)


def test_parse_and_split() -> None:
    assert parse_json(b'{"a": 1}') == {"a": 1}
    # an integer past 64 bits is read as the standard library reads it (orjson: a float)
    big = b'{"id": 123456789012345678901234567890}'
    assert parse_json(big) == json.loads(big)
    assert isinstance(parse_json(big)["id"], int)
    for bad in (b"[1]", b"{", b"\xff"):
        with pytest.raises(BadRequest):
            parse_json(bad)
    body = json.dumps(req()).encode()
    assert split_body(body + b"BIN", str(len(body))) == (body, b"BIN")
    assert split_body(body, None) == (body, b"")
    for bad in ("x", "-1", str(len(body) + 1)):
        with pytest.raises(BadRequest):
            split_body(body, bad)


def test_names() -> None:
    check_names("digits", "")
    check_names("my_model.v2-x", "12")
    for model, version in (("-x", ""), ("a/b", ""), ("", ""), ("m", "v1"), ("m", "1.0")):
        with pytest.raises(BadRequest):
            check_names(model, version)
