"""Local files: a path (a mounted volume, a PVC) or a file:// URI."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .base import SourceError, SourceStream


def local_path(uri: str) -> Path:
    if uri.startswith("file:"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"file URI with a host is not supported: {uri[:200]}")
        return Path(unquote(parts.path))
    return Path(uri)


def open_local(uri: str) -> SourceStream:
    path = local_path(uri)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise SourceError(f"cannot open bundle {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceError(f"bundle {path} is not a regular file")
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
    except BaseException:
        os.close(fd)
        raise
    return SourceStream(
        str(path), lambda view: os.readv(fd, [view]), lambda: os.close(fd), size=st.st_size
    )
