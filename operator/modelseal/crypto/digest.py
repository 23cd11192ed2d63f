"""The bundle digest (`sha256tree:<hex>`): what a ProtectedModel pins.

    leaf_i = SHA-256(chunk record i)                         (ciphertext || tag)
    digest = SHA-256("modelseal/v1/digest\\0" || SHA-256(core region)
                     || u64be(chunk count) || leaf_0 || ... || leaf_{n-1})

It covers the core header (sizes, manifest digest, key commitment, ...) and every
ciphertext byte, so it changes with any change of content. It leaves out the key envelope
(so `rewrap` keeps the pin valid; a swapped envelope fails the key commitment) and the
trailer (so signing does not change the pin). Leaves are hashed in parallel by the workers
that decrypt the chunks; the root folds them in order with bounded memory.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
import threading

from .errors import DigestMismatchError
from .format import BundleHeader, format_digest

_DOMAIN = b"modelseal/v1/digest\x00"


def leaf_hash(record: memoryview | bytes | bytearray) -> bytes:
    return hashlib.sha256(record).digest()


class TreeDigest:
    """Accumulates leaves in any order (thread-safe); memory holds only out-of-order ones."""

    def __init__(self, header: BundleHeader) -> None:
        self._count = header.core.chunk_count
        self._root = hashlib.sha256(_DOMAIN)
        self._root.update(hashlib.sha256(header.core_region).digest())
        self._root.update(struct.pack(">Q", self._count))
        self._next = 0
        self._pending: dict[int, bytes] = {}
        self._lock = threading.Lock()

    def add(self, index: int, leaf: bytes) -> None:
        with self._lock:
            if index < self._next or index in self._pending or index >= self._count:
                raise ValueError(f"leaf {index} added twice or out of range")
            self._pending[index] = leaf
            while self._next in self._pending:
                self._root.update(self._pending.pop(self._next))
                self._next += 1

    def finish(self) -> bytes:
        with self._lock:
            if self._next != self._count:
                raise ValueError(f"digest has {self._next} of {self._count} leaves")
            return self._root.digest()


def check_pin(actual: bytes, pinned: bytes | None) -> None:
    if pinned is not None and not hmac.compare_digest(actual, pinned):
        raise DigestMismatchError(
            f"bundle digest {format_digest(actual)} does not match the pinned digest "
            f"{format_digest(pinned)}"
        )
