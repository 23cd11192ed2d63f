"""Bundle format round trips and structure (pure crypto layer, random data keys)."""

from __future__ import annotations

import dataclasses
import io
import os

import pytest

from modelseal.crypto import (
    AuthenticationError,
    DigestMismatchError,
    SignatureError,
    sign,
)
from modelseal.crypto import format as fmt
from modelseal.crypto import manifest as mf
from modelseal.crypto.stream import ChunkCipher, SecretBytes
from modelseal.crypto.testing import make_bundle, open_bytes


@pytest.fixture
def key() -> SecretBytes:
    return SecretBytes(os.urandom(32))


CASES = {
    "empty-model": {},
    "one-empty-file": {"m/config.pbtxt": b""},
    "tiny": {"m/config.pbtxt": b'name: "m"\n', "m/1/model.py": b"print(1)\n"},
    "exact-chunks": {"m/a": os.urandom(4096 * 3), "m/b": os.urandom(4096)},
    "spanning": {
        "m/config.pbtxt": os.urandom(100),
        "m/1/big.bin": os.urandom(50_000),
        "m/1/empty": b"",
        "m/2/x": os.urandom(4095),
        "n/y": os.urandom(4097),
    },
}


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("workers", [1, 3])
def test_round_trip(name: str, workers: int, key: SecretBytes) -> None:
    files = CASES[name]
    bundle = make_bundle(files, key, workers=workers)
    result, got = open_bytes(bundle.data, key, workers=workers, pinned=bundle.digest)
    assert got == files
    assert result.digest == bundle.digest
    core = bundle.header.core
    assert core.plaintext_size == sum(len(v) for v in files.values())
    assert core.file_count == len(files)
    assert len(bundle.data) == bundle.header.trailer_offset + len(fmt.Trailer().pack())


def test_manifest_spans_many_chunks(key: SecretBytes) -> None:
    files = {f"m/{i:05d}-{'x' * 60}": bytes([i % 256]) * (i % 7) for i in range(400)}
    bundle = make_bundle(files, key)
    assert bundle.header.core.manifest_size > 4 * bundle.header.core.chunk_size
    _, got = open_bytes(bundle.data, key)
    assert got == files


def test_layout_fields(key: SecretBytes) -> None:
    bundle = make_bundle({"m/a": b"abc"}, key)
    assert bundle.data[:8] == fmt.MAGIC
    prefix = fmt.parse_prefix(bundle.data[:20])
    assert prefix.version == 1
    core = bundle.header.core
    assert core.model_name == "test"
    assert fmt.format_digest(bundle.digest).startswith("blake3tree:")  # the default
    assert fmt.parse_digest(fmt.format_digest(bundle.digest)) == bundle.digest


def test_digest_is_stable_across_envelope_change(key: SecretBytes) -> None:
    bundle = make_bundle({"m/a": os.urandom(10_000)}, key)
    new_env = fmt.Envelope("test-key", 2, "vault:v2:b3RoZXI=")
    _, new_head = fmt.with_envelope(bundle.header, new_env)
    rewrapped = new_head + bundle.data[bundle.records_offset :]
    result, _ = open_bytes(rewrapped, key, pinned=bundle.digest)
    assert result.digest == bundle.digest
    assert fmt.read_header(io.BytesIO(rewrapped)).envelope.key_version == 2


def test_two_seals_differ(key: SecretBytes) -> None:
    a = make_bundle({"m/a": b"same"}, key)
    b = make_bundle({"m/a": b"same"}, key)
    assert a.digest != b.digest
    assert a.header.core.nonce_prefix != b.header.core.nonce_prefix


def test_signature_round_trip(key: SecretBytes) -> None:
    priv_pem, pub_pem = sign.generate_signing_key()
    priv = sign.load_private_key(priv_pem)
    trusted = sign.load_public_keys(pub_pem)
    bundle = make_bundle({"m/a": b"weights"}, key, sign_key=priv)
    result, _ = open_bytes(bundle.data, key, trusted=trusted)
    assert result.signer == sign.key_id(trusted[0])
    # signing does not change the digest
    assert result.digest == bundle.digest


