"""The output policy cuts what the real digits classifier returns, over HTTP and gRPC,
whatever the client asks; a license change applies without a restart."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from bench.gateway.harness import (
    GatewayProcess,
    call,
    license_doc,
    write_keys,
    write_license,
)

from modelseal_devenv.models import DIGITS_LABELS, sample_digits
from modelseal_devenv.triton import TritonServer

pytestmark = pytest.mark.integration

KEYS = {
    "full": "policy-full-key-0123456789",
    "topk": "policy-topk-key-0123456789",
    "labels": "policy-labels-key-0123456789",
}
IMAGES, TRUTH = sample_digits(4)


def licenses(full_mode: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        license_doc("pol-full", ["digits"], output_policy=full_mode),
        license_doc("pol-topk", ["digits"], output_policy={"mode": "top-k", "k": 3}),
        license_doc("pol-labels", ["digits"], output_policy={"mode": "labels-only"}),
    ]


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, triton_server: TritonServer
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("policy")
    write_license(tmp / "license.json", *licenses({"mode": "full"}))
    write_keys(
        tmp / "keys.json",
        {
            "f": ("pol-full", KEYS["full"]),
            "t": ("pol-topk", KEYS["topk"]),
            "l": ("pol-labels", KEYS["labels"]),
        },
    )
    gateway = GatewayProcess(
        tmp, triton_http_url=triton_server.http_url, triton_grpc_url=triton_server.grpc_url
    ).start()
    yield gateway
    gateway.stop()


def infer(gw: GatewayProcess, who: str, **extra: Any) -> dict[str, Any]:
    body = {
        "inputs": [
            {
                "name": "INPUT",
                "datatype": "FP32",
                "shape": [4, 64],
                "data": IMAGES.flatten().tolist(),
            }
        ],
        **extra,
    }
    status, _, raw = call(
        f"{gw.http_url}/v2/models/digits/infer", json.dumps(body).encode(), KEYS[who]
    )
    assert status == 200, raw
    out: dict[str, Any] = json.loads(raw)
    return out


def test_full_returns_scores(gw: GatewayProcess) -> None:
    (out,) = infer(gw, "full")["outputs"]
    assert out["datatype"] == "FP32" and out["shape"] == [4, 10]
    probs = np.array(out["data"], dtype=np.float32).reshape(4, 10)
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert (probs.argmax(axis=1) == TRUTH).all()


def test_top_k_returns_only_k_best_with_labels(gw: GatewayProcess) -> None:
    (out,) = infer(gw, "topk")["outputs"]
    assert out["datatype"] == "BYTES" and out["shape"] == [4, 3]
    rows = [out["data"][i * 3 : (i + 1) * 3] for i in range(4)]
    for row, truth in zip(rows, TRUTH, strict=True):
        scores = [float(e.split(":")[0]) for e in row]
        assert scores == sorted(scores, reverse=True)
        _score, index, label = row[0].split(":")
        assert int(index) == truth and label == DIGITS_LABELS[truth]


def test_top_k_ignores_what_the_client_asks(gw: GatewayProcess) -> None:
    asks = [
        {"outputs": [{"name": "PROBABILITIES", "parameters": {"classification": 10}}]},
        {"outputs": [{"name": "PROBABILITIES", "parameters": {"binary_data": True}}]},
        {"outputs": [{"name": "PROBABILITIES"}], "parameters": {"binary_data_output": True}},
    ]
    for extra in asks:
        (out,) = infer(gw, "topk", **extra)["outputs"]
        assert out["datatype"] == "BYTES" and out["shape"] == [4, 3]
    (out,) = infer(
        gw, "topk", outputs=[{"name": "PROBABILITIES", "parameters": {"classification": 2}}]
    )["outputs"]
    assert out["shape"] == [4, 2]  # fewer than k is fine


def test_labels_only_has_no_scores(gw: GatewayProcess) -> None:
    (out,) = infer(gw, "labels")["outputs"]
    assert out["shape"] == [4, 1]
    assert out["data"] == [DIGITS_LABELS[t] for t in TRUTH]


def _grpc_infer(gw: GatewayProcess, who: str, classification: int = 0) -> Any:
    client = grpcclient.InferenceServerClient(gw.grpc_target)
    try:
        inp = grpcclient.InferInput("INPUT", [4, 64], "FP32")
        inp.set_data_from_numpy(IMAGES)
        out = grpcclient.InferRequestedOutput("PROBABILITIES", class_count=classification)
        return client.infer(
            "digits", [inp], outputs=[out], headers={"authorization": f"Bearer {KEYS[who]}"}
        )
    finally:
        client.close()


def test_grpc_policies(gw: GatewayProcess) -> None:
    full = _grpc_infer(gw, "full").as_numpy("PROBABILITIES")
    assert full.shape == (4, 10) and (full.argmax(axis=1) == TRUTH).all()
    topk = _grpc_infer(gw, "topk", classification=10).as_numpy("PROBABILITIES")
    assert topk.shape == (4, 3)
    assert [int(row[0].split(b":")[1]) for row in topk] == list(TRUTH)
    labels = _grpc_infer(gw, "labels").as_numpy("PROBABILITIES")
    assert labels.shape == (4, 1)
    assert [row[0].decode() for row in labels] == [DIGITS_LABELS[t] for t in TRUTH]


def test_license_change_applies_without_restart(gw: GatewayProcess) -> None:
    write_license(gw.license_file, *licenses({"mode": "labels-only", "k": 2}))
    deadline = time.monotonic() + 10
    while True:
        (out,) = infer(gw, "full")["outputs"]
        if out["datatype"] == "BYTES":
            break
        assert time.monotonic() < deadline, "license change not applied"
        time.sleep(0.1)
    assert out["shape"] == [4, 2] and out["data"][0] == DIGITS_LABELS[TRUTH[0]]
    assert ":" not in "".join(out["data"])
    write_license(gw.license_file, *licenses({"mode": "full"}))
