"""The chart as deployed, on a real node: `helm install`, then the demo's model as a real Pod
under a real kubelet (containerd v2, runc, CNI), images pulled from the node's registry.

One stack for the module (`modelseal_devenv.nodestack.NodeStack`): a control plane whose
only node is real, Vault, Redis and S3 on this machine. The tests run in file order:

helm install (operator in-cluster, restricted) -> seal, license, model -> the model's Pod
starts (unsealer native sidecar first, then Triton) and serves through its Service ->
401 and output policy -> exec/attach/port-forward/debug/cp refused on the model's Pod and
working on an ordinary Pod -> the model's plaintext is on no disk of the node -> Triton,
then the unsealer killed: the kubelet restarts them and serving resumes -> daily quota 429
-> revocation: the Pod and its memory volume go away.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.waiting import wait_for as poll

from modelseal_devenv.demo import LICENSE, MODEL, Narrator
from modelseal_devenv.models import predict_digits, sample_digits, train_digits
from modelseal_devenv.nodestack import RELEASE_NAMESPACE, RESTRICTED, NodeStack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

PER_DAY = 40
TOP_K = 3
MARKER_FILE = "model.py"  # in the digits model's version folder: its text is the marker
RBAC = "rbac.authorization.k8s.io"
_STATE: dict[str, Any] = {}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeStack]:
    st = NodeStack(tmp_path_factory.mktemp("real-node"), namespace=f"rn-{uuid.uuid4().hex[:6]}",
                   narrator=Narrator(quiet=True))  # fmt: skip
    try:
        st.start_kube()
        st.start_vault()
        st.start_redis()
        st.start_s3()
        st.install_crds()
        yield st
    finally:
        st.stop()


def _eventually(check: Any, what: str, timeout: float = 180.0) -> None:
    poll(check, what, timeout, interval=1.0, tolerate=(Exception,))


def _kubectl_as(
    stack: NodeStack, user: str, *args: str, timeout: float = 30, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(stack.kube.binary("kubectl")), f"--kubeconfig={stack.kube.kubeconfig}", f"--as={user}",
         "-n", stack.namespace, *args],
        capture_output=True, text=True, check=False, timeout=timeout, input=stdin,
    )  # fmt: skip


def _serves(stack: NodeStack) -> bool:
    images, _ = sample_digits(1)
    return stack.infer(images, stack.api_key).status == 200


def test_helm_install_runs_the_operator_on_the_real_node(stack: NodeStack) -> None:
    stack.start_operator()
    out = stack.kube.kubectl("-n", RELEASE_NAMESPACE, "get", "pods", "-o", "json")
    pods = [p for p in json.loads(out)["items"] if "operator" in p["metadata"]["name"]]
    assert len(pods) == 1
    pod = pods[0]
    assert pod["spec"]["nodeName"] == stack.node_name
    assert pod["status"]["phase"] == "Running"
    # pulled from the node's registry, by the kubelet, as rendered by the chart
    status = pod["status"]["containerStatuses"][0]
    assert status["image"] == stack.images["modelseal"].ref
    assert status["imageID"].endswith(stack.images["modelseal"].digest)
    ns = json.loads(stack.kube.kubectl("get", "ns", RELEASE_NAMESPACE, "-o", "json"))
    assert ns["metadata"]["labels"].items() >= RESTRICTED.items()


def test_a_cpu_model_becomes_a_real_pod(stack: NodeStack) -> None:
    bundle = stack.seal_model()
    stack.apply_secrets()
    stack.apply(stack.license_object(per_day=PER_DAY, top_k=TOP_K))
    t0 = time.monotonic()
    stack.apply(stack.model_object(bundle, top_k=TOP_K))
    stack.wait_condition("protectedmodels", MODEL, "KeyAccessible", "True", timeout=240)
    pod = stack.run_pods(timeout=900).obj
    _STATE["create_to_ready_s"] = time.monotonic() - t0
    _STATE["pod"] = pod["metadata"]["name"]
    print(f"real node: {MODEL} create -> Ready in {_STATE['create_to_ready_s']:.1f}s")
    assert pod["spec"]["nodeName"] == stack.node_name
    # The unsealer is a native sidecar (an init container that keeps running); the kubelet
    # started it, and it had decrypted (startup probe), before Triton started.
    unsealer = pod["spec"]["initContainers"][0]
    assert unsealer["name"] == "unsealer" and unsealer["restartPolicy"] == "Always"
    status = {s["name"]: s for s in pod["status"]["initContainerStatuses"]}
    status |= {s["name"]: s for s in pod["status"]["containerStatuses"]}
    assert status["unsealer"]["started"] is True
    started = {n: s["state"]["running"]["startedAt"] for n, s in status.items()}
    assert started["unsealer"] <= started["triton"], started
    assert status["triton"]["image"] == stack.images["triton"].ref


def test_the_tenant_is_served_through_the_service(stack: NodeStack) -> None:
    images, _ = sample_digits(5)
    reply = stack.infer(images, stack.api_key)
    assert reply.status == 200, reply.body
    rows = reply.body["outputs"][0]["data"]
    assert len(rows) == 5 * TOP_K  # the output policy: top-k only, never the full vector
    coef, intercept = train_digits()
    expected = predict_digits(coef, intercept, images).argmax(axis=1)
    assert [int(rows[i * TOP_K].split(":")[1]) for i in range(5)] == [int(e) for e in expected]
    assert stack.infer(images, "acme-not-a-key").status == 401
    assert stack.infer(images, None).status == 401


@pytest.fixture(scope="module")
def ordinary_pod(stack: NodeStack) -> str:
    """An ordinary pod in the model's namespace, same image, restricted-compliant."""
    name = "web"
    stack.apply({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": stack.namespace},
        "spec": {
            "nodeSelector": {"modelseal.io/real-node": "true"},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "web", "image": stack.images["modelseal"].ref,
                "command": ["python3", "-m", "http.server", "8000", "--directory", "/tmp"],
                "securityContext": {"allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    })  # fmt: skip
    stack.kube.kubectl(
        "-n", stack.namespace, "wait", "--for=condition=Ready", f"pod/{name}", "--timeout=300s",
        timeout=320,
    )  # fmt: skip
    # A tenant team with the usual rights: admin of its namespace, plus ephemeral containers
    # (`kubectl debug`), which the built-in admin role leaves out: RBAC allows it all, so
    # what refuses the model's Pod below is Modelseal's admission policy.
    stack.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "debugger", "namespace": stack.namespace},
        "rules": [{"apiGroups": [""], "resources": ["pods/ephemeralcontainers"],
                   "verbs": ["get", "patch", "update"]}],
    })  # fmt: skip
    stack.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "mallory-debugger", "namespace": stack.namespace},
        "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "debugger"},
        "subjects": [{"apiGroup": RBAC, "kind": "User", "name": "mallory"}],
    })  # fmt: skip
    stack.apply({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "mallory-admin", "namespace": stack.namespace},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "admin"},
        "subjects": [{"apiGroup": RBAC, "kind": "User", "name": "mallory"}],
    })  # fmt: skip
    return name


