"""A coalescing work queue: one reconcile per key at a time, later runs folded together.

`add(key)` while the key waits: nothing more; while it runs: it runs once more after.
`add(key, delay)` keeps the earliest due time. The worker returns the delay after which
it wants the key again (a license window opening or closing), or None. A failing worker
is retried with exponential back-off (0.5 s doubling up to 60 s).

Bounds (issue 13 §3): at most `concurrency` workers run at once, and `coalesce_s` holds
an immediate `add` back that long, so that the burst of watch events one change causes
(a new model: its finalizer, Deployment, ReplicaSet, Pod, Pod scheduled, Pod ready) folds
into one run instead of one run each. A key that was added again while it ran goes back
through the queue (and the worker slots) rather than running again at once, so a busy key
cannot hold a worker while others wait.

A run that waits for a worker slot has read nothing yet: an `add` of its key meanwhile
is already covered by it (the worker is level-triggered) and asks for nothing more. Only
an `add` while the worker runs asks for one run more after it.

Order (issue 13 §3): the slots go to waiting runs of keys that have run before (a
model's follow-up pass: its Deployment became ready, a retry) ahead of keys never run (a
new model's first pass), and last to runs asked for only by the periodic resync
(`add(key, background=True)`), each class first come, first served; so that in a
rollout of many models the first ones become Ready while the others are still being
created, not all of them only after every first pass, and a resync that falls inside a
rollout does not hold the new models back behind a drift check of every model that is
done (at 1,000 models it did: no model became Ready for minutes). An event for a key
whose run waits as a resync promotes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

Worker = Callable[[str], Awaitable[float | None]]

#: The class of the run the current task is (`run_class`), for the worker to see.
_RUN_CLASS: ContextVar[int | None] = ContextVar("modelseal_run_class", default=None)


def run_class() -> int | None:
    """FOLLOW_UP, FIRST_RUN or RESYNC: the class the worker's current run got its slot in
    (None outside a run)."""
    return _RUN_CLASS.get()


class RetryLater(Exception):
    """The worker could not finish (Vault down, a conflict); run it again after a back-off."""


#: A key's class in the order of the worker slots (lower first).
FOLLOW_UP, FIRST_RUN, RESYNC = 0, 1, 2
#: How many keys the queue remembers as having run (then it forgets them all).
RAN_LIMIT = 100_000


class Slots:
    """`concurrency` worker slots handed out by (class, arrival): a semaphore with two
    classes of waiters instead of one line."""

    def __init__(self, concurrency: int) -> None:
        self.free = concurrency
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrival = itertools.count()

    async def acquire(
        self, klass: int, on_wait: Callable[[asyncio.Future[None]], None] | None = None
    ) -> None:
        """A slot; ``on_wait`` gets the waiter's future when it has to wait (`promote`)."""
        # A slot is only ever free while nobody waits (`release` hands it on first).
        if self.free > 0:
            self.free -= 1
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (klass, next(self._arrival), fut))
        if on_wait is not None:
            on_wait(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a slot, then cancelled: pass it on
            raise

    def promote(self, fut: asyncio.Future[None], klass: int) -> None:
        """Let a waiter wait in ``klass`` too (its older place is skipped once served)."""
        if not fut.done():
            heapq.heappush(self._waiting, (klass, next(self._arrival), fut))

    def release(self) -> None:
        while self._waiting:
            *_, fut = heapq.heappop(self._waiting)
            if not fut.done():
                fut.set_result(None)
                return
        self.free += 1


@dataclass
class _Entry:
    handle: asyncio.TimerHandle | None = None
    due: float | None = None
    #: A run exists (waiting for a slot, or started).
    running: bool = False
    #: The run holds a slot: the worker is reading.
    started: bool = False
    dirty: bool = False
    #: Only the periodic resync asked for the next run (its class is RESYNC).
    background: bool = True
    klass: int = FIRST_RUN
    #: The run's place in the slots' line while it waits.
    waiting: asyncio.Future[None] | None = field(default=None, repr=False)
    failures: int = 0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class WorkQueue:
    def __init__(
        self,
        worker: Worker,
        concurrency: int = 4,
        on_depth: Callable[[int], None] | None = None,
        max_backoff_s: float = 60.0,
        coalesce_s: float = 0.0,
    ) -> None:
        self.worker = worker
        self.concurrency = concurrency
        self._slots = Slots(concurrency)
        self._entries: dict[str, _Entry] = {}
        #: Keys that have run at least once (their next runs are follow-ups).
        self._ran: set[str] = set()
        self._on_depth = on_depth
        self._closed = False
        self.max_backoff_s = max_backoff_s
        self.coalesce_s = coalesce_s

    def configure(self, *, concurrency: int, coalesce_s: float) -> None:
        """Set the bounds (the operator's settings) before the first `add`."""
        if any(e.running for e in self._entries.values()):
            raise RuntimeError("configure the work queue before it runs anything")
        if concurrency < 1 or coalesce_s < 0:
            raise ValueError(f"bad bounds: concurrency={concurrency} coalesce_s={coalesce_s}")
        self.concurrency = concurrency
        self._slots = Slots(concurrency)
        self.coalesce_s = coalesce_s

    def _depth(self) -> None:
        if self._on_depth is not None:
            self._on_depth(len(self._entries))

    def add(self, key: str, delay: float = 0.0, *, background: bool = False) -> None:
        """Run ``key`` (after ``delay``); ``background``: only as a periodic drift check."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        entry = self._entries.setdefault(key, _Entry())
        if not background:
            entry.background = False
            if entry.klass == RESYNC and entry.waiting is not None:
                entry.klass = FOLLOW_UP if key in self._ran else FIRST_RUN
                self._slots.promote(entry.waiting, entry.klass)
        if entry.running and delay <= 0:
            # Waiting for a slot: the run has read nothing yet and covers this add.
            entry.dirty = entry.dirty or entry.started
            return
        due = loop.time() + (delay if delay > 0 else self.coalesce_s)
        if entry.due is not None and entry.due <= due:
            return
        if entry.handle is not None:
            entry.handle.cancel()
        entry.due = due
        entry.handle = loop.call_at(due, self._fire, key)
        self._depth()

    def _fire(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        entry.handle = None
        entry.due = None
        if entry.running:
            entry.dirty = entry.dirty or entry.started
            return
        entry.running = True
        entry.task = asyncio.get_running_loop().create_task(self._run(key, entry), name=key)

    async def _run(self, key: str, entry: _Entry) -> None:
        again: float | None = None
        slots = self._slots
        if entry.background:
            entry.klass = RESYNC
        else:
            entry.klass = FOLLOW_UP if key in self._ran else FIRST_RUN

        def waits(fut: asyncio.Future[None]) -> None:
            entry.waiting = fut

        try:
            await slots.acquire(entry.klass, waits)
            _RUN_CLASS.set(entry.klass)
            entry.waiting = None
            entry.background = True  # what asks for the next run decides its class
            try:
                entry.started = True
                entry.dirty = False
                again = await self.worker(key)
                entry.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                entry.failures += 1
                again = min(self.max_backoff_s, 0.5 * 2 ** (entry.failures - 1))
                if isinstance(exc, RetryLater):
                    log.warning("%s: %s; retrying in %.1fs", key, exc, again)
                else:
                    log.exception("reconcile of %s failed; retrying in %.1fs", key, again)
            finally:
                slots.release()
                if len(self._ran) >= RAN_LIMIT:
                    self._ran.clear()
                self._ran.add(key)
        finally:
            entry.running = False
            entry.started = False
            entry.waiting = None
            entry.task = None
            if entry.handle is None and not self._closed:
                if entry.dirty:
                    # Changed while it ran: once more, after the coalescing delay.
                    self.add(key)
                elif again is not None:
                    self.add(key, again)
                else:
                    self._entries.pop(key, None)
            self._depth()

    def pending(self) -> int:
        return len(self._entries)

    async def close(self) -> None:
        self._closed = True
        tasks = []
        for entry in self._entries.values():
            if entry.handle is not None:
                entry.handle.cancel()
            if entry.task is not None:
                entry.task.cancel()
                tasks.append(entry.task)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._entries.clear()
        self._ran.clear()
