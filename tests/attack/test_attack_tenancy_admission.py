"""Attacks on the tenancy guards (issue 12, Medium 7) and on the operator's cluster-wide
rights (Medium 11), against a real API server with the chart installed by helm.

The platform declares (chart values ``tenancy``): namespace ``vendor-a`` may use Transit key
``vendor-a-llm`` and images from ``nvcr.io/nvidia/tritonserver`` and below
``registry.vendor-a.example/triton/``; ``vendor-b`` key ``vendor-b-llm``; other namespaces
nothing. ``mallory`` administers ``vendor-a`` and ``squat`` (undeclared) and tries to
serve with vendor B's key, an image of her own, by create, replace, JSON patch, merge
patch, kubectl patch and server-side apply; each is refused by the API server with a
message that names what is not allowed (and the same request with allowed values passes).

The operator watches the whole cluster (``operator.watchNamespaces`` empty, cluster-wide
RBAC); its writes in a namespace without the label ``modelseal.io/enabled=true`` are
refused by admission although RBAC allows them.
"""

from __future__ import annotations

import copy
import json
import subprocess
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from modelseal_devenv.kube import KubeCluster, ensure_binaries
from tests.integration.test_admission import (
    bind_mallory_admin,
    client_as,
    close_clients,
    kubectl,
    pod_body,
    refused,
    wait_for,
)
from tests.integration.test_chart_static import CHART, build_helm
from tests.unit.test_argocd_health import CUSTOMIZATIONS

pytestmark = pytest.mark.integration

RELEASE, RELEASE_NS = "ms", "modelseal-system"
OPERATOR = f"system:serviceaccount:{RELEASE_NS}:ms-modelseal-operator"
GROUP, VERSION = "modelseal.io", "v1alpha1"
VENDOR_A, VENDOR_B, SQUAT = "vendor-a", "vendor-b", "squat"
KEY_A, KEY_B = "vendor-a-llm", "vendor-b-llm"
DIGEST = "sha256:" + "b" * 64
TENANCY = {
    "unlisted": "Refuse",
    "namespaces": {
        VENDOR_A: {
            "transitKeys": [KEY_A],
            "images": ["nvcr.io/nvidia/tritonserver", "registry.vendor-a.example/triton/"],
        },
        VENDOR_B: {"transitKeys": [KEY_B]},
    },
}
ENABLED = {"modelseal.io/enabled": "true"}


@pytest.fixture(scope="module")
def cluster() -> Iterator[KubeCluster]:
    with KubeCluster(nodes=1, bin_dir=ensure_binaries()) as c:
        try:
            yield c
        finally:
            close_clients()


@pytest.fixture(scope="module")
def admin(cluster: KubeCluster) -> Iterator[Any]:
    api = cluster.api_client()
    try:
        yield api
    finally:
        api.close()


def model(name: str, key: str, image: str | None = None) -> dict[str, Any]:
    doc = yaml.safe_load((CUSTOMIZATIONS / "ProtectedModel/testdata/healthy.yaml").read_text())
    spec = copy.deepcopy(doc["spec"])
    spec["vault"] = {"transitKey": key}
    if image is not None:
        spec.setdefault("serving", {})["tritonImage"] = image
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ProtectedModel",
        "metadata": {"name": name},
        "spec": spec,
    }


