"""Usage export from the audit file (modelseal.audit.usage): which lines bill, stable event
ids, the cursor, and settings that cannot export as promised."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelseal.audit.chain import Chain
from modelseal.audit.usage import (
    Cursor,
    batch_body,
    checked_cursor,
    read_cursor,
    read_spool,
    usage_event,
    write_cursor,
)
from modelseal.config import Settings
from modelseal.gateway.usage_export import check_usage_export


def _request(i: int, metered: bool = True) -> dict[str, object]:
    return {
        "type": "request",
        "ts": "2026-11-30T10:00:00.000001Z",
        "gw": "gw-a",
        "tenant": "acme",
        "model": "digits",
        "license": "gold",
        "decision": "allow" if metered else "deny",
        "metered": metered,
        "i": i,
    }


def _spool(path: Path, records: list[dict[str, object]], every: int = 3) -> None:
    chain = Chain("gw-a", b"k" * 16, every)
    path.write_bytes(b"".join(line for r in records for line in chain.seal(r)))


def test_only_metered_requests_bill_and_ids_are_record_hashes(tmp_path: Path) -> None:
    spool = tmp_path / "audit.jsonl"
    _spool(spool, [_request(0), _request(1, metered=False), _request(2)])
    (batch,) = read_spool(spool, Cursor(), batch_max=10)
    hashes = [json.loads(x)["hash"] for x in spool.read_bytes().splitlines()]
    assert [e.get_id() for e in batch.events] == [hashes[1], hashes[3]]
    assert batch.cursor == Cursor(spool.stat().st_size, len(hashes) - 1, hashes[-1])
    event = batch.events[0]
    assert event.get_source() == "/modelseal/gateway/gw-a" and event.get_subject() == "acme"
    data = event.get_data()
    assert isinstance(data, dict)
    assert data["count"] == 1 and data["day"] == "2026-11-30" and data["month"] == "2026-11"
    body = json.loads(batch_body(batch.events))
    assert [b["id"] for b in body] == [hashes[1], hashes[3]]
    assert usage_event({"type": "event", "hash": "x"}) is None


def test_batches_move_the_cursor_and_a_torn_tail_waits(tmp_path: Path) -> None:
    spool = tmp_path / "audit.jsonl"
    _spool(spool, [_request(i) for i in range(7)], every=100)
    whole = spool.read_bytes()
    spool.write_bytes(whole + b'{"type":"request","seq"')  # a line still being written
    batches = read_spool(spool, Cursor(), batch_max=3)
    assert [len(b.events) for b in batches] == [3, 3, 1]
    assert batches[-1].cursor.offset == len(whole)
    assert read_spool(spool, batches[-1].cursor, batch_max=3) == []
    middle = batches[0].cursor
    assert [len(b.events) for b in read_spool(spool, middle, batch_max=10)] == [4]


def test_a_cursor_that_does_not_match_its_spool_starts_over(tmp_path: Path) -> None:
    spool = tmp_path / "audit.jsonl"
    cursor_file = tmp_path / "c"
    _spool(spool, [_request(i) for i in range(4)])
    (batch,) = read_spool(spool, Cursor(), batch_max=10)
    write_cursor(cursor_file, batch.cursor)
    assert read_cursor(cursor_file) == batch.cursor
    assert checked_cursor(spool, batch.cursor) == batch.cursor
    _spool(spool, [_request(i) for i in range(2)])  # a new file in its place
    assert checked_cursor(spool, batch.cursor) == Cursor()
    cursor_file.write_text("{broken")
    assert read_cursor(cursor_file) == Cursor()


def test_export_needs_the_file_sink() -> None:
    with pytest.raises(ValueError, match="audit_sink=file"):
        check_usage_export(Settings(usage_export_url="http://127.0.0.1:9/e", audit_sink="stdout"))
    check_usage_export(Settings(usage_export_url="http://127.0.0.1:9/e", audit_sink="file"))
