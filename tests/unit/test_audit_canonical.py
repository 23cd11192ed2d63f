"""``audit.chain.canonical`` encodes flat records with orjson (issue 13 §2: the audit record
is on every request's path): the bytes must be exactly those the standard library writes,
or a log written before would no longer verify (the verifier re-encodes each line)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal.audit.chain import canonical


def reference(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


_text = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=1e9).map(lambda f: round(f, 3)),
    _text,
)


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(_text, _scalar, max_size=25))
def test_flat_records_are_encoded_as_the_standard_library_does(record: dict[str, Any]) -> None:
    assert canonical(record) == reference(record)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        _text,
        st.recursive(_scalar, lambda c: st.lists(c) | st.dictionaries(_text, c), max_leaves=8),
        max_size=6,
    )
)
def test_nested_values_too(record: dict[str, Any]) -> None:
    assert canonical(record) == reference(record)


def test_every_code_point_is_escaped_alike() -> None:
    for start in range(0, 0x110000, 0x800):
        chars = "".join(chr(c) for c in range(start, start + 0x800) if not 0xD800 <= c <= 0xDFFF)
        record = {"reason": chars, chars[:3] or "k": 1}
        assert canonical(record) == reference(record)


@pytest.mark.parametrize(
    "value",
    [math.nan, math.inf, -math.inf, 1e-05, 1e16, 1.5e300, -0.0, 0.0001, 2**64, -(2**63) - 1],
)
def test_floats_and_integers_the_libraries_print_differently(value: Any) -> None:
    record = {"latency_ms": value, "status": 200}
    assert canonical(record) == reference(record)


def test_a_lone_surrogate_still_fails_as_before() -> None:
    with pytest.raises(UnicodeEncodeError):
        canonical({"reason": "\ud800"})
