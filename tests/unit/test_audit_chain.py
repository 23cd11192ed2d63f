"""Audit chain: sealing, checkpoints, and verify naming the first broken line."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from modelseal.audit.chain import Chain, canonical, checkpoint_mac, record_hash
from modelseal.audit.verify import verify_file, verify_lines
from modelseal.cli.audit import main as audit_main

KEY = b"k" * 32


def build(n: int, every: int = 4, key: bytes | None = KEY, close: bool = True) -> list[bytes]:
    chain = Chain("gw-1", key, every)
    lines: list[bytes] = []
    for i in range(n):
        lines += chain.seal({"type": "request", "tenant": "acme", "i": i, "note": "é\u2028"})
    if close:
        lines.append(chain.checkpoint("shutdown"))
    return lines


def records(lines: list[bytes]) -> list[int]:
    """Line indexes (0-based) of request lines."""
    return [i for i, line in enumerate(lines) if json.loads(line)["type"] == "request"]


def test_sealed_lines_are_canonical_and_chained() -> None:
    lines = build(10)
    bodies = [json.loads(line) for line in lines]
    assert bodies[0]["type"] == "genesis" and bodies[0]["key_id"]
    assert [b["seq"] for b in bodies] == list(range(len(bodies)))
    for before, after in itertools.pairwise(bodies):
        assert after["prev"] == before["hash"]
    for line, body in zip(lines, bodies, strict=True):
        unhashed = canonical({k: v for k, v in body.items() if k != "hash"})
        assert line == unhashed[:-1] + b',"hash":"' + body["hash"].encode() + b'"}\n'
        assert record_hash(body) == body["hash"]
    kinds = [b["type"] for b in bodies]
    assert kinds.count("request") == 10
    assert kinds.count("checkpoint") == 3  # after 4, after 8, and at shutdown
    cp = bodies[-1]
    assert cp["mac"] == checkpoint_mac(KEY, cp)


def test_clean_log_verifies() -> None:
    res = verify_lines(build(25), KEY, strict=True)
    assert res.ok, res.summary()
    assert (res.records, res.checkpoints, res.signed_checkpoints) == (25, 7, 7)
    assert res.summary().startswith("OK: ")


def _edit(lines: list[bytes], index: int, **changes: object) -> list[bytes]:
    body = json.loads(lines[index])
    body.update(changes)
    out = list(lines)
    out[index] = canonical(body) + b"\n"
    return out


def test_edit_is_detected_at_that_line() -> None:
    lines = build(12)
    target = records(lines)[5]
    res = verify_lines(_edit(lines, target, tenant="evil"), KEY)
    assert not res.ok
    assert res.broken_line == target + 1
    assert res.broken_seq == target
    assert "edited" in res.reason


def test_edit_with_rehashed_chain_is_caught_by_the_next_checkpoint() -> None:
    lines = build(12)
    target = records(lines)[1]
    bodies = [json.loads(line) for line in lines]
    bodies[target]["tenant"] = "evil"
    prev = bodies[target - 1]["hash"]
    for body in bodies[target:]:  # an attacker without the key recomputes every hash
        body["prev"] = prev
        body["hash"] = record_hash(body)
        prev = body["hash"]
    forged = [canonical(b) + b"\n" for b in bodies]
    res = verify_lines(forged, KEY)
    first_cp = next(i for i, b in enumerate(bodies) if b["type"] == "checkpoint")
    assert not res.ok and res.broken_line == first_cp + 1
    assert "signature" in res.reason
    # without the key the forgery is not visible: say so
    unkeyed = verify_lines(forged, None)
    assert unkeyed.ok and any("not checked" in w for w in unkeyed.warnings)


def test_delete_is_detected_at_the_next_line() -> None:
    lines = build(12)
    target = records(lines)[6]
    res = verify_lines(lines[:target] + lines[target + 1 :], KEY)
    assert not res.ok
    assert res.broken_line == target + 1
    assert res.broken_seq == target + 1
    assert "missing" in res.reason


def test_reorder_is_detected_at_the_first_moved_line() -> None:
    lines = build(12)
    a = records(lines)[3]
    swapped = list(lines)
    swapped[a], swapped[a + 1] = swapped[a + 1], swapped[a]
    res = verify_lines(swapped, KEY)
    assert not res.ok and res.broken_line == a + 1
    assert "seq" in res.reason


def test_duplicate_line_is_detected() -> None:
    lines = build(6)
    a = records(lines)[2]
    res = verify_lines([*lines[: a + 1], lines[a], *lines[a + 1 :]], KEY)
    assert not res.ok and res.broken_line == a + 2 and "repeated" in res.reason


def test_truncated_line_and_garbage() -> None:
    lines = build(6)
    res = verify_lines([*lines[:3], lines[3][:20]], KEY)
    assert not res.ok and res.broken_line == 4 and "JSON" in res.reason
    assert not verify_lines([b"[1,2]\n"], KEY).ok


def test_second_genesis_and_missing_genesis() -> None:
    res = verify_lines(build(3) + build(3), KEY)
    assert not res.ok and "new chain" in res.reason
    res = verify_lines(build(3)[1:], KEY)
    assert not res.ok and res.broken_line == 1


def test_wrong_key_and_unknown_type() -> None:
    res = verify_lines(build(5), b"other key")
    assert not res.ok and "another key" in res.reason
    chain = Chain("gw", KEY)
    lines = chain.seal({"type": "mystery"})
    res = verify_lines(lines, KEY)
    assert not res.ok and "unknown line type" in res.reason


def test_tail_deletion_is_reported_by_strict() -> None:
    lines = build(10, every=4)
    cut = lines[:-2]  # drop the last record and the shutdown checkpoint
    res = verify_lines(cut, KEY)
    assert res.ok and res.uncovered_tail == 1
    assert any("not covered" in w for w in res.warnings)
    strict = verify_lines(cut, KEY, strict=True)
    assert not strict.ok and "not covered" in strict.reason


def test_unsigned_checkpoints_without_key() -> None:
    lines = build(5, key=None)
    assert json.loads(lines[-1])["mac"] is None
    assert verify_lines(lines, None, strict=True).ok
    res = verify_lines(lines, KEY)
    assert not res.ok


def test_empty_log_verifies_with_warning() -> None:
    res = verify_lines([], KEY)
    assert res.ok and res.warnings == ["the log is empty"]


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "audit.jsonl"
    key = tmp_path / "key"
    key.write_bytes(KEY + b"\n")
    lines = build(8)
    log.write_bytes(b"".join(lines))
    assert audit_main(["audit", "verify", str(log), "--key-file", str(key)]) == 0
    assert "OK:" in capsys.readouterr().out
    assert verify_file(log, KEY).ok

    target = records(lines)[4]
    log.write_bytes(b"".join(_edit(lines, target, status=200)))
    assert audit_main(["audit", "verify", str(log), "--key-file", str(key)]) == 1
    out = capsys.readouterr().out
    assert f"BROKEN at line {target + 1} (seq {target})" in out

    assert audit_main(["audit", "verify", str(log), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["broken_line"] == target + 1

    assert audit_main(["audit", "verify", str(tmp_path / "missing")]) == 2
    (tmp_path / "empty").write_bytes(b"")
    assert audit_main(["audit", "verify", str(log), "--key-file", str(tmp_path / "empty")]) == 2


def test_now_iso_is_utc_with_microseconds_across_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    from datetime import UTC, datetime

    from modelseal.audit import chain as chain_module

    for now in (1_764_580_000.999999, 1_764_580_001.0, 1_764_580_001.5, 1_798_761_599.25):
        monkeypatch.setattr(chain_module.time, "time", lambda now=now: now)
        text = chain_module.now_iso()
        assert len(text) == 27 and text.endswith("Z")
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
        assert parsed.tzinfo == UTC
        assert abs(parsed.timestamp() - now) < 2e-6
