"""Parallel, bounded-memory sealing and opening of the chunk stream.

One thread reads chunk records (or plaintext) sequentially from a stream into a fixed pool
of buffers; a thread pool hashes, encrypts or decrypts them (hashlib and AES-GCM release the
GIL) and hands the results on. Memory is `window` buffer pairs, whatever the model's size.

Opening never hands a byte of a chunk to the sink before that chunk has authenticated.
A sink with a `direct(file_index, offset, length)` method may offer the destination
memory itself (a map of the file): a chunk whose file data lies in one file is then
decrypted straight into it; if its tag fails, that range is zeroed before the error
propagates, and the caller must wipe the whole (unpublished) staging area. What the sink
receives is authenticated plaintext that must still be kept unpublished until
`open_payload` returns (the digest pin and signature come at the end of the stream). This
module does no I/O of its own: it reads/writes the streams and calls the sink it is given.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import BinaryIO, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from . import sign as signing
from .digest import TreeDigest, check_pin, leaf_hash
from .errors import FormatError, ManifestError, TruncatedError
from .format import (
    BUNDLE_ID_SIZE,
    DEFAULT_CHUNK_SIZE,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    NONCE_PREFIX_SIZE,
    TAG_SIZE,
    BundleHeader,
    CoreHeader,
    Envelope,
    ReadStream,
    Trailer,
    build_header,
    read_trailer,
)
from .manifest import Entry, FileMap, Manifest, parse_manifest
from .stream import ChunkCipher, SecretBytes, key_commitment

Progress = Callable[[int], None]


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
    digest: bytes | None  # None when neither a pin nor trusted keys asked for it
    trailer: Trailer
    signer: str | None  # key id of the trusted signer, when signatures were checked


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def readinto_exact(stream: ReadStream, view: memoryview, what: str) -> None:
    got = 0
    total = len(view)
    while got < total:
        n = stream.readinto(view[got:])
        if not n:
            raise TruncatedError(f"bundle ends inside {what} (truncated)")
        got += n


_ZERO_BLOCK = memoryview(bytes(1 << 20))


def wipe(view: memoryview | bytearray) -> None:
    """Overwrite with zeros in place, without a temporary the size of the buffer."""
    target = memoryview(view).cast("B")
    for off in range(0, len(target), len(_ZERO_BLOCK)):
        n = min(len(_ZERO_BLOCK), len(target) - off)
        target[off : off + n] = _ZERO_BLOCK[:n]


class _Slots:
    """A fixed pool of (record, plaintext) buffer pairs."""

    def __init__(self, count: int, chunk_size: int) -> None:
        self.free: queue.Queue[tuple[bytearray, bytearray]] = queue.Queue()
        for _ in range(count):
            self.free.put((bytearray(chunk_size + TAG_SIZE), bytearray(chunk_size)))

    def take(self) -> tuple[bytearray, bytearray]:
        return self.free.get()

    def give(self, slot: tuple[bytearray, bytearray]) -> None:
        self.free.put(slot)

    def scrub(self) -> None:
        """Zero the plaintext buffers (best effort: they held model bytes)."""
        while True:
            try:
                _, plain = self.free.get_nowait()
            except queue.Empty:
                return
            wipe(plain)


def _read_record(
    stream: ReadStream,
    core: CoreHeader,
    i: int,
    slots: _Slots,
    slot: tuple[bytearray, bytearray],
) -> int:
    """Read record `i` into the slot's record buffer; its length. On failure the slot goes
    back to the pool."""
    rec_len = core.chunk_plain_len(i) + TAG_SIZE
    try:
        readinto_exact(stream, memoryview(slot[0])[:rec_len], f"chunk {i}")
    except BaseException:
        slots.give(slot)
        raise
    return rec_len


class _Failure:
    def __init__(self) -> None:
        self.exc: BaseException | None = None
        self.lock = threading.Lock()

    def set(self, exc: BaseException) -> None:
        with self.lock:
            if self.exc is None:
                self.exc = exc

    def check(self) -> None:
        if self.exc is not None:
            raise self.exc


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
    pinned_digest: bytes | None = None,
    trusted_keys: Sequence[Ed25519PublicKey] | None = None,
    progress: Progress | None = None,
    compute_digest: bool = True,
) -> OpenResult:
    """Authenticate and decrypt the chunk records that follow the header in `stream`.

    `stream` must be positioned at the first chunk record. Raises a BundleError subclass on
    any problem; on success every chunk, the manifest, the digest pin and (when
    `trusted_keys` is given) a publisher signature have been verified.

    `window` is the number of chunk buffer pairs (default 2 per worker, at least 2); the
    memory they take is `buffers_needed(chunk_size, window)`.

    With `compute_digest=False` and neither a pin nor trusted keys, the records are not
    hashed (every chunk is still authenticated) and the result's digest is None.
    """
    core = header.core
    workers = workers or default_workers()
    window = window or max(2, 2 * workers)
    hashing = compute_digest or pinned_digest is not None or bool(trusted_keys)
    tree = TreeDigest(header)
    slots = _Slots(window, core.chunk_size)
    failure = _Failure()
    n = core.chunk_count
    cs = core.chunk_size

    def open_chunk(i: int, slot: tuple[bytearray, bytearray], rec_len: int) -> memoryview:
        """Hash and authenticate/decrypt chunk i held in `slot`; return its plaintext."""
        rec = memoryview(slot[0])[:rec_len]
        if hashing:
            tree.add(i, leaf_hash(rec))
        plain = memoryview(slot[1])[: rec_len - TAG_SIZE]
        cipher.decrypt_into(i, rec, plain)
        return plain

    carry: tuple[int, tuple[bytearray, bytearray], memoryview] | None = None
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
        def work(i: int, slot: tuple[bytearray, bytearray], rec_len: int) -> None:
            try:
                if failure.exc is not None:
                    return
                target = direct_target(i, rec_len - TAG_SIZE)
                if target is None:
                    deliver(i, open_chunk(i, slot, rec_len))
                else:
                    rec = memoryview(slot[0])[:rec_len]
                    if hashing:
                        tree.add(i, leaf_hash(rec))
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

        if index < n:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="unseal") as pool:
                try:
                    for i in range(index, n):
                        slot = slots.take()
                        if failure.exc is not None:
                            slots.give(slot)
                            break
                        rec_len = _read_record(stream, core, i, slots, slot)
                        pool.submit(work, i, slot, rec_len)
                except BaseException as exc:
                    failure.set(exc)
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


# --------------------------------------------------------------------------- sealing


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
) -> bytes:
    """Write a whole bundle to `out`; return its digest.

    `open_file(entry)` opens a file of the manifest for reading; it must yield exactly
    `entry.size` bytes (a file that changed while sealing is an error).
    """
    if core.manifest_sha256 != manifest.digest():
        raise ManifestError("core header does not describe this manifest")
    header, header_bytes = build_header(core, envelope)
    cipher = ChunkCipher(header, data_key)
    workers = workers or default_workers()
    tree = TreeDigest(header)
    cs = core.chunk_size
    out.write(header_bytes)

    window = max(2, 2 * workers)
    slots = _Slots(window, cs)

    def work(i: int, slot: tuple[bytearray, bytearray], plain_len: int) -> None:
        rec = memoryview(slot[0])[: plain_len + TAG_SIZE]
        cipher.encrypt_into(i, memoryview(slot[1])[:plain_len], rec)
        tree.add(i, leaf_hash(rec))

    pending: list[tuple[int, Future[None], tuple[bytearray, bytearray], int]] = []
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
    slots: _Slots,
    pending: list[tuple[int, Future[None], tuple[bytearray, bytearray], int]],
    out: BinaryIO,
    progress: Progress | None,
) -> tuple[tuple[bytearray, bytearray], int]:
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


def digest_records(
    header: BundleHeader,
    stream: ReadStream,
    *,
    workers: int = 0,
    progress: Progress | None = None,
) -> tuple[bytes, Trailer]:
    """Hash the chunk records that follow the header (no key needed); read the trailer.

    Returns the bundle digest and the trailer. Proves nothing about authenticity: that
    needs the key (`open_payload`).
    """
    core = header.core
    workers = workers or default_workers()
    tree = TreeDigest(header)
    slots = _Slots(max(2, 2 * workers), core.chunk_size)
    failure = _Failure()

    def work(i: int, slot: tuple[bytearray, bytearray], rec_len: int) -> None:
        try:
            tree.add(i, leaf_hash(memoryview(slot[0])[:rec_len]))
            if progress:
                progress(rec_len)
        except BaseException as exc:
            failure.set(exc)
        finally:
            slots.give(slot)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="digest") as pool:
        try:
            for i in range(core.chunk_count):
                slot = slots.take()
                rec_len = _read_record(stream, core, i, slots, slot)
                pool.submit(work, i, slot, rec_len)
        except BaseException as exc:
            failure.set(exc)
    failure.check()
    trailer = read_trailer(stream)
    return tree.finish(), trailer
