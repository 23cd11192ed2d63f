"""Shared plumbing for the test servers: ports, cache folder, child processes, waiting.

Every server runs as a child process on 127.0.0.1, with its log in a file, and is stopped
(SIGTERM, then SIGKILL) when its owner stops it or the interpreter exits.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Self

LOOPBACK = "127.0.0.1"


class StartError(RuntimeError):
    """A test server did not come up; the message carries the tail of its own log."""


def cache_dir() -> Path:
    """Where built test-server binaries live, outside the repository, kept between runs."""
    root = os.environ.get("MODELSEAL_CACHE_DIR") or str(Path.home() / ".cache" / "modelseal")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def free_port_block(count: int, avoid: Collection[int] = ()) -> int:
    """The first of `count` consecutive TCP ports free on 127.0.0.1 right now (a gateway
    with workers binds its metrics port plus the worker's index), none of them in `avoid`."""
    for _ in range(200):
        base = free_port()
        block = range(base, base + count)
        if base + count > 65536 or any(port in avoid for port in block):
            continue
        sockets: list[socket.socket] = []
        try:
            for port in block:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind((LOOPBACK, port))
        except OSError:
            continue
        finally:
            for sock in sockets:
                sock.close()
        return base
    raise StartError(f"no {count} consecutive free ports on {LOOPBACK}")


def port_open(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def read_from(path: Path, offset: int) -> str:
    """A log file's text from `offset` on (what a server wrote since then)."""
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


_LIVE: list[ManagedProcess] = []
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the parent dies, so a killed test run leaves no servers."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class ManagedProcess:
    """One server child process with its output in a log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # so stop() can signal the whole process group
                # The death signal follows the starting *thread*: only tie it to the main one.
                preexec_fn=_die_with_parent
                if threading.current_thread() is threading.main_thread()
                else None,
            )
        except OSError as exc:
            raise StartError(f"{self.name}: cannot run {self.argv[0]}: {exc}") from exc
        finally:
            log.close()
        _LIVE.append(self)
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    def fail(self, what: str) -> StartError:
        code = self.proc.returncode if self.proc else "?"
        state = "running" if self.running else f"exited with {code}"
        return StartError(
            f"{self.name} {what} ({state}); last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=timeout)
        if self in _LIVE:
            _LIVE.remove(self)

    def kill(self) -> None:
        """Hard crash (SIGKILL), for tests that simulate a failure."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


class ChildServer:
    """Life cycle shared by the single-process servers (Redis, S3, Triton): a subclass sets
    `_process` in `start()`, and `workdir` / `_own_workdir` in its constructor."""

    workdir: Path
    _own_workdir: bool
    _process: ManagedProcess | None

    def start(self) -> Self:
        raise NotImplementedError

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.running

    @property
    def pid(self) -> int:
        if self._process is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return self._process.pid

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def stop(self, timeout: float = 15.0) -> None:
        """Graceful stop (SIGTERM, then SIGKILL after `timeout`)."""
        if self._process is not None:
            self._process.stop(timeout=timeout)

    def kill(self) -> None:
        """Hard crash (SIGKILL)."""
        if self._process is not None:
            self._process.kill()

    def restart(self) -> Self:
        """Stop and start again on the same port and folder."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the work folder when this object made it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, lines: int = 40) -> str:
        return self._process.log_tail(lines) if self._process is not None else ""


def wait_until(
    check: Callable[[], bool],
    what: str,
    timeout: float,
    process: ManagedProcess | None = None,
    interval: float = 0.2,
) -> None:
    """Poll `check` until true; on time-out or an early exit raise StartError with the log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.running:
            raise process.fail(f"exited before {what}")
        try:
            if check():
                return
        except Exception:  # noqa: S110 - not ready yet; keep polling until the deadline
            pass
        time.sleep(interval)
    if process is not None:
        raise process.fail(f"not ready after {timeout:.0f}s: {what}")
    raise StartError(f"not ready after {timeout:.0f}s: {what}")


def run_build_script(script: str, log: Path) -> Path | None:
    """Run a devenv/build-*.sh script (a no-op when its cache is current), its stderr
    appended to ``log``; the folder it printed last, or None if it printed none. A failure
    raises StartError with the log's tail (a cold build takes many minutes)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        result = subprocess.run(
            ["bash", str(repo_root() / script)],
            stdout=subprocess.PIPE,
            stderr=out,
            check=False,
            cwd=repo_root(),
        )
    if result.returncode != 0:
        text = log.read_text(errors="replace").splitlines()[-40:]
        raise StartError(
            f"{script} failed ({result.returncode}); last lines of {log}:\n" + "\n".join(text)
        )
    lines = result.stdout.decode().strip().splitlines()
    return Path(lines[-1]) if lines else None


def run_checked(argv: Sequence[str], what: str, **kwargs: object) -> str:
    """Run a short command; on failure raise with its output."""
    result = subprocess.run(
        [str(a) for a in argv],
        capture_output=True,
        text=True,
        check=False,
        **kwargs,  # type: ignore[call-overload]
    )
    if result.returncode != 0:
        raise StartError(f"{what} failed ({result.returncode}): {result.stdout}\n{result.stderr}")
    return str(result.stdout)


@atexit.register
def _stop_all() -> None:
    for proc in list(reversed(_LIVE)):
        with contextlib.suppress(Exception):
            proc.stop(timeout=5)
