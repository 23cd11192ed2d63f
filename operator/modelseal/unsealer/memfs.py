"""The destination's filesystem: memory-only (tmpfs/ramfs) with room, and wiping.

`check_memory_fs` refuses a destination whose filesystem keeps bytes on a disk (unless
allowed); `check_room` one without room for the declared plaintext and files;
`wipe_tree` overwrites every file with zeros before removing a tree (a failed unseal's
staging directory, a revoked model's repository); `clean_stale_staging` removes what a
crashed unseal left behind.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
import sys
from pathlib import Path

from modelseal.crypto import format as fmt

from .errors import NotTmpfsError, UnsealError

log = logging.getLogger("modelseal.unsealer")

TMPFS_MAGIC = 0x01021994
RAMFS_MAGIC = 0x858458F6
MEMORY_FS = {"tmpfs": TMPFS_MAGIC, "ramfs": RAMFS_MAGIC}
STAGING_PREFIX = ".modelseal-staging-"
_ZEROS = bytes(1 << 20)


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
