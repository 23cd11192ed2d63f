"""``make bench-operator``: the operator at scale on the kwok cluster, real Vault (issue 13 §3).

One run, one control plane (etcd, kube-apiserver with an audit log, controller-manager,
scheduler, kwok with enough fake nodes), one in-memory Vault (Transit + Kubernetes auth),
and the operator as a child process (``python -m modelseal operator``) logged in as a user
of its own (``modelseal-bench-operator``) so that the audit log tells its calls apart.
The models are "CPU models" (gpusPerReplica 0) with one replica, ten under each
ModelLicense, twenty in each namespace, one shared Transit key. Phases:

0. floor (``modelseal_devenv.bench_floor``): before the operator starts, the bench creates
   what the operator would render for ``N`` models itself and times until every
   Deployment is Ready (``controlplane_floor_s``): the test cluster's own time for the
   rollout's workloads, which the operator's time can approach and never beat. Its
   namespaces are deleted, and gone, before phase 1.
1. reference: ``N/10`` models (at least 10) rolled out first; their time to all-Ready
   times 10 is the linear reference (``ready_vs_linear_ratio``).
2. rollout: ``N`` models (``MODELSEAL_BENCH_MODELS``, default 1000) under ``N/10``
   licenses in ``N/20`` namespaces, created at once; time from the first create until
   every model of the phase has condition Ready=True (``operator_ready_s``); the
   operator's peak RSS (VmHWM, ``operator_rss_mb``); the operator's API requests per
   second during it from the audit log (``api_rps``); where the time goes: when each
   stage (operator's Deployment create, ReplicaSet's Pod create, scheduler's binding,
   kwok's Pod status, model Ready) was reached for 10/50/90/100 % of the models, the
   requests by client, and the operator's own metrics (reconciles per model, API calls
   per reconcile, reconcile time).
3. resync: the operator is restarted (kopf lists everything, every object is reconciled)
   and runs until its first periodic resync (30 s after start) has drained; every write
   it made meanwhile is counted (``resync_writes``; nothing changed, so 0 is right).
4. kill: another ``N/10`` models; once a quarter of them are Ready (or half the reference
   time passed) the operator is killed (SIGKILL) and started again at once;
   ``converge_after_kill_s`` is the time from the kill until every model is Ready.

Last line: ``operator_ready_s=<s> operator_rss_mb=<MB> resync_writes=<n> api_rps=<r>
converge_after_kill_s=<s> ready_vs_linear_ratio=<x> controlplane_floor_s=<s>
operator_vs_floor_ratio=<x>`` (the last two without phase 0).

Knobs (environment): ``MODELSEAL_BENCH_MODELS`` (1000), ``MODELSEAL_BENCH_FLOOR`` (1; 0
skips phase 0), ``MODELSEAL_BENCH_MODELS_PER_NAMESPACE``
(20; 1000 puts them all in one namespace, as the first measurement did),
``MODELSEAL_BENCH_KCM_QPS`` (100: kube-controller-manager's client rate, whose default of
20 requests/s would make the test cluster's Deployment and ReplicaSet controllers, not the
operator, the limit; 0 keeps the default), ``MODELSEAL_BENCH_NODE_GRACE_S`` (3600:
kube-controller-manager's ``--node-monitor-grace-period``; its default of 50 s marks the
kwok nodes unhealthy, and every Pod on them not Ready, whenever the loaded machine delays
kwok's node heartbeats: at 1,000 models the Ready flips and their repair, not the
operator's work, drove most reconciles. With 300 s, all 1,100 Pods were still marked not
Ready at once about five minutes into a 1,000-model run, in the resync phase, whose
"writes with nothing changed" were then the operator reporting those flips; an hour
outlasts the whole run; 0 keeps the default),
``MODELSEAL_BENCH_TIMEOUT_S`` (per phase, 3600; a 1000-model rollout took over 1800 s on
this shared 2-core machine),
``MODELSEAL_BENCH_KEEP`` (keep the work folder: audit log, logs),
``MODELSEAL_BENCH_APISERVER_PROFILE_S`` (0: off; N: the kube-apiserver runs with
``--profiling=true`` and a CPU profile of its first N s of the rollout is taken, kept as
``apiserver-cpu.pprof`` and summarised by ``go tool pprof -top``), and any
``MODELSEAL_OPERATOR_*`` setting, passed to the operator as is.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from modelseal.config import Settings
from modelseal_devenv.bench_floor import FloorResult, run_floor
from modelseal_devenv.common import ManagedProcess, free_port, repo_root, wait_until
from modelseal_devenv.kube import KubeCluster, ensure_binaries
from modelseal_devenv.vault import VaultServer, create_token_reviewer

GROUP = "modelseal.io"
VERSION = "v1alpha1"
OPERATOR_USER = "modelseal-bench-operator"
MODELS_PER_LICENSE = 10
MODELS_PER_NAMESPACE = 20
PODS_PER_NODE = 100  # kwok's fake nodes take 110 Pods each
TRANSIT_KEY = "bench-key"
DIGEST = "sha256tree:" + "c3" * 32
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
#: The operator's license usage round (usage_status_interval_s), and a little more.
USAGE_ROUND_S = 35.0

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        {"level": "None", "resources": [{"group": "coordination.k8s.io"}]},
        {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*", "/metrics"]},
        {"level": "Metadata"},
    ],
}


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# --------------------------------------------------------------------------------------
# objects
# --------------------------------------------------------------------------------------


@dataclass
class Batch:
    """One phase's namespaces, licenses and models."""

    label: str
    namespaces: list[str]
    licenses: list[tuple[str, str]]  # (namespace, name)
    models: list[tuple[str, str, str]]  # (namespace, name, license)

    @property
    def keys(self) -> set[tuple[str, str]]:
        return {(ns, name) for ns, name, _ in self.models}


