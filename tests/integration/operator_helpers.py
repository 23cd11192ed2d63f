"""Shared pieces of the operator and CRD integration tests (real API server, real Vault).

The operator tests get a control plane of their own (`ops_env`): the shared session
cluster may run other operators and other tests' ProtectedModels, and these tests need the
API server's audit log (to count the operator's write calls) and the freedom to kill and
restart things. The operator runs as a real subprocess (``python -m modelseal operator``)
under its own ServiceAccount with the RBAC below, and logs in to its own Vault with
Kubernetes auth and the policy from examples/vault-operator-policy.hcl, so both the RBAC
and the Vault policy are exercised.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from tests.waiting import wait_for as poll

from modelseal_devenv.common import ManagedProcess, free_port, repo_root
from modelseal_devenv.kube import KubeCluster, ensure_binaries
from modelseal_devenv.vault import VaultServer

ROOT = repo_root()
CRDS = ROOT / "crds"
OPERATOR_NS = "modelseal-system"
OPERATOR_SA = "modelseal-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NS}:{OPERATOR_SA}"
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
GROUP = "modelseal.io"
VERSION = "v1alpha1"

AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "users": [OPERATOR_USER]},
        # Who changes Pod status (kwok, controllers): explains readiness flips in failures.
        {
            "level": "Metadata",
            "verbs": ["update", "patch"],
            "resources": [{"group": "", "resources": ["pods/status"]}],
        },
        {"level": "None"},
    ],
}

OPERATOR_RULES: list[dict[str, Any]] = [
    {
        "apiGroups": ["apiextensions.k8s.io"],
        "resources": ["customresourcedefinitions"],
        "verbs": ["get", "list", "watch"],
    },
    {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
    {
        "apiGroups": [GROUP],
        "resources": ["protectedmodels", "modellicenses"],
        "verbs": ["get", "list", "watch", "patch", "update"],
    },
    {
        "apiGroups": [GROUP],
        "resources": ["protectedmodels/status", "modellicenses/status"],
        "verbs": ["get", "patch", "update"],
    },
    {"apiGroups": [GROUP], "resources": ["protectedmodels/finalizers"], "verbs": ["update"]},
    {
        "apiGroups": [""],
        "resources": ["serviceaccounts", "services", "configmaps"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    },
    # Only the per-model Secrets (triton-control, redis-auth; the chart's Redis auth Secret
    # is read by name): create/read/repair, delete a redis-auth copy no longer needed,
    # never list or watch (as the chart's -operator-secrets role).
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create", "update", "delete"]},
    {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    },
    {
        "apiGroups": ["networking.k8s.io"],
        "resources": ["networkpolicies"],
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"]},
    # Who else runs as a model's ServiceAccount (as in the chart's rbac.yaml).
    {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["get", "list", "watch"]},
    {
        "apiGroups": ["apps"],
        "resources": ["statefulsets", "daemonsets"],
        "verbs": ["list", "watch"],
    },
    {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"], "verbs": ["list", "watch"]},
]


@dataclass
class OpsEnv:
    cluster: KubeCluster
    vault: VaultServer | Any  # None until `ops_env` started it
    workdir: Path
    operator_kubeconfig: Path
    operator_token_file: Path
    audit_log: Path
    api: Any = field(repr=False)
    namespaces: list[str] = field(default_factory=list)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        if check:
            return self.cluster.kubectl(*args, stdin=stdin)
        result = subprocess.run(
            [str(self.cluster.binary("kubectl")), f"--kubeconfig={self.cluster.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return result.stdout + result.stderr

    def apply(self, doc: dict[str, Any]) -> tuple[bool, str]:
        """kubectl apply one object; (accepted, output)."""
        result = subprocess.run(
            [
                str(self.cluster.binary("kubectl")),
                f"--kubeconfig={self.cluster.kubeconfig}",
                "apply",
                "-f",
                "-",
            ],
            input=yaml.safe_dump(doc),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        return result.returncode == 0, (result.stdout + result.stderr).strip()

    # --- raw API access as the admin ----------------------------------------------------
    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    def apps(self) -> Any:
        from kubernetes import client

        return client.AppsV1Api(self.api)

    def get_pm(self, ns: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(
                self.custom().get_namespaced_custom_object(
                    GROUP, VERSION, ns, "protectedmodels", name
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_license(self, ns: str, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return dict(
                self.custom().get_namespaced_custom_object(
                    GROUP, VERSION, ns, "modellicenses", name
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def raw(self, kind: str, ns: str, name: str) -> dict[str, Any] | None:
        """A core/apps/networking object as raw JSON (camelCase)."""
        paths = {
            "Deployment": f"/apis/apps/v1/namespaces/{ns}/deployments/{name}",
            "Service": f"/api/v1/namespaces/{ns}/services/{name}",
            "ServiceAccount": f"/api/v1/namespaces/{ns}/serviceaccounts/{name}",
            "ConfigMap": f"/api/v1/namespaces/{ns}/configmaps/{name}",
            "Secret": f"/api/v1/namespaces/{ns}/secrets/{name}",
            "NetworkPolicy": f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies/{name}",
        }
        from kubernetes.client.exceptions import ApiException

        try:
            resp = self.api.call_api(
                paths[kind],
                "GET",
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(json.loads(resp.data))

    def events(self, ns: str, name: str) -> list[dict[str, Any]]:
        items = self.core().list_namespaced_event(ns, field_selector=f"involvedObject.name={name}")
        return [
            {
                "reason": e.reason,
                "type": e.type,
                "message": e.message,
                "kind": e.involved_object.kind,
                "component": e.reporting_component or (e.source.component if e.source else None),
            }
            for e in items.items
        ]

    def namespace(self, prefix: str = "t") -> str:
        from kubernetes import client

        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        self.core().create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
        self.namespaces.append(name)
        return name

    def drop_namespaces(self) -> None:
        """Delete the namespaces tests made (frees the fake GPUs; not awaited)."""
        from kubernetes.client.exceptions import ApiException

        while self.namespaces:
            name = self.namespaces.pop()
            with contextlib.suppress(ApiException):
                self.core().delete_namespace(name)

    # --- Vault ------------------------------------------------------------------------
    def vault_role(self, name: str) -> dict[str, Any] | None:
        import hvac.exceptions

        try:
            data = self.vault.client().adapter.get(f"/v1/auth/kubernetes/role/{name}")
        except hvac.exceptions.InvalidPath:
            return None
        return dict(data["data"]) if data else None

    def vault_policy(self, name: str) -> str | None:
        import hvac.exceptions

        try:
            data = self.vault.client().adapter.get(f"/v1/sys/policies/acl/{name}")
        except hvac.exceptions.InvalidPath:
            return None
        return str(data["data"]["policy"]) if data else None

    def vault_roles(self) -> list[str]:
        import hvac.exceptions

        try:
            data = self.vault.client().adapter.list("/v1/auth/kubernetes/role")
        except hvac.exceptions.InvalidPath:
            return []
        return [str(k) for k in (data or {}).get("data", {}).get("keys", [])]

    def pod_status_writes(self, namespace: str, since: int = 0) -> list[str]:
        """Who wrote Pod status in `namespace` after byte `since` (for failure messages)."""
        out: list[str] = []
        if not self.audit_log.exists():
            return out
        with self.audit_log.open("rb") as fh:
            fh.seek(since)
            for line in fh:
                with contextlib.suppress(ValueError):
                    ev = json.loads(line)
                    ref = ev.get("objectRef") or {}
                    if (
                        ev.get("stage") == "ResponseComplete"
                        and ref.get("subresource") == "status"
                        and ref.get("resource") == "pods"
                        and ref.get("namespace") == namespace
                    ):
                        who = (ev.get("user") or {}).get("username")
                        when = ev.get("requestReceivedTimestamp")
                        out.append(f"{when} {who} {ev.get('verb')} {ref.get('name')}")
        return out

    # --- the audit log: the operator's write calls -------------------------------------
    def audit_offset(self) -> int:
        return self.audit_log.stat().st_size if self.audit_log.exists() else 0

    def operator_writes(self, since: int = 0) -> list[dict[str, Any]]:
        """The operator's write calls recorded by the API server after byte `since`."""
        out: list[dict[str, Any]] = []
        if not self.audit_log.exists():
            return out
        with self.audit_log.open("rb") as fh:
            fh.seek(since)
            for line in fh:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                if ev.get("stage") != "ResponseComplete":
                    continue
                if (ev.get("user") or {}).get("username") != OPERATOR_USER:
                    continue
                if ev.get("verb") not in WRITE_VERBS:
                    continue
                ref = ev.get("objectRef") or {}
                out.append(
                    {
                        "verb": ev.get("verb"),
                        "resource": ref.get("resource"),
                        "subresource": ref.get("subresource"),
                        "namespace": ref.get("namespace"),
                        "name": ref.get("name"),
                        "code": (ev.get("responseStatus") or {}).get("code"),
                    }
                )
        return out


