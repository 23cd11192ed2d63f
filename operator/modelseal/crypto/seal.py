"""Parallel, bounded-memory sealing: a model's files in, a whole bundle out.

One thread reads the manifest and the files into a fixed pool of buffers; a thread pool
encrypts and hashes them (AES-GCM and hashlib release the GIL), and the records are
written in order. Memory is `2 * workers` buffer pairs, whatever the model's size. This
module does no I/O of its own: it reads the files it is handed and writes to `out`.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import BinaryIO

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from . import sign as signing
from .digest import TreeDigest
from .errors import FormatError, ManifestError
from .format import (
    BUNDLE_ID_SIZE,
    DEFAULT_CHUNK_SIZE,
    DEFAULT_DIGEST_ALGORITHM,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    NONCE_PREFIX_SIZE,
    TAG_SIZE,
    BundleDigest,
    CoreHeader,
    DigestAlgorithm,
    Envelope,
    Trailer,
    build_header,
)
from .manifest import Entry, Manifest
from .stream import ChunkCipher, SecretBytes, key_commitment
from .workers import Progress, Slot, Slots, default_workers


def new_core(
    manifest: Manifest,
    data_key: SecretBytes,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    model_name: str = "",
    created_at: str | None = None,
) -> CoreHeader:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise FormatError(f"chunk size must be within [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")
    manifest_bytes = manifest.pack()
    bundle_id = os.urandom(BUNDLE_ID_SIZE)
    return CoreHeader(
        bundle_id=bundle_id,
        chunk_size=chunk_size,
        nonce_prefix=os.urandom(NONCE_PREFIX_SIZE),
        key_commitment=key_commitment(data_key, bundle_id),
        manifest_size=len(manifest_bytes),
        manifest_sha256=hashlib.sha256(manifest_bytes).digest(),
        plaintext_size=manifest.total_size,
        file_count=len(manifest.files),
        created_at=created_at
        if created_at is not None
        else datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        model_name=model_name,
    )


def _payload_pieces(
    manifest: Manifest, open_file: Callable[[Entry], BinaryIO]
) -> Iterator[tuple[BinaryIO | bytes, int, str]]:
    yield manifest.pack(), 0, "manifest"
    for entry in manifest.files:
        yield open_file(entry), entry.size, entry.path


def seal_payload(
    out: BinaryIO,
    manifest: Manifest,
    core: CoreHeader,
    envelope: Envelope,
    data_key: SecretBytes,
    open_file: Callable[[Entry], BinaryIO],
    *,
    workers: int = 0,
    sign_key: Ed25519PrivateKey | None = None,
    progress: Progress | None = None,
    digest_algorithm: DigestAlgorithm = DEFAULT_DIGEST_ALGORITHM,
) -> BundleDigest:
    """Write a whole bundle to `out`; return its digest (by `digest_algorithm`, which a
    signature by `sign_key` then covers).

    `open_file(entry)` opens a file of the manifest for reading; it must yield exactly
    `entry.size` bytes (a file that changed while sealing is an error).
    """
    if core.manifest_sha256 != manifest.digest():
        raise ManifestError("core header does not describe this manifest")
    header, header_bytes = build_header(core, envelope)
    cipher = ChunkCipher(header, data_key)
    workers = workers or default_workers()
    tree = TreeDigest(header, digest_algorithm)
    cs = core.chunk_size
    out.write(header_bytes)

    window = max(2, 2 * workers)
    slots = Slots(window, cs)

    def work(i: int, slot: Slot, plain_len: int) -> None:
        rec = memoryview(slot[0])[: plain_len + TAG_SIZE]
        cipher.encrypt_into(i, memoryview(slot[1])[:plain_len], rec)
        tree.add_record(i, rec)

    pending: list[tuple[int, Future[None], Slot, int]] = []
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seal") as pool:
        index = 0
        slot = slots.take()
        fill = 0
        for source, size, name in _payload_pieces(manifest, open_file):
            if isinstance(source, bytes):
                data = memoryview(source)
                pos = 0
                while pos < len(data):
                    n = min(cs - fill, len(data) - pos)
                    slot[1][fill : fill + n] = data[pos : pos + n]
                    fill += n
                    pos += n
                    if fill == cs:
                        pending.append((index, pool.submit(work, index, slot, cs), slot, cs))
                        index += 1
                        slot, fill = _next_slot(slots, pending, out, progress)
                continue
            with source:
                remaining = size
                while remaining:
                    want = min(cs - fill, remaining)
                    got = source.readinto(memoryview(slot[1])[fill : fill + want])  # type: ignore[attr-defined]
                    if not got:
                        raise ManifestError(f"file {name[:200]!r} shrank while it was sealed")
                    fill += got
                    remaining -= got
                    if fill == cs:
                        pending.append((index, pool.submit(work, index, slot, cs), slot, cs))
                        index += 1
                        slot, fill = _next_slot(slots, pending, out, progress)
                if source.read(1):
                    raise ManifestError(f"file {name[:200]!r} grew while it was sealed")
        if fill:
            pending.append((index, pool.submit(work, index, slot, fill), slot, fill))
            index += 1
        else:
            slots.give(slot)
        for _, fut, done_slot, plain_len in pending:
            fut.result()
            out.write(memoryview(done_slot[0])[: plain_len + TAG_SIZE])
            slots.give(done_slot)
            if progress:
                progress(plain_len)
        pending.clear()
    slots.scrub()
    if index != core.chunk_count:
        raise FormatError(f"wrote {index} chunks, header says {core.chunk_count}")
    digest = tree.finish()
    trailer = Trailer((signing.sign(sign_key, digest),) if sign_key else ())
    out.write(trailer.pack())
    return digest


def _next_slot(
    slots: Slots,
    pending: list[tuple[int, Future[None], Slot, int]],
    out: BinaryIO,
    progress: Progress | None,
) -> tuple[Slot, int]:
    """Write finished chunks in order until a buffer is free; return it (empty)."""
    while slots.free.empty() or (pending and pending[0][1].done()):
        if not pending:
            break
        _, fut, done_slot, plain_len = pending.pop(0)
        fut.result()
        out.write(memoryview(done_slot[0])[: plain_len + TAG_SIZE])
        slots.give(done_slot)
        if progress:
            progress(plain_len)
    return slots.take(), 0
