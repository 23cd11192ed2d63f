"""Canonical, strict JSON for the header, envelope, trailer and manifest.

Writers emit one canonical form (sorted keys, no whitespace, UTF-8). Readers are strict:
duplicate keys, NaN/Infinity, non-object documents, invalid UTF-8, and booleans where
numbers are expected are all refused, so two readers never disagree about a bundle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, NoReturn

from .errors import FormatError


def dumps(obj: Mapping[str, Any]) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def _bad_constant(name: str) -> NoReturn:
    raise FormatError(f"JSON constant {name} is not allowed")


def loads_object(data: bytes, what: str, error: type[Exception] = FormatError) -> dict[str, Any]:
    try:
        text = data.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not valid UTF-8 (byte {exc.start})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_bad_constant)
    except FormatError as exc:
        raise error(f"{what}: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise error(f"{what} is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(obj, dict):
        raise error(f"{what} must be a JSON object")
    return obj


class Fields:
    """Typed, strict access to the fields of one parsed JSON object."""

    def __init__(
        self, obj: Mapping[str, Any], what: str, error: type[Exception] = FormatError
    ) -> None:
        self.obj = obj
        self.what = what
        self.error = error

    def fail(self, message: str) -> Exception:
        return self.error(f"{self.what}: {message}")

    def only(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.obj) - allowed)
        if unknown:
            shown = ", ".join(repr(k[:64]) for k in unknown[:5])
            raise self.fail(f"unknown field(s) {shown}")

    def integer(self, key: str, lo: int, hi: int, default: int | None = None) -> int:
        if key not in self.obj:
            if default is not None:
                return default
            raise self.fail(f"missing field {key!r}")
        value = self.obj[key]
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(f"field {key!r} must be an integer")
        if not lo <= value <= hi:
            raise self.fail(f"field {key!r}={value} is outside [{lo}, {hi}]")
        return value

    def string(self, key: str, max_len: int, default: str | None = None, min_len: int = 0) -> str:
        if key not in self.obj:
            if default is not None:
                return default
            raise self.fail(f"missing field {key!r}")
        value = self.obj[key]
        if not isinstance(value, str):
            raise self.fail(f"field {key!r} must be a string")
        if not min_len <= len(value) <= max_len:
            raise self.fail(f"field {key!r} must be {min_len}..{max_len} characters long")
        return value

    def hex(self, key: str, nbytes: int) -> bytes:
        value = self.string(key, 2 * nbytes, min_len=2 * nbytes)
        if value != value.lower():
            raise self.fail(f"field {key!r} must be lowercase hex")
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise self.fail(f"field {key!r} must be {nbytes} bytes of hex") from None

    def items(self, key: str, max_len: int) -> list[Any]:
        if key not in self.obj:
            raise self.fail(f"missing field {key!r}")
        value = self.obj[key]
        if not isinstance(value, list):
            raise self.fail(f"field {key!r} must be a list")
        if len(value) > max_len:
            raise self.fail(f"field {key!r} has more than {max_len} items")
        return value
