"""The real Triton test server: the pytriton-bundled tritonserver on CPU, Python backend."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from modelseal_devenv.common import StartError
from modelseal_devenv.models import (
    DIGITS_INPUT,
    DIGITS_LABELS,
    DIGITS_OUTPUT,
    IDENTITY_INPUT,
    IDENTITY_OUTPUT,
    build_digits_model,
    build_identity_model,
    sample_digits,
)
from modelseal_devenv.triton import TritonServer

pytestmark = pytest.mark.integration

N_SAMPLES = 50
MIN_ACCURACY = 0.9


def filesystem_type(path: Path) -> str:
    """The type of the file system that holds `path` (longest mount point prefix)."""
    target = os.path.realpath(path)
    best, fstype = "", ""
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            mount_point = fields[4].replace("\\040", " ")
            fs = fields[fields.index("-") + 1]
            inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
            if inside and len(mount_point) >= len(best):
                best, fstype = mount_point, fs
    return fstype


def test_model_repository_is_on_tmpfs(
    triton_server: TritonServer, triton_model_repository: Path
) -> None:
    assert triton_server.model_repository == triton_model_repository
    assert filesystem_type(triton_model_repository) == "tmpfs"
    assert (triton_model_repository / "digits" / "1" / "coef.npy").is_file()


def test_server_metadata_and_endpoints(triton_server: TritonServer) -> None:
    assert triton_server.version.count(".") == 2, triton_server.version
    for url in (triton_server.http_url, triton_server.metrics_url):
        assert url.startswith("http://127.0.0.1:")
    assert triton_server.grpc_url.startswith("127.0.0.1:")
    meta = triton_server.metadata()
    assert meta["version"] == triton_server.version
    assert "model_repository" in meta["extensions"]
    assert "classification" in meta["extensions"]
    assert triton_server.model_ready("digits")
    with urllib.request.urlopen(triton_server.metrics_url, timeout=10) as resp:  # noqa: S310
        metrics = resp.read().decode()
    assert "nv_inference_request_success" in metrics


def test_digits_over_http(triton_server: TritonServer) -> None:
    images, labels = sample_digits(N_SAMPLES)
    with httpclient.InferenceServerClient(triton_server.http_address) as client:
        assert client.is_model_ready("digits")
        tensor = httpclient.InferInput(DIGITS_INPUT, list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        result = client.infer(
            "digits", [tensor], outputs=[httpclient.InferRequestedOutput(DIGITS_OUTPUT)]
        )
        probs = result.as_numpy(DIGITS_OUTPUT)
        assert probs is not None
        assert probs.shape == (N_SAMPLES, 10)
        assert probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
        accuracy = float((probs.argmax(axis=1) == labels).mean())
        assert accuracy > MIN_ACCURACY, accuracy

        # Triton's classification extension reads labels.txt: "score:index:label", top-k
        top1 = client.infer(
            "digits",
            [tensor],
            outputs=[httpclient.InferRequestedOutput(DIGITS_OUTPUT, class_count=1)],
        ).as_numpy(DIGITS_OUTPUT)
        assert top1 is not None
        assert top1.shape == (N_SAMPLES, 1)
        for row, expected in zip(top1[:, 0], probs.argmax(axis=1), strict=True):
            _score, index, label = row.decode().split(":")
            assert int(index) == expected
            assert label == DIGITS_LABELS[expected]


def test_digits_over_grpc(triton_server: TritonServer) -> None:
    images, labels = sample_digits(N_SAMPLES)
    with grpcclient.InferenceServerClient(triton_server.grpc_url) as client:
        assert client.is_server_ready()
        tensor = grpcclient.InferInput(DIGITS_INPUT, list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        result = client.infer("digits", [tensor])
        probs = result.as_numpy(DIGITS_OUTPUT)
        assert probs is not None
        accuracy = float((probs.argmax(axis=1) == labels).mean())
        assert accuracy > MIN_ACCURACY, accuracy

        # a request of the wrong shape is refused by Triton, not by the model
        bad = grpcclient.InferInput(DIGITS_INPUT, [1, 63], "FP32")
        bad.set_data_from_numpy(np.zeros((1, 63), dtype=np.float32))
        with pytest.raises(InferenceServerException):
            client.infer("digits", [bad])


def test_explicit_load_and_unload(triton_server: TritonServer) -> None:
    """Repository API: identity is not loaded at start; load, serve, unload, refuse."""
    assert not triton_server.model_ready("identity")
    data = np.arange(12, dtype=np.float32).reshape(3, 4)
    with httpclient.InferenceServerClient(triton_server.http_address) as client:
        client.load_model("identity")
        try:
            assert client.is_model_ready("identity")
            tensor = httpclient.InferInput(IDENTITY_INPUT, list(data.shape), "FP32")
            tensor.set_data_from_numpy(data)
            echoed = client.infer("identity", [tensor]).as_numpy(IDENTITY_OUTPUT)
            np.testing.assert_array_equal(echoed, data)
            index = {m["name"]: m.get("state") for m in triton_server.repository_index()}
            assert index == {"digits": "READY", "identity": "READY"}
        finally:
            triton_server.unload_model("identity")
        assert not client.is_model_ready("identity")
        with pytest.raises(InferenceServerException):
            client.infer("identity", [tensor])
        # and back again through this module's own helper
        triton_server.load_model("identity")
        assert triton_server.model_ready("identity")
        triton_server.unload_model("identity")
        assert not triton_server.model_ready("identity")
    assert triton_server.model_ready("digits")


def test_model_load_failure_is_a_start_error(tmp_path: Path, tmpfs_path: Path) -> None:
    """A model that cannot load makes start() fail fast with Triton's message in the error."""
    model_dir = build_digits_model(tmpfs_path, "broken")
    (model_dir / "1" / "model.py").write_text("raise RuntimeError('boom-from-model')\n")
    server = TritonServer(
        tmpfs_path,
        model_control_mode="explicit",
        load_models=["broken"],
        log_dir=tmp_path,
        startup_timeout=60,
    )
    with pytest.raises(StartError, match="boom-from-model"):
        server.start()
    assert not server.running


