"""A small "kubelet" for the demo and the end-to-end tests.

The kwok nodes of the test control plane report Pods as Running but run nothing. `PodRunner`
fills that gap on this machine: it reads a Pod that the real API server holds (or the Pods
of a Deployment the operator rendered) and runs its containers as local processes with the
same command, args and env:

* env: literal values, `$(VAR)` expansion, `valueFrom` ConfigMap / Secret keys, `fieldRef`
  and `resourceFieldRef`, `envFrom`; everything read from the API, nothing made up.
* volumes become local folders: `emptyDir` (``medium: Memory`` -> a fresh folder under
  /dev/shm, which is tmpfs), `configMap` / `secret` / `projected` / `downwardAPI` -> files
  written and kept in sync (Secrets and projected volumes also on tmpfs, as the kubelet
  does), projected `serviceAccountToken` -> a real token from the TokenRequest API, bound
  to the Pod, with the projection's audience, refreshed before it expires.
* mounts: a container's paths are remapped, not mounted. Every occurrence of a mount path
  in env values, command and args is rewritten to the local folder, and every path-valued
  `MODELSEAL_*` setting the container does not set itself gets an env override pointing
  into the mount (or into the container's private root folder when no volume covers it).
* ports: the Pod's ports (container ports, probe ports, the `MODELSEAL_*` port settings,
  Triton's port flags) are mapped to free loopback ports, consistently for all containers
  of the Pod, since they share one network namespace. `PodInstance.port(8000)` tells the
  caller where the gateway really listens.
* images: only the entrypoints we can run: `python` -> this interpreter, `modelseal` ->
  ``python -m modelseal``, `tritonserver` -> the binary from the `nvidia-pytriton` wheel
  (through `modelseal_devenv.triton`). Anything else is refused with a clear message.
* life cycle: init containers in order; a native sidecar (init container with
  ``restartPolicy: Always``) starts first and must pass its startup probe before the next
  one starts; then the main containers. Crashed containers restart per restartPolicy with
  back-off, readiness/liveness/startup probes run (httpGet, tcpSocket, exec, grpc as a TCP
  check), and everything stops (SIGTERM, grace period, SIGKILL; main containers first,
  sidecars last) when the Pod is deleted, the Deployment is scaled to zero, `stop()` is
  called, or the interpreter exits (Ctrl-C included). Memory volumes are wiped on stop.

Nothing here is a fake of Kubernetes: the Pods, ServiceAccount tokens, ConfigMaps and
Secrets are the real ones; only the container runtime is replaced by local processes.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import http.client
import json
import math
import os
import re
import secrets
import shlex
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from modelseal.models.quantity import parse_quantity
from modelseal_devenv.common import LOOPBACK, ManagedProcess, free_port

Json = dict[str, Any]

SHM_ROOT = Path("/dev/shm")
POD_IP = LOOPBACK

# Entry point of the modelseal image when a container names no command (images/ Dockerfiles).
MODELSEAL_ENTRYPOINT = ["python", "-m", "modelseal"]
# Default Triton ports when its flags do not name them.
TRITON_DEFAULT_PORTS = {"--http-port": 8000, "--grpc-port": 8001, "--metrics-port": 8002}

_URL_PORT_RE = re.compile(r"(?P<host>127\.0\.0\.1|localhost|0\.0\.0\.0|\[::1\]):(?P<port>\d{1,5})")
_PORT_FLAG_RE = re.compile(r"^(?P<flag>--[A-Za-z0-9-]*port)=(?P<port>\d{1,5})$")
_VAR_RE = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class PodRunnerError(RuntimeError):
    """The pod cannot be run here (unknown image entrypoint, missing object, failed probe)."""


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def _now() -> float:
    return time.monotonic()


def _expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: known names are replaced, `$$` escapes, others stay."""

    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR_RE.sub(repl, text)


def _json(response: Any) -> Json:
    data = response.data
    if isinstance(data, bytes):
        data = data.decode()
    result: Json = json.loads(data)
    return result


