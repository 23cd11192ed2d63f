"""The sealed bundle format (pure: bytes, streams and callbacks; no network, no Vault).

See docs/bundle-format.md. Entry points: `format` (layout and header parsing), `manifest`,
`stream` (keys and chunk AEAD), `digest`, `sign`, `seal` (parallel sealing), `pipeline`
(parallel opening and keyless hashing) and `workers` (their buffer pool and read loop).
"""

from .errors import (
    AuthenticationError,
    BundleError,
    DigestMismatchError,
    FormatError,
    ManifestError,
    SignatureError,
    TruncatedError,
)

__all__ = [
    "AuthenticationError",
    "BundleError",
    "DigestMismatchError",
    "FormatError",
    "ManifestError",
    "SignatureError",
    "TruncatedError",
]
