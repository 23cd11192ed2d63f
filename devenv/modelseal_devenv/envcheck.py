"""`make env-check`: start every real test server, prove each works with a real request, stop.

Last line: `env-check: ok kube=<v> etcd=<v> vault=<v> triton=<v> redis=<v> s3=<v>
kubelet=<v> containerd=<v>` (one line).
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from modelseal_devenv.common import wait_until
from modelseal_devenv.kube import KubeCluster
from modelseal_devenv.models import build_digits_model, sample_digits
from modelseal_devenv.node import HOST_ADDRESS, PAUSE_IMAGE, RealNode
from modelseal_devenv.redis import RedisServer
from modelseal_devenv.s3 import S3Server
from modelseal_devenv.triton import TritonServer
from modelseal_devenv.vault import VaultServer, create_token_reviewer, request_sa_token


def _step(name: str, action: Callable[[], str]) -> None:
    started = time.monotonic()
    print(f"env-check: {name} ...", flush=True)
    detail = action()
    print(f"env-check: {name}: ok ({time.monotonic() - started:.1f}s) {detail}", flush=True)


@contextlib.contextmanager
def _tmpfs_dir() -> Iterator[Path]:
    """A fresh folder on a memory-backed filesystem (/dev/shm), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="modelseal-envcheck-", dir="/dev/shm"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def check_kube(kube: KubeCluster) -> str:
    """A namespace, a CRD with an object, and a GPU Deployment whose Pods run on kwok nodes."""
    from kubernetes import client

    api = kube.api_client()
    core = client.CoreV1Api(api)
    ns = f"envcheck-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))

    group = "envcheck.modelseal.io"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer"}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    client.ApiextensionsV1Api(api).create_custom_resource_definition(crd)
    custom = client.CustomObjectsApi(api)

    def widget_created() -> bool:
        custom.create_namespaced_custom_object(
            group,
            "v1",
            ns,
            "widgets",
            {
                "apiVersion": f"{group}/v1",
                "kind": "Widget",
                "metadata": {"name": "one"},
                "spec": {"size": 1},
            },
        )
        return True

    wait_until(widget_created, "CRD established and an object created", timeout=30)

    labels = {"app": "envcheck-gpu"}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "gpu", "namespace": ns},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "main",
                            "image": "example.invalid/gpu:1",
                            "resources": {"limits": {"nvidia.com/gpu": "1"}},
                        }
                    ]
                },
            },
        },
    }
    client.AppsV1Api(api).create_namespaced_deployment(ns, deployment)
    gpu_nodes = {
        n.metadata.name
        for n in core.list_node().items
        if int((n.status.allocatable or {}).get("nvidia.com/gpu", "0")) > 0
    }

    def pods_running() -> bool:
        pods = core.list_namespaced_pod(ns, label_selector="app=envcheck-gpu").items
        return len(pods) == 2 and all(
            p.status.phase == "Running" and p.spec.node_name in gpu_nodes for p in pods
        )

    wait_until(pods_running, "2 GPU Pods Running on kwok nodes", timeout=90)
    core.delete_namespace(ns)
    client.ApiextensionsV1Api(api).delete_custom_resource_definition(f"widgets.{group}")
    return f"pods Running on GPU nodes {sorted(gpu_nodes)}"


def check_vault(vault: VaultServer, kube: KubeCluster) -> str:
    """Transit datakey round trip, and a Kubernetes-auth login with a real SA token."""
    from kubernetes import client

    key = vault.create_transit_key()
    admin = vault.client()
    made = admin.secrets.transit.generate_data_key(name=key, key_type="plaintext")["data"]
    back = admin.secrets.transit.decrypt_data(name=key, ciphertext=made["ciphertext"])["data"]
    if base64.b64decode(back["plaintext"]) != base64.b64decode(made["plaintext"]):
        raise AssertionError("Transit decrypt did not return the data key it generated")

    api = kube.api_client()
    core = client.CoreV1Api(api)
    ns = f"envcheck-vault-{uuid.uuid4().hex[:6]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    core.create_namespaced_service_account(
        ns, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="model"))
    )
    # Vault reviews logins with a dedicated reviewer SA, so the model SA needs no extra rights.
    vault.configure_kubernetes_auth(kube.server, kube.ca_pem, create_token_reviewer(api))
    vault.write_policy(
        f"{ns}-decrypt", f'path "transit/decrypt/{key}" {{ capabilities = ["update"] }}'
    )
    vault.create_kubernetes_role(
        ns, service_account="model", namespace=ns, policies=[f"{ns}-decrypt"], audience="vault"
    )
    jwt = request_sa_token(api, ns, "model", ["vault"], expiration_seconds=600)
    login: dict[str, Any] = vault.client(token="").auth.kubernetes.login(role=ns, jwt=jwt)
    if (
        "default" not in login["auth"]["policies"]
        and f"{ns}-decrypt" not in login["auth"]["policies"]
    ):
        raise AssertionError("Kubernetes-auth login did not grant the role's policy")
    core.delete_namespace(ns)
    return "transit datakey round trip; kubernetes-auth login with a TokenRequest token"


