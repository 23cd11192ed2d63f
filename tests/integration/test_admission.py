"""The chart's admission guards (ValidatingAdmissionPolicy) against a real API server.

A tenant with admin rights in its namespace (``mallory``) attacks a protected model:
exec / attach / port-forward / debug containers into its pods, pods, workloads and tokens
that borrow its ServiceAccount, edits of what the operator owns. Each is refused with a
message naming Modelseal; the same actions on an ordinary pod, or by the break-glass
group, pass admission. The model's pods themselves are created through the real chain
(operator → Deployment → deployment controller → ReplicaSet → replicaset controller → Pod).

There is no kubelet (kwok fakes the nodes), so an exec that passes admission still fails,
later, with the API server's own error about reaching the kubelet; the tests tell the two
apart by the status and message.

These tests run on a control plane of their own (see test_chart_install.py for why).
"""

from __future__ import annotations

import copy
import subprocess
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from tests.integration.test_chart_static import CHART, build_helm
from tests.unit.test_argocd_health import CUSTOMIZATIONS
from tests.waiting import wait_for as poll

from modelseal_devenv.kube import KubeCluster, ensure_binaries

pytestmark = pytest.mark.integration

RELEASE, RELEASE_NS = "ms", "modelseal-system"
OPERATOR = f"system:serviceaccount:{RELEASE_NS}:ms-modelseal-operator"
BREAK_GLASS = "modelseal:break-glass"
MODEL = "digits"
GROUP, VERSION = "modelseal.io", "v1alpha1"
# The labels the operator puts on a model's pods (operator/modelseal/render/names.py).
MODEL_POD_LABELS = {"app.kubernetes.io/name": "modelseal-model", "modelseal.io/model": MODEL}


# --------------------------------------------------------------------------- helpers


wait_for = partial(poll, tolerate=(ApiException,))


#: The clients `client_as` made, held until `close_clients` (the cluster fixtures' end): a
#: client dropped with its pooled TLS connection open is a ResourceWarning whenever the
#: garbage collector gets to it, which fails whatever test is running then (CI saw one at
#: the setup of a later module's test).
_CLIENTS: list[Any] = []


def client_as(cluster: KubeCluster, user: str, group: str | None = None) -> Any:
    """An ApiClient that impersonates ``user`` (the admin kubeconfig may impersonate);
    closed by `close_clients`."""
    api = cluster.api_client()
    api.set_default_header("Impersonate-User", user)
    if group:
        api.set_default_header("Impersonate-Group", group)
    _CLIENTS.append(api)
    return api


def close_clients() -> None:
    """Close every client `client_as` made."""
    while _CLIENTS:
        _CLIENTS.pop().close()


def refused(call: Callable[[], Any]) -> ApiException:
    with pytest.raises(ApiException) as info:
        call()
    return info.value


def assert_refused_by_modelseal(exc: ApiException, *words: str) -> None:
    assert exc.status == 403, (exc.status, exc.body)
    assert "ValidatingAdmissionPolicy" in exc.body, exc.body
    assert "Modelseal: " in exc.body, exc.body
    for word in words:
        assert word in exc.body, (word, exc.body)


def assert_not_refused_by_policy(exc: ApiException) -> None:
    """The request got past admission: whatever failed, it was not one of our policies."""
    assert "ValidatingAdmissionPolicy" not in (exc.body or ""), exc.body
    assert "Modelseal" not in (exc.body or ""), exc.body
    assert exc.status != 403, (exc.status, exc.body)


def connect(api: Any, ns: str, pod: str, kind: str) -> Any:
    """One CONNECT request (plain POST, no stream upgrade): exec, attach or portforward."""
    core = k8s.CoreV1Api(api)
    if kind == "exec":
        return core.connect_post_namespaced_pod_exec(
            pod,
            ns,
            command=["cat", "/models/digits/1/model.py"],
            stdout=True,
            _request_timeout=20,
        )
    if kind == "attach":
        return core.connect_post_namespaced_pod_attach(pod, ns, stdout=True, _request_timeout=20)
    return core.connect_post_namespaced_pod_portforward(pod, ns, ports=8000, _request_timeout=20)


