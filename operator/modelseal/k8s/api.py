"""Kubernetes API I/O for the operator: raw JSON in and out, every write counted.

Our own small REST client over aiohttp (which kopf runs on too), not the generated
Kubernetes client: that one's typed models would turn camelCase JSON into snake_case
objects and lose fields the drift check needs, its calls block (they ran in a thread
each), and importing it costs ~56 MB of the operator's memory (issue 13 §3). Where the
server is and who we are comes from `modelseal.k8s.access`. Errors surface as `ApiError`
with the HTTP status and the server's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple
from urllib.parse import quote

import aiohttp
import orjson

from modelseal import fastjson
from modelseal.k8s.access import ClusterAccess, TokenSource

Json = dict[str, Any]
#: One page of a listing.
Page = list[Json]

WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class ListChunk(NamedTuple):
    """One page of a listing: its objects, the next page's continuation ("" after the
    last) and the version of the state it shows (to watch from)."""

    items: list[Json]
    token: str
    version: str


class LineSplitter:
    """A watch's body, as the chunks come, in its lines (one event each; a line may span
    chunks: a ConfigMap can hold a megabyte)."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        *lines, self._rest = (self._rest + chunk).split(b"\n")
        return [line for line in lines if line.strip()]


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

    def scope_path(self, namespace: str | None) -> str:
        """The collection in `namespace`, or in the whole cluster (None)."""
        return self.path(namespace) if namespace is not None else self.cluster_path()


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


#: What a listing of only the objects' metadata asks for (and JSON where that is not served).
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"


def custom_kind(kind: str, group: str, version: str, plural: str) -> Kind:
    return Kind(kind, group, version, plural)


def _error(code: int, raw: bytes) -> ApiError:
    """The API server's Status answer as an `ApiError`."""
    reason = message = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound"}.get(code, "")
    try:
        doc = json.loads(raw or b"{}")
        if isinstance(doc, dict):
            message = str(doc.get("message") or message)
            reason = str(doc.get("reason") or reason)
    except ValueError:
        message = raw[:200].decode(errors="replace") or message
    return ApiError(code, reason or f"HTTP {code}", message)


def _decode(raw: bytes) -> Json:
    """The API server's JSON answer (orjson where it agrees with the standard library:
    lists of Pods and workloads are most of the reconciler's bytes)."""
    doc = fastjson.loads(raw)
    return doc if isinstance(doc, dict) else {}


def _encode(body: Any) -> bytes:
    try:
        return orjson.dumps(body)
    except TypeError:  # an integer past 64 bits
        return json.dumps(body, separators=(",", ":")).encode()


