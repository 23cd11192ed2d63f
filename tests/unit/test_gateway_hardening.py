"""Pure logic behind the gateway's hardening (issue 12): lone surrogates in request JSON."""

from __future__ import annotations

import json

import pytest

from modelseal.gateway.kserve import BadRequest, check_unicode, parse_json


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id":"\\ud800"}',
        b'{"id":"ok","parameters":{"\\uDFFF":1}}',
        b'{"inputs":[{"name":"x","data":["a\\udbff"]}]}',
        b'{"id":"\\udc00\\ud800"}',  # a low then a high surrogate: not a pair
    ],
)
def test_lone_surrogates_are_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="lone surrogate"):
        check_unicode(raw, parse_json(raw))


@pytest.mark.parametrize(
    "raw",
    [
        b'{"id":"\\ud83d\\ude00"}',  # a pair: one emoji
        b'{"id":"\\\\ud800"}',  # an escaped backslash, then plain text
        json.dumps({"id": "grüße ✓ \U0001f600"}, ensure_ascii=False).encode(),
        b'{"id":"plain"}',
    ],
)
def test_valid_unicode_passes(raw: bytes) -> None:
    check_unicode(raw, parse_json(raw))
