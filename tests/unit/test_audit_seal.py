"""Audit trail as deployed (issue 12, Medium 8): one key reader, linked restarts for sinks
that cannot be read back, the shutdown seal and time checkpoints against truncation, and
records durable before the request is answered."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from modelseal.audit.keyfile import model_audit_key, read_hmac_key, read_key
from modelseal.audit.log import AuditLog, AuditWriterDead
from modelseal.audit.sinks import FileSink, Sink
from modelseal.audit.state import read_point
from modelseal.audit.verify import verify_file, verify_lines
from modelseal.config import Settings
from modelseal.handlers.auditing import Auditor

KEY = b"secret-key-for-checkpoints"


class ListSink(Sink):
    """Lines kept in a list; like stdout, it cannot be read back on a restart."""

    name = "list"

    def __init__(self, lines: list[bytes]) -> None:
        super().__init__()
        self.lines = lines
        self.syncs = 0

    async def write(self, lines: list[bytes]) -> None:
        self.lines += lines

    async def sync(self) -> None:
        self.syncs += 1


async def _run(log: AuditLog, n: int, *, close: bool = True) -> None:
    await log.start()
    for i in range(n):
        await log.reserve()
        log.submit({"type": "request", "i": i})
    await log.flush()
    if close:
        await log.close()


@pytest.mark.parametrize(
    ("content", "key"),
    [
        (b"k" * 20 + b"\n", b"k" * 20),
        (b"k" * 20 + b"\r\n", b"k" * 20),
        (b" k" * 10 + b" \n", b" k" * 10 + b" "),
    ],
)
def test_one_key_reader_keeps_all_but_one_line_end(
    tmp_path: Path, content: bytes, key: bytes
) -> None:
    path = tmp_path / "key"
    path.write_bytes(content)
    assert read_key(path) == key == read_hmac_key(path)


def test_short_or_empty_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_bytes(b"\n")
    with pytest.raises(ValueError, match="empty"):
        read_key(path)
    path.write_bytes(b"short\n")
    with pytest.raises(ValueError, match="at least 16"):
        read_hmac_key(path)


async def test_operator_and_verifier_agree_on_a_key_with_trailing_spaces(tmp_path: Path) -> None:
    """The operator used to read the key with .strip(), the verifier with one newline less:
    a key ending in a space signed what the verifier called forged."""
    key_file = tmp_path / "key"
    key_file.write_bytes(b"platform-key-with-a-space \n")
    settings = Settings(
        audit_sink="file", audit_file=tmp_path / "op.jsonl", audit_hmac_key_file=key_file
    )
    auditor = Auditor(settings)
    await auditor.start()
    auditor.record("test", {"kind": "ProtectedModel", "name": "m"})
    await auditor.close()
    res = verify_file(tmp_path / "op.jsonl", read_key(key_file), strict=True, require_seal=True)
    assert res.ok and res.signed_checkpoints >= 1, res.summary()


def test_model_keys_differ_per_model_and_are_text() -> None:
    a = model_audit_key(KEY, "ns", "m")
    assert a != model_audit_key(KEY, "ns", "m2") != model_audit_key(KEY, "ns2", "m")
    assert a == model_audit_key(KEY, "ns", "m") and len(a) == 64 and a.isalnum()


async def test_restarts_of_an_unreadable_sink_link_their_chains(tmp_path: Path) -> None:
    lines: list[bytes] = []
    state = tmp_path / "state.json"
    for n in (5, 3, 4):
        await _run(
            AuditLog(
                ListSink(lines), gateway="gw", hmac_key=KEY, checkpoint_every=2, state_file=state
            ),
            n,
        )
    res = verify_lines(lines, KEY, strict=True, require_seal=True)
    assert res.ok and res.chains == 3 and res.restarts == 2 and res.records == 12, res.summary()
    point = read_point(state)
    assert point is not None and point.hash == json.loads(lines[-1])["hash"]

    # Without the state file (the old behaviour) a second genesis is refused ...
    plain: list[bytes] = []
    for n in (2, 2):
        await _run(AuditLog(ListSink(plain), gateway="gw", hmac_key=KEY), n)
    assert "middle of the log" in verify_lines(plain, KEY).reason
    # ... and a deleted line before a restart is named, not hidden by the new chain.
    second = next(i for i, x in enumerate(lines) if i and b'"type":"genesis"' in x)
    res = verify_lines(lines[: second - 1] + lines[second:], KEY)
    assert not res.ok and "deleted" in res.reason, res.summary()


async def test_a_run_killed_after_its_write_links_one_batch_back(tmp_path: Path) -> None:
    """Killed between the sink write and the state write: the next genesis names an
    earlier line; the lines between were never acknowledged, and verify says so."""
    lines: list[bytes] = []
    state = tmp_path / "state.json"
    await _run(AuditLog(ListSink(lines), gateway="gw", hmac_key=KEY, state_file=state), 3)
    log = AuditLog(ListSink(lines), gateway="gw", hmac_key=KEY, state_file=state)
    await log.start()
    saved = state.read_bytes()  # the point after the genesis
    for i in range(2):
        await log.reserve()
        log.submit({"type": "request", "i": i})
    await log.flush()
    assert log._task is not None
    log._task.cancel()  # the kill, with the state file one batch behind
    state.write_bytes(saved)
    await _run(AuditLog(ListSink(lines), gateway="gw", hmac_key=KEY, state_file=state), 1)
    res = verify_lines(lines, KEY, require_seal=True)
    assert res.ok and res.restarts == 2 and res.unacknowledged > 0, res.summary()


async def test_truncation_right_after_a_checkpoint_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    await _run(AuditLog(FileSink(path), gateway="gw", hmac_key=KEY, checkpoint_every=5), 23)
    lines = path.read_bytes().splitlines(keepends=True)
    assert verify_lines(lines, KEY, strict=True, require_seal=True).ok
    cut = max(i for i, x in enumerate(lines[:-1]) if b'"type":"checkpoint"' in x)
    truncated = lines[: cut + 1]
    assert verify_lines(truncated, KEY, strict=True).ok  # what the chain alone allows
    res = verify_lines(truncated, KEY, strict=True, require_seal=True)
    assert not res.ok and "shutdown seal" in res.reason
    # A running gateway's log: accepted while its last checkpoint is recent, not later.
    assert verify_lines(truncated, KEY, max_age_s=600).ok
    later = datetime.now(UTC) + timedelta(hours=1)
    assert not verify_lines(truncated, KEY, max_age_s=600, now=later).ok


async def test_time_checkpoints_are_written_when_idle(tmp_path: Path) -> None:
    lines: list[bytes] = []
    log = AuditLog(ListSink(lines), gateway="gw", hmac_key=KEY, checkpoint_interval_s=0.05)
    await log.start()
    await asyncio.sleep(0.3)
    await log.close()
    kinds = [json.loads(x).get("reason") for x in lines if b'"type":"checkpoint"' in x]
    assert kinds.count("interval") >= 2 and kinds[-1] == "shutdown"
    assert verify_lines(lines, KEY, require_seal=True).ok


async def test_a_durable_record_is_synced_before_its_future_is_done(tmp_path: Path) -> None:
    lines: list[bytes] = []
    sink = ListSink(lines)
    log = AuditLog(sink, gateway="gw", hmac_key=KEY)
    await log.start()
    syncs = sink.syncs
    await log.reserve()
    done = log.submit({"type": "request", "i": 1}, durable=True)
    assert done is not None and not done.done()
    await done
    assert sink.syncs > syncs and b'"i":1' in lines[-1]
    await log.reserve()
    assert log.submit({"type": "request", "i": 2}) is None  # a refusal does not wait
    await log.close()


async def test_a_dead_writer_fails_waiting_records(tmp_path: Path) -> None:
    log = AuditLog(ListSink([]), gateway="gw")
    await log.start()
    assert log._task is not None
    log._task.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert log.dead is not None
    done = log.submit({"type": "request"}, durable=True)
    assert done is not None
    with pytest.raises(AuditWriterDead):
        await done
    await log.close()


async def test_operator_restarts_on_stdout_are_linked(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """The chart's operator logs its audit to stdout; each container restart used to start
    a chain that `audit verify` refused as a second genesis."""
    key_file = tmp_path / "key"
    key_file.write_bytes(b"platform-key-0123456789\n")
    settings = Settings(
        audit_sink="stdout", audit_hmac_key_file=key_file, audit_state_file=tmp_path / "s.json"
    )
    for run in range(2):
        auditor = Auditor(settings)
        await auditor.start()
        auditor.record("test", {"kind": "ProtectedModel", "name": f"m{run}"})
        await auditor.close()
    lines = capsysbinary.readouterr().out.splitlines()
    res = verify_lines(lines, read_key(key_file), strict=True, require_seal=True)
    assert res.ok and res.restarts == 1 and res.records == 2, res.summary()


async def test_a_file_sink_needs_no_state_file(tmp_path: Path) -> None:
    """A file continues its own chain: no state file is written for it (one write less per
    batch), and a restart continues the file's chain rather than linking."""
    path, state = tmp_path / "audit.jsonl", tmp_path / "state.json"
    for n in (2, 3):
        await _run(AuditLog(FileSink(path), gateway="gw", hmac_key=KEY, state_file=state), n)
    assert not state.exists()
    res = verify_file(path, KEY, strict=True, require_seal=True)
    assert res.ok and res.chains == 1 and res.restarts == 0, res.summary()
