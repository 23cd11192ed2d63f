"""Attacks and faults on the audit trail as deployed (issue 12, Medium 8), against real
gateway processes (``python -m modelseal.gateway``) in front of the real Triton:

* SIGKILL while requests are served and the audit sink is slow: every answered request
  must have its record at the sink (records are durable before the answer leaves);
* the stdout sink across a crash and restart: the chains link, and a line deleted before
  the restart is found;
* truncating a log right after a signed checkpoint is found (the shutdown seal);
* the checkpoint key is rendered for every model's gateway from the control Secret, as a
  file, and never reaches another container, an env value or an argument.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from bench.gateway.harness import (
    HMAC_KEY,
    GatewayProcess,
    digits_body,
    license_doc,
    write_keys,
    write_license,
)
from tritonclient.utils import InferenceServerException

from modelseal.audit.verify import verify_lines
from modelseal.config import Settings
from modelseal.models.spec import parse_model
from modelseal.render import manifests
from modelseal.render.model import render_model
from modelseal_devenv.models import sample_digits
from modelseal_devenv.triton import TritonServer
from tests.attack.conftest import AttackLedger

pytestmark = pytest.mark.integration

KEY = "audit-attack-key-0123456789abcdef"
TENANT = "audit-atk"


class SlowReceiver:
    """The test's own audit webhook: acknowledges each batch after ``delay_s``, keeps the
    lines it acknowledged."""

    def __init__(self, delay_s: float) -> None:
        self.lines: list[bytes] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay_s)
                with outer.lock:
                    outer.lines += body.splitlines()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/audit"

    def __enter__(self) -> SlowReceiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _files(tmp: Path) -> None:
    write_license(tmp / "license.json", license_doc(TENANT, ["digits"]))
    write_keys(tmp / "keys.json", {"c": (TENANT, KEY)})


def _infer(gw: GatewayProcess, request_id: str) -> int:
    body = json.loads(digits_body())
    body["id"] = request_id
    req = urllib.request.Request(  # noqa: S310 - loopback
        f"{gw.http_url}/v2/models/digits/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
            resp.read()
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0  # the gateway died under the request: no answer


def _grpc_infer(client: Any, request_id: str) -> int:
    inp = grpcclient.InferInput("INPUT", [1, 64], "FP32")
    inp.set_data_from_numpy(sample_digits(1)[0].astype(np.float32).reshape(1, 64))
    try:
        client.infer(
            "digits",
            [inp],
            request_id=request_id,
            headers={"authorization": f"Bearer {KEY}"},
            client_timeout=30,
        )
    except InferenceServerException:
        return 0  # refused, or the gateway died under the request
    return 200


def _served_ids(
    gw: GatewayProcess, prefix: str, stop: threading.Event, proto: str = "http"
) -> list[str]:
    served: list[str] = []
    lock = threading.Lock()

    def client(worker: int) -> None:
        n = 0
        grpc_client = grpcclient.InferenceServerClient(gw.grpc_target) if proto == "grpc" else None
        while not stop.is_set():
            rid = f"{prefix}-{worker}-{n}"
            n += 1
            code = _grpc_infer(grpc_client, rid) if grpc_client else _infer(gw, rid)
            if code == 200:
                with lock:
                    served.append(rid)

    with ThreadPoolExecutor(8) as pool:
        for w in range(8):
            pool.submit(client, w)
    return served


def _recorded(lines: list[bytes]) -> set[str]:
    out = set()
    for raw in lines:
        body = json.loads(raw)
        if body.get("type") == "request" and body.get("decision") == "allow":
            out.add(str(body.get("request_id")))
    return out


@pytest.mark.parametrize("proto", ["http", "grpc"])
def test_sigkill_under_a_slow_sink_loses_no_answered_record(
    tmp_path: Path, triton_server: TritonServer, attack_ledger: AttackLedger, proto: str
) -> None:
    """Each batch takes the sink 0.2 s to acknowledge. Before the fix the answer left at
    once and its record waited in the queue: a SIGKILL lost every queued record of an
    answered request. Now no answer leaves before its batch is acknowledged."""
    _files(tmp_path)
    with SlowReceiver(0.2) as sink:
        gw = GatewayProcess(
            tmp_path,
            triton_http_url=triton_server.http_url,
            triton_grpc_url=triton_server.grpc_url,
            env={
                "MODELSEAL_AUDIT_SINK": "webhook",
                "MODELSEAL_AUDIT_WEBHOOK_URL": sink.url,
                "MODELSEAL_AUDIT_CHECKPOINT_EVERY": "1000",
            },
        ).start()
        stop = threading.Event()
        result: list[list[str]] = []
        loader = threading.Thread(target=lambda: result.append(_served_ids(gw, "k", stop, proto)))
        loader.start()
        try:
            deadline = time.monotonic() + 60
            while len(_recorded(list(sink.lines))) < 20 and time.monotonic() < deadline:
                time.sleep(0.05)
            gw.kill()  # SIGKILL, mid-load
        finally:
            stop.set()
            loader.join(timeout=120)
            gw.kill()
        served = result[0]
        with sink.lock:
            lines = list(sink.lines)
    recorded = _recorded(lines)
    lost = sorted(set(served) - recorded)
    attack_ledger.record_lost(len(lost))
    assert len(served) >= 10, "the load never got going"
    assert not lost, f"{len(lost)} answered request(s) without a record: {lost[:5]}"
    res = verify_lines(lines, HMAC_KEY)
    assert res.ok, res.summary()


def _stdout_audit(log: Path) -> list[bytes]:
    """The audit lines of a gateway whose stdout (audit) and stderr (logs) share a file."""
    return [x for x in log.read_bytes().splitlines() if x.startswith(b'{"') and b'"hash"' in x]


def test_stdout_chain_survives_a_crash_and_a_deleted_line_is_found(
    tmp_path: Path, triton_server: TritonServer, attack_ledger: AttackLedger
) -> None:
    _files(tmp_path)
    logs: list[bytes] = []
    served = 0
    for run in range(3):
        gw = GatewayProcess(
            tmp_path,
            triton_http_url=triton_server.http_url,
            triton_grpc_url=triton_server.grpc_url,
            name=f"out{run}",
            env={
                "MODELSEAL_AUDIT_SINK": "stdout",
                "MODELSEAL_AUDIT_STATE_FILE": str(tmp_path / "audit-chain.json"),
                "MODELSEAL_AUDIT_CHECKPOINT_EVERY": "4",
                "MODELSEAL_LOG_LEVEL": "WARNING",
            },
        ).start()
        try:
            for i in range(6):
                served += _infer(gw, f"s{run}-{i}") == 200
        finally:
            gw.kill() if run == 0 else gw.stop()  # the first run crashes
        logs += _stdout_audit(gw.log_path)
    assert served == 18
    res = verify_lines(logs, HMAC_KEY, require_seal=True)
    assert res.ok and res.restarts == 2, res.summary()
    lost = 18 - len({r for r in _recorded(logs) if r.startswith("s")})
    attack_ledger.record_lost(lost)
    assert lost == 0
    # Attack: drop the last record of the crashed run (the restart would have hidden it).
    genesis = [i for i, x in enumerate(logs) if b'"type":"genesis"' in x]
    cut = genesis[1] - 1
    res = verify_lines(logs[:cut] + logs[cut + 1 :], HMAC_KEY)
    assert not res.ok and "deleted" in res.reason, res.summary()


def _cli_verify(path: Path, key_file: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "modelseal",
            "audit",
            "verify",
            str(path),
            "--key-file",
            str(key_file),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_truncation_right_after_a_checkpoint_is_found(
    tmp_path: Path, triton_server: TritonServer
) -> None:
    _files(tmp_path)
    gw = GatewayProcess(
        tmp_path,
        triton_http_url=triton_server.http_url,
        triton_grpc_url=triton_server.grpc_url,
        env={"MODELSEAL_AUDIT_CHECKPOINT_EVERY": "3"},
    ).start()
    try:
        assert [_infer(gw, f"t{i}") for i in range(8)] == [200] * 8
    finally:
        gw.stop()
    assert _cli_verify(gw.audit_file, gw.hmac_key_file, "--require-seal").returncode == 0
    lines = gw.audit_file.read_bytes().splitlines(keepends=True)
    cut = max(i for i, x in enumerate(lines[:-2]) if b'"type":"checkpoint"' in x)
    truncated = tmp_path / "truncated.jsonl"
    truncated.write_bytes(b"".join(lines[: cut + 1]))
    assert _cli_verify(truncated, gw.hmac_key_file, "--strict").returncode == 0  # the old hole
    out = _cli_verify(truncated, gw.hmac_key_file, "--require-seal")
    assert out.returncode == 1 and "shutdown seal" in out.stdout, out.stdout + out.stderr


MODEL = {
    "apiVersion": "modelseal.io/v1alpha1",
    "kind": "ProtectedModel",
    "metadata": {
        "name": "gpt",
        "namespace": "vendor",
        "uid": "0f1e2d3c-0000-4000-8000-000000000002",
        "generation": 1,
    },
    "spec": {
        "tenant": "acme",
        "licenseRef": {"name": "gold"},
        "version": "1.0.0",
        "source": {
            "uri": "s3://sealed/gpt.msb",
            "digest": "sha256tree:" + "ab" * 32,
            "plaintextSize": "64Mi",
        },
        "vault": {"transitKey": "gpt"},
        "serving": {"replicas": 1},
    },
}


def test_every_gateway_gets_its_checkpoint_key_as_a_file_only() -> None:
    """No model ran with ``mac: null`` because no key was rendered: now the gateway reads
    its key from the control Secret's ``audit-hmac-key`` item; the unsealer's mount of the
    same Secret holds the token alone, and no env value or argument holds a key."""
    settings = Settings()
    rendered = render_model(parse_model(MODEL), None, True, settings)
    pod = rendered.deployment["spec"]["template"]["spec"]
    gateway = next(c for c in pod["containers"] if c["name"] == "gateway")
    env = {e["name"]: e for e in gateway["env"]}
    key_file = env["MODELSEAL_AUDIT_HMAC_KEY_FILE"]["value"]
    mount = next(m for m in gateway["volumeMounts"] if key_file.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["secret"]["secretName"] == rendered.names.control_secret
    assert volume["secret"]["items"] == [
        {"key": manifests.AUDIT_KEY_KEY, "path": manifests.AUDIT_KEY_KEY}
    ]
    assert "MODELSEAL_AUDIT_STATE_FILE" in env
    others = [c for c in pod.get("initContainers", []) + pod["containers"] if c is not gateway]
    for c in others:
        assert all(m["name"] != mount["name"] for m in c.get("volumeMounts", []))
        for e in c.get("env", []):
            ref = (e.get("valueFrom") or {}).get("secretKeyRef") or {}
            assert ref.get("key") != manifests.AUDIT_KEY_KEY
    control = next(v for v in pod["volumes"] if v["name"] == "control")
    assert manifests.AUDIT_KEY_KEY not in json.dumps(control)
    assert "audit-hmac-key" not in json.dumps(gateway.get("args", []))
