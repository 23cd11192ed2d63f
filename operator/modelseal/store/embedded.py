"""Embedded counter store: one gateway replica, counters in process, durable on disk.

State folder (``settings.quota_state_dir``; mount a PersistentVolumeClaim there so the
counters survive a pod being rescheduled to another node):

* ``lock``: ``flock``-ed for as long as a gateway uses the folder, so two gateways can
  never count into the same state (the second one refuses to start).
* ``journal``: one line per scope per admitted (or refunded) request, appended *before*
  the request is forwarded: ``<scope key> TAB <day id> TAB <day count> TAB <month id> TAB
  <month count> TAB <total> TAB <version>``. Values are absolute and ``version`` counts the
  changes of that scope, so replay keeps the values of the highest version: replaying a
  line twice or after a newer snapshot changes nothing, and a refund (a count going down)
  survives a restart. Lines without a version (the older six-field format) are merged by
  taking the largest counts. A torn last line (crash mid-write) is skipped.
* ``snapshot.json``: all counters, written (temp file, fsync, rename) when the journal
  grows past ``compact_after`` lines and on shutdown; the journal is then emptied.

Survival: a line is in the kernel's page cache as soon as ``write`` returns, so a killed or
crashed gateway loses nothing; the journal is fsync-ed every ``fsync_interval_s`` (and on
shutdown), which bounds what a power loss of the node could lose. The token bucket and the
in-flight count are not persisted: after a restart the bucket is full and nothing is in
flight, which is what a restart means.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
from pathlib import Path
from typing import Any

from modelseal.quota import policy
from modelseal.quota.policy import ScopeCounters
from modelseal.store.base import (
    Admission,
    CounterStore,
    Lease,
    Scope,
    StoreError,
    StoreUnavailable,
    Ticket,
    Usage,
)

log = logging.getLogger(__name__)


class EmbeddedStore(CounterStore):
    kind = "embedded"

    def __init__(
        self,
        state_dir: Path,
        *,
        fsync_interval_s: float = 1.0,
        compact_after: int = 200_000,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.fsync_interval_s = fsync_interval_s
        self.compact_after = compact_after
        self._counters: dict[str, ScopeCounters] = {}
        self._versions: dict[str, int] = {}  # journal version of each scope's values
        self._lock_fd: int | None = None
        self._journal_fd: int | None = None
        self._journal_lines = 0
        self._dirty = False
        self._fsync_task: asyncio.Task[None] | None = None

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal"

    @property
    def snapshot_path(self) -> Path:
        return self.state_dir / "snapshot.json"

    # -- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self.open()
        if self.fsync_interval_s > 0:
            self._fsync_task = asyncio.create_task(self._fsync_loop(), name="embedded-fsync")

    def open(self) -> None:
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            lock_fd = os.open(self.state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StoreError(f"embedded store: cannot use {self.state_dir}: {exc}") from exc
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(lock_fd)
            raise StoreError(
                f"embedded store: {self.state_dir} is in use by another gateway process; "
                "the embedded store serves one replica (use quota_store=redis for more)"
            ) from None
        self._lock_fd = lock_fd
        self._load()
        self._journal_fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    async def close(self) -> None:
        if self._fsync_task is not None:
            self._fsync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._fsync_task
            self._fsync_task = None
        self.shutdown()

    def shutdown(self) -> None:
        if self._journal_fd is not None:
            with contextlib.suppress(OSError):
                self._compact()
            os.close(self._journal_fd)
            self._journal_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    # -- the store API --------------------------------------------------------------------
    async def admit(self, scopes: tuple[Scope, ...], now_ms: int, lease_id: str) -> Admission:
        return self.admit_sync(scopes, now_ms, lease_id)

    def admit_sync(self, scopes: tuple[Scope, ...], now_ms: int, lease_id: str) -> Admission:
        if self._journal_fd is None:
            raise StoreUnavailable("embedded store is not open")
        counters = [self._counters.setdefault(s.key, ScopeCounters()) for s in scopes]
        limits = [s.limits for s in scopes]
        before = [dataclasses.replace(c) for c in counters]
        decision, leased = policy.admit(counters, limits, now_ms)
        if not decision.allowed:
            return Admission(decision)
        try:
            self._journal(scopes, counters)
        except OSError as exc:
            for c, old in zip(counters, before, strict=True):  # not counted, not admitted
                for f in dataclasses.fields(c):
                    setattr(c, f.name, getattr(old, f.name))
            raise StoreUnavailable(f"embedded store: cannot write journal: {exc}") from exc
        lease = None
        if leased:
            lease = Lease(lease_id, tuple(scopes[i] for i in leased))
        return Admission(decision, lease, Ticket(scopes, now_ms, lease_id, tuple(leased)))

    async def refund(self, ticket: Ticket) -> None:
        self.refund_sync(ticket)

    def refund_sync(self, ticket: Ticket) -> None:
        if self._journal_fd is None:
            raise StoreUnavailable("embedded store is not open")
        counters = [self._counters.setdefault(s.key, ScopeCounters()) for s in ticket.scopes]
        before = [dataclasses.replace(c) for c in counters]
        policy.refund(
            counters, [s.limits for s in ticket.scopes], ticket.now_ms, list(ticket.leased)
        )
        try:
            self._journal(ticket.scopes, counters)
        except OSError as exc:
            for c, old in zip(counters, before, strict=True):  # stays counted: the safe side
                for f in dataclasses.fields(c):
                    setattr(c, f.name, getattr(old, f.name))
            raise StoreUnavailable(f"embedded store: cannot write journal: {exc}") from exc

    def _journal(self, scopes: tuple[Scope, ...], counters: list[ScopeCounters]) -> None:
        """Append the new values of ``scopes`` (each with its next version); raises OSError
        (then no version was taken)."""
        assert self._journal_fd is not None
        versions = self._versions
        out = []
        for s, c in zip(scopes, counters, strict=True):
            v = versions.get(s.key, 0) + 1
            out.append(
                f"{s.key}\t{c.day}\t{c.day_count}\t{c.month}\t{c.month_count}\t{c.total}\t{v}\n"
            )
        os.write(self._journal_fd, "".join(out).encode())
        for s in scopes:
            versions[s.key] = versions.get(s.key, 0) + 1
        self._journal_lines += len(scopes)
        self._dirty = True
        if self._journal_lines >= self.compact_after:
            try:
                self._compact()
            except OSError as exc:
                log.error("embedded store: compaction failed (journal kept): %s", exc)

    async def release(self, lease: Lease) -> None:
        self.release_soon(lease)

    def release_soon(self, lease: Lease) -> None:
        for scope in lease.scopes:
            c = self._counters.get(scope.key)
            if c is not None:
                c.inflight = max(0, c.inflight - 1)

    async def usage(self, scope: Scope, now_ms: int) -> Usage:
        c = self._counters.get(scope.key, ScopeCounters())
        return Usage(
            c.count_in_day(policy.day_id(now_ms)),
            c.count_in_month(policy.month_id(now_ms)),
            c.total,
            c.inflight,
        )

    async def ping(self) -> bool:
        return self._journal_fd is not None

    # -- persistence ----------------------------------------------------------------------
    def _merge(
        self, key: str, day: int, dc: int, month: int, mc: int, total: int, version: int = -1
    ) -> None:
        c = self._counters.setdefault(key, ScopeCounters())
        if version >= 0:  # versioned line or snapshot entry: the newest values win
            if version > self._versions.get(key, 0) or key not in self._versions:
                c.day, c.day_count, c.month, c.month_count, c.total = day, dc, month, mc, total
                self._versions[key] = version
            return
        # unversioned (older format): counts only ever grew, the largest wins
        if day > c.day:
            c.day, c.day_count = day, dc
        elif day == c.day:
            c.day_count = max(c.day_count, dc)
        if month > c.month:
            c.month, c.month_count = month, mc
        elif month == c.month:
            c.month_count = max(c.month_count, mc)
        c.total = max(c.total, total)
        self._versions.setdefault(key, 0)

    def _load(self) -> None:
        self._counters.clear()
        self._versions.clear()
        try:
            snap: Any = json.loads(self.snapshot_path.read_text())
        except FileNotFoundError:
            snap = {"scopes": {}}
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"embedded store: snapshot {self.snapshot_path} unreadable: {exc}"
            ) from exc
        for key, vals in dict(snap.get("scopes", {})).items():
            self._merge(str(key), *(int(v) for v in vals))
        lines = 0
        try:
            data = self.journal_path.read_bytes()
        except FileNotFoundError:
            data = b""
        for raw in data.split(b"\n"):
            parts = raw.decode(errors="replace").split("\t")
            if len(parts) not in (6, 7):
                continue  # empty or torn line
            try:
                nums = [int(p) for p in parts[1:]]
            except ValueError:
                continue
            self._merge(parts[0], *nums)
            lines += 1
        self._journal_lines = lines
        log.info(
            "embedded store: %d scopes loaded from %s (%d journal lines)",
            len(self._counters),
            self.state_dir,
            lines,
        )

    def _compact(self) -> None:
        assert self._journal_fd is not None
        scopes = {
            k: [c.day, c.day_count, c.month, c.month_count, c.total, self._versions.get(k, 0)]
            for k, c in self._counters.items()
        }
        tmp = self.snapshot_path.with_suffix(".tmp")
        with tmp.open("w") as fh:
            json.dump({"version": 2, "scopes": scopes}, fh, separators=(",", ":"))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.snapshot_path)
        dir_fd = os.open(self.state_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        os.ftruncate(self._journal_fd, 0)
        os.fsync(self._journal_fd)
        self._journal_lines = 0
        self._dirty = False

    def fsync(self) -> None:
        if self._journal_fd is not None and self._dirty:
            self._dirty = False
            os.fsync(self._journal_fd)

    async def _fsync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.fsync_interval_s)
            try:
                await asyncio.to_thread(self.fsync)
            except OSError as exc:
                log.error("embedded store: fsync failed: %s", exc)
