"""The demo's stack as deployed: the chart installed with `helm install`, the operator and
the model's pod running under a real kubelet (``modelseal_devenv.node``), images pulled
from the node's registry.

`NodeStack` is `demo.Stack` with four parts replaced: the cluster (a control plane with a
real node instead of kwok GPU nodes), the operator (an in-cluster Deployment from the chart
instead of a child process), the model's placement (a CPU model on the real node) and the
way requests reach the gateway (through the model's Service, by its ClusterIP, as a tenant
in the cluster would). Vault, Redis and S3 still run on this machine on 127.0.0.1; pods
reach them at ``10.88.0.1:<port>`` (``RealNode.expose_host_port``).
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from modelseal_devenv.common import StartError, repo_root, wait_until
from modelseal_devenv.demo import MODEL, TRANSIT_KEY, Bundle, DemoError, Stack
from modelseal_devenv.kube import KubeCluster, ensure_binaries
from modelseal_devenv.node import HOST_ADDRESS, REAL_NODE_LABEL, RealNode

RELEASE = "ms"
RELEASE_NAMESPACE = "modelseal-system"
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}
_IMAGE_LINE = re.compile(r"^image: (?P<name>\S+):(?P<tag>[^\s:]+) (?P<digest>sha256:[0-9a-f]{64})")


@dataclass(frozen=True)
class BuiltImage:
    """One image of images/build.sh: its archive and the reference it got in the registry."""

    kind: str
    archive: Path
    digest: str
    ref: str = ""

    @property
    def repository(self) -> str:
        return self.ref.rsplit(":", 1)[0]

    @property
    def tag(self) -> str:
        return self.ref.rsplit(":", 1)[1]


def build_image(kind: str) -> BuiltImage:
    """images/build.sh <kind> (cached by the hash of its inputs); the archive and digest."""
    proc = subprocess.run(
        ["bash", str(repo_root() / "images/build.sh"), kind],
        capture_output=True, text=True, check=False, cwd=repo_root(), timeout=3600,
    )  # fmt: skip
    if proc.returncode != 0:
        raise StartError(f"images/build.sh {kind} failed:\n{proc.stderr[-4000:]}")
    for line in reversed(proc.stdout.splitlines() + proc.stderr.splitlines()):
        found = _IMAGE_LINE.match(line.strip())
        if found:
            name, tag = found["name"], found["tag"]
            stem = f"{name.rsplit('/', 1)[1]}-{tag}"
            archive = repo_root() / "build/images" / f"{stem}.oci.tar"
            if not archive.is_file():
                raise StartError(f"images/build.sh {kind}: no archive {archive}")
            return BuiltImage(kind, archive, found["digest"], f"{name.rsplit('/', 1)[1]}:{tag}")
    raise StartError(f"images/build.sh {kind} printed no 'image:' line:\n{proc.stdout[-2000:]}")


@dataclass(frozen=True)
class NodeContainer:
    """One container of a Pod on the real node, as the demo's story reads it."""

    name: str
    log_path: Path  # a copy of the kubelet's log of the current run (CRI format)
    env: dict[str, str]


