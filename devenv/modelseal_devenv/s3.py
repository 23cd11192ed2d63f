"""Local S3-compatible servers, each a child process on 127.0.0.1 speaking the S3 REST API
(signature v4, multipart uploads, ranged GETs, ...) at `endpoint_url`, with the fixed test
credentials below on both sides:

* `S3Server`: moto's standalone server (the `moto[server]` package from PyPI, `python -m
  moto.server`), the tests' S3 server. Any access key is accepted. Data lives in the
  server's memory (a restart gives an empty store), and every GET, ranged or not, reads
  and copies the whole object: fine for the tests' small objects, not for multi-GiB ones.
* `VersityGateway`: the Versity S3 Gateway (versitygw, built from its Go module by
  devenv/build-versitygw.sh) over its posix backend: one file per object in the work
  folder, a ranged GET reads only its range, signatures are checked against the root
  credentials. `make bench-ready` serves its S3 leg from it at the model's full size.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Self

from modelseal_devenv.common import (
    LOOPBACK,
    ChildServer,
    ManagedProcess,
    StartError,
    cache_dir,
    free_port,
    read_from,
    run_build_script,
    run_checked,
    wait_until,
)

ACCESS_KEY = "modelseal-test-access-key"
SECRET_KEY = "modelseal-test-secret-key"  # noqa: S105 - a fixed test credential, not a secret
REGION = "us-east-1"


def moto_version() -> str:
    return importlib.metadata.version("moto")


class S3Endpoint(ChildServer):
    """What the local S3 servers share: the port and credentials, the start with a retry
    when the picked port was taken meanwhile, and boto3 clients for the server."""

    #: the process's name in logs and errors
    process_name = "s3-server"

    def __init__(
        self,
        workdir: Path | None,
        *,
        port: int | None,
        region: str,
        startup_timeout: float,
        log_name: str,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="modelseal-s3-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / log_name
        self._port_fixed = port is not None  # a free port we picked may be re-picked
        self.port = port or free_port()
        self.region = region
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.startup_timeout = startup_timeout
        self.start_seconds = 0.0
        self._process: ManagedProcess | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def env(self) -> dict[str, str]:
        """AWS_* variables that point an AWS SDK (boto3, the CLI) at this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
        }

    def _alive(self) -> bool:
        raise NotImplementedError

    def _argv(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        raise NotImplementedError

    def start(self) -> Self:
        if self.running:
            return self
        t0 = time.monotonic()
        for attempt in range(3):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._process = ManagedProcess(
                self.process_name, self._argv(), self.log_path, env=self._env(), cwd=self.workdir
            ).start()
            try:
                wait_until(
                    self._alive,
                    f"{self.process_name} at {self.endpoint_url}",
                    self.startup_timeout,
                    self._process,
                )
                break
            except StartError:
                self._process.stop(timeout=5)
                log = read_from(self.log_path, offset)
                clash = "already in use" in log or "in use by another program" in log
                if self._port_fixed or attempt == 2 or not clash:
                    raise
                self.port = free_port()  # taken between free_port() and the bind
        self._port_fixed = True  # restarts come back on the same port
        self.start_seconds = time.monotonic() - t0
        return self

    # -- clients -----------------------------------------------------------------------
    def client(self, **kwargs: Any) -> Any:
        """A boto3 S3 client for this server (path-style addressing)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 3}),
            **kwargs,
        )

    def create_bucket(self, name: str) -> str:
        """Create `name` (no-op when it exists); returns the bucket name."""
        client = self.client()
        try:
            existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
            if name not in existing:
                if self.region == "us-east-1":
                    client.create_bucket(Bucket=name)
                else:
                    client.create_bucket(
                        Bucket=name,
                        CreateBucketConfiguration={"LocationConstraint": self.region},
                    )
        finally:
            client.close()
        return name

    def uri(self, bucket: str, key: str) -> str:
        return f"s3://{bucket}/{key.lstrip('/')}"


class S3Server(S3Endpoint):
    """moto's S3 (and other AWS APIs) on http://127.0.0.1:<free port>."""

    process_name = "moto-server"

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        region: str = REGION,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(
            workdir,
            port=port,
            region=region,
            startup_timeout=startup_timeout,
            log_name="moto.log",
        )
        self.version = moto_version()

    def _alive(self) -> bool:
        # moto's own management API; answers once the WSGI app is serving
        url = f"{self.endpoint_url}/moto-api/data.json"
        with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - loopback http
            return int(resp.status) == 200

    def _argv(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(self.port)]

    def _env(self) -> dict[str, str]:
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.workdir),
            "PYTHONUNBUFFERED": "1",
            "PYTHONWARNINGS": "ignore",  # the server's own warnings must not reach the tests
            "NO_COLOR": "1",
            "MOTO_PORT": str(self.port),
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def reset(self) -> None:
        """Drop every bucket and object (moto's reset API)."""
        url = f"{self.endpoint_url}/moto-api/reset"
        req = urllib.request.Request(url, method="POST")  # noqa: S310 - loopback http
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback http
                resp.read()
        except urllib.error.URLError as exc:
            raise StartError(f"moto reset failed: {exc}") from exc


VERSITYGW_BUILD_SCRIPT = "devenv/build-versitygw.sh"


def ensure_versitygw_binary() -> Path:
    """The cached versitygw binary, built first when missing or stale (a cold build takes
    a few minutes; its output goes to <cache>/logs/build-versitygw.log)."""
    binary = run_build_script(VERSITYGW_BUILD_SCRIPT, cache_dir() / "logs" / "build-versitygw.log")
    if binary is None or not os.access(binary, os.X_OK):
        raise StartError(f"{VERSITYGW_BUILD_SCRIPT} printed no executable binary ({binary})")
    return binary


class VersityGateway(S3Endpoint):
    """The Versity S3 Gateway over a posix folder (``<workdir>/data``: a folder per bucket,
    a file per object) on http://127.0.0.1:<free port>."""

    process_name = "versitygw"

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        region: str = REGION,
        startup_timeout: float = 60.0,
        binary: Path | None = None,
    ) -> None:
        super().__init__(
            workdir,
            port=port,
            region=region,
            startup_timeout=startup_timeout,
            log_name="versitygw.log",
        )
        self.binary = binary or ensure_versitygw_binary()
        self.data_dir = self.workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        out = run_checked([str(self.binary), "--version"], "versitygw --version")
        self.version = next(
            (
                line.split(":", 1)[1].strip()
                for line in out.splitlines()
                if line.startswith("Version")
            ),
            "?",
        )

    def _alive(self) -> bool:
        # Any S3 answer will do: an unsigned request is refused (403) once it serves.
        try:
            with urllib.request.urlopen(self.endpoint_url, timeout=2):  # noqa: S310 - loopback
                return True
        except urllib.error.HTTPError:
            return True

    def _argv(self) -> list[str]:
        return [
            str(self.binary),
            "--port",
            f"{LOOPBACK}:{self.port}",
            "--region",
            self.region,
            "--quiet",
            "posix",
            str(self.data_dir),
        ]

    def _env(self) -> dict[str, str]:
        # The root credentials through the environment, not argv (where `ps` shows them).
        return {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.workdir),
            "ROOT_ACCESS_KEY_ID": self.access_key,
            "ROOT_SECRET_ACCESS_KEY": self.secret_key,
        }
