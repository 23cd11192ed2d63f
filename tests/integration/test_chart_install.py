"""The Helm chart against a real API server: server-side dry-run, a real `helm install`,
Pod Security `restricted`, the CRD keep policy, and the Argo CD health scripts on objects
read back from the server.

The chart installs cluster-wide objects (CRDs, ClusterRoles, admission policies), so these
tests start a control plane of their own (modelseal_devenv.kube.KubeCluster, one fake node)
instead of sharing the session's ``kube_cluster``: other tests keep their CRDs and are not
subject to this chart's admission guards.
"""

from __future__ import annotations

import contextlib
import subprocess
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from tests.integration.test_chart_static import ALL_ON, CHART, build_helm, pod_specs, render
from tests.unit.test_argocd_health import CUSTOMIZATIONS, run_health
from tests.waiting import wait_for as poll

from modelseal_devenv.kube import KubeCluster, ensure_binaries

pytestmark = pytest.mark.integration

RELEASE = "ms"
RELEASE_NS = "modelseal-system"
GROUP, VERSION = "modelseal.io", "v1alpha1"


wait_for = partial(poll, tolerate=(ApiException,))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def cluster() -> Iterator[KubeCluster]:
    with KubeCluster(nodes=1, bin_dir=ensure_binaries()) as c:
        yield c


@pytest.fixture(scope="module")
def api(cluster: KubeCluster) -> Iterator[Any]:
    client = cluster.api_client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="module")
def helm() -> Path:
    return build_helm()


def helm_cmd(
    helm: Path, cluster: KubeCluster, *args: str, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(helm), f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )
    if check:
        assert result.returncode == 0, f"helm {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def make_namespace(api: Any, name: str, labels: dict[str, str] | None = None) -> str:
    core = k8s.CoreV1Api(api)
    try:
        core.create_namespace(
            k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=name, labels=labels or {}))
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
        if labels:
            core.patch_namespace(name, {"metadata": {"labels": labels}})
    return name


RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}

# Minimal stand-ins for the Prometheus Operator's CRDs, so that the ServiceMonitor and
# PodMonitor the chart renders have a kind to be checked against (their real schemas are
# the Prometheus Operator's business, not ours).
MONITORING_CRDS = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "scope": "Namespaced",
            "names": {"plural": plural, "kind": kind, "singular": kind.lower()},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }
    for plural, kind in (("servicemonitors", "ServiceMonitor"), ("podmonitors", "PodMonitor"))
]


def apply_docs(cluster: KubeCluster, docs: list[dict[str, Any]], *extra: str) -> str:
    text = yaml.safe_dump_all(docs)
    return cluster.kubectl(
        "apply", "--server-side", "--field-manager=modelseal-tests", *extra, "-f", "-", stdin=text
    )


# --------------------------------------------------------------------------- dry-run


@pytest.mark.parametrize("values", [None, ALL_ON], ids=["defaults", "all-on"])
def test_rendered_objects_pass_server_side_dry_run(
    cluster: KubeCluster, api: Any, helm: Path, values: Path | None
) -> None:
    apply_docs(cluster, MONITORING_CRDS)
    for crd in MONITORING_CRDS:
        cluster.wait_crd_established(crd["metadata"]["name"])
    docs = render(helm, *([values] if values else []))
    for ns in {RELEASE_NS, "models-a", "models-b"}:
        make_namespace(api, ns)
    # Dry-run writes nothing, so the CRDs the chart brings do not exist for the objects
    # after them; none of the chart's other objects is of those kinds.
    out = apply_docs(cluster, docs, "--dry-run=server")
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == len(docs), out
    assert all("(server dry run)" in line for line in lines), out


# --------------------------------------------------------------------------- helm install


@pytest.fixture(scope="module")
def installed(cluster: KubeCluster, api: Any, helm: Path) -> Iterator[str]:
    """`helm install` with defaults into a namespace that enforces Pod Security `restricted`."""
    make_namespace(api, RELEASE_NS, RESTRICTED)
    result = helm_cmd(
        helm,
        cluster,
        "install",
        RELEASE,
        str(CHART),
        "--namespace",
        RELEASE_NS,
        "--set",
        "metrics.serviceMonitor.enabled=true",
        # The tests below create models in fresh namespaces the platform cannot declare
        # beforehand (tenancy guards: tests/attack/test_attack_tenancy_admission.py).
        "--set",
        "tenancy.unlisted=Any",
        "--wait",
        "--timeout",
        "180s",
    )
    assert "STATUS: deployed" in result.stdout
    assert "kubectl wait --for=condition=Ready pm/NAME" in result.stdout  # NOTES.txt
    yield RELEASE