class NodePod:
    """A model Pod on the real node, with the accessors the story uses on a pod runner's
    pod: its gateway URL (the Service), a volume's folder on the node, a container's log."""

    def __init__(self, stack: NodeStack, pod: dict[str, Any]) -> None:
        self.stack = stack
        self.obj = pod
        self.name = str(pod["metadata"]["name"])
        self.uid = str(pod["metadata"]["uid"])
        self._mirrored: set[Path] = set()
        for container in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
            self.log_copy(str(container["name"]))  # from now on, not after the Pod is gone

    def url(self, port: int | str, scheme: str = "http") -> str:
        return self.stack.gateway_url()

    def volume_dir(self, name: str) -> Path:
        assert self.stack.node is not None
        return (
            self.stack.node.kubelet_root
            / "pods"
            / self.uid
            / "volumes/kubernetes.io~empty-dir"
            / name
        )

    def container(self, name: str) -> NodeContainer:
        assert self.stack.node is not None
        spec = self.obj["spec"]
        found = next(
            c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name
        )
        env = {e["name"]: str(e.get("value", "")) for e in found.get("env", [])}
        return NodeContainer(name, self.log_copy(name), env)

    def log_copy(self, name: str) -> Path:
        """A copy of the kubelet's log of container ``name`` (CRI format), kept current
        while the kubelet keeps the log (it goes with the Pod)."""
        assert self.stack.node is not None
        folder = self.stack.node.pod_logs_dir / f"{self.stack.namespace}_{self.name}_{self.uid}"
        copy = self.stack.log_dir / "pods" / self.name / f"{name}.log"
        copy.parent.mkdir(parents=True, exist_ok=True)
        logs = sorted((folder / name).glob("*.log"), key=lambda p: p.stat().st_mtime)
        if logs and copy not in self._mirrored:
            runner: NodeRunner = self.stack.runner
            runner.mirror(logs[-1], copy)
            self._mirrored.add(copy)
        return copy


class NodeRunner:
    """What the story asks of a pod runner, on the real node: wait until the model's Pods
    are gone, keeping a copy of the gateway's audit file until the kubelet removes it."""

    def __init__(self, stack: NodeStack) -> None:
        self.stack = stack
        self._mirrors: list[tuple[Path, Path]] = []
        self.pod_uids: set[str] = set()  # the model Pods handed out by run_pods
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._mirror_loop, daemon=True)
        self._thread.start()

    def mirror(self, source: Path, copy: Path) -> Path:
        """Keep ``copy`` equal to ``source`` (read from the node) while ``source`` exists."""
        self._mirrors.append((source, copy))
        self._copy(source, copy)
        return copy

    @staticmethod
    def _copy(source: Path, copy: Path) -> None:
        with contextlib.suppress(OSError):
            data = source.read_bytes()
            if data:
                copy.write_bytes(data)

    def _mirror_loop(self) -> None:
        while not self._stop.wait(0.05):
            for source, copy in list(self._mirrors):
                self._copy(source, copy)

    def wait_stopped(self, timeout: float = 120.0) -> None:
        """Until the model's Pods are gone and the kubelet has torn down their volumes (the
        memory-backed model volume unmounted, its folder removed)."""
        node = self.stack.node
        assert node is not None

        def torn_down() -> bool:
            mounts = Path("/proc/self/mounts").read_text()
            return not any(
                str(node.kubelet_root / "pods" / uid) in mounts
                or (node.kubelet_root / "pods" / uid / "volumes").exists()
                for uid in self.pod_uids
            )

        wait_until(lambda: not self.stack.model_pods(), f"the Pods of {MODEL} gone", timeout)
        wait_until(torn_down, f"the volumes of {MODEL}'s Pods torn down", timeout)

    def stop(self) -> None:
        self._stop.set()


