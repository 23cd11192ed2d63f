"""The GIL-free AES-256-GCM path (OpenSSL through ctypes) against `cryptography`: same
plaintext, same refusals, in place and into a memory map; and the pipeline's direct
decryption into destination memory never leaves unauthenticated bytes there."""

from __future__ import annotations

import io
import mmap
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from modelseal.crypto import AuthenticationError, ossl_gcm, pipeline
from modelseal.crypto import format as fmt
from modelseal.crypto import manifest as mf
from modelseal.crypto.stream import ChunkCipher, SecretBytes
from modelseal.crypto.testing import make_bundle

needs_openssl = pytest.mark.skipif(ossl_gcm.load() is None, reason="no usable libcrypto here")


@needs_openssl
@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, 1 << 20])
def test_matches_cryptography(size: int) -> None:
    key, nonce, aad = os.urandom(32), os.urandom(12), os.urandom(32)
    plain = os.urandom(size)
    record = bytearray(AESGCM(key).encrypt(nonce, plain, aad))
    opener = ossl_gcm.opener(key)
    assert opener is not None
    out = bytearray(size)
    assert opener.decrypt_into(nonce, record, aad, out)
    assert bytes(out) == plain
    view = memoryview(record)  # in place
    assert opener.decrypt_into(nonce, view, aad, view[:size])
    assert bytes(record[:size]) == plain


@needs_openssl
@pytest.mark.parametrize("what", ["ciphertext", "tag", "aad", "nonce", "key"])
def test_refuses_what_cryptography_refuses(what: str) -> None:
    key, nonce, aad = os.urandom(32), os.urandom(12), b"header"
    record = bytearray(AESGCM(key).encrypt(nonce, os.urandom(1000), aad))
    if what == "ciphertext":
        record[10] ^= 0x80
    elif what == "tag":
        record[-3] ^= 1
    elif what == "aad":
        aad = b"headex"
    elif what == "nonce":
        nonce = bytes(12)
    else:
        key = os.urandom(32)
    opener = ossl_gcm.opener(key)
    assert opener is not None
    assert not opener.decrypt_into(nonce, record, aad, bytearray(1000))


@needs_openssl
def test_decrypts_into_a_memory_map() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    plain = os.urandom(10_000)
    record = bytearray(AESGCM(key).encrypt(nonce, plain, b""))
    opener = ossl_gcm.opener(key)
    assert opener is not None
    mm = mmap.mmap(-1, 16384)
    try:
        view = memoryview(mm)[100 : 100 + len(plain)]
        assert opener.decrypt_into(nonce, record, b"", view)
        view.release()
        assert mm[100 : 100 + len(plain)] == plain
    finally:
        mm.close()


@needs_openssl
def test_wiped_key_cannot_decrypt() -> None:
    key, nonce = os.urandom(32), os.urandom(12)
    record = bytearray(AESGCM(key).encrypt(nonce, b"x" * 64, b""))
    opener = ossl_gcm.opener(key)
    assert opener is not None
    opener.wipe()
    with pytest.raises(ValueError, match="wiped"):
        opener.decrypt_into(nonce, record, b"", bytearray(64))


def test_can_be_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELSEAL_AEAD", "cryptography")
    assert ossl_gcm.load() is None
    b = make_bundle({"a/b": os.urandom(9000)}, SecretBytes(bytes(32)))
    cipher = ChunkCipher(b.header, SecretBytes(bytes(32)))
    assert cipher.backend == "cryptography"
    assert not cipher.in_place


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


@pytest.mark.parametrize("backend", ["openssl", "cryptography"])
def test_direct_decryption_gives_the_same_files(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend == "cryptography":
        monkeypatch.setenv("MODELSEAL_AEAD", "cryptography")
    elif ossl_gcm.load() is None:
        pytest.skip("no usable libcrypto here")
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