def check_triton(triton: TritonServer) -> str:
    """The digits model, loaded from tmpfs, classifies real held-out digits."""
    import numpy as np
    import tritonclient.http as httpclient

    images, labels = sample_digits(20)
    client = httpclient.InferenceServerClient(triton.http_address)
    try:
        tensor = httpclient.InferInput("INPUT", list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        result = client.infer("digits", [tensor])
        predicted = np.argmax(result.as_numpy("PROBABILITIES"), axis=1)
    finally:
        client.close()
    accuracy = float((predicted == labels).mean())
    if accuracy < 0.9:
        raise AssertionError(f"digits accuracy {accuracy:.2f} < 0.9")
    return f"digits accuracy {accuracy:.2f} on 20 held-out images"


def check_redis(redis: RedisServer) -> str:
    if not redis.ping():
        raise AssertionError("redis PING failed")
    return "PING"


def check_s3(s3: S3Server) -> str:
    import boto3

    bucket = f"envcheck-{uuid.uuid4().hex[:6]}"
    s3.create_bucket(bucket)
    s3_client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint_url,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name=s3.region,
    )
    body = uuid.uuid4().bytes * 1000
    s3_client.put_object(Bucket=bucket, Key="probe", Body=body)
    if s3_client.get_object(Bucket=bucket, Key="probe")["Body"].read() != body:
        raise AssertionError("S3 get returned other bytes than were put")
    return "put/get 16000 bytes"


def check_node(kube: KubeCluster, node: RealNode) -> str:
    """A real Pod on the real node: pulled from the node's registry, started by the kubelet
    through containerd and runc, with an address on the pod bridge."""
    assert node.registry is not None
    image = f"{node.registry.host}/{PAUSE_IMAGE}"
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "envcheck-real", "namespace": "default"},
        "spec": {"containers": [{"name": "pause", "image": image}]},
    }  # fmt: skip
    kube.kubectl("apply", "-f", "-", stdin=json.dumps(pod))
    kube.kubectl(
        "wait", "--for=condition=Ready", "pod/envcheck-real", "--timeout=120s", timeout=130
    )
    status = json.loads(kube.kubectl("get", "pod", "envcheck-real", "-o", "json"))["status"]
    if not status.get("podIP", "").startswith("10.88."):
        raise AssertionError(f"pod address {status.get('podIP')!r} is not on the pod bridge")
    return (
        f"kubelet {node.kubelet_version}, containerd {node.containerd_version}: pod Running "
        f"at {status['podIP']}"
    )


def main() -> int:
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        kube = stack.enter_context(KubeCluster())
        _step("kubernetes", lambda: check_kube(kube))
        vault = stack.enter_context(VaultServer())
        _step("vault", lambda: check_vault(vault, kube))
        repo = stack.enter_context(_tmpfs_dir())
        build_digits_model(repo)
        triton = stack.enter_context(TritonServer(repo))
        _step("triton", lambda: check_triton(triton))
        redis = stack.enter_context(RedisServer())
        _step("redis", lambda: check_redis(redis))
        s3 = stack.enter_context(S3Server())
        _step("s3", lambda: check_s3(s3))
        # The real node joins a control plane of its own (the API server must listen where
        # pods reach it, see modelseal_devenv.node).
        node_kube = stack.enter_context(KubeCluster(nodes=0, advertise_address=HOST_ADDRESS))
        node = stack.enter_context(RealNode(node_kube))
        _step("node", lambda: check_node(node_kube, node))
        versions = (
            f"kube={kube.version} etcd={kube.etcd_version} vault={vault.version} "
            f"triton={triton.version} redis={redis.version} s3=versitygw-{s3.version} "
            f"kubelet={node.kubelet_version} containerd={node.containerd_version}"
        )
    print(f"env-check: all servers stopped after {time.monotonic() - started:.0f}s")
    print(f"env-check: ok {versions}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