class NodeStack(Stack):
    """`Stack` on a real node: `helm install` of charts/modelseal, pods under the kubelet."""

    runtime = "containerd"

    def __init__(self, workdir: Path, **kwargs: Any) -> None:
        self.node: RealNode | None = kwargs.pop("node", None)
        super().__init__(workdir, **kwargs)
        self.images: dict[str, BuiltImage] = {}
        self.helm: Path | None = None

    # -- servers -------------------------------------------------------------------------

    def start_kube(self) -> None:
        if self.kube is None:
            self.kube = KubeCluster(
                nodes=0, bin_dir=ensure_binaries(), advertise_address=HOST_ADDRESS
            ).start()
            self._owned.append(self.kube)
        if self.node is None:
            self.node = RealNode(self.kube).start()
            self._owned.append(self.node)  # stopped before the cluster (reverse order)
        self.narrator.say(
            f"Kubernetes {self.kube.version} at {self.kube.server}, node {self.node.name}: "
            f"kubelet {self.node.kubelet_version}, containerd {self.node.containerd_version}"
        )

    def push_images(self) -> dict[str, BuiltImage]:
        """Build (cached) and push the Modelseal and Triton images to the node's registry."""
        assert self.node is not None and self.node.registry is not None
        for kind in ("modelseal", "triton"):
            built = build_image(kind)
            ref = self.node.registry.push(f"oci-archive:{built.archive}", f"modelseal/{built.ref}")
            self.images[kind] = BuiltImage(kind, built.archive, built.digest, ref)
        self.narrator.say(
            "images pushed to the node's registry: "
            + ", ".join(f"{i.ref} ({i.digest[:19]})" for i in self.images.values())
        )
        return self.images

    def start_redis(self) -> None:
        """Redis for the quota counters, answering the pods' connections (which keep their
        pod address through the DNAT, so protected mode would refuse them). It listens on
        127.0.0.1 only; the chart's own Redis with ACL users is tested elsewhere
        (tests/integration/test_operator_redis_auth.py)."""
        from modelseal_devenv.redis import RedisServer

        if self.redis is None:
            self.redis = RedisServer(self.workdir / "redis", protected_mode=False).start()
            self._owned.append(self.redis)
        super().start_redis()

    def in_cluster(self, port: int) -> str:
        """``10.88.0.1:<port>``: a host server's address as pods reach it."""
        assert self.node is not None
        return self.node.expose_host_port(port)

    # -- operator ------------------------------------------------------------------------

    def install_crds(self) -> None:
        """The chart installs the CRDs; here only the model namespace (Pod Security
        `restricted`) is made."""
        self.apply({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": self.namespace, "labels": RESTRICTED},
        })  # fmt: skip

    def _helm(self, *args: str, timeout: float = 600) -> str:
        if self.helm is None:
            from modelseal_devenv.common import run_checked

            out = run_checked(["bash", str(repo_root() / "devenv/build-helm.sh")], "build-helm.sh",
                              timeout=3600)  # fmt: skip
            self.helm = Path(out.strip().splitlines()[-1])
        proc = subprocess.run(
            [str(self.helm), f"--kubeconfig={self.kube.kubeconfig}", *args],
            capture_output=True, text=True, check=False, timeout=timeout,
        )  # fmt: skip
        if proc.returncode != 0:
            raise DemoError(f"helm {' '.join(args[:2])} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc.stdout

    def chart_values(self) -> dict[str, Any]:
        modelseal, triton = self.images["modelseal"], self.images["triton"]
        vault_port = int(self.vault.addr.rsplit(":", 1)[1])
        return {
            "operator": {
                "image": {"repository": modelseal.repository, "tag": modelseal.tag},
                "watchNamespaces": [self.namespace],
                "expiryCheckIntervalSeconds": 5,
                "resyncIntervalSeconds": 30,
                "usageStatusIntervalSeconds": 2,
            },
            "modelPods": {
                "image": {"repository": modelseal.repository, "tag": modelseal.tag},
                "triton": {"image": triton.ref},
            },
            "vault": {
                "addr": f"http://{self.in_cluster(vault_port)}",
                "tokenSecret": {"name": "operator-vault-token", "key": "token"},
            },
            "usageExport": {"url": self._usage_url()},
            "tenancy": {
                "namespaces": {
                    self.namespace: {"transitKeys": [TRANSIT_KEY], "images": [triton.repository]}
                }
            },
        }

    def _usage_url(self) -> str:
        receiver_url = self.start_usage_receiver()  # http://127.0.0.1:<port>/events
        port = int(receiver_url.split(":")[2].split("/")[0])
        return f"http://{self.in_cluster(port)}/events"

    def start_operator(self) -> None:
        """`helm install` of charts/modelseal with the pushed images; wait for the operator
        Deployment to be Available on the real node."""
        if not self.images:
            self.push_images()
        self.apply({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": RELEASE_NAMESPACE, "labels": RESTRICTED},
        })  # fmt: skip
        # The operator's Vault token, as a Secret mounted as a file (vault.tokenSecret).
        self.apply({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "operator-vault-token", "namespace": RELEASE_NAMESPACE},
            "stringData": {"token": self.vault.root_token},
        })  # fmt: skip
        values = self.workdir / "values.yaml"
        values.write_text(yaml.safe_dump(self.chart_values(), sort_keys=False))
        t0 = time.monotonic()
        self._helm(
            "upgrade", "--install", RELEASE, str(repo_root() / "charts/modelseal"),
            "--namespace", RELEASE_NAMESPACE, "-f", str(values), "--wait", "--timeout", "300s",
        )  # fmt: skip
        self.narrator.say(
            f"helm install {RELEASE} charts/modelseal: operator Ready on {self.node_name} "
            f"in {time.monotonic() - t0:.1f}s"
        )

    @property
    def node_name(self) -> str:
        assert self.node is not None
        return self.node.name

    def restart_operator(self) -> None:
        deployment = f"deployment/{RELEASE}-modelseal-operator"
        self.kube.kubectl("-n", RELEASE_NAMESPACE, "rollout", "restart", deployment)
        self.kube.kubectl(
            "-n", RELEASE_NAMESPACE, "rollout", "status", deployment, "--timeout=180s", timeout=200
        )

    def stop_operator(self) -> None:
        """The operator is the chart's Deployment: it goes with the cluster."""

    # -- the model -----------------------------------------------------------------------

    def model_object(self, bundle: Bundle, *, top_k: int = 3) -> dict[str, Any]:
        """The demo's model as a CPU model on the real node, its S3 source and Redis at
        their in-cluster addresses."""
        obj = super().model_object(bundle, top_k=top_k)
        spec = obj["spec"]
        s3_port = int(self.s3.endpoint_url.rsplit(":", 1)[1])
        spec["source"]["endpoint"] = f"http://{self.in_cluster(s3_port)}"
        redis_url = str(spec["gateway"]["redisUrl"])
        spec["gateway"]["redisUrl"] = redis_url.replace(
            f"127.0.0.1:{self.redis.port}", self.in_cluster(int(self.redis.port))
        )
        spec["serving"] = {
            "replicas": 1,
            "gpusPerReplica": 0,
            "nodeSelector": {REAL_NODE_LABEL: "true"},
        }
        return obj

    def model_pods(self) -> list[dict[str, Any]]:
        out = self.kube.kubectl(
            "-n", self.namespace, "get", "pods", "-l", f"modelseal.io/model={MODEL}", "-o", "json"
        )
        pods: list[dict[str, Any]] = json.loads(out)["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def ready_pod(self) -> dict[str, Any] | None:
        for pod in self.model_pods():
            conditions = pod.get("status", {}).get("conditions", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return pod
        return None

    def run_pods(self, timeout: float = 600) -> NodePod:
        """The kubelet runs the pods; wait until one of the model's pods is Ready."""
        wait_until(
            lambda: self.ready_pod() is not None,
            f"a Ready pod of {MODEL} on {self.node_name}",
            timeout=timeout,
            interval=1,
        )
        pod = self.ready_pod()
        assert pod is not None
        if self.runner is None:
            self.runner = NodeRunner(self)
        self.runner.pod_uids.add(str(pod["metadata"]["uid"]))
        return NodePod(self, pod)

    def audit_file(self, pod: Any) -> Path:
        """A copy of the gateway's audit file (on the quota-state volume), kept current
        until the kubelet removes the Pod's volumes."""
        source = Path(pod.volume_dir("quota-state")) / "audit.jsonl"
        runner: NodeRunner = self.runner
        return runner.mirror(source, self.workdir / "audit-from-node.jsonl")

    def gateway_url(self) -> str:
        """The model's Service, by its ClusterIP (kube-proxy routes it to the pod)."""
        svc = json.loads(self.kube.kubectl("-n", self.namespace, "get", "svc", MODEL, "-o", "json"))
        port = next(p["port"] for p in svc["spec"]["ports"] if p.get("name", "http") == "http")
        return f"http://{svc['spec']['clusterIP']}:{port}"
