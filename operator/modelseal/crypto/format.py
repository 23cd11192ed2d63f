"""The sealed bundle container (format version 1): byte layout, header fields, limits.

See docs/bundle-format.md for the normative description. In short::

    prefix    20 bytes   magic, version, flags, core_len, envelope_len
    core      core_len   canonical JSON; bound into every chunk as associated data
    envelope  env_len    canonical JSON; the Transit-wrapped data key (rewrap replaces it)
    records   n * ...    chunk i = AES-256-GCM(plaintext chunk i) || 16-byte tag
    trailer   12 + len   b"MSEALSIG", u32 len, canonical JSON (publisher signatures)

This module is pure: it parses and builds bytes and reads only from file-like streams.
"""

from __future__ import annotations

import base64
import re
import struct
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, NamedTuple, Protocol

from . import _json
from .errors import FormatError, TruncatedError

MAGIC: Final = b"\x89MSEAL\r\n"
TRAILER_MAGIC: Final = b"MSEALSIG"
FORMAT_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = frozenset({1})

PREFIX = struct.Struct(">8sHHII")
PREFIX_SIZE: Final = PREFIX.size  # 20
TRAILER_HEAD = struct.Struct(">8sI")
TRAILER_HEAD_SIZE: Final = TRAILER_HEAD.size  # 12
TAG_SIZE: Final = 16
NONCE_PREFIX_SIZE: Final = 7
BUNDLE_ID_SIZE: Final = 16

CIPHER: Final = "aes-256-gcm-stream"
KDF: Final = "hkdf-sha256"
KMS_VAULT_TRANSIT: Final = "vault-transit"

# Limits. A header outside them is refused before anything is allocated or decrypted.
MAX_CORE_LEN: Final = 64 * 1024
MAX_ENVELOPE_LEN: Final = 16 * 1024
MAX_TRAILER_LEN: Final = 64 * 1024
MIN_CHUNK_SIZE: Final = 4 * 1024
MAX_CHUNK_SIZE: Final = 64 * 1024 * 1024
DEFAULT_CHUNK_SIZE: Final = 1024 * 1024
MAX_MANIFEST_SIZE: Final = 64 * 1024 * 1024
MAX_PLAINTEXT_SIZE: Final = 1 << 50  # 1 PiB
MAX_FILE_COUNT: Final = 1_000_000
MAX_CHUNK_COUNT: Final = (1 << 32) - 1
MAX_SIGNATURES: Final = 16

_DIGEST_RE: Final = re.compile(r"(sha256tree|blake3tree):([0-9a-f]{64})")
_KEY_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_MOUNT_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_WRAPPED_RE: Final = re.compile(r"^vault:v([1-9][0-9]{0,9}):[A-Za-z0-9+/=]{1,4000}$")


class DigestAlgorithm(StrEnum):
    """How a bundle digest hashes the chunk records: the name before the colon of a pin.

    Both cover the same bytes in the same tree (``modelseal.crypto.digest``); either can be
    computed from any bundle without its key, so a bundle may be pinned by either."""

    #: SHA-256 (a FIPS-approved hash): about 0.6 s of CPU per GiB with SHA-NI
    SHA256_TREE = "sha256tree"
    #: BLAKE3 (the default for new seals): about 0.15 s per GiB on the same core, the
    #: difference being 40 % of an unseal's CPU (docs/unsealer.md)
    BLAKE3_TREE = "blake3tree"


DEFAULT_DIGEST_ALGORITHM: Final = DigestAlgorithm.BLAKE3_TREE


class BundleDigest(NamedTuple):
    """A bundle digest: its algorithm and its 32 bytes (``str()`` gives the pin text)."""

    algorithm: DigestAlgorithm
    value: bytes

    def __str__(self) -> str:
        return f"{self.algorithm.value}:{self.value.hex()}"


class ReadStream(Protocol):
    """What readers need from a stream (files, BytesIO, bundle sources)."""

    def read(self, size: int = -1, /) -> bytes | None: ...

    def readinto(self, buffer: Any, /) -> int | None: ...


@dataclass(frozen=True)
class Prefix:
    version: int
    flags: int
    core_len: int
    envelope_len: int

    def pack(self) -> bytes:
        return PREFIX.pack(MAGIC, self.version, self.flags, self.core_len, self.envelope_len)


