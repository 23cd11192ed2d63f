"""Files the gateway follows: re-read when they change, refused (fail closed) when broken.

Kubernetes updates a mounted ConfigMap or Secret by swapping a symlink, so a change shows
as another inode, size or mtime of the file the path resolves to; ``poll`` compares those
and re-reads on any difference. A file that is missing or does not parse leaves the
gateway with *no* value (every request is refused with 503 and the reason) rather than
with a stale one: a stale license could be one that has since been revoked.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Change:
    what: Literal["loaded", "invalid", "missing"]
    message: str


class WatchedFile(Generic[T]):
    def __init__(self, path: Path, parse: Callable[[bytes], T], name: str) -> None:
        self.path = Path(path)
        self.parse = parse
        self.name = name
        self.value: T | None = None
        self.error: str | None = f"{name} not loaded yet"
        self.loads = 0
        self._signature: tuple[int, int, int, int] | None = None

    def poll(self) -> Change | None:
        """Re-read the file if it changed; returns what happened, or None."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self._signature == (-1, -1, -1, -1):
                return None
            self._signature = (-1, -1, -1, -1)
            self.value = None
            self.error = f"{self.name} {self.path} cannot be read: {exc.strerror or exc}"
            return Change("missing", self.error)
        signature = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if signature == self._signature:
            return None
        self._signature = signature
        try:
            data = self.path.read_bytes()
            value = self.parse(data)
        except (OSError, ValueError) as exc:
            self.value = None
            self.error = str(exc) if isinstance(exc, ValueError) else f"{self.name}: {exc}"
            return Change("invalid", self.error)
        self.value = value
        self.error = None
        self.loads += 1
        return Change("loaded", f"{self.name} loaded from {self.path}")
