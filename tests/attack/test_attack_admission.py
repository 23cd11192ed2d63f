"""Attacks on the chart's admission guards by a tenant with admin rights in the model's
namespace (``mallory``), against a real API server, controller manager and kwok nodes
(issue 12: C1, C2, C3 and High 3).

Each test makes one attack and passes only when the API server refused it with a
Modelseal message that names the model and the break-glass group; each then makes the
same request on an ordinary object of the same namespace and checks that it passes, so a
guard that refused everything would fail here too.

The control plane, the chart (guards fail closed) and the tenant namespace with its model
come from tests/integration/test_admission.py (its module-scoped fixtures, shared here by
name: this module gets a control plane of its own).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from modelseal_devenv.kube import KubeCluster
from tests.integration import test_admission as base
from tests.integration.test_admission import (
    BREAK_GLASS,
    MODEL,
    MODEL_POD_LABELS,
    assert_not_refused_by_policy,
    assert_refused_by_modelseal,
    client_as,
    failed_create_message,
    kubectl,
    pod_body,
    refused,
    wait_for,
    workload_body,
)

pytestmark = pytest.mark.integration

# The fixtures of test_admission.py, by their names.
cluster = base.cluster
admin = base.admin
chart = base.chart
tenant = base.tenant


# --------------------------------------------------------------------------- helpers


def modelseal_refusal(exc: ApiException, *words: str) -> None:
    """Refused by a Modelseal guard that names the model and the break-glass group."""
    assert_refused_by_modelseal(exc, f"protected model {MODEL}", f"group {BREAK_GLASS}", *words)


def kubectl_refused(cluster: KubeCluster, tenant: dict[str, Any], args: list[str]) -> str:
    result = kubectl(cluster, "mallory", tenant["ns"], args)
    assert result.returncode != 0, result.stdout
    err = result.stderr
    assert "Modelseal: " in err and f"protected model {MODEL}" in err, err
    assert f"group {BREAK_GLASS}" in err, err
    return err


def kubectl_ok(cluster: KubeCluster, tenant: dict[str, Any], args: list[str]) -> str:
    result = kubectl(cluster, "mallory", tenant["ns"], args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def ordinary_pod(tenant: dict[str, Any], **spec: Any) -> str:
    """A pod of mallory's own beside the model (scheduled, unless spec says otherwise)."""
    name = f"plain-{uuid.uuid4().hex[:6]}"
    body = pod_body(name)
    body["spec"].update(spec)
    k8s.CoreV1Api(tenant["mallory"]).create_namespaced_pod(tenant["ns"], body)
    return name


def ordinary_replica_set(tenant: dict[str, Any]) -> str:
    name = f"plain-{uuid.uuid4().hex[:6]}"
    body = workload_body("ReplicaSet", name, "default")
    body["spec"]["replicas"] = 0
    k8s.AppsV1Api(tenant["mallory"]).create_namespaced_replica_set(tenant["ns"], body)
    return name


def model_pod(tenant: dict[str, Any]) -> Any:
    return k8s.CoreV1Api(tenant["mallory"]).read_namespaced_pod(tenant["model_pod"], tenant["ns"])


def network_policy(name: str, selector: dict[str, Any], **rules: Any) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name},
        "spec": {"podSelector": selector, **rules},
    }


def service(name: str, selector: dict[str, str], kind: str = "ClusterIP") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "type": kind,
            "selector": selector,
            "ports": [{"name": "http", "port": 80, "targetPort": 9000}],
        },
    }


ALLOW_ALL_INGRESS = {"policyTypes": ["Ingress"], "ingress": [{}]}


@pytest.fixture(scope="module", autouse=True)
def guards_live(tenant: dict[str, Any]) -> None:
    """The tenant fixture waits for the exec guard; the API server loads each policy on its
    own, so wait (with dry-run requests, which admission sees but nothing stores) for the
    newest ones too."""
    core = k8s.CoreV1Api(tenant["mallory"])
    net = k8s.NetworkingV1Api(tenant["mallory"])
    probes = {
        "model-pods": lambda: core.patch_namespaced_pod(
            tenant["model_pod"],
            tenant["ns"],
            {"metadata": {"labels": {"probe": "1"}}},
            dry_run="All",
        ),
        "model-networkpolicies": lambda: net.create_namespaced_network_policy(
            tenant["ns"], network_policy("probe", {}, **ALLOW_ALL_INGRESS), dry_run="All"
        ),
    }
    for name, probe in probes.items():

        def guarded(probe: Any = probe) -> bool:
            try:
                probe()
            except ApiException as exc:
                return "Modelseal" in (exc.body or "")
            return False

        wait_for(guarded, f"the {name} guard to be active")


