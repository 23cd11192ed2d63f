"""Vault Transit calls for sealed bundles: make, unwrap and rewrap a bundle's data key.

- `generate_data_key`: `POST <mount>/datakey/plaintext/<key>` — a fresh 256-bit key and
  its wrapped form (`vault:vN:...`); used once per `modelseal seal`.
- `unwrap_data_key`: `POST <mount>/decrypt/<key>` — what the unsealer's policy allows.
- `rewrap_data_key`: `POST <mount>/rewrap/<key>` — re-wraps to the key's latest version
  without Vault (or us) exposing the plaintext key.

Plaintext keys come back as `SecretBytes`; Python cannot scrub the strings hvac decoded
them from, so callers keep the key's life short and wipe the SecretBytes when done.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any, cast

import hvac

from modelseal.crypto.stream import DATA_KEY_SIZE, SecretBytes

from .auth import TransitError, VaultAuthError, VaultError, VaultUnreachableError, call

_VERSION = re.compile(r"^vault:v([0-9]+):")


@dataclass(frozen=True)
class DataKey:
    key: SecretBytes
    wrapped: str
    key_version: int


@dataclass(frozen=True)
class KeyInfo:
    name: str
    type: str
    latest_version: int
    min_decryption_version: int
    min_encryption_version: int


def _addr(client: hvac.Client) -> str:
    return str(getattr(client, "url", "?"))


def _transit(what: str, client: hvac.Client, fn: Any) -> dict[str, Any]:
    try:
        result = call(what, _addr(client), fn)
    except (VaultUnreachableError, VaultAuthError):
        raise
    except VaultError as exc:
        text = str(exc)
        if "disallowed by policy" in text or "too old" in text:
            raise TransitError(
                f"{what}: the bundle's data key is wrapped with a Transit key version below "
                "the key's min_decryption_version; rewrap the bundle (modelseal rewrap) "
                "with a token that may, or lower min_decryption_version"
            ) from None
        if "message authentication failed" in text or "invalid ciphertext" in text:
            raise TransitError(
                f"{what}: Transit could not decrypt the wrapped data key: it was not "
                "wrapped by this Transit key (wrong key name?) or it was tampered with"
            ) from None
        raise TransitError(text) from None
    if not isinstance(result, dict) or not isinstance(result.get("data"), dict):
        raise TransitError(f"{what}: unexpected answer from Vault")
    return cast(dict[str, Any], result["data"])


def _version(wrapped: str, data: dict[str, Any]) -> int:
    version = data.get("key_version")
    if isinstance(version, int) and not isinstance(version, bool) and version > 0:
        return version
    match = _VERSION.match(wrapped)
    if not match:
        raise TransitError("Vault returned a wrapped key without a version")
    return int(match.group(1))


def _decode_key(b64: object, what: str) -> SecretBytes:
    if not isinstance(b64, str):
        raise TransitError(f"{what}: Vault returned no plaintext key")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise TransitError(f"{what}: Vault returned a malformed plaintext key") from None
    if len(raw) != DATA_KEY_SIZE:
        raise TransitError(
            f"{what}: the unwrapped key has {len(raw)} bytes, expected {DATA_KEY_SIZE}"
        )
    key = SecretBytes(raw)
    del raw
    return key


def generate_data_key(client: hvac.Client, key_name: str, mount: str = "transit") -> DataKey:
    what = f"Transit datakey ({mount}/datakey/plaintext/{key_name})"
    data = _transit(
        what,
        client,
        lambda: client.secrets.transit.generate_data_key(
            name=key_name, key_type="plaintext", bits=256, mount_point=mount
        ),
    )
    wrapped = data.get("ciphertext")
    if not isinstance(wrapped, str):
        raise TransitError(f"{what}: Vault returned no wrapped key")
    key = _decode_key(data.pop("plaintext", None), what)
    return DataKey(key, wrapped, _version(wrapped, data))


def unwrap_data_key(
    client: hvac.Client, key_name: str, wrapped: str, mount: str = "transit"
) -> SecretBytes:
    what = f"Transit decrypt ({mount}/decrypt/{key_name})"
    data = _transit(
        what,
        client,
        lambda: client.secrets.transit.decrypt_data(
            name=key_name, ciphertext=wrapped, mount_point=mount
        ),
    )
    return _decode_key(data.pop("plaintext", None), what)


def rewrap_data_key(
    client: hvac.Client, key_name: str, wrapped: str, mount: str = "transit"
) -> tuple[str, int]:
    """Re-wrap to the key's latest version; returns (new wrapped key, its version)."""
    what = f"Transit rewrap ({mount}/rewrap/{key_name})"
    data = _transit(
        what,
        client,
        lambda: client.secrets.transit.rewrap_data(
            name=key_name, ciphertext=wrapped, mount_point=mount
        ),
    )
    new = data.get("ciphertext")
    if not isinstance(new, str):
        raise TransitError(f"{what}: Vault returned no ciphertext")
    return new, _version(new, data)


def key_info(client: hvac.Client, key_name: str, mount: str = "transit") -> KeyInfo:
    what = f"Transit read key ({mount}/keys/{key_name})"
    data = _transit(
        what, client, lambda: client.secrets.transit.read_key(name=key_name, mount_point=mount)
    )
    return KeyInfo(
        name=key_name,
        type=str(data.get("type", "")),
        latest_version=int(data.get("latest_version", 0)),
        min_decryption_version=int(data.get("min_decryption_version", 0)),
        min_encryption_version=int(data.get("min_encryption_version", 0)),
    )
