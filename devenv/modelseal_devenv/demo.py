"""`make demo`: the whole Modelseal story on this machine, step by step.

    python -m modelseal_devenv.demo [--keep] [--workdir DIR] [--runtime containerd|podrunner]

Starts a real Kubernetes control plane with a real node (kubelet, containerd, CNI; kwok GPU
nodes beside it), Vault (Transit + Kubernetes auth), Redis and a local S3 server; installs
the chart, whose operator the kubelet runs from the images pushed to the node's registry
(`nodestack.NodeStack`); then plays the story of the model owner, the platform engineer
and the tenant, and of a license revocation. Each step says what happens and how long it
took. Everything it started is stopped at the end, also on Ctrl-C. The last line is
``demo: ok runtime=containerd`` followed by the step timings.

``--runtime podrunner`` plays the same story the old way: the operator as a process and
the model's Pod run by the local pod runner (`Stack`, shared with tests/e2e/test_story.py).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelseal_devenv.common import LOOPBACK, ManagedProcess, free_port, repo_root, wait_until

NAMESPACE = "demo"
TENANT = "acme"
LICENSE = "acme-digits"
MODEL = "digits"
TRANSIT_KEY = "digits-key"
BUCKET = "models"
KEYS_OBJECT = "acme-api-keys"  # the Secret with the tenant's hashed API keys


class DemoError(RuntimeError):
    """A step of the story did not do what it should; the message says what and where."""


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


@dataclass
class Narrator:
    """Prints the story: numbered steps with a plain description, each one timed."""

    out: Callable[[str], None] = print
    timings: list[tuple[str, float]] = field(default_factory=list)
    quiet: bool = False

    def say(self, text: str, indent: int = 5) -> None:
        if self.quiet:
            return
        for line in text.splitlines() or [""]:
            self.out(" " * indent + line)

    @contextlib.contextmanager
    def step(self, key: str, title: str, what: str = "") -> Iterator[None]:
        number = len(self.timings) + 1
        if not self.quiet:
            self.out("")
            self.out(f"[{number}] {title}")
            if what:
                self.say(textwrap.fill(textwrap.dedent(what).strip(), 88))
        t0 = time.monotonic()
        yield
        took = time.monotonic() - t0
        self.timings.append((key, took))
        self.say(f"-> done in {took:.1f}s")

    def summary_line(self) -> str:
        return " ".join(f"{key}={took:.1f}s" for key, took in self.timings)


@dataclass
class Bundle:
    path: Path
    uri: str
    digest: str
    plaintext_bytes: int
    size: int


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


def _http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback URL
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


# --------------------------------------------------------------------------------------
# The stack: servers, operator, pod runner
# --------------------------------------------------------------------------------------


class Stack:
    """Every server the story needs, started on 127.0.0.1, and the operator.

    Pass running servers (e.g. session fixtures) to reuse them; what this object starts
    it also stops. ``workdir`` holds the logs, the sealed bundle and the keys.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        kube: Any = None,
        vault: Any = None,
        redis: Any = None,
        s3: Any = None,
        namespace: str = NAMESPACE,
        narrator: Narrator | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir = workdir / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.kube = kube
        self.vault = vault
        self.redis = redis
        self.s3 = s3
        self.namespace = namespace
        self.narrator = narrator or Narrator(quiet=True)
        self._owned: list[Any] = []
        self.operator: ManagedProcess | None = None
        self.operator_env: dict[str, str] = {}
        self.runner: Any = None
        self._api: Any = None
        self._operator_health = 0
        self.bundle: Bundle | None = None
        self.api_key = ""
        self.usage_receiver: Any = None  # receives the gateways' usage CloudEvents
        self.admitted = 0  # inference requests the gateway answered with 200

    # -- servers -------------------------------------------------------------------------

    def start_kube(self) -> None:
        from modelseal_devenv.kube import KubeCluster, ensure_binaries

        if self.kube is None:
            self.kube = KubeCluster(bin_dir=ensure_binaries()).start()
            self._owned.append(self.kube)
        self.narrator.say(
            f"Kubernetes {self.kube.version} at {self.kube.server}, "
            f"nodes {', '.join(self.kube.node_names)} (kwok, nvidia.com/gpu)"
        )

    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = self.kube.api_client()
        return self._api

    def start_vault(self) -> None:
        from modelseal_devenv.vault import VaultServer, create_token_reviewer

        if self.vault is None:
            self.vault = VaultServer(persistent=True, workdir=self.workdir / "vault").start()
            self._owned.append(self.vault)
        reviewer_jwt = create_token_reviewer(self.api)
        self.vault.configure_kubernetes_auth(
            kubernetes_host=str(self.kube.server),
            ca_pem=str(self.kube.ca_pem),
            token_reviewer_jwt=reviewer_jwt,
        )
        self.narrator.say(
            f"Vault {self.vault.version} at {self.vault.addr}: Transit, Kubernetes auth "
            "against the test API server"
        )

    def start_redis(self) -> None:
        from modelseal_devenv.redis import RedisServer

        if self.redis is None:
            self.redis = RedisServer(self.workdir / "redis").start()
            self._owned.append(self.redis)
        self.narrator.say(f"Redis {self.redis.version} at {self.redis.url}")

    def start_s3(self) -> None:
        from modelseal_devenv.s3 import S3Server

        if self.s3 is None:
            self.s3 = S3Server(self.workdir / "s3").start()
            self._owned.append(self.s3)
        self.narrator.say(f"S3 (versitygw {self.s3.version}) at {self.s3.endpoint_url}")

    # -- operator ------------------------------------------------------------------------

    def install_crds(self) -> None:
        self.kube.kubectl("apply", "--server-side", "-f", str(repo_root() / "crds"))
        for crd in ("protectedmodels.modelseal.io", "modellicenses.modelseal.io"):
            self.kube.wait_crd_established(crd)
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}})

    def start_operator(self) -> None:
        """`python -m modelseal operator` as a child process, out of cluster (KUBECONFIG)."""
        token_file = self.workdir / "operator-vault-token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.vault.root_token)
        health = free_port()
        self.operator_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.workdir),
            "PYTHONUNBUFFERED": "1",
            "KUBECONFIG": str(self.kube.kubeconfig),
            "MODELSEAL_VAULT_ADDR": self.vault.addr,
            "MODELSEAL_VAULT_TOKEN_FILE": str(token_file),
            "MODELSEAL_NAMESPACES": json.dumps([self.namespace]),
            "MODELSEAL_OPERATOR_HEALTH_PORT": str(health),
            "MODELSEAL_OPERATOR_METRICS_PORT": str(free_port()),
            "MODELSEAL_EXPIRY_CHECK_INTERVAL_S": "5",
            "MODELSEAL_RESYNC_INTERVAL_S": "30",
            # the license's status.usage follows the tenant's calls within 2 s (issue 14)
            "MODELSEAL_USAGE_STATUS_INTERVAL_S": "2",
            # the gateway writes its audit trail to a file (the pod runner maps the path)
            "MODELSEAL_AUDIT_SINK": "file",
            "MODELSEAL_AUDIT_FILE": str(self.workdir / "operator-audit.jsonl"),
            # every admitted request goes to the usage receiver as a CloudEvent (issue 14)
            "MODELSEAL_USAGE_EXPORT_URL": self.start_usage_receiver(),
        }
        self.operator = ManagedProcess(
            "operator",
            [sys.executable, "-m", "modelseal", "operator"],
            self.log_dir / "operator.log",
            env=self.operator_env,
            cwd=self.workdir,
        ).start()
        wait_until(
            lambda: _http_status(f"http://{LOOPBACK}:{health}/healthz") == 200,
            "operator /healthz",
            timeout=90,
            process=self.operator,
        )
        self._operator_health = health
        self.narrator.say(
            f"operator pid {self.operator.pid}, watching namespace {self.namespace!r}; "
            f"log {self.operator.log_path}"
        )

    def start_usage_receiver(self) -> str:
        """The demo's usage receiver (a real HTTP server here); its URL."""
        from modelseal_devenv.usage_receiver import UsageReceiver

        if self.usage_receiver is None:
            self.usage_receiver = UsageReceiver().start()
            self._owned.append(self.usage_receiver)
        return str(self.usage_receiver.url)

    def restart_operator(self) -> None:
        self.stop_operator()
        self.start_operator()

    # -- Kubernetes helpers --------------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> None:
        """`kubectl apply` (server-side) of one object, as a platform engineer would."""
        import yaml

        self.kube.kubectl(
            "apply", "--server-side", "--force-conflicts", "--field-manager=demo", "-f", "-",
            stdin=yaml.safe_dump(obj, sort_keys=False),
        )  # fmt: skip

    def get_custom(self, plural: str, name: str) -> dict[str, Any]:
        from kubernetes import client as k8s

        result: dict[str, Any] = k8s.CustomObjectsApi(self.api).get_namespaced_custom_object(
            "modelseal.io", "v1alpha1", self.namespace, plural, name
        )
        return result

    def condition(self, plural: str, name: str, ctype: str) -> dict[str, Any] | None:
        try:
            obj = self.get_custom(plural, name)
        except Exception:
            return None
        for cond in (obj.get("status") or {}).get("conditions") or []:
            if cond.get("type") == ctype:
                return dict(cond)
        return None

    def wait_condition(
        self, plural: str, name: str, ctype: str, status: str, timeout: float = 120
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        cond: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            cond = self.condition(plural, name, ctype)
            if cond is not None and cond.get("status") == status:
                return cond
            if self.operator is not None and not self.operator.running:
                raise DemoError(
                    f"the operator exited; last lines of {self.operator.log_path}:\n"
                    f"{self.operator.log_tail(30)}"
                )
            time.sleep(0.5)
        raise DemoError(
            f"{plural}/{name}: condition {ctype} is not {status} after {timeout:.0f}s "
            f"(now: {cond}); operator log: {self.operator.log_path if self.operator else '-'}"
        )

    def conditions_text(self, plural: str, name: str) -> str:
        try:
            obj = self.get_custom(plural, name)
        except Exception as exc:
            return f"({exc})"
        lines = []
        for c in (obj.get("status") or {}).get("conditions") or []:
            lines.append(
                f"{c.get('type'):<16} {c.get('status'):<6} {c.get('reason', ''):<22} "
                f"{c.get('message', '')}"
            )
        return "\n".join(lines)

    # -- the story -----------------------------------------------------------------------

    def seal_model(self) -> Bundle:
        """The model owner: train, seal with a Transit key, upload to S3."""
        from modelseal_devenv.models import build_digits_model

        # a Triton model repository holding one model folder: digits/{config.pbtxt,1/...}
        repository = self.workdir / "model-owner" / "repository"
        build_digits_model(repository, MODEL)
        self.vault.create_transit_key(TRANSIT_KEY)
        token_file = self.workdir / "owner-vault-token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self.vault.root_token)
        bundle = self.workdir / "model-owner" / f"{MODEL}.msb"
        out = self.modelseal(
            "seal", str(repository), "-o", str(bundle), "--model-name", MODEL,
            "--transit-key", TRANSIT_KEY, "--force",
            "--json", "--no-progress", "--vault-addr", self.vault.addr,
            "--vault-token-file", str(token_file),
        )  # fmt: skip
        info = json.loads(out)
        digest = str(info["digest"])
        plaintext = int(info.get("plaintext_bytes") or info.get("plaintext_size") or 0)
        self.s3.create_bucket(BUCKET)
        key = f"{MODEL}/1/{bundle.name}"
        self.s3.client().upload_file(str(bundle), BUCKET, key)
        result = Bundle(
            path=bundle,
            uri=f"s3://{BUCKET}/{key}",
            digest=digest,
            plaintext_bytes=plaintext,
            size=bundle.stat().st_size,
        )
        self.bundle = result
        return result

    def modelseal(self, *args: str) -> str:
        import subprocess

        proc = subprocess.run(
            [sys.executable, "-m", "modelseal", *args],
            capture_output=True, text=True, check=False, cwd=self.workdir,
        )  # fmt: skip
        if proc.returncode != 0:
            raise DemoError(
                f"modelseal {args[0]} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        return proc.stdout

    def license_object(
        self, *, per_day: int, rate: float = 5.0, burst: int = 5, top_k: int = 3
    ) -> dict[str, Any]:
        return {
            "apiVersion": "modelseal.io/v1alpha1",
            "kind": "ModelLicense",
            "metadata": {"name": LICENSE, "namespace": self.namespace},
            "spec": {
                "tenant": TENANT,
                "allowedModels": [MODEL],
                "seats": {"maxReplicas": 1, "maxGPUs": 1},
                "quotas": {
                    "ratePerSecond": rate,
                    "burst": burst,
                    "perDay": per_day,
                    "maxConcurrent": 4,
                },
                "outputPolicy": {"maxMode": "topK", "maxTopK": top_k},
            },
        }

    def model_object(self, bundle: Bundle, *, top_k: int = 3) -> dict[str, Any]:
        return {
            "apiVersion": "modelseal.io/v1alpha1",
            "kind": "ProtectedModel",
            "metadata": {"name": MODEL, "namespace": self.namespace},
            "spec": {
                "tenant": TENANT,
                "licenseRef": {"name": LICENSE},
                "version": "1",
                "modelName": MODEL,
                "source": {
                    "uri": bundle.uri,
                    "digest": bundle.digest,
                    "plaintextSize": bundle.plaintext_bytes,
                    "endpoint": self.s3.endpoint_url,
                    "region": self.s3.region,
                    "credentialsSecretRef": {"name": "model-store-credentials"},
                },
                "vault": {"transitKey": TRANSIT_KEY},
                "serving": {"replicas": 1, "gpusPerReplica": 1},
                "gateway": {"apiKeysSecretName": KEYS_OBJECT, "quotaStore": "redis",
                            "redisUrl": self.redis.url},
                "outputPolicy": {"mode": "topK", "topK": top_k},
            },
        }  # fmt: skip

    def apply_secrets(self) -> str:
        """The tenant's API key (only its hash goes to the cluster) and the S3 credentials."""
        from modelseal.gateway.keys import hash_key_sha256

        api_key = "acme-" + secrets.token_urlsafe(24)
        keys = {
            "consumers": [{"id": "acme-app", "tenant": TENANT, "hash": hash_key_sha256(api_key)}]
        }
        self.apply({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": KEYS_OBJECT, "namespace": self.namespace},
            "stringData": {"keys.json": json.dumps(keys, indent=2)},
        })  # fmt: skip
        self.apply({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": {"name": "model-store-credentials", "namespace": self.namespace},
            "stringData": {
                "AWS_ACCESS_KEY_ID": self.s3.access_key,
                "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
            },
        })  # fmt: skip
        self.api_key = api_key
        return api_key

    def run_pods(self, timeout: float = 300) -> Any:
        """Our local kubelet: run the Deployment's pod as processes on this machine."""
        from modelseal_devenv.podrunner import PodRunner

        deployment = MODEL  # the operator names the model's Deployment after the model
        deadline = time.monotonic() + 120
        from kubernetes import client as k8s

        apps = k8s.AppsV1Api(self.api)
        while True:
            try:
                apps.read_namespaced_deployment(deployment, self.namespace)
                break
            except Exception as exc:
                if time.monotonic() > deadline:
                    raise DemoError(
                        f"the operator rendered no Deployment {deployment} in 120s "
                        f"({exc}); conditions:\n{self.conditions_text('protectedmodels', MODEL)}"
                    ) from exc
                time.sleep(0.5)
        if self.runner is None:
            self.runner = PodRunner(
                self.api,
                self.namespace,
                deployment=deployment,
                workdir=self.workdir / "pods",
                log_dir=self.log_dir / "pods",
                on_event=self._pod_event,
            ).start()
        return self.runner.wait_ready(timeout=timeout)

    def _pod_event(self, line: str) -> None:
        with (self.log_dir / "podrunner.log").open("a") as fh:
            fh.write(line + "\n")
        if self.show_pod_events:
            self.narrator.say(line, indent=7)

    show_pod_events = True
    #: What runs the model's Pods: this Stack's pod runner (kwok GPU nodes); NodeStack
    #: (modelseal_devenv.nodestack) says "containerd": a real kubelet.
    runtime = "podrunner"

    def gateway_url(self) -> str:
        pod = self.runner.current() if self.runner is not None else None
        if pod is None:
            raise DemoError("no pod runs the model")
        return str(pod.url("http"))

    def infer(self, images: Any, api_key: str | None, url: str | None = None) -> Reply:
        """POST a KServe v2 inference request to the gateway."""
        body = {
            "inputs": [
                {
                    "name": "INPUT",
                    "shape": list(images.shape),
                    "datatype": "FP32",
                    "data": [float(x) for x in images.reshape(-1)],
                }
            ]
        }
        headers = {"Content-Type": "application/json"}
        if api_key is not None:
            headers["Authorization"] = f"Bearer {api_key}"
        target = f"{url or self.gateway_url()}/v2/models/{MODEL}/infer"
        request = urllib.request.Request(  # noqa: S310 - loopback URL
            target, data=json.dumps(body).encode(), headers=headers, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
                reply = Reply(resp.status, json.loads(resp.read() or b"null"), dict(resp.headers))
                self.admitted += reply.status == 200
                return reply
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw or b"null")
            except ValueError:
                payload = raw.decode(errors="replace")
            return Reply(exc.code, payload, dict(exc.headers))

    def revoke(self, reason: str = "contract ended") -> None:
        from kubernetes import client as k8s

        k8s.CustomObjectsApi(self.api).patch_namespaced_custom_object(
            "modelseal.io", "v1alpha1", self.namespace, "modellicenses", LICENSE,
            {"spec": {"revoked": True, "revocationReason": reason}},
        )  # fmt: skip

    def vault_role_exists(self) -> bool:
        from modelseal.render.names import vault_name

        role = vault_name("modelseal", self.namespace, MODEL)
        try:
            self.vault.client().auth.kubernetes.read_role(role, mount_point="kubernetes")
        except Exception:
            return False
        return True

    def audit_file(self, pod: Any) -> Path:
        return Path(pod.container("gateway").env["MODELSEAL_AUDIT_FILE"])

    # -- stop ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the pod runner, the operator and every server this object started."""
        if self.runner is not None:
            with contextlib.suppress(Exception):
                self.runner.stop()
            self.runner = None
        self.stop_operator()
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.close()
            self._api = None
        for server in reversed(self._owned):
            with contextlib.suppress(Exception):
                server.stop()
        self._owned.clear()

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop(timeout=15)
            self.operator = None


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


PER_DAY = 8  # the tenant's daily quota in the demo: small, so that it runs out
TOP_K = 3


def _log_lines(path: Path, needles: tuple[str, ...]) -> list[str]:
    """The `msg` of JSON log lines that mention one of `needles`."""
    out: list[str] = []
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return out
    for raw in text.splitlines():
        if not raw.startswith("{"):  # the kubelet's CRI format: "<time> <stream> <tag> <text>"
            raw = raw.split(" ", 3)[-1]
        try:
            msg = str(json.loads(raw).get("msg", ""))
        except (ValueError, AttributeError):
            continue
        if any(needle in msg.lower() for needle in needles):
            out.append(msg)
    return out


def _yaml(obj: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(obj, sort_keys=False)).rstrip()


def story(stack: Stack, n: Narrator) -> None:
    """The whole story; raises DemoError at the first thing that is not as it should be."""
    import numpy as np

    from modelseal_devenv.models import DIGITS_LABELS, sample_digits

    real = stack.runtime == "containerd"
    with n.step(
        "cluster",
        "Start a Kubernetes control plane with a real node"
        if real
        else "Start a Kubernetes control plane with fake GPU nodes",
        """
        etcd, kube-apiserver, kube-controller-manager and kube-scheduler, built from their Go
        modules, plus kwok: two fake nodes that advertise nvidia.com/gpu. kwok reports Pods
        as Running but runs nothing; later our pod runner plays the kubelet."""
        if not real
        else """
        etcd, kube-apiserver, kube-controller-manager and kube-scheduler, plus a real node:
        kubelet and kube-proxy of the same version, containerd v2 with runc and the CNI
        bridge plugin, and a registry on 127.0.0.1 that the images are pushed to.""",
    ):
        stack.start_kube()
    with n.step(
        "vault",
        "Start Vault with Transit and Kubernetes auth",
        """
        Vault checks ServiceAccount tokens of model pods against this API server
        (TokenReview), so a pod can log in with its own identity and nothing else.""",
    ):
        stack.start_vault()
    with n.step("redis-s3", "Start Redis (shared quota counters) and a local S3 server"):
        stack.start_redis()
        stack.start_s3()
    with n.step(
        "operator",
        "helm install the chart: the operator runs on the node"
        if real
        else "Install the CRDs and run the Modelseal operator",
        """
        The images are built (cached) and pushed to the node's registry; `helm install
        charts/modelseal` installs the CRDs, the RBAC, the admission policies and the
        operator Deployment, which the kubelet pulls and starts."""
        if real
        else """
        `python -m modelseal operator` runs out of cluster with the admin kubeconfig and a
        Vault token; it watches ProtectedModel and ModelLicense objects.""",
    ):
        stack.install_crds()
        stack.start_operator()

    with n.step(
        "seal",
        "Model owner: train the digits classifier, seal it, upload to S3",
        """
        A logistic regression on scikit-learn's 8x8 digits, served by Triton's Python
        backend. `modelseal seal` asks Vault Transit for a fresh data key, encrypts the
        model directory with AES-256-GCM in chunks, and stores only the wrapped key in the
        header. The bundle goes to S3; its digest is pinned in the ProtectedModel.""",
    ):
        bundle = stack.seal_model()
        n.say(f"bundle {bundle.uri}: {bundle.size} bytes, plaintext {bundle.plaintext_bytes}")
        n.say(f"digest {bundle.digest}")
        n.say(stack.modelseal("inspect", str(bundle.path)).strip(), indent=7)

    license_obj = stack.license_object(per_day=PER_DAY, top_k=TOP_K)
    model_obj = stack.model_object(bundle, top_k=TOP_K)
    with n.step(
        "apply",
        "Platform engineer: apply a ModelLicense and a ProtectedModel",
        f"""
        Tenant {TENANT!r} may call model {MODEL!r} at 5 requests/s (burst 5), at most
        {PER_DAY} requests a day, and sees only the top-{TOP_K} classes. The tenant's API
        key is stored in a Secret as a hash only.""",
    ):
        api_key = stack.apply_secrets()
        stack.apply(license_obj)
        stack.apply(model_obj)
        n.say(_yaml(license_obj), indent=7)
        n.say("---", indent=7)
        n.say(_yaml(model_obj), indent=7)
        stack.wait_condition("modellicenses", LICENSE, "Valid", "True", timeout=60)
        stack.wait_condition("protectedmodels", MODEL, "KeyAccessible", "True", timeout=120)
        n.say(f"Vault role for the model's ServiceAccount exists: {stack.vault_role_exists()}")

    with n.step(
        "pod",
        "The kubelet runs the rendered pod" if real else "Run the rendered pod on this machine",
        """
        The operator rendered a Deployment: the unsealer as a native sidecar, Triton on
        127.0.0.1 and the gateway as the only exposed port. """
        + (
            """The kubelet starts the unsealer first
        (a native sidecar), in the memory-backed emptyDir; Triton starts once its startup
        probe passes."""
            if real
            else """The pod runner starts its
        containers as local processes with the same command, args, env and volumes (the
        model volume is a tmpfs folder under /dev/shm)."""
        )
        + """ The unsealer logs in to Vault with
        the pod's projected token, fetches the bundle from S3, verifies and decrypts it into
        tmpfs; then Triton loads it and the gateway becomes ready.""",
    ):
        pod = stack.run_pods()
        stack.wait_condition("protectedmodels", MODEL, "Ready", "True", timeout=120)
        n.say(f"pod {pod.name} ready; gateway at {pod.url('http')}")
        n.say(f"model volume (tmpfs): {pod.volume_dir('models')}")

    images, truth = sample_digits(5)
    with n.step("classify", "Tenant: classify five handwritten digits through the gateway"):
        reply = stack.infer(images, api_key)
        if reply.status != 200:
            raise DemoError(f"inference failed: {reply.status} {reply.body}")
        outputs = reply.body["outputs"]
        rows = outputs[0]["data"]
        k = len(rows) // len(truth)
        for i, label in enumerate(truth):
            answers = rows[i * k : (i + 1) * k]
            n.say(f"image of a {DIGITS_LABELS[int(label)]:<6} -> {answers}")
        if k > TOP_K:
            raise DemoError(f"the gateway let {k} classes out, the license allows {TOP_K}")

    with n.step("quota", f"Tenant: keep calling until the daily quota of {PER_DAY} runs out"):
        used = 1
        status = 200
        while used <= PER_DAY + 2:
            reply = stack.infer(images[:1], api_key)
            used += 1
            status = reply.status
            if status == 429:
                break
            if status != 200:
                raise DemoError(f"unexpected answer {status}: {reply.body}")
            time.sleep(0.25)
        if status != 429:
            raise DemoError(f"no 429 after {used} requests (daily quota {PER_DAY})")
        n.say(f"request {used}: 429, Retry-After {reply.headers.get('Retry-After')}: {reply.body}")
        # The operator reads the counters from Redis into the license's status (issue 14).
        stack.wait_condition("modellicenses", LICENSE, "QuotaExhausted", "True", timeout=60)
        n.say(f"kubectl get ml -n {stack.namespace}:")
        n.say(stack.kube.kubectl("get", "ml", "-n", stack.namespace).rstrip(), indent=7)

    with n.step("auth", "A caller with an unknown API key gets 401"):
        reply = stack.infer(images[:1], "not-a-key-" + secrets.token_urlsafe(12))
        n.say(f"{reply.status}: {reply.body}")
        if reply.status != 401:
            raise DemoError(f"unknown key: expected 401, got {reply.status}")

    with n.step(
        "revoke",
        "Vendor revokes the license",
        """
        The operator scales the Deployment to zero and withdraws the model's Vault role;
        the unsealer unloads the model and wipes the tmpfs files; requests fail; the
        conditions say why.""",
    ):
        model_dir = pod.volume_dir("models")
        audit_src = stack.audit_file(pod)
        audit_copy = stack.workdir / "audit.jsonl"
        stack.revoke("demo: contract ended")
        stack.wait_condition("modellicenses", LICENSE, "Revoked", "True", timeout=60)
        stack.runner.wait_stopped(timeout=120)
        if audit_src.exists():
            shutil.copy2(audit_src, audit_copy)
        deadline = time.monotonic() + 60
        while stack.vault_role_exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        if stack.vault_role_exists():
            raise DemoError("the model's Vault role still exists after revocation")
        if model_dir.exists() and any(model_dir.rglob("*")):
            raise DemoError(f"model files left in {model_dir}")
        n.say("Deployment scaled to 0; Vault role withdrawn; tmpfs model folder gone")
        for line in _log_lines(pod.container("unsealer").log_path, ("wip", "unload", "revok")):
            n.say(f"unsealer: {line}")
        try:
            reply = stack.infer(images[:1], api_key, url=pod.url("http"))
            outcome = f"{reply.status}"
        except OSError as exc:
            outcome = f"connection refused ({exc.__class__.__name__})"
        n.say(f"a request now: {outcome}")
        n.say(stack.conditions_text("protectedmodels", MODEL), indent=7)

    with n.step("audit", "Check the audit trail with `modelseal audit verify`"):
        if not audit_copy.exists():
            raise DemoError(f"no audit file at {audit_src}")
        # The gateway's checkpoint key: rendered by the operator into the model's control
        # Secret and mounted into the gateway only (issue 12 Medium 8).
        encoded = stack.kube.kubectl(
            "get", "secret", f"{MODEL}-triton-control", "-n", stack.namespace,
            "-o", "jsonpath={.data.audit-hmac-key}",
        )  # fmt: skip
        key_file = stack.workdir / "audit-hmac.key"
        key_file.write_bytes(base64.b64decode(encoded))
        n.say(
            stack.modelseal(
                "audit", "verify", str(audit_copy), "--key-file", str(key_file), "--require-seal"
            ).strip()
        )
    with n.step(
        "usage",
        "Vendor: the usage receiver got one CloudEvent per admitted request",
        """
        The gateway shipped each admitted request from its audit file (the spool) to the
        usage endpoint as a CloudEvent, at least once; the receiver de-duplicates on the
        event id (the audit record's hash).""",
    ):
        receiver = stack.usage_receiver
        deadline = time.monotonic() + 60
        while receiver.billed(TENANT) < stack.admitted and time.monotonic() < deadline:
            time.sleep(0.2)
        if receiver.billed(TENANT) != stack.admitted:
            raise DemoError(
                f"usage receiver billed {receiver.billed(TENANT)} requests, "
                f"the gateway admitted {stack.admitted}"
            )
        n.say(
            f"{len(receiver.events)} usage events ({receiver.received} received) for "
            f"{stack.admitted} admitted requests of tenant {TENANT!r}"
        )
    n.out("")
    n.say(f"logs: {stack.log_dir} (operator.log, podrunner.log or pods/<pod>/<container>.log)", 0)
    _ = np  # numpy is what the images are


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelseal_devenv.demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, help="where logs and files go (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    parser.add_argument(
        "--runtime",
        choices=("containerd", "podrunner"),
        default="containerd",
        help="containerd (default): the chart and the model's Pod on a real node; podrunner: "
        "the operator as a process, the Pod run by the local pod runner on kwok nodes",
    )
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelseal-demo-"))
    narrator = Narrator(out=lambda line: print(line, flush=True))
    stack: Stack
    if args.runtime == "containerd":
        from modelseal_devenv.nodestack import NodeStack

        stack = NodeStack(workdir, narrator=narrator)
    else:
        stack = Stack(workdir, narrator=narrator)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    ok = False
    code = 1
    try:
        story(stack, narrator)
        ok = True
    except KeyboardInterrupt:
        code = 130
        print("\ndemo: interrupted; stopping everything", flush=True)
    except Exception as exc:
        print(f"\ndemo: FAILED: {type(exc).__name__}: {exc}", flush=True)
        print(f"logs kept in {workdir}", flush=True)
    finally:
        t_stop = time.monotonic()
        stack.stop()
        print(f"stopped everything in {time.monotonic() - t_stop:.1f}s", flush=True)
    if not ok:
        return code
    print("")
    print("summary:")
    for key, took in narrator.timings:
        print(f"  {key:<10} {took:6.1f}s")
    if not args.keep:  # keep only the logs
        for entry in workdir.iterdir():
            if entry.name != "logs":
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        print(f"logs kept in {workdir / 'logs'}")
    else:
        print(f"work folder kept: {workdir}")
    usage = len(stack.usage_receiver.events) if stack.usage_receiver is not None else 0
    print(
        f"demo: ok runtime={stack.runtime} total={time.monotonic() - t0:.1f}s "
        f"{narrator.summary_line()} usage_events={usage}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
