"""Unseal a bundle stream into a directory: verify, decrypt in parallel, publish atomically.

Used by the unsealer role and by `modelseal unseal`. The steps:

1. refuse a destination whose parent is not tmpfs/ramfs (unless `allow_non_tmpfs`), and
   one whose filesystem lacks room for the plaintext size the header declares;
2. unwrap the data key through the caller's `unwrap` (Vault Transit), check it against the
   header's key commitment, and keep only the derived cipher;
3. size the worker pool and chunk buffers to the container's memory limit (`limits`),
   refusing a header whose chunk size cannot fit, before the key is unwrapped;
4. create every file in a private staging directory (mode 0700) next to the destination,
   in the same filesystem, at its final size, and decrypt into it: with `pwrite` from the
   chunk buffer (few workers), or straight into one shared memory map of each file (many
   workers: `pwrite` writers of one file queue on its inode lock, map writers do not);
   a chunk whose tag fails has its range zeroed at once;
5. when every chunk, the manifest, the trailer, the digest pin and the signature check out,
   set the modes and rename the staging directory to the destination in one step.

On any failure the staging directory is overwritten with zeros and removed, so no
plaintext byte stays behind, and the error propagates. Nothing here logs or raises key
bytes or plaintext.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import mmap
import os
import secrets
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from modelseal.crypto import BundleError
from modelseal.crypto import format as fmt
from modelseal.crypto.manifest import Manifest
from modelseal.crypto.pipeline import OpenResult, open_payload
from modelseal.crypto.stream import ChunkCipher, SecretBytes
from modelseal.crypto.workers import Progress

from . import limits

log = logging.getLogger("modelseal.unsealer")

TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
MEMORY_FS = {"tmpfs": TMPFS_MAGIC, "ramfs": RAMFS_MAGIC}
STAGING_PREFIX = ".modelseal-staging-"
_OPEN_FDS_LIMIT = 512
_ZEROS = bytes(1 << 20)
WRITE_MODES = ("auto", "pwrite", "mmap")
MMAP_MIN_WORKERS = 4  # below this, pwrite costs less CPU than page faults (docs/unsealer.md)
_MAX_MAPS = 4096  # files mapped at once (vm.max_map_count is 65530); more go by pwrite


class UnsealError(Exception):
    """The unseal cannot proceed (bad target, no room, key mismatch...)."""


class NotTmpfsError(UnsealError):
    """The target is not a memory filesystem."""


# ------------------------------------------------------------------------- filesystem


def _statfs_magic(path: Path) -> int | None:
    """f_type of statfs(2), or None when it cannot be called (not Linux/glibc 64-bit)."""
    if sys.platform != "linux" or ctypes.sizeof(ctypes.c_long) != 8:
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on 64-bit
        if libc.statfs(os.fsencode(path), buf) != 0:
            return None
    except (OSError, AttributeError):
        return None
    return int.from_bytes(buf.raw[:8], sys.byteorder, signed=False)


def _unescape_mount(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mountinfo_fstype(path: Path, mountinfo: str | None = None) -> str | None:
    """fstype of the mount that holds `path`, from /proc/self/mountinfo."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    target = os.path.realpath(path)
    best, best_type = "", None
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5 or not right.split():
            continue
        mount_point = _unescape_mount(fields[4])
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, right.split()[0]
    return best_type


def filesystem_type(path: Path) -> str:
    """'tmpfs', 'ramfs', or a description of another filesystem."""
    magic = _statfs_magic(path)
    if magic is not None:
        for name, value in MEMORY_FS.items():
            if magic == value:
                return name
        return _mountinfo_fstype(path) or f"magic 0x{magic:08x}"
    return _mountinfo_fstype(path) or "unknown"


def check_memory_fs(path: Path, allow_non_tmpfs: bool) -> str:
    fstype = filesystem_type(path)
    if fstype in MEMORY_FS:
        return fstype
    if allow_non_tmpfs:
        log.warning(
            "target %s is %s, not tmpfs: decrypted model files will reach that filesystem "
            "(allowed by the development flag)",
            path,
            fstype,
        )
        return fstype
    raise NotTmpfsError(
        f"refusing to unseal into {path}: it is on {fstype}, not tmpfs; plaintext may only "
        "live in memory (mount an emptyDir with medium: Memory; for development only: "
        "--allow-non-tmpfs, or MODELSEAL_ALLOW_NON_TMPFS=true for the unsealer)"
    )


