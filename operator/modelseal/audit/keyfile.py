"""Reading a secret from a mounted file (HMAC checkpoint key, tokens, passwords): the one
function every reader uses, so that the gateway, the operator and ``modelseal audit
verify`` see the same bytes for the same file.

The file's bytes are the secret, less one trailing line end (``\\n`` or ``\\r\\n``, as an
editor or ``echo`` leaves it). Nothing else is stripped: a key that ends in spaces keeps
them (``.strip()`` on one side only would make the signer and the verifier disagree).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

#: Shortest HMAC key accepted (bytes).
MIN_HMAC_KEY_BYTES = 16


def read_key(path: Path) -> bytes:
    """The file's bytes with one trailing newline removed; an empty file is an error."""
    data = Path(path).read_bytes()
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise ValueError(f"key file {path} is empty")
    return data


def read_hmac_key(path: Path) -> bytes:
    """An HMAC key from ``path`` (``read_key``), refused when shorter than 16 bytes."""
    key = read_key(path)
    if len(key) < MIN_HMAC_KEY_BYTES:
        raise ValueError(
            f"key file {path} holds {len(key)} bytes: an HMAC key needs at least "
            f"{MIN_HMAC_KEY_BYTES}"
        )
    return key


def model_audit_key(master: bytes, namespace: str, model: str) -> bytes:
    """The checkpoint key of one model's gateways, derived from the platform's audit key
    (the chart's Secret): each model's key signs only its own log, and whoever holds the
    platform key verifies every model's (``modelseal audit verify --model ns/name``).
    Hex, so that it is a text file like the platform key."""
    label = b"modelseal-audit-v1\0" + namespace.encode() + b"\0" + model.encode()
    return hmac.new(master, label, hashlib.sha256).hexdigest().encode()
