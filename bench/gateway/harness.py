"""Run real gateway processes (``python -m modelseal.gateway``) for tests and benchmarks.

``GatewayProcess`` starts one gateway with its own folder (license file, keys file, audit
log, embedded store state), waits for ``/readyz`` on its metrics port, and stops it with
SIGTERM (graceful) or SIGKILL (crash). ``write_license`` / ``write_keys`` write the files
the operator would render.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelseal.gateway.keys import hash_key_sha256
from modelseal_devenv.common import (
    LOOPBACK,
    ManagedProcess,
    free_port,
    free_port_block,
    wait_until,
)

HMAC_KEY = b"modelseal-test-checkpoint-key-0123456789"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write like the kubelet updates a mounted ConfigMap: a new file renamed over."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def license_doc(tenant: str, models: list[str], **fields: Any) -> dict[str, Any]:
    return {"tenant": tenant, "models": models, **fields}


def write_license(path: Path, *licenses: dict[str, Any]) -> None:
    write_json_atomic(path, {"licenses": list(licenses)})


def write_keys(path: Path, consumers: Mapping[str, tuple[str, str]]) -> None:
    """``consumers``: id -> (tenant, plaintext key); stored as sha256 hashes."""
    write_json_atomic(
        path,
        {
            "consumers": [
                {"id": cid, "tenant": tenant, "hash": hash_key_sha256(key)}
                for cid, (tenant, key) in consumers.items()
            ]
        },
    )


class GatewayProcess:
    def __init__(
        self,
        workdir: Path,
        *,
        triton_http_url: str,
        triton_grpc_url: str,
        name: str = "gw",
        store: str = "embedded",
        redis_url: str = "",
        license_file: Path | None = None,
        keys_file: Path | None = None,
        state_dir: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.http_port = free_port()
        self.grpc_port = free_port()
        # Worker i serves its metrics on metrics_port + i: all of them must be free.
        workers = int({**os.environ, **(env or {})}.get("MODELSEAL_GATEWAY_WORKERS", "1"))
        self.metrics_port = free_port_block(max(1, workers), avoid=(self.http_port, self.grpc_port))
        self.license_file = license_file or self.workdir / "license.json"
        self.keys_file = keys_file or self.workdir / "keys.json"
        self.audit_file = self.workdir / f"audit-{name}.jsonl"
        self.state_dir = state_dir or self.workdir / f"quota-{name}"
        self.hmac_key_file = self.workdir / "audit-hmac.key"
        self.hmac_key_file.write_bytes(HMAC_KEY + b"\n")
        self.log_path = self.workdir / f"{name}.log"
        self.env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "MODELSEAL_LOG_LEVEL": "INFO",
            "MODELSEAL_GATEWAY_HOST": LOOPBACK,
            "MODELSEAL_GATEWAY_INSTANCE": name,
            "MODELSEAL_GATEWAY_HTTP_PORT": str(self.http_port),
            "MODELSEAL_GATEWAY_GRPC_PORT": str(self.grpc_port),
            "MODELSEAL_GATEWAY_METRICS_PORT": str(self.metrics_port),
            "MODELSEAL_TRITON_HTTP_URL": triton_http_url,
            "MODELSEAL_TRITON_GRPC_URL": triton_grpc_url,
            "MODELSEAL_LICENSE_FILE": str(self.license_file),
            "MODELSEAL_API_KEYS_FILE": str(self.keys_file),
            "MODELSEAL_QUOTA_STORE": store,
            "MODELSEAL_QUOTA_STATE_DIR": str(self.state_dir),
            "MODELSEAL_AUDIT_SINK": "file",
            "MODELSEAL_AUDIT_FILE": str(self.audit_file),
            "MODELSEAL_AUDIT_HMAC_KEY_FILE": str(self.hmac_key_file),
            "MODELSEAL_AUDIT_CHECKPOINT_EVERY": "50",
            "MODELSEAL_GATEWAY_RELOAD_INTERVAL_S": "0.1",
            "MODELSEAL_REDIS_TIMEOUT_S": "0.5",
        }
        if redis_url:
            self.env["MODELSEAL_REDIS_URL"] = redis_url
        self.env.update(env or {})
        self._process: ManagedProcess | None = None

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.http_port}"

    @property
    def grpc_target(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}"

    @property
    def pid(self) -> int:
        assert self._process is not None, "gateway not started"
        return self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    def _get(self, url: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback
                return int(resp.status), resp.read().decode()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read().decode()

    def ready(self) -> bool:
        return self._get(self.metrics_url + "/readyz")[0] == 200

    def metrics(self) -> str:
        return self._get(self.metrics_url + "/metrics")[1]

    def metric(self, name: str, **labels: str) -> float:
        """Sum of one metric's samples whose labels include ``labels``."""
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("#") or not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, rest = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in rest for k, v in labels.items()):
                total += float(value)
        return total

    def start(self, timeout: float = 60.0, wait_ready: bool = True) -> GatewayProcess:
        self._process = ManagedProcess(
            f"gateway-{self.name}",
            [sys.executable, "-m", "modelseal.gateway"],
            self.log_path,
            env=self.env,
        ).start()
        if wait_ready:
            wait_until(self.ready, f"gateway {self.name} /readyz", timeout, self._process)
        else:
            wait_until(
                lambda: self._get(self.metrics_url + "/healthz")[0] == 200,
                f"gateway {self.name} /healthz",
                timeout,
                self._process,
            )
        return self

    def stop(self) -> None:
        if self._process is not None:
            self._process.stop(timeout=20)

    def kill(self) -> None:
        if self._process is not None:
            self._process.kill()

    def log_tail(self, lines: int = 40) -> str:
        return self._process.log_tail(lines) if self._process else ""

    def audit_lines(self) -> list[dict[str, Any]]:
        if not self.audit_file.exists():
            return []
        return _complete_records(self.audit_file.read_bytes())

    def audit_files(self) -> list[Path]:
        """This gateway's audit file and those of its worker processes (``-w<i>``)."""
        return sorted(self.workdir.glob(f"audit-{self.name}*.jsonl"))

    def all_audit_lines(self) -> list[dict[str, Any]]:
        return [
            record for path in self.audit_files() for record in _complete_records(path.read_bytes())
        ]

    def wait_audit(self, predicate: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        lines = self.audit_lines()
        while time.monotonic() < deadline:
            lines = self.audit_lines()
            if predicate(lines):
                return lines
            time.sleep(0.05)
        raise AssertionError(f"audit log of {self.name} never matched; last lines: {lines[-5:]}")


def _complete_records(data: bytes) -> list[dict[str, Any]]:
    """The records of an audit file the gateway may be appending to right now: a reader can
    see one ``write`` half done (Linux does not make a read of a regular file atomic with a
    write), so the bytes after the last newline are a record still being written, not one
    to parse."""
    complete = data[: data.rfind(b"\n") + 1]
    return [json.loads(line) for line in complete.splitlines() if line]


def triton_success_count(triton_http_url: str, model: str) -> int:
    """Requests Triton itself counts as executed for ``model`` (its statistics API)."""
    url = f"{triton_http_url}/v2/models/{model}/stats"
    with urllib.request.urlopen(url, timeout=10) as resp:  # noqa: S310 - loopback
        stats = json.loads(resp.read())
    return sum(
        int(m["inference_stats"]["success"]["count"]) + int(m["inference_stats"]["fail"]["count"])
        for m in stats["model_stats"]
    )


def digits_body(n: int = 1) -> bytes:
    from modelseal_devenv.models import sample_digits

    images, _ = sample_digits(n)
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT",
                    "datatype": "FP32",
                    "shape": [n, 64],
                    "data": images.flatten().tolist(),
                }
            ]
        }
    ).encode()


def call(
    url: str,
    body: bytes | None = None,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
    method: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request: (status, headers, body), errors included."""
    all_headers = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        all_headers["Authorization"] = f"Bearer {key}"
    req = urllib.request.Request(url, data=body, headers=all_headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback
            return int(resp.status), dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:  # its connection is closed here, not whenever it is collected
            return int(exc.code), dict(exc.headers), exc.read()