# --------------------------------------------------------------------------- C1: the pod


def test_set_image_on_a_model_pod_is_refused(
    cluster: KubeCluster, admin: Any, tenant: dict[str, Any]
) -> None:
    pod = tenant["model_pod"]
    kubectl_refused(cluster, tenant, ["set", "image", f"pod/{pod}", "triton=evil:latest"])
    # A cluster admin outside the break-glass group is refused too.
    patch = {"spec": {"containers": [{"name": "triton", "image": "evil:latest"}]}}
    exc = refused(lambda: k8s.CoreV1Api(admin).patch_namespaced_pod(pod, tenant["ns"], patch))
    modelseal_refusal(exc, "its spec")
    assert model_pod(tenant).spec.containers[0].image != "evil:latest"
    # Control: the same on an ordinary pod.
    plain = ordinary_pod(tenant)
    kubectl_ok(cluster, tenant, ["set", "image", f"pod/{plain}", "main=busybox:1.36"])


def test_server_side_apply_of_a_model_pod_is_refused(
    cluster: KubeCluster, tenant: dict[str, Any], tmp_path: Path
) -> None:
    """`kubectl apply --server-side --force-conflicts` takes the image field over."""

    def manifest(pod: str, container: str) -> Path:
        path = tmp_path / f"{pod}.yaml"
        doc = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod},
            "spec": {"containers": [{"name": container, "image": "evil:latest"}]},
        }
        path.write_text(json.dumps(doc))
        return path

    apply = ["apply", "--server-side", "--force-conflicts", "--field-manager=mallory", "-f"]
    kubectl_refused(cluster, tenant, [*apply, str(manifest(tenant["model_pod"], "triton"))])
    assert model_pod(tenant).spec.containers[0].image != "evil:latest"
    plain = ordinary_pod(tenant)
    kubectl_ok(cluster, tenant, [*apply, str(manifest(plain, "main"))])


def test_json_patch_of_the_unsealer_image_is_refused(
    cluster: KubeCluster, tenant: dict[str, Any]
) -> None:
    patch = json.dumps(
        [{"op": "replace", "path": "/spec/initContainers/0/image", "value": "evil:latest"}]
    )
    args = ["patch", "pod", tenant["model_pod"], "--type=json", "-p", patch]
    kubectl_refused(cluster, tenant, args)
    assert model_pod(tenant).spec.init_containers[0].image != "evil:latest"
    # Control: an ordinary pod with an init container.
    plain = ordinary_pod(
        tenant, initContainers=[{"name": "init", "image": "busybox", "command": ["true"]}]
    )
    kubectl_ok(cluster, tenant, ["patch", "pod", plain, "--type=json", "-p", patch])


def test_removing_the_model_label_is_refused(cluster: KubeCluster, tenant: dict[str, Any]) -> None:
    """High 3: an unlabelled pod leaves its ReplicaSet, which starts another (seats + 1)."""
    kubectl_refused(cluster, tenant, ["label", "pod", tenant["model_pod"], "modelseal.io/model-"])
    assert model_pod(tenant).metadata.labels["modelseal.io/model"] == MODEL
    # Adding a label is a change of labels too.
    kubectl_refused(cluster, tenant, ["label", "pod", tenant["model_pod"], "tier=free"])
    plain = ordinary_pod(tenant)
    kubectl_ok(cluster, tenant, ["label", "pod", plain, "tier=free"])
    kubectl_ok(cluster, tenant, ["label", "pod", plain, "tier-"])


