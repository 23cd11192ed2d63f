"""`make demo`: the whole Modelseal story on this machine, step by step.

    python -m modelseal_devenv.demo [--keep] [--workdir DIR]

Starts a real Kubernetes control plane (kwok GPU nodes), Vault (Transit + Kubernetes auth),
Redis and a local S3 server; runs the operator; then plays the story of the model owner,
the platform engineer and the tenant, and of a license revocation. Each step says what
happens and how long it took. Everything it started is stopped at the end, also on Ctrl-C.
The last line is ``demo: ok`` followed by the step timings.

`Stack` (the servers, the operator and the pod runner) and the story actions are shared
with the end-to-end tests in tests/e2e/.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelseal_devenv.common import ManagedProcess

NAMESPACE = "demo"
TENANT = "acme"
LICENSE = "acme-digits"
MODEL = "digits"
TRANSIT_KEY = "digits-key"
BUCKET = "models"
KEYS_OBJECT = "acme-api-keys"  # the Secret with the tenant's hashed API keys
REVIEWER_NAMESPACE = "vault-system"
REVIEWER_SA = "vault-token-reviewer"


class DemoError(RuntimeError):
    """A step of the story did not do what it should; the message says what and where."""


# --------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------


@dataclass
class Narrator:
    """Prints the story: numbered steps with a plain description, each one timed."""

    out: Callable[[str], None] = print
    timings: list[tuple[str, float]] = field(default_factory=list)
    quiet: bool = False

    def say(self, text: str, indent: int = 5) -> None:
        if self.quiet:
            return
        for line in text.splitlines() or [""]:
            self.out(" " * indent + line)

    @contextlib.contextmanager
    def step(self, key: str, title: str, what: str = "") -> Iterator[None]:
        number = len(self.timings) + 1
        if not self.quiet:
            self.out("")
            self.out(f"[{number}] {title}")
            if what:
                self.say(textwrap.fill(textwrap.dedent(what).strip(), 88))
        t0 = time.monotonic()
        yield
        took = time.monotonic() - t0
        self.timings.append((key, took))
        self.say(f"-> done in {took:.1f}s")

    def summary_line(self) -> str:
        return " ".join(f"{key}={took:.1f}s" for key, took in self.timings)


# --------------------------------------------------------------------------------------
# The stack: servers, operator, pod runner
# --------------------------------------------------------------------------------------


class Stack:
    """Every server the story needs, started on 127.0.0.1, and the operator.

    Pass running servers (e.g. session fixtures) to reuse them; what this object starts
    it also stops. ``workdir`` holds the logs, the sealed bundle and the keys.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        kube: Any = None,
        vault: Any = None,
        redis: Any = None,
        s3: Any = None,
        namespace: str = NAMESPACE,
        narrator: Narrator | None = None,
    ) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_dir = workdir / "logs"
        self.log_dir.mkdir(exist_ok=True)
        self.kube = kube
        self.vault = vault
        self.redis = redis
        self.s3 = s3
        self.namespace = namespace
        self.narrator = narrator or Narrator(quiet=True)
        self._owned: list[Any] = []
        self.operator: ManagedProcess | None = None
        self.operator_env: dict[str, str] = {}
        self.runner: Any = None
        self._api: Any = None

    # -- servers -------------------------------------------------------------------------

    def start_kube(self) -> None:
        from modelseal_devenv.kube import KubeCluster, ensure_binaries

        if self.kube is None:
            self.kube = KubeCluster(bin_dir=ensure_binaries()).start()
            self._owned.append(self.kube)
        self.narrator.say(
            f"Kubernetes {self.kube.version} at {self.kube.server}, "
            f"nodes {', '.join(self.kube.node_names)} (kwok, nvidia.com/gpu)"
        )

    @property
    def api(self) -> Any:
        if self._api is None:
            self._api = self.kube.api_client()
        return self._api

    def start_vault(self) -> None:
        from modelseal_devenv.vault import VaultServer

        if self.vault is None:
            self.vault = VaultServer(persistent=True, workdir=self.workdir / "vault").start()
            self._owned.append(self.vault)
        reviewer_jwt = self._token_reviewer()
        self.vault.configure_kubernetes_auth(
            kubernetes_host=str(self.kube.server),
            ca_pem=str(self.kube.ca_pem),
            token_reviewer_jwt=reviewer_jwt,
        )
        self.narrator.say(
            f"Vault {self.vault.version} at {self.vault.addr}: Transit, Kubernetes auth "
            "against the test API server"
        )

    def _token_reviewer(self) -> str:
        """A ServiceAccount bound to system:auth-delegator whose token Vault uses for
        TokenReview (so the model ServiceAccounts that log in need no extra rights)."""
        from kubernetes import client as k8s
        from kubernetes.client.exceptions import ApiException

        core = k8s.CoreV1Api(self.api)
        rbac = k8s.RbacAuthorizationV1Api(self.api)

        def create(fn: Callable[..., Any], *args: Any) -> None:
            try:
                fn(*args)
            except ApiException as exc:
                if exc.status != 409:
                    raise

        create(core.create_namespace, {"metadata": {"name": REVIEWER_NAMESPACE}})
        create(
            core.create_namespaced_service_account,
            REVIEWER_NAMESPACE,
            {"metadata": {"name": REVIEWER_SA}},
        )
        create(
            rbac.create_cluster_role_binding,
            {
                "metadata": {"name": "modelseal-demo-vault-token-reviewer"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "system:auth-delegator",
                },
                "subjects": [
                    {"kind": "ServiceAccount", "name": REVIEWER_SA, "namespace": REVIEWER_NAMESPACE}
                ],
            },
        )
        result = core.create_namespaced_service_account_token(
            REVIEWER_SA, REVIEWER_NAMESPACE, {"spec": {"expirationSeconds": 24 * 3600}}
        )
        return str(result.status.token)

    # -- stop ----------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the pod runner, the operator and every server this object started."""
        if self.runner is not None:
            with contextlib.suppress(Exception):
                self.runner.stop()
            self.runner = None
        self.stop_operator()
        if self._api is not None:
            with contextlib.suppress(Exception):
                self._api.close()
            self._api = None
        for server in reversed(self._owned):
            with contextlib.suppress(Exception):
                server.stop()
        self._owned.clear()

    def stop_operator(self) -> None:
        if self.operator is not None:
            self.operator.stop(timeout=15)
            self.operator = None


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m modelseal_devenv.demo", description=__doc__)
    parser.add_argument("--workdir", type=Path, help="where logs and files go (default: temp)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    args = parser.parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="modelseal-demo-"))
    narrator = Narrator()
    stack = Stack(workdir, narrator=narrator)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    try:
        with narrator.step("cluster", "Start a Kubernetes control plane with fake GPU nodes"):
            stack.start_kube()
        with narrator.step("vault", "Start Vault"):
            stack.start_vault()
    except KeyboardInterrupt:
        print("\ndemo: interrupted; stopping everything", flush=True)
        stack.stop()
        return 130
    except Exception as exc:
        print(f"\ndemo: FAILED: {type(exc).__name__}: {exc}", flush=True)
        print(f"logs: {workdir}", flush=True)
        stack.stop()
        return 1
    stack.stop()
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"demo: ok total={time.monotonic() - t0:.1f}s {narrator.summary_line()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
