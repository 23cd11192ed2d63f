"""`modelseal.fastjson.loads` returns (and raises) what `json.loads` does, for bytes and text."""

from __future__ import annotations

import json

import pytest

from modelseal import fastjson

SAME = [
    b'{"kind":"PodList","items":[{"metadata":{"name":"a","resourceVersion":"123"}}]}',
    b'{"n": 1234567890123456789}',  # 19 digits: orjson's own integer
    b'{"n": -9223372036854775808, "m": 18446744073709551615}',
    b'{"big": 123456789012345678901234567890}',  # past 64 bits: exact, not a float
    b'{"big": -99999999999999999999}',
    b"[1.5e3, 0.1, 12345678901234567890.5]",  # 20 digits before a fraction: a float both ways
    b'{"s": "20 digits in a string: 98765432109876543210"}',
    b'{"nan": NaN, "inf": Infinity}',  # orjson refuses; the standard library reads
    '{"message":"caf\u00e9 \\ud83d\\ude00"}'.encode(),
    b'{"lone": "\\ud800"}',  # a lone surrogate escape
    b"[" * 600 + b"]" * 600,  # deeper than orjson's limit
]


@pytest.mark.parametrize("raw", SAME)
def test_bytes_and_text_read_as_the_standard_library(raw: bytes) -> None:
    expected = json.loads(raw)
    assert fastjson.loads(raw) == expected
    assert fastjson.loads(raw.decode()) == expected
    if b"big" in raw:
        assert isinstance(fastjson.loads(raw)["big"], int)


def test_text_with_a_lone_surrogate_reads_as_the_standard_library() -> None:
    text = '{"s": "\ud800"}'  # not encodable as UTF-8
    assert fastjson.loads(text) == json.loads(text)


@pytest.mark.parametrize("raw", [b'{"cut": ', b"", b'{"bad": "\xff"}', b"{'single': 1}"])
def test_what_the_standard_library_refuses_is_refused(raw: bytes) -> None:
    with pytest.raises(ValueError) as ours:
        fastjson.loads(raw)
    with pytest.raises(ValueError) as theirs:
        json.loads(raw)
    assert type(ours.value) is type(theirs.value)
