"""The S3 server of the tests, the demo and `make bench-ready`: the Versity S3 Gateway
(versitygw, Apache 2.0), built from its Go module by devenv/build-versitygw.sh, run as a
child process on 127.0.0.1 over its posix backend.

It speaks the S3 REST API at `endpoint_url`: signature v4, checked against the root
credentials below (a request signed with another secret is refused), multipart uploads,
conditional and ranged GETs. Each object is a file under ``<workdir>/data/<bucket>/``, its
metadata (ETag, content type and encoding) in a sidecar folder, so any file system
will do (no extended attributes needed); a ranged GET reads only its range, as real S3
does. The store outlives a restart on the same folder.

(Until session 14 this was moto's standalone server: an in-memory imitation of AWS that
accepts any signature and reads the whole object for every GET, ranged or not.)
"""

from __future__ import annotations

import os
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
BUILD_SCRIPT = "devenv/build-versitygw.sh"


def ensure_versitygw_binary() -> Path:
    """The cached versitygw binary, built first when missing or stale (a cold build takes
    a few minutes; its output goes to <cache>/logs/build-versitygw.log)."""
    binary = run_build_script(BUILD_SCRIPT, cache_dir() / "logs" / "build-versitygw.log")
    if binary is None or not os.access(binary, os.X_OK):
        raise StartError(f"{BUILD_SCRIPT} printed no executable binary ({binary})")
    return binary


def binary_version(binary: Path) -> str:
    """The version ("v1.8.0") that ``versitygw --version`` prints ("Version  : v1.8.0")."""
    out = run_checked([str(binary), "--version"], "versitygw --version")
    for line in out.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "Version" and value.strip():
            return value.strip()
    raise StartError(f"{binary} --version printed no version: {out!r}")


class S3Server(ChildServer):
    """versitygw on http://127.0.0.1:<free port>, serving ``<workdir>/data``."""

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        region: str = REGION,
        startup_timeout: float = 60.0,
        binary: Path | None = None,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="modelseal-s3-"))
        self.data_dir = self.workdir / "data"
        self.meta_dir = self.workdir / "meta"
        for folder in (self.data_dir, self.meta_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / "versitygw.log"
        self._port_fixed = port is not None  # a free port we picked may be re-picked
        self.port = port or free_port()
        self.region = region
        self.access_key = ACCESS_KEY
        self.secret_key = SECRET_KEY
        self.startup_timeout = startup_timeout
        self.binary = binary or ensure_versitygw_binary()
        self.version = binary_version(self.binary)
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
            "--sidecar",
            str(self.meta_dir),
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

    def start(self) -> Self:
        if self.running:
            return self
        t0 = time.monotonic()
        for attempt in range(3):
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._process = ManagedProcess(
                "versitygw", self._argv(), self.log_path, env=self._env(), cwd=self.workdir
            ).start()
            try:
                what = f"versitygw at {self.endpoint_url}"
                wait_until(self._alive, what, self.startup_timeout, self._process)
                break
            except StartError:
                self._process.stop(timeout=5)
                clash = "already in use" in read_from(self.log_path, offset)
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
