"""A real Triton Inference Server for the tests: the `tritonserver` that nvidia-pytriton ships.

The wheel carries the binary (pytriton/tritonserver/bin), the Python backend
(backends/python/libtriton_python.so), one Python-backend stub per Python version
(python_backend_stubs/<X.Y>/triton_python_backend_stub) and its shared libraries
(site-packages/nvidia_pytriton.libs). This module does what pytriton itself does before it
runs the server (pytriton/triton.py `_prepare_triton_inference_server`,
pytriton/server/triton_server.py `_get_env`):

* it prepares a backends folder (once, in the cache dir, keyed by the pytriton and Python
  versions) with `backends/python/` from the wheel plus the stub for this interpreter's
  Python version, and passes it as `--backend-directory` (the Python backend starts the
  stub that sits next to `libtriton_python.so`);
* LD_LIBRARY_PATH gets the wheel's `nvidia_pytriton.libs` (the copied stub's $ORIGIN
  RPATH no longer reaches them) and the interpreter's LIBDIR when it holds the shared
  libpython the stub links (a pyenv or python.org build; Debian's comes from the
  libpython3.11 package, see install-system-deps.sh);
* PATH starts with this environment's `bin/`: the stub embeds Python, finds `python3` on
  PATH, sees the venv's pyvenv.cfg and so gets the venv's site-packages (numpy...) — the
  models run with exactly the test environment's packages;
* the Python backend's shared-memory regions start small (4 MiB, grow by 1 MiB, as
  pytriton does) and carry a per-server prefix, so several servers share /dev/shm and a
  killed server's regions can be removed.

It runs on CPU (no GPU metrics, no pinned memory pool) and binds HTTP, gRPC and metrics
to free ports on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import secrets
import shutil
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self, cast

from modelseal_devenv.common import (
    LOOPBACK,
    ChildServer,
    ManagedProcess,
    StartError,
    cache_dir,
    free_port,
    wait_until,
)

ControlMode = Literal["none", "poll", "explicit"]

_SHM_DEFAULT_BYTES = 4 * 1024 * 1024
_SHM_GROWTH_BYTES = 1024 * 1024
_PORT_CLASH = ("Address already in use", "already in use", "Failed to bind", "failed to bind")


def pytriton_root() -> Path:
    """The installed `pytriton` package folder (found without importing pytriton)."""
    import importlib.util

    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise StartError("nvidia-pytriton is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations)))


def pytriton_version() -> str:
    return importlib.metadata.version("nvidia-pytriton")


def tritonserver_binary() -> Path:
    return pytriton_root() / "tritonserver" / "bin" / "tritonserver"


def bundled_libs() -> Path:
    """The wheel's shared libraries (an editable pytriton keeps them elsewhere)."""
    root = pytriton_root()
    wheel_libs = root.parent / "nvidia_pytriton.libs"
    return wheel_libs if wheel_libs.is_dir() else root / "tritonserver" / "external_libs"


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def prepare_backends(root: Path | None = None) -> Path:
    """The `--backend-directory` with the Python backend and this Python's stub; built once.

    Layout: <cache>/triton/pytriton-<v>-py<X.Y>/{backends/python/..., caches/local/...}.
    Returns the folder that holds `backends/` and `caches/`.
    """
    src = pytriton_root() / "tritonserver"
    stub = src / "python_backend_stubs" / _python_version() / "triton_python_backend_stub"
    if not stub.is_file():
        raise StartError(
            f"nvidia-pytriton {pytriton_version()} ships no stub for Python "
            f"{_python_version()} ({stub} missing)"
        )
    base = root if root is not None else cache_dir() / "triton"
    target = base / f"pytriton-{pytriton_version()}-py{_python_version()}"
    marker = target / ".complete"
    if marker.is_file():
        return target
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=base))
    try:
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        shutil.copytree(src / "backends", staging / "backends", ignore=ignore)
        shutil.copytree(src / "caches", staging / "caches", ignore=ignore)
        dst_stub = staging / "backends" / "python" / "triton_python_backend_stub"
        shutil.copy2(stub, dst_stub)
        dst_stub.chmod(0o755)
        (staging / ".complete").write_text(f"{pytriton_version()} {_python_version()}\n")
        if target.exists():  # an incomplete earlier attempt
            shutil.rmtree(target, ignore_errors=True)
        try:
            staging.rename(target)
        except OSError:
            if not marker.is_file():  # nobody else finished it either
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _python_libdir() -> str | None:
    """The interpreter's LIBDIR when it holds the shared libpython the stub links."""
    libdir = sysconfig.get_config_var("LIBDIR")
    soname = sysconfig.get_config_var("INSTSONAME")
    if not libdir or not soname or not (Path(libdir) / str(soname)).exists():
        return None
    return str(libdir)


