"""Audit records built from hostile input: written and verifiable; a bad record or a failing
sink never stops the writer; a writer that stopped anyway fails liveness (issue 12, High 1)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from modelseal.audit.chain import Chain, json_safe
from modelseal.audit.log import AuditLog, AuditWriterDead
from modelseal.audit.sinks import FileSink, Sink
from modelseal.audit.verify import verify_file, verify_lines
from modelseal.gateway.core import Gateway
from modelseal.gateway.main import Servers
from modelseal.testing import settings_for_tests

KEY = b"secret-key-for-checkpoints"
SURROGATE = json.loads('"\\ud800"')  # what a client's JSON "id":"\ud800" parses to


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text form")


def test_lone_surrogates_are_escaped_and_the_line_verifies() -> None:
    chain = Chain("gw", KEY, checkpoint_every=2)
    record = {
        "type": "request",
        "request_id": SURROGATE + "x" + json.loads('"\\udfff"'),
        "reason": f"model m has no input {SURROGATE}",
        SURROGATE: "a key too",
        "ok": "grüße ✓",
    }
    lines = chain.seal(record)
    body = json.loads(lines[1])
    assert body["request_id"] == "\\ud800x\\udfff"  # visible escapes, valid UTF-8
    assert body["reason"].endswith("\\ud800") and body["\\ud800"] == "a key too"
    assert body["ok"] == "grüße ✓"  # encodable text is untouched
    lines += chain.seal({"type": "request", "i": 1})
    res = verify_lines(lines, KEY, strict=True)
    assert res.ok, res.summary()
    assert res.records == 2


def test_values_json_has_no_form_for_are_written_as_text() -> None:
    huge = 1 << 20_000
    safe = json_safe(
        {"b": b"\xff", "p": Path("/x"), "big": huge, "t": (1, 2), 3: None, "f": 1.5, "n": True}
    )
    assert safe == {
        "b": "b'\\xff'",
        "p": "/x",
        "big": safe["big"],
        "t": [1, 2],
        "3": None,
        "f": 1.5,
        "n": True,
    }
    assert isinstance(safe["big"], str) and safe["big"] == "(integer of 20001 bits)"
    deep: list[Any] = []
    node = deep
    for _ in range(100):
        node.append([])
        node = node[0]
    assert "too deep" in json.dumps(json_safe(deep))
    chain = Chain("gw", KEY)
    lines = chain.seal({"type": "event", "path": Path("/x"), "deep": deep, "big": huge})
    assert verify_lines(lines, KEY).ok


async def test_a_surrogate_record_does_not_stop_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(FileSink(path), gateway="gw", hmac_key=KEY, checkpoint_every=5)
    await log.start()
    for i in range(12):
        await log.reserve()
        log.submit({"type": "request", "i": i, "request_id": SURROGATE if i == 3 else str(i)})
    await log.flush()
    assert log.alive and log.written == 12 and log.depth == 0
    await log.close()
    res = verify_file(path, KEY, strict=True)
    assert res.ok, res.summary()
    assert res.records == 12


async def test_a_record_that_cannot_be_written_leaves_a_stand_in(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(FileSink(path), gateway="gw", hmac_key=KEY)
    await log.start()
    for i in range(3):
        await log.reserve()
        log.submit({"type": "request", "i": i, "odd": _Unprintable() if i == 1 else None})
    await log.flush()
    assert log.alive and log.written == 3 and log.unwritable == 1
    await log.close()
    res = verify_file(path, KEY, strict=True)
    assert res.ok and res.records == 3, res.summary()
    lines = [json.loads(line) for line in path.read_bytes().splitlines()]
    stand_in = [x for x in lines if x.get("event") == "audit_record_unwritable"]
    assert len(stand_in) == 1
    assert stand_in[0]["record_type"] == "request" and "odd" in stand_in[0]["fields"]


class FlakySink(Sink):
    """Raises (not an OSError: a bug, an encoding error in a library) on its first writes."""

    name = "flaky"

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.lines: list[bytes] = []
        self.errors: list[str] = []
        self.on_error = self.errors.append

    async def write(self, lines: list[bytes]) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("sink bug")
        self.lines += lines


async def test_a_sink_that_raises_is_retried() -> None:
    sink = FlakySink(failures=0)
    log = AuditLog(sink, gateway="gw", hmac_key=KEY)
    await log.start()
    sink.failures = 2  # the genesis went through; the first batch fails twice
    for i in range(4):
        await log.reserve()
        log.submit({"type": "request", "i": i})
    await asyncio.wait_for(log.flush(), timeout=30)
    assert log.alive and log.sink_failures == 2 and len(sink.errors) == 2
    res = verify_lines(sink.lines, KEY)
    assert res.ok and res.records == 4, res.summary()
    await log.close()


async def test_a_dead_writer_refuses_waiters_and_fails_liveness(tmp_path: Path) -> None:
    settings = settings_for_tests(tmp_path, audit_queue_size=1, audit_overflow_policy="block")
    gw = Gateway(settings)
    await gw.audit.start()
    servers = Servers(gw)
    ok = await servers._healthz(None)  # type: ignore[arg-type]
    assert ok.status == 200
    assert gw.audit.try_reserve()  # the only slot, never given back
    waiter = asyncio.create_task(gw.audit.reserve())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    task = gw.audit._task
    assert task is not None
    task.cancel()  # the writer ends while the log is open (the failure liveness must see)
    await asyncio.gather(task, return_exceptions=True)
    with pytest.raises(AuditWriterDead):
        await asyncio.wait_for(waiter, timeout=10)
    assert not gw.audit.alive and not gw.audit.try_reserve()
    with pytest.raises(AuditWriterDead):
        await gw.audit.reserve()
    dead = await servers._healthz(None)  # type: ignore[arg-type]
    assert dead.status == 503 and "audit writer stopped" in str(dead.text)
    await gw.audit.close()
    await gw.store.close()
    await gw.upstream.close()