wait_for = partial(poll, interval=0.25)


def condition(obj: dict[str, Any] | None, ctype: str) -> dict[str, Any]:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == ctype:
            return dict(c)
    return {}


def _setup_operator_identity(env: OpsEnv) -> None:
    from kubernetes import client

    core = client.CoreV1Api(env.api)
    rbac = client.RbacAuthorizationV1Api(env.api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=OPERATOR_NS)))
    core.create_namespaced_service_account(
        OPERATOR_NS, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=OPERATOR_SA))
    )
    rbac.create_cluster_role(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "modelseal-operator"},
            "rules": OPERATOR_RULES,
        }
    )
    rbac.create_cluster_role_binding(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "modelseal-operator"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "modelseal-operator",
            },
            "subjects": [{"kind": "ServiceAccount", "name": OPERATOR_SA, "namespace": OPERATOR_NS}],
        }
    )
    token = _sa_token(env.api, OPERATOR_NS, OPERATOR_SA, [], 48 * 3600)
    env.operator_token_file.write_text(token)
    env.operator_token_file.chmod(0o600)
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "ops",
                "cluster": {
                    "server": env.cluster.server,
                    "certificate-authority-data": base64.b64encode(
                        env.cluster.ca_pem.encode()
                    ).decode(),
                },
            }
        ],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "ops", "context": {"cluster": "ops", "user": "operator"}}],
        "current-context": "ops",
    }
    env.operator_kubeconfig.write_text(yaml.safe_dump(kubeconfig))
    env.operator_kubeconfig.chmod(0o600)


