"""Issue 12 items 9 and 12 (unsealer half): chunk buffers bounded by the container's memory
limit whatever the CPU count and the unverified header say; core dumps off and the process
not dumpable. CPU counts and cgroup trees are injected; nothing here depends on the host."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tracemalloc
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelseal.crypto import format as fmt
from modelseal.crypto.stream import SecretBytes
from modelseal.crypto.testing import make_bundle
from modelseal.unsealer import engine, limits
from modelseal.unsealer.limits import BufferBudgetError, cgroup_memory_limit, plan_buffers

MiB = 1024 * 1024
GiB = 1024 * MiB
SHM = Path("/dev/shm")
KEY = os.urandom(32)


# ----------------------------------------------------------------------- cgroup files


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_of_own_group(tmp_path: Path) -> None:
    _write(tmp_path / "kubepods/pod1/ctr/memory.max", "536870912\n")
    _write(tmp_path / "kubepods/pod1/memory.max", "max\n")
    assert cgroup_memory_limit(tmp_path, "0::/kubepods/pod1/ctr\n") == 512 * MiB


def test_cgroup_v2_tightest_ancestor_wins(tmp_path: Path) -> None:
    _write(tmp_path / "kubepods/pod1/ctr/memory.max", "max\n")
    _write(tmp_path / "kubepods/pod1/memory.max", str(300 * MiB))
    _write(tmp_path / "kubepods/memory.max", str(8 * GiB))
    assert cgroup_memory_limit(tmp_path, "0::/kubepods/pod1/ctr\n") == 300 * MiB


def test_cgroup_v2_namespace_root(tmp_path: Path) -> None:
    # inside a container with its own cgroup namespace: path "/", limit at the mount root
    _write(tmp_path / "memory.max", str(256 * MiB))
    assert cgroup_memory_limit(tmp_path, "0::/\n") == 256 * MiB


def test_cgroup_v1(tmp_path: Path) -> None:
    _write(tmp_path / "memory/docker/abc/memory.limit_in_bytes", str(1 * GiB))
    _write(tmp_path / "memory/docker/memory.limit_in_bytes", "9223372036854771712")
    text = "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n"
    assert cgroup_memory_limit(tmp_path, text) == 1 * GiB


@pytest.mark.parametrize("value", ["max", "9223372036854771712", "", "garbage"])
def test_cgroup_no_limit(tmp_path: Path, value: str) -> None:
    _write(tmp_path / "memory/x/memory.limit_in_bytes", value)
    _write(tmp_path / "x/memory.max", value)
    assert cgroup_memory_limit(tmp_path, "4:memory:/x\n0::/x\n") is None
    assert cgroup_memory_limit(tmp_path / "missing", "0::/x\n") is None


def test_machine_memory() -> None:
    assert limits.machine_memory("MemTotal:       24684096 kB\nMemFree: 1 kB\n") == 24684096 * 1024
    assert limits.machine_memory("nothing\n") is None


# --------------------------------------------------------------------------- the plan


def rendered_limit(plaintext: int, unsealer_mib: int = 256) -> int:
    """What the operator renders for the unsealer container (render/manifests.py)."""
    tmpfs = plaintext + plaintext // 50 + 32 * MiB
    return unsealer_mib * MiB + tmpfs


def test_64_cpus_default_chunks_fit() -> None:
    plaintext = 40 * GiB
    limit = rendered_limit(plaintext)
    plan = plan_buffers(cpus=64, chunk_size=1 * MiB, plaintext_size=plaintext, memory_limit=limit)
    assert plan.workers == 64  # 64 x 2 x 1 MiB fits in what the render leaves
    assert plan.budget is not None
    assert plan.buffer_bytes <= plan.budget
    assert plan.window == 2 * plan.workers


def test_64_cpus_big_chunks_cut_workers() -> None:
    plaintext = 1 * GiB
    limit = rendered_limit(plaintext)  # leaves 256 + 32 MiB + 2% besides the model
    plan = plan_buffers(cpus=64, chunk_size=32 * MiB, plaintext_size=plaintext, memory_limit=limit)
    assert plan.budget is not None
    assert plan.buffer_bytes <= plan.budget < 256 * MiB
    # before this fix: 2 buffer pairs per CPU, 64 x 2 x 2 x 32 MiB = 8 GiB of buffers
    assert 1 <= plan.workers <= 3


def test_header_chunk_size_beyond_budget_is_refused() -> None:
    plaintext = 1 * GiB
    with pytest.raises(BufferBudgetError, match=r"chunk size \(64.0 MiB\)") as info:
        plan_buffers(
            cpus=64,
            chunk_size=64 * MiB,
            plaintext_size=plaintext,
            memory_limit=plaintext + 100 * MiB,
        )
    assert "unsealer_memory_mib" in str(info.value)


def test_one_buffer_when_only_one_fits() -> None:
    plan = plan_buffers(
        cpus=64,
        chunk_size=64 * MiB,
        plaintext_size=0,
        memory_limit=limits.BASE_RESERVE + 200 * MiB,  # one 128 MiB pair fits, two do not
    )
    assert (plan.workers, plan.window) == (1, 1)
    assert plan.budget is not None and plan.buffer_bytes <= plan.budget


@pytest.mark.parametrize("cpus", [1, 2, 16, 64, 512])
@pytest.mark.parametrize("chunk_mib", [0.00390625, 1, 8, 64])
@pytest.mark.parametrize("headroom_mib", [1, 70, 200, 5000])
def test_plan_never_exceeds_the_budget(cpus: int, chunk_mib: float, headroom_mib: int) -> None:
    chunk = int(chunk_mib * MiB)
    plaintext = 3 * GiB
    limit = plaintext + limits.BASE_RESERVE + headroom_mib * MiB
    try:
        plan = plan_buffers(
            cpus=cpus, chunk_size=chunk, plaintext_size=plaintext, memory_limit=limit
        )
    except BufferBudgetError:
        assert (
            2 * chunk + fmt.TAG_SIZE > headroom_mib * MiB - plaintext // limits.PAGE_TABLE_DIVISOR
        )
        return
    assert plan.budget is not None
    assert plan.buffer_bytes <= plan.budget
    assert 1 <= plan.workers <= min(cpus, limits.MAX_WORKERS)


def test_requested_workers_respected_within_budget() -> None:
    plan = plan_buffers(
        cpus=64, chunk_size=1 * MiB, plaintext_size=0, memory_limit=8 * GiB, requested_workers=3
    )
    assert plan.workers == 3


# ------------------------------------------------------- the engine follows the plan


def revoked_unsealer_env(tmp_path: Path, shm_dir: Path, port: int) -> dict[str, str]:
    """The environment of an unsealer role on `port` with a revoked license (files under
    `tmp_path`) and no reachable Vault: it stays up and never unseals."""
    lic = tmp_path / "license.json"
    lic.write_text(json.dumps({"tenant": "acme", "models": ["m"], "revoked": True}))
    token = tmp_path / "token"
    token.write_text("unused")
    env: dict[str, str] = {
        k: v for k, v in os.environ.items() if not k.startswith(("MODELSEAL_", "VAULT_"))
    }
    env.update(
        MODELSEAL_MODEL_DIR=str(shm_dir),
        MODELSEAL_VAULT_ADDR="http://127.0.0.1:9",
        MODELSEAL_VAULT_TOKEN_FILE=str(token),
        MODELSEAL_BUNDLE_URI="file:///nonexistent.mseal",
        MODELSEAL_BUNDLE_DIGEST="sha256tree:" + "0" * 64,
        MODELSEAL_UNSEALER_PORT=str(port),
        MODELSEAL_UNSEALER_BIND_ADDRESS="127.0.0.1",
        MODELSEAL_UNSEALER_LICENSE_FILE=str(lic),
        MODELSEAL_UNSEALER_TRITON_MODELS='["m"]',
    )
    return env


@pytest.fixture
def shm_dir() -> Iterator[Path]:
    if not SHM.is_dir() or engine.filesystem_type(SHM) != "tmpfs":
        pytest.skip("needs tmpfs at /dev/shm")
    path = SHM / f"modelseal-test-{uuid.uuid4().hex[:10]}"
    path.mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_engine_refuses_before_unwrap(shm_dir: Path) -> None:
    files = {"m/1/w.bin": os.urandom(300_000)}
    b = make_bundle(files, SecretBytes(KEY), chunk_size=64 * 1024)
    called: list[int] = []

    def unwrap(env: fmt.Envelope) -> SecretBytes:
        called.append(1)
        return SecretBytes(KEY)

    opts = engine.UnsealOptions(cpus=64, memory_limit=limits.BASE_RESERVE + 300_000 + 10 * 1024)
    with pytest.raises(engine.UnsealError, match="chunk size"):
        engine.unseal_stream(io.BytesIO(b.data), shm_dir / "r", unwrap, opts)
    assert not called
    assert os.listdir(shm_dir) == []


def test_engine_allocates_within_the_plan_with_64_cpus(shm_dir: Path) -> None:
    chunk = 256 * 1024
    files = {"m/1/w.bin": os.urandom(24 * chunk), "m/config.pbtxt": b"x" * 100}
    b = make_bundle(files, SecretBytes(KEY), chunk_size=chunk)
    plaintext = b.header.core.plaintext_size
    extra = 4 * (2 * chunk + fmt.TAG_SIZE)  # room for 4 buffer pairs besides model and reserve
    core = b.header.core
    limit = (
        limits.BASE_RESERVE
        + plaintext
        + plaintext // limits.PAGE_TABLE_DIVISOR
        + limits.MANIFEST_BYTES_FACTOR * core.manifest_size
        + limits.FILE_OVERHEAD * core.file_count
        + extra
    )
    opts = engine.UnsealOptions(cpus=64, memory_limit=limit, write_mode="pwrite")
    tracemalloc.start()
    try:
        report = engine.unseal_stream(
            io.BytesIO(b.data), shm_dir / "r", lambda env: SecretBytes(KEY), opts
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.plan is not None
    per_buffer = 2 * chunk + fmt.TAG_SIZE  # a record and its plaintext
    assert report.plan.workers == 2  # not 64
    assert report.plan.buffer_bytes == report.plan.window * per_buffer <= extra
    # what Python allocated while unsealing: the buffers plus small change, not 64 workers' worth
    assert peak < report.plan.buffer_bytes + 2 * MiB
    assert (shm_dir / "r/m/1/w.bin").read_bytes() == files["m/1/w.bin"]


# ------------------------------------------------------------------------ core dumps


def test_harden_process_in_a_child() -> None:
    code = (
        "import json, sys\n"
        "from modelseal.unsealer.limits import harden_process\n"
        "print(json.dumps(harden_process()), flush=True)\n"
        "sys.stdin.read()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        state = json.loads(proc.stdout.readline())
        assert state == {"core_limit": 0, "dumpable": 0}
        assert _core_limit_line(proc.pid) == ["0", "0"]
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def _core_limit_line(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line.split()[4:6]
    raise AssertionError("no core limit line")


def test_started_unsealer_has_core_dumps_off(tmp_path: Path, shm_dir: Path) -> None:
    """The real role (`python -m modelseal unsealer`), kept up without Vault by a revoked
    license: /proc/<pid>/limits and its /status show core dumps off, not dumpable."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = revoked_unsealer_env(tmp_path, shm_dir, port)
    log = open(tmp_path / "unsealer.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelseal", "unsealer"], env=env, stdout=log, stderr=log
    )
    try:
        status = _wait_status(port, proc, tmp_path / "unsealer.log")
        assert status["state"] == "revoked"
        assert status["core_dumps"] == {"core_limit": 0, "dumpable": 0}
        assert _core_limit_line(proc.pid) == ["0", "0"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()


def _wait_status(port: int, proc: subprocess.Popen[bytes], log: Path) -> dict[str, Any]:
    from tests.waiting import wait_for

    def status() -> dict[str, Any] | None:
        if proc.poll() is not None:
            raise AssertionError(f"unsealer exited {proc.returncode}: {log.read_text()}")
        url = f"http://127.0.0.1:{port}/status"
        with urllib.request.urlopen(url, timeout=5) as resp:
            data: dict[str, Any] = json.loads(resp.read())
        return data if data["state"] == "revoked" else None

    result = wait_for(
        status, timeout=60, interval=0.1, what="unsealer in state revoked", tolerate=(OSError,)
    )
    assert result is not None
    return result