def test_dropping_every_mark_and_the_image_at_once_is_refused(tenant: dict[str, Any]) -> None:
    """The guard knows the pod by what it was (oldObject), not by what the patch makes it."""
    patch = {
        "metadata": {
            "labels": {key: None for key in ["app", *MODEL_POD_LABELS]},
            "ownerReferences": None,
        },
        "spec": {"containers": [{"name": "triton", "image": "evil:latest"}]},
    }
    core = k8s.CoreV1Api(tenant["mallory"])
    modelseal_refusal(
        refused(lambda: core.patch_namespaced_pod(tenant["model_pod"], tenant["ns"], patch))
    )
    plain = ordinary_pod(tenant)
    core.patch_namespaced_pod(
        plain,
        tenant["ns"],
        {"spec": {"containers": [{"name": "main", "image": "evil:latest"}]}},
    )


def test_removing_owner_references_is_refused(cluster: KubeCluster, tenant: dict[str, Any]) -> None:
    """An orphaned model pod outlives its ReplicaSet, its Deployment and the model."""
    patch = json.dumps([{"op": "remove", "path": "/metadata/ownerReferences"}])
    args = ["patch", "pod", tenant["model_pod"], "--type=json", "-p", patch]
    err = kubectl_refused(cluster, tenant, args)
    assert "ownerReferences" in err, err
    assert model_pod(tenant).metadata.owner_references
    # Control: give an ordinary pod an owner, then take it away again.
    core = k8s.CoreV1Api(tenant["mallory"])
    cm = core.create_namespaced_config_map(
        tenant["ns"], {"metadata": {"name": f"owner-{uuid.uuid4().hex[:6]}"}}
    )
    plain = ordinary_pod(tenant)
    owner = {"apiVersion": "v1", "kind": "ConfigMap", "name": cm.metadata.name}
    core.patch_namespaced_pod(
        plain,
        tenant["ns"],
        {"metadata": {"ownerReferences": [{**owner, "uid": cm.metadata.uid}]}},
    )
    kubectl_ok(cluster, tenant, ["patch", "pod", plain, "--type=json", "-p", patch])


# --------------------------------------------------------------------------- C3: proxies


def test_pod_proxy_to_a_model_pod_is_refused(tenant: dict[str, Any]) -> None:
    """pods/proxy reaches every port of the pod (the unsealer's too) around NetworkPolicy."""
    core = k8s.CoreV1Api(tenant["mallory"])
    pod = tenant["model_pod"]
    for target in (pod, f"{pod}:9000", f"http:{pod}:9000", f"https:{pod}:8443"):
        exc = refused(
            lambda target=target: core.connect_get_namespaced_pod_proxy_with_path(
                target, tenant["ns"], "v2/models", _request_timeout=20
            )
        )
        modelseal_refusal(exc, "proxy to pod")
    # Control: an ordinary pod (not scheduled, so the proxy fails fast after admission).
    plain = ordinary_pod(tenant, nodeSelector={"modelseal.test/nowhere": "true"})
    exc = refused(
        lambda: core.connect_get_namespaced_pod_proxy_with_path(
            f"{plain}:9000", tenant["ns"], "v2/models", _request_timeout=20
        )
    )
    assert_not_refused_by_policy(exc)


def test_service_proxy_to_the_models_service_is_refused(tenant: dict[str, Any]) -> None:
    core = k8s.CoreV1Api(tenant["mallory"])
    for target in (MODEL, f"{MODEL}:http", f"https:{MODEL}:8443"):
        exc = refused(
            lambda target=target: core.connect_get_namespaced_service_proxy_with_path(
                target, tenant["ns"], "v2/models", _request_timeout=20
            )
        )
        modelseal_refusal(exc, f"proxy to service {tenant['ns']}/{target}")
    # Control: an ordinary Service (no endpoints: the proxy fails after admission).
    name = f"web-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_service(tenant["ns"], service(name, {"app": "web"}))
    exc = refused(
        lambda: core.connect_get_namespaced_service_proxy_with_path(
            f"{name}:http", tenant["ns"], "v2/models", _request_timeout=20
        )
    )
    assert_not_refused_by_policy(exc)


# --------------------------------------------------------------------------- C3: exposure


