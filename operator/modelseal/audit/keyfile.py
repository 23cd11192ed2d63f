"""Reading a secret from a mounted file (HMAC checkpoint key, tokens)."""

from __future__ import annotations

from pathlib import Path


def read_key(path: Path) -> bytes:
    """The file's bytes with one trailing newline removed; an empty file is an error."""
    data = Path(path).read_bytes()
    if data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise ValueError(f"key file {path} is empty")
    return data