def make_batch(label: str, count: int, per_namespace: int = MODELS_PER_NAMESPACE) -> Batch:
    namespaces = [f"{label}-{i:03d}" for i in range(max(1, math.ceil(count / per_namespace)))]
    licenses: list[tuple[str, str]] = []
    models: list[tuple[str, str, str]] = []
    for i in range(count):
        ns = namespaces[i // per_namespace]
        lic = f"lic-{(i % per_namespace) // MODELS_PER_LICENSE}"
        if (ns, lic) not in licenses:
            licenses.append((ns, lic))
        models.append((ns, f"m-{i:04d}", lic))
    return Batch(label, namespaces, licenses, models)


def license_doc(ns: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelLicense",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "tenant": "acme",
            "allowedModels": ["*"],
            "seats": {"maxReplicas": MODELS_PER_LICENSE, "maxGPUs": MODELS_PER_LICENSE},
        },
    }


def model_doc(ns: str, name: str, lic: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ProtectedModel",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "tenant": "acme",
            "licenseRef": {"name": lic},
            "version": "1.0.0",
            "source": {
                "uri": f"s3://sealed-models/{name}-1.0.0.msb",
                "digest": DIGEST,
                "plaintextSize": "64Mi",
            },
            "vault": {"transitKey": TRANSIT_KEY},
            "serving": {"replicas": 1, "gpusPerReplica": 0},
        },
    }


# --------------------------------------------------------------------------------------
# the environment
# --------------------------------------------------------------------------------------