def _write_atomic(path: Path, data: bytes, mode: int) -> bool:
    """Write a file by rename so readers never see half of it; False when unchanged."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        if path.read_bytes() == data:
            return False
    except (FileNotFoundError, IsADirectoryError):
        pass
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def _under(path: str, root: str) -> str | None:
    """The part of `path` below `root` ('' for root itself), or None when not below it."""
    p, r = PurePosixPath(path), PurePosixPath(root)
    if p == r:
        return ""
    try:
        return str(p.relative_to(r))
    except ValueError:
        return None


def _python() -> str:
    return sys.executable


def _settings_fields() -> dict[str, tuple[Any, Any]]:
    """`MODELSEAL_*` settings: env name -> (annotation, default)."""
    from modelseal.config import Settings

    out: dict[str, tuple[Any, Any]] = {}
    for name, info in Settings.model_fields.items():
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        out[f"MODELSEAL_{name.upper()}"] = (info.annotation, default)
    return out


def _is_path_setting(annotation: Any) -> bool:
    if annotation is Path:
        return True
    return Path in typing.get_args(annotation)


# Settings that name services outside the pod: never remapped.
_EXTERNAL_SETTINGS = {
    "MODELSEAL_VAULT_ADDR",
    "MODELSEAL_REDIS_URL",
    "MODELSEAL_AUDIT_WEBHOOK_URL",
    "MODELSEAL_USAGE_EXPORT_URL",
}
# Settings that only the operator reads (it does not run inside model pods).
_OPERATOR_SETTINGS = {"MODELSEAL_OPERATOR_HEALTH_PORT", "MODELSEAL_OPERATOR_METRICS_PORT"}


# --------------------------------------------------------------------------------------
# Command resolution (image entrypoints we can run here)
# --------------------------------------------------------------------------------------


@dataclass
class LocalCommand:
    """What to exec for a container: argv and extra env (library paths and the like)."""

    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cleanup: Callable[[], None] | None = None  # after each exit (e.g. shared memory)


CommandResolver = Callable[[list[str], "PortMap"], LocalCommand]
#: Shell scripts the podrunner runs as they are: resource limits, then exec of "$0" "$@"
#: (how the operator starts Triton with core dumps off). Other scripts are refused.
_EXEC_WRAPPER_RE = re.compile(r'(ulimit -[A-Za-z] \d+ && )+exec "\$0" "\$@"')


def _resolve_python(argv: list[str], ports: PortMap) -> LocalCommand:
    return LocalCommand([_python(), *argv[1:]])


def _resolve_modelseal(argv: list[str], ports: PortMap) -> LocalCommand:
    return LocalCommand([_python(), "-m", "modelseal", *argv[1:]])


def _resolve_tritonserver(argv: list[str], ports: PortMap) -> LocalCommand:
    """The image's `tritonserver` -> the pytriton-bundled binary with its libraries.

    What this adds to the pod's own flags is only what running on this machine needs:
    the wheel's backend folder, CPU settings, and a per-process prefix for the Python
    backend's shared-memory regions (so they can be removed after a crash).
    """
    from modelseal_devenv import triton as devtriton

    backends_root = devtriton.prepare_backends()
    env = devtriton.server_env({"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    args = list(argv[1:])
    present = {a.split("=", 1)[0] for a in args if a.startswith("--")}
    metrics_off = any(
        a.replace(" ", "") in ("--allow-metrics=false", "--allow-metrics=0") for a in args
    )
    # Triton listens on its default ports when a flag is missing; map those too, since in
    # the pod they share one network namespace with the other containers.
    for flag, default in TRITON_DEFAULT_PORTS.items():
        if flag in present or (flag == "--metrics-port" and metrics_off):
            continue
        args.append(f"{flag}={ports.local(default)}")
    shm_prefix = f"podrunner{os.getpid()}x{secrets.token_hex(4)}_"
    local_flags = {
        "--backend-directory": str(backends_root / "backends"),
        "--cache-directory": str(backends_root / "caches"),
        "--allow-gpu-metrics": "false",
        "--pinned-memory-pool-byte-size": "0",
    }
    args = [f"{k}={v}" for k, v in local_flags.items() if k not in present] + args
    args += [
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        "--backend-config=python,shm-default-byte-size=4194304",
        "--backend-config=python,shm-growth-byte-size=1048576",
    ]

    def cleanup() -> None:
        for region in SHM_ROOT.glob(f"{shm_prefix}*"):
            with contextlib.suppress(OSError):
                region.unlink()

    return LocalCommand([str(devtriton.tritonserver_binary()), *args], env, cleanup)


DEFAULT_COMMANDS: dict[str, CommandResolver] = {
    "python": _resolve_python,
    "python3": _resolve_python,
    "python3.11": _resolve_python,
    "modelseal": _resolve_modelseal,
    "tritonserver": _resolve_tritonserver,
}


# --------------------------------------------------------------------------------------
# Ports
# --------------------------------------------------------------------------------------


class PortMap:
    """Pod port -> free loopback port, shared by every container of one pod."""

    def __init__(self) -> None:
        self._map: dict[int, int] = {}
        self.known: set[int] = set()
        self._lock = threading.Lock()

    def local(self, port: int) -> int:
        with self._lock:
            if port not in self._map:
                self._map[port] = free_port()
            self.known.add(port)
            return self._map[port]

    def items(self) -> dict[int, int]:
        with self._lock:
            return dict(self._map)

    def rewrite_urls(self, text: str) -> str:
        """Rewrite `127.0.0.1:P` / `localhost:P` for the pod's own ports only."""

        def repl(match: re.Match[str]) -> str:
            port = int(match.group("port"))
            if port not in self.known:
                return match.group(0)
            return f"{match.group('host')}:{self.local(port)}"

        return _URL_PORT_RE.sub(repl, text)


# --------------------------------------------------------------------------------------
# Probes
# --------------------------------------------------------------------------------------


@dataclass
class ProbeState:
    spec: Json
    started_at: float
    last_run: float = 0.0
    last_ok: bool = False
    failing_since: float | None = None
    successes: int = 0

    @property
    def initial_delay(self) -> float:
        return float(self.spec.get("initialDelaySeconds", 0))

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    @property
    def failure_window(self) -> float:
        return self.period * float(self.spec.get("failureThreshold", 3))


# --------------------------------------------------------------------------------------
# Containers and pods
# --------------------------------------------------------------------------------------


@dataclass
class ContainerRun:
    """One container of a running pod: its local process and life-cycle state."""

    name: str
    kind: str  # "init", "sidecar" or "main"
    spec: Json
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    log_path: Path
    cleanup: Callable[[], None] | None = None
    process: ManagedProcess | None = None
    restarts: int = 0
    starts: int = 0
    exit_codes: list[int] = field(default_factory=list)
    started: bool = False  # startup probe passed (or none)
    ready: bool = False
    next_start: float = 0.0
    backoff: float = 0.0
    started_at: float = 0.0
    probes: dict[str, ProbeState] = field(default_factory=dict)
    done: bool = False  # init container that exited 0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None and self.process.running else None