def test_helm_install_runs_the_operator_under_restricted(
    cluster: KubeCluster, api: Any, installed: str
) -> None:
    apps = k8s.AppsV1Api(api)
    dep = apps.read_namespaced_deployment("ms-modelseal-operator", RELEASE_NS)
    assert dep.spec.strategy.type == "Recreate"
    assert dep.status.ready_replicas == 1, dep.status
    pods = k8s.CoreV1Api(api).list_namespaced_pod(
        RELEASE_NS, label_selector="app.kubernetes.io/component=operator"
    )
    assert len(pods.items) == 1
    # The namespace enforces `restricted`: the pod exists, so the API server admitted it.
    ns = k8s.CoreV1Api(api).read_namespace(RELEASE_NS)
    assert ns.metadata.labels["pod-security.kubernetes.io/enforce"] == "restricted"
    crds = {
        c.metadata.name: c
        for c in k8s.ApiextensionsV1Api(api).list_custom_resource_definition().items
    }
    for name in ("protectedmodels.modelseal.io", "modellicenses.modelseal.io"):
        assert crds[name].metadata.annotations["helm.sh/resource-policy"] == "keep"
    policies = k8s.AdmissionregistrationV1Api(api).list_validating_admission_policy().items
    assert {p.metadata.name for p in policies} >= {
        "ms-modelseal-interactive-access",
        "ms-modelseal-sa-borrowing-pods",
        "ms-modelseal-owned-objects",
    }


def can_i(cluster: KubeCluster, user: str, *args: str) -> bool:
    """`kubectl auth can-i` as ``user`` (it exits 1 for "no")."""
    result = subprocess.run(
        [
            str(cluster.binary("kubectl")),
            f"--kubeconfig={cluster.kubeconfig}",
            "auth",
            "can-i",
            *args,
            f"--as={user}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    return result.stdout.strip() == "yes"


def test_install_does_not_block_other_pods(api: Any, installed: str) -> None:
    """Right after install the guards cannot run yet (the API server learns the new
    ProtectedModel kind ~30 s later); with the default failurePolicy they must not refuse
    the rest of the cluster's pods meanwhile."""
    ns = make_namespace(api, f"bystander-{uuid.uuid4().hex[:6]}")
    pod = k8s.CoreV1Api(api).create_namespaced_pod(
        ns,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "bystander"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        },
    )
    assert pod.metadata.name == "bystander"


def test_operator_rbac_is_least_privilege_on_the_server(
    cluster: KubeCluster, installed: str
) -> None:
    sa = f"system:serviceaccount:{RELEASE_NS}:ms-modelseal-operator"
    for verb in ("get", "list", "watch", "create"):
        assert not can_i(cluster, sa, verb, "secrets", "-A"), verb
        assert not can_i(cluster, sa, verb, "secrets", "-n", RELEASE_NS), verb
    assert can_i(cluster, sa, "create", "deployments.apps", "-n", "any")
    assert can_i(cluster, sa, "patch", "protectedmodels.modelseal.io", "--subresource=status", "-A")
    assert can_i(cluster, sa, "list", "customresourcedefinitions.apiextensions.k8s.io")
    assert not can_i(cluster, sa, "delete", "namespaces", "-A")
    assert not can_i(cluster, sa, "create", "pods", "-n", "any")
    assert not can_i(cluster, sa, "create", "pods/exec", "-n", "any")
    assert not can_i(cluster, sa, "create", "clusterrolebindings")


def test_all_rendered_pods_pass_restricted_on_the_server(
    cluster: KubeCluster, api: Any, helm: Path, installed: str
) -> None:
    """Every pod the chart renders (all blocks on), created as a Pod in a `restricted` ns."""
    ns = make_namespace(api, f"pss-{uuid.uuid4().hex[:6]}", RESTRICTED)
    core = k8s.CoreV1Api(api)
    docs = render(helm, ALL_ON)
    created = 0
    for name, spec in pod_specs(docs):
        spec = {**spec, "serviceAccountName": "default"}
        spec.pop("priorityClassName", None)
        spec.pop("imagePullSecrets", None)
        spec["volumes"] = [
            v if "persistentVolumeClaim" not in v else {"name": v["name"], "emptyDir": {}}
            for v in spec.get("volumes", [])
        ]
        for v in spec["volumes"]:
            if "secret" in v:
                v["secret"]["optional"] = True
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
        core.create_namespaced_pod(ns, pod)
        created += 1
    assert created >= 2  # operator and Redis
    # Control: the namespace does refuse a pod that is not `restricted`.
    with pytest.raises(ApiException) as refused:
        core.create_namespaced_pod(
            ns,
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "loose"},
                "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            },
        )
    assert refused.value.status == 403
    assert "violates PodSecurity" in refused.value.body


