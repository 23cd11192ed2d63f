"""The work queue's order and folding (issue 13 §3): a key's follow-up run goes ahead of
keys never run, and an add while a run waits for a worker slot is folded into it."""

from __future__ import annotations

import asyncio

from modelseal.handlers.workqueue import FIRST_RUN, FOLLOW_UP, RESYNC, Slots, WorkQueue, run_class


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


async def test_resync_runs_wait_behind_first_runs_and_an_event_promotes_one() -> None:
    """A resync inside a rollout: the drift checks of keys that are done go after the new
    keys' first runs (at 1,000 models they held every new model back for minutes), and an
    event for a key whose run waits as a resync puts it in its event class."""
    runs: list[str] = []
    gate = asyncio.Event()
    blocking = asyncio.Event()
    done = asyncio.Event()

    async def worker(key: str) -> float | None:
        runs.append(key)
        if key == "blocker":
            blocking.set()
            await gate.wait()
        if len(runs) == 9:
            done.set()
        return None

    q = WorkQueue(worker, concurrency=1)
    for key in ("old-1", "old-2", "old-3"):
        q.add(key)
        await _yield()
    q.add("blocker")
    await blocking.wait()
    for key in ("old-1", "old-2", "old-3"):
        q.add(key, background=True)  # the periodic resync
        await _yield()
    q.add("new-1")
    await _yield()
    q.add("old-2")  # an event for a key whose resync run waits: a follow-up now
    q.add("new-2")
    await _yield()
    gate.set()
    await done.wait()
    await _yield()
    assert runs[4:] == ["old-2", "new-1", "new-2", "old-1", "old-3"]
    assert q.pending() == 0
    await q.close()


async def test_a_resync_add_does_not_demote_an_event_driven_run() -> None:
    slots_seen: list[int] = []
    gate = asyncio.Event()
    blocking = asyncio.Event()

    async def worker(key: str) -> float | None:
        if key == "blocker":
            blocking.set()
            await gate.wait()
        return None

    q = WorkQueue(worker, concurrency=1)
    real_acquire = q._slots.acquire

    async def spy(klass: int, on_wait: object = None) -> None:
        slots_seen.append(klass)
        await real_acquire(klass, on_wait)  # type: ignore[arg-type]

    q._slots.acquire = spy  # type: ignore[method-assign]
    q.add("blocker")
    await blocking.wait()
    q.add("k")
    q.add("k", background=True)
    await _yield()
    gate.set()
    await _yield(40)
    assert slots_seen == [FIRST_RUN, FIRST_RUN]
    q.add("k", background=True)
    await _yield(40)
    assert slots_seen == [FIRST_RUN, FIRST_RUN, RESYNC]
    await q.close()


async def test_the_worker_sees_the_class_its_run_got_its_slot_in() -> None:
    """`run_class()` in the worker: what the reconciler reads to let a resync's run read
    through the watch cache; outside a run it is None."""
    seen: list[tuple[str, int | None]] = []

    async def worker(key: str) -> float | None:
        await asyncio.sleep(0)
        seen.append((key, run_class()))
        return None

    q = WorkQueue(worker, concurrency=2)
    q.add("a")
    await _yield(40)
    q.add("a")  # a follow-up
    q.add("b", background=True)  # only the resync asked
    await _yield(40)
    q.add("c", background=True)
    q.add("c")  # an event too: not a resync run
    await _yield(40)
    expected = [("a", FIRST_RUN), ("a", FOLLOW_UP), ("b", RESYNC), ("c", FIRST_RUN)]
    assert sorted(seen) == sorted(expected)
    assert run_class() is None
    await q.close()
