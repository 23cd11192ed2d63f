"""Attacks on the unsealer process (issue 12, item 9 and the unsealer half of item 12).

- Item 9: a bundle header that claims the largest chunk size, read on a big node (64
  CPUs, injected) under the memory limit the operator renders, used to make the unsealer
  allocate two buffer pairs of that size per CPU (16 GiB) before any chunk was
  authenticated. Now the buffers stay within the budget, or the bundle is refused before
  the key is unwrapped.
- Item 12: a process of the same user without CAP_SYS_PTRACE (a container's processes
  have none) that started the unsealer opens its /proc/<pid>/mem (its memory: the data
  key, the plaintext): refused, because the unsealer made itself non-dumpable; the same
  open of an ordinary sibling process succeeds (the control), so the refusal is the
  unsealer's own doing. Its core-file limit is 0 (/proc/<pid>/limits).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from modelseal.crypto import format as fmt
from modelseal.crypto.stream import SecretBytes
from modelseal.crypto.testing import files_manifest, raw_bundle
from modelseal.unsealer import engine
from tests.unit.test_unseal_limits import revoked_unsealer_env, shm_dir

MiB = 1024 * 1024
__all__ = ["shm_dir"]  # the unit tests' tmpfs folder (skips without tmpfs)


def rendered_limit(plaintext: int, unsealer_mib: int = 256) -> int:
    """The unsealer container's memory limit as render/manifests.py writes it."""
    return unsealer_mib * MiB + plaintext + plaintext // 50 + 32 * MiB


def hostile_bundle(key: bytes) -> bytes:
    """A tiny bundle whose header claims 64 MiB chunks (the format's maximum)."""
    files = {"m/config.pbtxt": b'name: "m"\n'}
    return raw_bundle(
        files_manifest(files).pack(),
        files["m/config.pbtxt"],
        SecretBytes(key),
        chunk_size=fmt.MAX_CHUNK_SIZE,
        file_count=1,
    ).data


def test_max_chunk_header_on_64_cpus_stays_within_the_rendered_limit(shm_dir: Path) -> None:
    key = os.urandom(32)
    data = hostile_bundle(key)
    opts = engine.UnsealOptions(cpus=64, memory_limit=rendered_limit(0))
    tracemalloc.start()
    try:
        report = engine.unseal_stream(
            io.BytesIO(data), shm_dir / "r", lambda env: SecretBytes(key), opts
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.plan is not None and report.plan.budget is not None
    assert report.plan.workers == 1
    assert peak <= report.plan.budget  # not 64 x 2 x 128 MiB
    assert (shm_dir / "r/m/config.pbtxt").read_bytes() == b'name: "m"\n'


def test_max_chunk_header_is_refused_before_unwrap_when_it_cannot_fit(shm_dir: Path) -> None:
    key = os.urandom(32)
    data = hostile_bundle(key)
    unwrapped: list[int] = []

    def unwrap(env: fmt.Envelope) -> SecretBytes:
        unwrapped.append(1)
        return SecretBytes(key)

    opts = engine.UnsealOptions(cpus=64, memory_limit=rendered_limit(0, unsealer_mib=64))
    with pytest.raises(engine.UnsealError, match="chunk size"):
        engine.unseal_stream(io.BytesIO(data), shm_dir / "r", unwrap, opts)
    assert not unwrapped
    assert os.listdir(shm_dir) == []


# --------------------------------------------------------------------- item 12


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Runs without CAP_SYS_PTRACE (setpriv drops it from the bounding set): starts the
# unsealer and an ordinary control process as its own children (so that only the
# dumpable flag can decide), waits for the unsealer, then opens /proc/<pid>/mem of both.
_ATTACKER = """
import json, subprocess, sys, time, urllib.request
port = int(sys.argv[1])
control = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                           stdin=subprocess.PIPE)
unsealer = subprocess.Popen([sys.executable, "-m", "modelseal", "unsealer"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
def can_open(pid):
    try:
        open(f"/proc/{pid}/mem", "rb").close()
        return True
    except PermissionError:
        return False
try:
    deadline = time.monotonic() + 60
    while True:
        if unsealer.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("unsealer did not come up")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=5) as r:
                if json.loads(r.read())["state"] == "revoked":
                    break
        except OSError:
            pass
        time.sleep(0.1)
    with open(f"/proc/{unsealer.pid}/limits") as f:
        core = [l.split()[4:6] for l in f if l.startswith("Max core file size")][0]
    print(json.dumps({"control": can_open(control.pid), "unsealer": can_open(unsealer.pid),
                      "core": core}))
finally:
    unsealer.terminate()
    unsealer.wait(timeout=30)
    control.stdin.close()
    control.wait(timeout=30)
"""


@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="drops CAP_SYS_PTRACE with setpriv, which a root test run has to give up",
)
def test_same_user_cannot_open_the_unsealers_memory(tmp_path: Path, shm_dir: Path) -> None:
    port = _free_port()
    env = revoked_unsealer_env(tmp_path, shm_dir, port)
    setpriv = shutil.which("setpriv")
    assert setpriv
    out = subprocess.run(
        [setpriv, "--bounding-set", "-sys_ptrace", sys.executable, "-c", _ATTACKER, str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["control"] is True  # the same open works on an ordinary process
    assert seen["unsealer"] is False  # the attack: refused, the unsealer is not dumpable
    assert seen["core"] == ["0", "0"]
