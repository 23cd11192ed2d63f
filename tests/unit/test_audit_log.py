"""Audit log: queue with back-pressure, file and webhook sinks, chain resumed on restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from aiohttp import web

from modelseal.audit.log import AuditLog, AuditOverflow
from modelseal.audit.sinks import FileSink, Sink, StdoutSink, WebhookSink
from modelseal.audit.verify import verify_file, verify_lines

KEY = b"secret-key-for-checkpoints"


class GatedSink(Sink):
    """A sink that holds every write until the test opens the gate."""

    name = "gated"

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.lines: list[bytes] = []

    async def write(self, lines: list[bytes]) -> None:
        await self.gate.wait()
        self.lines += lines


async def _log_requests(log: AuditLog, n: int) -> None:
    for i in range(n):
        await log.reserve()
        log.submit({"type": "request", "i": i})


async def test_file_sink_writes_every_record_and_verifies(tmp_path: Path) -> None:
    path = tmp_path / "a" / "audit.jsonl"
    log = AuditLog(FileSink(path), gateway="gw", hmac_key=KEY, checkpoint_every=10)
    await log.start()
    await _log_requests(log, 55)
    await log.flush()
    assert log.written == 55 and log.depth == 0
    await log.close()
    res = verify_file(path, KEY, strict=True)
    assert res.ok, res.summary()
    assert res.records == 55 and res.checkpoints == 6


async def test_restart_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    for _ in range(3):
        log = AuditLog(FileSink(path), gateway="gw", hmac_key=KEY, checkpoint_every=7)
        await log.start()
        await _log_requests(log, 10)
        await log.close()
    res = verify_file(path, KEY, strict=True)
    assert res.ok, res.summary()
    assert res.records == 30 and res.chains == 1


async def test_crash_leaves_an_uncovered_tail_that_still_verifies(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(FileSink(path), gateway="gw", hmac_key=KEY, checkpoint_every=100)
    await log.start()
    await _log_requests(log, 5)
    await log.flush()  # no close: as if killed
    assert log._task is not None
    log._task.cancel()
    log2 = AuditLog(FileSink(path), gateway="gw", hmac_key=KEY)
    await log2.start()
    await _log_requests(log2, 2)
    await log2.close()
    res = verify_file(path, KEY, strict=True)
    assert res.ok and res.records == 7


async def test_unreadable_tail_starts_a_new_chain_that_verify_flags(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b'{"torn')
    log = AuditLog(FileSink(path), gateway="gw", hmac_key=KEY)
    assert log.chain.seq == 0
    await log.start()
    await log.close()
    assert not verify_file(path, KEY).ok


async def test_block_policy_waits_for_the_sink() -> None:
    sink = GatedSink()
    log = AuditLog(sink, gateway="gw", capacity=3, overflow="block")
    sink.gate.set()
    await log.start()
    sink.gate.clear()
    for i in range(3):
        await log.reserve()
        log.submit({"type": "request", "i": i})
    assert log.depth == 3
    waiter = asyncio.create_task(log.reserve())
    await asyncio.sleep(0.05)
    assert not waiter.done() and log.blocked == 1
    sink.gate.set()
    await asyncio.wait_for(waiter, 2)
    log.submit({"type": "request", "i": 3})
    await log.close()
    assert verify_lines(sink.lines).records == 4


async def test_reject_policy_raises_and_counts() -> None:
    sink = GatedSink()
    log = AuditLog(sink, gateway="gw", capacity=2, overflow="reject")
    sink.gate.set()
    await log.start()
    sink.gate.clear()
    await log.reserve()
    await log.reserve()
    with pytest.raises(AuditOverflow):
        await log.reserve()
    assert log.rejected == 1
    assert not log.emit({"type": "event"}) and log.dropped == 1
    log.unreserve()
    assert log.emit({"type": "event", "what": "fits again"})
    log.unreserve()
    sink.gate.set()
    await log.close()
    assert verify_lines(sink.lines).records == 1


async def test_cancelled_waiter_does_not_leak() -> None:
    sink = GatedSink()
    log = AuditLog(sink, gateway="gw", capacity=1)
    await log.reserve()
    waiter = asyncio.create_task(log.reserve())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not log._waiters
    log.unreserve()
    assert log.depth == 0


async def test_webhook_sink_retries_until_delivered(tmp_path: Path) -> None:
    received: list[bytes] = []
    failures = {"left": 3}

    async def hook(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer tok"
        assert request.content_type == "application/x-ndjson"
        if failures["left"]:
            failures["left"] -= 1
            return web.Response(status=503)
        received.append(await request.read())
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/audit", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    errors: list[str] = []
    sink = WebhookSink(f"http://127.0.0.1:{port}/audit", token="tok", retry_max_s=0.05)
    sink.on_error = errors.append
    log = AuditLog(sink, gateway="gw", hmac_key=KEY, checkpoint_every=5)
    await log.start()
    await _log_requests(log, 12)
    await log.close()
    await runner.cleanup()
    assert len(errors) == 3 and "503" in errors[0]
    lines = [line + b"\n" for line in b"".join(received).splitlines()]
    res = verify_lines(lines, KEY, strict=True)
    assert res.ok and res.records == 12


async def test_webhook_unreachable_keeps_retrying() -> None:
    sink = WebhookSink("http://127.0.0.1:9/none", retry_max_s=0.01, timeout_s=0.5)
    errors: list[str] = []
    sink.on_error = errors.append
    task = asyncio.create_task(sink.write([b"{}\n"]))
    await asyncio.sleep(0.2)
    assert not task.done() and len(errors) >= 2
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await sink.close()


async def test_stdout_sink(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    log = AuditLog(StdoutSink(), gateway="gw")
    await log.start()
    await _log_requests(log, 2)
    await log.close()
    out = capfdbinary.readouterr().out
    kinds = [json.loads(line)["type"] for line in out.splitlines()]
    assert kinds == ["genesis", "request", "request", "checkpoint"]
