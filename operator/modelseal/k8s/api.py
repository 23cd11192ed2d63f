"""Kubernetes API I/O for the operator: raw JSON in and out, every write counted.

A thin layer over the official client's `ApiClient.call_api` (the typed models would turn
camelCase JSON into snake_case objects and lose fields the drift check needs). Blocking
calls run in a thread so the operator's event loop stays free. Errors surface as
`ApiError` with the HTTP status and the server's message.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from modelseal import fastjson

Json = dict[str, Any]
#: One page of a listing.
Page = list[Json]

WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ApiError(Exception):
    """A Kubernetes API call failed."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


@dataclass(frozen=True)
class Kind:
    """Where a kind lives in the API."""

    kind: str
    group: str  # "" for core
    version: str
    plural: str

    def path(self, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        base = "/api/v1" if not self.group else f"/apis/{self.group}/{self.version}"
        out = f"{base}/namespaces/{quote(namespace)}/{self.plural}"
        if name is not None:
            out += f"/{quote(name)}"
        if sub:
            out += f"/{sub}"
        return out

    def cluster_path(self) -> str:
        base = "/api/v1" if not self.group else f"/apis/{self.group}/{self.version}"
        return f"{base}/{self.plural}"


SERVICE_ACCOUNT = Kind("ServiceAccount", "", "v1", "serviceaccounts")
CONFIG_MAP = Kind("ConfigMap", "", "v1", "configmaps")
SECRET = Kind("Secret", "", "v1", "secrets")
SERVICE = Kind("Service", "", "v1", "services")
POD = Kind("Pod", "", "v1", "pods")
EVENT = Kind("Event", "", "v1", "events")
DEPLOYMENT = Kind("Deployment", "apps", "v1", "deployments")
NETWORK_POLICY = Kind("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies")
# Read only (list): what may run Pods as a model's ServiceAccount.
REPLICA_SET = Kind("ReplicaSet", "apps", "v1", "replicasets")
STATEFUL_SET = Kind("StatefulSet", "apps", "v1", "statefulsets")
DAEMON_SET = Kind("DaemonSet", "apps", "v1", "daemonsets")
JOB = Kind("Job", "batch", "v1", "jobs")
CRON_JOB = Kind("CronJob", "batch", "v1", "cronjobs")
WORKLOADS = (DEPLOYMENT, REPLICA_SET, STATEFUL_SET, DAEMON_SET, JOB, CRON_JOB)

KINDS = {
    k.kind: k
    for k in (
        SERVICE_ACCOUNT,
        CONFIG_MAP,
        SECRET,
        SERVICE,
        POD,
        EVENT,
        DEPLOYMENT,
        NETWORK_POLICY,
        REPLICA_SET,
        STATEFUL_SET,
        DAEMON_SET,
        JOB,
        CRON_JOB,
    )
}


def custom_kind(kind: str, group: str, version: str, plural: str) -> Kind:
    return Kind(kind, group, version, plural)


def load_api_client(kubeconfig: str | Path | None = None) -> k8s_client.ApiClient:
    """In-cluster config when running in a Pod, else the kubeconfig (KUBECONFIG or ~/.kube)."""
    configuration = k8s_client.Configuration()
    if kubeconfig is None:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)
            return k8s_client.ApiClient(configuration)
        except k8s_config.ConfigException:
            pass
    k8s_config.load_kube_config(
        config_file=str(kubeconfig) if kubeconfig else None,
        client_configuration=configuration,
    )
    return k8s_client.ApiClient(configuration)


def _decode(raw: bytes) -> Json:
    """The API server's JSON answer (orjson where it agrees with the standard library:
    lists of Pods and workloads are most of the reconciler's bytes)."""
    doc = fastjson.loads(raw)
    return doc if isinstance(doc, dict) else {}


class Kube:
    """Async JSON access to the API server. `on_call(verb, kind, code)` sees every call."""

    def __init__(
        self,
        api: k8s_client.ApiClient,
        on_call: Callable[[str, str, int], None] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.api = api
        self.on_call = on_call
        self.timeout_s = timeout_s

    def _call(
        self,
        method: str,
        path: str,
        kind: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Json:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        code = 0
        try:
            resp = self.api.call_api(
                path,
                method,
                query_params=list((query or {}).items()),
                header_params=headers,
                body=body,
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=self.timeout_s,
            )
            code = int(getattr(resp, "status", 200))
            raw = resp.data
            return _decode(raw) if raw else {}
        except ApiException as exc:
            code = int(exc.status or 0)
            message = str(exc.reason)
            reason = str(exc.reason)
            try:
                doc = json.loads(exc.body or "{}")
                message = str(doc.get("message") or message)
                reason = str(doc.get("reason") or reason)
            except ValueError:
                pass
            raise ApiError(code, reason, message) from None
        finally:
            if self.on_call is not None:
                self.on_call(method, kind, code)

    async def _acall(self, *args: Any, **kwargs: Any) -> Json:
        return await asyncio.to_thread(self._call, *args, **kwargs)

    # --- reads ---------------------------------------------------------------------------
    async def get(self, kind: Kind, namespace: str, name: str) -> Json | None:
        try:
            return await self._acall("GET", kind.path(namespace, name), kind.kind)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    async def namespace_labels(self, name: str) -> dict[str, str] | None:
        """The labels of Namespace `name` (None: no such namespace)."""
        try:
            doc = await self._acall("GET", f"/api/v1/namespaces/{quote(name)}", "Namespace")
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        return dict((doc.get("metadata") or {}).get("labels") or {})

    async def list(
        self,
        kind: Kind,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[Json]:
        query: dict[str, str] = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        path = kind.path(namespace) if namespace is not None else kind.cluster_path()
        doc = await self._acall("GET", path, kind.kind, query=query)
        items = doc.get("items") or []
        return [i for i in items if isinstance(i, dict)]

    async def list_pages(
        self, kind: Kind, namespace: str | None = None, limit: int = 500
    ) -> AsyncIterator[Page]:
        """Every object of `kind`, `limit` at a time (a large listing without holding all of
        its JSON at once); a continuation that expired raises `ApiError` (410)."""
        path = kind.path(namespace) if namespace is not None else kind.cluster_path()
        query = {"limit": str(limit)}
        while True:
            doc = await self._acall("GET", path, kind.kind, query=query)
            yield [i for i in doc.get("items") or [] if isinstance(i, dict)]
            token = (doc.get("metadata") or {}).get("continue")
            if not token:
                return
            query = {"limit": str(limit), "continue": str(token)}

    # --- writes --------------------------------------------------------------------------
    async def create(self, kind: Kind, namespace: str, body: Json) -> Json:
        return await self._acall("POST", kind.path(namespace), kind.kind, body=body)

    async def replace(self, kind: Kind, namespace: str, name: str, body: Json) -> Json:
        return await self._acall("PUT", kind.path(namespace, name), kind.kind, body=body)

    async def merge_patch(
        self, kind: Kind, namespace: str, name: str, patch: Json, sub: str | None = None
    ) -> Json:
        return await self._acall(
            "PATCH",
            kind.path(namespace, name, sub),
            kind.kind,
            body=patch,
            content_type="application/merge-patch+json",
        )

    async def delete(self, kind: Kind, namespace: str, name: str, uid: str | None = None) -> bool:
        """Delete (False when already gone); with `uid`, only that incarnation of it."""
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            await self._acall("DELETE", kind.path(namespace, name), kind.kind, body=body)
            return True
        except ApiError as exc:
            if exc.not_found:
                return False
            raise

    def close(self) -> None:
        self.api.close()
