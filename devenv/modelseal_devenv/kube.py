"""A real Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and kwok (fake GPU nodes), all on 127.0.0.1, built from Go modules by
``devenv/build-kube.sh`` and cached.

    with KubeCluster() as kube:
        api = kube.api_client()          # kubernetes.client.ApiClient, cluster-admin
        kube.kubectl("get", "nodes")     # our own kubectl, same version as the server

Everything lives in a temporary folder (certificates, etcd data, kubeconfigs, logs) and every
process is stopped by ``stop()`` (and, as a last resort, when the interpreter exits).

``python -m modelseal_devenv.kube`` starts a cluster and keeps it up until Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import ipaddress
import json
import os
import shutil
import signal
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

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

BUILD_SCRIPT = "devenv/build-kube.sh"
VERSIONS_FILE = "devenv/go/kube/versions.env"
BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
)
KWOK_STAGES = "kwok-stages.yaml"

#: Annotation (and value) that kwok watches: nodes carrying it are kwok's fake nodes.
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_NODE_VALUE = "fake"
GPU_RESOURCE = "nvidia.com/gpu"
SERVICE_CLUSTER_IP_RANGE = "10.96.0.0/16"
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"


# --------------------------------------------------------------------------- binaries


def pinned_versions() -> dict[str, str]:
    """The pinned versions from devenv/go/kube/versions.env (K8S_VERSION, ETCD_VERSION, ...)."""
    out: dict[str, str] = {}
    for raw in (repo_root() / VERSIONS_FILE).read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def binaries_dir() -> Path:
    """Where build-kube.sh puts (or has put) the binaries for the pinned versions."""
    v = pinned_versions()
    key = f"k8s-{v['K8S_VERSION']}_etcd-{v['ETCD_VERSION']}_kwok-{v['KWOK_VERSION']}"
    return cache_dir() / "bin" / key


def binaries_present(bin_dir: Path | None = None) -> bool:
    folder = bin_dir or binaries_dir()
    return (
        all(os.access(folder / b, os.X_OK) for b in BINARIES) and (folder / KWOK_STAGES).is_file()
    )


def ensure_binaries(log_path: Path | None = None) -> Path:
    """Run devenv/build-kube.sh (a no-op when the cache is current) and return the folder.

    A cold build compiles Kubernetes from source and takes tens of minutes; its output goes
    to ``log_path`` (default: <cache>/build-kube.log) and the log tail is in the error.
    """
    folder = run_build_script(BUILD_SCRIPT, log_path or cache_dir() / "build-kube.log")
    folder = folder or binaries_dir()
    if not binaries_present(folder):
        raise StartError(f"{BUILD_SCRIPT} succeeded but {folder} lacks some of {BINARIES}")
    return folder


# --------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class _Pair:
    cert_pem: bytes
    key_pem: bytes


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class _Pki:
    """A throw-away CA and the certificates the control plane needs (ECDSA P-256)."""

    def __init__(self) -> None:
        self._now = dt.datetime.now(dt.UTC)
        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelseal-test-ca")])
        self.ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - dt.timedelta(hours=1))
            .not_valid_after(self._now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._ca_key.public_key()),
                critical=False,
            )
            .sign(self._ca_key, hashes.SHA256())
        )
        self.ca_pem = self.ca_cert.public_bytes(serialization.Encoding.PEM)
        self.ca_key_pem = _key_pem(self._ca_key)

    def issue(
        self,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server: bool = False,
        dns_names: Sequence[str] = (),
        ips: Sequence[str] = (),
    ) -> _Pair:
        key = ec.generate_private_key(ec.SECP256R1())
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name(attrs))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(self._now - dt.timedelta(hours=1))
            .not_valid_after(self._now + dt.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self._ca_key.public_key()),
                critical=False,
            )
        )
        if dns_names or ips:
            sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
            sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._ca_key, hashes.SHA256())
        return _Pair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _write(path: Path, data: bytes | str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    path.chmod(mode)
    return path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def kubeconfig_document(server: str, ca_pem: bytes, user: str, pair: _Pair) -> dict[str, Any]:
    """A kubeconfig (as a dict) with everything embedded, for one client certificate."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "modelseal-test",
                "cluster": {"server": server, "certificate-authority-data": _b64(ca_pem)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(pair.cert_pem),
                    "client-key-data": _b64(pair.key_pem),
                },
            }
        ],
        "contexts": [
            {"name": "modelseal-test", "context": {"cluster": "modelseal-test", "user": user}}
        ],
        "current-context": "modelseal-test",
        "preferences": {},
    }


