"""A real Kubernetes node for the test cluster: kubelet and kube-proxy from the same
``k8s.io/kubernetes`` version as the control plane, containerd v2 (CRI) with Debian's runc,
the CNI reference plugins on a bridge, and a registry on 127.0.0.1 that images reach the
node from, as they reach production nodes.

    with KubeCluster(nodes=0, advertise_address=HOST_ADDRESS) as kube, RealNode(kube) as node:
        node.push_image(archive, "modelseal/modelseal:0.1.0")   # -> node.registry_host/...
        kube.kubectl("get", "nodes")                            # real-node-0 Ready

Pod and Service addresses live only in network namespaces on this machine: pods get
addresses on the bridge ``msbr0`` (``10.88.0.0/16``, the host is ``10.88.0.1``), nothing is
routed off the machine. Host servers that listen on 127.0.0.1 only (Vault, Redis, S3) are
made reachable from pods at ``10.88.0.1:<port>`` one port at a time (``expose_host_port``).

The node needs root, and only one runs per machine (a lock file): kube-proxy owns the
``KUBE-*`` iptables chains. ``stop()`` removes every container, mount, network namespace,
iptables rule and the bridge it made. The binaries come from ``devenv/build-node.sh``
(cached like the control plane), the Debian packages from ``devenv/install-node-deps.sh``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import yaml

from modelseal_devenv.common import (
    LOOPBACK,
    ManagedProcess,
    StartError,
    cache_dir,
    free_port,
    repo_root,
    run_build_script,
    run_checked,
    wait_until,
)
from modelseal_devenv.kube import KubeCluster

BUILD_SCRIPT = "devenv/build-node.sh"
DEPS_SCRIPT = "devenv/install-node-deps.sh"
BINARIES = ("kubelet", "kube-proxy", "containerd", "containerd-shim-runc-v2", "ctr", "pause")
RUNC = "/usr/sbin/runc"
CNI_BIN_DIR = "/usr/lib/cni"
REGISTRY_BINARY = "/usr/bin/docker-registry"

BRIDGE = "msbr0"
POD_CIDR = "10.88.0.0/16"
HOST_ADDRESS = "10.88.0.1"
NODE_NAME = "real-node-0"
#: Label on the real node; CPU models are placed there by a nodeSelector on it.
REAL_NODE_LABEL = "modelseal.io/real-node"
PAUSE_IMAGE = "modelseal/pause:1"
CRI_NAMESPACE = "k8s.io"
_NAT_COMMENT = "modelseal-real-node"
_LOCK = Path("/run/modelseal-real-node.lock")
#: The kubelet's cgroupRoot: every pod cgroup lives below it, in each v1 hierarchy.
CGROUP_ROOT = "modelseal-node"


def ensure_binaries() -> Path:
    """Run devenv/build-node.sh (a no-op when cached) and return the binary folder."""
    folder = run_build_script(BUILD_SCRIPT, cache_dir() / "build-node.log")
    if folder is None:
        raise StartError(f"{BUILD_SCRIPT} printed no binary folder")
    missing = [b for b in BINARIES if not os.access(folder / b, os.X_OK)]
    if missing:
        raise StartError(f"{BUILD_SCRIPT} succeeded but {folder} lacks {missing}")
    return folder


def ensure_packages() -> None:
    run_checked(["bash", str(repo_root() / DEPS_SCRIPT)], DEPS_SCRIPT, timeout=900)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, timeout=120)


def _sysctl(key: str, value: str) -> None:
    Path("/proc/sys", key.replace(".", "/")).write_text(value)


class Registry:
    """Debian's ``docker-registry`` (the CNCF distribution registry) on 127.0.0.1.

    Its storage is under the cache folder, so a second run re-pushes only manifests."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self._proc: ManagedProcess | None = None

    @property
    def host(self) -> str:
        """``127.0.0.1:<port>``: the registry part of an image reference."""
        return f"{LOOPBACK}:{self.port}"

    def start(self) -> Registry:
        self.port = free_port()
        storage = cache_dir() / "registry"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(storage)}},
            "http": {"addr": self.host},
        }
        path = self.workdir / "registry.yml"
        path.write_text(yaml.safe_dump(config))
        self._proc = ManagedProcess(
            "registry", [REGISTRY_BINARY, "serve", str(path)], self.workdir / "logs/registry.log"
        ).start()
        proc = self._proc
        wait_until(
            lambda: _run("curl", "-sf", f"http://{self.host}/v2/", check=False).returncode == 0,
            "registry /v2/",
            timeout=30,
            process=proc,
        )
        return self

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()

    def push(self, source: str, repository: str) -> str:
        """Copy an image (a skopeo transport reference such as ``oci-archive:<file>``) to
        ``<host>/<repository>``; return that reference."""
        ref = f"{self.host}/{repository}"
        run_checked(
            ["skopeo", "copy", "--quiet", "--dest-tls-verify=false", source, f"docker://{ref}"],
            f"skopeo copy {source} {ref}",
            timeout=600,
        )
        return ref


