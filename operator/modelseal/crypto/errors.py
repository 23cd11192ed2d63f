"""Errors of the sealed-bundle format.

Messages say what is wrong and never carry key material or plaintext: they are built only
from sizes, offsets, indices, names and digests of public data.
"""

from __future__ import annotations


class BundleError(Exception):
    """Base class: the bundle cannot be sealed, parsed, authenticated or published."""


class FormatError(BundleError):
    """The bytes are not a well-formed bundle of a supported version (bad magic, bad
    lengths, malformed or absurd header fields, trailing garbage...)."""


class ManifestError(BundleError):
    """The manifest is malformed or unsafe (path traversal, absolute path, symlink,
    duplicate, sizes that do not add up)."""


class TruncatedError(FormatError):
    """The bundle ends before its header says it should."""


class AuthenticationError(BundleError):
    """A chunk, the header binding or the data key failed authentication: the bundle was
    modified, truncated, reordered, spliced, or the key is not this bundle's key."""


class DigestMismatchError(BundleError):
    """The bundle's digest is not the pinned digest."""


class SignatureError(BundleError):
    """A required publisher signature is missing or does not verify."""