class KubeClient:
    """HTTP to one API server with one set of credentials: a keep-alive connection pool
    of at most `max_connections` (0: no bound) made in the event loop of the first call
    (`close` it in the same loop)."""

    def __init__(self, access: ClusterAccess, max_connections: int = 32) -> None:
        self.access = access
        self.max_connections = max_connections
        self.tokens = TokenSource(access)
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            tls = self.access.ssl_context(self.tokens.credential())
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections, ssl=tls),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    def _renew(self) -> None:
        """Credentials refused: read the token again, or run the exec plugin again. A new
        client certificate needs new connections: the old pool is closed (a call still in
        flight on it fails, and its reconcile is retried)."""
        self.tokens.token(renew=True)
        cred = self.tokens.credential()
        if cred is not None and cred.certificate_pem and self._session is not None:
            old, self._session = self._session, None
            asyncio.get_running_loop().create_task(old.close())

    def _headers(self, accept: str, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": "modelseal-operator"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        token = self.tokens.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return headers

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
        timeout_s: float = 30.0,
        accept: str = "application/json",
    ) -> tuple[int, bytes]:
        """One call; a 401 renews the credentials (a rotated token, an expired exec
        credential) and tries once more."""
        for attempt in (0, 1):
            if attempt:
                self._renew()
            session = self._open()
            headers = self._headers(accept, content_type)
            async with session.request(
                method,
                self.access.server + path,
                params=dict(query or {}),
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                server_hostname=self.access.tls_server_name,
            ) as resp:
                raw = await resp.read()
                if resp.status != 401 or attempt == 1:
                    return resp.status, raw
        raise AssertionError("unreachable")

    async def stream(
        self, path: str, *, query: Mapping[str, str], read_timeout_s: float
    ) -> AsyncGenerator[bytes, None]:
        """A long GET (a watch) as the chunks of its body as they come; an answer other
        than 200 raises `ApiError` (a 401 renews the credentials and tries once more).
        Iterate it inside ``contextlib.aclosing`` so that the connection is given back
        when the reader stops early."""
        for attempt in (0, 1):
            if attempt:
                self._renew()
            session = self._open()
            headers = self._headers("application/json")
            async with session.get(
                self.access.server + path,
                params=dict(query),
                headers=headers,
                # No total: a watch lasts as long as the server keeps it (its
                # timeoutSeconds); a silent connection is dropped after read_timeout_s.
                timeout=aiohttp.ClientTimeout(total=None, connect=30.0, sock_read=read_timeout_s),
                server_hostname=self.access.tls_server_name,
            ) as resp:
                if resp.status == 401 and attempt == 0:
                    await resp.read()
                    continue
                if resp.status != 200:
                    raise _error(resp.status, await resp.read())
                done = False
                try:
                    async for chunk in resp.content.iter_any():
                        yield chunk
                    done = True
                finally:
                    if not done and resp.connection is not None:
                        # A watch left midway (cancelled, closed early): cut it. Its TLS
                        # goodbye would wait for the server's answer and outlive a loop
                        # that is closing, leaving the socket open to the GC.
                        transport = resp.connection.transport
                        if transport is not None:
                            transport.abort()
                return

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class Kube:
    """Async JSON access to the API server. `on_call(verb, kind, code)` sees every call."""

    def __init__(
        self,
        api: KubeClient,
        on_call: Callable[[str, str, int], None] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.api = api
        self.on_call = on_call
        self.timeout_s = timeout_s

    async def _acall(
        self,
        method: str,
        path: str,
        kind: str,
        body: Any = None,
        query: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        accept: str = "application/json",
    ) -> Json:
        code = 0
        try:
            try:
                code, raw = await self.api.request(
                    method,
                    path,
                    query=query,
                    body=None if body is None else _encode(body),
                    content_type=content_type,
                    timeout_s=self.timeout_s,
                    accept=accept,
                )
            except (aiohttp.ClientError, TimeoutError) as exc:
                detail = str(exc) or type(exc).__name__
                raise ApiError(0, "Unreachable", f"{method} {path}: {detail}") from None
            if code >= 400:
                raise _error(code, raw)
            return _decode(raw) if raw else {}
        finally:
            if self.on_call is not None:
                self.on_call(method, kind, code)

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
        path = kind.scope_path(namespace)
        doc = await self._acall("GET", path, kind.kind, query=query)
        items = doc.get("items") or []
        return [i for i in items if isinstance(i, dict)]

    async def list_pages(
        self,
        kind: Kind,
        namespace: str | None = None,
        limit: int = 500,
        metadata_only: bool = False,
    ) -> AsyncIterator[Page]:
        """Every object of `kind`, `limit` at a time (a large listing without holding all of
        its JSON at once); a continuation that expired raises `ApiError` (410). With
        `metadata_only`, each object is only its ``metadata`` (the API server's
        PartialObjectMetadata: no spec, data or status to send or decode)."""
        token: str | None = None
        while True:
            chunk = await self.list_chunk(kind, namespace, limit, token, metadata_only)
            yield chunk.items
            if not chunk.token:
                return
            token = chunk.token

    async def list_chunk(
        self,
        kind: Kind,
        namespace: str | None,
        limit: int,
        token: str | None = None,
        metadata_only: bool = False,
    ) -> ListChunk:
        """One page of a listing of `kind` (`token`: the previous page's continuation;
        `metadata_only`: as in `list_pages`)."""
        path = kind.scope_path(namespace)
        query = {"limit": str(limit)}
        if token:
            query["continue"] = token
        accept = METADATA_LIST if metadata_only else "application/json"
        doc = await self._acall("GET", path, kind.kind, query=query, accept=accept)
        meta = doc.get("metadata") or {}
        return ListChunk(
            [i for i in doc.get("items") or [] if isinstance(i, dict)],
            str(meta.get("continue") or ""),
            str(meta.get("resourceVersion") or ""),
        )

    async def watch(
        self, kind: Kind, namespace: str | None, version: str, timeout_s: int
    ) -> AsyncGenerator[Json, None]:
        """The watch events of `kind` after `version` (each ``{"type", "object"}``, with
        bookmarks), until the server ends the watch after about `timeout_s`. A refused
        watch raises `ApiError` (410: `version` is too old, list again)."""
        path = kind.scope_path(namespace)
        query = {
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_s),
        }
        code = 0
        lines = LineSplitter()
        try:
            chunks = self.api.stream(path, query=query, read_timeout_s=timeout_s + 30.0)
            async with contextlib.aclosing(chunks):
                code = 200
                async for chunk in chunks:
                    for line in lines.feed(chunk):
                        doc = fastjson.loads(line)
                        if isinstance(doc, dict):
                            yield doc
        except ApiError as exc:
            code = exc.status
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            detail = str(exc) or type(exc).__name__
            raise ApiError(0, "Unreachable", f"WATCH {path}: {detail}") from None
        finally:
            if self.on_call is not None:
                self.on_call("WATCH", kind.kind, code)

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

    async def close(self) -> None:
        await self.api.close()