def _run_briefly(stack: NodeStack, *args: str, seconds: float = 8) -> tuple[int, str]:
    """kubectl as mallory, stopped (SIGINT) after ``seconds`` if it still runs (attach and
    port-forward run until stopped); (its exit code, or -1 if it was still running; output)."""
    proc = subprocess.Popen(
        [str(stack.kube.binary("kubectl")), f"--kubeconfig={stack.kube.kubeconfig}", "--as=mallory",
         "-n", stack.namespace, *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=seconds)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        return -1, out


ACTIONS = {
    "exec": ["exec", "{pod}", "-c", "{container}", "--", "cat", "/etc/hostname"],
    "debug": ["debug", "{pod}", "--image={image}", "--profile=restricted", "--", "true"],
    "cp": ["cp", "{pod}:/etc/hostname", "{tmp}/copied", "-c", "{container}"],
    # Issue 12 C1: swap a container's image in place (the kubelet would restart it with the
    # same volumes and tokens). Last in order: it leaves the ordinary pod on another image.
    "set-image": ["set", "image", "pod/{pod}", "{container}={other_image}"],
}


# Commands that stream until stopped: (kubectl arguments).
STREAMING = {"attach": "attach {pod}", "port-forward": "port-forward pod/{pod} 0:8000"}
# What kubectl prints once the kubelet's stream is up.
STREAMING_CONNECTED = {
    "attach": "If you don't see a command prompt",
    "port-forward": "Forwarding from",
}


@pytest.mark.parametrize("action", sorted([*ACTIONS, *STREAMING]))
def test_kubectl_into_the_model_pod_is_refused_and_works_on_an_ordinary_pod(
    stack: NodeStack, ordinary_pod: str, action: str, tmp_path: Path
) -> None:
    model_pod = _STATE["pod"]
    image = stack.images["modelseal"].ref
    if action in STREAMING:
        code, out = _run_briefly(stack, *STREAMING[action].format(pod=model_pod).split())
        assert code not in (-1, 0) and "Modelseal: " in out, out
        code, out = _run_briefly(stack, *STREAMING[action].format(pod=ordinary_pod).split())
        assert code == -1, out  # connected, and ran until we stopped it
        assert "Modelseal" not in out and "forbidden" not in out.lower(), out
        assert STREAMING_CONNECTED[action] in out, out
        _STATE.setdefault("kubectl", {})[action] = "refused / works"
        return
    fill = {"image": image, "other_image": stack.images["triton"].ref, "tmp": str(tmp_path)}

    def args(pod: str, container: str) -> list[str]:
        return [a.format(pod=pod, container=container, **fill) for a in ACTIONS[action]]

    refused = _kubectl_as(stack, "mallory", *args(model_pod, "gateway"))
    assert refused.returncode != 0, refused.stdout
    assert "Modelseal: " in refused.stderr, refused.stderr
    works = _kubectl_as(stack, "mallory", *args(ordinary_pod, "web"), timeout=60)
    assert works.returncode == 0, works.stderr
    if action == "cp":
        assert (tmp_path / "copied").read_text().strip() == ordinary_pod
    _STATE.setdefault("kubectl", {})[action] = "refused / works"


def _borrower(stack: NodeStack, name: str, account: str) -> dict[str, Any]:
    """A restricted-compliant pod spec running as ``account``, with a Vault-audience token."""
    return {
        "metadata": {"labels": {"app": name}},
        "spec": {
            "serviceAccountName": account,
            "nodeSelector": {"modelseal.io/real-node": "true"},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "c", "image": stack.images["modelseal"].ref,
                "command": ["python3", "-c", "import time; time.sleep(3600)"],
                "securityContext": {"allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]}},
                "volumeMounts": [{"name": "vault-token", "mountPath": "/var/run/vault"}],
            }],
            "volumes": [{"name": "vault-token", "projected": {"sources": [{"serviceAccountToken": {
                "audience": "vault", "path": "token", "expirationSeconds": 600}}]}}],
        },
    }  # fmt: skip