def _sa_token(api: Any, ns: str, sa: str, audiences: list[str], seconds: int) -> str:
    from kubernetes import client

    body = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=audiences, expiration_seconds=seconds)
    )
    result = client.CoreV1Api(api).create_namespaced_service_account_token(sa, ns, body)
    return str(result.status.token)


def _setup_vault(env: OpsEnv) -> None:
    """Kubernetes auth against this cluster (a reviewer SA), the operator's policy and role."""
    from kubernetes import client

    core = client.CoreV1Api(env.api)
    rbac = client.RbacAuthorizationV1Api(env.api)
    core.create_namespaced_service_account(
        OPERATOR_NS, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="vault-reviewer"))
    )
    rbac.create_cluster_role_binding(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "vault-reviewer"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:auth-delegator",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": "vault-reviewer", "namespace": OPERATOR_NS}
            ],
        }
    )
    reviewer = _sa_token(env.api, OPERATOR_NS, "vault-reviewer", [], 48 * 3600)
    env.vault.configure_kubernetes_auth(
        kubernetes_host=env.cluster.server, ca_pem=env.cluster.ca_pem, token_reviewer_jwt=reviewer
    )
    admin = env.vault.client()
    admin.sys.create_or_update_policy(
        "modelseal-operator", (ROOT / "examples" / "vault-operator-policy.hcl").read_text()
    )
    admin.adapter.post(
        "/v1/auth/kubernetes/role/modelseal-operator",
        json={
            "bound_service_account_names": [OPERATOR_SA],
            "bound_service_account_namespaces": [OPERATOR_NS],
            "token_policies": ["modelseal-operator"],
            "token_ttl": 3600,
        },
    )


