"""Pure logic behind the gateway's hardening (issue 12): lone surrogates in request JSON,
metric labels only from known models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelseal.gateway.core import Gateway, settings_for_tests
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


async def test_model_label_is_bounded_by_the_licenses(tmp_path: Path) -> None:
    licenses = {"licenses": [{"tenant": "a", "models": ["digits", "identity"]}]}
    (tmp_path / "license.json").write_text(json.dumps(licenses))
    gw = Gateway(settings_for_tests(tmp_path))
    try:
        assert gw.model_label("digits") == "unknown"  # no license loaded yet
        gw.licenses_file.poll()
        assert gw.model_label("digits") == "digits"
        assert gw.model_label("identity") == "identity"
        assert {gw.model_label(f"random{i}") for i in range(1000)} == {"unknown"}
        assert gw.model_label("") == ""
        licenses["licenses"][0]["models"] = ["identity"]
        (tmp_path / "license.json").write_text(json.dumps(licenses))
        gw.licenses_file.poll()
        assert gw.model_label("digits") == "unknown"
    finally:
        await gw.store.close()
        await gw.upstream.close()
