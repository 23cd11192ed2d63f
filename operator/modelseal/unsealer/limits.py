"""Resources of the unsealer process: memory budget for chunk buffers, core dumps off.

Memory. The unsealer decrypts with `window` chunk buffer pairs (a record and its
plaintext; two pairs per worker). Their size
comes from the bundle header's `chunk_size`, which is not authenticated until the first
chunk opens, and the worker count defaults to the CPUs the process may use, which on a big
node is far more than the container was sized for. `plan_buffers` bounds both by the
container's memory limit (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`, else the
machine's memory): the model's tmpfs pages are charged to this container too, so the
budget for buffers is

    limit - plaintext_size - page tables of the mapped model (plaintext_size / 512)
          - manifest estimate - the source's own buffers (parallel range fetches)
          - BASE_RESERVE (interpreter, libraries)

Workers are cut until two pairs each fit; if even one pair does not fit, the header is
refused before the data key is unwrapped, with the sizes in the message.

Core dumps. `harden_process` sets RLIMIT_CORE to 0 and marks the process non-dumpable
(prctl PR_SET_DUMPABLE 0): no core file with plaintext or key bytes, no ptrace or
/proc/<pid>/mem access by other processes of the same user.
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

from modelseal.crypto.format import TAG_SIZE

MiB = 1024 * 1024
BASE_RESERVE = 64 * MiB  # measured peak RSS without chunk buffers is about 45 MiB
MANIFEST_BYTES_FACTOR = 3  # the manifest's bytes, a copy, and the parsed entries (estimate)
FILE_OVERHEAD = 512  # per file: parsed entry, open descriptor (estimate)
PAGE_TABLE_DIVISOR = 512  # mmap mode maps the model: 8 bytes of page table per 4 KiB page
MAX_WORKERS = 256
UNLIMITED = 1 << 62  # cgroup v1 writes "no limit" as a number near 2**63
PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


class BufferBudgetError(Exception):
    """The chunk buffers the bundle needs do not fit in the memory limit."""


# ---------------------------------------------------------------------------- cgroups


def _parse_limit(text: str) -> int | None:
    value = text.strip()
    if not value or value == "max":
        return None
    try:
        limit = int(value)
    except ValueError:
        return None
    return limit if 0 < limit < UNLIMITED else None


def _read_limit(path: Path) -> int | None:
    try:
        return _parse_limit(path.read_text())
    except OSError:
        return None


def _ancestors(rel: str) -> list[str]:
    """'/a/b' -> ['a/b', 'a', '']: the cgroup and its parents, relative to the mount."""
    parts = [p for p in rel.strip().split("/") if p and p not in (".", "..")]
    return ["/".join(parts[:n]) for n in range(len(parts), -1, -1)]


def cgroup_memory_limit(
    root: Path = Path("/sys/fs/cgroup"), self_cgroup: str | None = None
) -> int | None:
    """The tightest memory limit on this process's cgroup and its ancestors, in bytes.

    `self_cgroup` is the text of /proc/self/cgroup (read when None). Looks at cgroup v2
    (`<root>/<path>/memory.max`) and v1 (`<root>/memory/<path>/memory.limit_in_bytes`),
    walking up to the mount's root, which inside a container with its own cgroup
    namespace is the container's cgroup itself. None when no limit is set or found.
    """
    if self_cgroup is None:
        try:
            self_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            self_cgroup = ""
    v2_path, v1_path = None, None
    for line in self_cgroup.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "memory" in controllers.split(","):
            v1_path = path
    candidates: list[Path] = []
    for rel in _ancestors(v2_path or "/"):
        candidates.append(root / rel / "memory.max" if rel else root / "memory.max")
    for rel in _ancestors(v1_path or "/"):
        base = root / "memory"
        candidates.append(
            base / rel / "memory.limit_in_bytes" if rel else base / "memory.limit_in_bytes"
        )
    limits = [x for x in (_read_limit(p) for p in candidates) if x is not None]
    return min(limits) if limits else None


def machine_memory(meminfo: str | None = None) -> int | None:
    """MemTotal from /proc/meminfo, in bytes."""
    if meminfo is None:
        try:
            meminfo = Path("/proc/meminfo").read_text()
        except OSError:
            return None
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            fields = line.split()
            try:
                return int(fields[1]) * 1024
            except (IndexError, ValueError):
                return None
    return None


def memory_limit() -> tuple[int | None, str]:
    """(limit in bytes, where it came from): the cgroup's, else the machine's memory."""
    limit = cgroup_memory_limit()
    total = machine_memory()
    if limit is not None and (total is None or limit <= total):
        return limit, "cgroup"
    if total is not None:
        return total, "machine"
    return limit, "cgroup" if limit is not None else "unknown"


def available_cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# ------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class BufferPlan:
    workers: int
    window: int  # chunk buffer pairs (record + plaintext)
    buffer_bytes: int  # what the window takes
    budget: int | None  # bytes allowed for buffers; None: no limit known
    memory_limit: int | None
    cpus: int

    def describe(self) -> str:
        limit = f"{self.memory_limit // MiB} MiB" if self.memory_limit else "none found"
        return (
            f"{self.workers} workers, {self.window} chunk buffer pairs "
            f"({self.buffer_bytes / MiB:.1f} MiB; memory limit {limit}, {self.cpus} CPUs)"
        )


def plan_buffers(
    *,
    cpus: int,
    chunk_size: int,
    plaintext_size: int,
    manifest_size: int = 0,
    file_count: int = 0,
    memory_limit: int | None,
    requested_workers: int = 0,
    source_buffers: int = 0,
    reserve: int = BASE_RESERVE,
) -> BufferPlan:
    """Workers and chunk buffers that fit in `memory_limit` (pure: inputs injected).

    `chunk_size` etc. come from the unverified header: whatever they say, the buffers stay
    within the budget, or BufferBudgetError says why not.
    """
    want = min(requested_workers or cpus, MAX_WORKERS)
    want = max(1, want)
    per_buffer = 2 * chunk_size + TAG_SIZE  # a record and its plaintext
    if memory_limit is None:
        return BufferPlan(want, 2 * want, 2 * want * per_buffer, None, None, cpus)
    fixed = (
        plaintext_size
        + plaintext_size // PAGE_TABLE_DIVISOR
        + MANIFEST_BYTES_FACTOR * manifest_size
        + FILE_OVERHEAD * file_count
        + source_buffers
    )
    budget = memory_limit - fixed - reserve
    fit = budget // (2 * per_buffer) if budget > 0 else 0
    workers = min(want, fit)
    if workers >= 1:
        return BufferPlan(
            workers, 2 * workers, 2 * workers * per_buffer, budget, memory_limit, cpus
        )
    if budget >= per_buffer:  # one worker, one pair: reading and decrypting alternate
        return BufferPlan(1, 1, per_buffer, budget, memory_limit, cpus)
    raise BufferBudgetError(
        f"the bundle's chunk size ({chunk_size / MiB:.1f} MiB) needs at least "
        f"{per_buffer / MiB:.1f} MiB of buffers, but the memory limit of "
        f"{memory_limit / MiB:.0f} MiB leaves {max(budget, 0) / MiB:.1f} MiB after the model "
        f"({plaintext_size / MiB:.1f} MiB in tmpfs, charged to this container), the manifest "
        f"and {reserve / MiB:.0f} MiB for the process itself; raise the unsealer's memory "
        "limit (unsealer_memory_mib) or reseal with a smaller --chunk-size"
    )


# ---------------------------------------------------------------------- core dumps


def dump_state() -> dict[str, int | None]:
    """This process's core-file limit (hard) and dumpable flag (None off Linux)."""
    dumpable: int | None = None
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        dumpable = int(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0))
    return {"core_limit": resource.getrlimit(resource.RLIMIT_CORE)[1], "dumpable": dumpable}


def harden_process() -> dict[str, int | None]:
    """No core dumps, not dumpable. Returns `dump_state()` after the change."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"prctl(PR_SET_DUMPABLE, 0) failed: {os.strerror(err)}")
    return dump_state()


__all__ = [
    "BASE_RESERVE",
    "BufferBudgetError",
    "BufferPlan",
    "available_cpus",
    "cgroup_memory_limit",
    "dump_state",
    "harden_process",
    "machine_memory",
    "memory_limit",
    "plan_buffers",
]