class RealNode:
    """containerd + kubelet + kube-proxy joined to a KubeCluster started with
    ``advertise_address=HOST_ADDRESS``. Attributes after ``start()``: ``name``,
    ``registry`` (a Registry), ``kubelet_version``, ``containerd_version``, ``workdir``."""

    def __init__(
        self, cluster: KubeCluster, *, name: str = NODE_NAME, start_timeout: float = 180
    ) -> None:
        if cluster.advertise_address != HOST_ADDRESS:
            raise StartError(f"the cluster must be started with advertise_address={HOST_ADDRESS}")
        self.cluster = cluster
        self.name = name
        self.start_timeout = start_timeout
        self.kubelet_version = ""
        self.containerd_version = ""
        self._bin: Path | None = None
        self._workdir: Path | None = None
        self._lock: IO[str] | None = None
        self._procs: dict[str, ManagedProcess] = {}
        self._exposed: list[int] = []
        self.registry: Registry | None = None

    # ----------------------------------------------------------------- paths

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("RealNode is not started")
        return self._workdir

    @property
    def bin_dir(self) -> Path:
        if self._bin is None:
            self._bin = ensure_binaries()
        return self._bin

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd/containerd.sock"

    @property
    def kubelet_root(self) -> Path:
        return self.workdir / "kubelet"

    @property
    def containerd_root(self) -> Path:
        return self.workdir / "containerd/root"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def pod_logs_dir(self) -> Path:
        """The kubelet's podLogsDir: <namespace>_<pod>_<uid>/<container>/<restarts>.log."""
        return self.workdir / "pod-logs"

    def logs(self) -> Iterator[tuple[str, Path]]:
        for name, proc in self._procs.items():
            yield name, proc.log_path

    # ----------------------------------------------------------------- life cycle

    def __enter__(self) -> RealNode:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> RealNode:
        if os.geteuid() != 0:
            raise StartError("the real node needs root (kubelet, containerd, CNI, iptables)")
        ensure_packages()
        bin_dir = self.bin_dir
        self._take_lock()
        # Under /var/tmp, not /tmp: kubelet and containerd need a real filesystem (overlayfs
        # upper dirs), and the plaintext search after a test walks this folder.
        self._workdir = Path(tempfile.mkdtemp(prefix="modelseal-node-", dir="/var/tmp"))
        t0 = time.monotonic()
        try:
            self._setup_network()
            self._setup_cgroups()
            self.registry = Registry(self.workdir).start()
            self._push_pause(bin_dir)
            self._start_containerd(bin_dir)
            self._start_kubelet(bin_dir)
            self._start_kube_proxy(bin_dir)
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop kubelet and kube-proxy, remove every pod's containers and network namespace,
        stop containerd and the registry, undo mounts, iptables rules and the bridge."""
        for name in ("kubelet", "kube-proxy"):
            if name in self._procs:
                self._procs[name].stop(timeout=15)
        if "containerd" in self._procs and self._procs["containerd"].running:
            self._remove_all_containers()
        if "containerd" in self._procs:
            self._procs["containerd"].stop(timeout=15)
        self._procs.clear()
        if self.registry is not None:
            self.registry.stop()
            self.registry = None
        if self._workdir is not None:
            self._unmount_under(self._workdir)
            self._cleanup_netns()
            _run(str(self.bin_dir / "kube-proxy"), "--cleanup", check=False)
        self._teardown_network()
        self._teardown_cgroups()
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    # ----------------------------------------------------------------- pieces

    def _take_lock(self) -> None:
        self._lock = _LOCK.open("w")
        deadline = time.monotonic() + 1800  # another run's node (a cold-check, a demo)
        while True:
            try:
                fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise StartError(f"another real node holds {_LOCK} (30 min)") from None
                time.sleep(2)

    def _setup_network(self) -> None:
        self._teardown_network()  # a bridge left by a killed run
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{HOST_ADDRESS}/16", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        _sysctl("net.ipv4.ip_forward", "1")
        # Lets pods reach host servers bound to 127.0.0.1 through expose_host_port's DNAT.
        _sysctl(f"net.ipv4.conf.{BRIDGE}.route_localnet", "1")
        cni = self.workdir / "cni/net.d"
        cni.mkdir(parents=True)
        (cni / "10-modelseal.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "1.0.0",
                    "name": "modelseal-node",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": True,
                            "ipMasq": True,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "ranges": [[{"subnet": POD_CIDR, "gateway": HOST_ADDRESS}]],
                                "routes": [{"dst": "0.0.0.0/0"}],
                                "dataDir": str(self.workdir / "cni/ipam"),
                            },
                        },
                        {"type": "portmap", "capabilities": {"portMappings": True}},
                        {"type": "loopback"},
                    ],
                },
                indent=2,
            )
        )

    def expose_host_port(self, port: int) -> str:
        """Make a host server listening on 127.0.0.1:<port> reachable from pods at
        ``10.88.0.1:<port>``; return ``10.88.0.1:<port>``."""
        _run(
            "iptables", "-t", "nat", "-I", "PREROUTING", "-i", BRIDGE, "-d", HOST_ADDRESS,
            "-p", "tcp", "--dport", str(port), "-m", "comment", "--comment", _NAT_COMMENT,
            "-j", "DNAT", "--to-destination", f"{LOOPBACK}:{port}",
        )  # fmt: skip
        self._exposed.append(port)
        return f"{HOST_ADDRESS}:{port}"

    def _teardown_network(self) -> None:
        rules = _run("iptables-save", "-t", "nat", check=False).stdout.splitlines()
        for rule in rules:
            if _NAT_COMMENT in rule and rule.startswith("-A PREROUTING"):
                _run("iptables", "-t", "nat", *rule.replace("-A", "-D", 1).split(), check=False)
        self._exposed.clear()
        if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            _run("ip", "link", "delete", BRIDGE, check=False)

    @staticmethod
    def _cgroup_hierarchies() -> list[Path]:
        """The mounted cgroup v1 hierarchies (cpu, memory, pids, ..., name=systemd)."""
        return [
            Path(line.split()[1])
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[2] == "cgroup"
        ]

    def _setup_cgroups(self) -> None:
        """Make the kubelet's cgroupRoot in every hierarchy (it refuses to start without);
        a new cpuset cgroup starts with no CPUs and no memory nodes, so copy its parent's."""
        for hierarchy in self._cgroup_hierarchies():
            path = hierarchy / CGROUP_ROOT
            path.mkdir(exist_ok=True)
            for knob in ("cpuset.cpus", "cpuset.mems"):
                if (hierarchy / knob).is_file() and not (path / knob).read_text().strip():
                    (path / knob).write_text((hierarchy / knob).read_text())

    def _teardown_cgroups(self) -> None:
        for hierarchy in self._cgroup_hierarchies():
            root = hierarchy / CGROUP_ROOT
            if not root.is_dir():
                continue
            # Depth first: a cgroup can be removed only once it has no children.
            for path in sorted(
                (p for p in root.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)
            ):
                with contextlib.suppress(OSError):
                    path.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()

    def _push_pause(self, bin_dir: Path) -> None:
        assert self.registry is not None
        archive = bin_dir / "pause.oci.tar"
        self.registry.push(f"oci-archive:{archive}", PAUSE_IMAGE)

    def _spawn(self, name: str, argv: list[str]) -> ManagedProcess:
        env = dict(os.environ)
        env["PATH"] = f"{self.bin_dir}:{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
        proc = ManagedProcess(name, argv, self.log_dir / f"{name}.log", env=env, cwd=self.workdir)
        self._procs[name] = proc
        return proc.start()

    def _start_containerd(self, bin_dir: Path) -> None:
        assert self.registry is not None
        d = self.workdir / "containerd"
        hosts = d / "certs.d" / self.registry.host
        hosts.mkdir(parents=True)
        url = f"http://{self.registry.host}"
        (hosts / "hosts.toml").write_text(
            f'server = "{url}"\n[host."{url}"]\n  capabilities = ["pull", "resolve"]\n'
        )
        cri_images = "plugins.'io.containerd.cri.v1.images'"
        cri_runtime = "plugins.'io.containerd.cri.v1.runtime'"
        runc = f"{cri_runtime}.containerd.runtimes.runc"
        config = f"""\
version = 3
root = "{d / "root"}"
state = "{d / "state"}"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{self.containerd_socket}.ttrpc"
[{cri_images}]
  snapshotter = "overlayfs"
[{cri_images}.pinned_images]
  sandbox = "{self.registry.host}/{PAUSE_IMAGE}"
[{cri_images}.registry]
  config_path = "{d / "certs.d"}"
[{cri_runtime}]
  # This machine may not lower a process's oom_score_adj (the kubelet asks -998 for
  # sandboxes); clamp it to containerd's own instead of failing every pod.
  restrict_oom_score_adj = true
[{cri_runtime}.containerd]
  default_runtime_name = "runc"
[{runc}]
  runtime_type = "io.containerd.runc.v2"
[{runc}.options]
  BinaryName = "{RUNC}"
  SystemdCgroup = false
[{cri_runtime}.cni]
  bin_dirs = ["{CNI_BIN_DIR}"]
  conf_dir = "{self.workdir / "cni/net.d"}"
"""
        path = d / "config.toml"
        path.write_text(config)
        proc = self._spawn("containerd", [str(bin_dir / "containerd"), "--config", str(path)])
        wait_until(
            lambda: self._ctr("version", check=False).returncode == 0,
            "containerd socket",
            timeout=60,
            process=proc,
        )
        version = self._ctr("version").stdout
        server = version.split("Server:", 1)[-1]
        self.containerd_version = next(
            (ln.split()[-1] for ln in server.splitlines() if "Version:" in ln), "unknown"
        )

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(
            str(self.bin_dir / "ctr"), "--address", str(self.containerd_socket),
            "--namespace", CRI_NAMESPACE, *args, check=check,
        )  # fmt: skip

    def _kubelet_config(self) -> dict[str, Any]:
        return {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": HOST_ADDRESS,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": LOOPBACK,
            "healthzPort": self._healthz_port,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": True},
                "x509": {"clientCAFile": str(self.cluster.ca_file)},
            },
            "authorization": {"mode": "Webhook"},
            "cgroupDriver": "cgroupfs",
            # Under its own root so that nothing it makes touches the machine's cgroups.
            "cgroupRoot": f"/{CGROUP_ROOT}",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "failSwapOn": False,
            "failCgroupV1": False,
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
            # A shared CI disk and memory: never evict the tests' pods.
            "evictionHard": {"memory.available": "1%", "nodefs.available": "1%",
                             "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "nodeStatusReportFrequency": "10s",
            "staticPodPath": "",
            "rotateCertificates": False,
            "serverTLSBootstrap": False,
            "localStorageCapacityIsolation": False,
            "protectKernelDefaults": False,
            "maxPods": 50,
            # Container logs under the node's folder (the tests and the demo read them).
            "podLogsDir": str(self.pod_logs_dir),
        }  # fmt: skip

    def _start_kubelet(self, bin_dir: Path) -> None:
        kubeconfig = self.cluster.client_kubeconfig(
            f"kubelet-{self.name}", f"system:node:{self.name}", ["system:nodes"]
        )
        self._healthz_port = free_port()
        config = self.workdir / "kubelet-config.yaml"
        config.write_text(yaml.safe_dump(self._kubelet_config()))
        self.kubelet_root.mkdir(parents=True)
        proc = self._spawn(
            "kubelet",
            [
                str(bin_dir / "kubelet"),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.kubelet_root}",
                f"--cert-dir={self.workdir / 'kubelet-pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={HOST_ADDRESS}",
                f"--node-labels={REAL_NODE_LABEL}=true",
                "--v=1",
            ],
        )
        wait_until(
            lambda: _run("curl", "-sf", f"http://{LOOPBACK}:{self._healthz_port}/healthz",
                         check=False).stdout.strip() == "ok",
            "kubelet /healthz",
            timeout=90,
            process=proc,
        )  # fmt: skip
        out = _run(str(bin_dir / "kubelet"), "--version").stdout.strip()
        self.kubelet_version = out.split()[-1]

    def _start_kube_proxy(self, bin_dir: Path) -> None:
        kubeconfig = self.cluster.client_kubeconfig("kube-proxy", "system:kube-proxy")
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(kubeconfig)},
            "hostnameOverride": self.name,
            "bindAddress": LOOPBACK,
            "healthzBindAddress": f"{LOOPBACK}:{free_port()}",
            "metricsBindAddress": f"{LOOPBACK}:{free_port()}",
            "mode": "iptables",
            "clusterCIDR": POD_CIDR,
            # Leave the machine's conntrack table size alone.
            "conntrack": {"maxPerCore": 0, "min": 0},
        }
        path = self.workdir / "kube-proxy-config.yaml"
        path.write_text(yaml.safe_dump(config))
        self._spawn("kube-proxy", [str(bin_dir / "kube-proxy"), f"--config={path}", "--v=1"])

    def _node(self) -> dict[str, Any] | None:
        out = self.cluster.kubectl("get", "node", self.name, "-o", "json", "--ignore-not-found")
        return json.loads(out) if out.strip() else None

    def _wait_ready(self, t0: float) -> None:
        def ready() -> bool:
            node = self._node()
            conditions = (node or {}).get("status", {}).get("conditions", [])
            return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

        wait_until(
            ready,
            f"node {self.name} Ready",
            timeout=max(10.0, self.start_timeout - (time.monotonic() - t0)),
            process=self._procs["kubelet"],
            interval=1,
        )

    # ----------------------------------------------------------------- clean-up

    def _remove_all_containers(self) -> None:
        tasks = self._ctr("tasks", "list", "-q", check=False).stdout.split()
        for task in tasks:
            self._ctr("tasks", "kill", "--signal", "SIGKILL", "--all", task, check=False)
        for task in tasks:
            self._ctr("tasks", "delete", "--force", task, check=False)
        for container in self._ctr("containers", "list", "-q", check=False).stdout.split():
            self._ctr("containers", "delete", container, check=False)

    @staticmethod
    def _unmount_under(root: Path) -> None:
        mounts = [
            line.split()[1]
            for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(str(root))
        ]
        for mount in sorted(mounts, key=len, reverse=True):
            _run("umount", "-l", mount, check=False)

    def _cleanup_netns(self) -> None:
        for ns in Path("/var/run/netns").glob("cni-*") if Path("/var/run/netns").is_dir() else []:
            _run("ip", "netns", "delete", ns.name, check=False)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.workdir / "cni/ipam")
