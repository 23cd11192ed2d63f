"""Kubernetes resource quantities: parse, compare and format the way the API server does.

Only what the operator needs: byte sizes (memory, tmpfs) and CPU amounts in requests and
limits. Parsing follows ``k8s.io/apimachinery/pkg/api/resource`` (binary suffixes Ki..Ei,
decimal suffixes n u m k M G T P E, and exponents); formatting produces the canonical
binary form the API server stores for byte counts, so a rendered value compares equal to
what the server hands back.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_QUANTITY_RE = re.compile(
    r"^(?P<num>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$"
)

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}


class QuantityError(ValueError):
    """Not a Kubernetes quantity."""


def parse_quantity(value: str | int | float) -> Decimal:
    """The exact value of a quantity (``"1Gi"`` → 1073741824, ``"500m"`` → 0.5)."""
    if isinstance(value, bool):
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(str(value))
    text = str(value).strip()
    match = _QUANTITY_RE.match(text)
    if not match:
        raise QuantityError(f"{value!r} is not a quantity (for example 512Mi, 2Gi, 500m or 4)")
    try:
        number = Decimal(match["num"])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only numbers
        raise QuantityError(f"{value!r} is not a quantity") from exc
    suffix = match["suffix"]
    if not suffix:
        return number
    if suffix in _BINARY:
        return number * (Decimal(1024) ** _BINARY[suffix])
    if suffix in _DECIMAL:
        return number * (Decimal(10) ** _DECIMAL[suffix])
    return number * (Decimal(10) ** int(suffix[1:]))


def quantities_equal(left: object, right: object) -> bool:
    """Whether two quantity spellings mean the same amount (``"1Gi"`` == ``"1024Mi"``)."""
    if not isinstance(left, (str, int, float)) or not isinstance(right, (str, int, float)):
        return False
    try:
        return parse_quantity(left) == parse_quantity(right)
    except QuantityError:
        return False


def parse_bytes(value: str | int) -> int:
    """A byte count: a positive whole number of bytes, from a quantity."""
    amount = parse_quantity(value)
    if amount != amount.to_integral_value():
        raise QuantityError(f"{value!r} is not a whole number of bytes")
    if amount <= 0:
        raise QuantityError(f"{value!r} must be more than zero bytes")
    return int(amount)


def format_bytes(count: int) -> str:
    """The canonical binary-SI spelling of a byte count, as the API server stores it.

    The server keeps a binary quantity in the largest power-of-1024 unit that holds it
    exactly (1073741824 → ``1Gi``, 1536 MiB → ``1536Mi``); a count that is not a multiple
    of 1024 stays a plain number.
    """
    if count < 0:
        raise QuantityError("a byte count cannot be negative")
    if count == 0:
        return "0"
    unit = ""
    for name in ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"):
        if count % 1024:
            break
        count //= 1024
        unit = name
    return f"{count}{unit}"


MIB = 1024 * 1024


def round_up_mib(count: int) -> int:
    """Round a byte count up to a whole MiB."""
    return -(-count // MIB) * MIB
