"""Pure logic behind the gateway's hardening (issue 12): lone surrogates in request JSON,
metric labels only from known models, API keys whose unknown ones cost a lookup, Redis
credentials from files and the chart's Redis ACL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from modelseal.gateway.core import Gateway
from modelseal.gateway.keys import (
    KEY_RE,
    Consumer,
    KeyRing,
    KeysBusy,
    KeysError,
    KeyTable,
    hash_key_scrypt,
    hash_key_sha256,
    new_api_key,
    parse_keys,
)
from modelseal.gateway.kserve import BadRequest, check_unicode, parse_json
from modelseal.gateway.wiring import redis_credentials
from modelseal.store.redis import gateway_acl_rule
from modelseal.testing import settings_for_tests


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


# -- API keys: unknown keys cost a lookup, slow checks are bounded (High 6) --------------


def _keys(*consumers: dict[str, object]) -> KeyTable:
    return parse_keys(json.dumps({"consumers": list(consumers)}))


def test_new_api_key_has_its_id_and_256_bits() -> None:
    kid, key = new_api_key()
    assert key.startswith(kid + ".") and KEY_RE.match(key) and len(key) >= len(kid) + 43
    assert new_api_key("team-a")[0] == "team-a"
    with pytest.raises(ValueError, match="key id"):
        new_api_key("no.dots")


async def test_unknown_key_ids_never_reach_scrypt() -> None:
    kid, key = new_api_key()
    table = _keys(
        {"id": "human", "tenant": "t", "key_id": kid, "hash": hash_key_scrypt(key, n=1024)},
    )
    ring = KeyRing(table)
    for probe in (new_api_key()[1], "x" * 40, f"{kid}x.abcdefghijklmnop"):
        assert ring.lookup_fast(probe)[2] is False  # refused by a lookup: no KDF
    assert ring.lookup_fast(kid + ".wrong-secret-0123456789")[2] is True
    assert await ring.lookup(kid + ".wrong-secret-0123456789") is None
    assert await ring.lookup(key) == Consumer("human", "t")
    assert ring.lookup_fast(key) == (Consumer("human", "t"), ring.lookup_fast(key)[1], False)


def test_key_ids_are_checked() -> None:
    with pytest.raises(KeysError, match="key_id"):
        _keys({"id": "a", "tenant": "t", "key_id": "a.b", "hash": hash_key_sha256("k" * 20)})


async def test_scrypt_checks_are_bounded_and_known_keys_never_wait() -> None:
    sha_key = "sha-user-key-0123456789abcdef"
    table = _keys(
        {"id": "fast", "tenant": "t", "hash": hash_key_sha256(sha_key)},
        {"id": "legacy", "tenant": "t", "hash": hash_key_scrypt("legacy-secret-012345", n=1 << 14)},
    )
    assert len(table.scrypt_without_id) == 1
    ring = KeyRing(table, scrypt_parallel=1, scrypt_waiting=2)
    probes = [asyncio.ensure_future(ring.lookup(f"random-{i:04d}-abcdefghijkl")) for i in range(40)]
    await asyncio.sleep(0)  # every probe has started: 3 hold or wait for a check
    # a known key is answered while the flood is queued, without waiting for it
    # (it completes in its first step: it never awaits anything)
    known = ring.lookup(sha_key)
    with pytest.raises(StopIteration) as done:
        known.send(None)
    assert done.value.value == Consumer("fast", "t")
    results = await asyncio.gather(*probes, return_exceptions=True)
    busy = [r for r in results if isinstance(r, KeysBusy)]
    assert len(busy) == 37 and ring.busy_refusals == 37
    assert [r for r in results if not isinstance(r, KeysBusy)] == [None, None, None]


# -- quota Redis: authentication (High 2) ------------------------------------------------

CHART_REDIS = Path(__file__).resolve().parents[2] / "charts/modelseal/templates/redis.yaml"


def test_chart_redis_acl_is_the_gateways_rule() -> None:
    text = CHART_REDIS.read_text()
    lines = [line.strip() for line in text.splitlines()]
    user = next(line for line in lines if line.startswith("user modelseal "))
    assert user == gateway_acl_rule("modelseal", "{{ sha256sum $password }}")
    assert "user default off resetpass resetkeys resetchannels nocommands" in lines
    # Redis reads its users from the mounted ACL file; no password in its arguments
    start = text.index("args:")
    args = text[start : text.index("ports:", start)]
    assert "--aclfile" in args and "requirepass" not in text and "$password" not in args
    assert args.split("--protected-mode")[1].split()[1] == '"yes"'


def test_redis_credentials_come_from_files_only(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret-pw\n")
    (tmp_path / "user").write_text("modelseal\n")
    base = settings_for_tests(tmp_path, quota_store="redis", redis_url="redis://127.0.0.1:1/0")
    assert redis_credentials(base) == (None, None)
    with_files = base.model_copy(
        update={"redis_password_file": tmp_path / "pw", "redis_username_file": tmp_path / "user"}
    )
    assert redis_credentials(with_files) == ("modelseal", "s3cret-pw")
    in_url = base.model_copy(update={"redis_url": "redis://:s3cret-pw@127.0.0.1:1/0"})
    with pytest.raises(ValueError, match="redis_password_file") as refused:
        redis_credentials(in_url)
    assert "s3cret" not in str(refused.value)
    user_only = base.model_copy(update={"redis_username_file": tmp_path / "user"})
    with pytest.raises(ValueError, match="needs redis_password_file"):
        redis_credentials(user_only)


def test_api_key_command_issues_a_key_its_entry_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelseal.cli.main import main as cli_main

    assert cli_main(["api-key", "--consumer", "bob", "--tenant", "acme"]) == 0
    key, entry_text = capsys.readouterr().out.splitlines()
    entry = json.loads(entry_text)
    assert key.startswith(entry["key_id"] + ".") and key not in entry_text
    ring = KeyRing(_keys(entry))
    assert ring.lookup_fast(key)[0] == Consumer("bob", "acme")

    out = tmp_path / "bob.key"
    argv = ["api-key", "--consumer", "h", "--tenant", "acme", "--scrypt", "--key-id", "team-a"]
    assert cli_main([*argv, "--key-out", str(out)]) == 0
    entry = json.loads(capsys.readouterr().out)
    key = out.read_text().strip()
    assert oct(out.stat().st_mode & 0o777) == "0o600" and key.startswith("team-a.")
    assert entry["hash"].startswith("scrypt:") and entry["key_id"] == "team-a"
    assert cli_main([*argv, "--key-out", str(out)]) == 4  # never overwrites a key
    assert cli_main(["api-key", "--consumer", "x", "--tenant", "a", "--key-id", "a.b"]) == 2
    capsys.readouterr()
