"""Where the API server is and how to prove who we are: in-cluster (the Pod's
ServiceAccount) or a kubeconfig, read once into a `ClusterAccess` that both our own REST
client (`modelseal.k8s.api`) and kopf's login use, so that the two never disagree.

Written here rather than taken from the generated Kubernetes client, whose import alone
is ~56 MB of the operator's memory (issue 13 §3). What a kubeconfig may hold, and what
is read of it: the current context's cluster (``server``, ``certificate-authority`` or
``-data``, ``insecure-skip-tls-verify``, ``tls-server-name``) and user (``token``,
``tokenFile``, ``client-certificate``/``client-key`` or their ``-data``, and ``exec``
credential plugins, as EKS, GKE and AKS kubeconfigs use). Several files in ``KUBECONFIG``
merge as kubectl merges them: the first value of each name wins. Legacy ``auth-provider``
plugins and basic auth are refused with an error that says so.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

#: Where a Pod's ServiceAccount credentials are mounted.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: How long a token read from a file is used before the file is read again (the kubelet
#: rotates projected tokens; client-go re-reads them every minute too).
TOKEN_FILE_REREAD_S = 60.0
#: An exec plugin's credential is renewed this long before it expires.
EXEC_RENEW_EARLY_S = 60.0


class AccessError(Exception):
    """No usable way to reach the API server (the message says what is missing)."""


@dataclass(frozen=True)
class ExecPlugin:
    """A kubeconfig user's ``exec`` credential plugin (client.authentication.k8s.io)."""

    command: str
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    api_version: str = "client.authentication.k8s.io/v1"


@dataclass(frozen=True)
class Credential:
    """What an exec plugin gave: a bearer token or a client certificate, until `expires`
    (epoch seconds; None: no expiry given)."""

    token: str | None = None
    certificate_pem: bytes | None = None
    key_pem: bytes | None = None
    expires: float | None = None


@dataclass(frozen=True)
class ClusterAccess:
    """The API server and our credentials for it. Secrets (token, key) are held in memory
    only and never shown by ``repr``."""

    server: str
    ca_pem: bytes | None = field(default=None, repr=False)
    insecure: bool = False
    tls_server_name: str | None = None
    token: str | None = field(default=None, repr=False)
    token_file: Path | None = None
    certificate_pem: bytes | None = field(default=None, repr=False)
    key_pem: bytes | None = field(default=None, repr=False)
    exec_plugin: ExecPlugin | None = None
    namespace: str | None = None
    #: Where it came from, for messages ("in-cluster", "kubeconfig /path (context x)").
    source: str = ""

    def ssl_context(self, credential: Credential | None = None) -> ssl.SSLContext | bool:
        """The TLS context for the server (False: plain HTTP, or verification disabled)."""
        if not self.server.startswith("https://"):
            return False
        context = ssl.create_default_context()
        if self.ca_pem:
            context.load_verify_locations(cadata=self.ca_pem.decode())
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        cert = (credential.certificate_pem if credential else None) or self.certificate_pem
        key = (credential.key_pem if credential else None) or self.key_pem
        if cert and key:
            load_client_certificate(context, cert, key)
        return context


def load_client_certificate(context: ssl.SSLContext, cert_pem: bytes, key_pem: bytes) -> None:
    """`SSLContext.load_cert_chain` takes only paths; the key is handed over through an
    anonymous in-memory file (memfd) so that it never touches a disk."""
    fds = []
    try:
        paths = []
        for name, data in (("cert", cert_pem), ("key", key_pem)):
            fd = os.memfd_create(f"modelseal-client-{name}", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, data)
            paths.append(f"/proc/self/fd/{fd}")
        context.load_cert_chain(paths[0], paths[1])
    finally:
        for fd in fds:
            os.close(fd)


class TokenSource:
    """The bearer token of each request: fixed, re-read from a file every minute, or
    from an exec plugin until shortly before it expires."""

    def __init__(self, access: ClusterAccess) -> None:
        self.access = access
        self._value: str | None = access.token
        self._read_at = 0.0
        self._credential: Credential | None = None

    def credential(self, *, renew: bool = False) -> Credential | None:
        """The exec plugin's credential (run again when `renew` or near its expiry)."""
        plugin = self.access.exec_plugin
        if plugin is None:
            return None
        cred = self._credential
        stale = cred is None or (
            cred.expires is not None and cred.expires - EXEC_RENEW_EARLY_S <= time.time()
        )
        if renew or stale:
            self._credential = run_exec_plugin(plugin)
        return self._credential

    def token(self, *, renew: bool = False) -> str | None:
        if self.access.exec_plugin is not None:
            cred = self.credential(renew=renew)
            return cred.token if cred else None
        path = self.access.token_file
        if path is not None and (renew or time.monotonic() - self._read_at >= TOKEN_FILE_REREAD_S):
            try:
                self._value = path.read_text().strip() or None
            except OSError as exc:
                raise AccessError(f"cannot read the token file {path}: {exc.strerror}") from None
            self._read_at = time.monotonic()
        return self._value