def test_a_workload_cannot_borrow_the_models_service_account(
    stack: NodeStack, ordinary_pod: str
) -> None:
    """Issue 12 C2 on the real node: a Pod, and a Deployment whose ReplicaSet the kubelet
    would run, naming the model's ServiceAccount (read from its status), are refused; only
    the model's own Pods run as that account."""
    account = stack.get_custom("protectedmodels", MODEL)["status"]["serviceAccountName"]
    assert account != MODEL  # not guessable from the model's name
    pod = {"apiVersion": "v1", "kind": "Pod", **_borrower(stack, "borrow", account)}
    pod["metadata"] |= {"name": "borrow", "namespace": stack.namespace}
    created = _kubectl_as(stack, "mallory", "create", "-f", "-", stdin=json.dumps(pod))
    assert created.returncode != 0 and "Modelseal: " in created.stderr, created.stderr
    template = _borrower(stack, "squat", account)
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "squat", "namespace": stack.namespace},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "squat"}},
                 "template": template},
    }  # fmt: skip
    created = _kubectl_as(stack, "mallory", "create", "-f", "-", stdin=json.dumps(deployment))
    assert created.returncode != 0 and "Modelseal: " in created.stderr, created.stderr
    pods = json.loads(stack.kube.kubectl("-n", stack.namespace, "get", "pods", "-o", "json"))
    on_account = [p["metadata"]["name"] for p in pods["items"]
                  if p["spec"].get("serviceAccountName") == account]  # fmt: skip
    assert on_account and all(name.startswith(f"{MODEL}-") for name in on_account), on_account


