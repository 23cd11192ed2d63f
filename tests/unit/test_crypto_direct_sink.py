"""The pipeline's direct decryption into destination memory (what the unsealer's mmap
mode offers): the same files as through write(), and a chunk whose tag fails is zeroed
in the destination at once, so no unauthenticated byte stays there."""

from __future__ import annotations

import io
import mmap
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest

from modelseal.crypto import AuthenticationError, pipeline
from modelseal.crypto import format as fmt
from modelseal.crypto import manifest as mf
from modelseal.crypto.stream import ChunkCipher, SecretBytes
from modelseal.crypto.testing import make_bundle


def test_chunk_cipher_decrypts_into_a_shared_map() -> None:
    key = SecretBytes(os.urandom(32))
    data = os.urandom(20_000)
    b = make_bundle({"a/w.bin": data}, key)
    stream = io.BytesIO(b.data)
    header = fmt.read_header(stream)
    cipher = ChunkCipher(header, key)
    core = header.core
    rec_len = core.chunk_plain_len(1) + fmt.TAG_SIZE
    start, end = b.record_span(1)
    record = memoryview(bytearray(b.data[start:end]))
    mm = mmap.mmap(-1, 3 * core.chunk_size)
    try:
        view = memoryview(mm)[100 : 100 + rec_len - fmt.TAG_SIZE]
        cipher.decrypt_into(1, record, view)
        view.release()
        offset = core.chunk_size - core.manifest_size  # chunk 1 in the file data
        assert mm[100 : 100 + rec_len - fmt.TAG_SIZE] == data[offset : offset + core.chunk_size]
    finally:
        mm.close()


# ------------------------------------------------- direct decryption in the pipeline


class MemoryDirectSink:
    """Files in bytearrays; offers their memory to the pipeline like the mmap sink."""

    def __init__(self, manifest: mf.Manifest) -> None:
        self.files = manifest.files
        self.data = [bytearray(e.size) for e in manifest.files]
        self.direct_calls = 0
        self.writes = 0

    def write(self, file_index: int, offset: int, data: memoryview) -> None:
        self.writes += 1
        self.data[file_index][offset : offset + len(data)] = data

    def direct(
        self, file_index: int, offset: int, length: int
    ) -> AbstractContextManager[memoryview]:
        self.direct_calls += 1
        return self._view(file_index, offset, length)

    @contextmanager
    def _view(self, file_index: int, offset: int, length: int) -> Iterator[memoryview]:
        view = memoryview(self.data[file_index])[offset : offset + length]
        try:
            yield view
        finally:
            view.release()


FILES = {
    "m/config.pbtxt": b'name: "m"\n',
    "m/1/big.bin": os.urandom(100_000),
    "m/1/small.bin": os.urandom(300),
}


def open_with(data: bytes, key: SecretBytes) -> list[MemoryDirectSink]:
    sinks: list[MemoryDirectSink] = []

    def on_manifest(m: mf.Manifest) -> MemoryDirectSink:
        sinks.append(MemoryDirectSink(m))
        return sinks[-1]

    stream = io.BytesIO(data)
    header = fmt.read_header(stream)
    pipeline.open_payload(header, stream, ChunkCipher(header, key), on_manifest, workers=3)
    return sinks


def test_direct_decryption_gives_the_same_files() -> None:
    key = SecretBytes(os.urandom(32))
    b = make_bundle(FILES, key)
    sink = open_with(b.data, key)[0]
    assert sink.direct_calls >= 20  # most 4 KiB chunks lie inside big.bin
    assert sink.writes >= 1  # chunks across file boundaries go through write()
    got = {e.path: bytes(d) for e, d in zip(sink.files, sink.data, strict=True)}
    assert got == FILES


def test_tampered_chunk_is_zeroed_in_the_destination() -> None:
    key = SecretBytes(os.urandom(32))
    b = make_bundle(FILES, key)
    core = b.header.core
    # a chunk wholly inside big.bin
    manifest_chunks = -(-core.manifest_size // core.chunk_size)
    index = manifest_chunks + 5
    start, _ = b.record_span(index)
    data = bytearray(b.data)
    data[start + 20] ^= 0x01
    sinks: list[MemoryDirectSink] = []

    def on_manifest(m: mf.Manifest) -> MemoryDirectSink:
        sinks.append(MemoryDirectSink(m))
        return sinks[-1]

    stream = io.BytesIO(bytes(data))
    header = fmt.read_header(stream)
    with pytest.raises(AuthenticationError, match=f"chunk {index} "):
        pipeline.open_payload(header, stream, ChunkCipher(header, key), on_manifest, workers=1)
    big = sinks[0].data[1]
    off = index * core.chunk_size - core.manifest_size - len(FILES["m/config.pbtxt"])
    tampered = big[off : off + core.chunk_size]
    assert tampered == bytes(len(tampered))  # nothing unauthenticated stays there