def run_exec_plugin(plugin: ExecPlugin) -> Credential:
    """Run a kubeconfig ``exec`` plugin and read its ExecCredential."""
    env = {**os.environ, **dict(plugin.env)}
    env["KUBERNETES_EXEC_INFO"] = json.dumps(
        {"apiVersion": plugin.api_version, "kind": "ExecCredential", "spec": {"interactive": False}}
    )
    try:
        done = subprocess.run(
            [plugin.command, *plugin.args],
            env=env,
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AccessError(f"credential plugin {plugin.command!r} did not run: {exc}") from None
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-300:]
        raise AccessError(
            f"credential plugin {plugin.command!r} failed (exit {done.returncode}): {tail}"
        )
    try:
        status = json.loads(done.stdout)["status"]
    except (ValueError, KeyError, TypeError):
        raise AccessError(
            f"credential plugin {plugin.command!r} printed no ExecCredential status"
        ) from None
    expires = None
    if stamp := status.get("expirationTimestamp"):
        try:
            expires = datetime.fromisoformat(str(stamp).replace("Z", "+00:00")).timestamp()
        except ValueError:
            raise AccessError(
                f"credential plugin {plugin.command!r}: bad expirationTimestamp {stamp!r}"
            ) from None
    cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
    token = status.get("token")
    if not token and not (cert and key):
        raise AccessError(f"credential plugin {plugin.command!r} gave neither token nor cert")
    return Credential(
        token=str(token) if token else None,
        certificate_pem=str(cert).encode() if cert else None,
        key_pem=str(key).encode() if key else None,
        expires=expires,
    )


# --- loading -------------------------------------------------------------------------------
def load_access(kubeconfig: str | Path | None = None) -> ClusterAccess:
    """As kubectl and client-go choose: the kubeconfig named (`kubeconfig`, else the files
    in ``KUBECONFIG``), else the Pod's ServiceAccount when running in a Pod, else
    ``~/.kube/config``."""
    named = kubeconfig is not None or bool(os.environ.get("KUBECONFIG", "").strip())
    if not named and (inside := in_cluster()) is not None:
        return inside
    paths = kubeconfig_paths(kubeconfig)
    if not paths:
        raise AccessError(
            "no Kubernetes configuration: not in a Pod, no KUBECONFIG and no ~/.kube/config"
        )
    return from_kubeconfig(paths)


def in_cluster(
    env: Mapping[str, str] | None = None, directory: Path | None = None
) -> ClusterAccess | None:
    """The Pod's ServiceAccount (None when not in a Pod)."""
    env = os.environ if env is None else env
    directory = SERVICE_ACCOUNT_DIR if directory is None else directory
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    token_file = directory / "token"
    if not host or not port or not token_file.exists():
        return None
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    ca = directory / "ca.crt"
    ns = directory / "namespace"
    return ClusterAccess(
        server=f"https://{host}:{port}",
        ca_pem=ca.read_bytes() if ca.exists() else None,
        token_file=token_file,
        namespace=ns.read_text().strip() if ns.exists() else None,
        source="in-cluster",
    )


def kubeconfig_paths(kubeconfig: str | Path | None = None) -> list[Path]:
    if kubeconfig is not None:
        return [Path(kubeconfig).expanduser()]
    listed = os.environ.get("KUBECONFIG", "")
    paths = [Path(p).expanduser() for p in listed.split(os.pathsep) if p.strip()]
    if paths:
        return paths
    default = Path("~/.kube/config").expanduser()
    return [default] if default.exists() else []


def _named(items: Any, what: str, into: dict[str, Mapping[str, Any]], where: Path) -> None:
    for item in items or []:
        if not isinstance(item, Mapping) or "name" not in item:
            raise AccessError(f"{where}: an entry of {what} has no name")
        into.setdefault(str(item["name"]), item.get(what[:-1]) or {})