def test_restricted_model_control_and_kill_then_start(tmp_path: Path, tmpfs_path: Path) -> None:
    """Repository API behind a header; kill -9 then start again on the same ports."""
    build_digits_model(tmpfs_path, "digits")
    build_identity_model(tmpfs_path, "identity")
    header = ("modelseal-control-key", "k-123")
    server = TritonServer(
        tmpfs_path,
        model_control_mode="explicit",
        load_models=["digits"],
        restrict_model_control=header,
        log_dir=tmp_path,
    )
    with server:
        http_url = server.http_url
        with httpclient.InferenceServerClient(server.http_address) as client:
            with pytest.raises(InferenceServerException, match=r"\[403\].*restricted"):
                client.load_model("identity")
            client.load_model("identity", headers=dict([header]))
            assert client.is_model_ready("identity")  # inference side is not restricted
        with grpcclient.InferenceServerClient(server.grpc_url) as grpc:
            with pytest.raises(InferenceServerException, match="restricted"):
                grpc.unload_model("identity")
            # over gRPC Triton expects the key as metadata "triton-grpc-protocol-<key>"
            grpc.unload_model("identity", headers={f"triton-grpc-protocol-{header[0]}": header[1]})
        server.wait_model_unloaded("identity")
        server.load_model("identity")  # the helper sends the header itself
        assert server.model_ready("identity")

        assert list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
        server.kill()
        assert not server.running
        assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
        server.start()
        assert server.http_url == http_url
        assert server.model_ready("digits")
        assert not server.model_ready("identity")  # explicit mode: only --load-model ones
    assert not server.running
    assert not list(Path("/dev/shm").glob(f"{server.shm_prefix}*"))
