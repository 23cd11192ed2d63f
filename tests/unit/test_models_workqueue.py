"""The operator's coalescing work queue (pure asyncio; lives in handlers/ but has no I/O)."""

from __future__ import annotations

import asyncio
import itertools

from modelseal.handlers.workqueue import RetryLater, WorkQueue


async def test_coalesces_and_never_runs_a_key_twice_at_once() -> None:
    running: set[str] = set()
    runs: list[str] = []
    overlap = False

    async def worker(key: str) -> float | None:
        nonlocal overlap
        if key in running:
            overlap = True
        running.add(key)
        runs.append(key)
        await asyncio.sleep(0.05)
        running.discard(key)
        return None

    q = WorkQueue(worker, concurrency=2)
    for _ in range(5):
        q.add("a")
    await asyncio.sleep(0.01)
    for _ in range(5):
        q.add("a")  # while running: folded into one more run
    q.add("b")
    await asyncio.sleep(0.3)
    assert not overlap
    assert runs.count("a") == 2 and runs.count("b") == 1
    assert q.pending() == 0
    await q.close()


async def test_retries_with_backoff_and_requeues_on_request() -> None:
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def worker(key: str) -> float | None:
        calls.append(loop.time())
        if len(calls) < 3:
            raise RetryLater("vault down")
        if len(calls) == 3:
            return 0.05  # the license window changes soon
        return None

    q = WorkQueue(worker, max_backoff_s=0.2)
    q.add("k")
    await asyncio.sleep(2.0)
    assert len(calls) == 4
    gaps = [b - a for a, b in itertools.pairwise(calls)]
    assert gaps[0] >= 0.19 and gaps[1] >= 0.19 and 0.04 <= gaps[2] < 0.19  # capped back-off
    await q.close()


async def test_earliest_delay_wins() -> None:
    seen: list[float] = []
    loop = asyncio.get_running_loop()

    async def worker(key: str) -> float | None:
        seen.append(loop.time())
        return None

    q = WorkQueue(worker)
    start = loop.time()
    q.add("k", delay=5)
    q.add("k", delay=0.05)
    q.add("k", delay=3)
    await asyncio.sleep(0.3)
    assert len(seen) == 1 and seen[0] - start < 0.3
    await q.close()
