"""API keys file: format, refusals, presented-key parsing, constant-time lookup, scrypt."""

from __future__ import annotations

import json

import pytest

from modelseal.gateway.keys import (
    Consumer,
    KeyRing,
    KeysError,
    hash_key_scrypt,
    hash_key_sha256,
    parse_keys,
    presented_key,
)

ALICE = "alice-key-0123456789abcdef"
BOB = "bob-key-0123456789abcdefgh"


def keys_doc(*consumers: dict[str, object]) -> str:
    return json.dumps({"consumers": list(consumers)})


def test_parse_and_lookup_sha256() -> None:
    table = parse_keys(
        keys_doc(
            {"id": "alice", "tenant": "acme", "hash": hash_key_sha256(ALICE)},
            {"id": "old", "tenant": "acme", "hash": hash_key_sha256(BOB), "disabled": True},
        )
    )
    ring = KeyRing(table)
    assert ring.lookup_fast(ALICE)[0] == Consumer("alice", "acme")
    assert ring.lookup_fast(BOB)[0] is None  # disabled
    assert ring.lookup_fast(ALICE + "x") == (None, ring.lookup_fast(ALICE + "x")[1], False)


async def test_scrypt_keys_are_checked_once_then_cached() -> None:
    table = parse_keys(
        keys_doc({"id": "bob", "tenant": "t2", "hash": hash_key_scrypt(BOB, n=1024)})
    )
    ring = KeyRing(table)
    consumer, _, slow = ring.lookup_fast(BOB)
    assert consumer is None and slow
    assert await ring.lookup(BOB) == Consumer("bob", "t2")
    assert ring.lookup_fast(BOB)[0] == Consumer("bob", "t2")  # cached
    assert await ring.lookup("not-bobs-key-0123456789") is None
    assert ring.lookup_fast("not-bobs-key-0123456789")[2] is False  # negative cache
    ring.replace(None)
    assert ring.lookup_fast(BOB)[0] is None


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ("nope", "not JSON"),
        (json.dumps({"consumers": [{"id": "a", "tenant": "t"}]}), "hash"),
        (json.dumps({"consumers": [], "extra": 1}), "extra"),
        (keys_doc({"id": "a", "tenant": "t", "hash": "md5:abc"}), "unknown hash"),
        (keys_doc({"id": "a", "tenant": "t", "hash": "sha256:XYZ"}), "64 lowercase"),
        (keys_doc({"id": "a", "tenant": "t", "hash": "scrypt:1:2"}), "scrypt"),
        (
            keys_doc(
                {
                    "id": "a",
                    "tenant": "t",
                    "hash": "scrypt:1000:8:1:c2FsdHNhbHQ=:aGFzaGhhc2hoYXNoaGFzaA==",
                }
            ),
            "parameters",
        ),
        (keys_doc({"id": "a", "tenant": "bad tenant", "hash": hash_key_sha256(ALICE)}), "tenant"),
        (
            keys_doc(
                {"id": "a", "tenant": "t", "hash": hash_key_sha256(ALICE)},
                {"id": "a", "tenant": "t", "hash": hash_key_sha256(BOB)},
            ),
            "twice",
        ),
        (
            keys_doc(
                {"id": "a", "tenant": "t", "hash": hash_key_sha256(ALICE)},
                {"id": "b", "tenant": "u", "hash": hash_key_sha256(ALICE)},
            ),
            "two consumers",
        ),
    ],
)
def test_bad_key_files(doc: str, needle: str) -> None:
    with pytest.raises(KeysError, match=needle):
        parse_keys(doc)


@pytest.mark.parametrize(
    ("auth", "api", "expected"),
    [
        ([f"Bearer {ALICE}"], [], ALICE),
        ([f"bearer {ALICE}"], [], ALICE),
        ([], [ALICE], ALICE),
        ([], [], None),
        ([f"Basic {ALICE}"], [], None),
        ([f"Bearer {ALICE}"], [ALICE], None),  # two credentials
        ([f"Bearer {ALICE}", f"Bearer {ALICE}"], [], None),
        ([f"Bearer {ALICE} x"], [], None),
        ([f"Bearer {ALICE}\r\nX-Tenant: other"], [], None),
        ([f"Bearer {ALICE}\x00"], [], None),
        ([f"Bearer {ALICE}é"], [], None),
        (["Bearer short"], [], None),
        ([f"Bearer {'a' * 513}"], [], None),
        ([], [""], None),
    ],
)
def test_presented_key(auth: list[str], api: list[str], expected: str | None) -> None:
    assert presented_key(auth, api) == expected
