"""Keys and the chunked AEAD (AES-256-GCM in the STREAM construction).

- The data key (32 random bytes from Vault Transit `datakey`) never encrypts directly:
  HKDF-SHA256(data key, salt=bundle_id) derives the payload key and a key commitment that
  the core header carries, so a wrong or swapped key is caught before any chunk is touched.
- Chunk i is sealed with nonce = nonce_prefix (7) || u32be(i) || last-flag (1 byte: 1 for the
  final chunk, else 0) and associated data = SHA-256("modelseal/v1/header\\0" || core region).
  Reordering, dropping, duplicating, truncating, splicing from another bundle and bit flips
  all fail authentication.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from .errors import AuthenticationError
from .format import NONCE_PREFIX_SIZE, TAG_SIZE, BundleHeader

DATA_KEY_SIZE = 32
_INFO_PAYLOAD = b"modelseal/v1/payload-key"
_INFO_COMMIT = b"modelseal/v1/key-commitment"
_AAD_DOMAIN = b"modelseal/v1/header\x00"
_NONCE_TAIL = struct.Struct(">IB")


class SecretBytes:
    """Key bytes that refuse to show themselves in repr, str, format or pickles.

    Wipe it (overwrite with zeros) as soon as it is no longer needed.
    """

    __slots__ = ("_buf",)

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._buf = bytearray(data)

    def __len__(self) -> int:
        return len(self._buf)

    def reveal(self) -> bytes:
        return bytes(self._buf)

    def wipe(self) -> None:
        for i in range(len(self._buf)):
            self._buf[i] = 0

    def __repr__(self) -> str:
        return f"SecretBytes(<{len(self._buf)} bytes hidden>)"

    __str__ = __repr__

    def __format__(self, spec: str) -> str:
        return repr(self)

    def __reduce__(self) -> NoReturn:
        raise TypeError("SecretBytes cannot be pickled")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretBytes):
            return NotImplemented
        return hmac.compare_digest(bytes(self._buf), bytes(other._buf))

    __hash__ = None  # type: ignore[assignment]


def _hkdf(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def key_commitment(data_key: SecretBytes, bundle_id: bytes) -> bytes:
    """Public value that binds the bundle to its data key (reveals nothing about it)."""
    return _hkdf(data_key.reveal(), bundle_id, _INFO_COMMIT)


def header_aad(header: BundleHeader) -> bytes:
    return hashlib.sha256(_AAD_DOMAIN + header.core_region).digest()


def chunk_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    return prefix + _NONCE_TAIL.pack(index, 1 if last else 0)


class ChunkCipher:
    """Encrypts/decrypts chunk records of one bundle. Thread-safe; releases the GIL."""

    def __init__(self, header: BundleHeader, data_key: SecretBytes) -> None:
        core = header.core
        if len(data_key) != DATA_KEY_SIZE:
            raise AuthenticationError("the data key has the wrong length for this bundle")
        if not hmac.compare_digest(key_commitment(data_key, core.bundle_id), core.key_commitment):
            raise AuthenticationError(
                "the data key does not match this bundle's key commitment (wrong Transit "
                "key, or a tampered key envelope)"
            )
        assert len(core.nonce_prefix) == NONCE_PREFIX_SIZE
        self._aead = AESGCM(_hkdf(data_key.reveal(), core.bundle_id, _INFO_PAYLOAD))
        self._prefix = core.nonce_prefix
        self._aad = header_aad(header)
        self._count = core.chunk_count
        self._core = core

    def _nonce(self, index: int) -> bytes:
        if not 0 <= index < self._count:
            raise AuthenticationError(f"chunk index {index} is outside the bundle")
        return chunk_nonce(self._prefix, index, index == self._count - 1)

    def encrypt_into(self, index: int, plain: memoryview, out: memoryview) -> None:
        """Seal chunk `index`: `out` must be len(plain) + 16 bytes."""
        if len(plain) != self._core.chunk_plain_len(index):
            raise ValueError("chunk has the wrong plaintext length")
        self._aead.encrypt_into(self._nonce(index), plain, self._aad, out)

    def decrypt_into(self, index: int, record: memoryview, out: memoryview) -> None:
        """Open chunk `index` into `out` (len(record) - 16 bytes): any writable buffer, a
        shared memory map of the destination file included.

        On failure `out` holds unauthenticated bytes (AES-GCM writes the plaintext before
        it checks the tag): callers must wipe it and never use it.
        """
        if len(record) != self._core.chunk_plain_len(index) + TAG_SIZE:
            raise AuthenticationError(f"chunk {index} has the wrong length")
        try:
            self._aead.decrypt_into(self._nonce(index), record, self._aad, out)
        except InvalidTag:
            raise AuthenticationError(
                f"chunk {index} of {self._count} failed authentication (the bundle was "
                "modified, truncated, reordered or spliced, or the key is wrong)"
            ) from None
