"""A real Redis for the tests: Debian's `redis-server` (install-system-deps.sh installs it).

It listens on a free port on 127.0.0.1 only, keeps its config, append-only file and log in
its own folder, and persists every write (`appendonly yes`, `appendfsync always`), so
`stop()` then `start()` — or even `kill()` then `start()` — brings the same data back on
the same port. That is what the gateway's quota counters need to survive a restart.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis as redis_py
from redis.backoff import NoBackoff
from redis.retry import Retry

from modelseal_devenv.common import (
    LOOPBACK,
    ChildServer,
    ManagedProcess,
    StartError,
    free_port,
    read_from,
    wait_until,
)

BINARY_ENV = "MODELSEAL_REDIS_SERVER"  # use this redis-server instead of the one on PATH


def redis_server_binary() -> Path:
    configured = os.environ.get(BINARY_ENV)
    found = configured or shutil.which("redis-server") or "/usr/bin/redis-server"
    path = Path(found)
    if not path.is_file():
        raise StartError(
            "redis-server not found; run `bash devenv/install-system-deps.sh` "
            f"(or set {BINARY_ENV})"
        )
    return path


def redis_server_version(binary: Path | None = None) -> str:
    """`redis-server --version` -> "7.0.15"."""
    out = subprocess.run(
        [str(binary or redis_server_binary()), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    for token in out.split():
        if token.startswith("v="):
            return token[2:]
    raise StartError(f"cannot read the redis-server version from {out!r}")


class RedisServer(ChildServer):
    """redis-server on 127.0.0.1:<free port> with its data in `workdir` (default: a temp dir).

    `url` is "redis://127.0.0.1:P/0" (with ":password@" when a password is set).
    """

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        port: int | None = None,
        password: str | None = None,
        startup_timeout: float = 30.0,
        protected_mode: bool = True,
    ) -> None:
        """``protected_mode=False``: also answer clients that are not on loopback without a
        password (pods of the real node, whose connections reach 127.0.0.1 through a DNAT
        and keep their pod address)."""
        self._own_workdir = workdir is None
        self.workdir = (
            Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="modelseal-redis-"))
        )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.config_path = self.workdir / "redis.conf"
        self.log_path = self.workdir / "redis.log"
        self._port_fixed = port is not None  # a free port we picked may be re-picked
        self.port = port or free_port()
        self.password = password
        self.protected_mode = protected_mode
        self.startup_timeout = startup_timeout
        self.version = ""
        self.start_seconds = 0.0
        self._process: ManagedProcess | None = None

    @property
    def host(self) -> str:
        return LOOPBACK

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{LOOPBACK}:{self.port}/0"

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"bind {LOOPBACK}",
            f"protected-mode {'yes' if self.protected_mode else 'no'}",
            f"port {self.port}",
            "daemonize no",
            "supervised no",
            f'dir "{self.data_dir}"',
            'logfile ""',  # stdout -> the log file of ManagedProcess
            "loglevel notice",
            'save ""',  # no RDB snapshots: the AOF is the persistence
            "appendonly yes",
            "appendfsync always",
            'appendfilename "appendonly.aof"',
            "aof-use-rdb-preamble yes",
            "databases 16",
        ]
        if self.password:
            lines.append(f'requirepass "{self.password}"')
        self.config_path.write_text("\n".join(lines) + "\n")
        self.config_path.chmod(0o600)

    def client(self, decode_responses: bool = False) -> redis_py.Redis:
        return redis_py.Redis(
            host=LOOPBACK,
            port=self.port,
            password=self.password,
            decode_responses=decode_responses,
            socket_timeout=5,
            socket_connect_timeout=2,
        )

    def ping(self, timeout: float = 1.0) -> bool:
        """One quick PING (no retries), so start-up notices a dead server at once."""
        quick = redis_py.Redis(
            host=LOOPBACK,
            port=self.port,
            password=self.password,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
        )
        with quick:
            return bool(quick.ping())

    def start(self) -> RedisServer:
        """Start (or start again, same port and data folder); waits for PING."""
        if self.running:
            return self
        binary = redis_server_binary()
        t0 = time.monotonic()
        for attempt in range(3):
            self._write_config()
            offset = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._process = ManagedProcess(
                "redis-server",
                [str(binary), str(self.config_path)],
                self.log_path,
                cwd=self.workdir,
            ).start()
            try:
                wait_until(self.ping, "redis PING", self.startup_timeout, self._process)
                break
            except StartError:
                self._process.stop(timeout=5)
                clash = "Address already in use" in read_from(self.log_path, offset)
                if self._port_fixed or attempt == 2 or not clash:
                    raise
                self.port = free_port()  # taken between free_port() and the bind
        self._port_fixed = True  # restarts come back on the same port
        self.start_seconds = time.monotonic() - t0
        with self.client(decode_responses=True) as client:
            info = client.info("server")
        self.version = str(info.get("redis_version", ""))
        return self