def env_overrides(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """PATH and LD_LIBRARY_PATH for tritonserver and its stubs (see the module docstring)."""
    src = os.environ if base is None else base
    libs = [str(bundled_libs())]
    libdir = _python_libdir()
    if libdir is not None:
        libs.append(libdir)
    if src.get("LD_LIBRARY_PATH"):
        libs.append(src["LD_LIBRARY_PATH"])
    python_bin = str(Path(sys.prefix) / "bin")
    path = [python_bin, *(p for p in src.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p)]
    return {"LD_LIBRARY_PATH": os.pathsep.join(libs), "PATH": os.pathsep.join(path)}


def server_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment for tritonserver: `base` (default os.environ) + overrides."""
    env = dict(os.environ if base is None else base)
    env.update(env_overrides(env))
    env.pop("PYTHONHOME", None)  # would point the stub's interpreter elsewhere
    env.setdefault("CUDA_VISIBLE_DEVICES", "")  # CPU only, also where a GPU is present
    return env


def cpu_args(backends_root: Path, shm_prefix: str | None = None) -> list[str]:
    """Flags for a CPU-only run with the prepared backends folder (see prepare_backends)."""
    prefix = shm_prefix or f"modelseal-triton-{os.getpid()}-{secrets.token_hex(4)}"
    return [
        f"--backend-directory={backends_root / 'backends'}",
        f"--cache-directory={backends_root / 'caches'}",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",
        f"--backend-config=python,shm-region-prefix-name={prefix}",
        f"--backend-config=python,shm-default-byte-size={_SHM_DEFAULT_BYTES}",
        f"--backend-config=python,shm-growth-byte-size={_SHM_GROWTH_BYTES}",
    ]


def server_command(shm_prefix: str | None = None) -> tuple[Path, dict[str, str], list[str]]:
    """(binary, env overrides, flags) to run the bundled tritonserver from elsewhere.

    For callers that build their own command line (the pod runner): exec `binary` with
    their own flags plus these, in an environment updated with the overrides (PATH,
    LD_LIBRARY_PATH).
    """
    root = prepare_backends()
    return tritonserver_binary(), env_overrides(), cpu_args(root, shm_prefix)


class TritonServer(ChildServer):
    """tritonserver on 127.0.0.1 serving `model_repository` (a caller-given folder).

    `model_control_mode="explicit"` loads only `load_models` at start ("*" for all) and
    then obeys the repository API (`load_model` / `unload_model`). Ports are picked once
    and kept, so `stop()` then `start()` gives the same URLs.

    `restrict_model_control=(header, value)` makes the repository API (index, load, unload)
    answer only requests that carry that header, over HTTP and gRPC, as the serving pod
    does; this object's own helpers send it. (gRPC clients send it as metadata
    "triton-grpc-protocol-<header>"; Triton adds that prefix on the gRPC side.)

    URLs: `http_url` "http://127.0.0.1:P", `http_address` and `grpc_url` "127.0.0.1:P"
    (what tritonclient.http / tritonclient.grpc and grpc channels take), `metrics_url`
    "http://127.0.0.1:P/metrics".
    """

    def __init__(
        self,
        model_repository: Path | str,
        *,
        model_control_mode: ControlMode = "none",
        load_models: Sequence[str] = (),
        log_dir: Path | None = None,
        startup_timeout: float = 120.0,
        exit_timeout_secs: int = 5,
        log_verbose: int = 0,
        strict_readiness: bool = True,
        repository_poll_secs: int = 2,
        restrict_model_control: tuple[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        if load_models and model_control_mode != "explicit":
            raise ValueError("load_models needs model_control_mode='explicit'")
        self.model_repository = Path(model_repository)
        self.model_control_mode: ControlMode = model_control_mode
        self.load_models = list(load_models)
        self.startup_timeout = startup_timeout
        self.exit_timeout_secs = exit_timeout_secs
        self.log_verbose = log_verbose
        self.strict_readiness = strict_readiness
        self.repository_poll_secs = repository_poll_secs
        self.restrict_model_control = restrict_model_control
        self.extra_args = list(extra_args)
        self._own_workdir = log_dir is None
        self.log_dir = (
            Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="modelseal-triton-"))
        )
        self.workdir = self.log_dir  # ChildServer.close removes it when this object made it
        self.log_path = self.log_dir / "tritonserver.log"
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.metrics_port = free_port()
        self._ports_fixed = False
        self.shm_prefix = f"modelseal-triton-{os.getpid()}-{secrets.token_hex(4)}"
        self.version = ""
        self.start_seconds = 0.0
        self._process: ManagedProcess | None = None

    # -- addresses ---------------------------------------------------------------------
    @property
    def http_address(self) -> str:
        return f"{LOOPBACK}:{self.http_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_address}"

    @property
    def grpc_url(self) -> str:
        return f"{LOOPBACK}:{self.grpc_port}"

    @property
    def grpc_address(self) -> str:
        return self.grpc_url

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.metrics_port}/metrics"

    # -- life cycle (running, pid, with, restart, close, log_tail: ChildServer) ---------
    def argv(self, backends_root: Path) -> list[str]:
        args = [
            str(tritonserver_binary()),
            f"--model-repository={self.model_repository}",
            f"--model-control-mode={self.model_control_mode}",
            f"--http-address={LOOPBACK}",
            f"--http-port={self.http_port}",
            f"--grpc-address={LOOPBACK}",
            f"--grpc-port={self.grpc_port}",
            "--allow-metrics=true",
            f"--metrics-address={LOOPBACK}",
            f"--metrics-port={self.metrics_port}",
            f"--strict-readiness={'true' if self.strict_readiness else 'false'}",
            f"--exit-timeout-secs={self.exit_timeout_secs}",
            f"--log-verbose={self.log_verbose}",
        ]
        args += cpu_args(backends_root, self.shm_prefix)
        if self.restrict_model_control is not None:
            header, value = self.restrict_model_control
            args += [
                f"--http-restricted-api=model-repository:{header}={value}",
                f"--grpc-restricted-protocol=model-repository:{header}={value}",
            ]
        if self.model_control_mode == "poll":
            args.append(f"--repository-poll-secs={self.repository_poll_secs}")
        args += [f"--load-model={name}" for name in self.load_models]
        return args + self.extra_args

    def start(self) -> Self:
        if self.running:
            return self
        if not self.model_repository.is_dir():
            raise StartError(f"tritonserver: model repository {self.model_repository} is no folder")
        backends_root = prepare_backends()
        t0 = time.monotonic()
        for attempt in range(3):
            if attempt:  # a port was taken between free_port() and the bind: pick new ones
                self.http_port, self.grpc_port, self.metrics_port = (
                    free_port(),
                    free_port(),
                    free_port(),
                )
            start_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._process = ManagedProcess(
                "tritonserver", self.argv(backends_root), self.log_path, env=server_env()
            ).start()
            try:
                wait_until(
                    self._ready,
                    "tritonserver /v2/health/ready",
                    self.startup_timeout,
                    self._process,
                )
                break
            except StartError:
                fresh = self._log_since(start_offset)
                self._process.stop(timeout=10)
                self._cleanup_shm()
                clash = any(s in fresh for s in _PORT_CLASH)
                if attempt < 2 and clash and not self._ports_fixed:
                    continue
                raise
        self._ports_fixed = True  # restarts come back on the same ports
        self.start_seconds = time.monotonic() - t0
        self.version = str(self.metadata().get("version", ""))
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful stop (SIGTERM; Triton unloads its models); shared memory is cleaned."""
        if self._process is not None:
            self._process.stop(timeout=timeout)
        self._cleanup_shm()

    def kill(self) -> None:
        """Hard crash (SIGKILL to tritonserver and its stubs), for failure tests."""
        if self._process is not None:
            self._process.kill()
        self._cleanup_shm()

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def _cleanup_shm(self) -> None:
        shm = Path("/dev/shm")
        if not shm.is_dir():
            return
        for region in shm.glob(f"{self.shm_prefix}*"):
            with contextlib.suppress(OSError):
                region.unlink()

    # -- HTTP API ----------------------------------------------------------------------
    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, timeout: float = 60.0
    ) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.http_url + path, data=data, method=method)  # noqa: S310
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.restrict_model_control is not None and path.startswith("/v2/repository"):
            req.add_header(*self.restrict_model_control)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - loopback
                return int(resp.status), bytes(resp.read())
        except urllib.error.HTTPError as exc:
            return int(exc.code), bytes(exc.read())

    def _ready(self) -> bool:
        status, _ = self._request("GET", "/v2/health/ready", timeout=2.0)
        return status == 200

    def live(self) -> bool:
        try:
            status, _ = self._request("GET", "/v2/health/live", timeout=2.0)
        except OSError:
            return False
        return status == 200

    def ready(self) -> bool:
        try:
            return self._ready()
        except OSError:
            return False

    def metadata(self) -> dict[str, Any]:
        """Server metadata: {"name": "triton", "version": "2.51.0", "extensions": [...]}."""
        status, body = self._request("GET", "/v2")
        if status != 200:
            raise StartError(f"tritonserver metadata: HTTP {status}: {body!r}")
        return cast(dict[str, Any], json.loads(body))

    def model_ready(self, name: str, version: str = "") -> bool:
        path = f"/v2/models/{name}" + (f"/versions/{version}" if version else "") + "/ready"
        status, _ = self._request("GET", path, timeout=5.0)
        return status == 200

    def repository_index(self) -> list[dict[str, Any]]:
        status, body = self._request("POST", "/v2/repository/index", {})
        if status != 200:
            raise RuntimeError(f"repository index: HTTP {status}: {body!r}")
        return cast(list[dict[str, Any]], json.loads(body))

    def load_model(self, name: str, config: dict[str, Any] | None = None) -> None:
        """Repository API load (explicit mode); raises RuntimeError with Triton's message."""
        body: dict[str, Any] = {}
        if config is not None:
            body["parameters"] = {"config": json.dumps(config)}
        status, text = self._request(
            "POST", f"/v2/repository/models/{name}/load", body, timeout=self.startup_timeout
        )
        if status != 200:
            raise RuntimeError(f"load {name}: HTTP {status}: {text.decode(errors='replace')}")

    def unload_model(
        self,
        name: str,
        unload_dependents: bool = False,
        wait: bool = True,
        timeout: float = 30.0,
    ) -> None:
        """Repository API unload; with `wait`, returns once the model is no longer served.

        (Triton answers the unload call at once and unloads in the background.)
        """
        body = {"parameters": {"unload_dependents": unload_dependents}}
        status, text = self._request("POST", f"/v2/repository/models/{name}/unload", body)
        if status != 200:
            raise RuntimeError(f"unload {name}: HTTP {status}: {text.decode(errors='replace')}")
        if wait:
            self.wait_model_unloaded(name, timeout)

    def wait_model_unloaded(self, name: str, timeout: float = 30.0) -> None:
        """Wait until the repository index no longer shows `name` READY, LOADING or UNLOADING."""

        def gone() -> bool:
            busy = {"READY", "LOADING", "UNLOADING"}
            return not any(
                e.get("name") == name and e.get("state") in busy for e in self.repository_index()
            )

        wait_until(gone, f"model {name} unloaded", timeout, self._process)
