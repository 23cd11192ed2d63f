"""Parallel, bounded-memory opening (and keyless hashing) of the chunk stream.

One thread reads chunk records (or plaintext) sequentially from a stream into a fixed pool
of buffers; a thread pool hashes, encrypts or decrypts them (SHA-256, BLAKE3 and AES-GCM
release the GIL) and hands the results on. Memory is `window` buffer pairs, whatever the
model's size.

Opening never hands a byte of a chunk to the sink before that chunk has authenticated.
A sink with a `direct(file_index, offset, length)` method may offer the destination
memory itself (a map of the file): a chunk whose file data lies in one file is then
decrypted straight into it; if its tag fails, that range is zeroed before the error
propagates, and the caller must wipe the whole (unpublished) staging area. What the sink
receives is authenticated plaintext that must still be kept unpublished until
`open_payload` returns (the digest pin and signature come at the end of the stream). This
module does no I/O of its own: it reads/writes the streams and calls the sink it is given.

Sealing is `modelseal.crypto.seal`; the buffer pool and the read loop both directions of
reading share are `modelseal.crypto.workers`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from . import sign as signing
from .digest import TreeDigest, check_pin
from .errors import ManifestError
from .format import (
    DEFAULT_DIGEST_ALGORITHM,
    TAG_SIZE,
    BundleDigest,
    BundleHeader,
    DigestAlgorithm,
    ReadStream,
    Trailer,
    read_trailer,
)
from .manifest import FileMap, Manifest, parse_manifest
from .stream import ChunkCipher
from .workers import (
    FirstFailure,
    Progress,
    Slot,
    Slots,
    default_workers,
    read_records_in_parallel,
    readinto_exact,
    wipe,
)


class FileSink(Protocol):
    """Receives authenticated plaintext of the manifest's files (from worker threads)."""

    def write(self, file_index: int, offset: int, data: memoryview) -> None: ...


class DirectTarget(Protocol):
    """Optional sink method: writable memory for [offset, offset + length) of a file."""

    def __call__(
        self, file_index: int, offset: int, length: int
    ) -> AbstractContextManager[memoryview] | None: ...


class NullSink:
    def write(self, file_index: int, offset: int, data: memoryview) -> None:
        return None


@dataclass(frozen=True)
class OpenResult:
    manifest: Manifest
    digest: BundleDigest | None  # None when neither a pin nor trusted keys asked for it
    trailer: Trailer
    signer: str | None  # key id of the trusted signer, when signatures were checked


def buffers_needed(chunk_size: int, window: int) -> int:
    """Bytes of chunk buffers `open_payload` allocates for `window` slots."""
    return window * (2 * chunk_size + TAG_SIZE)