def test_allow_all_networkpolicy_on_the_model_is_refused(tenant: dict[str, Any]) -> None:
    net = k8s.NetworkingV1Api(tenant["mallory"])
    body = network_policy(
        "open-model", {"matchLabels": {"modelseal.io/model": MODEL}}, **ALLOW_ALL_INGRESS
    )
    modelseal_refusal(
        refused(lambda: net.create_namespaced_network_policy(tenant["ns"], body)), "NetworkPolicy"
    )
    control = network_policy("open-web", {"matchLabels": {"app": "web"}}, **ALLOW_ALL_INGRESS)
    net.create_namespaced_network_policy(tenant["ns"], control)


def test_allow_all_networkpolicy_for_every_pod_is_refused(tenant: dict[str, Any]) -> None:
    """An empty podSelector selects the model's pods too; a rule-less one only denies."""
    net = k8s.NetworkingV1Api(tenant["mallory"])
    body = network_policy("open-all", {}, policyTypes=["Ingress", "Egress"], egress=[{}])
    modelseal_refusal(refused(lambda: net.create_namespaced_network_policy(tenant["ns"], body)))
    deny_all = network_policy("deny-all", {}, policyTypes=["Ingress"])
    net.create_namespaced_network_policy(tenant["ns"], deny_all)


def test_networkpolicy_selecting_the_model_by_expression_is_refused(
    tenant: dict[str, Any],
) -> None:
    net = k8s.NetworkingV1Api(tenant["mallory"])
    expression = {"key": "app.kubernetes.io/name", "operator": "In", "values": ["modelseal-model"]}
    body = network_policy("open-by-expr", {"matchExpressions": [expression]}, **ALLOW_ALL_INGRESS)
    modelseal_refusal(refused(lambda: net.create_namespaced_network_policy(tenant["ns"], body)))
    # Control: the complement, which cannot select a model pod.
    control = network_policy(
        "open-not-model",
        {"matchExpressions": [{**expression, "operator": "NotIn"}]},
        **ALLOW_ALL_INGRESS,
    )
    net.create_namespaced_network_policy(tenant["ns"], control)


def test_widening_an_existing_networkpolicy_to_the_model_is_refused(
    tenant: dict[str, Any],
) -> None:
    net = k8s.NetworkingV1Api(tenant["mallory"])
    name = f"web-{uuid.uuid4().hex[:6]}"
    net.create_namespaced_network_policy(
        tenant["ns"], network_policy(name, {"matchLabels": {"app": "web"}}, **ALLOW_ALL_INGRESS)
    )
    widen = {"spec": {"podSelector": {"matchLabels": {"app": None, **MODEL_POD_LABELS}}}}
    modelseal_refusal(
        refused(lambda: net.patch_namespaced_network_policy(name, tenant["ns"], widen))
    )
    net.patch_namespaced_network_policy(
        name, tenant["ns"], {"spec": {"podSelector": {"matchLabels": {"app": "web-2"}}}}
    )


def test_nodeport_service_selecting_the_model_is_refused(tenant: dict[str, Any]) -> None:
    core = k8s.CoreV1Api(tenant["mallory"])
    body = service("model-nodeport", MODEL_POD_LABELS, "NodePort")
    modelseal_refusal(
        refused(lambda: core.create_namespaced_service(tenant["ns"], body)), "NodePort"
    )
    # One label of the model's pods is enough to select them.
    body = service("model-nodeport", {"modelseal.io/model": MODEL}, "NodePort")
    modelseal_refusal(refused(lambda: core.create_namespaced_service(tenant["ns"], body)))
    core.create_namespaced_service(
        tenant["ns"], service("web-nodeport", {"app": "web"}, "NodePort")
    )


def test_retargeting_a_service_at_the_model_is_refused(tenant: dict[str, Any]) -> None:
    core = k8s.CoreV1Api(tenant["mallory"])
    name = f"web-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_service(tenant["ns"], service(name, {"app": "web"}))
    retarget = {"spec": {"selector": {"app": None, **MODEL_POD_LABELS}}}
    modelseal_refusal(refused(lambda: core.patch_namespaced_service(name, tenant["ns"], retarget)))
    core.patch_namespaced_service(name, tenant["ns"], {"spec": {"selector": {"app": "web-2"}}})


# --------------------------------------------------------------------------- C3: seats