DEBUG_CONTAINER = {
    "name": "debugger",
    "image": "busybox",
    "command": ["sh"],
    "stdin": True,
    "tty": True,
}


def add_debug_container(api: Any, ns: str, pod: str, target: str) -> Any:
    core = k8s.CoreV1Api(api)
    live = core.read_namespaced_pod(pod, ns)
    body = api.sanitize_for_serialization(live)
    body["spec"]["ephemeralContainers"] = [
        *(body["spec"].get("ephemeralContainers") or []),
        {
            **DEBUG_CONTAINER,
            "name": f"debugger-{uuid.uuid4().hex[:4]}",
            "targetContainerName": target,
        },
    ]
    return core.replace_namespaced_pod_ephemeralcontainers(pod, ns, body)


def pod_body(name: str, service_account: str = "default") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": service_account,
            "containers": [{"name": "main", "image": "busybox", "command": ["sleep", "3600"]}],
        },
    }


def workload_body(kind: str, name: str, service_account: str) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "serviceAccountName": service_account,
                    "containers": [{"name": "thief", "image": "busybox"}],
                },
            },
        },
    }


def model_service_account(model: dict[str, Any]) -> str:
    """The model's ServiceAccount, as the operator names it: <name>-<first 8 of its uid>."""
    return f"{model['metadata']['name']}-{model['metadata']['uid'][:8]}"


def kubectl(
    cluster: KubeCluster, user: str, ns: str, args: list[str]
) -> subprocess.CompletedProcess[str]:
    """Our kubectl as ``user`` in ``ns`` (as people use it: websocket/SPDY upgrades, patches)."""
    return subprocess.run(
        [
            str(cluster.binary("kubectl")),
            f"--kubeconfig={cluster.kubeconfig}",
            f"--as={user}",
            "-n",
            ns,
            *args,
        ],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )


def failed_create_message(api: Any, ns: str, controller_object: str) -> str:
    """The message of the FailedCreate event that a workload controller records on
    ``controller_object`` (a StatefulSet, a ReplicaSet) when admission refuses its pod."""
    core = k8s.CoreV1Api(api)
    events = wait_for(
        lambda: [
            e
            for e in core.list_namespaced_event(
                ns, field_selector=f"involvedObject.name={controller_object}"
            ).items
            if e.reason == "FailedCreate"
        ],
        f"the FailedCreate event of {controller_object}",
    )
    return str(events[0].message)


# --------------------------------------------------------------------------- fixtures


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


@pytest.fixture(scope="module")
def chart(cluster: KubeCluster, admin: Any) -> str:
    """The chart, installed with helm, its guards set to fail closed.

    With the chart's default (failurePolicy Ignore) a guard whose expression failed to
    evaluate would let the request through silently; here such a failure refuses the
    request (422 "resulted in error"), so every test below would catch it. Fail-closed
    guards also refuse everything while the API server does not yet know the ProtectedModel
    kind (about 30 s after the CRD appears), so the fixture waits for that first.
    """
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
            # The tenant namespace is made after the install, so the platform cannot
            # declare it (tenancy guards: tests/attack/test_attack_tenancy_admission.py).
            "--set",
            "tenancy.unlisted=Any",
            "--wait",
            "--timeout",
            "180s",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    core = k8s.CoreV1Api(admin)

    def probe() -> bool:
        name = f"probe-{uuid.uuid4().hex[:6]}"
        core.create_namespaced_pod("default", pod_body(name))
        core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
        return True

    wait_for(probe, "the guards to know the ProtectedModel kind", timeout=120)
    # The break-glass group gets its rights from RBAC like anyone (here: cluster-admin).
    rbac = k8s.RbacAuthorizationV1Api(admin)
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": "break-glass-admins"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "cluster-admin",
            },
            "subjects": [
                {"kind": "Group", "name": BREAK_GLASS, "apiGroup": "rbac.authorization.k8s.io"}
            ],
        }
    )
    return RELEASE


