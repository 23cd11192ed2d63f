"""FileSink.sync: fsync on the event loop's thread while the disk is fast, in a worker
thread once its moving average passes INLINE_FSYNC_MAX_S, and back when fast again."""

from __future__ import annotations

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
