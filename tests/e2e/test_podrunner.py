"""The pod runner (our local "kubelet") against the real test API server.

A Pod with a regular init container, a native sidecar with a startup probe and a main
container with a readiness probe is created through the API server; the runner must run
it with the same command, env (literal, ConfigMap, Secret, fieldRef) and volumes (a
ConfigMap, an emptyDir on tmpfs, a projected ServiceAccount token that the API server's
TokenReview accepts), restart a crashed container, follow ConfigMap changes, and stop
everything when the Pod is deleted or its Deployment scaled to zero.
"""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.waiting import wait_for as poll

from modelseal_devenv.podrunner import PodRunner

pytestmark = pytest.mark.e2e

AUDIENCE = "podrunner-test"

SIDECAR = r"""
import http.server, os, pathlib
flag = pathlib.Path(os.environ["WORK"]) / "init-done"
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = flag.exists()
        self.send_response(200 if ok else 503)
        self.end_headers()
        self.wfile.write(b"side-ok" if ok else b"no")
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["SIDE_PORT"])), H).serve_forever()
"""

MAIN = r"""
import http.server, json, os, pathlib, sys, urllib.request
def report():
    side = urllib.request.urlopen(os.environ["SIDE_URL"] + "/healthz", timeout=2).read()
    return {
        "argv": sys.argv[1:],
        "greeting_env": os.environ["GREETING"],
        "greeting_file": pathlib.Path("/etc/cfg/greeting").read_text(),
        "password": os.environ["PASSWORD"],
        "pod_name": os.environ["POD_NAME"],
        "pod_ns": os.environ["POD_NAMESPACE"],
        "expanded": os.environ["EXPANDED"],
        "token": pathlib.Path("/var/run/secrets/tok/token").read_text(),
        "init_done": (pathlib.Path("/work") / "init-done").exists(),
        "side": side.decode(),
        "pid": os.getpid(),
    }
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps(report()).encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", int(os.environ["MAIN_PORT"])), H).serve_forever()
"""


def _get(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback
        return json.loads(resp.read())


def _eventually(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    poll(check, what, timeout, interval=0.3, tolerate=(Exception,))


def _pod_spec() -> dict[str, Any]:
    py = "python"
    return {
        "serviceAccountName": "runner-sa",
        "terminationGracePeriodSeconds": 5,
        "volumes": [
            {"name": "cfg", "configMap": {"name": "cfg"}},
            {"name": "work", "emptyDir": {"medium": "Memory"}},
            {
                "name": "tok",
                "projected": {
                    "sources": [
                        {
                            "serviceAccountToken": {
                                "audience": AUDIENCE,
                                "expirationSeconds": 600,
                                "path": "token",
                            }
                        }
                    ]
                },
            },
        ],
        "initContainers": [
            {
                "name": "setup",
                "image": "python:3.11",
                "command": [py, "-c", "import pathlib; pathlib.Path('/work/init-done').touch()"],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}],
            },
            {
                "name": "side",
                "image": "python:3.11",
                "restartPolicy": "Always",
                "command": [py, "-c", SIDECAR],
                "env": [
                    {"name": "WORK", "value": "/work"},
                    {"name": "SIDE_PORT", "value": "9100"},
                ],
                "ports": [{"name": "side", "containerPort": 9100}],
                "startupProbe": {
                    "httpGet": {"path": "/healthz", "port": "side"},
                    "periodSeconds": 1,
                    "failureThreshold": 60,
                },
                "volumeMounts": [{"name": "work", "mountPath": "/work"}],
            },
        ],
        "containers": [
            {
                "name": "main",
                "image": "python:3.11",
                "command": [py, "-c", MAIN],
                "args": ["--data=/work/x", "$(GREETING)"],
                "env": [
                    {
                        "name": "GREETING",
                        "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "greeting"}},
                    },
                    {
                        "name": "PASSWORD",
                        "valueFrom": {"secretKeyRef": {"name": "sec", "key": "password"}},
                    },
                    {
                        "name": "POD_NAME",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                    },
                    {
                        "name": "POD_NAMESPACE",
                        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
                    },
                    {"name": "EXPANDED", "value": "say $(GREETING) $$(GREETING)"},
                    {"name": "SIDE_URL", "value": "http://127.0.0.1:9100"},
                    {"name": "MAIN_PORT", "value": "9200"},
                ],
                "ports": [{"name": "http", "containerPort": 9200}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 9200}, "periodSeconds": 1},
                "volumeMounts": [
                    {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True},
                    {"name": "work", "mountPath": "/work"},
                    {"name": "tok", "mountPath": "/var/run/secrets/tok", "readOnly": True},
                ],
            }
        ],
    }


