"""Embedded counter store: decisions, durability across restarts and crashes, exclusivity."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import pytest

from modelseal.quota.license import Limits
from modelseal.quota.policy import DAY_MS, EngineLimits
from modelseal.store.base import Scope, StoreError, StoreUnavailable
from modelseal.store.embedded import EmbeddedStore

T0 = int(datetime(2025, 5, 10, 8, 0, tzinfo=UTC).timestamp() * 1000)


def scopes(**kw: int) -> tuple[Scope, ...]:
    return (
        Scope("lic|*", "acme", EngineLimits.from_limits(Limits(**kw))),  # type: ignore[arg-type]
        Scope("lic|m:digits", "acme", EngineLimits()),
    )


def opened(path: Path, **kw: int) -> EmbeddedStore:
    store = EmbeddedStore(path, fsync_interval_s=0, **kw)
    store.open()
    return store


def crash(store: EmbeddedStore) -> None:
    """What a SIGKILL leaves: the fds closed by the kernel, no snapshot written."""
    assert store._journal_fd is not None and store._lock_fd is not None
    os.close(store._journal_fd)
    os.close(store._lock_fd)
    store._journal_fd = store._lock_fd = None


async def test_counts_and_refuses(tmp_path: Path) -> None:
    store = opened(tmp_path)
    sc = scopes(total=3)
    results = [(await store.admit(sc, T0, f"l{i}")).decision for i in range(5)]
    assert [d.allowed for d in results] == [True, True, True, False, False]
    assert results[3].limit == "total" and results[3].scope == 0
    usage = await store.usage(sc[1], T0)
    assert (usage.day, usage.month, usage.total) == (3, 3, 3)
    await store.close()


async def test_counters_survive_clean_restart(tmp_path: Path) -> None:
    store = opened(tmp_path)
    sc = scopes(per_day=5, total=8)
    for _ in range(4):
        assert (await store.admit(sc, T0, "x")).decision.allowed
    await store.close()
    assert store.snapshot_path.exists()
    assert store.journal_path.stat().st_size == 0  # compacted on shutdown

    store = opened(tmp_path)
    got = [(await store.admit(sc, T0, "x")).decision for _ in range(3)]
    assert [d.allowed for d in got] == [True, False, False]
    assert got[1].limit == "per_day"
    # next day: the day resets, the lifetime total does not
    nxt = T0 + DAY_MS
    got = [(await store.admit(sc, nxt, "x")).decision for _ in range(4)]
    assert [d.allowed for d in got] == [True, True, True, False]
    assert got[3].limit == "total"
    await store.close()


async def test_counters_survive_a_crash_and_a_torn_line(tmp_path: Path) -> None:
    store = opened(tmp_path)
    sc = scopes(total=10)
    for _ in range(6):
        await store.admit(sc, T0, "x")
    crash(store)
    with (tmp_path / "journal").open("ab") as fh:
        fh.write(b"lic|*\t20000\t99")  # a write cut short by the crash
    store = opened(tmp_path)
    assert (await store.usage(sc[0], T0)).total == 6
    allowed = [(await store.admit(sc, T0, "x")).decision.allowed for _ in range(6)]
    assert allowed == [True] * 4 + [False] * 2
    await store.close()


async def test_replay_is_idempotent_after_compaction_crash(tmp_path: Path) -> None:
    store = opened(tmp_path)
    sc = scopes()
    for _ in range(5):
        await store.admit(sc, T0, "x")
    journal = store.journal_path.read_bytes()
    await store.close()  # snapshot written, journal emptied
    store.journal_path.write_bytes(journal + journal)  # as if the truncate never happened
    store = opened(tmp_path)
    assert (await store.usage(sc[0], T0)).total == 5
    await store.close()


async def test_compaction_keeps_counts(tmp_path: Path) -> None:
    store = opened(tmp_path, compact_after=7)
    sc = scopes()
    for _ in range(10):
        await store.admit(sc, T0, "x")
    assert store.snapshot_path.exists()
    crash(store)
    store = opened(tmp_path)
    assert (await store.usage(sc[0], T0)).total == 10
    await store.close()


async def test_second_process_is_refused(tmp_path: Path) -> None:
    store = opened(tmp_path)
    with pytest.raises(StoreError, match="in use by another gateway"):
        opened(tmp_path)
    await store.close()
    opened(tmp_path).shutdown()


async def test_concurrency_leases(tmp_path: Path) -> None:
    store = opened(tmp_path)
    sc = scopes(concurrent=1)
    first = await store.admit(sc, T0, "a")
    assert first.decision.allowed and first.lease is not None
    assert [s.key for s in first.lease.scopes] == ["lic|*"]
    second = await store.admit(sc, T0, "b")
    assert second.decision.limit == "concurrent" and second.lease is None
    await store.release(first.lease)
    assert (await store.admit(sc, T0, "c")).decision.allowed
    await store.close()
    # in-flight counts do not survive a restart
    store = opened(tmp_path)
    assert (await store.admit(sc, T0, "d")).decision.allowed
    await store.close()


async def test_journal_failure_fails_closed_and_counts_nothing(tmp_path: Path) -> None:
    store = opened(tmp_path)
    sc = scopes(total=5)
    await store.admit(sc, T0, "x")
    assert store._journal_fd is not None
    os.close(store._journal_fd)  # the disk goes away under us
    with pytest.raises(StoreUnavailable, match="journal"):
        await store.admit(sc, T0, "x")
    assert (await store.usage(sc[0], T0)).total == 1
    store._journal_fd = None
    store.shutdown()


async def test_unreadable_snapshot_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "snapshot.json").write_text("{broken")
    with pytest.raises(StoreError, match="unreadable"):
        opened(tmp_path)


async def test_not_open_is_unavailable(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path)
    with pytest.raises(StoreUnavailable):
        await store.admit(scopes(), T0, "x")
    assert not await store.ping()


async def test_start_and_close_with_fsync_task(tmp_path: Path) -> None:
    store = EmbeddedStore(tmp_path, fsync_interval_s=0.01)
    await store.start()
    await store.admit(scopes(), T0, "x")
    assert await store.ping()
    await store.close()
    assert not await store.ping()


async def test_refund_gives_back_counts_token_and_lease(tmp_path: Path) -> None:
    store = opened(tmp_path)
    sc = scopes(rate_per_second=1, burst=1, per_day=1, total=1, concurrent=1)
    first = await store.admit(sc, T0, "a")
    assert first.decision.allowed and first.ticket is not None
    assert not (await store.admit(sc, T0, "b")).decision.allowed
    await store.refund(first.ticket)
    usage = await store.usage(sc[0], T0)
    assert (usage.day, usage.month, usage.total, usage.inflight) == (0, 0, 0, 0)
    assert (await store.admit(sc, T0, "c")).decision.allowed  # every limit has room again
    await store.close()


@pytest.mark.parametrize("how", ["clean", "crash"])
async def test_refund_survives_restart(tmp_path: Path, how: str) -> None:
    store = opened(tmp_path)
    sc = scopes(total=3)
    tickets = [(await store.admit(sc, T0, f"l{i}")).ticket for i in range(3)]
    assert tickets[2] is not None
    await store.refund(tickets[2])
    if how == "clean":
        await store.close()
    else:
        crash(store)  # only the journal: the refund line must win over the admit line
    store = opened(tmp_path)
    assert (await store.usage(sc[0], T0)).total == 2
    assert (await store.admit(sc, T0, "again")).decision.allowed
    assert not (await store.admit(sc, T0, "over")).decision.allowed
    await store.close()


async def test_older_six_field_journal_lines_still_load(tmp_path: Path) -> None:
    day = T0 // DAY_MS
    month = 2025 * 12 + 4
    (tmp_path / "journal").write_text(
        f"lic|*\t{day}\t4\t{month}\t4\t4\nlic|*\t{day}\t5\t{month}\t5\t5\n"
    )
    store = opened(tmp_path)
    assert (await store.usage(scopes()[0], T0)).total == 5
    assert (await store.admit(scopes(total=7), T0, "x")).decision.allowed
    store.shutdown()
    store = opened(tmp_path)  # from the snapshot written at shutdown
    assert (await store.usage(scopes()[0], T0)).total == 6
    store.shutdown()
