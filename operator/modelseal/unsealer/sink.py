"""Writing the unsealed files: a staging tree of files at their final size, by pwrite
from the chunk buffers or straight into a shared memory map of each file.

`choose_write_mode` picks one (docs/unsealer.md: `pwrite` writers of one file queue on
its inode lock, map writers do not; below `MMAP_MIN_WORKERS` page faults cost more).
"""

from __future__ import annotations

import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

from modelseal.crypto.manifest import Manifest

from .errors import UnsealError

_OPEN_FDS_LIMIT = 512
WRITE_MODES = ("auto", "pwrite", "mmap")
MMAP_MIN_WORKERS = 4  # below this, pwrite costs less CPU than page faults (docs/unsealer.md)
_MAX_MAPS = 4096  # files mapped at once (vm.max_map_count is 65530); more go by pwrite


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


def choose_write_mode(requested: str, workers: int) -> str:
    mode = requested
    if mode == "auto":
        mode = os.environ.get("MODELSEAL_UNSEAL_WRITE_MODE", "").strip().lower() or "auto"
    if mode not in WRITE_MODES:
        raise UnsealError(f"unknown write mode {mode!r} (one of {', '.join(WRITE_MODES)})")
    if mode == "auto":
        mode = "mmap" if workers >= MMAP_MIN_WORKERS else "pwrite"
    return mode