def check_room(path: Path, header: fmt.BundleHeader) -> None:
    core = header.core
    st = os.statvfs(path)
    block = st.f_frsize or 4096
    need = core.plaintext_size + (core.file_count + 1) * block
    free = st.f_bavail * block
    if need > free:
        raise UnsealError(
            f"{path} has {free} bytes free, the bundle needs about {need} "
            f"(plaintext size {core.plaintext_size}); size the memory volume from the "
            "bundle's plaintext size"
        )
    if st.f_files and st.f_favail < core.file_count + 1:
        raise UnsealError(f"{path} has too few free inodes for {core.file_count} files")


def peak_rss_kib() -> int | None:
    """This process's peak resident set (VmHWM), in KiB; None where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


# ----------------------------------------------------------------------------- wiping


def wipe_tree(path: Path, overwrite: bool = True) -> None:
    """Overwrite every regular file under `path` with zeros, then remove the tree.

    Never follows symlinks. Best effort: keeps going past errors, raises the first one at
    the end if something could not be removed.
    """
    first_error: OSError | None = None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        _wipe_file(path, overwrite)
        return
    for root, dirs, files, root_fd in os.fwalk(path, topdown=False, follow_symlinks=False):
        for name in files + dirs:
            try:
                st = os.lstat(name, dir_fd=root_fd)
                if stat.S_ISDIR(st.st_mode):
                    os.chmod(name, 0o700, dir_fd=root_fd)
                    os.rmdir(name, dir_fd=root_fd)
                    continue
                if overwrite and stat.S_ISREG(st.st_mode) and st.st_size:
                    _zero(name, st.st_size, root_fd)
                os.unlink(name, dir_fd=root_fd)
            except FileNotFoundError:
                continue
            except OSError as exc:
                first_error = first_error or exc
        del root
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        first_error = first_error or exc
    if first_error is not None:
        raise UnsealError(f"could not wipe {path} completely: {first_error.strerror}")


def _zero(name: str | Path, size: int, dir_fd: int | None = None) -> None:
    """Overwrite the data extents of a file with zeros (holes hold nothing to wipe, and
    writing zeros there would only allocate memory)."""
    fd = os.open(name, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data after pos
                    break
                start = pos  # no SEEK_DATA support: zero everything
            try:
                end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            except OSError:
                end = size
            while start < end:
                start += os.pwrite(fd, memoryview(_ZEROS)[: min(len(_ZEROS), end - start)], start)
            pos = end
    finally:
        os.close(fd)


def _wipe_file(path: Path, overwrite: bool) -> None:
    st = os.lstat(path)
    if overwrite and stat.S_ISREG(st.st_mode) and st.st_size:
        _zero(path, st.st_size)
    os.unlink(path)


# ---------------------------------------------------------------------------- writing


class DirectorySink:
    """Creates the manifest's tree under a staging directory, every file at its final size,
    and writes file pieces (pwrite), or with `mode="mmap"` also offers the destination
    memory itself (`direct`) so that chunks are decrypted straight into the file."""

    def __init__(self, root: Path, manifest: Manifest, mode: str = "pwrite") -> None:
        if mode not in ("pwrite", "mmap"):
            raise ValueError(f"unknown write mode {mode!r}")
        self.root = root
        self.manifest = manifest
        self.files = manifest.files
        self.fds: list[int] = []
        self.mode = mode
        self._lock = threading.Lock()
        self._maps: dict[int, mmap.mmap] = {}
        access = os.O_RDWR if mode == "mmap" else os.O_WRONLY  # a map needs read access
        self._access = access
        for entry in manifest.entries:
            if entry.type == "dir":
                (root / entry.path).mkdir(mode=0o700, parents=True, exist_ok=True)
        keep_open = len(self.files) <= _OPEN_FDS_LIMIT
        for entry in self.files:
            target = root / entry.path
            target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(
                target,
                access | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
            if entry.size:
                os.ftruncate(fd, entry.size)  # final size now; pieces land in any order
            if keep_open:
                self.fds.append(fd)
            else:
                os.close(fd)

    def write(self, file_index: int, offset: int, data: memoryview) -> None:
        if self.fds:
            _pwrite_all(self.fds[file_index], data, offset)
            return
        path = self.root / self.files[file_index].path
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            _pwrite_all(fd, data, offset)
        finally:
            os.close(fd)

    def _file_map(self, file_index: int) -> mmap.mmap | None:
        """The whole file mapped shared (once, on first use; unmapped by `close`)."""
        with self._lock:
            mm = self._maps.get(file_index)
            if mm is not None or len(self._maps) >= _MAX_MAPS:
                return mm
            size = self.files[file_index].size
            fd = self.fds[file_index] if self.fds else None
            own_fd = fd is None
            if fd is None:
                path = self.root / self.files[file_index].path
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            finally:
                if own_fd:
                    os.close(fd)  # the map keeps the file
            self._maps[file_index] = mm
            return mm

    @contextmanager
    def _range(self, mm: mmap.mmap, offset: int, length: int) -> Iterator[memoryview]:
        whole = memoryview(mm)
        view = whole[offset : offset + length]
        try:
            yield view
        finally:
            view.release()
            whole.release()

    def direct(
        self, file_index: int, offset: int, length: int
    ) -> AbstractContextManager[memoryview] | None:
        """Writable memory of [offset, offset + length) of a file (mmap mode only): a
        slice of one shared map of the whole file, so that writers of one file share no
        lock and nothing is mapped or unmapped per chunk."""
        if self.mode != "mmap" or length <= 0:
            return None
        mm = self._file_map(file_index)
        return None if mm is None else self._range(mm, offset, length)

    def close(self) -> None:
        with self._lock:
            maps, self._maps = self._maps, {}
        for mm in maps.values():
            with suppress(BufferError):  # a view still referenced (traceback): GC unmaps
                mm.close()
        fds, self.fds = self.fds, []
        for fd in fds:
            os.close(fd)

    def finalize_modes(self) -> None:
        listed = {e.path for e in self.manifest.entries}
        implicit = {
            "/".join(parts[:depth])
            for parts in (e.path.split("/") for e in self.manifest.entries)
            for depth in range(1, len(parts))
        } - listed
        for rel in implicit:
            os.chmod(self.root / rel, 0o755)  # noqa: S103 - Triton (same pod) reads the tree
        for entry in reversed(self.manifest.entries):
            path = self.root / entry.path
            if entry.type == "file":
                os.chmod(path, entry.mode & 0o755)
            else:
                os.chmod(path, (entry.mode & 0o755) | 0o700)
        os.chmod(self.root, 0o755)  # noqa: S103 - Triton (same pod) reads the tree


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while len(data):
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


# ---------------------------------------------------------------------------- unseal


@dataclass(frozen=True)
class UnsealOptions:
    workers: int = 0
    pinned_digest: bytes | None = None
    trusted_keys: Sequence[Ed25519PublicKey] | None = None
    allow_non_tmpfs: bool = False
    expected_key_name: str | None = None
    progress: Progress | None = None
    wipe_overwrite: bool = True
    compute_digest: bool = True  # False: skip hashing unless a pin or trusted keys need it
    # "auto": mmap from MMAP_MIN_WORKERS workers up, else pwrite. When "auto", the
    # development variable MODELSEAL_UNSEAL_WRITE_MODE may force one (benchmarks).
    write_mode: str = "auto"
    # Injected for tests; None: read the cgroup / the machine.
    memory_limit: int | None = None
    cpus: int | None = None


@dataclass(frozen=True)
class UnsealReport:
    destination: Path
    header: fmt.BundleHeader
    result: OpenResult
    fstype: str
    seconds: float
    plan: limits.BufferPlan | None = None
    write_mode: str = ""

    @property
    def digest(self) -> str | None:
        return fmt.format_digest(self.result.digest) if self.result.digest else None


Unwrap = Callable[[fmt.Envelope], SecretBytes]


def unseal_stream(
    stream: fmt.ReadStream,
    destination: Path,
    unwrap: Unwrap,
    options: UnsealOptions | None = None,
    on_header: Callable[[fmt.BundleHeader], None] | None = None,
) -> UnsealReport:
    """Unseal the bundle read from `stream` into `destination` (which must not exist)."""
    opts = options or UnsealOptions()
    started = time.monotonic()
    destination = Path(os.path.abspath(destination))
    parent = destination.parent
    if not parent.is_dir():
        raise UnsealError(f"{parent} does not exist or is not a directory")
    if os.path.lexists(destination):
        raise UnsealError(f"{destination} already exists; refusing to overwrite it")
    fstype = check_memory_fs(parent, opts.allow_non_tmpfs)

    header = fmt.read_header(stream)
    if on_header is not None:
        on_header(header)
    env = header.envelope
    if opts.expected_key_name and env.key_name != opts.expected_key_name:
        raise UnsealError(
            f"the bundle's data key is wrapped by Transit key {env.key_name!r}, but this "
            f"unsealer may use only {opts.expected_key_name!r}"
        )
    check_room(parent, header)
    plan = plan_unseal(header, opts, source_buffers=int(getattr(stream, "buffer_bytes", 0)))
    write_mode = choose_write_mode(opts.write_mode, plan.workers)

    key = unwrap(env)
    try:
        cipher = ChunkCipher(header, key)
    finally:
        key.wipe()
    log.info("unseal plan: %s; writes: %s", plan.describe(), write_mode)

    staging = parent / f"{STAGING_PREFIX}{destination.name}-{secrets.token_hex(6)}"
    os.mkdir(staging, 0o700)
    sinks: list[DirectorySink] = []
    try:

        def on_manifest(manifest: Manifest) -> DirectorySink:
            sinks.append(DirectorySink(staging, manifest, write_mode))
            return sinks[-1]

        result = open_payload(
            header,
            stream,
            cipher,
            on_manifest,
            workers=plan.workers,
            window=plan.window,
            pinned_digest=opts.pinned_digest,
            trusted_keys=opts.trusted_keys,
            progress=opts.progress,
            compute_digest=opts.compute_digest,
        )
        sink = sinks[0]
        sink.close()
        sink.finalize_modes()
        try:
            os.rename(staging, destination)
        except OSError as exc:
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                raise UnsealError(f"{destination} appeared while unsealing") from None
            raise
    except BaseException:
        for s in sinks:
            s.close()
        try:
            wipe_tree(staging, overwrite=opts.wipe_overwrite)
        except Exception as wipe_exc:  # report, but the original error matters more
            log.error("cleanup after a failed unseal: %s", wipe_exc)
        raise
    return UnsealReport(
        destination,
        header,
        result,
        fstype,
        time.monotonic() - started,
        plan,
        write_mode,
    )


def plan_unseal(
    header: fmt.BundleHeader, opts: UnsealOptions, source_buffers: int = 0
) -> limits.BufferPlan:
    """Workers and buffers for this bundle within the memory limit (refused if none fit)."""
    core = header.core
    if opts.memory_limit is not None:
        limit: int | None = opts.memory_limit
    else:
        limit, _source = limits.memory_limit()
    try:
        return limits.plan_buffers(
            cpus=opts.cpus or limits.available_cpus(),
            chunk_size=core.chunk_size,
            plaintext_size=core.plaintext_size,
            manifest_size=core.manifest_size,
            file_count=core.file_count,
            memory_limit=limit,
            requested_workers=opts.workers,
            source_buffers=source_buffers,
        )
    except limits.BufferBudgetError as exc:
        raise UnsealError(str(exc)) from None


def choose_write_mode(requested: str, workers: int) -> str:
    mode = requested
    if mode == "auto":
        mode = os.environ.get("MODELSEAL_UNSEAL_WRITE_MODE", "").strip().lower() or "auto"
    if mode not in WRITE_MODES:
        raise UnsealError(f"unknown write mode {mode!r} (one of {', '.join(WRITE_MODES)})")
    if mode == "auto":
        mode = "mmap" if workers >= MMAP_MIN_WORKERS else "pwrite"
    return mode


def clean_stale_staging(parent: Path, overwrite: bool = True) -> int:
    """Remove staging directories a crashed unseal left behind; returns how many."""
    count = 0
    try:
        names = os.listdir(parent)
    except OSError:
        return 0
    for name in names:
        if name.startswith(STAGING_PREFIX):
            wipe_tree(parent / name, overwrite=overwrite)
            count += 1
    return count


__all__ = [
    "BundleError",
    "NotTmpfsError",
    "UnsealError",
    "UnsealOptions",
    "UnsealReport",
    "check_memory_fs",
    "clean_stale_staging",
    "filesystem_type",
    "unseal_stream",
    "wipe_tree",
]
