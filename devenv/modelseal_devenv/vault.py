"""A real HashiCorp Vault server for the tests, built from its Go module by build-vault.sh.

Why not ``vault server -dev``: dev mode writes the root token and unseal key into its own
output (command/server.go prints "Root Token: ..."), and so into the log file, and the
project's rule is that no root token or data key ever lands in a log. So the server runs
from a small config file (TCP listener on 127.0.0.1 without TLS, ``disable_mlock``, no UI)
and this module does what dev mode would have done, through the API: ``sys/init`` with a
single key share, ``sys/unseal``, then it mounts Transit at ``transit/`` and the
Kubernetes auth method at ``kubernetes/``. The root token and unseal key live only in
this object's memory. The API seen by clients is exactly the one a dev server offers.

Two storage modes:

* ``persistent=False`` (default): ``storage "inmem"`` — fast, like dev mode. ``restart()``
  gives a fresh, empty Vault (on the same address): it is initialised again (a NEW root
  token), Transit and Kubernetes auth are mounted again, and the last
  ``configure_kubernetes_auth`` call is replayed. Keys, roles and policies are gone.
* ``persistent=True``: ``storage "file"`` in the work folder. ``restart()`` (or
  ``crash()`` then ``start()``) brings the same Vault back on the same address: this
  object unseals it again; root token, keys, roles and policies survive. This is the mode
  for the "Vault restarts while the model is serving" story.

Kubernetes auth and the TokenReview JWT: ``configure_kubernetes_auth`` takes an optional
``token_reviewer_jwt``. With one, Vault calls TokenReview with that token, so only the
reviewer ServiceAccount needs ``system:auth-delegator`` and the models' ServiceAccounts
stay unprivileged — that is the choice the fixtures make (a dedicated
``vault-token-reviewer`` ServiceAccount). With ``None``, Vault reviews each login with the
caller's own JWT, which then needs ``system:auth-delegator`` itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, cast

import hvac

from modelseal_devenv.common import (
    LOOPBACK,
    ManagedProcess,
    StartError,
    cache_dir,
    free_port,
    repo_root,
    tail,
    wait_until,
)

TRANSIT_MOUNT = "transit"
KUBERNETES_AUTH_MOUNT = "kubernetes"
BINARY_ENV = "MODELSEAL_VAULT_BINARY"  # use this binary instead of the cached build

_MODULE_LINE = re.compile(r"^\s*github\.com/hashicorp/vault\s+v(\S+)", re.MULTILINE)


def vault_version() -> str:
    """The Vault version the wrapper module pins (devenv/go/vault/go.mod), e.g. "1.21.4"."""
    gomod = repo_root() / "devenv" / "go" / "vault" / "go.mod"
    match = _MODULE_LINE.search(gomod.read_text())
    if match is None:
        raise StartError(f"no github.com/hashicorp/vault requirement in {gomod}")
    return match.group(1)


def cached_vault_binary(version: str | None = None) -> Path:
    """Where build-vault.sh puts the binary (it may not exist yet)."""
    return cache_dir() / "bin" / f"vault-{version or vault_version()}" / "vault"


def ensure_vault_binary(build: bool = True) -> Path:
    """The Vault binary: $MODELSEAL_VAULT_BINARY, else the cached build, else build it now.

    A cold build compiles all of Vault (tens of minutes on two cores); its output goes to
    <cache>/logs/build-vault.log.
    """
    override = os.environ.get(BINARY_ENV)
    if override:
        path = Path(override)
        if not os.access(path, os.X_OK):
            raise StartError(f"{BINARY_ENV}={override} is not an executable file")
        return path
    path = cached_vault_binary()
    if os.access(path, os.X_OK):
        return path
    if not build:
        raise StartError(f"no Vault binary at {path}; run devenv/build-vault.sh")
    log_path = cache_dir() / "logs" / "build-vault.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        result = subprocess.run(
            ["bash", str(repo_root() / "devenv" / "build-vault.sh")],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    if result.returncode != 0 or not os.access(path, os.X_OK):
        raise StartError(
            f"devenv/build-vault.sh failed ({result.returncode}); last lines of {log_path}:\n"
            f"{tail(log_path)}"
        )
    return path


def binary_version(binary: Path) -> str:
    """The version ("1.21.4") that ``vault version`` prints ("Vault v1.21.4 (...)")."""
    out = subprocess.run(
        [str(binary), "version"], capture_output=True, text=True, check=False, timeout=30
    ).stdout
    match = re.search(r"Vault v(\S+)", out)
    if match is None:
        raise StartError(f"{binary} version printed no version: {out!r}")
    return match.group(1)


class VaultServer:
    """One Vault server on 127.0.0.1, initialised and unsealed by this object.

    Use as a context manager or call start()/stop(). After start():
    ``addr`` (http://127.0.0.1:PORT), ``root_token``, ``version``, ``client()``.
    """

    def __init__(
        self,
        *,
        persistent: bool = False,
        workdir: Path | None = None,
        binary: Path | None = None,
        build: bool = True,
        start_timeout: float = 60.0,
        log_level: str = "info",
    ) -> None:
        self.persistent = persistent
        self.binary = binary if binary is not None else ensure_vault_binary(build=build)
        self.version = binary_version(self.binary)
        self.start_timeout = start_timeout
        self.log_level = log_level
        self._own_workdir = workdir is None
        self.workdir = (
            workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="modelseal-vault-"))
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "vault.log"
        self.port = free_port()
        self.addr = f"http://{LOOPBACK}:{self.port}"
        self.process: ManagedProcess | None = None
        self._root_token: str | None = None
        self._unseal_key: str | None = None
        self._clients: list[Any] = []
        self._admin_client: Any = None
        self._kube_auth: dict[str, Any] | None = None

    # --- life cycle -------------------------------------------------------------------

    def __enter__(self) -> VaultServer:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:  # never shows the root token
        state = "running" if self.running else "stopped"
        mode = "file" if self.persistent else "inmem"
        return f"VaultServer({self.addr}, v{self.version}, {mode}, {state})"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def root_token(self) -> str:
        if self._root_token is None:
            raise StartError("Vault is not initialised yet; call start() first")
        return self._root_token

    def start(self) -> VaultServer:
        """Start the process, initialise (first time or inmem) and unseal it, mount engines."""
        if self.running:
            return self
        if self.process is not None:  # after crash(): reap it, drop clients of the old one
            self._stop_process()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_")}
        env["HOME"] = str(self.workdir)  # no ~/.vault-token, no user CLI config
        self.process = ManagedProcess(
            "vault",
            [str(self.binary), "server", f"-config={config}", f"-log-level={self.log_level}"],
            self.log_path,
            env=env,
            cwd=self.workdir,
        ).start()
        try:
            wait_until(
                lambda: self._health_code() is not None,
                f"Vault API on {self.addr}",
                self.start_timeout,
                self.process,
            )
            self._init_and_unseal()
            wait_until(
                lambda: self._health_code() == 200,
                "Vault unsealed and active",
                self.start_timeout,
                self.process,
            )
            self._ensure_mounts()
            if self._kube_auth is not None and not self.persistent:
                self.configure_kubernetes_auth(**self._kube_auth)
        except BaseException:
            self._stop_process()
            raise
        return self

    def stop(self) -> None:
        """Stop the server and remove its work folder (when this object made it), so a
        later start() begins from scratch; restart() is the one that keeps the data."""
        self._stop_process()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def restart(self, *, hard: bool = False) -> None:
        """Stop (SIGTERM, or SIGKILL when ``hard``) and start again on the same address.

        persistent=True: same data, same root token, unsealed again by this object.
        persistent=False: a fresh Vault (new root token; engines mounted again, and the
        last Kubernetes auth configuration applied again; keys/roles/policies are gone).
        """
        if hard:
            self.crash()
        self._stop_process()
        self.start()

    def crash(self) -> None:
        """SIGKILL the server (simulated failure); start() or restart() brings it back."""
        if self.process is not None:
            self.process.kill()

    def _stop_process(self) -> None:
        self._admin_client = None
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.adapter.close()
        self._clients.clear()
        if self.process is not None:
            self.process.stop()
            self.process = None

    def _write_config(self) -> Path:
        if self.persistent:
            data = self.workdir / "data"
            data.mkdir(exist_ok=True)
            storage = f'storage "file" {{\n  path = {json.dumps(str(data))}\n}}\n'
        else:
            storage = 'storage "inmem" {}\n'
        listen = f"{LOOPBACK}:{self.port}"
        config = self.workdir / "vault.hcl"
        config.write_text(
            "ui = false\n"
            "disable_mlock = true\n"
            f'api_addr = "{self.addr}"\n'
            'listener "tcp" {\n'
            f'  address = "{listen}"\n'
            "  tls_disable = true\n"
            "}\n" + storage
        )
        return config

    def _health_code(self) -> int | None:
        """HTTP status of sys/health (200 active, 501 not initialised, 503 sealed), or None."""
        url = f"{self.addr}/v1/sys/health"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback URL
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            code = int(exc.code)
            exc.close()
            return code
        except OSError:
            return None

    def _init_and_unseal(self) -> None:
        client = hvac.Client(url=self.addr, timeout=30)
        try:
            if not client.sys.is_initialized():
                result = client.sys.initialize(secret_shares=1, secret_threshold=1)
                self._unseal_key = str(result["keys_base64"][0])
                self._root_token = str(result["root_token"])
            elif self._unseal_key is None:
                raise StartError(f"Vault at {self.addr} is initialised, but not by this object")
            if client.sys.is_sealed():
                client.sys.submit_unseal_key(key=self._unseal_key)
        finally:
            client.adapter.close()

    def _admin(self) -> hvac.Client:
        """The cached root-token client the helpers use."""
        if self._admin_client is None:
            self._admin_client = self.client()
        return self._admin_client

    def _ensure_mounts(self) -> None:
        client = self._admin()
        mounts = cast(dict[str, Any], client.sys.list_mounted_secrets_engines())
        if f"{TRANSIT_MOUNT}/" not in mounts.get("data", mounts):
            client.sys.enable_secrets_engine(backend_type="transit", path=TRANSIT_MOUNT)
        auths = cast(dict[str, Any], client.sys.list_auth_methods())
        if f"{KUBERNETES_AUTH_MOUNT}/" not in auths.get("data", auths):
            client.sys.enable_auth_method(method_type="kubernetes", path=KUBERNETES_AUTH_MOUNT)

    # --- clients and helpers ----------------------------------------------------------

    def client(self, token: str | None = None) -> hvac.Client:
        """An hvac client for this server, with the root token unless ``token`` is given.

        The server keeps a reference and closes the client's HTTP session on stop/restart.
        """
        client = hvac.Client(
            url=self.addr, token=self.root_token if token is None else token, timeout=30
        )
        self._clients.append(client)
        return client

    def configure_kubernetes_auth(
        self,
        kubernetes_host: str,
        ca_pem: str,
        token_reviewer_jwt: str | None = None,
    ) -> None:
        """Write auth/kubernetes/config for the API server at ``kubernetes_host``.

        With ``token_reviewer_jwt`` Vault uses that token for TokenReview (its
        ServiceAccount needs ``system:auth-delegator``); with None it uses each login's own
        JWT (then every logging-in ServiceAccount needs ``system:auth-delegator``).
        ``disable_local_ca_jwt`` is set so that Vault never falls back to files of a pod it
        might run in. The issuer is not checked (Vault's default), TokenReview is.
        """
        self._admin().auth.kubernetes.configure(
            kubernetes_host=kubernetes_host,
            kubernetes_ca_cert=ca_pem,
            token_reviewer_jwt=token_reviewer_jwt,
            disable_local_ca_jwt=True,
            mount_point=KUBERNETES_AUTH_MOUNT,
        )
        self._kube_auth = {
            "kubernetes_host": kubernetes_host,
            "ca_pem": ca_pem,
            "token_reviewer_jwt": token_reviewer_jwt,
        }

    def create_kubernetes_role(
        self,
        name: str,
        *,
        service_account: str,
        namespace: str,
        policies: list[str],
        audience: str | None = None,
        ttl: str = "1h",
    ) -> None:
        """A Kubernetes auth role bound to exactly one ServiceAccount in one namespace."""
        self._admin().auth.kubernetes.create_role(
            name=name,
            bound_service_account_names=[service_account],
            bound_service_account_namespaces=[namespace],
            policies=policies,
            audience=audience,
            ttl=ttl,
            mount_point=KUBERNETES_AUTH_MOUNT,
        )

    def write_policy(self, name: str, policy: str) -> None:
        self._admin().sys.create_or_update_policy(name=name, policy=policy)

    def create_transit_key(self, name: str | None = None, *, key_type: str = "aes256-gcm96") -> str:
        """Create a Transit key (``name`` or a fresh random one) and return its name."""
        key_name = name or f"test-{secrets.token_hex(6)}"
        self._admin().secrets.transit.create_key(
            name=key_name, key_type=key_type, mount_point=TRANSIT_MOUNT
        )
        return key_name


# --- Kubernetes side of Vault's Kubernetes auth ---------------------------------------

REVIEWER_NAMESPACE = "vault-system"
REVIEWER_SA = "vault-token-reviewer"
REVIEWER_BINDING = "modelseal-vault-token-reviewer"


def create_token_reviewer(api_client: Any, expiration_seconds: int = 24 * 3600) -> str:
    """Namespace, ServiceAccount and auth-delegator binding for Vault's TokenReview calls;
    returns a TokenRequest token for it (audience: the API server's own)."""
    from kubernetes import client as k8s
    from kubernetes.client.exceptions import ApiException

    core = k8s.CoreV1Api(api_client)
    rbac = k8s.RbacAuthorizationV1Api(api_client)

    def create(fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except ApiException as exc:
            if exc.status != 409:  # already there (a second session on the same cluster)
                raise

    create(
        core.create_namespace,
        k8s.V1Namespace(metadata=k8s.V1ObjectMeta(name=REVIEWER_NAMESPACE)),
    )
    create(
        core.create_namespaced_service_account,
        REVIEWER_NAMESPACE,
        k8s.V1ServiceAccount(metadata=k8s.V1ObjectMeta(name=REVIEWER_SA)),
    )
    create(
        rbac.create_cluster_role_binding,
        k8s.V1ClusterRoleBinding(
            metadata=k8s.V1ObjectMeta(name=REVIEWER_BINDING),
            role_ref=k8s.V1RoleRef(
                api_group="rbac.authorization.k8s.io",
                kind="ClusterRole",
                name="system:auth-delegator",
            ),
            subjects=[
                k8s.RbacV1Subject(
                    kind="ServiceAccount", name=REVIEWER_SA, namespace=REVIEWER_NAMESPACE
                )
            ],
        ),
    )
    return request_sa_token(api_client, REVIEWER_NAMESPACE, REVIEWER_SA, [], expiration_seconds)


def request_sa_token(
    api_client: Any,
    namespace: str,
    service_account: str,
    audiences: list[str],
    expiration_seconds: int = 3600,
) -> str:
    """A ServiceAccount token from the TokenRequest API (what a projected volume holds).

    An empty ``audiences`` list means the API server's own audience."""
    from kubernetes import client as k8s

    body = k8s.AuthenticationV1TokenRequest(
        spec=k8s.V1TokenRequestSpec(audiences=audiences, expiration_seconds=expiration_seconds)
    )
    result = k8s.CoreV1Api(api_client).create_namespaced_service_account_token(
        service_account, namespace, body
    )
    return str(result.status.token)
