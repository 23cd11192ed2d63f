"""The audit log: a bounded queue with back-pressure in front of a sink.

Capacity is reserved *before* a request is let through (``reserve``), and given back only
when its record has been written by the sink. So a request that was served always has room
for its record, and none is ever dropped: when the sink cannot keep up and the queue is
full, ``reserve`` either waits (policy ``block``) or raises ``AuditOverflow`` (policy
``reject``: the gateway answers 503). Both are counted (``blocked``, ``rejected``).

One writer task seals records into the chain (``Chain``) in the order they were submitted
and hands them to the sink in batches. ``close`` drains the queue and writes a final
checkpoint.

No record stops the writer: one that cannot be sealed even after ``json_safe`` is replaced
by an ``event`` line ``audit_record_unwritable`` in its place (so the count holds and the
loss is on the record), and a sink that raises is retried with back-off. Should the writer
task end anyway while the log is open, ``dead`` says why: ``reserve`` then raises
``AuditWriterDead`` at once (and wakes every waiter with it) instead of waiting forever,
and the gateway's liveness check fails so that the container is restarted.

Durable before answered: ``submit(record, durable=True)`` returns a future that is done
once the sink holds the record durably: the batch written *and* ``sink.sync()`` returned
(``fsync`` for a file; a 2xx for the webhook; the write into the container's stdout pipe
for stdout, which the container runtime then holds), and the state file (below) updated.
The gateway awaits it before it sends a served request's answer, so a request whose
answer left the gateway always has its record on disk, whatever kills the process after
(``SIGKILL``, OOM). Records of one batch share one ``fsync`` (group commit).

Time checkpoints: besides every ``checkpoint_every`` records, a checkpoint is written
every ``checkpoint_interval_s`` seconds, also when idle, so that the age of a log's last
checkpoint tells a stopped log from a running one (``audit verify --max-age``).

Linked restarts: with ``state_file`` and a sink that cannot be read back, each start's
genesis names the last line the earlier run's sink accepted (``modelseal.audit.state``).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from modelseal.audit.chain import Chain, json_safe, now_iso
from modelseal.audit.sinks import Sink
from modelseal.audit.state import ChainPoint, read_point, write_point

log = logging.getLogger(__name__)


class AuditOverflow(RuntimeError):
    """The audit queue is full and the policy is ``reject``."""


class AuditWriterDead(AuditOverflow):
    """The writer task has ended while the log is open: no record would be written."""


class AuditSyncFailed(RuntimeError):
    """The sink could not make written records durable (the writer ends on it)."""


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
        checkpoint_interval_s: float = 60.0,
        state_file: Path | None = None,
    ) -> None:
        self.sink = sink
        self.capacity = max(1, capacity)
        self.overflow = overflow
        self.batch_max = batch_max
        self.checkpoint_interval_s = checkpoint_interval_s
        # A file continues its own chain: the state file is only for sinks that cannot be
        # read back (stdout, webhook).
        self.state_file = None if sink.readable_back else state_file
        resume = sink.resume_point()
        if resume is not None:
            seq, prev = resume
            self.chain = Chain(gateway, hmac_key, checkpoint_every, seq=seq, prev=prev)
        else:
            self.chain = Chain(gateway, hmac_key, checkpoint_every)
        self._used = 0
        self._pending: collections.deque[tuple[dict[str, Any], asyncio.Future[None] | None]] = (
            collections.deque()
        )
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        # set while the writer sleeps with nothing queued: done by the next submit/close
        # (a bare future and one timer: cheaper than an Event wait under ``wait_for``,
        # which made a task each time the writer fell idle)
        self._sleeping: asyncio.Future[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set by start
        self._closing = False
        self.dead: str | None = None
        self.unwritable = 0  # records replaced by an audit_record_unwritable line
        self.sink_failures = 0  # sink writes that raised (retried)
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
        if self._used < self.capacity and self.dead is None:
            self._used += 1
            return True
        return False

    async def reserve(self) -> None:
        if self.dead is not None:
            raise AuditWriterDead(f"audit writer stopped: {self.dead}")
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
            if self.dead is not None:
                raise AuditWriterDead(f"audit writer stopped: {self.dead}")

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
    def submit(
        self, record: dict[str, Any], *, durable: bool = False
    ) -> asyncio.Future[None] | None:
        """Queue a record under a reservation taken with reserve/try_reserve. With
        ``durable``: a future, done once the sink holds the record durably (see above)."""
        fut: asyncio.Future[None] | None = None
        if durable:
            fut = (self._loop or asyncio.get_running_loop()).create_future()
            if self.dead is not None:  # nothing will write it: answer at once, not never
                fut.set_exception(AuditWriterDead(f"audit writer stopped: {self.dead}"))
        self._pending.append((record, fut))
        self._idle.clear()
        self._wake()
        return fut

    def _wake(self) -> None:
        sleeping = self._sleeping
        if sleeping is not None:
            self._sleeping = None
            if not sleeping.done():
                sleeping.set_result(None)

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
        self._loop = asyncio.get_running_loop()
        if not self.chain.started:
            after = read_point(self.state_file) if self.state_file is not None else None
            await self.sink.write([self.chain.genesis(after=after.link() if after else None)])
            await self.sink.sync()
            self._save_point()
        self._task = asyncio.create_task(self._run(), name="audit-writer")
        self._task.add_done_callback(self._writer_ended)

    @property
    def alive(self) -> bool:
        """False once the writer task has ended while the log is still open."""
        return self.dead is None

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        if self._closing and not task.cancelled() and task.exception() is None:
            return  # close() drained it: the normal end
        if task.cancelled():
            why = "cancelled"
        else:
            exc = task.exception()
            why = f"{type(exc).__name__}: {exc}" if exc is not None else "returned"
        self.dead = why
        log.critical("audit writer stopped (%s): no further record can be written", why)
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)  # each waiter then sees ``dead`` and raises
        for _, done in self._pending:
            if done is not None and not done.done():
                done.set_exception(AuditWriterDead(f"audit writer stopped: {why}"))

    def _seal_one(self, record: dict[str, Any]) -> list[bytes]:
        try:
            return self.chain.seal(record)
        except Exception as exc:
            self.unwritable += 1
            log.error("audit record could not be sealed (%s): writing a stand-in", exc)
            stand_in = {
                "type": "event",
                "ts": now_iso(),
                "event": "audit_record_unwritable",
                "error": type(exc).__name__,
                "record_type": json_safe(str(record.get("type"))[:64]),
                "fields": json_safe(sorted(str(k)[:64] for k in record)[:64]),
            }
            return self.chain.seal(stand_in)

    async def _write(self, batch: list[bytes]) -> None:
        """Hand a batch to the sink; anything it raises is retried, never fatal."""
        delay = 0.05
        while True:
            try:
                await self.sink.write(batch)
                return
            except Exception as exc:
                self.sink_failures += 1
                log.error("audit sink %s raised, retrying: %s", self.sink.name, exc)
                with contextlib.suppress(Exception):
                    self.sink.on_error(f"{type(exc).__name__}: {exc}")
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)

    def _save_point(self) -> None:
        if self.state_file is None or not self.chain.started:
            return
        try:
            write_point(
                self.state_file,
                ChainPoint(self.chain.chain_id, self.chain.seq - 1, self.chain.prev),
            )
        except OSError as exc:
            log.error(
                "audit state file %s: %s (a restart will not be linked)", self.state_file, exc
            )

    async def _sync(self, done: list[asyncio.Future[None]] | None = None) -> None:
        """Make the written records durable. A failure ends the writer: the records may be
        lost, so the requests waiting on them are refused (``done``), no later request is
        answered, and liveness fails (the container restarts and the chain resumes from
        what the file holds), rather than answering without a durable record."""
        try:
            await self.sink.sync()
        except Exception as exc:
            why = f"audit sink {self.sink.name}: sync failed: {type(exc).__name__}: {exc}"
            log.critical("%s", why)
            for fut in done or ():
                if not fut.done():
                    fut.set_exception(AuditWriterDead(why))
            raise AuditSyncFailed(why) from exc

    def _checkpoint_due(self) -> bool:
        return time.monotonic() - self.chain.last_checkpoint >= self.checkpoint_interval_s

    async def _run(self) -> None:
        while True:
            if not self._pending:
                self._idle.set()
                if self._closing:
                    return
                wait = self.checkpoint_interval_s - (time.monotonic() - self.chain.last_checkpoint)
                loop = asyncio.get_running_loop()
                sleeping = self._sleeping = loop.create_future()
                timer = loop.call_later(max(0.0, wait), _settle, sleeping)
                try:
                    await sleeping
                finally:
                    timer.cancel()
                    self._sleeping = None
                if not self._pending and self._checkpoint_due():
                    await self._write([self.chain.checkpoint("interval")])
                    await self._sync()
                    self._save_point()
                continue
            batch: list[bytes] = []
            done: list[asyncio.Future[None]] = []
            taken = 0
            while self._pending and taken < self.batch_max:
                record, fut = self._pending.popleft()
                batch += self._seal_one(record)
                if fut is not None:
                    done.append(fut)
                taken += 1
            if self._checkpoint_due() and self.chain.since_checkpoint:
                batch.append(self.chain.checkpoint("interval"))
            checkpointed = any(b'"type":"checkpoint"' in line for line in batch)
            await self._write(batch)
            if checkpointed or done:
                await self._sync(done)
            self._save_point()
            for fut in done:
                if not fut.done():
                    fut.set_result(None)
            self.written += taken
            self._free(taken)

    async def flush(self) -> None:
        if self.dead is not None:
            raise AuditWriterDead(f"audit writer stopped: {self.dead}")
        await self._idle.wait()

    async def close(self) -> None:
        self._closing = True
        self._wake()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._pending:  # the writer had died: write what it left, best effort
            batch: list[bytes] = []
            while self._pending:
                batch += self._seal_one(self._pending.popleft()[0])
            await self.sink.write(batch)
        await self.sink.write([self.chain.checkpoint("shutdown")])
        await self.sink.sync()
        self._save_point()
        await self.sink.close()


def _settle(fut: asyncio.Future[None]) -> None:
    """The writer's sleep ends (its timer): a checkpoint may be due."""
    if not fut.done():
        fut.set_result(None)