def test_model_pods_rendered_by_the_operator_pass_restricted(api: Any, installed: str) -> None:
    """The operator's own pod template (modelseal.render) under `restricted`, on the server."""
    from modelseal.config import Settings
    from modelseal.models.spec import parse_model
    from modelseal.render.manifests import deployment

    ns = make_namespace(api, f"pss-model-{uuid.uuid4().hex[:6]}", RESTRICTED)
    body = yaml.safe_load((CUSTOMIZATIONS / "ProtectedModel/testdata/healthy.yaml").read_text())
    body.pop("status")
    body["metadata"].update(namespace=ns, uid=str(uuid.uuid4()))
    dep = deployment(parse_model(body), Settings(), 1)
    spec = dep["spec"]["template"]["spec"]
    core = k8s.CoreV1Api(api)
    core.create_namespaced_service_account(ns, {"metadata": {"name": spec["serviceAccountName"]}})
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "model-pod", "labels": dep["spec"]["template"]["metadata"]["labels"]},
        "spec": spec,
    }
    # No ProtectedModel exists in this namespace, so the admission guards have nothing to
    # protect here; Pod Security is what is being checked.
    created = core.create_namespaced_pod(ns, pod)
    assert created.metadata.name == "model-pod"


# --------------------------------------------------------------------------- Argo CD health


def _bump_generation(api: Any, ns: str, plural: str, name: str, to: int) -> None:
    custom = k8s.CustomObjectsApi(api)
    for i in range(2, to + 1):
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, ns, plural, name, {"spec": {"modelName": f"generation-{i}"}}
        )


@pytest.mark.parametrize("kind", ["ProtectedModel", "ModelLicense"])
def test_argocd_health_on_objects_read_back_from_the_server(
    api: Any, installed: str, kind: str
) -> None:
    """Each Argo CD health test case, created on the server and its status written through
    /status; the Lua then reads the object exactly as the API server returns it."""
    plural = {"ProtectedModel": "protectedmodels", "ModelLicense": "modellicenses"}[kind]
    ns = make_namespace(api, f"argo-{kind.lower()}-{uuid.uuid4().hex[:6]}")
    custom = k8s.CustomObjectsApi(api)
    table = yaml.safe_load((CUSTOMIZATIONS / kind / "health_test.yaml").read_text())
    for i, case in enumerate(table["tests"]):
        doc = yaml.safe_load((CUSTOMIZATIONS / kind / case["inputPath"]).read_text())
        name = f"{doc['metadata']['name']}-{i}"
        generation = doc["metadata"]["generation"]
        body = {
            "apiVersion": doc["apiVersion"],
            "kind": kind,
            "metadata": {"name": name, "namespace": ns},
            "spec": doc["spec"],
        }
        custom.create_namespaced_custom_object(GROUP, VERSION, ns, plural, body)
        if kind == "ProtectedModel":
            _bump_generation(api, ns, plural, name, generation)
        if "status" in doc:
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, ns, plural, name, {"status": doc["status"]}
            )
        live = custom.get_namespaced_custom_object(GROUP, VERSION, ns, plural, name)
        assert live["metadata"]["generation"] == generation, case["inputPath"]
        expected = case["healthStatus"]
        assert run_health(kind, live) == (expected["status"], expected["message"]), case


# --------------------------------------------------------------------------- output policy


