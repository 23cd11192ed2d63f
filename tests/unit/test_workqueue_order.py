"""The work queue's order and folding (issue 13 §3): a key's follow-up run goes ahead of
keys never run, and an add while a run waits for a worker slot is folded into it."""

from __future__ import annotations

import asyncio

from modelseal.handlers.workqueue import FIRST_RUN, FOLLOW_UP, Slots, WorkQueue


async def _yield(times: int = 20) -> None:
    """Let the queue's timers and tasks take their next steps."""
    for _ in range(times):
        await asyncio.sleep(0)


async def test_an_add_while_waiting_for_a_slot_is_folded_into_that_run() -> None:
    runs: list[str] = []
    release = asyncio.Event()
    started = asyncio.Event()
    waited = asyncio.Event()

    async def worker(key: str) -> float | None:
        runs.append(key)
        if key == "busy":
            started.set()
            await release.wait()
        else:
            waited.set()
        return None

    q = WorkQueue(worker, concurrency=1)
    q.add("busy")
    await started.wait()
    q.add("waiting")  # its run waits for the one slot
    await _yield()
    for _ in range(3):
        q.add("waiting")  # before it read anything: nothing more to do
    release.set()
    await waited.wait()
    await _yield()
    assert q.pending() == 0
    assert runs == ["busy", "waiting"]
    await q.close()


async def test_an_add_while_the_worker_runs_still_asks_for_one_more_run() -> None:
    runs: list[str] = []
    release = asyncio.Event()
    started = asyncio.Event()
    twice = asyncio.Event()

    async def worker(key: str) -> float | None:
        runs.append(key)
        if len(runs) == 1:
            started.set()
            await release.wait()
        else:
            twice.set()
        return None

    q = WorkQueue(worker, concurrency=1)
    q.add("k")
    await started.wait()
    q.add("k")
    release.set()
    await twice.wait()
    assert runs == ["k", "k"]
    await q.close()


async def test_a_follow_up_run_goes_ahead_of_first_runs() -> None:
    runs: list[str] = []
    gate = asyncio.Event()
    blocking = asyncio.Event()
    first_done = asyncio.Event()
    all_done = asyncio.Event()

    async def worker(key: str) -> float | None:
        runs.append(key)
        if key == "blocker":
            blocking.set()
            await gate.wait()
        if len(runs) == 1:
            first_done.set()
        if len(runs) == 6:
            all_done.set()
        return None

    q = WorkQueue(worker, concurrency=1)
    q.add("old")
    await first_done.wait()
    await _yield()
    q.add("blocker")
    await blocking.wait()
    for key in ("new-1", "new-2", "old", "new-3"):
        q.add(key)
        await _yield()
    gate.set()
    await all_done.wait()
    assert runs == ["old", "blocker", "old", "new-1", "new-2", "new-3"]
    await q.close()


async def test_slots_hand_out_by_class_then_arrival_and_survive_cancellation() -> None:
    slots = Slots(1)
    await slots.acquire(FIRST_RUN)
    order: list[str] = []

    async def take(name: str, klass: int) -> None:
        await slots.acquire(klass)
        order.append(name)
        slots.release()

    tasks = [
        asyncio.create_task(take("a", FIRST_RUN)),
        asyncio.create_task(take("cancelled", FOLLOW_UP)),
        asyncio.create_task(take("b", FOLLOW_UP)),
        asyncio.create_task(take("c", FIRST_RUN)),
    ]
    await _yield(5)
    tasks[1].cancel()
    slots.release()
    await asyncio.gather(tasks[0], tasks[2], tasks[3])
    assert order == ["b", "a", "c"]
    assert slots.free == 1