@pytest.fixture
def pod_objects(kube_api: Any, kube_namespace: str) -> Iterator[str]:
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(kube_api)
    ns = kube_namespace
    core.create_namespaced_service_account(ns, {"metadata": {"name": "runner-sa"}})
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": "cfg"}, "data": {"greeting": "hello"}}
    )
    core.create_namespaced_secret(
        ns, {"metadata": {"name": "sec"}, "stringData": {"password": "s3cret"}}
    )
    yield ns


def _token_review(kube_api: Any, token: str) -> Any:
    from kubernetes import client as k8s

    review = k8s.AuthenticationV1Api(kube_api).create_token_review(
        {"spec": {"token": token, "audiences": [AUDIENCE]}}
    )
    return review.status


def test_pod_runs_with_env_volumes_probes_restart_and_delete(
    kube_api: Any, pod_objects: str, tmp_path: Path
) -> None:
    from kubernetes import client as k8s

    ns = pod_objects
    core = k8s.CoreV1Api(kube_api)
    core.create_namespaced_pod(ns, {"metadata": {"name": "demo"}, "spec": _pod_spec()})

    with PodRunner(kube_api, ns, pod="demo", workdir=tmp_path / "runner") as runner:
        pod = runner.wait_ready(timeout=120)
        report = _get(f"{pod.url(9200)}/")
        work = pod.volume_dir("work")
        assert str(work).startswith("/dev/shm/")
        assert report["argv"] == [f"--data={work}/x", "hello"]
        assert report["greeting_env"] == "hello"
        assert report["greeting_file"] == "hello"
        assert report["password"] == "s3cret"
        assert report["pod_name"] == "demo"
        assert report["pod_ns"] == ns
        assert report["expanded"] == "say hello $(GREETING)"
        assert report["init_done"] is True
        assert report["side"] == "side-ok"
        assert pod.port(9100) != 9100 or pod.port(9200) != 9200  # remapped to free ports

        # the projected token is a real one: bound to the pod, for the SA, with the audience
        status = _token_review(kube_api, report["token"])
        assert status.authenticated, status.error
        assert status.user.username == f"system:serviceaccount:{ns}:runner-sa"
        payload = report["token"].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        assert claims["aud"] == [AUDIENCE]
        assert claims["kubernetes.io"]["pod"]["name"] == "demo"

        # a crashed container is restarted and becomes ready again
        first_pid = report["pid"]
        pod.kill("main")
        _eventually(lambda: _get(f"{pod.url(9200)}/")["pid"] != first_pid, "main restarted", 60)
        assert pod.container("main").restarts == 1
        assert pod.container("side").restarts == 0

        # a ConfigMap change reaches the mounted file (env stays, as in Kubernetes)
        core.patch_namespaced_config_map("cfg", ns, {"data": {"greeting": "bonjour"}})
        _eventually(
            lambda: _get(f"{pod.url(9200)}/")["greeting_file"] == "bonjour", "cm synced", 30
        )

        # deleting the Pod stops every process and wipes the memory volume
        core.delete_namespaced_pod("demo", ns)
        runner.wait_stopped(timeout=60)
        assert not work.exists()
        assert all(not c.running for c in pod.containers.values())

    # once the Pod is gone, its bound token is refused
    _eventually(
        lambda: not _token_review(kube_api, report["token"]).authenticated,
        "bound token refused after the pod is gone",
        60,
    )


def test_deployment_scale_to_zero_and_back(
    kube_api: Any, kube_namespace: str, tmp_path: Path
) -> None:
    from kubernetes import client as k8s

    ns = kube_namespace
    apps = k8s.AppsV1Api(kube_api)
    server = (
        "import http.server, os; http.server.ThreadingHTTPServer(('127.0.0.1',"
        " int(os.environ['PORT'])),"
        " http.server.SimpleHTTPRequestHandler).serve_forever()"
    )
    apps.create_namespaced_deployment(
        ns,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": "web"}},
                "template": {
                    "metadata": {"labels": {"app": "web"}},
                    "spec": {
                        "terminationGracePeriodSeconds": 2,
                        "containers": [
                            {
                                "name": "web",
                                "image": "python:3.11",
                                "command": ["python", "-c", server],
                                "env": [{"name": "PORT", "value": "9300"}],
                                "ports": [{"containerPort": 9300}],
                                "readinessProbe": {
                                    "tcpSocket": {"port": 9300},
                                    "periodSeconds": 1,
                                },
                            }
                        ],
                    },
                },
            },
        },
    )
    with PodRunner(kube_api, ns, deployment="web", workdir=tmp_path / "runner") as runner:
        first = runner.wait_ready(timeout=120)
        with urllib.request.urlopen(first.url(9300), timeout=5) as resp:  # noqa: S310
            assert resp.status == 200
        apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 0}})
        runner.wait_stopped(timeout=60)
        assert first.stopped
        apps.patch_namespaced_deployment_scale("web", ns, {"spec": {"replicas": 1}})
        second = runner.wait_ready(timeout=120, previous=first)
        assert second.name != first.name