class PodInstance:
    """One Pod from the API server, run as local processes."""

    def __init__(self, runner: PodRunner, pod: Json) -> None:
        self.runner = runner
        self.pod = pod
        meta = pod["metadata"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        self.uid: str = meta["uid"]
        self.ports = PortMap()
        self.workdir = runner.workdir / f"{self.namespace}_{self.name}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.shmdir = Path(tempfile.mkdtemp(prefix=f"modelseal-pod-{self.name}-", dir=SHM_ROOT))
        self.shmdir.chmod(0o700)
        self.volume_dirs: dict[str, Path] = {}
        self.containers: dict[str, ContainerRun] = {}
        self.phase = "Pending"  # Pending -> Initializing -> Running -> Stopped | Failed
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._main, name=f"podrunner-{self.name}", daemon=True
        )
        self._token_due: dict[str, float] = {}
        self._lock = threading.RLock()
        self._last_sync = 0.0
        self._stop_reason = "stopped"
        self._stop_grace: float | None = None

    # -- public --------------------------------------------------------------------------

    def port(self, pod_port: int | str) -> int:
        """The local loopback port where the pod's `pod_port` (number or name) listens."""
        if isinstance(pod_port, str):
            for container in self._all_container_specs():
                for p in container.get("ports", []) or []:
                    if p.get("name") == pod_port:
                        return self.ports.local(int(p["containerPort"]))
            raise PodRunnerError(f"pod {self.name} has no port named {pod_port!r}")
        return self.ports.local(pod_port)

    def url(self, pod_port: int | str, scheme: str = "http") -> str:
        return f"{scheme}://{LOOPBACK}:{self.port(pod_port)}"

    def container(self, name: str) -> ContainerRun:
        try:
            return self.containers[name]
        except KeyError:
            raise PodRunnerError(f"pod {self.name} has no container {name!r}") from None

    def volume_dir(self, name: str) -> Path:
        return self.volume_dirs[name]

    def kill(self, container: str) -> None:
        """Crash one container (SIGKILL); the runner restarts it per restartPolicy."""
        run = self.container(container)
        if run.process is not None:
            self.runner.emit(f"pod {self.name}: killing container {container} (SIGKILL)")
            run.process.kill()

    @property
    def ready(self) -> bool:
        with self._lock:
            if self.phase != "Running":
                return False
            return all(
                (c.ready if c.kind == "main" else c.started or c.done)
                for c in self.containers.values()
            )

    @property
    def stopped(self) -> bool:
        return self.phase in ("Stopped", "Failed")

    def logs(self, container: str, lines: int = 40) -> str:
        from modelseal_devenv.common import tail

        return tail(self.container(container).log_path, lines)

    def describe(self) -> str:
        parts = [f"pod {self.namespace}/{self.name} phase={self.phase}"]
        if self.failure:
            parts.append(f"failure={self.failure}")
        for c in self.containers.values():
            parts.append(
                f"  {c.kind} {c.name}: running={c.running} started={c.started} "
                f"ready={c.ready} restarts={c.restarts} exits={c.exit_codes} log={c.log_path}"
            )
        return "\n".join(parts)

    # -- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, reason: str = "stopped", grace: float | None = None) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop_grace = grace
            self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=60)
        if self._thread.is_alive() or not self._thread.ident:
            # never started or stuck: stop what we can from here
            self._shutdown(reason, grace)

    def _main(self) -> None:
        try:
            self._prepare()
            self._init_phase()
            if not self._stop.is_set():
                self._run_phase()
        except Exception as exc:  # keep the message for describe(); stop the processes
            self.failure = f"{type(exc).__name__}: {exc}"
            self.runner.emit(f"pod {self.name}: failed: {self.failure}")
            self._stop_reason = "failed"
        finally:
            self._shutdown(self._stop_reason, self._stop_grace)
            if self.failure:
                self.phase = "Failed"

    def _shutdown(self, reason: str, grace: float | None) -> None:
        with self._lock:
            if self.phase == "Stopped":
                return
            spec_grace = float(self.pod["spec"].get("terminationGracePeriodSeconds", 30))
            timeout = min(grace if grace is not None else spec_grace, self.runner.max_grace)
            mains = [c for c in self.containers.values() if c.kind == "main"]
            inits = [c for c in self.containers.values() if c.kind != "main"]
            # main containers first, all at once; then sidecars in reverse order
            for c in mains:
                if c.process is not None and c.running:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(c.process.pid, 15)
            for c in mains:
                if c.process is not None:
                    c.process.stop(timeout=max(timeout, 0.1))
            for c in reversed(inits):
                if c.process is not None:
                    c.process.stop(timeout=max(timeout, 0.1))
            for c in self.containers.values():
                c.ready = False
                if c.cleanup is not None:
                    with contextlib.suppress(Exception):
                        c.cleanup()
            # the kubelet removes emptyDir (and Secret tmpfs) volumes with the pod
            shutil.rmtree(self.shmdir, ignore_errors=True)
            self.phase = "Stopped"
            self.runner.emit(f"pod {self.name}: stopped ({reason})")

    # -- preparation ---------------------------------------------------------------------

    def _all_container_specs(self) -> list[Json]:
        spec = self.pod["spec"]
        return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]

    def _prepare(self) -> None:
        spec = self.pod["spec"]
        self._collect_ports()
        for volume in spec.get("volumes") or []:
            self._prepare_volume(volume)
        for cspec in spec.get("initContainers") or []:
            kind = "sidecar" if cspec.get("restartPolicy") == "Always" else "init"
            self.containers[cspec["name"]] = self._build_container(cspec, kind)
        for cspec in spec.get("containers") or []:
            self.containers[cspec["name"]] = self._build_container(cspec, "main")
        self.runner.emit(
            f"pod {self.name}: prepared {len(self.volume_dirs)} volumes, ports "
            + ", ".join(f"{p}->{lp}" for p, lp in sorted(self.ports.items().items()))
        )

    def _collect_ports(self) -> None:
        """Every port the pod's containers listen on or talk to on loopback."""
        known: set[int] = set()
        fields = _settings_fields()
        for env_name, (_annotation, default) in fields.items():
            if env_name in _EXTERNAL_SETTINGS or env_name in _OPERATOR_SETTINGS:
                continue
            if env_name.endswith("_PORT") and isinstance(default, int):
                known.add(default)
            elif isinstance(default, str):
                known.update(int(m.group("port")) for m in _URL_PORT_RE.finditer(default))
        for cspec in self._all_container_specs():
            for p in cspec.get("ports") or []:
                known.add(int(p["containerPort"]))
            for env in cspec.get("env") or []:
                value = env.get("value")
                if value is None or env.get("name") in _EXTERNAL_SETTINGS:
                    continue
                # URLs in env are not collected: a loopback URL may name a server outside
                # the pod (Vault, S3 in the test environment); only the pod's own ports
                # (collected here) are rewritten inside URLs.
                if env["name"].endswith("PORT") and str(value).isdigit():
                    known.add(int(value))
            for arg in [*(cspec.get("command") or []), *(cspec.get("args") or [])]:
                m = _PORT_FLAG_RE.match(arg)
                if m:
                    known.add(int(m.group("port")))
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = cspec.get(probe_name) or {}
                for kind in ("httpGet", "tcpSocket", "grpc"):
                    port = (probe.get(kind) or {}).get("port")
                    if isinstance(port, int):
                        known.add(port)
        for port in known:
            self.ports.local(port)

    def _prepare_volume(self, volume: Json) -> None:
        name = volume["name"]
        if "emptyDir" in volume:
            medium = (volume["emptyDir"] or {}).get("medium", "")
            base = self.shmdir if medium == "Memory" else self.workdir / "volumes"
            path = base / name
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o777 if medium != "Memory" else 0o700)
        elif "configMap" in volume:
            path = self.workdir / "volumes" / name
        elif any(k in volume for k in ("secret", "projected", "downwardAPI")):
            path = self.shmdir / name  # the kubelet keeps these on tmpfs too
        elif "hostPath" in volume:
            path = self.workdir / "hostpath" / name
            path.mkdir(parents=True, exist_ok=True)
        else:
            raise PodRunnerError(
                f"pod {self.name}: volume {name!r} has a type this runner does not support: "
                f"{sorted(k for k in volume if k != 'name')}"
            )
        self.volume_dirs[name] = path
        self._sync_volume(volume, first=True)

    # -- volume contents -----------------------------------------------------------------

    def _sync_volumes(self) -> None:
        for volume in self.pod["spec"].get("volumes") or []:
            try:
                self._sync_volume(volume, first=False)
            except Exception as exc:
                self.runner.emit(f"pod {self.name}: volume {volume['name']}: sync failed: {exc}")

    def _sync_volume(self, volume: Json, first: bool) -> None:
        name = volume["name"]
        path = self.volume_dirs[name]
        if "configMap" in volume:
            self._write_source(path, "configMap", volume["configMap"], first)
        elif "secret" in volume:
            self._write_source(path, "secret", volume["secret"], first)
        elif "downwardAPI" in volume:
            self._write_downward(path, volume["downwardAPI"])
        elif "projected" in volume:
            projected = volume["projected"]
            mode = int(projected.get("defaultMode", 0o644))
            for source in projected.get("sources") or []:
                if "configMap" in source:
                    self._write_source(
                        path, "configMap", {"defaultMode": mode, **source["configMap"]}, first
                    )
                elif "secret" in source:
                    self._write_source(
                        path, "secret", {"defaultMode": mode, **source["secret"]}, first
                    )
                elif "downwardAPI" in source:
                    self._write_downward(path, {"defaultMode": mode, **source["downwardAPI"]})
                elif "serviceAccountToken" in source:
                    self._write_token(path, source["serviceAccountToken"], mode)
                else:
                    raise PodRunnerError(
                        f"pod {self.name}: projected source {sorted(source)} is not supported"
                    )

    def _read_object(self, kind: str, name: str) -> Json | None:
        core = self.runner.core
        from kubernetes.client.exceptions import ApiException

        try:
            if kind == "configMap":
                return _json(
                    core.read_namespaced_config_map(name, self.namespace, _preload_content=False)
                )
            return _json(core.read_namespaced_secret(name, self.namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _object_data(self, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        obj = self._read_object(kind, name)
        if obj is None:
            if optional:
                return {}
            return None
        data: dict[str, bytes] = {}
        if kind == "configMap":
            for k, v in (obj.get("data") or {}).items():
                data[k] = str(v).encode()
            for k, v in (obj.get("binaryData") or {}).items():
                data[k] = base64.b64decode(v)
        else:
            for k, v in (obj.get("data") or {}).items():
                data[k] = base64.b64decode(v)
            for k, v in (obj.get("stringData") or {}).items():
                data[k] = str(v).encode()
        return data

    def _write_source(self, root: Path, kind: str, source: Json, first: bool) -> None:
        obj_name = (
            source["name"] if kind == "configMap" else source.get("secretName") or source["name"]
        )
        optional = bool(source.get("optional", False))
        deadline = _now() + self.runner.volume_wait
        while True:
            data = self._object_data(kind, obj_name, optional)
            if data is not None:
                break
            if not first:
                return  # object gone while running: keep the last files, as the kubelet does
            if _now() > deadline or self._stop.is_set():
                raise PodRunnerError(
                    f"pod {self.name}: {kind} {self.namespace}/{obj_name} not found "
                    f"(the kubelet would keep the pod in ContainerCreating)"
                )
            time.sleep(0.5)
        mode = int(source.get("defaultMode", 0o644))
        items = source.get("items")
        if items:
            for item in items:
                if item["key"] not in data:
                    if optional:
                        continue
                    raise PodRunnerError(
                        f"pod {self.name}: {kind} {obj_name} has no key {item['key']}"
                    )
                _write_atomic(root / item["path"], data[item["key"]], int(item.get("mode", mode)))
        else:
            for key, value in data.items():
                _write_atomic(root / key, value, mode)

    def _field_value(self, path: str) -> str:
        meta = self.pod["metadata"]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        simple = {
            "metadata.name": meta["name"],
            "metadata.namespace": meta["namespace"],
            "metadata.uid": meta["uid"],
            "spec.nodeName": self.pod["spec"].get("nodeName", ""),
            "spec.serviceAccountName": self.pod["spec"].get("serviceAccountName", "default"),
            "status.podIP": POD_IP,
            "status.podIPs": POD_IP,
            "status.hostIP": LOOPBACK,
            "status.hostIPs": LOOPBACK,
        }
        if path in simple:
            return str(simple[path])
        if path in ("metadata.labels", "metadata.annotations"):
            items = (meta.get(path.split(".")[1]) or {}).items()
            return "\n".join(f'{k}="{v}"' for k, v in sorted(items))
        raise PodRunnerError(f"pod {self.name}: fieldRef {path!r} is not supported")

    def _resource_value(self, ref: Json, default_container: str | None) -> str:
        cname = ref.get("containerName") or default_container
        cspec = next((c for c in self._all_container_specs() if c["name"] == cname), None)
        if cspec is None:
            raise PodRunnerError(
                f"pod {self.name}: resourceFieldRef names unknown container {cname}"
            )
        section, _, resource = ref["resource"].partition(".")
        resources = cspec.get("resources") or {}
        value = (resources.get(section) or {}).get(resource)
        if value is None and section == "requests":
            value = (resources.get("limits") or {}).get(resource)
        if value is None:  # unlimited: the node's allocatable; report this machine's
            if resource == "cpu":
                value = os.cpu_count() or 1
            else:
                value = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        divisor = parse_quantity(ref.get("divisor", "1"))
        return str(math.ceil(parse_quantity(value) / divisor))

    def _write_downward(self, root: Path, source: Json) -> None:
        mode = int(source.get("defaultMode", 0o644))
        for item in source.get("items") or []:
            if "fieldRef" in item:
                value = self._field_value(item["fieldRef"]["fieldPath"])
            else:
                value = self._resource_value(item["resourceFieldRef"], None)
            _write_atomic(root / item["path"], value.encode(), int(item.get("mode", mode)))

    def _write_token(self, root: Path, source: Json, mode: int) -> None:
        path = source["path"]
        key = str(root / path)
        if _now() < self._token_due.get(key, 0.0):
            return
        expiration = int(source.get("expirationSeconds", 3600))
        spec: Json = {
            "expirationSeconds": expiration,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": self.name,
                "uid": self.uid,
            },
        }
        if source.get("audience"):
            spec["audiences"] = [source["audience"]]
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
        result = _json(
            self.runner.core.create_namespaced_service_account_token(
                sa, self.namespace, body, _preload_content=False
            )
        )
        token = result["status"]["token"]
        _write_atomic(root / path, token.encode(), mode)
        # the kubelet refreshes at 80% of the lifetime (or after 24h)
        granted = float(result["spec"].get("expirationSeconds") or expiration)
        self._token_due[key] = _now() + min(granted * 0.8, 86400.0)

    # -- containers ----------------------------------------------------------------------

    def _resolve_env(self, cspec: Json) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in cspec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind, ref_key in (("configMap", "configMapRef"), ("secret", "secretRef")):
                ref = source.get(ref_key)
                if ref is None:
                    continue
                data = self._object_data(kind, ref["name"], bool(ref.get("optional", False)))
                if data is None:
                    raise PodRunnerError(f"pod {self.name}: envFrom {kind} {ref['name']} not found")
                for k, v in data.items():
                    env[prefix + k] = v.decode()
        for item in cspec.get("env") or []:
            name = item["name"]
            if "value" in item:
                env[name] = _expand_vars(str(item["value"]), env)
                continue
            source = item.get("valueFrom")
            if source is None:
                env[name] = ""
                continue
            if "fieldRef" in source:
                env[name] = self._field_value(source["fieldRef"]["fieldPath"])
            elif "resourceFieldRef" in source:
                env[name] = self._resource_value(source["resourceFieldRef"], cspec["name"])
            else:
                kind, ref = (
                    ("configMap", source["configMapKeyRef"])
                    if "configMapKeyRef" in source
                    else ("secret", source["secretKeyRef"])
                )
                optional = bool(ref.get("optional", False))
                data = self._object_data(kind, ref["name"], optional)
                if data is None or (ref["key"] not in data and not optional):
                    raise PodRunnerError(
                        f"pod {self.name}: env {name}: {kind} {ref['name']} "
                        f"key {ref['key']} not found"
                    )
                if ref["key"] in data:
                    env[name] = data[ref["key"]].decode()
        return env

    def _mounts(self, cspec: Json, root: Path) -> list[tuple[str, Path]]:
        """(mountPath, local path) for a container, longest mount path first."""
        mounts: list[tuple[str, Path]] = []
        for m in cspec.get("volumeMounts") or []:
            local = self.volume_dirs.get(m["name"])
            if local is None:
                raise PodRunnerError(f"pod {self.name}: mount of unknown volume {m['name']}")
            if m.get("subPath"):
                local = local / m["subPath"]
            mounts.append((m["mountPath"].rstrip("/") or "/", local))
        mounts.sort(key=lambda item: len(item[0]), reverse=True)
        return mounts

    def _map_path(self, path: str, mounts: list[tuple[str, Path]], root: Path) -> str:
        for mount_path, local in mounts:
            rest = _under(path, mount_path)
            if rest is not None:
                return str(local / rest) if rest else str(local)
        return str(root / path.lstrip("/"))

    def _rewrite(self, text: str, mounts: list[tuple[str, Path]]) -> str:
        """Mount paths and the pod's own loopback ports inside one string (one pass, so a
        rewritten path is never rewritten again by a shorter mount path)."""
        if mounts:
            by_path = {mount_path: str(local) for mount_path, local in mounts}
            alternatives = "|".join(re.escape(m) for m, _ in mounts)  # longest first
            pattern = re.compile(r"(?<![\w./-])(" + alternatives + r")(?=/|$|[\s:,;\"'=])")
            text = pattern.sub(lambda m: by_path[m.group(1)], text)
        return self.ports.rewrite_urls(text)

    def _build_container(self, cspec: Json, kind: str) -> ContainerRun:
        name = cspec["name"]
        root = self.workdir / "rootfs" / name
        (root / "tmp").mkdir(parents=True, exist_ok=True)
        mounts = self._mounts(cspec, root)
        env = self._resolve_env(cspec)
        env = {k: self._rewrite(v, mounts) for k, v in env.items()}
        # port-valued env of the pod's own ports
        for k, v in list(env.items()):
            if k.endswith("PORT") and v.isdigit() and int(v) in self.ports.known:
                env[k] = str(self.ports.local(int(v)))
        # MODELSEAL_* settings the container does not set: remap their defaults
        for env_name, (annotation, default) in _settings_fields().items():
            if env_name in _EXTERNAL_SETTINGS or env_name in _OPERATOR_SETTINGS:
                continue
            if _is_path_setting(annotation):
                value = env.get(env_name, str(default) if default is not None else None)
                if (
                    value
                    and value.startswith("/")
                    and not value.startswith(str(self.runner.workdir))
                    and not value.startswith(str(self.shmdir))
                ):
                    mapped = self._map_path(value, mounts, root)
                    if not any(_under(mapped, str(lp)) is not None for _mp, lp in mounts):
                        target = Path(mapped)
                        (target if env_name.endswith("_DIR") else target.parent).mkdir(
                            parents=True, exist_ok=True
                        )
                    env[env_name] = mapped
            elif env_name not in env:
                if env_name.endswith("_PORT") and isinstance(default, int):
                    env[env_name] = str(self.ports.local(default))
                elif isinstance(default, str) and _URL_PORT_RE.search(default):
                    rewritten = self.ports.rewrite_urls(default)
                    if rewritten != default:
                        env[env_name] = rewritten

        command = [_expand_vars(a, env) for a in (cspec.get("command") or [])]
        args = [_expand_vars(a, env) for a in (cspec.get("args") or [])]
        if not command:
            command = self.runner.image_entrypoint(cspec.get("image", ""), args)
        argv = [self._rewrite_arg(a, mounts) for a in [*command, *args]]
        if not argv:
            raise PodRunnerError(f"pod {self.name}: container {name} has no command")
        local = self.runner.resolve_command(cspec.get("image", ""), argv, self.ports)

        full_env = self.runner.base_env(root)
        full_env["TMPDIR"] = self._map_path("/tmp", mounts, root)
        full_env.update(local.env)
        full_env.update(env)
        working_dir = cspec.get("workingDir")
        cwd = Path(self._map_path(working_dir, mounts, root)) if working_dir else root
        cwd.mkdir(parents=True, exist_ok=True)
        log_path = self.runner.log_dir / self.namespace / self.name / f"{name}.log"
        run = ContainerRun(
            name=name,
            kind=kind,
            spec=cspec,
            argv=local.argv,
            env=full_env,
            cwd=cwd,
            log_path=log_path,
            cleanup=local.cleanup,
        )
        return run

    def _rewrite_arg(self, arg: str, mounts: list[tuple[str, Path]]) -> str:
        m = _PORT_FLAG_RE.match(arg)
        if m:
            return f"{m.group('flag')}={self.ports.local(int(m.group('port')))}"
        return self._rewrite(arg, mounts)

    def _start_container(self, run: ContainerRun) -> None:
        run.log_path.parent.mkdir(parents=True, exist_ok=True)
        with run.log_path.open("a") as log:
            log.write(
                f"\n===== podrunner: start #{run.starts + 1} of {run.name} at "
                f"{time.strftime('%H:%M:%S')}: {shlex.join(run.argv)}\n"
            )
        run.process = ManagedProcess(
            f"{self.name}/{run.name}", run.argv, run.log_path, env=run.env, cwd=run.cwd
        ).start()
        run.starts += 1
        run.started_at = _now()
        run.started = False
        run.ready = False
        run.probes = {}
        for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
            if run.spec.get(probe_name):
                run.probes[probe_name] = ProbeState(run.spec[probe_name], run.started_at)
        if "startupProbe" not in run.probes:
            run.started = True
        self.runner.emit(f"pod {self.name}: started container {run.name} (pid {run.process.pid})")

    def _probe(self, run: ContainerRun, probe: ProbeState) -> bool:
        spec = probe.spec
        timeout = float(spec.get("timeoutSeconds", 1))
        try:
            if "httpGet" in spec:
                get = spec["httpGet"]
                port = self._probe_port(run, get["port"])
                conn: http.client.HTTPConnection
                if get.get("scheme", "HTTP").upper() == "HTTPS":
                    ctx = ssl.create_default_context()
                    ctx.check_hostname = False
                    ctx.verify_mode = ssl.CERT_NONE
                    conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=timeout, context=ctx)
                else:
                    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
                try:
                    headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
                    conn.request("GET", get.get("path", "/"), headers=headers)
                    status = conn.getresponse().status
                finally:
                    conn.close()
                return 200 <= status < 400
            if "tcpSocket" in spec or "grpc" in spec:
                port_spec = (spec.get("tcpSocket") or spec.get("grpc") or {})["port"]
                with socket.create_connection(
                    (LOOPBACK, self._probe_port(run, port_spec)), timeout=timeout
                ):
                    return True
            if "exec" in spec:
                argv = [
                    self._rewrite(a, self._mounts(run.spec, run.cwd))
                    for a in spec["exec"]["command"]
                ]
                local = self.runner.resolve_command(run.spec.get("image", ""), argv, self.ports)
                env = dict(run.env)
                env.update(local.env)
                result = subprocess.run(
                    local.argv, env=env, cwd=run.cwd, capture_output=True,
                    timeout=max(timeout, 5.0), check=False,
                )  # fmt: skip
                return result.returncode == 0
        except (OSError, subprocess.TimeoutExpired, http.client.HTTPException):
            return False
        raise PodRunnerError(f"pod {self.name}: probe {sorted(spec)} is not supported")

    def _probe_port(self, run: ContainerRun, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return self.ports.local(int(port))
        for p in run.spec.get("ports") or []:
            if p.get("name") == port:
                return self.ports.local(int(p["containerPort"]))
        raise PodRunnerError(f"pod {self.name}: container {run.name} has no port named {port}")

    def _run_probes(self, run: ContainerRun) -> None:
        """Probe at min(period, runner.max_probe_period); fail after period*failureThreshold."""
        if not run.running:
            return
        now = _now()
        for name, probe in run.probes.items():
            if name == "startupProbe" and run.started:
                continue
            if name != "startupProbe" and not run.started:
                continue
            if now - probe.started_at < probe.initial_delay:
                continue
            if now - probe.last_run < min(probe.period, self.runner.max_probe_period):
                continue
            probe.last_run = now
            ok = self._probe(run, probe)
            probe.last_ok = ok
            if ok:
                probe.failing_since = None
                probe.successes += 1
            elif probe.failing_since is None:
                probe.failing_since = now
            if name == "startupProbe":
                if ok:
                    run.started = True
                    self.runner.emit(
                        f"pod {self.name}: container {run.name} passed its startup probe"
                    )
                    for other in ("readinessProbe", "livenessProbe"):
                        if other in run.probes:
                            run.probes[other].started_at = now
                elif (
                    probe.failing_since is not None
                    and now - run.started_at > probe.initial_delay + probe.failure_window
                ):
                    self.runner.emit(
                        f"pod {self.name}: container {run.name} failed its startup probe; "
                        "restarting"
                    )
                    self._kill_for_restart(run)
            elif name == "readinessProbe":
                if ok and not run.ready:
                    run.ready = True
                    self.runner.emit(f"pod {self.name}: container {run.name} is ready")
                elif not ok and run.ready and self._failed_long(probe, now):
                    run.ready = False
                    self.runner.emit(f"pod {self.name}: container {run.name} is not ready")
            elif name == "livenessProbe" and not ok and self._failed_long(probe, now):
                self.runner.emit(
                    f"pod {self.name}: container {run.name} failed its liveness probe; restarting"
                )
                self._kill_for_restart(run)
        if (
            "readinessProbe" not in run.probes
            and run.kind == "main"
            and run.started
            and not run.ready
        ):
            run.ready = True

    @staticmethod
    def _failed_long(probe: ProbeState, now: float) -> bool:
        """failureThreshold consecutive failures, measured as time spent failing."""
        if probe.failing_since is None:
            return False
        threshold = float(probe.spec.get("failureThreshold", 3))
        return now - probe.failing_since >= probe.period * max(threshold - 1, 0)

    def _kill_for_restart(self, run: ContainerRun) -> None:
        if run.process is not None:
            run.process.stop(
                timeout=min(
                    float(self.pod["spec"].get("terminationGracePeriodSeconds", 30)),
                    self.runner.max_grace,
                )
            )

    def _reap(self, run: ContainerRun, restart: bool) -> bool:
        """Handle an exited process; True when the container is (to be) restarted."""
        if run.process is None or run.running:
            return False
        assert run.process.proc is not None
        code = run.process.proc.returncode
        run.process.stop()  # deregisters it
        run.process = None
        if run.cleanup is not None:
            run.cleanup()
        run.exit_codes.append(code)
        run.ready = False
        run.started = False
        self.runner.emit(f"pod {self.name}: container {run.name} exited with {code}")
        if run.kind == "init" and code == 0:
            run.done = True
            return False
        if not restart or (
            run.kind == "main" and self._restart_policy() == "OnFailure" and code == 0
        ):
            run.done = True
            return False
        ran_for = _now() - run.started_at
        run.backoff = (
            self.runner.restart_backoff[0]
            if ran_for > 60 or run.backoff == 0
            else min(run.backoff * 2, self.runner.restart_backoff[1])
        )
        run.next_start = _now() + run.backoff
        run.restarts += 1
        self.runner.emit(
            f"pod {self.name}: restarting {run.name} in {run.backoff:.1f}s "
            f"(restart #{run.restarts})"
        )
        return True

    def _restart_policy(self) -> str:
        return str(self.pod["spec"].get("restartPolicy", "Always"))

    def _housekeeping(self) -> None:
        """Pod deleted? Volumes and tokens in sync? Called from every wait loop."""
        now = _now()
        if now - self._last_sync < self.runner.sync_period:
            return
        self._last_sync = now
        pod = self.runner.read_pod(self.namespace, self.name)
        if pod is None or pod["metadata"].get("uid") != self.uid:
            self.stop_async("pod deleted")
            return
        if pod["metadata"].get("deletionTimestamp"):
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            self.stop_async("pod is being deleted", float(grace) if grace is not None else None)
            return
        self._sync_volumes()

    def stop_async(self, reason: str, grace: float | None = None) -> None:
        if not self._stop.is_set():
            self._stop_reason = reason
            self._stop_grace = grace
            self._stop.set()

    def _init_phase(self) -> None:
        self.phase = "Initializing"
        policy = self._restart_policy()
        inits = [c for c in self.containers.values() if c.kind != "main"]
        for index, run in enumerate(inits):
            earlier_sidecars = [c for c in inits[:index] if c.kind == "sidecar"]
            self._start_container(run)
            while not self._stop.is_set():
                self._housekeeping()
                self._run_probes(run)
                # earlier sidecars keep running (and restarting) while later ones start
                for other in earlier_sidecars:
                    self._tend(other)
                if run.kind == "sidecar":
                    if run.started:
                        break
                    self._tend(run)
                else:
                    if run.process is not None and not run.running:
                        if self._reap(run, restart=policy != "Never"):
                            continue
                        if run.done and run.exit_codes[-1] == 0:
                            break
                        raise PodRunnerError(
                            f"init container {run.name} failed with {run.exit_codes[-1]}; "
                            f"last lines of {run.log_path}:\n{self.logs(run.name)}"
                        )
                    if run.process is None and _now() >= run.next_start:
                        self._start_container(run)
                time.sleep(0.1)

    def _tend(self, run: ContainerRun) -> None:
        """Keep one always-restarting container (sidecar or main) alive and probed."""
        if run.done:
            return
        if run.process is not None and not run.running:
            restart = run.kind == "sidecar" or self._restart_policy() != "Never"
            self._reap(run, restart=restart)
        if run.process is None and not run.done and _now() >= run.next_start:
            self._start_container(run)
        self._run_probes(run)

    def _run_phase(self) -> None:
        mains = [c for c in self.containers.values() if c.kind == "main"]
        for run in mains:
            self._start_container(run)
        self.phase = "Running"
        self.runner.emit(f"pod {self.name}: all containers started")
        while not self._stop.is_set():
            self._housekeeping()
            for run in self.containers.values():
                if run.kind != "init":
                    self._tend(run)
            time.sleep(0.1)


# --------------------------------------------------------------------------------------
# The runner
# --------------------------------------------------------------------------------------

_RUNNERS: list[PodRunner] = []


class PodRunner:
    """Run the Pod `pod` (or the Pods of Deployment `deployment`) in `namespace` locally.

    With a Deployment, the runner follows its Pods the way a kubelet follows the Pods bound
    to its node: a Pod that is bound (has a node) and not being deleted is started; a Pod
    that is deleted (scale to zero, rollout, eviction) is stopped; a new one is started.
    `max_pods` limits how many of them run here at once (default 1).
    """

    def __init__(
        self,
        api_client: Any,
        namespace: str,
        *,
        pod: str | None = None,
        deployment: str | None = None,
        workdir: Path | None = None,
        log_dir: Path | None = None,
        max_pods: int = 1,
        commands: Mapping[str, CommandResolver] | None = None,
        image_entrypoints: Mapping[str, list[str]] | None = None,
        sync_period: float = 1.0,
        max_probe_period: float = 1.0,
        max_grace: float = 10.0,
        restart_backoff: tuple[float, float] = (1.0, 10.0),
        volume_wait: float = 60.0,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        if (pod is None) == (deployment is None):
            raise ValueError("name exactly one of pod= or deployment=")
        from kubernetes import client

        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.namespace = namespace
        self.pod_name = pod
        self.deployment = deployment
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="modelseal-podrunner-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir = log_dir or self.workdir / "logs"
        self.max_pods = max_pods
        self.commands = dict(DEFAULT_COMMANDS)
        self.commands.update(commands or {})
        self.image_entrypoints = dict(image_entrypoints or {})
        self.sync_period = sync_period
        self.max_probe_period = max_probe_period
        self.max_grace = max_grace
        self.restart_backoff = restart_backoff
        self.volume_wait = volume_wait
        self.events: list[str] = []
        self._on_event = on_event
        self.pods: dict[str, PodInstance] = {}  # by uid
        self.history: list[PodInstance] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="podrunner", daemon=True)
        self._lock = threading.RLock()
        self._api_host, self._api_port = self._api_address()

    # -- settings for containers ---------------------------------------------------------

    def _api_address(self) -> tuple[str, int]:
        host = str(self.api_client.configuration.host)
        parts = urlsplit(host)
        return parts.hostname or LOOPBACK, parts.port or (443 if parts.scheme == "https" else 80)

    def base_env(self, root: Path) -> dict[str, str]:
        """What every container gets besides its own env (the kubelet's service env)."""
        return {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "HOME": str(root),
            "TMPDIR": str(root / "tmp"),
            "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1",
            "KUBERNETES_SERVICE_HOST": self._api_host,
            "KUBERNETES_SERVICE_PORT": str(self._api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self._api_port),
        }

    def image_entrypoint(self, image: str, args: list[str]) -> list[str]:
        """The image's ENTRYPOINT when the container names no command."""
        repo = image.rsplit("@", 1)[0]
        repo = repo.rsplit(":", 1)[0] if ":" in repo.rsplit("/", 1)[-1] else repo
        if repo in self.image_entrypoints:
            return list(self.image_entrypoints[repo])
        if "tritonserver" in repo:
            # NVIDIA's image runs its args through a shell entrypoint: `tritonserver ...`
            return [] if args and Path(args[0]).name == "tritonserver" else ["tritonserver"]
        if "modelseal" in repo:
            return list(MODELSEAL_ENTRYPOINT)
        raise PodRunnerError(f"no known entrypoint for image {image!r}; pass image_entrypoints=")

    def resolve_command(self, image: str, argv: list[str], ports: PortMap) -> LocalCommand:
        exe = Path(argv[0]).name
        wrapper = len(argv) >= 4 and argv[1] == "-c" and _EXEC_WRAPPER_RE.fullmatch(argv[2])
        if exe in ("sh", "bash") and wrapper:
            # `sh -c 'ulimit ... && exec "$0" "$@"' prog args...`: run the same script with
            # the real shell (the limits really apply) around the resolved program.
            inner = self.resolve_command(image, argv[3:], ports)
            return LocalCommand(["/bin/sh", "-c", argv[2], *inner.argv], inner.env, inner.cleanup)
        resolver = self.commands.get(exe)
        if resolver is not None:
            return resolver(argv, ports)
        if (
            Path(argv[0]).is_absolute()
            and os.access(argv[0], os.X_OK)
            and exe not in ("sh", "bash")
        ):
            return LocalCommand(list(argv))
        raise PodRunnerError(
            f"cannot run {argv[0]!r} (image {image!r}) on this machine; "
            f"known entrypoints: {sorted(self.commands)}"
        )

    # -- API -----------------------------------------------------------------------------

    def read_pod(self, namespace: str, name: str) -> Json | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return _json(self.core.read_namespaced_pod(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def _candidate_pods(self) -> list[Json]:
        from kubernetes.client.exceptions import ApiException

        if self.pod_name is not None:
            pod = self.read_pod(self.namespace, self.pod_name)
            pods = [pod] if pod is not None else []
        else:
            try:
                dep = _json(
                    self.apps.read_namespaced_deployment(
                        self.deployment, self.namespace, _preload_content=False
                    )
                )
            except ApiException as exc:
                if exc.status == 404:
                    return []
                raise
            labels = (dep["spec"].get("selector") or {}).get("matchLabels") or {}
            selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
            listing = _json(
                self.core.list_namespaced_pod(
                    self.namespace, label_selector=selector, _preload_content=False
                )
            )
            pods = listing.get("items") or []
            # only Pods the Deployment owns (through its ReplicaSets)
            pods = [p for p in pods if self._owned_by_deployment(p, dep)]
        pods = [
            p for p in pods
            if p["spec"].get("nodeName")
            and not p["metadata"].get("deletionTimestamp")
            and p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
        ]  # fmt: skip
        pods.sort(key=lambda p: (p["metadata"].get("creationTimestamp", ""), p["metadata"]["name"]))
        return pods

    def _owned_by_deployment(self, pod: Json, dep: Json) -> bool:
        owners = pod["metadata"].get("ownerReferences") or []
        rs_names = [o["name"] for o in owners if o.get("kind") == "ReplicaSet"]
        prefix = dep["metadata"]["name"] + "-"
        return any(n.startswith(prefix) for n in rs_names)

    # -- life cycle ----------------------------------------------------------------------

    def emit(self, message: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} podrunner: {message}"
        self.events.append(line)
        if self._on_event is not None:
            with contextlib.suppress(Exception):
                self._on_event(line)

    def start(self) -> PodRunner:
        _RUNNERS.append(self)
        self._thread.start()
        target = f"pod {self.pod_name}" if self.pod_name else f"deployment {self.deployment}"
        self.emit(f"watching {target} in {self.namespace}; logs in {self.log_dir}")
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self._reconcile()
            except Exception as exc:
                self.emit(f"watch error: {type(exc).__name__}: {exc}")
            self._stop.wait(self.sync_period)

    def _reconcile(self) -> None:
        with self._lock:
            for uid, inst in list(self.pods.items()):
                if inst.stopped:
                    del self.pods[uid]
            if self._stop.is_set():
                return
            wanted = self._candidate_pods()
            running_uids = set(self.pods)
            for pod in wanted:
                if len(self.pods) >= self.max_pods:
                    break
                uid = pod["metadata"]["uid"]
                if uid in running_uids or any(h.uid == uid for h in self.history):
                    continue
                inst = PodInstance(self, pod)
                self.pods[uid] = inst
                self.history.append(inst)
                self.emit(f"running pod {inst.namespace}/{inst.name} on this machine")
                inst.start()

    def stop(self) -> None:
        """Stop every pod this runner started and its watch; wipes memory volumes."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=30)
        with self._lock:
            for inst in list(self.pods.values()):
                inst.stop("runner stopped")
            self.pods.clear()
        if self in _RUNNERS:
            _RUNNERS.remove(self)

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- waiting -------------------------------------------------------------------------

    def current(self) -> PodInstance | None:
        with self._lock:
            live = [p for p in self.pods.values() if not p.stopped]
            return live[0] if live else None

    def wait_ready(
        self,
        timeout: float = 180.0,
        previous: PodInstance | None = None,
        max_restarts: int | None = 4,
    ) -> PodInstance:
        """Wait until a pod (other than `previous`) runs and all its containers are ready.

        Gives up early (CrashLoopBackOff) when a container restarted more than
        `max_restarts` times; the error carries each container's log tail.
        """
        deadline = _now() + timeout
        why = f"pod not ready after {timeout:.0f}s"
        while _now() < deadline:
            inst = self.current()
            if inst is not None and inst is not previous:
                if inst.ready:
                    return inst
                if inst.failure:
                    why = f"pod failed: {inst.failure}"
                    break
                looping = [
                    c.name
                    for c in inst.containers.values()
                    if max_restarts is not None and c.restarts > max_restarts
                ]
                if looping:
                    why = f"container {looping[0]} keeps crashing (CrashLoopBackOff)"
                    break
            time.sleep(0.2)
        inst = self.current()
        detail = inst.describe() if inst else "no pod is running (none bound, or all deleted)"
        tails = ""
        if inst is not None:
            tails = "\n".join(
                f"--- {c.name} ({c.log_path}):\n{inst.logs(c.name, 8)}"
                for c in inst.containers.values()
            )
        raise PodRunnerError(f"{why}:\n{detail}\n{tails}")

    def wait_stopped(self, timeout: float = 60.0) -> None:
        """Wait until no pod runs here any more (Pod deleted or Deployment scaled to 0)."""
        deadline = _now() + timeout
        while _now() < deadline:
            if self.current() is None:
                return
            time.sleep(0.2)
        inst = self.current()
        raise PodRunnerError(
            f"pods still running after {timeout:.0f}s:\n{inst.describe() if inst else ''}"
        )


@atexit.register
def _stop_runners() -> None:
    for runner in list(reversed(_RUNNERS)):
        with contextlib.suppress(Exception):
            runner.stop()