def bind_mallory_admin(api: Any, ns: str) -> None:
    """Make user mallory admin of namespace `ns` (the usual rights of a tenant team)."""
    k8s.RbacAuthorizationV1Api(api).create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": "mallory-admin"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "admin",
            },
            "subjects": [
                {"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}
            ],
        },
    )


@pytest.fixture(scope="module")
def tenant(cluster: KubeCluster, admin: Any, chart: str) -> dict[str, Any]:
    """A tenant namespace with one ProtectedModel, its objects made by the 'operator', its
    pods made by Kubernetes' controllers, and an ordinary pod beside it."""
    ns = f"tenant-{uuid.uuid4().hex[:6]}"
    core = k8s.CoreV1Api(admin)
    # Labelled for Modelseal: the cluster-wide operator may write only in such namespaces.
    core.create_namespace({"metadata": {"name": ns, "labels": {"modelseal.io/enabled": "true"}}})
    # mallory administers the namespace: the usual rights of a tenant team.
    bind_mallory_admin(admin, ns)
    # ... plus the right to add debug containers, which `admin` does not include.
    rbac = k8s.RbacAuthorizationV1Api(admin)
    rbac.create_namespaced_role(
        ns,
        {
            "metadata": {"name": "debugger"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods/ephemeralcontainers"],
                    "verbs": ["get", "update", "patch"],
                }
            ],
        },
    )
    rbac.create_namespaced_role_binding(
        ns,
        {
            "metadata": {"name": "mallory-debugger"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "debugger",
            },
            "subjects": [
                {"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"}
            ],
        },
    )
    doc = yaml.safe_load((CUSTOMIZATIONS / "ProtectedModel/testdata/healthy.yaml").read_text())
    pm = k8s.CustomObjectsApi(admin).create_namespaced_custom_object(
        GROUP,
        VERSION,
        ns,
        "protectedmodels",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "ProtectedModel",
            "metadata": {"name": MODEL},
            "spec": doc["spec"],
        },
    )
    owner = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ProtectedModel",
        "name": MODEL,
        "uid": pm["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    model_sa = model_service_account(pm)
    # What the operator renders, written with the operator's own identity and RBAC.
    op = client_as(cluster, OPERATOR)
    op_core, op_apps = k8s.CoreV1Api(op), k8s.AppsV1Api(op)
    meta = {
        "name": MODEL,
        "ownerReferences": [owner],
        "labels": {"app.kubernetes.io/managed-by": "modelseal-operator"},
    }
    op_core.create_namespaced_service_account(ns, {"metadata": {**meta, "name": model_sa}})
    op_core.create_namespaced_config_map(
        ns, {"metadata": {**meta, "name": f"{MODEL}-license"}, "data": {"license.json": "{}"}}
    )
    op_core.create_namespaced_service(
        ns,
        {
            "metadata": meta,
            "spec": {
                "selector": MODEL_POD_LABELS,
                "ports": [{"name": "http", "port": 8080, "targetPort": "http"}],
            },
        },
    )
    # The model's pods as rendered in outline: the unsealer as an init container, Triton,
    # the operator's pod labels (plus `app`, for the tests' own selectors).
    dep = workload_body("Deployment", MODEL, model_sa)
    dep["metadata"] = copy.deepcopy(meta)
    labels = {"app": MODEL, **MODEL_POD_LABELS}
    dep["spec"]["selector"] = {"matchLabels": labels}
    dep["spec"]["template"]["metadata"] = {"labels": labels}
    dep["spec"]["template"]["spec"]["initContainers"] = [
        {"name": "unsealer", "image": "modelseal/unsealer:1", "restartPolicy": "Always"}
    ]
    dep["spec"]["template"]["spec"]["containers"] = [
        {
            "name": "triton",
            "image": "nvcr.io/nvidia/tritonserver:24.08-py3",
            "ports": [{"name": "http", "containerPort": 8000}],
        }
    ]
    op_apps.create_namespaced_deployment(ns, dep)
    pods = wait_for(
        lambda: [
            p
            for p in core.list_namespaced_pod(ns, label_selector=f"app={MODEL}").items
            if p.spec.node_name
        ],
        "the model's pod, created by the ReplicaSet controller and scheduled",
        timeout=90,
    )
    model_pod = pods[0].metadata.name
    replica_set = next(r.name for r in pods[0].metadata.owner_references if r.controller)
    # An ordinary pod beside it, made by the tenant.
    mallory = client_as(cluster, "mallory")
    k8s.CoreV1Api(mallory).create_namespaced_pod(ns, pod_body("web"))
    wait_for(
        lambda: core.read_namespaced_pod("web", ns).spec.node_name, "the ordinary pod scheduled"
    )
    # The guards are live once a probe is refused (policies take a moment to load).
    wait_for(
        lambda: "Modelseal" in ((_try_exec(mallory, ns, model_pod) or ApiException()).body or ""),
        "the admission policies to be active",
    )
    return {
        "ns": ns,
        "model_pod": model_pod,
        "model_sa": model_sa,
        "replica_set": replica_set,
        "owner": owner,
        "mallory": mallory,
        "operator": op,
    }


def _try_exec(api: Any, ns: str, pod: str) -> ApiException | None:
    try:
        connect(api, ns, pod, "exec")
    except ApiException as exc:
        return exc
    return None


# --------------------------------------------------------------------------- interactive


@pytest.mark.parametrize("kind", ["exec", "attach", "portforward"])
def test_connect_to_a_model_pod_is_refused(tenant: dict[str, Any], kind: str) -> None:
    exc = refused(lambda: connect(tenant["mallory"], tenant["ns"], tenant["model_pod"], kind))
    assert_refused_by_modelseal(exc, tenant["model_pod"], f"protected model {MODEL}")


@pytest.mark.parametrize("kind", ["exec", "attach", "portforward"])
def test_connect_to_a_model_pod_is_refused_to_cluster_admins_too(
    admin: Any, tenant: dict[str, Any], kind: str
) -> None:
    exc = refused(lambda: connect(admin, tenant["ns"], tenant["model_pod"], kind))
    assert_refused_by_modelseal(exc, "Break-glass")


@pytest.mark.parametrize("kind", ["exec", "attach", "portforward"])
def test_connect_to_an_ordinary_pod_passes_admission(tenant: dict[str, Any], kind: str) -> None:
    # A plain POST passes admission, then the API server's proxy asks for a stream upgrade
    # (with kubectl's upgrade it goes on to the kubelet: see the kubectl test below).
    exc = refused(lambda: connect(tenant["mallory"], tenant["ns"], "web", kind))
    assert_not_refused_by_policy(exc)
    assert exc.status == 400 and "Upgrade request required" in exc.body, exc.body


KUBECTL_ACTIONS = {
    "exec": ["exec", "{pod}", "--", "cat", "/models/digits/1/model.py"],
    "attach": ["attach", "{pod}"],
    "port-forward": ["port-forward", "pod/{pod}", "18000:8000"],
}


def kubectl_as(cluster: KubeCluster, user: str, ns: str, args: list[str]) -> str:
    """kubectl as ``user``, which must fail; its stderr."""
    result = kubectl(cluster, user, ns, args)
    assert result.returncode != 0, result.stdout
    return result.stderr


@pytest.mark.parametrize("action", sorted(KUBECTL_ACTIONS))
def test_kubectl_tells_the_policy_from_the_missing_kubelet(
    cluster: KubeCluster, tenant: dict[str, Any], action: str
) -> None:
    """With kubectl: on the model's pod the policy answers; on the ordinary pod admission
    passes and the API server then fails to reach the kubelet (there is none: kwok nodes)."""
    ns = tenant["ns"]
    args = [a.format(pod=tenant["model_pod"]) for a in KUBECTL_ACTIONS[action]]
    err = kubectl_as(cluster, "mallory", ns, args)
    assert "Forbidden" in err or "forbidden" in err, err
    assert "Modelseal: " in err and f"protected model {MODEL}" in err, err
    err = kubectl_as(cluster, "mallory", ns, [a.format(pod="web") for a in KUBECTL_ACTIONS[action]])
    assert "Modelseal" not in err, err
    assert "127.0.0.1:10250" in err and "connection refused" in err, err


def test_break_glass_group_passes(cluster: KubeCluster, tenant: dict[str, Any]) -> None:
    responder = client_as(cluster, "oncall", BREAK_GLASS)
    exc = refused(lambda: connect(responder, tenant["ns"], tenant["model_pod"], "exec"))
    assert_not_refused_by_policy(exc)


def test_debug_container_on_a_model_pod_is_refused(tenant: dict[str, Any]) -> None:
    exc = refused(
        lambda: add_debug_container(tenant["mallory"], tenant["ns"], tenant["model_pod"], "triton")
    )
    assert_refused_by_modelseal(exc, "ephemeral (debug) container")


def test_debug_container_on_an_ordinary_pod_is_allowed(tenant: dict[str, Any]) -> None:
    pod = add_debug_container(tenant["mallory"], tenant["ns"], "web", "main")
    assert any(c.name.startswith("debugger-") for c in pod.spec.ephemeral_containers)


# --------------------------------------------------------------------------- borrowing


def test_pod_borrowing_the_models_service_account_is_refused(
    admin: Any, tenant: dict[str, Any]
) -> None:
    for api in (tenant["mallory"], admin):
        exc = refused(
            lambda api=api: k8s.CoreV1Api(api).create_namespaced_pod(
                tenant["ns"], pod_body(f"thief-{uuid.uuid4().hex[:4]}", tenant["model_sa"])
            )
        )
        assert_refused_by_modelseal(exc, f"ServiceAccount {tenant['model_sa']}", "own Deployment")


def test_pod_with_its_own_service_account_is_allowed(tenant: dict[str, Any]) -> None:
    pod = k8s.CoreV1Api(tenant["mallory"]).create_namespaced_pod(
        tenant["ns"], pod_body(f"ok-{uuid.uuid4().hex[:4]}")
    )
    assert pod.spec.service_account_name == "default"


@pytest.mark.parametrize("kind", ["Deployment", "ReplicaSet", "StatefulSet"])
def test_workloads_borrowing_the_service_account_are_refused(
    tenant: dict[str, Any], kind: str
) -> None:
    apps = k8s.AppsV1Api(tenant["mallory"])
    create = {
        "Deployment": apps.create_namespaced_deployment,
        "ReplicaSet": apps.create_namespaced_replica_set,
        "StatefulSet": apps.create_namespaced_stateful_set,
    }[kind]
    body = workload_body(kind, f"borrow-{kind.lower()}", tenant["model_sa"])
    if kind == "StatefulSet":
        # The StatefulSet itself is not guarded, but its controller may not create the pod:
        # it records the refusal as a FailedCreate event.
        body["spec"]["serviceName"] = "x"
        create(tenant["ns"], body)
        name = body["metadata"]["name"]
        message = failed_create_message(tenant["mallory"], tenant["ns"], name)
        assert "Modelseal: " in message, message
        core = k8s.CoreV1Api(tenant["mallory"])
        assert core.list_namespaced_pod(tenant["ns"], label_selector=f"app={name}").items == []
        return
    exc = refused(lambda: create(tenant["ns"], body))
    assert_refused_by_modelseal(exc, "only be written by the Modelseal operator")


def test_token_for_the_models_service_account_is_refused(
    admin: Any, tenant: dict[str, Any]
) -> None:
    request = {"spec": {"audiences": ["vault"], "expirationSeconds": 600}}
    for api in (tenant["mallory"], admin):
        exc = refused(
            lambda api=api: k8s.CoreV1Api(api).create_namespaced_service_account_token(
                tenant["model_sa"], tenant["ns"], request
            )
        )
        assert_refused_by_modelseal(exc, "only be issued to the kubelet")
    token = k8s.CoreV1Api(tenant["mallory"]).create_namespaced_service_account_token(
        "default", tenant["ns"], request
    )
    assert token.status.token


def test_long_lived_token_secret_for_the_model_is_refused(tenant: dict[str, Any]) -> None:
    body = {
        "metadata": {
            "name": "stolen-token",
            "annotations": {"kubernetes.io/service-account.name": tenant["model_sa"]},
        },
        "type": "kubernetes.io/service-account-token",
    }
    exc = refused(
        lambda: k8s.CoreV1Api(tenant["mallory"]).create_namespaced_secret(tenant["ns"], body)
    )
    assert_refused_by_modelseal(exc, f"ServiceAccount {tenant['model_sa']}")


# --------------------------------------------------------------------------- owned objects


def test_edits_of_owned_objects_are_refused(tenant: dict[str, Any]) -> None:
    ns, mallory = tenant["ns"], tenant["mallory"]
    apps, core = k8s.AppsV1Api(mallory), k8s.CoreV1Api(mallory)
    new_image = {
        "spec": {"template": {"spec": {"containers": [{"name": "triton", "image": "evil"}]}}}
    }
    # Two guards refuse this one (a Deployment with the model's ServiceAccount, and an
    # object the operator owns); the API server reports the first.
    assert_refused_by_modelseal(
        refused(lambda: apps.patch_namespaced_deployment(MODEL, ns, new_image)),
        f"protected model {MODEL}",
    )
    assert_refused_by_modelseal(
        refused(
            lambda: apps.patch_namespaced_deployment_scale(MODEL, ns, {"spec": {"replicas": 9}})
        ),
        f"Scale {ns}/{MODEL}",
        "change the ProtectedModel instead",
    )
    assert_refused_by_modelseal(
        refused(
            lambda: core.patch_namespaced_config_map(
                f"{MODEL}-license", ns, {"data": {"license.json": '{"quotas": "none"}'}}
            )
        ),
        "ConfigMap",
    )
    assert_refused_by_modelseal(
        refused(lambda: core.delete_namespaced_config_map(f"{MODEL}-license", ns)), "delete"
    )
    assert_refused_by_modelseal(
        refused(lambda: core.delete_namespaced_service_account(tenant["model_sa"], ns)),
        "ServiceAccount",
    )


def test_the_operator_may_edit_what_it_owns(tenant: dict[str, Any]) -> None:
    core = k8s.CoreV1Api(tenant["operator"])
    cm = core.patch_namespaced_config_map(
        f"{MODEL}-license", tenant["ns"], {"data": {"license.json": '{"v": 2}'}}
    )
    assert cm.data["license.json"] == '{"v": 2}'


def test_namespace_without_models_is_not_guarded(cluster: KubeCluster, admin: Any) -> None:
    """No ProtectedModel in the namespace: nothing is protected, even a look-alike name."""
    ns = f"plain-{uuid.uuid4().hex[:6]}"
    core = k8s.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": ns}})
    core.create_namespaced_service_account(ns, {"metadata": {"name": MODEL}})
    pod = core.create_namespaced_pod(ns, pod_body(f"{MODEL}-7c9d8b5f4-x2x4z", MODEL))
    assert pod.metadata.name.startswith(MODEL)
    exc = refused(lambda: connect(admin, ns, pod.metadata.name, "exec"))
    assert_not_refused_by_policy(exc)