def test_signature_required_but_missing(key: SecretBytes) -> None:
    _, pub_pem = sign.generate_signing_key()
    bundle = make_bundle({"m/a": b"weights"}, key)
    with pytest.raises(SignatureError, match="not signed"):
        open_bytes(bundle.data, key, trusted=sign.load_public_keys(pub_pem))


def test_signature_by_untrusted_key(key: SecretBytes) -> None:
    other_priv, _ = sign.generate_signing_key()
    _, trusted_pub = sign.generate_signing_key()
    bundle = make_bundle({"m/a": b"w"}, key, sign_key=sign.load_private_key(other_priv))
    with pytest.raises(SignatureError, match="no signature by a trusted key"):
        open_bytes(bundle.data, key, trusted=sign.load_public_keys(trusted_pub))


def test_forged_signature_fails(key: SecretBytes) -> None:
    priv_pem, pub_pem = sign.generate_signing_key()
    bundle = make_bundle({"m/a": b"w"}, key, sign_key=sign.load_private_key(priv_pem))
    data = bytearray(bundle.data)
    tail = bytes(data[bundle.header.trailer_offset :])
    trailer = fmt.parse_trailer_body(tail[fmt.TRAILER_HEAD_SIZE :])
    entry = trailer.signatures[0]
    forged_sig = bytes([entry.signature[0] ^ 1]) + entry.signature[1:]
    forged = fmt.Trailer((dataclasses.replace(entry, signature=forged_sig),))
    data[bundle.header.trailer_offset :] = forged.pack()
    with pytest.raises(SignatureError, match="does not verify"):
        open_bytes(bytes(data), key, trusted=sign.load_public_keys(pub_pem))


def test_public_keys_as_base64_lines() -> None:
    priv_pem, _ = sign.generate_signing_key()
    pub = sign.load_private_key(priv_pem).public_key()
    import base64

    line = base64.b64encode(sign.raw_public(pub)) + b"\n# comment\n"
    assert sign.key_id(sign.load_public_keys(line)[0]) == sign.key_id(pub)
    with pytest.raises(SignatureError):
        sign.load_public_keys(b"# nothing\n")
    with pytest.raises(SignatureError):
        sign.load_public_keys(b"not-base64!!\n")


def test_wrong_pin(key: SecretBytes) -> None:
    bundle = make_bundle({"m/a": b"w"}, key)
    with pytest.raises(DigestMismatchError, match="does not match the pinned digest"):
        open_bytes(bundle.data, key, pinned=bundle.digest._replace(value=bytes(32)))


def test_wrong_key_fails_commitment(key: SecretBytes) -> None:
    bundle = make_bundle({"m/a": b"w"}, key)
    with pytest.raises(AuthenticationError, match="key commitment"):
        ChunkCipher(bundle.header, SecretBytes(os.urandom(32)))
    with pytest.raises(AuthenticationError, match="wrong length"):
        ChunkCipher(bundle.header, SecretBytes(os.urandom(16)))


def test_file_map_extents() -> None:
    m = mf.build_manifest(
        bytes(16),
        [("a", "file", 0o644, 5), ("e", "file", 0o644, 0), ("b", "file", 0o644, 3)],
    )
    fm = mf.FileMap(m)
    assert fm.extents(0, 8) == [(0, 0, 0, 5), (2, 0, 5, 3)]
    assert fm.extents(4, 2) == [(0, 4, 0, 1), (2, 0, 1, 1)]
    assert fm.extents(6, 100) == [(2, 1, 0, 2)]


def test_top_level_dirs() -> None:
    m = mf.build_manifest(
        bytes(16),
        [
            ("a", "dir", 0o755, 0),
            ("a/x", "file", 0o644, 1),
            ("b/c/d", "file", 0o644, 1),
            ("top.txt", "file", 0o644, 1),
        ],
    )
    assert m.top_level_dirs == ["a", "b"]


def test_secret_bytes_hides_itself() -> None:
    raw = os.urandom(32)
    s = SecretBytes(raw)
    for text in (repr(s), str(s), f"{s}", f"{s!r}"):
        assert raw.hex() not in text
        assert "hidden" in text
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(s)
    s.wipe()
    assert s.reveal() == bytes(32)