@pytest.fixture(scope="module")
def chart(cluster: KubeCluster, admin: Any) -> Iterator[dict[str, Any]]:
    """The chart with the declaration above, cluster-wide, guards failing closed; mallory
    administers vendor-a (labelled for Modelseal) and squat (not labelled, not declared)."""
    core = k8s.CoreV1Api(admin)
    for ns, labels in ((VENDOR_A, ENABLED), (VENDOR_B, ENABLED), (SQUAT, {})):
        core.create_namespace({"metadata": {"name": ns, "labels": labels}})
    rbac = k8s.RbacAuthorizationV1Api(admin)
    for ns in (VENDOR_A, SQUAT):
        bind_mallory_admin(admin, ns)
        # ... and, as the platform grants model authors, full rights on ProtectedModels.
        rbac.create_namespaced_role(
            ns,
            {
                "metadata": {"name": "model-author"},
                "rules": [{"apiGroups": [GROUP], "resources": ["protectedmodels"], "verbs": ["*"]}],
            },
        )
        rbac.create_namespaced_role_binding(
            ns,
            {
                "metadata": {"name": "mallory-model-author"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "model-author",
                },
                "subjects": [
                    {"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}
                ],
            },
        )
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
            "--set",
            "admission.failurePolicy=Fail",
            "--set-json",
            f"tenancy={json.dumps(TENANCY)}",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    mallory = client_as(cluster, "mallory")
    custom = k8s.CustomObjectsApi(mallory)

    def guard_active() -> bool:
        # Until the API server has loaded the policy, the create passes: undo and retry.
        try:
            custom.create_namespaced_custom_object(
                GROUP, VERSION, SQUAT, "protectedmodels", model("probe", KEY_A)
            )
        except ApiException as exc:
            if exc.status == 403 and "Modelseal: " in (exc.body or ""):
                return True
            raise
        custom.delete_namespaced_custom_object(GROUP, VERSION, SQUAT, "protectedmodels", "probe")
        return False

    try:
        wait_for(guard_active, "the tenancy guard to be active", timeout=120)
        yield {"mallory": mallory, "custom": custom}
    finally:
        mallory.close()


def assert_refused(exc: ApiException, *words: str) -> None:
    assert exc.status == 403, (exc.status, exc.body)
    assert "ValidatingAdmissionPolicy" in exc.body and "Modelseal: " in exc.body, exc.body
    for word in words:
        assert word in exc.body, (word, exc.body)


def create(chart: dict[str, Any], ns: str, body: dict[str, Any]) -> Any:
    return chart["custom"].create_namespaced_custom_object(
        GROUP, VERSION, ns, "protectedmodels", body
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# --------------------------------------------------------------------------- Medium 7


def test_another_namespaces_key_is_refused(chart: dict[str, Any], attack_ledger: Any) -> None:
    exc = refused(lambda: create(chart, VENDOR_A, model(unique("steal"), KEY_B)))
    assert_refused(exc, f"Transit key {KEY_B} is not allowed in namespace {VENDOR_A}", KEY_A)
    # Control: its own key passes.
    assert create(chart, VENDOR_A, model(unique("own"), KEY_A))
    attack_ledger.record_leaked(0)


@pytest.mark.parametrize(
    "image",
    [
        "evil.example/copy-out:1",
        "nvcr.io/nvidia/tritonserver-evil:24.08-py3",
        "nvcr.io/nvidia/tritonserver/evil:1",
        "registry.vendor-a.example/tritonx/server:1",
        "registry.vendor-a.example/triton",
        "evil.example/nvcr.io/nvidia/tritonserver:1",
        "nvcr.io/nvidia/tritonserver:1\n",
    ],
)
def test_an_unlisted_image_is_refused(chart: dict[str, Any], image: str) -> None:
    exc = refused(lambda: create(chart, VENDOR_A, model(unique("img"), KEY_A, image)))
    if "\n" in image:  # a status message has no line breaks: the policy's fixed message
        assert_refused(exc, "Modelseal: this Triton image is not allowed in this namespace")
    else:
        assert_refused(exc, f"Triton image {image} is not allowed in namespace {VENDOR_A}")


def test_listed_images_pass(chart: dict[str, Any]) -> None:
    """Control for the image attacks: a repository with tag or digest, and below a prefix."""
    for image in (
        "nvcr.io/nvidia/tritonserver:24.08-py3",
        f"nvcr.io/nvidia/tritonserver@{DIGEST}",
        "registry.vendor-a.example/triton/server:2",
    ):
        assert create(chart, VENDOR_A, model(unique("ok"), KEY_A, image))


def test_an_undeclared_namespace_may_use_no_key(chart: dict[str, Any]) -> None:
    exc = refused(lambda: create(chart, SQUAT, model(unique("squat"), KEY_A)))
    assert_refused(exc, f"namespace {SQUAT} may use no Transit key", "tenancy.namespaces")


@pytest.fixture
def allowed_model(chart: dict[str, Any]) -> str:
    name = unique("later")
    create(chart, VENDOR_A, model(name, KEY_A))
    return name


def _replace(chart: dict[str, Any], name: str, change: Callable[[dict[str, Any]], None]) -> Any:
    custom = chart["custom"]
    live = custom.get_namespaced_custom_object(GROUP, VERSION, VENDOR_A, "protectedmodels", name)
    change(live["spec"])
    return custom.replace_namespaced_custom_object(
        GROUP, VERSION, VENDOR_A, "protectedmodels", name, live
    )


def _patch(chart: dict[str, Any], name: str, body: Any, content_type: str) -> Any:
    """The patched object. The answer is read here: an unread raw answer keeps its
    connection checked out (and the client keeps it as `last_response`) until the garbage
    collector closes it, with a ResourceWarning that fails whichever test runs then (CI
    failed twice so, at the setup of the next module's first test)."""
    api = chart["mallory"]
    resp = api.call_api(
        f"/apis/{GROUP}/{VERSION}/namespaces/{VENDOR_A}/protectedmodels/{name}",
        "PATCH",
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=body,
        auth_settings=["BearerToken"],
        _return_http_data_only=True,
        _preload_content=False,
    )
    return json.loads(resp.data)


@pytest.mark.parametrize(
    "how", ["replace", "json-patch", "merge-patch", "kubectl-patch", "server-side-apply"]
)
def test_changing_key_or_image_after_create_is_refused(
    cluster: KubeCluster, chart: dict[str, Any], allowed_model: str, how: str
) -> None:
    name = allowed_model
    if how == "replace":
        exc = refused(lambda: _replace(chart, name, lambda s: s["vault"].update(transitKey=KEY_B)))
        assert_refused(exc, f"Transit key {KEY_B}")
    elif how == "json-patch":
        ops = [{"op": "replace", "path": "/spec/vault/transitKey", "value": KEY_B}]
        exc = refused(lambda: _patch(chart, name, ops, "application/json-patch+json"))
        assert_refused(exc, f"Transit key {KEY_B}")
    elif how == "merge-patch":
        body = {"spec": {"serving": {"tritonImage": "evil.example/copy-out:1"}}}
        exc = refused(lambda: _patch(chart, name, body, "application/merge-patch+json"))
        assert_refused(exc, "Triton image evil.example/copy-out:1")
    else:
        if how == "kubectl-patch":
            args = ["patch", "pm", name, "--type=merge", "-p"]
            args.append(json.dumps({"spec": {"vault": {"transitKey": KEY_B}}}))
            result = kubectl(cluster, "mallory", VENDOR_A, args)
        else:
            doc = model(name, KEY_B)
            doc["metadata"]["namespace"] = VENDOR_A
            result = subprocess.run(
                [
                    str(cluster.binary("kubectl")),
                    f"--kubeconfig={cluster.kubeconfig}",
                    "--as=mallory",
                    "apply",
                    "--server-side",
                    "--force-conflicts",
                    "-f",
                    "-",
                ],
                input=json.dumps(doc),
                capture_output=True,
                text=True,
                check=False,
                timeout=60,
            )
        assert result.returncode != 0, result.stdout
        assert f"Modelseal: Transit key {KEY_B} is not allowed" in result.stderr, result.stderr
    live = chart["custom"].get_namespaced_custom_object(
        GROUP, VERSION, VENDOR_A, "protectedmodels", name
    )
    assert live["spec"]["vault"]["transitKey"] == KEY_A
    assert "tritonImage" not in live["spec"].get("serving", {})
    # Control: a metadata-only change (what the operator's finalizer needs) passes.
    patched = _patch(
        chart, name, {"metadata": {"labels": {"x": "y"}}}, "application/merge-patch+json"
    )
    assert patched["metadata"]["labels"]["x"] == "y"


# --------------------------------------------------------------------------- Medium 11


def _operator_writes(api: Any, ns: str) -> dict[str, Callable[[], Any]]:
    core, apps = k8s.CoreV1Api(api), k8s.AppsV1Api(api)
    tag = uuid.uuid4().hex[:6]
    deployment = {
        "metadata": {"name": f"run-as-{tag}"},
        "spec": {
            "selector": {"matchLabels": {"app": tag}},
            "template": {
                "metadata": {"labels": {"app": tag}},
                "spec": {**pod_body("x")["spec"], "serviceAccountName": "default"},
            },
        },
    }
    return {
        "Deployment": lambda: apps.create_namespaced_deployment(ns, deployment),
        "ServiceAccount": lambda: core.create_namespaced_service_account(
            ns, {"metadata": {"name": f"sa-{tag}"}}
        ),
        "ConfigMap": lambda: core.create_namespaced_config_map(
            ns, {"metadata": {"name": f"cm-{tag}"}}
        ),
    }


def test_cluster_wide_operator_is_confined_to_labelled_namespaces(
    cluster: KubeCluster, admin: Any, chart: dict[str, Any], attack_ledger: Any
) -> None:
    """RBAC lets the operator write anywhere (ClusterRoleBinding); admission refuses its
    Deployments, ServiceAccounts, ConfigMaps and Pod deletes outside labelled namespaces."""
    check = subprocess.run(
        [
            str(cluster.binary("kubectl")),
            f"--kubeconfig={cluster.kubeconfig}",
            "auth",
            "can-i",
            "create",
            "deployments",
            f"--as={OPERATOR}",
            "-n",
            SQUAT,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.stdout.strip() == "yes", check  # so it is admission that refuses below
    op = client_as(cluster, OPERATOR)
    try:
        for kind, write in _operator_writes(op, SQUAT).items():
            exc = refused(write)
            assert_refused(exc, "labelled modelseal.io/enabled=true", f"namespace {SQUAT}", kind)
        victim = f"victim-{uuid.uuid4().hex[:6]}"
        k8s.CoreV1Api(admin).create_namespaced_pod(SQUAT, pod_body(victim))
        exc = refused(lambda: k8s.CoreV1Api(op).delete_namespaced_pod(victim, SQUAT))
        assert_refused(exc, "delete of Pod")
        # Control: the same writes in a namespace labelled for Modelseal pass.
        for write in _operator_writes(op, VENDOR_A).values():
            assert write()
    finally:
        op.close()
    attack_ledger.record_leaked(0)
