"""Every way of damaging a bundle is detected (pure crypto layer, random data keys).

Integration tests repeat the important cases against real Vault and real files; here we
go wide: every prefix byte, many truncation points, chunk reorder/drop/duplicate/splice,
bit flips everywhere authenticated, hostile manifests, lying headers.
"""

from __future__ import annotations

import io
import json
import os
import random

import pytest

from modelseal.crypto import (
    AuthenticationError,
    BundleError,
    FormatError,
    ManifestError,
    TruncatedError,
    pipeline,
)
from modelseal.crypto import format as fmt
from modelseal.crypto import manifest as mf
from modelseal.crypto.stream import ChunkCipher, SecretBytes
from modelseal.crypto.testing import Bundle, make_bundle, raw_bundle

FILES = {
    "m/config.pbtxt": b'name: "m"\nbackend: "python"\n',
    "m/1/model.bin": os.urandom(30_000),
    "m/1/tail.bin": os.urandom(5000),
}


class Recorder:
    """Sink that records which bytes it was given (to prove nothing unauthenticated)."""

    def __init__(self, manifest: mf.Manifest) -> None:
        self.manifest = manifest
        self.writes: list[tuple[int, int, bytes]] = []

    def write(self, file_index: int, offset: int, data: memoryview) -> None:
        self.writes.append((file_index, offset, bytes(data)))


def try_open(
    data: bytes, key: SecretBytes, pinned: fmt.BundleDigest | None = None
) -> list[Recorder]:
    sinks: list[Recorder] = []

    def on_manifest(m: mf.Manifest) -> Recorder:
        sinks.append(Recorder(m))
        return sinks[-1]

    stream = io.BytesIO(data)
    header = fmt.read_header(stream)
    pipeline.open_payload(
        header, stream, ChunkCipher(header, key), on_manifest, workers=2, pinned_digest=pinned
    )
    return sinks


@pytest.fixture(scope="module")
def key() -> SecretBytes:
    return SecretBytes(os.urandom(32))


@pytest.fixture(scope="module")
def bundle(key: SecretBytes) -> Bundle:
    b = make_bundle(FILES, key)
    assert b.header.core.chunk_count >= 8
    return b


def records(b: Bundle) -> list[bytes]:
    return [b.data[s:e] for s, e in (b.record_span(i) for i in range(b.header.core.chunk_count))]


def rebuild(b: Bundle, recs: list[bytes]) -> bytes:
    return b.data[: b.records_offset] + b"".join(recs) + b.data[b.header.trailer_offset :]


def assert_refused(
    data: bytes, key: SecretBytes, pinned: fmt.BundleDigest | None = None
) -> BundleError:
    with pytest.raises(BundleError) as info:
        try_open(data, key, pinned)
    return info.value


def test_intact_bundle_opens(bundle: Bundle, key: SecretBytes) -> None:
    try_open(bundle.data, key, bundle.digest)


def test_truncation_anywhere(bundle: Bundle, key: SecretBytes) -> None:
    rnd = random.Random(1)
    boundaries = {bundle.records_offset, bundle.header.trailer_offset}
    for i in range(bundle.header.core.chunk_count):
        s, e = bundle.record_span(i)
        boundaries |= {s, e, e - 1, e - 16, s + 1}
    cuts = sorted(
        {c for b in boundaries for c in (b - 1, b, b + 1)}
        | {rnd.randrange(len(bundle.data)) for _ in range(150)}
        | set(range(0, 40))
        | {len(bundle.data) - k for k in range(1, 14)}
    )
    for cut in cuts:
        if 0 <= cut < len(bundle.data):
            assert_refused(bundle.data[:cut], key)


def test_missing_last_chunk(bundle: Bundle, key: SecretBytes) -> None:
    exc = assert_refused(rebuild(bundle, records(bundle)[:-1]), key)
    assert isinstance(exc, (AuthenticationError, FormatError))