# --------------------------------------------------------------------------- the cluster


# kwok's standard stages make a Pod Ready only on its way out of Pending. When the node
# lifecycle controller marks a running Pod not Ready (a late node heartbeat on a loaded
# machine), no kubelet is there to flip it back; this stage plays that kubelet's part.
_POD_READY_AGAIN_STAGE = """\
apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: modelseal-pod-ready-again
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.status.conditions.[] | select( .type == "Ready" ) | .status'
      operator: 'NotIn'
      values: ['True']
  next:
    statusTemplate: |
      {{ $now := Now }}
      conditions:
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: Ready
      - lastTransitionTime: {{ $now | Quote }}
        status: "True"
        type: ContainersReady
"""


class KubeCluster:
    """etcd + kube-apiserver + kube-controller-manager + kube-scheduler + kwok, on loopback.

    Attributes after ``start()``: ``kubeconfig`` (admin, system:masters), ``server`` (the
    https URL), ``ca_file`` / ``ca_pem`` (the cluster CA), ``version`` (gitVersion from /version),
    ``etcd_version``, ``etcd_url``, ``workdir``, ``log_dir``, ``bin_dir``, ``node_names``.
    """

    def __init__(
        self,
        nodes: int = 2,
        gpus_per_node: int = 4,
        *,
        bin_dir: Path | None = None,
        node_taint: bool = False,
        keep_workdir: bool | None = None,
        start_timeout: float = 120.0,
        extra_apiserver_args: Sequence[str] = (),
        advertise_address: str | None = None,
        extra_controller_manager_args: Sequence[str] = (),
    ) -> None:
        """``bin_dir``: the binaries (default: build them with devenv/build-kube.sh if missing).

        ``node_taint``: taint the fake nodes ``kwok.x-k8s.io/node=fake:NoSchedule`` (pods
        then need a toleration); off by default, since there are no other nodes.
        ``keep_workdir``: keep the temporary folder after ``stop()`` (default: the
        environment variable MODELSEAL_KEEP_KUBE_DIR is set).
        ``advertise_address``: for a cluster with a real node (modelseal_devenv.node): the
        host's address on the node's pod bridge. The API server then listens on every
        address (pods reach it there through the ``kubernetes`` Service, the tests still on
        127.0.0.1), advertises that one, and talks to kubelets with its own client
        certificate (exec, logs, port-forward).
        ``extra_controller_manager_args``: appended to kube-controller-manager's (say
        ``--kube-api-qps=100`` for a benchmark that creates many Deployments at once).
        """
        self.nodes = nodes
        self.gpus_per_node = gpus_per_node
        self._bin_dir = bin_dir
        self.node_taint = node_taint
        self.keep_workdir = (
            bool(os.environ.get("MODELSEAL_KEEP_KUBE_DIR"))
            if keep_workdir is None
            else keep_workdir
        )
        self.start_timeout = start_timeout
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.extra_controller_manager_args = list(extra_controller_manager_args)
        self.advertise_address = advertise_address

        self._workdir: Path | None = None
        self._procs: dict[str, ManagedProcess] = {}
        self._apiserver_argv: list[str] = []
        self._ssl: ssl.SSLContext | None = None
        self.server = ""
        self.etcd_url = ""
        self.version = ""
        self.etcd_version = ""
        self.apiserver_port = 0
        self.node_names: list[str] = []

    # ----------------------------------------------------------------- paths

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = ensure_binaries()
        return self._bin_dir

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise RuntimeError("KubeCluster is not started")
        return self._workdir

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def pki_dir(self) -> Path:
        return self.workdir / "pki"

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (user kubernetes-admin, group system:masters)."""
        return self.workdir / "admin.kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.crt"

    @property
    def ca_pem(self) -> str:
        """The cluster CA certificate (PEM text): what clients such as Vault must trust."""
        return self.ca_file.read_text()

    @property
    def service_account_public_key_file(self) -> Path:
        """The public key that verifies ServiceAccount tokens (e.g. for Vault's JWT checks)."""
        return self.pki_dir / "sa.pub"

    def binary(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def running(self) -> bool:
        return bool(self._procs) and all(p.running for p in self._procs.values())

    def process(self, name: str) -> ManagedProcess:
        """One of: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok."""
        return self._procs[name]

    # ----------------------------------------------------------------- life cycle

    def __enter__(self) -> KubeCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> KubeCluster:
        if self._procs:
            raise RuntimeError("KubeCluster already started")
        bin_dir = self.bin_dir  # may build: before the temp folder and the clock
        self._workdir = Path(tempfile.mkdtemp(prefix="modelseal-kube-"))
        try:
            self._start(bin_dir)
        except BaseException as exc:
            if isinstance(exc, StartError):
                self.keep_workdir = True  # the logs named in the error stay readable
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process (reverse start order) and remove the temporary folder (kept
        after a failed start, or with ``keep_workdir``)."""
        for name in reversed(list(self._procs)):
            self._procs[name].stop(timeout=15)
        self._procs.clear()
        if self._workdir is not None and not self.keep_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def _start(self, bin_dir: Path) -> None:
        t0 = time.monotonic()
        self._write_pki()
        self._start_etcd(bin_dir)
        self._start_apiserver(bin_dir)
        self._start_controllers(bin_dir)
        self._start_kwok(bin_dir)
        self._create_nodes()
        self._wait_cluster_ready(t0)

    # ----------------------------------------------------------------- pieces

    def _remaining(self, t0: float) -> float:
        return max(5.0, self.start_timeout - (time.monotonic() - t0))

    def _write_pki(self) -> None:
        pki = _Pki()
        d = self.pki_dir
        _write(d / "ca.crt", pki.ca_pem, 0o644)
        _write(d / "ca.key", pki.ca_key_pem)
        serving = pki.issue(
            "kube-apiserver",
            server=True,
            dns_names=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            ips=[LOOPBACK, "10.96.0.1", *filter(None, [self.advertise_address])],
        )
        _write(d / "serving.crt", serving.cert_pem, 0o644)
        _write(d / "serving.key", serving.key_pem)
        # Front proxy (aggregation layer): lets the API server proxy to aggregated API servers
        # and gives components a complete extension-apiserver-authentication ConfigMap.
        front_proxy = pki.issue("front-proxy-client")
        _write(d / "front-proxy-client.crt", front_proxy.cert_pem, 0o644)
        _write(d / "front-proxy-client.key", front_proxy.key_pem)
        self._pki = pki
        self._clients = {
            "admin": pki.issue("kubernetes-admin", ["system:masters"]),
            "kubelet-client": pki.issue("kube-apiserver-kubelet-client", ["system:masters"]),
            "kube-controller-manager": pki.issue("system:kube-controller-manager"),
            "kube-scheduler": pki.issue("system:kube-scheduler"),
            "kwok": pki.issue("kwok-controller", ["system:masters"]),
        }
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write(d / "sa.key", _key_pem(sa_key))
        _write(
            d / "sa.pub",
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            0o644,
        )
        for name, pair in self._clients.items():
            _write(d / f"{name}.crt", pair.cert_pem, 0o644)
            _write(d / f"{name}.key", pair.key_pem)
        self._ssl = ssl.create_default_context(cafile=str(d / "ca.crt"))
        self._ssl.load_cert_chain(str(d / "admin.crt"), str(d / "admin.key"))

    def _spawn(
        self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None
    ) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.log_dir / f"{name}.log", env=env, cwd=self.workdir)
        self._procs[name] = proc
        return proc.start()

    def _start_etcd(self, bin_dir: Path) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://{LOOPBACK}:{client}"
        peer_url = f"http://{LOOPBACK}:{peer}"
        proc = self._spawn(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=modelseal-test",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=modelseal-test={peer_url}",
                "--initial-cluster-state=new",
                "--unsafe-no-fsync=true",  # throw-away data: skip fsync, much faster on CI disks
                "--log-level=warn",
            ],
        )
        wait_until(
            lambda: json.loads(self._get(f"{self.etcd_url}/health")).get("health") == "true",
            "etcd /health",
            timeout=30,
            process=proc,
        )
        self.etcd_version = str(json.loads(self._get(f"{self.etcd_url}/version"))["etcdserver"])

    def client_kubeconfig(self, name: str, user: str, groups: Sequence[str] = ()) -> Path:
        """Issue a client certificate from the cluster CA and write a kubeconfig for it
        (``<workdir>/<name>.kubeconfig``): how a real node's kubelet and kube-proxy log in."""
        pair = self._pki.issue(user, groups)
        doc = kubeconfig_document(self.server, self.ca_file.read_bytes(), user, pair)
        return _write(self.workdir / f"{name}.kubeconfig", yaml.safe_dump(doc, sort_keys=False))

    def _apiserver_args(self, bin_dir: Path) -> list[str]:
        d = self.pki_dir
        node_args = (
            [
                f"--kubelet-client-certificate={d / 'kubelet-client.crt'}",
                f"--kubelet-client-key={d / 'kubelet-client.key'}",
                "--kubelet-preferred-address-types=InternalIP",
            ]
            if self.advertise_address
            else []
        )
        return [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={'0.0.0.0' if self.advertise_address else LOOPBACK}",
            f"--advertise-address={self.advertise_address or LOOPBACK}",
            f"--secure-port={self.apiserver_port}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            f"--tls-cert-file={d / 'serving.crt'}",
            f"--tls-private-key-file={d / 'serving.key'}",
            f"--client-ca-file={d / 'ca.crt'}",
            f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
            f"--service-account-key-file={d / 'sa.pub'}",
            f"--service-account-signing-key-file={d / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            f"--requestheader-client-ca-file={d / 'ca.crt'}",
            "--requestheader-allowed-names=front-proxy-client",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={d / 'front-proxy-client.crt'}",
            f"--proxy-client-key-file={d / 'front-proxy-client.key'}",
            "--authorization-mode=Node,RBAC",
            # On top of the default set (which already holds ValidatingAdmissionPolicy).
            "--enable-admission-plugins=NodeRestriction,ValidatingAdmissionPolicy",
            "--allow-privileged=true",
            "--profiling=false",
            "--v=1",
            *node_args,
            *self.extra_apiserver_args,
        ]

    def _start_apiserver(self, bin_dir: Path) -> None:
        self.apiserver_port = free_port()
        self.server = f"https://{LOOPBACK}:{self.apiserver_port}"
        self._apiserver_argv = self._apiserver_args(bin_dir)
        self._run_apiserver()
        for name, pair in self._clients.items():
            user = "kubernetes-admin" if name == "admin" else name
            doc = kubeconfig_document(self.server, self.ca_file.read_bytes(), user, pair)
            _write(self.workdir / f"{name}.kubeconfig", yaml.safe_dump(doc, sort_keys=False))
        self.version = str(json.loads(self._get(f"{self.server}/version"))["gitVersion"])

    def _run_apiserver(self, timeout: float = 90.0) -> None:
        proc = self._spawn("kube-apiserver", self._apiserver_argv)
        wait_until(
            lambda: self._get(f"{self.server}/readyz") == "ok",
            "kube-apiserver /readyz",
            timeout=timeout,
            process=proc,
            interval=0.5,
        )

    def restart_apiserver(self, timeout: float = 90.0, grace: float = 3.0) -> None:
        """Stop kube-apiserver and start it again with the same flags and port (data kept).

        With clients connected, a graceful stop waits for their connections up to the
        request timeout (60s); after ``grace`` seconds it is killed (state is in etcd).
        ``grace=0`` kills it outright, like a crash.
        """
        proc = self._procs["kube-apiserver"]
        if grace <= 0:
            proc.kill()
        proc.stop(timeout=grace if grace > 0 else 10)
        self._run_apiserver(timeout)  # replaces the entry in place: stop order is kept

    def _start_controllers(self, bin_dir: Path) -> None:
        d = self.pki_dir
        common = [
            f"--bind-address={LOOPBACK}",
            f"--tls-cert-file={d / 'serving.crt'}",
            f"--tls-private-key-file={d / 'serving.key'}",
            "--leader-elect=false",
            "--profiling=false",
            "--v=1",
        ]
        self._kcm_port = free_port()
        kcm_config = self.workdir / "kube-controller-manager.kubeconfig"
        self._spawn(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kcm_config}",
                f"--authentication-kubeconfig={kcm_config}",
                f"--authorization-kubeconfig={kcm_config}",
                f"--secure-port={self._kcm_port}",
                f"--service-account-private-key-file={d / 'sa.key'}",
                f"--root-ca-file={d / 'ca.crt'}",
                f"--cluster-signing-cert-file={d / 'ca.crt'}",
                f"--cluster-signing-key-file={d / 'ca.key'}",
                f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
                "--use-service-account-credentials=true",
                "--controllers=*",
                "--cluster-name=modelseal-test",
                *common,
                *self.extra_controller_manager_args,
            ],
        )
        self._sched_port = free_port()
        self._spawn(
            "kube-scheduler",
            [
                str(bin_dir / "kube-scheduler"),
                f"--kubeconfig={self.workdir / 'kube-scheduler.kubeconfig'}",
                f"--authentication-kubeconfig={self.workdir / 'kube-scheduler.kubeconfig'}",
                f"--authorization-kubeconfig={self.workdir / 'kube-scheduler.kubeconfig'}",
                f"--secure-port={self._sched_port}",
                *common,
            ],
        )

    def _start_kwok(self, bin_dir: Path) -> None:
        self._kwok_port = free_port()
        ready_again = self.workdir / "kwok-ready-again.yaml"
        ready_again.write_text(_POD_READY_AGAIN_STAGE)
        env = dict(os.environ)
        env["HOME"] = str(self.workdir / "kwok-home")  # kwok reads ~/.kwok/kwok.yaml if present
        self._spawn(
            "kwok",
            [
                str(bin_dir / "kwok"),
                f"--kubeconfig={self.workdir / 'kwok.kubeconfig'}",
                f"--config={bin_dir / KWOK_STAGES}",
                f"--config={ready_again}",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}={KWOK_NODE_VALUE}",
                f"--server-address={LOOPBACK}:{self._kwok_port}",
                "--node-ip=127.0.0.1",
                "--cidr=10.244.0.0/16",
            ],
            env=env,
        )

    def node_manifest(self, name: str) -> dict[str, Any]:
        """A fake GPU node that kwok manages: 4 (gpus_per_node) nvidia.com/gpu, 32 CPUs, 256Gi."""
        capacity = {
            "cpu": "32",
            "memory": "256Gi",
            "pods": "110",
            "ephemeral-storage": "1Ti",
            GPU_RESOURCE: str(self.gpus_per_node),
        }
        spec: dict[str, Any] = {}
        if self.node_taint:
            spec["taints"] = [
                {"key": KWOK_NODE_ANNOTATION, "value": KWOK_NODE_VALUE, "effect": "NoSchedule"}
            ]
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {
                    KWOK_NODE_ANNOTATION: KWOK_NODE_VALUE,
                    "node.alpha.kubernetes.io/ttl": "0",
                },
                "labels": {
                    "type": "kwok",
                    "nvidia.com/gpu.present": "true",
                    "kubernetes.io/hostname": name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "node-role.kubernetes.io/agent": "",
                },
            },
            "spec": spec,
            "status": {"capacity": capacity, "allocatable": dict(capacity)},
        }

    def add_node(self, name: str) -> None:
        """Create one more fake GPU node (kwok marks it Ready)."""
        self._request("POST", "/api/v1/nodes", self.node_manifest(name))
        self.node_names.append(name)

    def _create_nodes(self) -> None:
        # Wait for kwok's own health endpoint, then create the nodes it will manage.
        wait_until(
            lambda: self._get(f"http://{LOOPBACK}:{self._kwok_port}/healthz").strip() == "ok",
            "kwok /healthz",
            timeout=60,
            process=self._procs["kwok"],
            interval=0.3,
        )
        for i in range(self.nodes):
            self.add_node(f"kwok-gpu-{i}")

    def _healthz_check(self, url: str) -> Callable[[], bool]:
        return lambda: self._get(url).strip() == "ok"

    def _nodes_ready(self) -> bool:
        items = json.loads(self._get(f"{self.server}/api/v1/nodes"))["items"]
        ready = {
            n["metadata"]["name"]
            for n in items
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in n.get("status", {}).get("conditions", [])
            )
        }
        return set(self.node_names) <= ready

    def _wait_cluster_ready(self, t0: float) -> None:
        for name, port in (
            ("kube-controller-manager", self._kcm_port),
            ("kube-scheduler", self._sched_port),
        ):
            wait_until(
                self._healthz_check(f"https://{LOOPBACK}:{port}/healthz"),
                f"{name} /healthz",
                timeout=self._remaining(t0),
                process=self._procs[name],
                interval=0.3,
            )
        wait_until(
            self._nodes_ready,
            f"{self.nodes} kwok nodes Ready",
            timeout=self._remaining(t0),
            process=self._procs["kwok"],
            interval=0.3,
        )
        # The ServiceAccount controller runs: namespaces get their "default" ServiceAccount,
        # without which no Pod can be created.
        wait_until(
            lambda: bool(
                self._get(f"{self.server}/api/v1/namespaces/default/serviceaccounts/default")
            ),
            "ServiceAccount default/default (kube-controller-manager)",
            timeout=self._remaining(t0),
            process=self._procs["kube-controller-manager"],
            interval=0.3,
        )

    # ----------------------------------------------------------------- clients

    def _get(self, url: str, timeout: float = 5.0) -> str:
        ctx = self._ssl if url.startswith("https:") else None
        with urllib.request.urlopen(url, timeout=timeout, context=ctx) as resp:  # noqa: S310
            return str(resp.read().decode())

    def wait_for_root_ca(self, namespace: str, timeout: float = 60) -> None:
        """Wait until `namespace` holds the kube-root-ca.crt ConfigMap, which the controller
        manager puts in every namespace a moment after it is made (for a test that counts
        what a listing of the namespace's ConfigMaps shows)."""
        wait_until(
            lambda: (
                "kube-root-ca.crt"
                in self.kubectl("get", "configmaps", "-n", namespace, "-o", "name")
            ),
            f"kube-root-ca.crt in namespace {namespace}",
            timeout=timeout,
            interval=0.1,
        )

    def compact_etcd(self) -> int:
        """Compact etcd's history up to its current revision (what the API server does
        every 5 minutes on its own) and return that revision: a watch or a list
        continuation from an older resourceVersion that the API server serves from etcd
        (a resource with its watch cache off) is then answered 410 Expired."""

        def post(api: str, body: Mapping[str, Any]) -> Any:
            req = urllib.request.Request(  # noqa: S310 - our own etcd on loopback
                f"{self.etcd_url}/v3/kv/{api}",
                data=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310
                return json.loads(resp.read())

        # any key's range answers with the store's current revision in its header
        revision = int(
            post("range", {"key": base64.b64encode(b"/").decode()})["header"]["revision"]
        )
        post("compaction", {"revision": revision, "physical": True})
        return revision

    def fetch_bytes(self, path: str, timeout: float = 30.0) -> bytes:
        """An admin GET of `path` on the API server, its answer as bytes (a profile)."""
        with urllib.request.urlopen(  # noqa: S310 - our own https URL
            f"{self.server}{path}", timeout=timeout, context=self._ssl
        ) as resp:
            return bytes(resp.read())

    def _request(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """An admin request to the API server; returns the decoded JSON answer."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(  # noqa: S310 - our own https URL
            f"{self.server}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30, context=self._ssl) as resp:  # noqa: S310
                return json.loads(resp.read().decode() or "null")
        except urllib.error.HTTPError as exc:
            raise StartError(
                f"{method} {path}: {exc.code} {exc.read().decode(errors='replace')}"
            ) from exc

    def api_client(self) -> Any:
        """A new ``kubernetes.client.ApiClient`` for the admin kubeconfig."""
        from kubernetes import config  # imported here: only the tests need the client

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kube_client(self) -> Any:
        """A new `modelseal.k8s.api.KubeClient` (the operator's own) for the admin
        kubeconfig; close it in the event loop that used it."""
        from modelseal.k8s.access import from_kubeconfig
        from modelseal.k8s.api import KubeClient

        return KubeClient(from_kubeconfig([self.kubeconfig]))

    def kubectl(self, *args: str, stdin: str | None = None, timeout: float = 60) -> str:
        """Run our kubectl (same version as the server) against the cluster; return stdout."""
        return run_checked(
            [str(self.binary("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            f"kubectl {' '.join(args)}",
            input=stdin,
            timeout=timeout,
        )

    def wait_crd_established(self, name: str, timeout: float = 60.0) -> None:
        """Wait until a CRD is served. (`kubectl wait --for=condition=Established` fails at
        once, instead of waiting, while a just-created CRD has no conditions yet.)"""
        jsonpath = '{.status.conditions[?(@.type=="Established")].status}'

        def established() -> bool:
            out = self.kubectl("get", f"crd/{name}", f"-o=jsonpath={jsonpath}", timeout=15)
            return out.strip() == "True"

        wait_until(established, f"CRD {name} Established", timeout=timeout)

    def env(self) -> dict[str, str]:
        """Environment variables that point clients (kubectl, kopf) at this cluster."""
        return {"KUBECONFIG": str(self.kubeconfig)}

    def logs(self) -> Iterator[tuple[str, Path]]:
        for name, proc in self._procs.items():
            yield name, proc.log_path


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m modelseal_devenv.kube",
        description="Start the test Kubernetes control plane and keep it up until Ctrl-C.",
    )
    parser.add_argument("--nodes", type=int, default=2, help="fake GPU nodes (default 2)")
    parser.add_argument("--gpus", type=int, default=4, help="nvidia.com/gpu per node (default 4)")
    parser.add_argument(
        "--build-only", action="store_true", help="only build the binaries; print their folder"
    )
    args = parser.parse_args(argv)
    if args.build_only:
        print(ensure_binaries())
        return 0
    cluster = KubeCluster(nodes=args.nodes, gpus_per_node=args.gpus, keep_workdir=False)
    t0 = time.monotonic()
    with cluster:
        print(f"Kubernetes {cluster.version} (etcd {cluster.etcd_version}) at {cluster.server}")
        print(f"started in {time.monotonic() - t0:.1f}s; logs in {cluster.log_dir}")
        print(f"export KUBECONFIG={cluster.kubeconfig}")
        sys.stdout.flush()
        stop = False

        def _stop(signum: int, frame: object) -> None:
            nonlocal stop
            stop = True

        signal.signal(signal.SIGTERM, _stop)
        try:
            while not stop and cluster.running:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
