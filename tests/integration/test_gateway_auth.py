"""Keys and licenses follow their files without a restart; broken files fail closed;
gRPC authenticates the same way and refuses what is not offered."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import grpc
import pytest
import tritonclient.grpc as grpcclient
from bench.gateway.harness import (
    GatewayProcess,
    call,
    digits_body,
    license_doc,
    write_json_atomic,
    write_keys,
    write_license,
)
from tritonclient.grpc import service_pb2 as pb
from tritonclient.utils import InferenceServerException

from modelseal.gateway.keys import hash_key_scrypt, hash_key_sha256
from modelseal_devenv.models import sample_digits
from modelseal_devenv.triton import TritonServer

pytestmark = pytest.mark.integration

OLD = "auth-old-key-0123456789abcdef"
NEW = "auth-new-key-0123456789abcdef"
HUMAN = "auth-scrypt-key-0123456789"


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, triton_server: TritonServer
) -> Iterator[GatewayProcess]:
    tmp = tmp_path_factory.mktemp("auth")
    write_license(
        tmp / "license.json",
        license_doc("auth", ["digits"], quotas={"rate_per_second": 2, "burst": 2}),
    )
    write_keys(tmp / "keys.json", {"old": ("auth", OLD)})
    gateway = GatewayProcess(
        tmp, triton_http_url=triton_server.http_url, triton_grpc_url=triton_server.grpc_url
    ).start()
    yield gateway
    gateway.stop()


def infer(gw: GatewayProcess, key: str) -> int:
    return call(f"{gw.http_url}/v2/models/digits/infer", digits_body(), key)[0]


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.1)


def test_keys_reload_and_scrypt(gw: GatewayProcess) -> None:
    assert infer(gw, OLD) == 200
    write_json_atomic(
        gw.keys_file,
        {
            "consumers": [
                {
                    "id": "new",
                    "tenant": "auth",
                    "hash": hash_key_sha256(NEW),
                },
                {"id": "human", "tenant": "auth", "hash": hash_key_scrypt(HUMAN, n=4096)},
            ]
        },
    )
    eventually(lambda: infer(gw, OLD) == 401)
    time.sleep(1.1)  # the bucket refills
    assert infer(gw, NEW) == 200
    assert infer(gw, HUMAN) == 200
    records = gw.wait_audit(lambda lines: any(r.get("consumer") == "human" for r in lines))
    assert any(r.get("event") == "config_loaded" and r.get("file") == "api_keys" for r in records)


def test_rate_limit_answers_retry_after(gw: GatewayProcess) -> None:
    time.sleep(1.1)
    codes = []
    retry = None
    for _ in range(4):
        status, headers, body = call(f"{gw.http_url}/v2/models/digits/infer", digits_body(), NEW)
        codes.append(status)
        if status == 429:
            retry = headers.get("Retry-After")
            assert json.loads(body)["limit"] == "rate"
    assert codes[:2] == [200, 200] and 429 in codes
    assert retry == "1"


def test_broken_files_fail_closed_then_recover(gw: GatewayProcess) -> None:
    good = gw.license_file.read_text()
    gw.license_file.write_text('{"tenant": "auth", "models": ["digits"], "revokd": true}')
    eventually(lambda: call(f"{gw.http_url}/v2/models/digits/infer", digits_body(), NEW)[0] == 503)
    _, _, body = call(f"{gw.http_url}/v2/models/digits/infer", digits_body(), NEW)
    assert "revokd" in json.loads(body)["error"]
    assert gw.metric("modelseal_gateway_config_state", file="license") == 0
    gw.license_file.write_text(good)
    time.sleep(1.1)
    eventually(lambda: infer(gw, NEW) == 200)


def test_revoked_and_expired_licenses_refuse(gw: GatewayProcess) -> None:
    good = json.loads(gw.license_file.read_text())
    write_license(gw.license_file, {**good["licenses"][0], "revoked": True})
    eventually(lambda: infer(gw, NEW) == 403)
    _, _, body = call(f"{gw.http_url}/v2/models/digits/infer", digits_body(), NEW)
    assert "revoked" in json.loads(body)["error"]
    expired = {**good["licenses"][0], "valid": {"not_after": "2020-01-01T00:00:00Z"}}
    write_license(gw.license_file, expired)
    eventually(
        lambda: b"expired" in call(f"{gw.http_url}/v2/models/digits/infer", digits_body(), NEW)[2]
    )
    write_json_atomic(gw.license_file, good)
    time.sleep(1.1)
    eventually(lambda: infer(gw, NEW) == 200)


def test_grpc_auth_and_refusals(gw: GatewayProcess) -> None:
    time.sleep(1.1)
    client = grpcclient.InferenceServerClient(gw.grpc_target)
    images, _ = sample_digits(1)
    inp = grpcclient.InferInput("INPUT", [1, 64], "FP32")
    inp.set_data_from_numpy(images)
    try:
        assert client.is_server_live()
        with pytest.raises(InferenceServerException, match=r"UNAUTHENTICATED|API key"):
            client.infer("digits", [inp], headers={"authorization": "Bearer wrong-key-0123456789"})
        result = client.infer("digits", [inp], headers={"x-api-key": NEW})
        assert result.as_numpy("PROBABILITIES").shape == (1, 10)
        meta = client.get_model_metadata("digits", headers={"x-api-key": NEW})
        assert meta.name == "digits"
        with pytest.raises(InferenceServerException, match="not offered"):
            client.unload_model("digits", headers={"x-api-key": NEW})
        with pytest.raises(InferenceServerException, match="not offered"):
            client.get_model_repository_index(headers={"x-api-key": NEW})
        with pytest.raises(InferenceServerException, match=r"INVALID_ARGUMENT|shape"):
            bad = grpcclient.InferInput("INPUT", [1, 63], "FP32")
            bad.set_data_from_numpy(images[:, :63])
            client.infer("digits", [bad], headers={"x-api-key": NEW})
    finally:
        client.close()
    # the rate limit over gRPC: RESOURCE_EXHAUSTED with retry-after
    channel = grpc.insecure_channel(gw.grpc_target)
    stub = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=pb.ModelInferRequest.SerializeToString,
        response_deserializer=pb.ModelInferResponse.FromString,
    )
    req = pb.ModelInferRequest(model_name="digits")
    req.inputs.add(name="INPUT", datatype="FP32", shape=[1, 64])
    req.raw_input_contents.append(images.tobytes())
    codes = []
    for _ in range(4):
        try:
            stub(req, metadata=(("x-api-key", NEW),))
            codes.append("OK")
        except grpc.RpcError as exc:
            codes.append(exc.code().name)
            if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED:
                assert "limit=rate" in exc.details()
                assert dict(exc.trailing_metadata())["retry-after"] == "1"
    channel.close()
    assert "RESOURCE_EXHAUSTED" in codes
    records = gw.wait_audit(lambda lines: sum(r.get("proto") == "grpc" for r in lines) >= 8)
    refused = [r for r in records if r.get("proto") == "grpc" and r["status"] == 403]
    assert {r["route"] for r in refused} >= {"RepositoryModelUnload", "RepositoryIndex"}
