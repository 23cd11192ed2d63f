"""Hash-chained audit records with HMAC-signed checkpoints (pure: no I/O).

Every line of an audit log is one JSON object: the canonical JSON (keys sorted, no spaces,
UTF-8) of the record without ``hash``, with ``"hash"`` appended as its last member (so
the record is serialised once). Each carries ``seq`` (0, 1, 2, ... without gaps), ``prev``
(the ``hash`` of the line before; 64 zeros for the first) and ``hash`` = SHA-256 of the
canonical JSON of the object without ``hash``. Readers parse the line; the order of its
members is not part of the check. Editing a line breaks its hash; deleting, inserting or
reordering lines breaks ``seq`` and ``prev``.

Line types:

* ``genesis``: first line of a chain: ``chain`` (random id), ``gw`` (gateway instance),
  ``key_id`` of the checkpoint key; ``after`` (``{"chain", "seq", "hash"}``) when it
  continues the history of an earlier run that the sink could not read back (stdout,
  webhook: see ``modelseal.audit.state``).
* ``request``: one per request and decision (fields set by the gateway; see
  ``modelseal.gateway.auditing``).
* ``event``: a decision not tied to a request (license loaded, refused, store down, ...).
* ``checkpoint``: every N records, every ``interval`` seconds (also when idle, so that a
  log that stops early shows it), and at shutdown (``reason: shutdown``: the *seal*; a
  log whose last line is not a seal was truncated, or its gateway is still running or
  crashed: ``modelseal audit verify --require-seal / --max-age``): ``mac`` = HMAC-SHA256
  (hex, keyed with the checkpoint key) of the canonical JSON of the checkpoint without ``mac`` and
  ``hash``. It covers ``prev``, so it signs the whole chain before it: whoever can rewrite
  the file but does not hold the key cannot recompute the chain past a checkpoint.
  ``key_id`` = first 16 hex digits of SHA-256(key) says which key signed it.

Without a key, checkpoints are written with ``mac: null`` (the chain still detects edits
made by anyone who does not recompute every later hash).

Fields come partly from requests (ids, names, error messages quoting them), so a record may
hold text that UTF-8 cannot encode (a lone surrogate such as JSON ``"\\ud800"``) or a value
JSON has no form for. Such a record is not refused: ``json_safe`` writes each lone
surrogate as the six visible characters ``\\udXXX`` and any other value as its ``str``,
and the record is sealed as it then reads, so it verifies like any other line.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from datetime import UTC, datetime
from typing import Any, Final

import orjson

ZERO_HASH: Final = "0" * 64
FORMAT_VERSION: Final = 1


def canonical(obj: dict[str, Any]) -> bytes:
    """The bytes that are hashed: JSON, keys sorted, no spaces, UTF-8. A flat record of
    strings, whole numbers, booleans, nulls and plain decimals (every request record) is
    encoded by orjson, byte for byte what the standard library writes and ten times
    faster; anything else (nested values, floats the two libraries print differently:
    NaN, infinities, exponents; integers past 64 bits; lone surrogates) by the standard
    library, as always (tests/unit/test_audit_canonical.py)."""
    for value in obj.values():
        kind = type(value)
        if kind is float:
            if not (value == 0.0 or 1e-4 <= abs(value) < 1e16):  # NaN fails both
                break
        elif kind is not str and kind is not int and kind is not bool and value is not None:
            break
    else:
        try:
            return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _safe_str(text: str) -> str:
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def json_safe(value: Any, depth: int = 0) -> Any:
    """``value`` made of JSON types only, every string encodable as UTF-8 (see above)."""
    if isinstance(value, str):
        return _safe_str(value)
    if value is None or isinstance(value, bool | int | float):
        if isinstance(value, int) and value.bit_length() > 14_000:  # over int->str's limit
            return f"(integer of {value.bit_length()} bits)"
        return value
    if isinstance(value, dict | list | tuple):
        if depth >= 32:
            return "(nested too deep)"
        if isinstance(value, dict):
            return {_safe_str(str(k)): json_safe(v, depth + 1) for k, v in value.items()}
        return [json_safe(v, depth + 1) for v in value]
    return _safe_str(str(value))


def record_hash(body: dict[str, Any]) -> str:
    """SHA-256 of the record without its ``hash`` field."""
    return hashlib.sha256(canonical({k: v for k, v in body.items() if k != "hash"})).hexdigest()


def key_id(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def checkpoint_mac(key: bytes, body: dict[str, Any]) -> str:
    signed = {k: v for k, v in body.items() if k not in ("mac", "hash")}
    return hmac.new(key, canonical(signed), hashlib.sha256).hexdigest()


_this_second: list[Any] = [-1, ""]  # (epoch second, its "YYYY-MM-DDTHH:MM:SS" in UTC)


def now_iso() -> str:
    """UTC now as ``2026-12-01T09:07:36.123456Z``. One record each: the second's text
    is made once a second (a third of the cost of ``datetime.isoformat`` each time)."""
    now = time.time()
    second = int(now)
    if second != _this_second[0]:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _this_second[0], _this_second[1] = second, text
    return f"{_this_second[1]}.{int((now - second) * 1_000_000):06d}Z"


class Chain:
    """Seals records into chained lines. Not thread-safe: one writer owns it."""

    def __init__(
        self,
        gateway: str,
        hmac_key: bytes | None = None,
        checkpoint_every: int = 100,
        *,
        seq: int = 0,
        prev: str | None = None,
    ) -> None:
        self.gateway = gateway
        self.hmac_key = hmac_key
        self.checkpoint_every = max(1, checkpoint_every)
        self.seq = seq  # seq of the next line
        self.prev = prev if prev is not None else ZERO_HASH
        self.since_checkpoint = 0
        self.key_id = key_id(hmac_key) if hmac_key else None
        self.chain_id: str | None = None  # known once this run wrote the genesis
        self.last_checkpoint = time.monotonic()

    @property
    def started(self) -> bool:
        return self.seq > 0

    def _seal(self, body: dict[str, Any]) -> bytes:
        body["seq"] = self.seq
        body["prev"] = self.prev
        body["v"] = FORMAT_VERSION
        body.pop("hash", None)
        try:
            hashed = canonical(body)  # serialised once: hashed, then written with its hash
        except (UnicodeEncodeError, TypeError, ValueError, RecursionError):
            body = json_safe(body)  # rare: only a record that cannot be written as it is
            hashed = canonical(body)
        digest = hashlib.sha256(hashed).hexdigest()
        body["hash"] = digest
        self.seq += 1
        self.prev = digest
        return b'%s,"hash":"%s"}\n' % (hashed[:-1], digest.encode())

    def genesis(self, **extra: Any) -> bytes:
        self.chain_id = secrets.token_hex(16)
        body = {
            "type": "genesis",
            "ts": now_iso(),
            "gw": self.gateway,
            "chain": self.chain_id,
            "key_id": self.key_id,
            **{k: v for k, v in extra.items() if v is not None},
        }
        return self._seal(body)

    def checkpoint(self, reason: str = "interval") -> bytes:
        body: dict[str, Any] = {
            "type": "checkpoint",
            "ts": now_iso(),
            "gw": self.gateway,
            "reason": reason,
            "key_id": self.key_id,
            "seq": self.seq,
            "prev": self.prev,
            "v": FORMAT_VERSION,
        }
        body["mac"] = checkpoint_mac(self.hmac_key, body) if self.hmac_key else None
        self.since_checkpoint = 0
        self.last_checkpoint = time.monotonic()
        return self._seal(body)

    def seal(self, record: dict[str, Any]) -> list[bytes]:
        """The record as a chained line, followed by a checkpoint when one is due."""
        lines = []
        if not self.started:
            lines.append(self.genesis())
        lines.append(self._seal(dict(record)))
        self.since_checkpoint += 1
        if self.since_checkpoint >= self.checkpoint_every:
            lines.append(self.checkpoint())
        return lines
