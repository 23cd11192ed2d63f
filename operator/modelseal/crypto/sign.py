"""Optional Ed25519 publisher signatures.

A signature covers  "modelseal/v1/signature\\0" || sha256tree digest, or
"modelseal/v1/signature/blake3tree\\0" || blake3tree digest (its trailer entry says which
digest: ``SignatureEntry.digest_algorithm``) — and the digest covers the core header (which
carries the manifest digest) and every ciphertext byte. A verifier checks the signatures
over the digest it computed (the pin's algorithm). Signatures live in the trailer. A
verifier trusts only the public keys it is configured with; the public key stored next to
a signature is informational (shown by `inspect`).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .errors import SignatureError
from .format import BundleDigest, DigestAlgorithm, SignatureEntry, Trailer

_DOMAINS = {
    DigestAlgorithm.SHA256_TREE: b"modelseal/v1/signature\x00",
    DigestAlgorithm.BLAKE3_TREE: b"modelseal/v1/signature/blake3tree\x00",
}
_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.S)


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).digest()[:8].hex()


def generate_signing_key() -> tuple[bytes, bytes]:
    """A new key pair as (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def load_private_key(data: bytes, password: bytes | None = None) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"cannot load the signing key: {type(exc).__name__}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError("the signing key is not an Ed25519 key")
    return key


def load_public_keys(data: bytes) -> list[Ed25519PublicKey]:
    """Trusted keys from PEM blocks, or from lines of base64 raw 32-byte keys."""
    keys: list[Ed25519PublicKey] = []
    blocks = _PEM_BLOCK.findall(data)
    try:
        for block in blocks:
            key = serialization.load_pem_public_key(block)
            if not isinstance(key, Ed25519PublicKey):
                raise SignatureError("a trusted public key is not an Ed25519 key")
            keys.append(key)
        if not blocks:
            for line in data.split(b"\n"):
                line = line.strip()
                if line and not line.startswith(b"#"):
                    keys.append(
                        Ed25519PublicKey.from_public_bytes(base64.b64decode(line, validate=True))
                    )
    except SignatureError:
        raise
    except ValueError as exc:
        raise SignatureError(f"cannot load a trusted public key: {exc}") from None
    if not keys:
        raise SignatureError("no public keys found in the trusted-keys data")
    return keys


def _message(digest: BundleDigest) -> bytes:
    return _DOMAINS[digest.algorithm] + digest.value


def sign(key: Ed25519PrivateKey, digest: BundleDigest) -> SignatureEntry:
    public = key.public_key()
    return SignatureEntry(
        key_id=key_id(public),
        public_key=raw_public(public),
        signature=key.sign(_message(digest)),
        digest_algorithm=digest.algorithm,
    )


def verify(trailer: Trailer, digest: BundleDigest, trusted: Sequence[Ed25519PublicKey]) -> str:
    """Return the key id of a trusted key with a valid signature over `digest`, else raise
    SignatureError."""
    if not trailer.signatures:
        raise SignatureError("the bundle is not signed, but a publisher signature is required")
    over = [e for e in trailer.signatures if e.digest_algorithm is digest.algorithm]
    if not over:
        others = sorted({e.digest_algorithm.value for e in trailer.signatures})
        raise SignatureError(
            f"the bundle's signatures cover its {', '.join(others)} digest, not the "
            f"{digest.algorithm} digest checked here: pin the bundle by its "
            f"{others[0]} digest (`modelseal inspect --digest-algorithm {others[0]}`)"
        )
    by_id = {key_id(k): k for k in trusted}
    bad: list[str] = []
    for entry in over:
        trusted_key = by_id.get(entry.key_id)
        if trusted_key is None:
            continue
        try:
            trusted_key.verify(entry.signature, _message(digest))
        except InvalidSignature:
            bad.append(entry.key_id)
            continue
        return entry.key_id
    if bad:
        raise SignatureError(f"signature by trusted key {bad[0]} does not verify")
    signers = ", ".join(s.key_id for s in trailer.signatures)
    raise SignatureError(f"no signature by a trusted key (signed by: {signers})")
