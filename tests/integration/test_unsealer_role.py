"""The unsealer role (`python -m modelseal unsealer`) as a real process against a real Vault,
a real Triton and (for Kubernetes auth) a real API server: publish into tmpfs, readiness,
ready marker, revocation through HTTP and through the license file (Triton unload + wipe),
SIGTERM, and refusals with a non-zero exit and nothing published."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelseal.cli.main import main as cli_main
from modelseal.crypto import format as fmt
from modelseal.vault import transit
from modelseal_devenv.common import free_port
from modelseal_devenv.models import build_identity_model

pytestmark = pytest.mark.integration

MARKER = b"PLAINTEXT-" + os.urandom(6).hex().encode()


def http(method: str, url: str, token: str | None = None, body: bytes = b"{}") -> tuple[int, Any]:
    req = urllib.request.Request(url, method=method, data=body if method == "POST" else None)  # noqa: S310 - loopback
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        data = exc.read()
        exc.close()
        return exc.code, json.loads(data or b"null")


class Role:
    """One unsealer process with its env, log and port."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = int(env["MODELSEAL_UNSEALER_PORT"])
        self.log = log
        self.out = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "modelseal", "unsealer"],
            env=env,
            stdout=self.out,
            stderr=subprocess.STDOUT,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def wait_state(self, state: str, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"unsealer exited {self.proc.returncode}: {self.text()}")
            try:
                _, last = http("GET", self.url("/status"))
                if last["state"] == state:
                    return dict(last)
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"state {state!r} not reached: {last}; log:\n{self.text()}")

    def wait_exit(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def text(self) -> str:
        if not self.out.closed:
            self.out.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.out.close()


@pytest.fixture
def sealed(tmp_path: Path, vault_server: Any, transit_key: str) -> dict[str, Any]:
    src = tmp_path / "src"
    build_identity_model(src, "identity")
    (src / "identity" / "1" / "weights.bin").write_bytes(os.urandom(300_000) + MARKER)
    bundle = tmp_path / "identity.mseal"
    env = {"VAULT_ADDR": vault_server.addr, "VAULT_TOKEN": vault_server.root_token}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        assert (
            cli_main(
                [
                    "seal",
                    str(src),
                    "-o",
                    str(bundle),
                    "--transit-key",
                    transit_key,
                    "--no-progress",
                    "--chunk-size",
                    "65536",
                ]
            )
            == 0
        )
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    with open(bundle, "rb") as f:
        header = fmt.read_header(f)
    from modelseal.crypto.pipeline import digest_records

    with open(bundle, "rb") as f:
        fmt.read_header(f)
        digest, _ = digest_records(header, f)
    return {
        "bundle": bundle,
        "digest": fmt.format_digest(digest),
        "key": transit_key,
        "src": src,
        "envelope": header.envelope,
    }


def decrypt_only_token(vault_server: Any, key: str) -> str:
    name = f"unsealer-{key}"
    vault_server.write_policy(
        name, f'path "transit/decrypt/{key}" {{ capabilities = ["update"] }}\n'
    )
    created = vault_server.client().auth.token.create(policies=[name], ttl="10m")
    return str(created["auth"]["client_token"])


@pytest.fixture
def role_env(
    tmp_path: Path, tmpfs_path: Path, vault_server: Any, sealed: dict[str, Any]
) -> dict[str, str]:
    token_file = tmp_path / "vault-token"
    token_file.write_text(decrypt_only_token(vault_server, sealed["key"]))
    control = tmp_path / "control-token"
    control.write_text("s3cret-control")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELSEAL_", "VAULT_"))}
    env.update(
        MODELSEAL_LOG_LEVEL="DEBUG",
        MODELSEAL_MODEL_DIR=str(tmpfs_path),
        MODELSEAL_VAULT_ADDR=vault_server.addr,
        MODELSEAL_VAULT_TOKEN_FILE=str(token_file),
        MODELSEAL_BUNDLE_URI=f"file://{sealed['bundle']}",
        MODELSEAL_BUNDLE_DIGEST=sealed["digest"],
        MODELSEAL_BUNDLE_TRANSIT_KEY=sealed["key"],
        MODELSEAL_UNSEALER_PORT=str(free_port()),
        MODELSEAL_UNSEALER_BIND_ADDRESS="127.0.0.1",
        MODELSEAL_UNSEALER_LICENSE_FILE=str(tmp_path / "license.json"),
        MODELSEAL_UNSEALER_LICENSE_POLL_S="0.2",
        MODELSEAL_UNSEALER_CONTROL_TOKEN_FILE=str(control),
        MODELSEAL_TRITON_HTTP_URL=f"http://127.0.0.1:{free_port()}",
        MODELSEAL_UNSEAL_WORKERS="2",
    )
    return env


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    roles: list[Role] = []

    def _start(env: dict[str, str]) -> Role:
        roles.append(Role(env, tmp_path / f"unsealer-{len(roles)}.log"))
        return roles[-1]

    yield _start
    for r in roles:
        r.stop()


def key_forms(vault_server: Any, sealed: dict[str, Any]) -> list[str]:
    env = sealed["envelope"]
    raw = transit.unwrap_data_key(vault_server.client(), env.key_name, env.wrapped_key).reveal()
    return [raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode()]


def assert_no_leak(text: str, forms: list[str]) -> None:
    for form in forms:
        assert form not in text
    assert MARKER.decode() not in text


def test_publish_then_revoke_over_http_unloads_triton(
    role_env: dict[str, str],
    start: Any,
    sealed: dict[str, Any],
    vault_server: Any,
    tmpfs_path: Path,
) -> None:
    from modelseal.config import TRITON_CONTROL_HEADER
    from modelseal_devenv.triton import TritonServer

    role = start(role_env)
    status = role.wait_state("ready")
    assert status["digest"] == sealed["digest"]
    assert status["models"] == ["identity"]
    assert http("GET", role.url("/readyz"))[0] == 200
    repo = tmpfs_path / "repository"
    assert (repo / "identity/1/weights.bin").read_bytes().endswith(MARKER)
    marker = json.loads((tmpfs_path / ".modelseal-ready").read_text())
    assert marker["digest"] == sealed["digest"]
    assert sorted(os.listdir(tmpfs_path)) == [".modelseal-ready", "repository"]

    # Triton as the operator renders it: the repository API needs the pod's control token,
    # which the unsealer reads from its control-token file.
    with TritonServer(
        repo,
        model_control_mode="explicit",
        load_models=["identity"],
        restrict_model_control=(TRITON_CONTROL_HEADER, "s3cret-control"),
    ) as triton:
        assert triton.model_ready("identity")
        role_env_url = triton.http_url
        # point the (running) unsealer at this Triton: restart it with the right URL
        role.stop()
        assert not repo.exists()  # SIGTERM wiped the files
        env = dict(
            role_env,
            MODELSEAL_TRITON_HTTP_URL=role_env_url,
            MODELSEAL_UNSEALER_PORT=str(free_port()),
        )
        role = start(env)
        role.wait_state("ready")
        triton.load_model("identity")
        assert triton.model_ready("identity")

        code, body = http("POST", role.url("/revoke"))
        assert code == 401
        assert repo.exists()
        code, body = http(
            "POST",
            role.url("/revoke"),
            token="s3cret-control",
            body=b'{"reason": "license ACME-1 revoked"}',
        )
        assert code == 200, body
        assert body["state"] == "revoked"
        assert body["reason"] == "license ACME-1 revoked"
        assert http("GET", role.url("/readyz"))[0] == 503
        assert not triton.model_ready("identity")
        assert not repo.exists()
        assert not (tmpfs_path / ".modelseal-ready").exists()
        assert "Triton unloaded model identity" in role.text()
    role.stop()
    assert role.proc.returncode == 0
    assert_no_leak(role.text(), key_forms(vault_server, sealed))


def test_license_file_revocation_and_expiry(
    role_env: dict[str, str], start: Any, tmp_path: Path, tmpfs_path: Path
) -> None:
    lic = tmp_path / "license.json"
    lic.write_text(json.dumps({"tenant": "acme", "models": ["identity"], "revoked": False}))
    role = start(role_env)
    role.wait_state("ready")
    time.sleep(0.5)
    assert (tmpfs_path / "repository").exists()  # a valid license keeps it
    lic.write_text(json.dumps({"tenant": "acme", "models": ["identity"], "revoked": True}))
    status = role.wait_state("revoked", timeout=10)
    assert "revoked" in status["reason"]
    assert not (tmpfs_path / "repository").exists()
    assert "Triton unload of identity failed" in role.text()  # no Triton there: wiped anyway

    # expiry while running (no file change needed)
    role.stop()
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 8))
    lic.write_text(
        json.dumps({"tenant": "acme", "models": ["identity"], "valid": {"not_after": soon}})
    )
    role = start(dict(role_env, MODELSEAL_UNSEALER_PORT=str(free_port())))
    role.wait_state("ready")
    status = role.wait_state("revoked", timeout=15)
    assert "expired" in status["reason"]
    assert not (tmpfs_path / "repository").exists()