def install_crds(cluster: KubeCluster) -> None:
    for path in sorted(CRDS.glob("*.yaml")):
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
    for path in sorted(CRDS.glob("*.yaml")):
        name = yaml.safe_load(path.read_text())["metadata"]["name"]
        cluster.wait_crd_established(name)


@pytest.fixture(scope="session")
def ops_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpsEnv]:
    """The operator tests' own control plane (audit log on), CRDs installed."""
    workdir = tmp_path_factory.mktemp("ops")
    policy = workdir / "audit-policy.yaml"
    policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    audit_log = workdir / "audit.log"
    cluster = KubeCluster(
        nodes=3,
        gpus_per_node=8,
        bin_dir=ensure_binaries(),
        extra_apiserver_args=[
            f"--audit-policy-file={policy}",
            f"--audit-log-path={audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
            "--audit-log-maxsize=0",
        ],
    )
    with cluster:
        api = cluster.api_client()
        env = OpsEnv(
            cluster=cluster,
            vault=None,
            workdir=workdir,
            operator_kubeconfig=workdir / "operator.kubeconfig",
            operator_token_file=workdir / "operator.token",
            audit_log=audit_log,
            api=api,
        )
        install_crds(cluster)
        _setup_operator_identity(env)
        try:
            yield env
        finally:
            api.close()


@pytest.fixture(scope="session")
def ops_env(ops_cluster: OpsEnv) -> Iterator[OpsEnv]:
    """`ops_cluster` plus a Vault of its own with Kubernetes auth against it."""
    with VaultServer(persistent=True) as vault:  # persistent: outage tests restart it
        ops_cluster.vault = vault
        _setup_vault(ops_cluster)
        try:
            yield ops_cluster
        finally:
            ops_cluster.vault = None


class Operator:
    """`python -m modelseal operator` as a child process, against `ops_env`."""

    def __init__(self, env: OpsEnv, **settings: Any) -> None:
        self.env = env
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.audit_file = env.workdir / f"operator-audit-{uuid.uuid4().hex[:6]}.jsonl"
        self.log_path = env.workdir / f"operator-{uuid.uuid4().hex[:6]}.log"
        values: dict[str, Any] = {
            "vault_addr": env.vault.addr,
            "operator_vault_role": "modelseal-operator",
            "operator_token_file": str(env.operator_token_file),
            "operator_health_port": self.health_port,
            "operator_metrics_port": self.metrics_port,
            "audit_sink": "file",
            "audit_file": str(self.audit_file),
            "resync_interval_s": 600,
            "log_level": "INFO",
        }
        values.update(settings)
        self.environ = {k: v for k, v in os.environ.items() if not k.startswith("MODELSEAL_")}
        self.environ.update({f"MODELSEAL_{k.upper()}": _env_value(v) for k, v in values.items()})
        self.environ["KUBECONFIG"] = str(env.operator_kubeconfig)
        self.environ["PYTHONUNBUFFERED"] = "1"
        self.proc: ManagedProcess | None = None

    def start(self, wait: bool = True) -> Operator:
        self.proc = ManagedProcess(
            "operator",
            [sys.executable, "-m", "modelseal", "operator"],
            self.log_path,
            env=self.environ,
            cwd=ROOT,
        ).start()
        if wait:
            wait_for(self.healthy, "operator /healthz", timeout=60)
        return self

    def healthy(self) -> bool:
        if self.proc is None or not self.proc.running:
            raise AssertionError(f"operator exited; log:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.health_port}/healthz", timeout=2
            ) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def metrics(self) -> dict[str, float]:
        """Scraped samples: 'name{labels}' -> value."""
        with urllib.request.urlopen(
            f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5
        ) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[key] = float(value)
        return out

    def audit_records(self) -> list[dict[str, Any]]:
        if not self.audit_file.exists():
            return []
        # Only complete lines: the gateway may be appending the last one right now.
        text = self.audit_file.read_text()
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line]

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def log_lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=20)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()

    def signal(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.running:
            os.killpg(self.proc.pid, sig)


def _env_value(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


@pytest.fixture
def operator(ops_env: OpsEnv) -> Iterator[Operator]:
    op = Operator(ops_env).start()
    try:
        yield op
    finally:
        op.stop()