def test_missing_middle_chunk(bundle: Bundle, key: SecretBytes) -> None:
    recs = records(bundle)
    del recs[3]
    assert_refused(rebuild(bundle, recs), key)


def test_last_chunk_replaced_by_earlier_full_chunk(bundle: Bundle, key: SecretBytes) -> None:
    """A full-size non-final chunk can't pose as the final one (STREAM last flag)."""
    recs = records(bundle)
    n = len(recs)
    # drop everything after chunk 2 and pretend chunk 2 was the end
    core = bundle.header.core
    assert core.chunk_plain_len(2) == core.chunk_size
    exc = assert_refused(rebuild(bundle, recs[:3]), key)
    assert n > 3
    assert isinstance(exc, (AuthenticationError, FormatError, TruncatedError))


def test_swapped_chunks(bundle: Bundle, key: SecretBytes) -> None:
    recs = records(bundle)
    recs[1], recs[2] = recs[2], recs[1]
    exc = assert_refused(rebuild(bundle, recs), key)
    assert isinstance(exc, AuthenticationError)


def test_duplicated_chunk(bundle: Bundle, key: SecretBytes) -> None:
    recs = records(bundle)
    recs[2] = recs[1]
    assert isinstance(assert_refused(rebuild(bundle, recs), key), AuthenticationError)


def test_chunk_spliced_from_other_bundle_same_key(bundle: Bundle, key: SecretBytes) -> None:
    other = make_bundle(FILES, key)  # same files, same data key, other bundle id/nonces
    recs = records(bundle)
    recs[2] = records(other)[2]
    assert isinstance(assert_refused(rebuild(bundle, recs), key), AuthenticationError)


def test_header_from_other_bundle(bundle: Bundle, key: SecretBytes) -> None:
    other = make_bundle(FILES, key)
    spliced = other.data[: other.records_offset] + bundle.data[bundle.records_offset :]
    assert_refused(spliced, key)


def test_bit_flip_in_prefix_and_core(bundle: Bundle, key: SecretBytes) -> None:
    end_core = fmt.PREFIX_SIZE + bundle.header.prefix.core_len
    rnd = random.Random(2)
    positions = list(range(fmt.PREFIX_SIZE)) + rnd.sample(range(fmt.PREFIX_SIZE, end_core), 120)
    for pos in positions:
        for bit in (0, 5):
            data = bytearray(bundle.data)
            data[pos] ^= 1 << bit
            assert_refused(bytes(data), key)


def test_bit_flip_in_chunks_and_tags(bundle: Bundle, key: SecretBytes) -> None:
    rnd = random.Random(3)
    for i in range(bundle.header.core.chunk_count):
        s, e = bundle.record_span(i)
        for pos in (s, e - 17, e - 16, e - 1, rnd.randrange(s, e)):
            data = bytearray(bundle.data)
            data[pos] ^= 0x80
            exc = assert_refused(bytes(data), key)
            assert isinstance(exc, AuthenticationError), (i, pos, exc)


def test_other_pin_refused(bundle: Bundle, key: SecretBytes) -> None:
    try_open(bundle.data, key, bundle.digest)
    with pytest.raises(BundleError, match="pinned digest"):
        try_open(bundle.data, key, bundle.digest._replace(value=bytes(32)))


def test_trailer_damage(bundle: Bundle, key: SecretBytes) -> None:
    t = bundle.header.trailer_offset
    for pos in range(t, min(len(bundle.data), t + 14)):
        data = bytearray(bundle.data)
        data[pos] ^= 0x01
        assert_refused(bytes(data), key)
    assert isinstance(assert_refused(bundle.data + b"\x00", key), FormatError)


def test_envelope_swap_needs_the_key(bundle: Bundle, key: SecretBytes) -> None:
    """The envelope is not authenticated by the chunks (rewrap replaces it), but a data key
    it would yield that differs from the bundle's fails the key commitment."""
    with pytest.raises(AuthenticationError, match="key commitment"):
        ChunkCipher(bundle.header, SecretBytes(os.urandom(32)))


