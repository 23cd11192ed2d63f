"""The manifest: the model directory's entries (relative paths, types, sizes, modes).

It is the first part of the encrypted payload; each file's bytes follow in manifest order.
Parsing refuses anything that could write outside the target directory or surprise the
reader: absolute paths, `..`, empty or `.` components, backslashes, control characters,
symlinks and other special files, duplicates, a file used as a directory, and sizes that
do not add up to the header's.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from . import _json
from .errors import ManifestError

MAX_PATH_BYTES: Final = 4096
MAX_COMPONENT_BYTES: Final = 255
MAX_FILE_SIZE: Final = 1 << 50
MODE_MASK: Final = 0o777
SALT_SIZE: Final = 16

EntryType = Literal["file", "dir"]


def check_path(path: object) -> str:
    """Return `path` if it is a safe relative POSIX path, else raise ManifestError."""
    if not isinstance(path, str):
        raise ManifestError("manifest path must be a string")
    shown = repr(path[:200])
    if not path:
        raise ManifestError("manifest path is empty")
    try:
        encoded = path.encode("utf-8", errors="strict")
    except UnicodeEncodeError:
        raise ManifestError(f"manifest path {shown} is not valid UTF-8") from None
    if len(encoded) > MAX_PATH_BYTES:
        raise ManifestError(f"manifest path {shown} is longer than {MAX_PATH_BYTES} bytes")
    if path.startswith("/"):
        raise ManifestError(f"manifest path {shown} is absolute")
    if "\\" in path:
        raise ManifestError(f"manifest path {shown} contains a backslash")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in path):
        raise ManifestError(f"manifest path {shown} contains a control character")
    for part in path.split("/"):
        if part == "..":
            raise ManifestError(f"manifest path {shown} contains '..' (path traversal)")
        if part in ("", "."):
            raise ManifestError(f"manifest path {shown} has an empty or '.' component")
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise ManifestError(f"manifest path {shown} has a component over 255 bytes")
    return path


@dataclass(frozen=True)
class Entry:
    path: str
    type: EntryType
    mode: int
    size: int = 0
    offset: int = 0  # files: offset of its data within the file-data region

    def to_json(self) -> dict[str, object]:
        obj: dict[str, object] = {"path": self.path, "type": self.type, "mode": self.mode}
        if self.type == "file":
            obj["size"] = self.size
        return obj


@dataclass(frozen=True)
class Manifest:
    salt: bytes
    entries: tuple[Entry, ...]

    @property
    def files(self) -> tuple[Entry, ...]:
        return tuple(e for e in self.entries if e.type == "file")

    @property
    def total_size(self) -> int:
        return sum(e.size for e in self.entries if e.type == "file")

    @property
    def top_level_dirs(self) -> list[str]:
        """First path components that are directories: Triton's model names."""
        names: list[str] = []
        for e in self.entries:
            top, sep, _ = e.path.partition("/")
            if (sep or e.type == "dir") and top not in names:
                names.append(top)
        return names

    def pack(self) -> bytes:
        return _json.dumps(
            {"salt": self.salt.hex(), "entries": [e.to_json() for e in self.entries]}
        )

    def digest(self) -> bytes:
        return hashlib.sha256(self.pack()).digest()


def build_manifest(salt: bytes, entries: Iterable[tuple[str, EntryType, int, int]]) -> Manifest:
    """Build and validate a manifest from (path, type, mode, size) tuples in data order."""
    raw = [
        {"path": p, "type": t, "mode": m, **({"size": s} if t == "file" else {})}
        for p, t, m, s in entries
    ]
    return _validate(salt, raw)


def parse_manifest(data: bytes) -> Manifest:
    f = _json.Fields(_json.loads_object(data, "manifest", ManifestError), "manifest", ManifestError)
    f.only({"salt", "entries"})
    salt = f.hex("salt", SALT_SIZE)
    return _validate(salt, f.items("entries", 10_000_000))


def _validate(salt: bytes, raw_entries: Sequence[object]) -> Manifest:
    if len(salt) != SALT_SIZE:
        raise ManifestError("manifest salt must be 16 bytes")
    seen: dict[str, EntryType] = {}
    parents: set[str] = set()
    entries: list[Entry] = []
    offset = 0
    for i, raw in enumerate(raw_entries):
        if not isinstance(raw, dict):
            raise ManifestError(f"manifest entry {i} must be an object")
        f = _json.Fields(raw, f"manifest entry {i}", ManifestError)
        path = check_path(raw.get("path"))
        kind = f.string("type", 16)
        if kind in ("symlink", "link", "hardlink"):
            raise ManifestError(f"manifest entry {path[:200]!r} is a symlink (not allowed)")
        if kind not in ("file", "dir"):
            raise ManifestError(
                f"manifest entry {path[:200]!r} has type {kind!r}; only files and "
                "directories are allowed"
            )
        mode = f.integer("mode", 0, MODE_MASK)
        if path in seen:
            raise ManifestError(f"manifest path {path[:200]!r} appears twice")
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parents.add("/".join(parts[:depth]))
        if kind == "file":
            f.only({"path", "type", "mode", "size"})
            size = f.integer("size", 0, MAX_FILE_SIZE)
            entries.append(Entry(path, "file", mode, size, offset))
            offset += size
            seen[path] = "file"
        else:
            f.only({"path", "type", "mode"})
            entries.append(Entry(path, "dir", mode))
            seen[path] = "dir"
    for path, kind in seen.items():
        if kind == "file" and path in parents:
            raise ManifestError(f"manifest path {path[:200]!r} is a file with entries inside it")
    return Manifest(salt, tuple(entries))


class FileMap:
    """Maps offsets of the file-data region to (file index, offset in that file)."""

    def __init__(self, manifest: Manifest) -> None:
        self.files = manifest.files
        self.starts = [e.offset for e in self.files]
        self.total = manifest.total_size

    def extents(self, start: int, length: int) -> list[tuple[int, int, int, int]]:
        """Split [start, start+length) of the file-data region into pieces.

        Returns (file index, offset in file, offset in the given range, length) tuples.
        Zero-size files get no extents.
        """
        out: list[tuple[int, int, int, int]] = []
        end = min(start + length, self.total)
        pos = start
        i = max(bisect.bisect_right(self.starts, pos) - 1, 0)
        while pos < end and i < len(self.files):
            entry = self.files[i]
            file_end = entry.offset + entry.size
            if file_end <= pos:
                i += 1
                continue
            n = min(end, file_end) - pos
            out.append((i, pos - entry.offset, pos - start, n))
            pos += n
            i += 1
        return out