class Bench:
    def __init__(
        self,
        workdir: Path,
        total_pods: int,
        kcm_qps: int,
        node_grace_s: int = 0,
        profiling: bool = False,
    ) -> None:
        self.workdir = workdir
        self.audit_log = workdir / "audit.log"
        policy = workdir / "audit-policy.yaml"
        policy.write_text(yaml.safe_dump(AUDIT_POLICY))
        self.cluster = KubeCluster(
            nodes=math.ceil(total_pods / PODS_PER_NODE) + 1,
            bin_dir=ensure_binaries(),
            extra_apiserver_args=[
                f"--audit-policy-file={policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                # MB; 0 would mean the library's default of 100 MB, and a rotation mid-run
                "--audit-log-maxsize=100000",
            ]
            + (["--profiling=true"] if profiling else []),
            extra_controller_manager_args=(
                [f"--kube-api-qps={kcm_qps}", f"--kube-api-burst={2 * kcm_qps}"] if kcm_qps else []
            )
            + ([f"--node-monitor-grace-period={node_grace_s}s"] if node_grace_s else []),
        )
        self.vault: VaultServer | None = None
        self.api: Any = None
        self.operator: ManagedProcess | None = None
        self.metrics_port = 0
        self.health_port = 0
        self.peak_rss_kb = 0
        self.operator_runs = 0

    def profile_apiserver(self, seconds: int) -> threading.Thread:
        """Take a CPU profile of the kube-apiserver for `seconds` in the background (into
        ``apiserver-cpu.pprof`` in the work folder)."""
        out = self.workdir / "apiserver-cpu.pprof"

        def take() -> None:
            try:
                out.write_bytes(
                    self.cluster.fetch_bytes(
                        f"/debug/pprof/profile?seconds={seconds}", timeout=seconds + 60
                    )
                )
            except OSError as exc:
                say(f"  kube-apiserver profile not taken: {exc}")

        thread = threading.Thread(target=take, name="apiserver-profile", daemon=True)
        thread.start()
        return thread

    def profile_lines(self, top: int = 30) -> list[str]:
        """`go tool pprof -top` of the profile taken (flat and cumulative), or why not."""
        profile = self.workdir / "apiserver-cpu.pprof"
        if not profile.exists():
            return ["  kube-apiserver CPU profile: none"]
        lines: list[str] = []
        for order in ("-flat", "-cum"):
            done = subprocess.run(
                ["go", "tool", "pprof", "-top", order, f"-nodecount={top}", str(profile)],
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
            if done.returncode != 0:
                return [f"  kube-apiserver CPU profile: go tool pprof failed: {done.stderr[-300:]}"]
            lines.append(f"  kube-apiserver CPU profile ({order[1:]}), {profile}:")
            lines += ["    " + line for line in done.stdout.splitlines() if line.strip()]
        return lines

    def start(self) -> None:
        say("starting the control plane and Vault")
        self.cluster.start()
        self.api = self.cluster.api_client()
        for path in sorted((repo_root() / "crds").glob("*.yaml")):
            self.cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        for path in sorted((repo_root() / "crds").glob("*.yaml")):
            self.cluster.wait_crd_established(
                str(yaml.safe_load(path.read_text())["metadata"]["name"])
            )
        self.vault = VaultServer(workdir=self.workdir / "vault").start()
        self.vault.configure_kubernetes_auth(
            kubernetes_host=self.cluster.server,
            ca_pem=self.cluster.ca_pem,
            token_reviewer_jwt=create_token_reviewer(self.api),
        )
        self.vault.create_transit_key(TRANSIT_KEY)
        token = self.workdir / "operator-vault-token"
        token.write_text(self.vault.root_token)
        token.chmod(0o600)
        self.operator_kubeconfig = self.cluster.client_kubeconfig(
            "bench-operator", OPERATOR_USER, ["system:masters"]
        )
        say(
            f"Kubernetes {self.cluster.version}, {len(self.cluster.node_names)} kwok nodes; "
            f"Vault {self.vault.version}; work folder {self.workdir}"
        )

    def stop(self) -> None:
        if self.operator is not None:
            with contextlib.suppress(Exception):
                self.operator.stop(timeout=15)
        if self.api is not None:
            with contextlib.suppress(Exception):
                self.api.close()
        if self.vault is not None:
            with contextlib.suppress(Exception):
                self.vault.stop()
        with contextlib.suppress(Exception):
            self.cluster.stop()

    # --- the operator -----------------------------------------------------------------
    def start_operator(self) -> None:
        assert self.vault is not None
        self.operator_runs += 1
        self.health_port, self.metrics_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
        env.update({k: v for k, v in os.environ.items() if k.startswith("MODELSEAL_OPERATOR_")})
        env.update(
            {
                "KUBECONFIG": str(self.operator_kubeconfig),
                "PYTHONUNBUFFERED": "1",
                # as the chart's operator Deployment sets it (glibc arenas per thread)
                "MALLOC_ARENA_MAX": os.environ.get("MALLOC_ARENA_MAX", "2"),
                "MODELSEAL_VAULT_ADDR": self.vault.addr,
                "MODELSEAL_VAULT_TOKEN_FILE": str(self.workdir / "operator-vault-token"),
                "MODELSEAL_OPERATOR_HEALTH_PORT": str(self.health_port),
                "MODELSEAL_OPERATOR_METRICS_PORT": str(self.metrics_port),
                "MODELSEAL_AUDIT_SINK": "file",
                "MODELSEAL_AUDIT_FILE": str(self.workdir / "operator-audit.jsonl"),
                "MODELSEAL_LOG_LEVEL": "WARNING",
            }
        )
        self.operator = ManagedProcess(
            "operator",
            [sys.executable, "-m", "modelseal", "operator"],
            self.workdir / f"operator-{self.operator_runs}.log",
            env=env,
            cwd=repo_root(),
        ).start()
        wait_until(self._healthy, "operator /healthz", timeout=120, process=self.operator)

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def sample_rss(self) -> None:
        """Peak resident memory of the running operator (the kernel's high-water mark)."""
        if self.operator is None or not self.operator.running:
            return
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{self.operator.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    self.peak_rss_kb = max(self.peak_rss_kb, int(line.split()[1]))

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) so far of each server process and of this script."""
        pids: dict[str, int] = {}
        for name in ("kube-apiserver", "etcd", "kube-controller-manager", "kube-scheduler", "kwok"):
            with contextlib.suppress(Exception):
                pids[name] = self.cluster.process(name).pid
        vault_proc = self.vault.process if self.vault is not None else None
        if vault_proc is not None:
            pids["vault"] = vault_proc.pid
        if self.operator is not None and self.operator.running:
            pids[f"operator ({self.operator_runs})"] = self.operator.pid
        pids["bench (this script)"] = os.getpid()
        tick = os.sysconf("SC_CLK_TCK")
        out: dict[str, float] = {}
        for name, pid in pids.items():
            with contextlib.suppress(OSError, ValueError, IndexError):
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                out[name] = (int(fields[11]) + int(fields[12])) / tick
        return out

    def operator_metrics(self) -> dict[str, float]:
        out: dict[str, float] = {}
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
            ) as resp:
                text = resp.read().decode()
            for line in text.splitlines():
                if line and not line.startswith("#"):
                    key, _, value = line.rpartition(" ")
                    with contextlib.suppress(ValueError):
                        out[key] = float(value)
        return out

    # --- objects ----------------------------------------------------------------------
    def floor(self, batch: Batch, timeout: float) -> FloorResult:
        """Phase 0 (``bench_floor``): the batch's workloads, without the operator."""
        assert self.vault is not None
        say(f"floor: what the operator renders for {len(batch.models)} models, created by "
            f"the bench in {len(batch.namespaces)} namespaces, no operator running")  # fmt: skip
        cpu_before = self.cpu_seconds()
        licenses = {(ns, name): license_doc(ns, name) for ns, name in batch.licenses}
        models = [(model_doc(ns, name, lic), licenses[(ns, lic)]) for ns, name, lic in batch.models]
        settings = Settings(vault_addr=self.vault.addr)
        result = run_floor(self.api, models, settings, timeout, say)
        cpu_after = self.cpu_seconds()
        used = ", ".join(
            f"{name} {cpu_after[name] - cpu_before.get(name, 0.0):.1f} s"
            for name in sorted(cpu_after, key=lambda k: cpu_before.get(k, 0.0) - cpu_after[k])
        )
        say(f"floor: {result.objects} objects created in {result.created_s:.1f} s, every "
            f"Deployment Ready after {result.ready_s:.1f} s; namespaces deleted and gone in "
            f"{result.deleted_s:.1f} s")  # fmt: skip
        print(f"  CPU seconds over the floor (creation to gone): {used}")
        return result

    def create(self, batch: Batch) -> None:
        from kubernetes import client

        core = client.CoreV1Api(self.api)
        custom = client.CustomObjectsApi(self.api)
        for ns in batch.namespaces:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        docs = [("modellicenses", license_doc(ns, name)) for ns, name in batch.licenses]
        docs += [("protectedmodels", model_doc(*m)) for m in batch.models]

        def create_one(item: tuple[str, dict[str, Any]]) -> None:
            plural, doc = item
            custom.create_namespaced_custom_object(
                GROUP, VERSION, doc["metadata"]["namespace"], plural, doc
            )

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(create_one, docs))

    def operator_event_reasons(self, namespaces: Iterable[str]) -> Counter[str]:
        """The operator's core/v1 Events in `namespaces`, counted by reason."""
        out: Counter[str] = Counter()
        for ns in namespaces:
            resp = self.api.call_api(
                f"/api/v1/namespaces/{ns}/events",
                "GET",
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
            )
            for ev in json.loads(resp.data).get("items") or []:
                if (ev.get("source") or {}).get("component") == "modelseal-operator":
                    out[str(ev.get("reason"))] += int(ev.get("count") or 1)
        return out

    def ready_models(self) -> dict[tuple[str, str], float]:
        """(namespace, name) -> when its Ready condition became True (epoch seconds)."""
        resp = self.api.call_api(
            f"/apis/{GROUP}/{VERSION}/protectedmodels",
            "GET",
            query_params=[("resourceVersion", "0")],  # the watch cache: cheap for the server
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
            _preload_content=False,
            _return_http_data_only=True,
        )
        out: dict[tuple[str, str], float] = {}
        for item in json.loads(resp.data).get("items") or []:
            meta = item.get("metadata") or {}
            for c in (item.get("status") or {}).get("conditions") or []:
                if c.get("type") == "Ready" and c.get("status") == "True":
                    when = _epoch(str(c.get("lastTransitionTime") or "")) or time.time()
                    out[(str(meta.get("namespace")), str(meta.get("name")))] = when
        return out

    def wait_ready(
        self, keys: set[tuple[str, str]], timeout: float, until: Any = None
    ) -> dict[tuple[str, str], float]:
        """Poll until every model of `keys` is Ready (or `until(ready)` says stop)."""
        deadline = time.monotonic() + timeout
        last_report = 0.0
        ready: dict[tuple[str, str], float] = {}
        while time.monotonic() < deadline:
            self.sample_rss()
            if self.operator is not None and not self.operator.running:
                raise RuntimeError(f"operator exited:\n{self.operator.log_tail()}")
            all_ready = self.ready_models()
            ready = {k: v for k, v in all_ready.items() if k in keys}
            if until is not None and until(ready):
                return ready
            if len(ready) == len(keys):
                return ready
            if time.monotonic() - last_report > 30:
                last_report = time.monotonic()
                say(f"  {len(ready)}/{len(keys)} Ready")
            time.sleep(3.0)
        raise TimeoutError(f"only {len(ready)}/{len(keys)} models Ready after {timeout:.0f}s")