def test_replicaset_scale_of_the_model_is_refused(tenant: dict[str, Any]) -> None:
    apps = k8s.AppsV1Api(tenant["mallory"])
    scale = {"spec": {"replicas": 5}}
    exc = refused(
        lambda: apps.patch_namespaced_replica_set_scale(tenant["replica_set"], tenant["ns"], scale)
    )
    modelseal_refusal(exc, f"ReplicaSet {tenant['ns']}/{tenant['replica_set']}")
    rs = apps.read_namespaced_replica_set(tenant["replica_set"], tenant["ns"])
    assert rs.spec.replicas == 1
    plain = ordinary_replica_set(tenant)
    apps.patch_namespaced_replica_set_scale(plain, tenant["ns"], {"spec": {"replicas": 0}})


def test_replicaset_replicas_update_of_the_model_is_refused(tenant: dict[str, Any]) -> None:
    apps = k8s.AppsV1Api(tenant["mallory"])
    body = {"spec": {"replicas": 5}}
    exc = refused(
        lambda: apps.patch_namespaced_replica_set(tenant["replica_set"], tenant["ns"], body)
    )
    modelseal_refusal(exc)
    # Nor by first moving the ReplicaSet off the model's ServiceAccount.
    move = {"spec": {"replicas": 5, "template": {"spec": {"serviceAccountName": "default"}}}}
    exc = refused(
        lambda: apps.patch_namespaced_replica_set(tenant["replica_set"], tenant["ns"], move)
    )
    modelseal_refusal(exc)
    plain = ordinary_replica_set(tenant)
    apps.patch_namespaced_replica_set(plain, tenant["ns"], {"spec": {"replicas": 0}})


def test_orphaning_delete_of_the_models_replicaset_is_refused(tenant: dict[str, Any]) -> None:
    """`kubectl delete rs --cascade=orphan`: the pods would keep serving, unowned."""
    apps = k8s.AppsV1Api(tenant["mallory"])
    exc = refused(
        lambda: apps.delete_namespaced_replica_set(
            tenant["replica_set"], tenant["ns"], propagation_policy="Orphan"
        )
    )
    modelseal_refusal(exc, "delete")
    assert apps.read_namespaced_replica_set(tenant["replica_set"], tenant["ns"])
    plain = ordinary_replica_set(tenant)
    apps.delete_namespaced_replica_set(plain, tenant["ns"], propagation_policy="Orphan")


# --------------------------------------------------------------------------- C2: borrowing


def _planted_deployment(
    cluster: KubeCluster, tenant: dict[str, Any], name: str, service_account: str
) -> str:
    """A Deployment as if planted while the guards were away (an uninstall gap): created
    by the break-glass group, which passes every guard. Returns its ReplicaSet's name."""
    planter = client_as(cluster, "planter", BREAK_GLASS)
    body = workload_body("Deployment", name, service_account)
    k8s.AppsV1Api(planter).create_namespaced_deployment(tenant["ns"], body)
    apps = k8s.AppsV1Api(tenant["mallory"])
    sets = wait_for(
        lambda: apps.list_namespaced_replica_set(tenant["ns"], label_selector=f"app={name}").items,
        f"the Deployment controller's ReplicaSet for {name}",
    )
    return str(sets[0].metadata.name)


def _remove(cluster: KubeCluster, tenant: dict[str, Any], name: str) -> None:
    planter = client_as(cluster, "planter", BREAK_GLASS)
    k8s.AppsV1Api(planter).delete_namespaced_deployment(name, tenant["ns"])


@pytest.mark.parametrize("name", ["squat", f"{MODEL}-v2"], ids=["foreign", "look-alike"])
def test_planted_deployment_with_the_model_sa_gets_no_pod(
    cluster: KubeCluster, tenant: dict[str, Any], name: str
) -> None:
    """C2: the ReplicaSet controller creates pods for any ReplicaSet; the guard lets it run
    one as the model's ServiceAccount only for the model's own (<model>-<hash>). The
    look-alike `digits-v2` would have made pods named like the model's."""
    replica_set = _planted_deployment(cluster, tenant, name, tenant["model_sa"])
    try:
        message = failed_create_message(tenant["mallory"], tenant["ns"], replica_set)
        assert "Modelseal: " in message and f"protected model {MODEL}" in message, message
        assert f"ReplicaSet {replica_set}" in message and BREAK_GLASS in message, message
        core = k8s.CoreV1Api(tenant["mallory"])
        assert core.list_namespaced_pod(tenant["ns"], label_selector=f"app={name}").items == []
    finally:
        _remove(cluster, tenant, name)
    # Control: the model's own pod, made by the same controllers, runs as that account.
    assert model_pod(tenant).spec.service_account_name == tenant["model_sa"]


