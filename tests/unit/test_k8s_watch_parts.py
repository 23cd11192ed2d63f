"""The pure parts of the operator's list-and-watch (`modelseal.k8s.watch`): a watch body
cut into lines whatever its chunks, and what a listing shows gone."""

from __future__ import annotations

import orjson
import pytest

from modelseal.k8s import api as k8s
from modelseal.k8s.api import LineSplitter
from modelseal.k8s.watch import Tombstone, api_version, vanished

EVENTS = [
    {"type": "ADDED", "object": {"metadata": {"name": "a", "uid": "1"}}},
    {"type": "MODIFIED", "object": {"metadata": {"name": "b"}, "data": {"x": "y" * 300}}},
    {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
]
BODY = b"".join(orjson.dumps(e) + b"\n" for e in EVENTS)


@pytest.mark.parametrize("size", [1, 2, 7, 64, 333, len(BODY)])
def test_lines_come_out_whole_whatever_the_chunks(size: int) -> None:
    lines = LineSplitter()
    out = []
    for at in range(0, len(BODY), size):
        out += lines.feed(BODY[at : at + size])
    assert [orjson.loads(line) for line in out] == EVENTS


def test_a_line_is_held_until_its_end_comes_and_blank_lines_are_skipped() -> None:
    lines = LineSplitter()
    assert lines.feed(b'{"type":"ADD') == []
    assert lines.feed(b'ED"}\n\n  \n{"x"') == [b'{"type":"ADDED"}']
    assert lines.feed(b":1}\n") == [b'{"x":1}']


def test_vanished_is_what_was_known_and_not_listed() -> None:
    known = {u: Tombstone("ns", u, None) for u in ("1", "2", "3")}
    assert vanished(known, {"2", "4"}) == ["1", "3"]
    assert vanished(known, {"1", "2", "3"}) == []
    assert vanished({}, {"1"}) == []


def test_a_tombstone_carries_the_key_uid_and_labels() -> None:
    body = Tombstone("ns", "m", {"app": "x"}).body(k8s.POD, "u1")
    assert body == {
        "kind": "Pod",
        "metadata": {"namespace": "ns", "name": "m", "uid": "u1", "labels": {"app": "x"}},
    }
    assert "labels" not in Tombstone("ns", "m", None).body(k8s.POD, "u1")["metadata"]


def test_api_version_of_core_and_grouped_kinds() -> None:
    assert (api_version(k8s.POD), api_version(k8s.DEPLOYMENT)) == ("v1", "apps/v1")