def hostile(entries: list[dict[str, object]], data: bytes = b"", **kw: object) -> bytes:
    return json.dumps(
        {"salt": "00" * 16, "entries": entries},
        separators=(",", ":"),
        **kw,  # type: ignore[arg-type]
    ).encode()


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"path": "../evil", "type": "file", "mode": 420, "size": 1}], r"\.\."),
        ([{"path": "m/../../evil", "type": "file", "mode": 420, "size": 1}], r"\.\."),
        ([{"path": "/etc/passwd", "type": "file", "mode": 420, "size": 1}], "absolute"),
        ([{"path": "m/link", "type": "symlink", "mode": 511}], "symlink"),
        ([{"path": "m/dev", "type": "chardev", "mode": 420}], "only files"),
        (
            [
                {"path": "m/a", "type": "file", "mode": 420, "size": 1},
                {"path": "m/a", "type": "file", "mode": 420, "size": 0},
            ],
            "twice",
        ),
        (
            [
                {"path": "m/a", "type": "file", "mode": 420, "size": 1},
                {"path": "m/a/b", "type": "file", "mode": 420, "size": 0},
            ],
            "entries inside it",
        ),
        (
            [
                {"path": "m/a/b", "type": "file", "mode": 420, "size": 0},
                {"path": "m/a", "type": "file", "mode": 420, "size": 1},
            ],
            "entries inside it",
        ),
        ([{"path": "m\\..\\x", "type": "file", "mode": 420, "size": 1}], "backslash"),
        ([{"path": "m/./x", "type": "file", "mode": 420, "size": 1}], "'.' component"),
        ([{"path": "m//x", "type": "file", "mode": 420, "size": 1}], "empty"),
        ([{"path": "m/x\n", "type": "file", "mode": 420, "size": 1}], "control"),
        ([{"path": "m/x", "type": "file", "mode": 0o4755, "size": 1}], "outside"),
        ([{"path": "m/x", "type": "file", "mode": 420, "size": -1}], "outside"),
        ([{"path": "m/x", "type": "file", "mode": True, "size": 1}], "integer"),
        ([{"path": "m/x", "type": "file", "mode": 420, "size": 1, "uid": 0}], "unknown"),
    ],
)
def test_hostile_manifest_refused(
    entries: list[dict[str, object]], message: str, key: SecretBytes
) -> None:
    b = raw_bundle(hostile(entries), b"x", key, file_count=len(entries))
    with pytest.raises(ManifestError, match=message):
        try_open(b.data, key)


def test_manifest_sizes_must_match_header(key: SecretBytes) -> None:
    entries = [{"path": "m/a", "type": "file", "mode": 420, "size": 3}]
    b = raw_bundle(hostile(entries), b"abcdef", key, file_count=1)
    with pytest.raises(ManifestError, match="add up"):
        try_open(b.data, key)
    b = raw_bundle(hostile(entries), b"abc", key, file_count=2)
    with pytest.raises(ManifestError, match="lists 1 files"):
        try_open(b.data, key)


def test_manifest_digest_must_match_header(key: SecretBytes) -> None:
    entries = [{"path": "m/a", "type": "file", "mode": 420, "size": 3}]
    b = raw_bundle(
        hostile(entries), b"abc", key, file_count=1, core_overrides={"manifest_sha256": bytes(32)}
    )
    with pytest.raises(ManifestError, match="manifest digest"):
        try_open(b.data, key)


def test_manifest_json_tricks(key: SecretBytes) -> None:
    dup_key = b'{"salt":"' + b"00" * 16 + b'","salt":"' + b"11" * 16 + b'","entries":[]}'
    b = raw_bundle(dup_key, b"", key)
    with pytest.raises(ManifestError, match="duplicate"):
        try_open(b.data, key)
    b = raw_bundle(b"[1,2]", b"", key)
    with pytest.raises(ManifestError, match="object"):
        try_open(b.data, key)
    b = raw_bundle(b'{"salt": NaN}', b"", key)
    with pytest.raises(ManifestError):
        try_open(b.data, key)