def test_revoked_license_at_start_unseals_nothing(
    role_env: dict[str, str], start: Any, tmp_path: Path, tmpfs_path: Path
) -> None:
    (tmp_path / "license.json").write_text(
        json.dumps({"tenant": "acme", "models": ["identity"], "revoked": True})
    )
    role = start(dict(role_env, MODELSEAL_UNSEALER_TRITON_MODELS='["identity"]'))
    role.wait_state("revoked")
    assert os.listdir(tmpfs_path) == []
    assert http("GET", role.url("/readyz"))[0] == 503


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"MODELSEAL_BUNDLE_DIGEST": "sha256tree:" + "0" * 64}, 1, "does not match the pinned"),
        ({"MODELSEAL_BUNDLE_DIGEST": ""}, 2, "MODELSEAL_BUNDLE_DIGEST is not set"),
        ({"MODELSEAL_BUNDLE_DIGEST": "sha256:abc"}, 2, "sha256tree"),
        ({"MODELSEAL_BUNDLE_TRANSIT_KEY": "other-key"}, 4, "may use only 'other-key'"),
        ({"MODELSEAL_VAULT_ADDR": "http://127.0.0.1:9"}, 3, "cannot reach Vault"),
        ({"MODELSEAL_BUNDLE_URI": "file:///nonexistent/b.mseal"}, 4, "cannot open bundle"),
        ({"MODELSEAL_VAULT_TOKEN_FILE": "/nonexistent"}, 3, "cannot read the Vault token file"),
    ],
)
def test_refusals_exit_nonzero_and_publish_nothing(
    role_env: dict[str, str],
    start: Any,
    tmpfs_path: Path,
    change: dict[str, str],
    code: int,
    message: str,
) -> None:
    role = start({**role_env, **change})
    assert role.wait_exit() == code, role.text()
    assert message in role.text()
    assert os.listdir(tmpfs_path) == []


