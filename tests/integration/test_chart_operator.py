"""The real operator (`python -m modelseal operator`) with exactly the chart's RBAC and
behind the chart's admission guards.

The chart is installed (operator.watchNamespaces = one tenant namespace, guards on,
fail-closed); the operator then runs as a process with a token of the chart's operator
ServiceAccount, the environment the chart gives its container, and no Vault (the address
points at a closed port). It must create the model's objects, write status, and make not
a single request the API server refuses: that proves the RBAC is enough, and that the
guards let the operator through while refusing everyone else. Vault itself is the
operator's tests' business (the model reports VaultUnavailable here).

Own control plane, as in test_chart_install.py.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from tests.integration.test_chart_static import CHART, build_helm
from tests.unit.test_argocd_health import CUSTOMIZATIONS, run_health
from tests.waiting import wait_for as poll

from modelseal_devenv.common import ManagedProcess, free_port
from modelseal_devenv.kube import KubeCluster, ensure_binaries

pytestmark = pytest.mark.integration

RELEASE, RELEASE_NS = "ms", "modelseal-system"
SA = "ms-modelseal-operator"
GROUP, VERSION = "modelseal.io", "v1alpha1"


wait_for = partial(poll, timeout=90.0, tolerate=(ApiException, OSError))


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("operator")
    ns = f"models-{uuid.uuid4().hex[:6]}"
    with KubeCluster(nodes=1, bin_dir=ensure_binaries()) as cluster:
        admin = cluster.api_client()
        core = k8s.CoreV1Api(admin)
        core.create_namespace({"metadata": {"name": ns}})
        # The platform gives the namespace the key the test model uses (default image).
        tenancy = f'tenancy.namespaces={{"{ns}":{{"transitKeys":["digits"]}}}}'
        helm = build_helm()
        result = subprocess.run(
            [
                str(helm),
                f"--kubeconfig={cluster.kubeconfig}",
                "install",
                RELEASE,
                str(CHART),
                "--namespace",
                RELEASE_NS,
                "--create-namespace",
                "--set-json",
                f'operator.watchNamespaces=["{ns}"]',
                "--set-json",
                tenancy,
                "--set",
                "admission.failurePolicy=Fail",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr
        # The chart's operator container environment, as rendered.
        rendered = subprocess.run(
            [
                str(helm),
                "template",
                RELEASE,
                str(CHART),
                "--namespace",
                RELEASE_NS,
                "--set-json",
                f'operator.watchNamespaces=["{ns}"]',
                "--set-json",
                tenancy,
                "--show-only",
                "templates/deployment.yaml",
                "--show-only",
                "templates/tenancy.yaml",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        deployment, config = list(yaml.safe_load_all(rendered))
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        # The chart's tenancy ConfigMap, where the pod would have it mounted.
        assert env["MODELSEAL_TENANCY_FILE"] == "/etc/modelseal/tenancy/tenancy.json"
        (tmp / "tenancy.json").write_text(config["data"]["tenancy.json"])
        env["MODELSEAL_TENANCY_FILE"] = str(tmp / "tenancy.json")
        # Likewise the platform audit key from the Secret the chart made.
        audit = core.read_namespaced_secret(f"{RELEASE}-modelseal-audit-key", RELEASE_NS)
        (tmp / "audit-key").write_bytes(base64.b64decode(audit.data["key"]))
        assert env["MODELSEAL_AUDIT_HMAC_KEY_FILE"] == "/etc/modelseal/audit-key/key"
        env["MODELSEAL_AUDIT_HMAC_KEY_FILE"] = str(tmp / "audit-key")
        # Out of cluster: a kubeconfig with a token of the chart's ServiceAccount.
        token = core.create_namespaced_service_account_token(
            SA, RELEASE_NS, {"spec": {"expirationSeconds": 3600}}
        ).status.token
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": cluster.server,
                        "certificate-authority": str(cluster.ca_file),
                    },
                }
            ],
            "users": [{"name": SA, "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": SA}}],
            "current-context": "test",
        }
        kubeconfig = tmp / "operator.kubeconfig"
        kubeconfig.write_text(yaml.safe_dump(doc))
        metrics_port, health_port = free_port(), free_port()
        env.update(
            MODELSEAL_VAULT_ADDR=f"http://127.0.0.1:{free_port()}",  # nothing listens there
            MODELSEAL_OPERATOR_METRICS_PORT=str(metrics_port),
            MODELSEAL_OPERATOR_HEALTH_PORT=str(health_port),
            MODELSEAL_OPERATOR_TOKEN_FILE=str(tmp / "no-token"),
            MODELSEAL_RESYNC_INTERVAL_S="5",
            MODELSEAL_AUDIT_SINK="stdout",
        )
        proc = ManagedProcess(
            "operator",
            [sys.executable, "-m", "modelseal", "operator"],
            tmp / "operator.log",
            env={**os.environ, **env, "KUBECONFIG": str(kubeconfig)},
        ).start()
        try:
            yield {
                "cluster": cluster,
                "admin": admin,
                "ns": ns,
                "proc": proc,
                "metrics": f"http://127.0.0.1:{metrics_port}/metrics",
                "health": f"http://127.0.0.1:{health_port}/healthz",
            }
        finally:
            proc.stop()
            admin.close()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310 - loopback
        return str(resp.read().decode())


def test_operator_works_with_the_charts_rbac_and_guards(setup: dict[str, Any]) -> None:
    admin, ns, proc = setup["admin"], setup["ns"], setup["proc"]
    wait_for(lambda: scrape(setup["health"]) is not None, "the operator's health endpoint")
    custom = k8s.CustomObjectsApi(admin)
    lic = yaml.safe_load((CUSTOMIZATIONS / "ModelLicense/testdata/valid.yaml").read_text())
    pm = yaml.safe_load((CUSTOMIZATIONS / "ProtectedModel/testdata/healthy.yaml").read_text())
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        "modellicenses",
        {**{k: lic[k] for k in ("apiVersion", "kind", "spec")}, "metadata": {"name": "acme"}},
    )
    # The license counts per day: with the chart's operator.requireDurableQuotaState the
    # embedded counters must live on a claim (a PVC the tenant provides).
    spec = {**pm["spec"], "gateway": {**pm["spec"].get("gateway", {})}}
    spec["gateway"]["quotaStateClaimName"] = "digits-quota"
    created = custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        "protectedmodels",
        {"apiVersion": pm["apiVersion"], "kind": pm["kind"], "metadata": {"name": "digits"}}
        | {"spec": spec},
    )
    # The model's ServiceAccount: <name>-<first 8 characters of its uid>.
    account = f"digits-{created['metadata']['uid'][:8]}"
    core, apps, net = k8s.CoreV1Api(admin), k8s.AppsV1Api(admin), k8s.NetworkingV1Api(admin)
    # Everything the operator renders, created with the chart's RBAC past the guards.
    wait_for(lambda: apps.read_namespaced_deployment("digits", ns), "the model's Deployment")
    assert core.read_namespaced_service_account(account, ns)
    assert core.read_namespaced_service("digits", ns)
    assert net.read_namespaced_network_policy("digits", ns)
    assert core.read_namespaced_secret("digits-triton-control", ns)
    live = wait_for(
        lambda: (
            obj
            if (
                obj := custom.get_namespaced_custom_object(
                    GROUP, VERSION, ns, "protectedmodels", "digits"
                )
            )
            .get("status", {})
            .get("conditions")
            else None
        ),
        "status written by the operator",
    )
    conditions = {c["type"]: c for c in live["status"]["conditions"]}
    assert conditions["LicenseValid"]["status"] == "True", conditions
    assert conditions["KeyAccessible"]["status"] != "True", conditions  # no Vault here
    status, message = run_health("ProtectedModel", live)
    assert status in ("Degraded", "Progressing"), (status, message)
    # Not one request of the operator was refused (RBAC 403 or admission 403/422).
    time.sleep(6)  # one more resync round
    metrics = scrape(setup["metrics"])
    calls = [
        line
        for line in metrics.splitlines()
        if line.startswith("modelseal_operator_api_calls_total{")
    ]
    assert calls, metrics
    refused = [line for line in calls if 'code="403"' in line or 'code="422"' in line]
    assert not refused, refused
    log = Path(proc.log_path).read_text(errors="replace")
    assert "Forbidden" not in log and "forbidden" not in log, proc.log_tail(60)
    assert proc.running, proc.log_tail(60)


def test_operator_refuses_a_key_its_namespace_was_not_given(setup: dict[str, Any]) -> None:
    """Issue 12, Medium 7, the operator's half: a model that got past admission (written
    here by the break-glass group, as if the guards were off) naming another vendor's key
    and an image of its own gets nothing: no objects, and conditions that name both."""
    cluster, admin, ns = setup["cluster"], setup["admin"], setup["ns"]
    pm = yaml.safe_load((CUSTOMIZATIONS / "ProtectedModel/testdata/healthy.yaml").read_text())
    spec = {**pm["spec"], "vault": {"transitKey": "other-vendor-key"}}
    spec["serving"] = {**spec.get("serving", {}), "tritonImage": "evil.example/copy-out:1"}
    body = {"apiVersion": pm["apiVersion"], "kind": pm["kind"], "metadata": {"name": "stolen"}}
    body["spec"] = spec
    # Admission refuses it, even to a cluster admin ...
    with pytest.raises(ApiException) as info:
        k8s.CustomObjectsApi(admin).create_namespaced_custom_object(
            GROUP, VERSION, ns, "protectedmodels", body
        )
    assert info.value.status == 403, info.value.body
    assert "Modelseal: Transit key other-vendor-key is not allowed" in info.value.body
    # ... but not to break-glass; then the operator is the line that holds.
    k8s.RbacAuthorizationV1Api(admin).create_cluster_role_binding(
        {
            "metadata": {"name": "break-glass-admins"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [
                {
                    "kind": "Group",
                    "name": "modelseal:break-glass",
                    "apiGroup": "rbac.authorization.k8s.io",
                }
            ],
        }
    )
    oncall = cluster.api_client()
    oncall.set_default_header("Impersonate-User", "oncall")
    oncall.set_default_header("Impersonate-Group", "modelseal:break-glass")
    custom = k8s.CustomObjectsApi(oncall)
    created = custom.create_namespaced_custom_object(GROUP, VERSION, ns, "protectedmodels", body)

    def refused_by_operator() -> dict[str, Any] | None:
        live = custom.get_namespaced_custom_object(GROUP, VERSION, ns, "protectedmodels", "stolen")
        found = {c["type"]: c for c in (live.get("status") or {}).get("conditions") or []}
        ready = found.get("Ready") or {}
        return found if ready.get("reason") == "NotAllowedInNamespace" else None

    conditions = wait_for(refused_by_operator, "the operator's NotAllowedInNamespace condition")
    message = conditions["Ready"]["message"]
    assert conditions["Ready"]["status"] == "False", conditions
    assert f"Transit key other-vendor-key is not allowed in namespace {ns}" in message
    assert "(allowed: digits)" in message
    assert f"Triton image evil.example/copy-out:1 is not allowed in namespace {ns}" in message
    # No Vault here: withdrawing the (never granted) role cannot be confirmed.
    key = conditions["KeyAccessible"]
    assert key["status"] != "True", key
    assert key["reason"] in ("NotAllowedInNamespace", "VaultUnavailable"), key
    core, apps = k8s.CoreV1Api(admin), k8s.AppsV1Api(admin)
    with pytest.raises(ApiException) as missing:
        apps.read_namespaced_deployment("stolen", ns)
    assert missing.value.status == 404
    account = f"stolen-{created['metadata']['uid'][:8]}"
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_service_account(account, ns)
    assert missing.value.status == 404
    oncall.close()