def test_pod_impersonating_the_model_behind_its_service_is_refused(
    tenant: dict[str, Any],
) -> None:
    """A pod with the model's labels (own ServiceAccount, own image) would receive the
    tenants' requests, API keys included, through the model's Service."""
    core = k8s.CoreV1Api(tenant["mallory"])
    body = pod_body(f"imposter-{uuid.uuid4().hex[:4]}")
    body["metadata"]["labels"] = dict(MODEL_POD_LABELS)
    modelseal_refusal(
        refused(lambda: core.create_namespaced_pod(tenant["ns"], body)), "model label"
    )
    body["metadata"]["labels"] = {**MODEL_POD_LABELS, "modelseal.io/model": "another-model"}
    core.create_namespaced_pod(tenant["ns"], body)


def test_replicaset_named_like_the_models_with_its_labels_is_refused(
    cluster: KubeCluster, tenant: dict[str, Any]
) -> None:
    """A ReplicaSet `<model>-<x>` whose pods carry the model's labels and
    pod-template-hash=<x> (its own ServiceAccount): its pods would pass for the model's own
    ReplicaSet's and join the model's Service."""
    apps = k8s.AppsV1Api(tenant["mallory"])
    name = f"{MODEL}-b5x7q"
    body = workload_body("ReplicaSet", name, "default")
    labels = {**MODEL_POD_LABELS, "pod-template-hash": "b5x7q"}
    body["spec"]["selector"] = {"matchLabels": labels}
    body["spec"]["template"]["metadata"]["labels"] = labels
    modelseal_refusal(
        refused(lambda: apps.create_namespaced_replica_set(tenant["ns"], body)), "model label"
    )
    core = k8s.CoreV1Api(tenant["mallory"])
    selector = ",".join(f"{k}={v}" for k, v in labels.items())
    assert core.list_namespaced_pod(tenant["ns"], label_selector=selector).items == []
    # Control: the same ReplicaSet without the model's labels (removed by the break-glass
    # group: a name like the model's ReplicaSets' is guarded against deletion).
    plain = {"app": "plain", "pod-template-hash": "b5x7q"}
    body["spec"]["replicas"] = 0
    body["spec"]["selector"] = {"matchLabels": plain}
    body["spec"]["template"]["metadata"]["labels"] = plain
    apps.create_namespaced_replica_set(tenant["ns"], body)
    k8s.AppsV1Api(client_as(cluster, "oncall", BREAK_GLASS)).delete_namespaced_replica_set(
        name, tenant["ns"]
    )


def test_relabelling_a_pod_into_the_models_service_is_refused(tenant: dict[str, Any]) -> None:
    """The same impersonation by UPDATE: mallory's running pod takes the model's labels."""
    core = k8s.CoreV1Api(tenant["mallory"])
    plain = ordinary_pod(tenant)
    join = {"metadata": {"labels": dict(MODEL_POD_LABELS)}}
    modelseal_refusal(
        refused(lambda: core.patch_namespaced_pod(plain, tenant["ns"], join)), "its labels"
    )
    assert not (core.read_namespaced_pod(plain, tenant["ns"]).metadata.labels or {})
    core.patch_namespaced_pod(plain, tenant["ns"], {"metadata": {"labels": {"app": "web"}}})


def test_deployment_impersonating_the_model_is_refused(tenant: dict[str, Any]) -> None:
    """A Deployment of mallory's whose pods carry the model's labels (own ServiceAccount)."""
    apps = k8s.AppsV1Api(tenant["mallory"])
    name = f"imposter-{uuid.uuid4().hex[:4]}"
    body = workload_body("Deployment", name, "default")
    labels = {"app": name, **MODEL_POD_LABELS}
    body["spec"]["selector"] = {"matchLabels": labels}
    body["spec"]["template"]["metadata"]["labels"] = labels
    modelseal_refusal(
        refused(lambda: apps.create_namespaced_deployment(tenant["ns"], body)), "model label"
    )
    core = k8s.CoreV1Api(tenant["mallory"])
    assert core.list_namespaced_pod(tenant["ns"], label_selector=f"app={name}").items == []
    labels["modelseal.io/model"] = "another-model"
    apps.create_namespaced_deployment(tenant["ns"], body)
    apps.delete_namespaced_deployment(name, tenant["ns"])


