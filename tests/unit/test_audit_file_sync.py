"""FileSink.sync: fsync on the event loop's thread while the disk is fast, in a worker
thread once its moving average passes INLINE_FSYNC_MAX_S, and back when fast again."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from modelseal.audit.sinks import INLINE_FSYNC_MAX_S, FileSink


@pytest.fixture
def fsync_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread of each fsync (the real os.fsync still runs)."""
    seen: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        seen.append(threading.get_ident())
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return seen


async def test_fast_disk_fsyncs_on_the_loop_thread(
    tmp_path: Path, fsync_threads: list[int]
) -> None:
    sink = FileSink(tmp_path / "audit.jsonl")
    await sink.write([b'{"a":1}\n'])
    await sink.sync()
    assert fsync_threads == [threading.get_ident()]
    assert sink.fsync_s > 0.0  # its time is followed
    await sink.close()


async def test_slow_disk_fsyncs_in_a_worker_thread_until_fast_again(
    tmp_path: Path, fsync_threads: list[int]
) -> None:
    sink = FileSink(tmp_path / "audit.jsonl")
    slow = sink.fsync_s = 1000 * INLINE_FSYNC_MAX_S  # as if the last fsyncs had been slow
    await sink.sync()
    assert fsync_threads[-1] != threading.get_ident()
    assert sink.fsync_s != slow  # followed in the worker thread too
    sink.fsync_s = 0.0  # as if they had been fast since
    await sink.sync()
    assert fsync_threads[-1] == threading.get_ident()
    await sink.close()


async def test_failed_fsync_refuses_the_waiting_requests_and_ends_the_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Durable before the answer: after a failed fsync the records may be lost (Linux may
    drop the dirty pages), so the request waiting on one is refused, not answered, and the
    writer ends (liveness fails, the container restarts)."""
    import errno

    from modelseal.audit.log import AuditLog, AuditWriterDead

    log = AuditLog(FileSink(tmp_path / "audit.jsonl"), gateway="gw-test")
    await log.start()

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken)
    assert log.try_reserve()
    fut = log.submit({"type": "request", "id": "r1"}, durable=True)
    assert fut is not None
    with pytest.raises(AuditWriterDead, match="sync failed"):
        await fut
    for _ in range(100):  # the writer task ends on the loop's next turns
        if not log.alive:
            break
        await asyncio.sleep(0)
    assert not log.alive
    assert log.dead is not None and "Input/output error" in log.dead
    later = log.submit({"type": "request", "id": "r2"}, durable=True)
    assert later is not None
    with pytest.raises(AuditWriterDead):
        await later


async def test_a_file_that_cannot_be_synchronised_is_written_without_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EINVAL (a pipe or a character device: nothing to synchronise) is no failure."""
    import errno

    sink = FileSink(tmp_path / "audit.jsonl")

    def unsupported(fd: int) -> None:
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(os, "fsync", unsupported)
    await sink.write([b'{"a":1}\n'])
    await sink.sync()
    monkeypatch.undo()
    await sink.close()
