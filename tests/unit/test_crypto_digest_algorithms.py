"""The two bundle digests (blake3tree, the default, and sha256tree): each pins the same
bundle, each is what its definition says (an independent computation from the bundle's
bytes, so a sha256tree pin made before blake3tree existed still holds), and neither can
stand in for the other: not as a pin, not under a signature."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import struct

import pytest
from blake3 import blake3

from modelseal.crypto import DigestMismatchError, FormatError, SignatureError, sign
from modelseal.crypto import format as fmt
from modelseal.crypto.digest import TreeDigest, check_pin
from modelseal.crypto.pipeline import digest_records
from modelseal.crypto.stream import SecretBytes
from modelseal.crypto.testing import Bundle, make_bundle, open_bytes

ALGORITHMS = list(fmt.DigestAlgorithm)
FILES = {"m/config.pbtxt": b"name: 'm'\n", "m/1/model.bin": os.urandom(50_000)}


@pytest.fixture()
def key() -> SecretBytes:
    return SecretBytes(os.urandom(32))


def records(bundle: Bundle) -> list[bytes]:
    spans = (bundle.record_span(i) for i in range(bundle.header.core.chunk_count))
    return [bundle.data[start:end] for start, end in spans]


def by_definition(bundle: Bundle, algorithm: fmt.DigestAlgorithm) -> bytes:
    """The digest from docs/bundle-format.md, computed here without the project's code."""
    if algorithm is fmt.DigestAlgorithm.SHA256_TREE:

        def h(data: bytes) -> bytes:
            return hashlib.sha256(data).digest()

        domain = b"modelseal/v1/digest\x00"
    else:

        def h(data: bytes) -> bytes:
            return blake3(data).digest()

        domain = b"modelseal/v1/digest/blake3tree\x00"
    leaves = b"".join(h(r) for r in records(bundle))
    count = struct.pack(">Q", bundle.header.core.chunk_count)
    return h(domain + h(bundle.header.core_region) + count + leaves)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_digest_is_its_definition_and_pins_the_bundle(
    key: SecretBytes, algorithm: fmt.DigestAlgorithm
) -> None:
    bundle = make_bundle(FILES, key, chunk_size=8192, digest_algorithm=algorithm)
    assert bundle.digest == fmt.BundleDigest(algorithm, by_definition(bundle, algorithm))
    result, files = open_bytes(bundle.data, key, pinned=bundle.digest)
    assert files == FILES and result.digest == bundle.digest
    assert fmt.parse_digest(str(bundle.digest)) == bundle.digest


def test_both_digests_pin_one_bundle_and_neither_stands_for_the_other(key: SecretBytes) -> None:
    bundle = make_bundle(FILES, key, chunk_size=8192)
    assert bundle.digest.algorithm is fmt.DEFAULT_DIGEST_ALGORITHM
    digests = {}
    for algorithm in ALGORITHMS:
        stream = io.BytesIO(bundle.data)
        header = fmt.read_header(stream)
        digests[algorithm], _ = digest_records(header, stream, workers=2, algorithm=algorithm)
        assert open_bytes(bundle.data, key, pinned=digests[algorithm])[1] == FILES
    blake, sha = digests[fmt.DigestAlgorithm.BLAKE3_TREE], digests[fmt.DigestAlgorithm.SHA256_TREE]
    assert blake.value != sha.value
    # one algorithm's value under the other's name is refused, with both in the message
    for swapped in (blake._replace(value=sha.value), sha._replace(value=blake.value)):
        with pytest.raises(DigestMismatchError, match=str(swapped)):
            open_bytes(bundle.data, key, pinned=swapped)


