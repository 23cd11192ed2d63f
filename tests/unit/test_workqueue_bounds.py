"""The work queue's bounds (issue 13 §3): coalescing of bursts, and the worker limit."""

from __future__ import annotations

import asyncio

import pytest

from modelseal.handlers.workqueue import WorkQueue


async def test_a_burst_of_adds_within_the_window_is_one_run() -> None:
    runs: list[str] = []

    async def worker(key: str) -> float | None:
        runs.append(key)
        return None

    q = WorkQueue(worker, coalesce_s=0.2)
    for _ in range(5):
        q.add("a")
        await asyncio.sleep(0.01)
    q.add("b")
    await asyncio.sleep(0.5)
    assert runs.count("a") == 1 and runs.count("b") == 1
    assert q.pending() == 0
    await q.close()


async def test_an_add_while_running_runs_once_more_after_the_window() -> None:
    runs: list[str] = []
    started = asyncio.Event()

    async def worker(key: str) -> float | None:
        runs.append(key)
        started.set()
        await asyncio.sleep(0.05)
        return None

    q = WorkQueue(worker, coalesce_s=0.05)
    q.add("a")
    await started.wait()
    for _ in range(3):
        q.add("a")
    await asyncio.sleep(0.5)
    assert runs == ["a", "a"]
    await q.close()


async def test_configure_bounds_the_workers() -> None:
    active = 0
    most = 0

    async def worker(key: str) -> float | None:
        nonlocal active, most
        active += 1
        most = max(most, active)
        await asyncio.sleep(0.02)
        active -= 1
        return None

    q = WorkQueue(worker, concurrency=8)
    q.configure(concurrency=2, coalesce_s=0.0)
    for i in range(10):
        q.add(f"k{i}")
    await asyncio.sleep(0.5)
    assert most == 2
    assert q.pending() == 0
    with pytest.raises(ValueError):
        q.configure(concurrency=0, coalesce_s=0.0)
    await q.close()