def core_json(b: Bundle, **changes: object) -> bytes:
    obj = json.loads(b.header.core_bytes)
    obj.update(changes)
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@pytest.mark.parametrize(
    "changes",
    [
        {"plaintext_size": 1 << 60},
        {"chunk_size": 1 << 30},
        {"chunk_size": 16},
        {"manifest_size": 1 << 40},
        {"manifest_size": 0},
        {"file_count": 10**9},
        {"plaintext_size": -1},
        {"plaintext_size": 1.5},
        {"plaintext_size": "12"},
        {"cipher": "aes-128-cbc"},
        {"bundle_id": "zz" * 16},
        {"nonce_prefix": "00" * 8},
        {"extra": 1},
    ],
)
def test_absurd_or_malformed_core_refused(bundle: Bundle, changes: dict[str, object]) -> None:
    core = core_json(bundle, **changes)
    with pytest.raises(FormatError):
        fmt.parse_core(core)


def test_lying_sizes_within_limits_are_caught(bundle: Bundle, key: SecretBytes) -> None:
    """A header that claims more data than there is: refused (never trusted to allocate)."""
    core = core_json(bundle, plaintext_size=bundle.header.core.plaintext_size + 10_000_000)
    env = bundle.header.envelope.pack()
    prefix = fmt.Prefix(1, 0, len(core), len(env)).pack()
    data = prefix + core + env + bundle.data[bundle.records_offset :]
    assert_refused(data, key)


@pytest.mark.parametrize(
    ("prefix_bytes", "message"),
    [
        (b"PK\x03\x04" + bytes(16), "magic"),
        (fmt.MAGIC + b"\x00\x02\x00\x00" + bytes(8), "version"),
        (fmt.MAGIC + b"\x00\x01\x00\x01" + bytes(8), "flags"),
        (fmt.MAGIC + b"\x00\x01\x00\x00" + (1 << 20).to_bytes(4, "big") + bytes(4), "core"),
        (
            fmt.MAGIC
            + b"\x00\x01\x00\x00"
            + (100).to_bytes(4, "big")
            + (1 << 20).to_bytes(4, "big"),
            "envelope",
        ),
        (fmt.MAGIC[:5], "shorter"),
    ],
)
def test_prefix_refused(prefix_bytes: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        fmt.parse_prefix(prefix_bytes)


@pytest.mark.parametrize(
    "env",
    [
        {
            "kms": "aws",
            "mount": "transit",
            "key_name": "k",
            "key_version": 1,
            "wrapped_key": "vault:v1:AAAA",
        },
        {
            "kms": "vault-transit",
            "mount": "../sys",
            "key_name": "k",
            "key_version": 1,
            "wrapped_key": "vault:v1:AAAA",
        },
        {
            "kms": "vault-transit",
            "mount": "transit",
            "key_name": "k/../x",
            "key_version": 1,
            "wrapped_key": "vault:v1:AAAA",
        },
        {
            "kms": "vault-transit",
            "mount": "transit",
            "key_name": "k",
            "key_version": 2,
            "wrapped_key": "vault:v1:AAAA",
        },
        {
            "kms": "vault-transit",
            "mount": "transit",
            "key_name": "k",
            "key_version": 1,
            "wrapped_key": "plain-key-bytes",
        },
        {
            "kms": "vault-transit",
            "mount": "transit",
            "key_name": "k",
            "key_version": 0,
            "wrapped_key": "vault:v0:AAAA",
        },
    ],
)
def test_bad_envelope_refused(env: dict[str, object]) -> None:
    with pytest.raises(FormatError):
        fmt.parse_envelope(json.dumps(env).encode())


def test_bad_digest_strings() -> None:
    for text in ("sha256:" + "0" * 64, "sha256tree:" + "0" * 63, "sha256tree:" + "A" * 64, ""):
        with pytest.raises(FormatError):
            fmt.parse_digest(text)