def _epoch(stamp: str) -> float | None:
    if not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# --------------------------------------------------------------------------------------
# the audit log
# --------------------------------------------------------------------------------------


@dataclass
class AuditWindow:
    events: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path, since: float, until: float | None = None) -> AuditWindow:
        """The completed requests received from `since` to `until` (epoch seconds), from
        `path` and any rotated copies of it beside it (``audit-<time>.log``)."""
        out = cls()
        lo = _stamp(since)
        hi = _stamp(until) if until is not None else "~"
        key = b'"requestReceivedTimestamp":"'
        for file in sorted(path.parent.glob(f"{path.stem}*{path.suffix}")):
            with file.open("rb") as fh:
                for line in fh:
                    at = line.find(key)
                    if at < 0:
                        continue
                    stamp = line[at + len(key) : at + len(key) + 27].decode(errors="replace")
                    if not lo <= stamp <= hi:
                        continue
                    with contextlib.suppress(ValueError):
                        ev = json.loads(line)
                        if ev.get("stage") == "ResponseComplete":
                            out.events.append(ev)
        return out

    def by(self, user: str) -> list[dict[str, Any]]:
        return [e for e in self.events if (e.get("user") or {}).get("username") == user]

    @staticmethod
    def writes(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        return [e for e in events if e.get("verb") in WRITE_VERBS]


def _stamp(epoch: float) -> str:
    """The audit log's timestamp format (UTC, microseconds), which sorts as text."""
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _when(ev: dict[str, Any]) -> float:
    return _epoch(str(ev.get("requestReceivedTimestamp") or "")) or 0.0


def _what(ev: dict[str, Any]) -> str:
    ref = ev.get("objectRef") or {}
    sub = f"/{ref['subresource']}" if ref.get("subresource") else ""
    return f"{ev.get('verb')} {ref.get('resource')}{sub}"


def _short_user(name: str) -> str:
    for prefix in ("system:serviceaccount:kube-system:", "system:"):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def stage_table(
    window: AuditWindow, batch: Batch, ready: dict[tuple[str, str], float], t0: float
) -> list[str]:
    """When each stage of a model's rollout was reached, for 10/50/90/100 % of the models."""
    keys = batch.keys
    first: dict[str, dict[tuple[str, str], float]] = {
        "operator: Deployment created": {},
        "controller: Pod created": {},
        "scheduler: Pod bound": {},
        "kwok: Pod status written": {},
        "operator: model status written": {},
    }
    for ev in window.events:
        ref = ev.get("objectRef") or {}
        ns, name = str(ref.get("namespace") or ""), str(ref.get("name") or "")
        res, sub, verb = ref.get("resource"), ref.get("subresource"), ev.get("verb")
        code = int((ev.get("responseStatus") or {}).get("code") or 0)
        if code >= 400:
            continue
        user = (ev.get("user") or {}).get("username") or ""
        stage = None
        key = (ns, name)
        if res == "deployments" and verb == "create" and user == OPERATOR_USER:
            stage = "operator: Deployment created"
        elif res == "pods" and not sub and verb == "create":
            # the Pod's name is only in the response; the generateName is <rs>-
            stage = "controller: Pod created"
            key = (ns, name.rsplit("-", 2)[0] if name else "")
        elif res == "pods" and sub == "binding":
            stage, key = "scheduler: Pod bound", (ns, name.rsplit("-", 2)[0])
        elif res == "pods" and sub == "status" and user.startswith("kwok"):
            stage, key = "kwok: Pod status written", (ns, name.rsplit("-", 2)[0])
        elif res == "protectedmodels" and sub == "status" and user == OPERATOR_USER:
            stage = "operator: model status written"
        if stage is None or key not in keys:
            continue
        first[stage].setdefault(key, _when(ev) - t0)
    first["model Ready=True"] = {k: v - t0 for k, v in ready.items() if k in keys}
    lines = [f"  {'stage (seconds after the first create)':<42} {'10%':>7} {'50%':>7} "
             f"{'90%':>7} {'100%':>7}   n"]  # fmt: skip
    for stage, seen in first.items():
        vals = list(seen.values())
        cells = " ".join(f"{_pct(vals, q):7.1f}" for q in (0.1, 0.5, 0.9, 1.0))
        lines.append(f"  {stage:<42} {cells}   {len(vals)}")
    return lines


def rate_lines(window: AuditWindow, t0: float, t1: float) -> tuple[float, float, list[str]]:
    """The operator's requests per second (mean, busiest second) and requests by client."""
    span = max(1e-3, t1 - t0)
    ops = [e for e in window.by(OPERATOR_USER) if t0 <= _when(e) <= t1]
    per_second = Counter(int(_when(e)) for e in ops)
    peak = max(per_second.values(), default=0)
    clients = Counter(
        _short_user(str((e.get("user") or {}).get("username"))) for e in window.events
    )
    lines = [f"  requests by client during the rollout ({span:.0f} s; all verbs, watches once):"]
    for user, n in clients.most_common(10):
        lines.append(f"    {user:<48} {n:7d}  {n / span:6.1f}/s")
    verbs = Counter(_what(e) for e in ops)
    lines.append("  the operator's requests by verb and resource:")
    for what, n in verbs.most_common(14):
        lines.append(f"    {what:<48} {n:7d}")
    return len(ops) / span, float(peak), lines


def metric_lines(before: dict[str, float], after: dict[str, float], models: int) -> list[str]:
    def delta(prefix: str) -> float:
        return sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith(prefix))

    pm = 'kind="ProtectedModel"'
    reconciles = delta(f"modelseal_operator_reconciles_total{{{pm}")
    seconds = delta(f"modelseal_operator_reconcile_duration_seconds_sum{{{pm}")
    lic = delta('modelseal_operator_reconciles_total{kind="ModelLicense"')
    calls = delta("modelseal_operator_api_calls_total")
    lists = sum(
        v - before.get(k, 0.0)
        for k, v in after.items()
        if k.startswith("modelseal_operator_api_calls_total") and 'verb="GET"' in k
    )
    vault = delta("modelseal_operator_vault_call_duration_seconds_count")
    vault_s = delta("modelseal_operator_vault_call_duration_seconds_sum")
    wakeups = {
        k.split('source="', 1)[1].split('"', 1)[0]: v - before.get(k, 0.0)
        for k, v in after.items()
        if k.startswith("modelseal_operator_wakeups_total{")
    }
    told = ", ".join(f"{src} {n:.0f}" for src, n in sorted(wakeups.items(), key=lambda i: -i[1]))
    return [
        "  the operator's own metrics over the rollout:",
        f"    model reconciles {reconciles:.0f} ({reconciles / max(1, models):.1f} per model), "
        f"mean {1000 * seconds / max(1.0, reconciles):.0f} ms each; license reconciles {lic:.0f}",
        f"    Kubernetes calls from the reconciler {calls:.0f} "
        f"({calls / max(1.0, reconciles + lic):.1f} per reconcile, {lists:.0f} GET/LIST)",
        f"    Vault operations {vault:.0f}, mean {1000 * vault_s / max(1.0, vault):.0f} ms",
        f"    reconciles asked for, by what asked: {told or 'none'}",
    ]