def _files_outside_memory(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` that lives on disk: tmpfs mounts (the model's
    memory volume, projected tokens) are memory, not disk, and are skipped."""
    memory = {
        line.split()[1]
        for line in Path("/proc/self/mounts").read_text().splitlines()
        if line.split()[2] == "tmpfs" and line.split()[1].startswith(str(root))
    }
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in memory]
        for name in filenames:
            path = Path(dirpath, name)
            if path.is_file() and not path.is_symlink():
                yield path


def test_plaintext_is_on_no_disk_of_the_node(stack: NodeStack) -> None:
    assert stack.node is not None
    plaintext = stack.workdir / "model-owner/repository" / MODEL / "1" / MARKER_FILE
    marker = plaintext.read_bytes()[:48]
    assert len(marker) == 48
    searched = found = 0
    for folder in (
        stack.node.kubelet_root,
        stack.node.containerd_root,
        stack.node.workdir / "containerd/state",
    ):
        for path in _files_outside_memory(folder):
            searched += 1
            try:
                if marker in path.read_bytes():
                    found += 1
                    print(f"plaintext marker found in {path}")
            except OSError:
                continue
    assert searched > 100, searched  # the search did look at the node's files
    assert found == 0


def _pod_pids(pod_uid: str, command_part: str) -> list[int]:
    """Host PIDs of the processes of one Pod (by its cgroup) whose command line has
    ``command_part``; other tests' servers on this machine are left alone."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cgroup = (entry / "cgroup").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"pod{pod_uid}" in cgroup and command_part in cmd:
            pids.append(int(entry.name))
    return pids


def _restarts(stack: NodeStack, container: str) -> int:
    pod = json.loads(
        stack.kube.kubectl("-n", stack.namespace, "get", "pod", _STATE["pod"], "-o", "json")
    )
    statuses = pod["status"].get("initContainerStatuses", []) + pod["status"]["containerStatuses"]
    return int(next(s["restartCount"] for s in statuses if s["name"] == container))


@pytest.mark.parametrize(
    ("container", "command"), [("triton", "tritonserver"), ("unsealer", "modelseal unsealer")]
)
def test_killed_containers_are_restarted_by_the_kubelet(
    stack: NodeStack, container: str, command: str
) -> None:
    before = _restarts(stack, container)
    uid = json.loads(
        stack.kube.kubectl("-n", stack.namespace, "get", "pod", _STATE["pod"], "-o", "json")
    )["metadata"]["uid"]
    pids = _pod_pids(uid, command)
    assert pids, f"no {command} process in the model's Pod"
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _eventually(lambda: _restarts(stack, container) > before, f"{container} restarted", 240)
    _eventually(lambda: _serves(stack), "serving again", 300)


def test_daily_quota_runs_out_with_429(stack: NodeStack) -> None:
    """Paced below the license's rate (5/s), so that the 429 that ends it is the daily quota."""
    images, _ = sample_digits(1)
    for _ in range(PER_DAY + 5):
        reply = stack.infer(images, stack.api_key)
        if reply.status == 429 and reply.body.get("limit") == "per_day":
            break
        assert reply.status in (200, 429), reply.body  # a 429 here: the rate, not the day
        time.sleep(0.3)
    assert reply.status == 429 and reply.body.get("limit") == "per_day", reply.body
    again = stack.infer(images, stack.api_key)
    assert again.status == 429 and again.body.get("limit") == "per_day", again.body


def test_revocation_removes_the_pod_and_its_memory_volume(stack: NodeStack) -> None:
    assert stack.node is not None
    pod = _STATE["pod"]
    uid = json.loads(stack.kube.kubectl("-n", stack.namespace, "get", "pod", pod, "-o", "json"))[
        "metadata"
    ]["uid"]
    pod_dir = str(stack.node.kubelet_root / "pods" / uid)

    def mounted() -> bool:
        return any(pod_dir in line for line in Path("/proc/self/mounts").read_text().splitlines())

    assert mounted()
    stack.revoke()
    _eventually(lambda: not stack.model_pods(), "the model's pods gone", 240)
    _eventually(lambda: not mounted(), "the pod's memory volume unmounted", 120)
    assert stack.get_custom("modellicenses", LICENSE)["spec"]["revoked"] is True
    print(f"real node summary: {json.dumps({k: v for k, v in _STATE.items() if k != 'pod'})}")
