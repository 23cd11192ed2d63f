"""Smoke tests of the Kubernetes test control plane (modelseal_devenv.kube)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from tests.waiting import wait_for as poll

from modelseal_devenv.kube import GPU_RESOURCE, KWOK_NODE_ANNOTATION, KubeCluster

pytestmark = pytest.mark.integration


wait_for = poll


def test_versions_and_kubectl(kube_cluster: KubeCluster) -> None:
    assert kube_cluster.version == "v1.34.4"
    assert kube_cluster.etcd_version.startswith("3.6.")
    out = kube_cluster.kubectl("version", "-o", "json")
    assert '"gitVersion": "v1.34.4"' in out
    assert kube_cluster.server.startswith("https://127.0.0.1:")


def test_gpu_nodes_are_ready(kube_api: Any) -> None:
    nodes = k8s.CoreV1Api(kube_api).list_node(label_selector="type=kwok").items
    assert len(nodes) == 2
    for node in nodes:
        assert node.metadata.annotations[KWOK_NODE_ANNOTATION] == "fake"
        assert node.metadata.labels["nvidia.com/gpu.present"] == "true"
        assert node.status.allocatable[GPU_RESOURCE] == "4"
        ready = [c for c in node.status.conditions if c.type == "Ready"]
        assert ready and ready[0].status == "True"


def test_namespace_crd_and_custom_object(kube_api: Any, kube_namespace: str) -> None:
    core = k8s.CoreV1Api(kube_api)
    # kube-controller-manager publishes the cluster CA into every namespace.
    wait_for(
        lambda: (
            core.list_namespaced_config_map(
                kube_namespace, field_selector="metadata.name=kube-root-ca.crt"
            ).items
        ),
        "kube-root-ca.crt",
    )

    ext = k8s.ApiextensionsV1Api(kube_api)
    group, plural = "envtest.modelseal.io", f"widgets{uuid.uuid4().hex[:6]}"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": "Widget"},
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["replicas"],
                                    "properties": {"replicas": {"type": "integer"}},
                                    "x-kubernetes-validations": [
                                        {
                                            "rule": "self.replicas <= 8",
                                            "message": "at most 8 replicas",
                                        }
                                    ],
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    ext.create_custom_resource_definition(crd)
    try:

        def established() -> bool:
            got = ext.read_custom_resource_definition(f"{plural}.{group}")
            conditions = got.status.conditions or []
            return any(c.type == "Established" and c.status == "True" for c in conditions)

        wait_for(established, "CRD Established")
        objects = k8s.CustomObjectsApi(kube_api)
        body = {
            "apiVersion": f"{group}/v1alpha1",
            "kind": "Widget",
            "metadata": {"name": "w1"},
            "spec": {"replicas": 2},
        }
        wait_for(
            lambda: _create_ok(
                lambda: objects.create_namespaced_custom_object(
                    group, "v1alpha1", kube_namespace, plural, body
                )
            ),
            "custom object created",
            timeout=30,
        )
        got = objects.get_namespaced_custom_object(group, "v1alpha1", kube_namespace, plural, "w1")
        assert got["spec"] == {"replicas": 2}

        # The CEL rule in the schema is enforced by the API server.
        bad = dict(body, metadata={"name": "w2"}, spec={"replicas": 9})
        with pytest.raises(ApiException) as err:
            objects.create_namespaced_custom_object(group, "v1alpha1", kube_namespace, plural, bad)
        assert err.value.status == 422
        assert "at most 8 replicas" in str(err.value.body)
    finally:
        ext.delete_custom_resource_definition(f"{plural}.{group}")


def _create_ok(create: Callable[[], Any]) -> bool:
    try:
        create()
    except ApiException as exc:
        if exc.status == 404:  # CRD discovery not caught up yet
            return False
        raise
    return True


def test_gpu_deployment_runs_on_kwok_nodes(kube_api: Any, kube_namespace: str) -> None:
    core, apps = k8s.CoreV1Api(kube_api), k8s.AppsV1Api(kube_api)
    wait_for(
        lambda: (
            core.list_namespaced_service_account(
                kube_namespace, field_selector="metadata.name=default"
            ).items
        ),
        "default ServiceAccount",
    )
    labels = {"app": "gpu-smoke"}
    container = k8s.V1Container(
        name="main",
        image="example.invalid/triton:never-pulled",
        resources=k8s.V1ResourceRequirements(
            requests={"cpu": "100m", "memory": "64Mi", GPU_RESOURCE: "1"},
            limits={GPU_RESOURCE: "1"},
        ),
    )
    pod_spec = k8s.V1PodSpec(
        containers=[container],
        node_selector={"nvidia.com/gpu.present": "true"},
        tolerations=[
            k8s.V1Toleration(key=KWOK_NODE_ANNOTATION, operator="Exists", effect="NoSchedule")
        ],
    )
    deployment = k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name="gpu-smoke"),
        spec=k8s.V1DeploymentSpec(
            replicas=3,
            selector=k8s.V1LabelSelector(match_labels=labels),
            template=k8s.V1PodTemplateSpec(metadata=k8s.V1ObjectMeta(labels=labels), spec=pod_spec),
        ),
    )
    apps.create_namespaced_deployment(kube_namespace, deployment)

    def running_pods() -> list[Any]:
        pods = core.list_namespaced_pod(kube_namespace, label_selector="app=gpu-smoke").items
        running = [p for p in pods if p.status.phase == "Running"]
        return running if len(running) == 3 else []

    pods = wait_for(running_pods, "3 Running pods", timeout=90)
    for pod in pods:
        assert pod.spec.node_name.startswith("kwok-gpu-")
        assert pod.status.pod_ip

    def available() -> bool:
        status = apps.read_namespaced_deployment("gpu-smoke", kube_namespace).status
        return status.available_replicas == 3

    wait_for(available, "Deployment available", timeout=90)

    # GPUs are counted: a pod asking for more than a node has stays Pending, unschedulable.
    greedy = k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(name="too-many-gpus"),
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(
                    name="main",
                    image="example.invalid/x:y",
                    resources=k8s.V1ResourceRequirements(limits={GPU_RESOURCE: "5"}),
                )
            ]
        ),
    )
    core.create_namespaced_pod(kube_namespace, greedy)

    def unschedulable() -> bool:
        pod = core.read_namespaced_pod("too-many-gpus", kube_namespace)
        conditions = pod.status.conditions or []
        return any(c.type == "PodScheduled" and c.reason == "Unschedulable" for c in conditions)

    wait_for(unschedulable, "PodScheduled=False/Unschedulable", timeout=60)


def test_token_request_and_token_review(
    kube_cluster: KubeCluster, kube_api: Any, kube_namespace: str
) -> None:
    """What Vault's Kubernetes auth does: a reviewer (system:auth-delegator) reviews a
    TokenRequest token of another ServiceAccount."""
    core, rbac = k8s.CoreV1Api(kube_api), k8s.RbacAuthorizationV1Api(kube_api)
    for name in ("model-sa", "reviewer"):
        core.create_namespaced_service_account(
            kube_namespace, k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=name))
        )
    binding = f"{kube_namespace}-reviewer"
    rbac.create_cluster_role_binding(
        k8s.V1ClusterRoleBinding(
            metadata=k8s.V1ObjectMeta(name=binding),
            role_ref=k8s.V1RoleRef(
                api_group="rbac.authorization.k8s.io",
                kind="ClusterRole",
                name="system:auth-delegator",
            ),
            subjects=[
                k8s.RbacV1Subject(kind="ServiceAccount", name="reviewer", namespace=kube_namespace)
            ],
        )
    )
    try:

        def token(sa: str, audiences: list[str]) -> str:
            request = k8s.AuthenticationV1TokenRequest(
                spec=k8s.V1TokenRequestSpec(audiences=audiences, expiration_seconds=600)
            )
            result = core.create_namespaced_service_account_token(sa, kube_namespace, request)
            return str(result.status.token)

        model_jwt = token("model-sa", ["vault"])
        reviewer_jwt = token("reviewer", [])

        config = k8s.Configuration()
        config.host = kube_cluster.server
        config.ssl_ca_cert = str(kube_cluster.ca_file)
        # The full header value, no api_key_prefix: kubernetes>=36 looks prefixes up under
        # "BearerToken" only, so {"authorization": "Bearer"} would send a bare token.
        config.api_key = {"authorization": f"Bearer {reviewer_jwt}"}
        with k8s.ApiClient(config) as reviewer_api:
            auth = k8s.AuthenticationV1Api(reviewer_api)

            def review(jwt: str, audiences: list[str]) -> Any:
                return auth.create_token_review(
                    k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=jwt, audiences=audiences))
                ).status

            status = review(model_jwt, ["vault"])
            assert status.authenticated is True
            assert status.user.username == f"system:serviceaccount:{kube_namespace}:model-sa"
            assert status.audiences == ["vault"]

            assert not review(model_jwt, ["someone-else"]).authenticated
            assert not review(model_jwt[:-4] + "AAAA", ["vault"]).authenticated
    finally:
        rbac.delete_cluster_role_binding(binding)


def test_validating_admission_policy(kube_api: Any, kube_namespace: str) -> None:
    """ValidatingAdmissionPolicy (GA) is on: the chart's exec/attach guards rely on it."""
    adm = k8s.AdmissionregistrationV1Api(kube_api)
    name = f"deny-forbidden-{kube_namespace}"
    adm.create_validating_admission_policy(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["configmaps"],
                        }
                    ]
                },
                "validations": [
                    {
                        "expression": "!has(object.metadata.labels) || "
                        "!('forbidden' in object.metadata.labels)",
                        "message": "forbidden label",
                    }
                ],
            },
        }
    )
    adm.create_validating_admission_policy_binding(
        {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": kube_namespace}
                    }
                },
            },
        }
    )
    core = k8s.CoreV1Api(kube_api)
    try:

        def denied() -> bool:
            cm = k8s.V1ConfigMap(
                metadata=k8s.V1ObjectMeta(generate_name="cm-", labels={"forbidden": "yes"})
            )
            try:
                created = core.create_namespaced_config_map(kube_namespace, cm)
            except ApiException as exc:
                assert exc.status == 422 or exc.status == 403, exc
                assert "forbidden label" in str(exc.body)
                return True
            core.delete_namespaced_config_map(created.metadata.name, kube_namespace)
            return False  # the policy is not active yet

        wait_for(denied, "the policy to deny", timeout=30)
        core.create_namespaced_config_map(
            kube_namespace, k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="allowed"))
        )
    finally:
        adm.delete_validating_admission_policy_binding(name)
        adm.delete_validating_admission_policy(name)