def from_kubeconfig(paths: Sequence[Path], context_name: str | None = None) -> ClusterAccess:
    """The current (or named) context of the merged kubeconfig files."""
    current: str | None = context_name
    contexts: dict[str, Mapping[str, Any]] = {}
    clusters: dict[str, Mapping[str, Any]] = {}
    users: dict[str, Mapping[str, Any]] = {}
    for path in paths:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except OSError as exc:
            raise AccessError(f"cannot read kubeconfig {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise AccessError(f"kubeconfig {path} is not YAML: {exc}") from None
        if not isinstance(doc, Mapping):
            raise AccessError(f"kubeconfig {path} is not a mapping")
        current = current or doc.get("current-context") or None
        _named(doc.get("contexts"), "contexts", contexts, path)
        _named(doc.get("clusters"), "clusters", clusters, path)
        _named(doc.get("users"), "users", users, path)
    shown = ", ".join(str(p) for p in paths)
    if not current:
        raise AccessError(f"kubeconfig {shown}: no current-context")
    if current not in contexts:
        raise AccessError(f"kubeconfig {shown}: context {current!r} is not defined")
    context = contexts[current]
    cluster_name, user_name = context.get("cluster"), context.get("user")
    if cluster_name not in clusters:
        raise AccessError(f"kubeconfig {shown}: cluster {cluster_name!r} is not defined")
    cluster = clusters[str(cluster_name)]
    user = users.get(str(user_name), {}) if user_name else {}
    base = paths[0].parent
    server = str(cluster.get("server") or "")
    if not server:
        raise AccessError(f"kubeconfig {shown}: cluster {cluster_name!r} has no server")
    if user.get("auth-provider"):
        raise AccessError(
            f"kubeconfig {shown}: user {user_name!r} uses a legacy auth-provider plugin; "
            "use an exec credential plugin, a token or a client certificate"
        )
    if user.get("username") or user.get("password"):
        raise AccessError(f"kubeconfig {shown}: basic auth (user {user_name!r}) is not supported")
    token_file = user.get("tokenFile")
    return ClusterAccess(
        server=server.rstrip("/"),
        ca_pem=_data_or_file(cluster, "certificate-authority", base),
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        tls_server_name=cluster.get("tls-server-name") or None,
        token=str(user["token"]) if user.get("token") else None,
        token_file=_resolve(str(token_file), base) if token_file else None,
        certificate_pem=_data_or_file(user, "client-certificate", base),
        key_pem=_data_or_file(user, "client-key", base),
        exec_plugin=_exec_plugin(user.get("exec"), base),
        namespace=context.get("namespace") or None,
        source=f"kubeconfig {shown} (context {current})",
    )


def _resolve(path: str, base: Path) -> Path:
    """A path in a kubeconfig is relative to the file that holds it."""
    out = Path(path).expanduser()
    return out if out.is_absolute() else base / out


def _data_or_file(section: Mapping[str, Any], key: str, base: Path) -> bytes | None:
    data = section.get(f"{key}-data")
    if data:
        try:
            return base64.b64decode(str(data), validate=True)
        except ValueError:
            raise AccessError(f"kubeconfig: {key}-data is not base64") from None
    path = section.get(key)
    if path:
        try:
            return _resolve(str(path), base).read_bytes()
        except OSError as exc:
            raise AccessError(f"kubeconfig: cannot read {key} {path}: {exc.strerror}") from None
    return None


def _exec_plugin(spec: Any, base: Path) -> ExecPlugin | None:
    if not spec:
        return None
    if not isinstance(spec, Mapping) or not spec.get("command"):
        raise AccessError("kubeconfig: an exec credential plugin without a command")
    command = str(spec["command"])
    # A command with a slash is a path (relative to the kubeconfig), else looked up in PATH.
    if "/" in command:
        command = str(_resolve(command, base))
    env = tuple(
        (str(e["name"]), str(e.get("value") or ""))
        for e in spec.get("env") or []
        if isinstance(e, Mapping) and "name" in e
    )
    return ExecPlugin(
        command=command,
        args=tuple(str(a) for a in spec.get("args") or []),
        env=env,
        api_version=str(spec.get("apiVersion") or "client.authentication.k8s.io/v1"),
    )


def utc_from_epoch(stamp: float | None) -> datetime | None:
    return datetime.fromtimestamp(stamp, UTC) if stamp is not None else None
