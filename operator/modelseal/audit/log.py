"""The audit log: a bounded queue with back-pressure in front of a sink.

Capacity is reserved *before* a request is let through (``reserve``), and given back only
when its record has been written by the sink. So a request that was served always has room
for its record, and none is ever dropped: when the sink cannot keep up and the queue is
full, ``reserve`` either waits (policy ``block``) or raises ``AuditOverflow`` (policy
``reject``: the gateway answers 503). Both are counted (``blocked``, ``rejected``).

One writer task seals records into the chain (``Chain``) in the order they were submitted
and hands them to the sink in batches. ``close`` drains the queue and writes a final
checkpoint.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from typing import Any, Literal

from modelseal.audit.chain import Chain
from modelseal.audit.sinks import Sink

log = logging.getLogger(__name__)


class AuditOverflow(RuntimeError):
    """The audit queue is full and the policy is ``reject``."""


class AuditLog:
    def __init__(
        self,
        sink: Sink,
        *,
        gateway: str,
        hmac_key: bytes | None = None,
        checkpoint_every: int = 100,
        capacity: int = 10_000,
        overflow: Literal["block", "reject"] = "block",
        batch_max: int = 512,
    ) -> None:
        self.sink = sink
        self.capacity = max(1, capacity)
        self.overflow = overflow
        self.batch_max = batch_max
        resume = sink.resume_point()
        if resume is not None:
            seq, prev = resume
            self.chain = Chain(gateway, hmac_key, checkpoint_every, seq=seq, prev=prev)
        else:
            self.chain = Chain(gateway, hmac_key, checkpoint_every)
        self._used = 0
        self._pending: collections.deque[dict[str, Any]] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.written = 0
        self.blocked = 0
        self.rejected = 0
        self.dropped = 0
        self.on_depth: Callable[[int], None] = lambda _depth: None

    # -- capacity -------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Reserved plus queued records (what the queue holds or has promised)."""
        return self._used

    def try_reserve(self) -> bool:
        if self._used < self.capacity:
            self._used += 1
            return True
        return False

    async def reserve(self) -> None:
        if self.try_reserve():
            return
        if self.overflow == "reject":
            self.rejected += 1
            raise AuditOverflow("audit sink cannot keep up: audit queue is full")
        self.blocked += 1
        loop = asyncio.get_running_loop()
        while not self.try_reserve():
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append(fut)
            try:
                await fut
            finally:
                if not fut.done():
                    fut.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)

    def unreserve(self) -> None:
        self._free(1)

    def _free(self, n: int) -> None:
        self._used -= n
        for _ in range(n):
            if not self._waiters:
                break
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
        self.on_depth(self._used)

    # -- records --------------------------------------------------------------------------
    def submit(self, record: dict[str, Any]) -> None:
        """Queue a record under a reservation taken with reserve/try_reserve."""
        self._pending.append(record)
        self._idle.clear()
        self._wakeup.set()

    def emit(self, record: dict[str, Any]) -> bool:
        """Reserve without waiting and queue; False (and counted) if the queue is full."""
        if not self.try_reserve():
            self.dropped += 1
            log.error("audit queue full: record not written: %s", record)
            return False
        self.submit(record)
        return True

    # -- writer ---------------------------------------------------------------------------
    async def start(self) -> None:
        if not self.chain.started:
            await self.sink.write([self.chain.genesis()])
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch: list[bytes] = []
            taken = 0
            while self._pending and taken < self.batch_max:
                batch += self.chain.seal(self._pending.popleft())
                taken += 1
            checkpointed = any(b'"type":"checkpoint"' in line for line in batch)
            await self.sink.write(batch)
            if checkpointed:
                await self.sink.sync()
            self.written += taken
            self._free(taken)

    async def flush(self) -> None:
        await self._idle.wait()

    async def close(self) -> None:
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task
            self._task = None
        await self.sink.write([self.chain.checkpoint("shutdown")])
        await self.sink.sync()
        await self.sink.close()
