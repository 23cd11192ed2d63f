"""Tenant API keys: the hashed keys file, and checking a presented key.

The operator renders the keys file (JSON, from a Secret mounted at
``settings.api_keys_file``); the gateway re-reads it whenever it changes::

    {
      "consumers": [
        {"id": "alice", "tenant": "acme",
         "hash": "sha256:<64 hex digits of SHA-256(key)>"},
        {"id": "bob", "tenant": "acme",
         "hash": "scrypt:<N>:<r>:<p>:<salt, base64>:<derived key, base64>"},
        {"id": "carol", "tenant": "acme", "hash": "sha256:...", "disabled": true}
      ]
    }

``sha256`` suits machine-generated keys (32+ random bytes: nothing to brute-force);
``scrypt`` suits weaker secrets, at a cost of ~0.1 s per first use of a key (a verified key
is then remembered by its SHA-256 until the file changes). ``hash_key_sha256`` and
``hash_key_scrypt`` make the entries.

A presented key that is not in the table must cost next to nothing, or random keys make a
denial of service out of scrypt (issue 12, High 6). So:

* an entry may name a ``key_id`` (4..64 of ``[A-Za-z0-9-]``): its key is then issued as
  ``<key_id>.<secret>`` (``new_api_key``), and only a presented key starting with
  ``<key_id>.`` is ever put through that entry's scrypt; a key with an id no entry has is
  refused after one dict lookup. ``sha256`` entries are found by one dict lookup anyway.
* scrypt entries without a ``key_id`` (older files) still work, but every unknown key
  must be put through each of them; the gateway logs a warning at load. For them, and for
  keys with a known id, the slow checks are bounded: ``scrypt_parallel`` run at once, at
  most ``scrypt_waiting`` wait; beyond that ``KeysBusy`` (the gateway answers 503 with
  ``Retry-After``) instead of queueing without bound. Keys verified once are remembered,
  so known users do not queue behind a flood.

Clients send the key as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>`` (gRPC:
the same names as metadata). A key is 16..512 characters of ``[A-Za-z0-9._~+/=-]``;
anything else (control characters, spaces, CR/LF, a second header) is refused like a wrong
key: 401 with one message for every failure, so a caller learns nothing about which part
was wrong. A ``sha256`` key is found by the SHA-256 of what was presented (a dict lookup:
its timing depends on that digest only, which a caller cannot steer toward a stored one);
scrypt results are compared with ``hmac.compare_digest``.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelseal.quota.license import NAME_RE

KEY_RE = re.compile(r"^[A-Za-z0-9._~+/=-]{16,512}$")
KEY_ID_RE = re.compile(r"^[A-Za-z0-9-]{4,64}$")
_SCRYPT_MAX_N = 1 << 20
_CACHE_MAX = 10_000


class KeysError(ValueError):
    """The keys file is missing, not JSON, or does not match the format."""


class KeysBusy(RuntimeError):
    """Too many slow (scrypt) key checks are running or waiting: try again shortly."""


class _ConsumerSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    id: Annotated[str, Field(min_length=1, max_length=253)]
    tenant: str
    hash: str
    key_id: str | None = None
    disabled: bool = False


class _KeysFileSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    consumers: list[_ConsumerSpec]


@dataclass(frozen=True, slots=True)
class Consumer:
    id: str
    tenant: str


@dataclass(frozen=True, slots=True)
class _Scrypt:
    n: int
    r: int
    p: int
    salt: bytes
    derived: bytes
    consumer: Consumer
    key_id: str | None = None


@dataclass(frozen=True, slots=True)
class KeyTable:
    """The parsed keys file."""

    sha256: tuple[tuple[bytes, Consumer], ...]
    scrypt: tuple[_Scrypt, ...]
    by_digest: dict[bytes, Consumer] = field(default_factory=dict)
    scrypt_by_id: dict[str, tuple[_Scrypt, ...]] = field(default_factory=dict)
    scrypt_without_id: tuple[_Scrypt, ...] = ()

    @property
    def size(self) -> int:
        return len(self.sha256) + len(self.scrypt)

    def scrypt_candidates(self, key: str) -> tuple[_Scrypt, ...]:
        """The scrypt entries a presented key could match (most often none or one)."""
        key_id, dot, _ = key.partition(".")
        named = self.scrypt_by_id.get(key_id, ()) if dot else ()
        return named + self.scrypt_without_id if self.scrypt_without_id else named


def hash_key_sha256(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def new_api_key(key_id: str | None = None) -> tuple[str, str]:
    """(key id, key): a fresh key ``<key_id>.<43 random characters>`` (256 bits)."""
    kid = key_id or secrets.token_hex(6)
    if not KEY_ID_RE.match(kid):
        raise ValueError("a key id is 4..64 of [A-Za-z0-9-]")
    return kid, f"{kid}.{secrets.token_urlsafe(32)}"


def hash_key_scrypt(key: str, n: int = 16384, r: int = 8, p: int = 1) -> str:
    salt = secrets.token_bytes(16)
    derived = hashlib.scrypt(key.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    b64 = base64.b64encode
    return f"scrypt:{n}:{r}:{p}:{b64(salt).decode()}:{b64(derived).decode()}"


def _parse_hash(
    text: str, consumer: Consumer, key_id: str | None = None
) -> tuple[Literal["sha256"], bytes] | _Scrypt:
    algo, _, rest = text.partition(":")
    if algo == "sha256":
        if not re.fullmatch(r"[0-9a-f]{64}", rest):
            raise KeysError(f"consumer {consumer.id}: sha256 hash must be 64 lowercase hex digits")
        return "sha256", bytes.fromhex(rest)
    if algo == "scrypt":
        parts = rest.split(":")
        try:
            n, r, p = (int(x) for x in parts[:3])
            salt = base64.b64decode(parts[3], validate=True)
            derived = base64.b64decode(parts[4], validate=True)
        except (ValueError, IndexError):
            raise KeysError(
                f"consumer {consumer.id}: scrypt hash must be scrypt:N:r:p:salt_b64:hash_b64"
            ) from None
        if len(parts) != 5 or n < 2 or n > _SCRYPT_MAX_N or n & (n - 1) or r < 1 or p < 1:
            raise KeysError(f"consumer {consumer.id}: bad scrypt parameters")
        if len(salt) < 8 or len(derived) < 16:
            raise KeysError(f"consumer {consumer.id}: scrypt salt or hash too short")
        return _Scrypt(n, r, p, salt, derived, consumer, key_id)
    raise KeysError(f"consumer {consumer.id}: unknown hash algorithm {algo!r}")


def parse_keys(data: bytes | str) -> KeyTable:
    try:
        raw: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeysError(f"API keys file is not JSON: {exc}") from exc
    try:
        spec = _KeysFileSpec.model_validate_json(json.dumps(raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in exc.errors()
        )
        raise KeysError(f"API keys file is not valid: {problems}") from None
    sha: list[tuple[bytes, Consumer]] = []
    scr: list[_Scrypt] = []
    seen: set[str] = set()
    digests: set[bytes] = set()
    for item in spec.consumers:
        if item.id in seen:
            raise KeysError(f"API keys file names consumer {item.id!r} twice")
        seen.add(item.id)
        if not NAME_RE.match(item.tenant):
            raise KeysError(f"consumer {item.id}: tenant {item.tenant!r} is not a valid name")
        if item.key_id is not None and not KEY_ID_RE.match(item.key_id):
            raise KeysError(f"consumer {item.id}: key_id must be 4..64 of [A-Za-z0-9-]")
        consumer = Consumer(item.id, item.tenant)
        parsed = _parse_hash(item.hash, consumer, item.key_id)
        if item.disabled:
            continue
        if isinstance(parsed, _Scrypt):
            scr.append(parsed)
        else:
            if parsed[1] in digests:
                raise KeysError(f"consumer {item.id}: the same key is given to two consumers")
            digests.add(parsed[1])
            sha.append((parsed[1], consumer))
    by_id: dict[str, list[_Scrypt]] = {}
    for entry in scr:
        if entry.key_id is not None:
            by_id.setdefault(entry.key_id, []).append(entry)
    return KeyTable(
        tuple(sha),
        tuple(scr),
        by_digest=dict(sha),
        scrypt_by_id={k: tuple(v) for k, v in by_id.items()},
        scrypt_without_id=tuple(e for e in scr if e.key_id is None),
    )


def presented_key(values: Sequence[str], api_key_values: Sequence[str]) -> str | None:
    """The one well-formed key a request carries, or None.

    ``values``: every ``Authorization`` header; ``api_key_values``: every ``X-API-Key``.
    More than one credential, a non-Bearer scheme or a malformed key all give None.
    """
    candidates: list[str] = []
    for value in values:
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer":
            return None
        candidates.append(token)
    candidates.extend(api_key_values)
    if len(candidates) != 1:
        return None
    key = candidates[0]
    return key if KEY_RE.match(key) else None


class KeyRing:
    """Checks presented keys against the current table; caches scrypt results.

    At most ``scrypt_parallel`` scrypt checks run at once and ``scrypt_waiting`` wait;
    a check beyond that raises ``KeysBusy`` at once (the work a flood of unknown keys can
    make is bounded, and it never delays keys found by a lookup)."""

    def __init__(
        self, table: KeyTable | None = None, scrypt_parallel: int = 2, scrypt_waiting: int = 16
    ) -> None:
        self.table = table
        self._good: OrderedDict[bytes, Consumer] = OrderedDict()
        self._bad: OrderedDict[bytes, None] = OrderedDict()
        self._scrypt_gate = asyncio.Semaphore(scrypt_parallel)
        self._slow_max = scrypt_parallel + scrypt_waiting
        self._slow_now = 0
        self.busy_refusals = 0

    def replace(self, table: KeyTable | None) -> None:
        self.table = table
        self._good.clear()
        self._bad.clear()

    def lookup_fast(self, key: str) -> tuple[Consumer | None, bytes, bool]:
        """(consumer, sha256 of the key, whether a slow scrypt check is still needed)."""
        table = self.table
        digest = hashlib.sha256(key.encode()).digest()
        if table is None:
            return None, digest, False
        found = table.by_digest.get(digest)
        if found is not None:
            return found, digest, False
        cached = self._good.get(digest)
        if cached is not None:
            return cached, digest, False
        if digest in self._bad or not table.scrypt_candidates(key):
            return None, digest, False
        return None, digest, True

    async def lookup(self, key: str) -> Consumer | None:
        consumer, digest, slow = self.lookup_fast(key)
        if not slow:
            return consumer
        table = self.table
        assert table is not None
        if self._slow_now >= self._slow_max:
            self.busy_refusals += 1
            raise KeysBusy("too many API keys are being checked: try again shortly")
        self._slow_now += 1
        try:
            async with self._scrypt_gate:
                found = await asyncio.to_thread(
                    _scrypt_match, table.scrypt_candidates(key), key.encode()
                )
        finally:
            self._slow_now -= 1
        if self.table is not table:  # reloaded meanwhile: answer from the new table
            return await self.lookup(key)
        cache: OrderedDict[bytes, Any] = self._good if found else self._bad
        cache[digest] = found
        if len(cache) > _CACHE_MAX:
            cache.popitem(last=False)
        return found


def _scrypt_match(entries: tuple[_Scrypt, ...], key: bytes) -> Consumer | None:
    found: Consumer | None = None
    for e in entries:
        derived = hashlib.scrypt(
            key, salt=e.salt, n=e.n, r=e.r, p=e.p, dklen=len(e.derived), maxmem=2**31 - 1
        )
        if hmac.compare_digest(derived, e.derived):
            found = e.consumer
    return found