def test_non_tmpfs_model_dir_refused(role_env: dict[str, str], start: Any, tmp_path: Path) -> None:
    disk = tmp_path / "models"
    disk.mkdir()
    role = start(dict(role_env, MODELSEAL_MODEL_DIR=str(disk)))
    assert role.wait_exit() == 4
    assert "not tmpfs" in role.text()
    assert os.listdir(disk) == []


def test_restart_wipes_and_republishes(
    role_env: dict[str, str], start: Any, tmpfs_path: Path
) -> None:
    """A sidecar restart while the emptyDir lives: leftovers and old files go first."""
    stale = tmpfs_path / ".modelseal-staging-repository-dead"
    stale.mkdir()
    (stale / "x").write_bytes(MARKER)
    (tmpfs_path / "repository").mkdir()
    (tmpfs_path / "repository" / "old").write_bytes(MARKER)
    role = start(role_env)
    role.wait_state("ready")
    assert sorted(os.listdir(tmpfs_path)) == [".modelseal-ready", "repository"]
    assert not (tmpfs_path / "repository" / "old").exists()


# ------------------------------------------------------------------ Kubernetes auth


def test_kubernetes_auth_login(
    role_env: dict[str, str],
    start: Any,
    sealed: dict[str, Any],
    vault_with_k8s_auth: Any,
    kube_api: Any,
    kube_namespace: str,
    tmp_path: Path,
    tmpfs_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from kubernetes import client as k8s
    from tests.fixtures.vault import request_sa_token

    vault = vault_with_k8s_auth
    core = k8s.CoreV1Api(kube_api)
    for sa in ("model-a", "someone-else"):
        core.create_namespaced_service_account(
            kube_namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=sa))
        )
    policy = f"unseal-{sealed['key']}"
    vault.write_policy(
        policy, f'path "transit/decrypt/{sealed["key"]}" {{ capabilities = ["update"] }}\n'
    )
    role_name = f"{kube_namespace}-model-a"
    vault.create_kubernetes_role(
        role_name,
        service_account="model-a",
        namespace=kube_namespace,
        policies=[policy],
        audience="vault",
        ttl="5m",
    )
    jwt = tmp_path / "sa-token"
    jwt.write_text(request_sa_token(kube_api, kube_namespace, "model-a", ["vault"]))
    # the CLI logs in the same way (verify needs only transit/decrypt)
    for var in ("VAULT_TOKEN", "VAULT_TOKEN_FILE", "VAULT_K8S_ROLE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.vault-token
    code = cli_main(
        [
            "verify",
            str(sealed["bundle"]),
            "--vault-addr",
            vault.addr,
            "--vault-role",
            role_name,
            "--vault-jwt-file",
            str(jwt),
            "--no-progress",
        ]
    )
    assert code == 0
    env = {k: v for k, v in role_env.items() if k != "MODELSEAL_VAULT_TOKEN_FILE"}
    env.update(
        MODELSEAL_UNSEALER_VAULT_ROLE=role_name, MODELSEAL_SERVICE_ACCOUNT_TOKEN_FILE=str(jwt)
    )
    role = start(env)
    role.wait_state("ready")
    assert (tmpfs_path / "repository/identity/config.pbtxt").exists()
    role.stop()

    # another ServiceAccount's token (same namespace, right audience) is refused
    jwt.write_text(request_sa_token(kube_api, kube_namespace, "someone-else", ["vault"]))
    role = start(dict(env, MODELSEAL_UNSEALER_PORT=str(free_port())))
    assert role.wait_exit() == 3
    assert "Kubernetes-auth login" in role.text()
    assert os.listdir(tmpfs_path) == []
    # the right ServiceAccount with a token for another audience is refused too
    jwt.write_text(request_sa_token(kube_api, kube_namespace, "model-a", ["not-vault"]))
    role = start(dict(env, MODELSEAL_UNSEALER_PORT=str(free_port())))
    assert role.wait_exit() == 3
    jwt_text = jwt.read_text()
    assert jwt_text not in role.text()


def test_sigterm_while_unsealing_leaves_nothing(
    role_env: dict[str, str], start: Any, sealed: dict[str, Any], tmpfs_path: Path
) -> None:
    import http.server
    import threading

    data = sealed["bundle"].read_bytes()

    class Slow(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return None

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for i in range(0, len(data), 8192):
                    self.wfile.write(data[i : i + 8192])
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Slow)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/identity.mseal"
        role = start(
            dict(role_env, MODELSEAL_BUNDLE_URI=url, MODELSEAL_UNSEALER_ALLOW_HTTP_SOURCE="true")
        )
        role.wait_state("unsealing")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any(
            p.name.startswith(".modelseal-staging") for p in tmpfs_path.iterdir()
        ):
            time.sleep(0.05)
        role.proc.send_signal(signal.SIGTERM)
        assert role.wait_exit(timeout=20) == 0, role.text()
        assert "cancelling the unseal" in role.text()
        assert os.listdir(tmpfs_path) == []
    finally:
        server.shutdown()
        server.server_close()
