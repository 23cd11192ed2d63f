"""In-memory bundles for tests and tools: no Vault, no files.

`make_bundle` seals a dict of files with a given data key; `raw_bundle` encrypts an
arbitrary payload (for instance a hostile manifest that `build_manifest` would refuse) so
that tests can check what a reader does with bundles only an attacker would write.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import format as fmt
from . import manifest as mf
from . import pipeline, seal
from .digest import TreeDigest
from .stream import ChunkCipher, SecretBytes, key_commitment

TEST_ENVELOPE = fmt.Envelope("test-key", 1, "vault:v1:dGVzdA==")


@dataclass(frozen=True)
class Bundle:
    data: bytes
    digest: fmt.BundleDigest
    header: fmt.BundleHeader

    @property
    def records_offset(self) -> int:
        return self.header.records_offset

    def record_span(self, index: int) -> tuple[int, int]:
        core = self.header.core
        start = self.records_offset + index * (core.chunk_size + fmt.TAG_SIZE)
        return start, start + core.chunk_plain_len(index) + fmt.TAG_SIZE


def files_manifest(files: Mapping[str, bytes], mode: int = 0o644) -> mf.Manifest:
    dirs: list[str] = []
    for path in files:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            d = "/".join(parts[:depth])
            if d not in dirs:
                dirs.append(d)
    entries: list[tuple[str, mf.EntryType, int, int]] = [(d, "dir", 0o755, 0) for d in dirs]
    entries += [(p, "file", mode, len(data)) for p, data in files.items()]
    return mf.build_manifest(os.urandom(mf.SALT_SIZE), entries)


def make_bundle(
    files: Mapping[str, bytes],
    key: SecretBytes,
    *,
    chunk_size: int = 4096,
    envelope: fmt.Envelope = TEST_ENVELOPE,
    sign_key: Ed25519PrivateKey | None = None,
    workers: int = 2,
    digest_algorithm: fmt.DigestAlgorithm = fmt.DEFAULT_DIGEST_ALGORITHM,
) -> Bundle:
    manifest = files_manifest(files)
    core = seal.new_core(manifest, key, chunk_size=chunk_size, model_name="test")
    out = io.BytesIO()
    digest = seal.seal_payload(
        out,
        manifest,
        core,
        envelope,
        key,
        lambda e: io.BytesIO(files[e.path]),
        workers=workers,
        sign_key=sign_key,
        digest_algorithm=digest_algorithm,
    )
    data = out.getvalue()
    header = fmt.read_header(io.BytesIO(data))
    return Bundle(data, digest, header)


def raw_bundle(
    manifest_bytes: bytes,
    file_data: bytes,
    key: SecretBytes,
    *,
    chunk_size: int = 4096,
    file_count: int = 0,
    core_overrides: Mapping[str, object] | None = None,
    envelope: fmt.Envelope = TEST_ENVELOPE,
    digest_algorithm: fmt.DigestAlgorithm = fmt.DEFAULT_DIGEST_ALGORITHM,
) -> Bundle:
    """Encrypt `manifest_bytes || file_data` as a bundle without validating the manifest."""
    bundle_id = os.urandom(fmt.BUNDLE_ID_SIZE)
    core = fmt.CoreHeader(
        bundle_id=bundle_id,
        chunk_size=chunk_size,
        nonce_prefix=os.urandom(fmt.NONCE_PREFIX_SIZE),
        key_commitment=key_commitment(key, bundle_id),
        manifest_size=len(manifest_bytes),
        manifest_sha256=hashlib.sha256(manifest_bytes).digest(),
        plaintext_size=len(file_data),
        file_count=file_count,
    )
    if core_overrides:
        core = replace(core, **core_overrides)  # type: ignore[arg-type]
    header, header_bytes = fmt.build_header(core, envelope)
    cipher = ChunkCipher(header, key)
    tree = TreeDigest(header, digest_algorithm)
    payload = manifest_bytes + file_data
    out = bytearray(header_bytes)
    for i in range(core.chunk_count):
        plain = payload[i * chunk_size : i * chunk_size + core.chunk_plain_len(i)]
        rec = bytearray(len(plain) + fmt.TAG_SIZE)
        cipher.encrypt_into(i, memoryview(plain), memoryview(rec))
        tree.add_record(i, rec)
        out += rec
    out += fmt.Trailer().pack()
    return Bundle(bytes(out), tree.finish(), header)


class MemorySink:
    """Collects the files of a manifest in memory."""

    def __init__(self, manifest: mf.Manifest) -> None:
        self.manifest = manifest
        self.data = {e.path: bytearray(e.size) for e in manifest.files}

    def write(self, file_index: int, offset: int, data: memoryview) -> None:
        buf = self.data[self.manifest.files[file_index].path]
        buf[offset : offset + len(data)] = data


def open_bytes(
    data: bytes,
    key: SecretBytes,
    *,
    workers: int = 2,
    pinned: fmt.BundleDigest | None = None,
    trusted: Sequence[Ed25519PublicKey] | None = None,
    digest_algorithm: fmt.DigestAlgorithm = fmt.DEFAULT_DIGEST_ALGORITHM,
) -> tuple[pipeline.OpenResult, dict[str, bytes]]:
    """Open a bundle held in memory; return the result and the files."""
    stream = io.BytesIO(data)
    header = fmt.read_header(stream)
    sinks: list[MemorySink] = []

    def on_manifest(m: mf.Manifest) -> MemorySink:
        sinks.append(MemorySink(m))
        return sinks[0]

    result = pipeline.open_payload(
        header,
        stream,
        ChunkCipher(header, key),
        on_manifest,
        workers=workers,
        pinned_digest=pinned,
        trusted_keys=trusted,
        digest_algorithm=digest_algorithm,
    )
    return result, {k: bytes(v) for k, v in sinks[0].data.items()}