def parse_prefix(data: bytes) -> Prefix:
    if len(data) < PREFIX_SIZE:
        raise TruncatedError(f"bundle is shorter than its {PREFIX_SIZE}-byte prefix")
    magic, version, flags, core_len, env_len = PREFIX.unpack(data[:PREFIX_SIZE])
    if magic != MAGIC:
        raise FormatError("not a modelseal bundle (bad magic bytes)")
    if version not in SUPPORTED_VERSIONS:
        raise FormatError(
            f"unsupported bundle format version {version} (this reader supports "
            f"{sorted(SUPPORTED_VERSIONS)})"
        )
    if flags != 0:
        raise FormatError(f"unknown header flags 0x{flags:04x}")
    if not 2 <= core_len <= MAX_CORE_LEN:
        raise FormatError(f"core header length {core_len} is outside [2, {MAX_CORE_LEN}]")
    if not 2 <= env_len <= MAX_ENVELOPE_LEN:
        raise FormatError(f"key envelope length {env_len} is outside [2, {MAX_ENVELOPE_LEN}]")
    return Prefix(version, flags, core_len, env_len)


@dataclass(frozen=True)
class CoreHeader:
    """Immutable header fields; its bytes are authenticated by every chunk."""

    bundle_id: bytes
    chunk_size: int
    nonce_prefix: bytes
    key_commitment: bytes
    manifest_size: int
    manifest_sha256: bytes
    plaintext_size: int  # bytes of file data the model occupies once unsealed
    file_count: int
    created_at: str = ""
    model_name: str = ""

    @property
    def payload_size(self) -> int:
        """Bytes of the encrypted stream: the manifest followed by every file's data."""
        return self.manifest_size + self.plaintext_size

    @property
    def chunk_count(self) -> int:
        return -(-self.payload_size // self.chunk_size)

    def chunk_plain_len(self, index: int) -> int:
        if index < self.chunk_count - 1:
            return self.chunk_size
        return self.payload_size - (self.chunk_count - 1) * self.chunk_size

    @property
    def records_size(self) -> int:
        return self.payload_size + TAG_SIZE * self.chunk_count

    def to_json(self) -> dict[str, object]:
        obj: dict[str, object] = {
            "bundle_id": self.bundle_id.hex(),
            "cipher": CIPHER,
            "kdf": KDF,
            "chunk_size": self.chunk_size,
            "nonce_prefix": self.nonce_prefix.hex(),
            "key_commitment": self.key_commitment.hex(),
            "manifest_size": self.manifest_size,
            "manifest_sha256": self.manifest_sha256.hex(),
            "plaintext_size": self.plaintext_size,
            "file_count": self.file_count,
        }
        if self.created_at:
            obj["created_at"] = self.created_at
        if self.model_name:
            obj["model_name"] = self.model_name
        return obj

    def pack(self) -> bytes:
        return _json.dumps(self.to_json())


_CORE_FIELDS = {
    "bundle_id",
    "cipher",
    "kdf",
    "chunk_size",
    "nonce_prefix",
    "key_commitment",
    "manifest_size",
    "manifest_sha256",
    "plaintext_size",
    "file_count",
    "created_at",
    "model_name",
}


def parse_core(data: bytes) -> CoreHeader:
    f = _json.Fields(_json.loads_object(data, "core header"), "core header")
    f.only(_CORE_FIELDS)
    if f.string("cipher", 64) != CIPHER:
        raise f.fail(f"unsupported cipher (expected {CIPHER!r})")
    if f.string("kdf", 64) != KDF:
        raise f.fail(f"unsupported kdf (expected {KDF!r})")
    core = CoreHeader(
        bundle_id=f.hex("bundle_id", BUNDLE_ID_SIZE),
        chunk_size=f.integer("chunk_size", MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
        nonce_prefix=f.hex("nonce_prefix", NONCE_PREFIX_SIZE),
        key_commitment=f.hex("key_commitment", 32),
        manifest_size=f.integer("manifest_size", 2, MAX_MANIFEST_SIZE),
        manifest_sha256=f.hex("manifest_sha256", 32),
        plaintext_size=f.integer("plaintext_size", 0, MAX_PLAINTEXT_SIZE),
        file_count=f.integer("file_count", 0, MAX_FILE_COUNT),
        created_at=f.string("created_at", 64, default=""),
        model_name=f.string("model_name", 253, default=""),
    )
    if core.chunk_count > MAX_CHUNK_COUNT:
        raise f.fail(f"{core.chunk_count} chunks exceed the limit of {MAX_CHUNK_COUNT}")
    if core.file_count > core.plaintext_size + core.manifest_size:
        raise f.fail("file_count is larger than the bundle could hold")
    return core


@dataclass(frozen=True)
class Envelope:
    """How the data key is wrapped. Not authenticated by the chunks: `rewrap` replaces it.
    A swapped envelope cannot pass the key commitment in the core header."""

    key_name: str
    key_version: int
    wrapped_key: str
    mount: str = "transit"
    kms: str = KMS_VAULT_TRANSIT

    def to_json(self) -> dict[str, object]:
        return {
            "kms": self.kms,
            "mount": self.mount,
            "key_name": self.key_name,
            "key_version": self.key_version,
            "wrapped_key": self.wrapped_key,
        }

    def pack(self) -> bytes:
        return _json.dumps(self.to_json())


def parse_envelope(data: bytes) -> Envelope:
    f = _json.Fields(_json.loads_object(data, "key envelope"), "key envelope")
    f.only({"kms", "mount", "key_name", "key_version", "wrapped_key"})
    kms = f.string("kms", 64)
    if kms != KMS_VAULT_TRANSIT:
        raise f.fail(f"unsupported kms {kms[:64]!r}")
    mount = f.string("mount", 128)
    if not _MOUNT_RE.match(mount) or ".." in mount.split("/"):
        raise f.fail("mount is not a valid Vault mount path")
    key_name = f.string("key_name", 128)
    if not _KEY_NAME_RE.match(key_name):
        raise f.fail("key_name is not a valid Transit key name")
    key_version = f.integer("key_version", 1, 2**31 - 1)
    wrapped = f.string("wrapped_key", 4096)
    match = _WRAPPED_RE.match(wrapped)
    if not match:
        raise f.fail("wrapped_key is not a Vault Transit ciphertext ('vault:vN:...')")
    if int(match.group(1)) != key_version:
        raise f.fail(
            f"key_version {key_version} does not match the wrapped key's version v{match.group(1)}"
        )
    return Envelope(key_name, key_version, wrapped, mount, kms)


@dataclass(frozen=True)
class SignatureEntry:
    key_id: str
    public_key: bytes
    signature: bytes
    alg: str = "ed25519"
    #: the digest the signature covers; "digest" in the trailer, absent for sha256tree
    #: (so that a bundle signed over sha256tree reads as before everywhere)
    digest_algorithm: DigestAlgorithm = DigestAlgorithm.SHA256_TREE

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {
            "alg": self.alg,
            "key_id": self.key_id,
            "public_key": base64.b64encode(self.public_key).decode(),
            "signature": base64.b64encode(self.signature).decode(),
        }
        if self.digest_algorithm is not DigestAlgorithm.SHA256_TREE:
            out["digest"] = self.digest_algorithm.value
        return out


@dataclass(frozen=True)
class Trailer:
    signatures: tuple[SignatureEntry, ...] = field(default_factory=tuple)

    def pack(self) -> bytes:
        body = _json.dumps({"signatures": [s.to_json() for s in self.signatures]})
        return TRAILER_HEAD.pack(TRAILER_MAGIC, len(body)) + body


def _b64(f: _json.Fields, key: str, nbytes: int) -> bytes:
    value = f.string(key, 4 * ((nbytes + 2) // 3))
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        raise f.fail(f"{key} is not valid base64") from None
    if len(raw) != nbytes:
        raise f.fail(f"{key} must be {nbytes} bytes")
    return raw


def parse_trailer_head(data: bytes) -> int:
    """Check the 12-byte trailer head; return the trailer body length."""
    if len(data) < TRAILER_HEAD_SIZE:
        raise TruncatedError("bundle ends inside its trailer (truncated)")
    magic, length = TRAILER_HEAD.unpack(data[:TRAILER_HEAD_SIZE])
    if magic != TRAILER_MAGIC:
        raise FormatError("bad trailer magic: chunks missing, extra or out of place")
    if not 2 <= length <= MAX_TRAILER_LEN:
        raise FormatError(f"trailer length {length} is outside [2, {MAX_TRAILER_LEN}]")
    return int(length)


def parse_trailer_body(data: bytes) -> Trailer:
    f = _json.Fields(_json.loads_object(data, "trailer"), "trailer")
    f.only({"signatures"})
    entries: list[SignatureEntry] = []
    for i, raw in enumerate(f.items("signatures", MAX_SIGNATURES)):
        if not isinstance(raw, dict):
            raise f.fail(f"signature {i} must be an object")
        g = _json.Fields(raw, f"trailer signature {i}")
        g.only({"alg", "key_id", "public_key", "signature", "digest"})
        if g.string("alg", 32) != "ed25519":
            raise g.fail("unsupported signature algorithm")
        try:
            over = DigestAlgorithm(g.string("digest", 32, DigestAlgorithm.SHA256_TREE.value))
        except ValueError:
            raise g.fail("unsupported digest algorithm") from None
        key_id = g.hex("key_id", 8).hex()
        entries.append(
            SignatureEntry(
                key_id,
                _b64(g, "public_key", 32),
                _b64(g, "signature", 64),
                digest_algorithm=over,
            )
        )
    return Trailer(tuple(entries))


@dataclass(frozen=True)
class BundleHeader:
    """Everything before the chunk records, as parsed, with the raw bytes it came from."""

    prefix: Prefix
    core: CoreHeader
    core_bytes: bytes
    envelope: Envelope

    @property
    def records_offset(self) -> int:
        return PREFIX_SIZE + self.prefix.core_len + self.prefix.envelope_len

    @property
    def trailer_offset(self) -> int:
        return self.records_offset + self.core.records_size

    @property
    def core_region(self) -> bytes:
        """The bytes the chunks authenticate and the digest covers: the prefix fields that
        do not change on rewrap (magic, version, flags, core_len) and the core header."""
        return (
            MAGIC
            + struct.pack(">HHI", self.prefix.version, self.prefix.flags, self.prefix.core_len)
            + self.core_bytes
        )


def build_header(core: CoreHeader, envelope: Envelope) -> tuple[BundleHeader, bytes]:
    """Serialize a header; return its parsed form and the bytes to write."""
    core_bytes = core.pack()
    env_bytes = envelope.pack()
    if len(core_bytes) > MAX_CORE_LEN or len(env_bytes) > MAX_ENVELOPE_LEN:
        raise FormatError("header fields too long")
    prefix = Prefix(FORMAT_VERSION, 0, len(core_bytes), len(env_bytes))
    header = BundleHeader(prefix, core, core_bytes, envelope)
    return header, prefix.pack() + core_bytes + env_bytes


def with_envelope(header: BundleHeader, envelope: Envelope) -> tuple[BundleHeader, bytes]:
    """The same header with another key envelope (rewrap); the core bytes are kept as is."""
    env_bytes = envelope.pack()
    if len(env_bytes) > MAX_ENVELOPE_LEN:
        raise FormatError("key envelope too long")
    prefix = Prefix(
        header.prefix.version, header.prefix.flags, header.prefix.core_len, len(env_bytes)
    )
    new = BundleHeader(prefix, header.core, header.core_bytes, envelope)
    return new, prefix.pack() + header.core_bytes + env_bytes


def read_exact(stream: ReadStream, n: int, what: str) -> bytes:
    """Read exactly n bytes or raise TruncatedError."""
    parts: list[bytes] = []
    remaining = n
    while remaining:
        data = stream.read(remaining)
        if not data:
            raise TruncatedError(f"bundle ends inside its {what} (truncated)")
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


def parse_header_bytes(prefix_bytes: bytes, core_bytes: bytes, env_bytes: bytes) -> BundleHeader:
    prefix = parse_prefix(prefix_bytes)
    core = parse_core(core_bytes)
    envelope = parse_envelope(env_bytes)
    return BundleHeader(prefix, core, core_bytes, envelope)


def read_header(stream: ReadStream) -> BundleHeader:
    """Read and parse the prefix, core header and key envelope from a stream."""
    prefix_bytes = read_exact(stream, PREFIX_SIZE, "prefix")
    prefix = parse_prefix(prefix_bytes)
    core_bytes = read_exact(stream, prefix.core_len, "core header")
    env_bytes = read_exact(stream, prefix.envelope_len, "key envelope")
    return parse_header_bytes(prefix_bytes, core_bytes, env_bytes)


def read_trailer(stream: ReadStream) -> Trailer:
    """Read the trailer that follows the last chunk record and check nothing follows it."""
    length = parse_trailer_head(read_exact(stream, TRAILER_HEAD_SIZE, "trailer"))
    trailer = parse_trailer_body(read_exact(stream, length, "trailer"))
    if stream.read(1):
        raise FormatError("unexpected bytes after the trailer")
    return trailer


def parse_digest(text: str) -> BundleDigest:
    """Parse a pinned digest: 'blake3tree:' or 'sha256tree:' and 64 lowercase hex digits."""
    match = _DIGEST_RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise FormatError(
            "a bundle digest looks like 'blake3tree:' or 'sha256tree:' followed by 64 "
            "lowercase hex digits"
        )
    return BundleDigest(DigestAlgorithm(match[1]), bytes.fromhex(match[2]))


def format_digest(digest: BundleDigest) -> str:
    return str(digest)