def trailer_json(bundle: Bundle) -> dict[str, object]:
    body = bundle.data[bundle.header.trailer_offset + fmt.TRAILER_HEAD_SIZE :]
    return dict(json.loads(body))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_signatures_cover_the_digest_they_name(
    key: SecretBytes, algorithm: fmt.DigestAlgorithm
) -> None:
    priv, pub = sign.generate_signing_key()
    trusted = sign.load_public_keys(pub)
    bundle = make_bundle(
        FILES, key, sign_key=sign.load_private_key(priv), digest_algorithm=algorithm
    )
    (entry,) = trailer_json(bundle)["signatures"]  # type: ignore[misc]
    # a sha256tree signature's entry is written as before (readers before blake3tree read it)
    if algorithm is fmt.DigestAlgorithm.SHA256_TREE:
        assert "digest" not in entry
    else:
        assert entry["digest"] == "blake3tree"
    result, _ = open_bytes(bundle.data, key, pinned=bundle.digest, trusted=trusted)
    assert result.signer == sign.key_id(trusted[0])
    # checked over the other digest: refused, and the message says what to pin instead
    other = next(a for a in ALGORITHMS if a is not algorithm)
    with pytest.raises(SignatureError, match=f"cover its {algorithm} digest"):
        open_bytes(bundle.data, key, trusted=trusted, digest_algorithm=other)


def test_a_signature_relabelled_to_the_other_digest_does_not_verify(key: SecretBytes) -> None:
    """An attacker who edits the trailer so that a sha256tree signature claims to cover the
    blake3tree digest (or the reverse) gains nothing: each is signed under its own domain."""
    priv, pub = sign.generate_signing_key()
    trusted = sign.load_public_keys(pub)
    for algorithm in ALGORITHMS:
        bundle = make_bundle(
            FILES, key, sign_key=sign.load_private_key(priv), digest_algorithm=algorithm
        )
        other = next(a for a in ALGORITHMS if a is not algorithm)
        stream = io.BytesIO(bundle.data)
        other_digest, trailer = digest_records(fmt.read_header(stream), stream, algorithm=other)
        # the other digest's value, signed under this digest's domain, then relabelled
        forged_entry = sign.sign(
            sign.load_private_key(priv), other_digest._replace(algorithm=algorithm)
        )
        relabelled = dataclasses.replace(forged_entry, digest_algorithm=other)
        data = bundle.data[: bundle.header.trailer_offset] + fmt.Trailer((relabelled,)).pack()
        with pytest.raises(SignatureError, match="does not verify"):
            open_bytes(data, key, pinned=other_digest, trusted=trusted)
        assert trailer.signatures[0].digest_algorithm is algorithm


def test_trailer_with_an_unknown_digest_is_refused(key: SecretBytes) -> None:
    priv, _ = sign.generate_signing_key()
    bundle = make_bundle(FILES, key, sign_key=sign.load_private_key(priv))
    body = trailer_json(bundle)
    body["signatures"][0]["digest"] = "md5tree"  # type: ignore[index]
    raw = json.dumps(body, separators=(",", ":")).encode()
    with pytest.raises(FormatError, match="unsupported digest algorithm"):
        fmt.parse_trailer_body(raw)


@pytest.mark.parametrize(
    "text",
    [
        "blake3:" + "ab" * 32,
        "BLAKE3TREE:" + "ab" * 32,
        "blake3tree:" + "AB" * 32,
        "blake3tree:" + "ab" * 31,
        "sha512tree:" + "ab" * 32,
        "blake3tree:" + "ab" * 32 + "\n",
    ],
)
def test_malformed_pins_are_refused_with_both_forms_named(text: str) -> None:
    with pytest.raises(FormatError, match="'blake3tree:' or 'sha256tree:'"):
        fmt.parse_digest(text)


def test_leaves_in_any_order_give_one_root(key: SecretBytes) -> None:
    bundle = make_bundle(FILES, key, chunk_size=4096)
    recs = records(bundle)
    for algorithm in ALGORITHMS:
        tree = TreeDigest(bundle.header, algorithm)
        for i in reversed(range(len(recs))):
            tree.add_record(i, recs[i])
        assert tree.finish().value == by_definition(bundle, algorithm)


def test_a_digest_checked_against_a_pin_of_the_other_algorithm_is_a_caller_error() -> None:
    blake = fmt.BundleDigest(fmt.DigestAlgorithm.BLAKE3_TREE, bytes(32))
    sha = fmt.BundleDigest(fmt.DigestAlgorithm.SHA256_TREE, bytes(32))
    with pytest.raises(ValueError, match="computed a blake3tree digest for a sha256tree pin"):
        check_pin(blake, sha)
    check_pin(blake, None)
    with pytest.raises(DigestMismatchError, match="does not match the pinned digest"):
        check_pin(blake, blake._replace(value=b"\x01" * 32))