def open_payload(
    header: BundleHeader,
    stream: ReadStream,
    cipher: ChunkCipher,
    on_manifest: Callable[[Manifest], FileSink],
    *,
    workers: int = 0,
    window: int = 0,
    pinned_digest: BundleDigest | None = None,
    trusted_keys: Sequence[Ed25519PublicKey] | None = None,
    progress: Progress | None = None,
    compute_digest: bool = True,
    digest_algorithm: DigestAlgorithm = DEFAULT_DIGEST_ALGORITHM,
) -> OpenResult:
    """Authenticate and decrypt the chunk records that follow the header in `stream`.

    `stream` must be positioned at the first chunk record. Raises a BundleError subclass on
    any problem; on success every chunk, the manifest, the digest pin and (when
    `trusted_keys` is given) a publisher signature have been verified.

    `window` is the number of chunk buffer pairs (default 2 per worker, at least 2); the
    memory they take is `buffers_needed(chunk_size, window)`.

    With `compute_digest=False` and neither a pin nor trusted keys, the records are not
    hashed (every chunk is still authenticated) and the result's digest is None. The digest
    is computed with the pin's algorithm, else with `digest_algorithm`; signatures are
    checked over that digest.
    """
    core = header.core
    workers = workers or default_workers()
    window = window or max(2, 2 * workers)
    hashing = compute_digest or pinned_digest is not None or bool(trusted_keys)
    tree = TreeDigest(header, pinned_digest.algorithm if pinned_digest else digest_algorithm)
    slots = Slots(window, core.chunk_size)
    failure = FirstFailure()
    cs = core.chunk_size

    def open_chunk(i: int, slot: Slot, rec_len: int) -> memoryview:
        """Hash and authenticate/decrypt chunk i held in `slot`; return its plaintext."""
        rec = memoryview(slot[0])[:rec_len]
        if hashing:
            tree.add_record(i, rec)
        plain = memoryview(slot[1])[: rec_len - TAG_SIZE]
        cipher.decrypt_into(i, rec, plain)
        return plain

    carry: tuple[int, Slot, memoryview] | None = None
    try:
        # 1. the manifest: decrypt chunks in order until we have all of it.
        manifest_buf = bytearray()
        index = 0
        while len(manifest_buf) < core.manifest_size:
            slot = slots.take()
            rec_len = core.chunk_plain_len(index) + TAG_SIZE
            try:
                readinto_exact(stream, memoryview(slot[0])[:rec_len], f"chunk {index}")
                plain = open_chunk(index, slot, rec_len)
            except BaseException:
                slots.give(slot)
                raise
            take = min(core.manifest_size - len(manifest_buf), len(plain))
            manifest_buf += plain[:take]
            if take < len(plain):
                carry = (index, slot, plain)
            else:
                slots.give(slot)
            if progress:
                progress(rec_len)
            index += 1
        if not hmac.compare_digest(hashlib.sha256(manifest_buf).digest(), core.manifest_sha256):
            raise ManifestError("manifest digest does not match the header")
        manifest = parse_manifest(bytes(manifest_buf))
        if manifest.total_size != core.plaintext_size:
            raise ManifestError(
                f"manifest files add up to {manifest.total_size} bytes, header says "
                f"{core.plaintext_size}"
            )
        if len(manifest.files) != core.file_count:
            raise ManifestError(
                f"manifest lists {len(manifest.files)} files, header says {core.file_count}"
            )
        filemap = FileMap(manifest)
        sink = on_manifest(manifest)
        direct: DirectTarget | None = getattr(sink, "direct", None)
        ms = core.manifest_size

        def deliver(chunk_index: int, plain: memoryview) -> None:
            start = chunk_index * cs  # payload offset of this chunk
            skip = max(0, ms - start)
            for file_index, file_off, rel, length in filemap.extents(
                start + skip - ms, len(plain) - skip
            ):
                sink.write(file_index, file_off, plain[skip + rel : skip + rel + length])

        if carry is not None:
            ci, slot, plain = carry
            carry = None
            try:
                deliver(ci, plain)
            finally:
                slots.give(slot)

        def direct_target(i: int, plain_len: int) -> AbstractContextManager[memoryview] | None:
            """The destination memory of chunk i when all of its bytes go to one file."""
            if direct is None:
                return None
            start = i * cs - ms
            if start < 0:
                return None
            pieces = filemap.extents(start, plain_len)
            if len(pieces) != 1 or pieces[0][3] != plain_len:
                return None
            return direct(pieces[0][0], pieces[0][1], plain_len)

        # 2. the rest, in parallel.
        def work(i: int, slot: Slot, rec_len: int) -> None:
            try:
                if failure.exc is not None:
                    return
                target = direct_target(i, rec_len - TAG_SIZE)
                if target is None:
                    deliver(i, open_chunk(i, slot, rec_len))
                else:
                    rec = memoryview(slot[0])[:rec_len]
                    if hashing:
                        tree.add_record(i, rec)
                    with target as out:
                        try:
                            cipher.decrypt_into(i, rec, out)
                        except BaseException:
                            wipe(out)  # unauthenticated: wipe it now
                            raise
                if progress:
                    progress(rec_len)
            except BaseException as exc:
                failure.set(exc)
            finally:
                slots.give(slot)

        read_records_in_parallel(
            stream, core, slots, failure, work, first=index, workers=workers, name="unseal"
        )
    finally:
        if carry is not None:  # failed before the carried chunk was delivered
            slots.give(carry[1])
        slots.scrub()
    failure.check()

    trailer = read_trailer(stream)
    if not hashing:
        return OpenResult(manifest, None, trailer, None)
    digest = tree.finish()
    check_pin(digest, pinned_digest)
    signer = signing.verify(trailer, digest, trusted_keys) if trusted_keys else None
    return OpenResult(manifest, digest, trailer, signer)


def digest_records(
    header: BundleHeader,
    stream: ReadStream,
    *,
    workers: int = 0,
    progress: Progress | None = None,
    algorithm: DigestAlgorithm = DEFAULT_DIGEST_ALGORITHM,
) -> tuple[BundleDigest, Trailer]:
    """Hash the chunk records that follow the header (no key needed); read the trailer.

    Returns the bundle digest (by `algorithm`) and the trailer. Proves nothing about
    authenticity: that needs the key (`open_payload`).
    """
    core = header.core
    workers = workers or default_workers()
    tree = TreeDigest(header, algorithm)
    slots = Slots(max(2, 2 * workers), core.chunk_size)
    failure = FirstFailure()

    def work(i: int, slot: Slot, rec_len: int) -> None:
        try:
            tree.add_record(i, memoryview(slot[0])[:rec_len])
            if progress:
                progress(rec_len)
        except BaseException as exc:
            failure.set(exc)
        finally:
            slots.give(slot)

    read_records_in_parallel(
        stream, core, slots, failure, work, first=0, workers=workers, name="digest"
    )
    failure.check()
    trailer = read_trailer(stream)
    return tree.finish(), trailer