# --------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    del argv
    n = int(os.environ.get("MODELSEAL_BENCH_MODELS", "1000"))
    timeout = float(os.environ.get("MODELSEAL_BENCH_TIMEOUT_S", "3600"))
    ref_n = max(MODELS_PER_LICENSE, n // 10)
    per_ns = int(os.environ.get("MODELSEAL_BENCH_MODELS_PER_NAMESPACE", MODELS_PER_NAMESPACE))
    kcm_qps = int(os.environ.get("MODELSEAL_BENCH_KCM_QPS", "100"))
    node_grace_s = int(os.environ.get("MODELSEAL_BENCH_NODE_GRACE_S", "3600"))
    ref = make_batch("ref", ref_n, per_ns)
    main_b = make_batch("big", n, per_ns)
    late = make_batch("kill", ref_n, per_ns)
    workdir = Path(tempfile.mkdtemp(prefix="modelseal-bench-operator-"))
    profile_s = int(os.environ.get("MODELSEAL_BENCH_APISERVER_PROFILE_S", "0"))
    bench = Bench(workdir, ref_n + n + ref_n, kcm_qps, node_grace_s, profiling=profile_s > 0)
    say(
        f"{n} models ({per_ns} per namespace, {MODELS_PER_LICENSE} per license); "
        f"kube-controller-manager --kube-api-qps={kcm_qps or 'default (20)'} "
        f"--node-monitor-grace-period={f'{node_grace_s}s' if node_grace_s else 'default (50s)'}; "
        "operator "
        + " ".join(f"{k}={v}" for k, v in os.environ.items() if k.startswith("MODELSEAL_OPERATOR_"))
    )
    keep = bool(os.environ.get("MODELSEAL_BENCH_KEEP"))
    floor: FloorResult | None = None
    try:
        bench.start()
        if os.environ.get("MODELSEAL_BENCH_FLOOR", "1") != "0":
            floor = bench.floor(make_batch("floor", n, per_ns), timeout)
        bench.start_operator()
        say(f"operator up (pid {bench.operator.pid if bench.operator else '?'})")

        # 1. the reference
        say(f"reference: {ref_n} models, {len(ref.licenses)} licenses, "
            f"{len(ref.namespaces)} namespaces")  # fmt: skip
        t0 = time.time()
        bench.create(ref)
        ready = bench.wait_ready(ref.keys, timeout)
        ref_s = max(ready.values()) - t0
        say(f"reference: all {ref_n} Ready after {ref_s:.1f} s")

        # 2. the rollout
        say(f"rollout: {n} models, {len(main_b.licenses)} licenses, "
            f"{len(main_b.namespaces)} namespaces")  # fmt: skip
        m_before = bench.operator_metrics()
        cpu_before = bench.cpu_seconds()
        t0 = time.time()
        profiler = bench.profile_apiserver(profile_s) if profile_s else None
        bench.create(main_b)
        created_s = time.time() - t0
        ready = bench.wait_ready(main_b.keys, timeout)
        t1 = max(ready.values())
        ready_s = t1 - t0
        m_after = bench.operator_metrics()
        cpu_after = bench.cpu_seconds()
        bench.sample_rss()
        rss_mb = bench.peak_rss_kb / 1024
        time.sleep(2)
        window = AuditWindow.read(bench.audit_log, t0 - 1, t1)
        api_rps, peak_rps, rates = rate_lines(window, t0, t1)
        say(f"rollout: all {n} Ready after {ready_s:.1f} s (created in {created_s:.1f} s); "
            f"operator peak RSS {rss_mb:.0f} MB")  # fmt: skip
        for line in stage_table(window, main_b, ready, t0):
            print(line)
        print(
            f"  operator: {api_rps:.1f} requests/s on average, {peak_rps:.0f} in its busiest second"
        )
        for line in rates + metric_lines(m_before, m_after, n):
            print(line)
        reasons = bench.operator_event_reasons(main_b.namespaces)
        print(
            f"  the operator's Events about the rollout's models ({sum(reasons.values())}, "
            f"{sum(reasons.values()) / max(1, n):.1f} per model): "
            + ", ".join(f"{r} {c}" for r, c in reasons.most_common())
        )
        if profiler is not None:
            profiler.join()
            for line in bench.profile_lines():
                print(line)
        print(f"  CPU seconds during the rollout ({os.cpu_count()} cores x {ready_s:.0f} s):")
        for name in sorted(cpu_after, key=lambda k: cpu_before.get(k, 0.0) - cpu_after[k]):
            used = cpu_after[name] - cpu_before.get(name, 0.0)
            print(
                f"    {name:<30} {used:7.1f} s  {100 * used / max(1e-3, ready_s):5.0f} % of a core"
            )
        del window

        # 3. a resync with nothing changed: restart, then the first periodic resync. First
        # one round of the license usage writer (every usage_status_interval_s, 30 s) after
        # the rollout: its first reading of the new Pods' gateways (a license condition
        # changes) is a change, not a resync write, though a fast rollout leaves it for later.
        time.sleep(max(0.0, t1 + USAGE_ROUND_S - time.time()))
        say("resync: restart the operator (every object reconciled), then its first "
            "periodic resync (30 s after start)")  # fmt: skip
        assert bench.operator is not None
        bench.operator.stop(timeout=30)
        t_restart = time.time()
        bench.start_operator()
        total = ref_n + n
        quiet_since = None
        while True:
            bench.sample_rss()
            m = bench.operator_metrics()
            done = sum(
                v for k, v in m.items()
                if k.startswith('modelseal_operator_reconciles_total{kind="ProtectedModel"')
            )  # fmt: skip
            depth = m.get("modelseal_operator_queue_depth", 1.0)
            elapsed = time.time() - t_restart
            if elapsed > 40 and done >= total and depth == 0:
                quiet_since = quiet_since or time.time()
                if time.time() - quiet_since >= 5:
                    break
            else:
                quiet_since = None
            if elapsed > timeout:
                raise TimeoutError("the resync did not drain")
            time.sleep(1.0)
        time.sleep(2)
        resync_window = AuditWindow.read(bench.audit_log, t_restart)
        writes = AuditWindow.writes(resync_window.by(OPERATOR_USER))
        resync_writes = len(writes)
        # What else changed meanwhile (on a loaded machine the node controller marks Pods
        # not ready after a late kwok heartbeat; the operator then rightly writes status).
        flips = Counter(
            _short_user(str((e.get("user") or {}).get("username")))
            for e in AuditWindow.writes(resync_window.events)
            if (e.get("objectRef") or {}).get("resource") == "pods"
            and (e.get("objectRef") or {}).get("subresource") == "status"
        )
        del resync_window
        say(f"resync: {done:.0f} model reconciles in {time.time() - t_restart:.0f} s, "
            f"{resync_writes} writes")  # fmt: skip
        for what, count in Counter(_what(e) for e in writes).most_common(10):
            print(f"    {what:<48} {count:7d}")
        print("  Pod status writes meanwhile (changes the operator must follow): "
              + (", ".join(f"{u} {c}" for u, c in flips.most_common()) or "none"))  # fmt: skip

        # 4. killed mid-rollout
        say(f"kill: {ref_n} more models; SIGKILL the operator a quarter of the way")
        t0 = time.time()
        bench.create(late)
        # A quarter of the reference's time: mid-rollout at any size (polling Ready every
        # 3 s overshot a 10-model batch, which was all Ready before the kill).
        time.sleep(ref_s / 4)
        partial = {k: v for k, v in bench.ready_models().items() if k in late.keys}
        bench.sample_rss()
        assert bench.operator is not None
        bench.operator.kill()
        t_kill = time.time()
        say(f"kill: operator killed after {t_kill - t0:.1f} s with {len(partial)}/{ref_n} Ready")
        bench.start_operator()
        everyone = ref.keys | main_b.keys | late.keys
        ready = bench.wait_ready(everyone, timeout)
        converge_s = max(ready.values()) - t_kill
        say(f"kill: every model ({len(everyone)}) Ready {converge_s:.1f} s after the kill")
        bench.sample_rss()

        ratio = ready_s / (ref_s * n / ref_n)
        print(f"reference: {ref_n} models in {ref_s:.1f} s, x{n / ref_n:.0f} = "
              f"{ref_s * n / ref_n:.1f} s (linear)")  # fmt: skip
        floor_fields = ""
        if floor is not None:
            print(f"floor: the same {n} workloads without the operator Ready in "
                  f"{floor.ready_s:.1f} s; the operator's rollout took "
                  f"{ready_s / floor.ready_s:.2f}x that")  # fmt: skip
            floor_fields = (
                f" controlplane_floor_s={floor.ready_s:.1f} "
                f"operator_vs_floor_ratio={ready_s / floor.ready_s:.2f}"
            )
        print(
            f"operator_ready_s={ready_s:.1f} operator_rss_mb={bench.peak_rss_kb / 1024:.0f} "
            f"resync_writes={resync_writes} api_rps={api_rps:.1f} "
            f"converge_after_kill_s={converge_s:.1f} ready_vs_linear_ratio={ratio:.2f}"
            + floor_fields,
            flush=True,
        )
        return 0
    finally:
        bench.stop()
        if keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _on_term(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_term)
    sys.exit(main())