# --------------------------------------------------------------------------- Low 13


def test_edit_of_the_models_control_secret_is_refused(admin: Any, tenant: dict[str, Any]) -> None:
    """The Triton control token the operator owns (<model>-triton-control). Made here by the
    admin: with the chart's defaults the operator has no Secret rights in this namespace."""
    name = f"{MODEL}-triton-control"
    k8s.CoreV1Api(admin).create_namespaced_secret(
        tenant["ns"],
        {
            "metadata": {"name": name, "ownerReferences": [tenant["owner"]]},
            "stringData": {"token": "operator-made"},
        },
    )
    core = k8s.CoreV1Api(tenant["mallory"])
    swap = {"stringData": {"token": "mallory-made"}}
    modelseal_refusal(
        refused(lambda: core.patch_namespaced_secret(name, tenant["ns"], swap)), "Secret"
    )
    modelseal_refusal(refused(lambda: core.delete_namespaced_secret(name, tenant["ns"])), "delete")
    own = f"own-{uuid.uuid4().hex[:6]}"
    core.create_namespaced_secret(
        tenant["ns"], {"metadata": {"name": own}, "stringData": {"a": "1"}}
    )
    core.patch_namespaced_secret(own, tenant["ns"], swap)
    core.delete_namespaced_secret(own, tenant["ns"])


def test_autoscaler_scaling_the_model_is_refused(tenant: dict[str, Any]) -> None:
    """A HorizontalPodAutoscaler of mallory's with minReplicas above the seats: the HPA
    controller (its own identity, not the Deployment controller) would scale the model's
    Deployment or ReplicaSet up; both scale requests are refused, so the replicas stay."""
    auto = k8s.AutoscalingV2Api(tenant["mallory"])
    apps = k8s.AppsV1Api(tenant["mallory"])

    def hpa(name: str, kind: str, target: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": kind, "name": target},
                "minReplicas": 4,
                "maxReplicas": 5,
            },
        }

    plain = ordinary_replica_set(tenant)
    apps.patch_namespaced_replica_set_scale(plain, tenant["ns"], {"spec": {"replicas": 1}})
    autoscalers = (
        ("model-deployment", "Deployment", MODEL),
        ("model-replicaset", "ReplicaSet", tenant["replica_set"]),
        ("plain", "ReplicaSet", plain),
    )
    for name, kind, target in autoscalers:
        auto.create_namespaced_horizontal_pod_autoscaler(tenant["ns"], hpa(name, kind, target))
    try:
        _autoscalers_refused_but_the_plain_one(tenant, plain)
    finally:
        for name, _, _ in autoscalers:
            auto.delete_namespaced_horizontal_pod_autoscaler(name, tenant["ns"])


def _autoscalers_refused_but_the_plain_one(tenant: dict[str, Any], plain: str) -> None:
    apps = k8s.AppsV1Api(tenant["mallory"])
    for name in ("model-deployment", "model-replicaset"):
        message = wait_for(
            lambda name=name: [
                e.message
                for e in k8s.CoreV1Api(tenant["mallory"])
                .list_namespaced_event(tenant["ns"], field_selector=f"involvedObject.name={name}")
                .items
                if e.reason == "FailedRescale"
            ],
            f"the HPA controller's FailedRescale event for {name}",
            timeout=90,
        )[0]
        assert "Modelseal: " in message and f"protected model {MODEL}" in message, message
    # Control: the same autoscaler on an ordinary ReplicaSet scales it.
    wait_for(
        lambda: apps.read_namespaced_replica_set(plain, tenant["ns"]).spec.replicas == 4,
        "the HPA to scale the ordinary ReplicaSet",
        timeout=90,
    )
    assert apps.read_namespaced_deployment(MODEL, tenant["ns"]).spec.replicas == 1
    assert apps.read_namespaced_replica_set(tenant["replica_set"], tenant["ns"]).spec.replicas == 1