def test_output_policy_guard_refuses_modes_left_out(
    cluster: KubeCluster, api: Any, helm: Path, installed: str
) -> None:
    helm_cmd(
        helm,
        cluster,
        "upgrade",
        RELEASE,
        str(CHART),
        "--namespace",
        RELEASE_NS,
        "--reuse-values",
        "--set",
        "admission.outputPolicy.allowedModes={topK,labels}",
    )
    ns = make_namespace(api, f"outputs-{uuid.uuid4().hex[:6]}")
    custom = k8s.CustomObjectsApi(api)
    doc = yaml.safe_load((CUSTOMIZATIONS / "ProtectedModel/testdata/healthy.yaml").read_text())

    def create(name: str, output: dict[str, Any] | None) -> Any:
        spec = {**doc["spec"], **({"outputPolicy": output} if output else {})}
        body = {"apiVersion": doc["apiVersion"], "kind": "ProtectedModel"}
        return custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            ns,
            "protectedmodels",
            {**body, "metadata": {"name": name}, "spec": spec},
        )

    # The policy is new: wait until the API server enforces it.
    def refused_full() -> list[ApiException]:
        with contextlib.suppress(ApiException):
            custom.delete_namespaced_custom_object(GROUP, VERSION, ns, "protectedmodels", "raw")
        try:
            create("raw", {"mode": "full"})
        except ApiException as exc:
            return [exc]
        return []

    exc = wait_for(refused_full, "the output-policy guard")[0]
    assert exc.status in (403, 422), exc.body
    assert "Modelseal: output policy mode full is not allowed in this cluster" in exc.body
    # The CRD's default mode is full, so leaving it out is refused too; topK passes.
    with pytest.raises(ApiException) as defaulted:
        create("defaulted", None)
    assert "mode full is not allowed" in defaulted.value.body
    assert create("top3", {"mode": "topK", "topK": 3})["metadata"]["name"] == "top3"
    helm_cmd(
        helm,
        cluster,
        "upgrade",
        RELEASE,
        str(CHART),
        "--namespace",
        RELEASE_NS,
        "--reuse-values",
        "--set",
        "admission.outputPolicy.allowedModes={full,topK,labels}",
    )


# --------------------------------------------------------------------------- keep policy


def test_uninstall_keeps_crds_and_users_models(
    cluster: KubeCluster, api: Any, helm: Path, installed: str
) -> None:
    ns = make_namespace(api, f"keep-{uuid.uuid4().hex[:6]}")
    custom = k8s.CustomObjectsApi(api)
    doc = yaml.safe_load((CUSTOMIZATIONS / "ModelLicense/testdata/valid.yaml").read_text())
    custom.create_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        "modellicenses",
        {
            "apiVersion": doc["apiVersion"],
            "kind": "ModelLicense",
            "metadata": {"name": "keep-me"},
            "spec": doc["spec"],
        },
    )
    result = helm_cmd(helm, cluster, "uninstall", RELEASE, "--namespace", RELEASE_NS, "--wait")
    assert "kept due to the resource policy" in result.stdout + result.stderr
    crds = {
        c.metadata.name for c in k8s.ApiextensionsV1Api(api).list_custom_resource_definition().items
    }
    assert {"protectedmodels.modelseal.io", "modellicenses.modelseal.io"} <= crds
    assert custom.get_namespaced_custom_object(GROUP, VERSION, ns, "modellicenses", "keep-me")
    apps = k8s.AppsV1Api(api)
    wait_for(
        lambda: not apps.list_namespaced_deployment(RELEASE_NS).items, "operator Deployment gone"
    )
    # The admission guards stay too (the models they protect outlive the release; a gap
    # before the next install would let a tenant plant a workload).
    adm = k8s.AdmissionregistrationV1Api(api)

    def guards() -> tuple[set[str], set[str]]:
        policies = {
            p.metadata.name
            for p in adm.list_validating_admission_policy().items
            if p.metadata.name.startswith("ms-modelseal-")
        }
        bindings = {
            b.metadata.name
            for b in adm.list_validating_admission_policy_binding().items
            if b.metadata.name.startswith("ms-modelseal-")
        }
        return policies, bindings

    kept_policies, kept_bindings = guards()
    assert "ms-modelseal-sa-borrowing-pods" in kept_policies, kept_policies
    assert kept_bindings == kept_policies
    # A second install adopts the kept CRDs and guards (they still carry the release's
    # annotations).
    helm_cmd(helm, cluster, "install", RELEASE, str(CHART), "--namespace", RELEASE_NS)
    policies, bindings = guards()
    assert kept_policies <= policies and kept_bindings <= bindings
