"""The control plane's floor for ``make bench-operator``: the same workloads without the
operator.

For each of ``count`` models the bench renders what the operator would apply for it
(``modelseal.render.model.render_model``: its ServiceAccount, ConfigMap, Service,
NetworkPolicy and Deployment, granted, owner references dropped since no model owns them
here) and creates those objects itself, in namespaces of its own, 16 requests at a time,
straight after each other, and follows the Deployments with one watch. ``floor_s`` is
the time from the first create until every Deployment has its Pod Ready: what the test
cluster's own parts (API server, etcd, controller manager, scheduler, kwok) take for the
rollout's workloads when the operator costs nothing: no Vault, no status, no Events, no
reads. The operator's ``operator_ready_s`` can come near it, never below it.

The floor's namespaces are deleted again, and gone, before the operator's phases begin,
so they find the cluster as they would without it.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from modelseal.config import Settings
from modelseal.models.license_spec import parse_license
from modelseal.models.spec import parse_model
from modelseal.render.model import render_model
from modelseal_devenv.common import wait_until

#: Where each kind the operator renders is created (namespace filled in).
COLLECTIONS = {
    "ServiceAccount": "/api/v1/namespaces/{}/serviceaccounts",
    "ConfigMap": "/api/v1/namespaces/{}/configmaps",
    "Service": "/api/v1/namespaces/{}/services",
    "NetworkPolicy": "/apis/networking.k8s.io/v1/namespaces/{}/networkpolicies",
    "Deployment": "/apis/apps/v1/namespaces/{}/deployments",
}
CLIENTS = 16


@dataclass
class FloorResult:
    models: int
    objects: int
    created_s: float  # the last create answered
    ready_s: float  # every Deployment's Pod Ready
    deleted_s: float  # the floor's namespaces gone again


def rendered_objects(
    model_body: dict[str, Any], license_body: dict[str, Any], settings: Settings
) -> list[dict[str, Any]]:
    """What the operator applies for a granted model, with no owner (none exists here)."""
    for body in (model_body, license_body):
        meta = body["metadata"]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("generation", 1)
    rendered = render_model(parse_model(model_body), parse_license(license_body), True, settings)
    objects = rendered.objects()
    for obj in objects:
        obj["metadata"].pop("ownerReferences", None)
    return objects


def _request(api: Any, method: str, path: str, body: Any = None, **query: str) -> Any:
    """One request through the bench's client; the response, unread (a watch streams)."""
    return api.call_api(
        path,
        method,
        query_params=list(query.items()),
        body=body,
        header_params={"Accept": "application/json", "Content-Type": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )


def _call(api: Any, method: str, path: str, body: Any = None, **query: str) -> Any:
    """One request; its decoded answer."""
    resp = _request(api, method, path, body, **query)
    return json.loads(resp.data) if resp.data else None


class ReadyWatch:
    """One watch of every Deployment: when each of the floor's had its Pods Ready."""

    def __init__(self, api: Any, prefix: str, expected: int) -> None:
        self.api = api
        self.prefix = prefix
        self.expected = expected
        self.ready: dict[tuple[str, str], float] = {}
        self.done = threading.Event()
        self.error: BaseException | None = None
        listing = _call(api, "GET", "/apis/apps/v1/deployments", limit="1")
        self.version = str(listing["metadata"]["resourceVersion"])
        self.thread = threading.Thread(target=self._run, name="floor-watch", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.done.is_set():
                self._follow()
        except BaseException as exc:  # handed to the waiting thread
            self.error = exc
            self.done.set()

    def _follow(self) -> None:
        resp = _request(
            self.api,
            "GET",
            "/apis/apps/v1/deployments",
            watch="true",
            resourceVersion=self.version,
            timeoutSeconds="300",
        )
        try:
            for line in resp:
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise RuntimeError(f"deployment watch: {obj.get('message')}")
                meta = obj.get("metadata") or {}
                self.version = str(meta.get("resourceVersion") or self.version)
                ns = str(meta.get("namespace") or "")
                if not ns.startswith(self.prefix):
                    continue
                want = int((obj.get("spec") or {}).get("replicas") or 0)
                have = int((obj.get("status") or {}).get("readyReplicas") or 0)
                if want and have >= want:
                    self.ready.setdefault((ns, str(meta.get("name"))), time.time())
                    if len(self.ready) >= self.expected:
                        self.done.set()
                        return
        finally:
            resp.release_conn()

    def wait(self, timeout: float, report: Callable[[str], None]) -> None:
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while not self.done.wait(3.0):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"floor: only {len(self.ready)}/{self.expected} Deployments Ready "
                    f"after {timeout:.0f}s"
                )
            if time.monotonic() - last > 30:
                last = time.monotonic()
                report(f"  floor: {len(self.ready)}/{self.expected} Deployments Ready")
        if self.error is not None:
            raise self.error


def run_floor(
    api: Any,
    models: list[tuple[dict[str, Any], dict[str, Any]]],
    settings: Settings,
    timeout: float,
    report: Callable[[str], None],
) -> FloorResult:
    """Create what the operator would for `models` ((model, license) CR bodies, each in a
    namespace whose name starts with ``floor-``), wait until every Deployment is Ready,
    then delete the namespaces and wait until they are gone."""
    namespaces = sorted({m["metadata"]["namespace"] for m, _ in models})
    if not all(ns.startswith("floor-") for ns in namespaces):
        raise ValueError("the floor's namespaces must start with floor-")
    work = [rendered_objects(m, lic, settings) for m, lic in models]
    for ns in namespaces:
        _call(api, "POST", "/api/v1/namespaces", {"metadata": {"name": ns}})
    watch = ReadyWatch(api, "floor-", len(models))

    def create(objects: list[dict[str, Any]]) -> None:
        for obj in objects:
            ns = obj["metadata"]["namespace"]
            _call(api, "POST", COLLECTIONS[obj["kind"]].format(ns), obj)

    t0 = time.time()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        list(pool.map(create, work))
    created_s = time.time() - t0
    watch.wait(timeout, report)
    ready_s = max(watch.ready.values()) - t0

    t1 = time.time()
    for ns in namespaces:
        _call(api, "DELETE", f"/api/v1/namespaces/{ns}")

    def gone() -> bool:
        listed = _call(api, "GET", "/api/v1/namespaces")
        return not any(i["metadata"]["name"] in namespaces for i in listed.get("items") or [])

    wait_until(gone, "the floor's namespaces deleted", timeout, interval=2.0)
    return FloorResult(
        models=len(models),
        objects=sum(len(w) for w in work),
        created_s=created_s,
        ready_s=ready_s,
        deleted_s=time.time() - t1,
    )
