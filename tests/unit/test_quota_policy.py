"""Quota policy: token bucket, windows, decision order, and 'refused costs nothing'."""

from __future__ import annotations

import copy
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from modelseal.quota.license import Limits
from modelseal.quota.policy import (
    DAY_MS,
    UNIT,
    EngineLimits,
    ScopeCounters,
    admit,
    bucket_tokens,
    day_id,
    decide,
    month_id,
    month_start_ms,
    ms_until_next_day,
    ms_until_next_month,
    release,
    retry_after_seconds,
)

T0 = int(datetime(2025, 3, 31, 23, 59, 0, tzinfo=UTC).timestamp() * 1000)


def lims(**kw: float | int) -> list[EngineLimits]:
    return [EngineLimits.from_limits(Limits(**kw))]  # type: ignore[arg-type]


def fresh(n: int = 1) -> list[ScopeCounters]:
    return [ScopeCounters() for _ in range(n)]


def test_engine_limits_encoding() -> None:
    e = EngineLimits.from_limits(Limits(rate_per_second=2.5, per_day=3))
    assert e.rate_units == 2_500_000
    assert e.burst_units == 3 * UNIT
    assert (e.per_day, e.per_month, e.total, e.concurrent) == (3, -1, -1, -1)
    assert EngineLimits.from_limits(Limits()).as_args() == (-1,) * 6


def test_windows() -> None:
    assert day_id(0) == 0 and day_id(DAY_MS - 1) == 0 and day_id(DAY_MS) == 1
    assert month_id(T0) == 2025 * 12 + 2
    assert month_start_ms(2025 * 12 + 3) == T0 + 60_000
    assert ms_until_next_month(T0) == 60_000
    assert ms_until_next_day(T0) == 60_000
    dec = 2025 * 12 + 11
    assert month_start_ms(dec + 1) == int(datetime(2026, 1, 1, tzinfo=UTC).timestamp()) * 1000


def test_burst_then_rate() -> None:
    c, lim = fresh(), lims(rate_per_second=2, burst=3)
    allowed = [admit(c, lim, T0)[0].allowed for _ in range(5)]
    assert allowed == [True, True, True, False, False]
    d, _ = admit(c, lim, T0)
    assert d.limit == "rate" and d.retry_after_ms == 500
    assert retry_after_seconds(d) == 1
    assert not admit(c, lim, T0 + 499)[0].allowed
    assert admit(c, lim, T0 + 500)[0].allowed
    assert not admit(c, lim, T0 + 500)[0].allowed
    # a long pause refills to the burst, never above
    assert [admit(c, lim, T0 + 3_600_000)[0].allowed for _ in range(4)] == [True] * 3 + [False]


def test_fractional_rate() -> None:
    c, lim = fresh(), lims(rate_per_second=0.5)
    assert admit(c, lim, T0)[0].allowed
    d, _ = admit(c, lim, T0)
    assert not d.allowed and d.retry_after_ms == 2000
    assert admit(c, lim, T0 + 2000)[0].allowed


def test_day_window_resets_at_utc_midnight() -> None:
    c, lim = fresh(), lims(per_day=2)
    assert admit(c, lim, T0)[0].allowed and admit(c, lim, T0)[0].allowed
    d, _ = admit(c, lim, T0)
    assert d.limit == "per_day" and d.retry_after_ms == 60_000
    assert retry_after_seconds(d) == 60
    assert d.remaining.per_day == 0
    d, _ = admit(c, lim, T0 + 60_000)
    assert d.allowed and d.remaining.per_day == 1


def test_month_window_and_total() -> None:
    c, lim = fresh(), lims(per_month=3, total=4)
    for _ in range(3):
        assert admit(c, lim, T0)[0].allowed
    d, _ = admit(c, lim, T0)
    assert d.limit == "per_month"
    nxt = T0 + 60_000  # April
    assert admit(c, lim, nxt)[0].allowed
    d, _ = admit(c, lim, nxt)
    assert d.limit == "total" and d.retry_after_ms is None and retry_after_seconds(d) is None


def test_order_reports_longest_block_first() -> None:
    c, lim = fresh(), lims(rate_per_second=1, burst=1, per_day=1, total=1)
    assert admit(c, lim, T0)[0].allowed
    assert admit(c, lim, T0)[0].limit == "total"


def test_concurrency_lease_and_release() -> None:
    c, lim = fresh(), lims(concurrent=2)
    d1, l1 = admit(c, lim, T0)
    d2, l2 = admit(c, lim, T0)
    d3, l3 = admit(c, lim, T0)
    assert d1.allowed and d2.allowed and not d3.allowed
    assert d3.limit == "concurrent" and l3 == []
    assert l1 == [0]
    release(c, l1)
    assert admit(c, lim, T0)[0].allowed
    release(c, l2)
    release(c, l2)
    release(c, l2)
    assert c[0].inflight == 0  # never below zero


def test_tenant_and_model_scopes() -> None:
    c = fresh(2)
    lim = [
        EngineLimits.from_limits(Limits(per_day=3)),
        EngineLimits.from_limits(Limits(per_day=1)),
    ]
    d, _ = admit(c, lim, T0)
    assert d.allowed and d.remaining.per_day == 0
    d, _ = admit(c, lim, T0)
    assert not d.allowed and d.scope == 1
    # the refusal cost the tenant scope nothing
    assert c[0].day_count == 1 and c[0].total == 1


def test_unlimited_still_counts_usage() -> None:
    c, lim = fresh(), lims()
    for _ in range(5):
        d, leased = admit(c, lim, T0)
        assert d.allowed and leased == []
    assert (c[0].day_count, c[0].month_count, c[0].total) == (5, 5, 5)
    assert c[0].tokens is None
    assert d.remaining.total == -1


def test_zero_limits_refuse_everything() -> None:
    for kw in ({"total": 0}, {"per_day": 0}, {"per_month": 0}, {"concurrent": 0}):
        assert not admit(fresh(), lims(**kw), T0)[0].allowed


def test_lowered_burst_clamps_tokens() -> None:
    c = fresh()
    admit(c, lims(rate_per_second=1, burst=100), T0)
    assert c[0].tokens == 99 * UNIT
    small = lims(rate_per_second=1, burst=2)[0]
    assert bucket_tokens(c[0], small, T0) == 2 * UNIT


def test_clock_going_back_does_not_refill() -> None:
    c, lim = fresh(), lims(rate_per_second=1, burst=1)
    assert admit(c, lim, T0)[0].allowed
    assert not admit(c, lim, T0 - 10_000)[0].allowed


# --- properties --------------------------------------------------------------------------

limits_st = st.builds(
    Limits,
    rate_per_second=st.one_of(st.none(), st.sampled_from([0.5, 1, 3, 10, 250.5])),
    per_day=st.one_of(st.none(), st.integers(0, 30)),
    per_month=st.one_of(st.none(), st.integers(0, 60)),
    total=st.one_of(st.none(), st.integers(0, 80)),
    concurrent=st.one_of(st.none(), st.integers(0, 5)),
).map(
    lambda lim: (
        lim
        if lim.rate_per_second is not None
        else Limits(
            per_day=lim.per_day, per_month=lim.per_month, total=lim.total, concurrent=lim.concurrent
        )
    )
)
# steps: (ms to advance, release one lease?)
steps_st = st.lists(st.tuples(st.integers(0, 40_000_000), st.booleans()), max_size=120)


@settings(max_examples=300, deadline=None)
@given(lim_a=limits_st, lim_b=limits_st, steps=steps_st)
def test_admitted_never_exceeds_any_limit(
    lim_a: Limits, lim_b: Limits, steps: list[tuple[int, bool]]
) -> None:
    limits = [EngineLimits.from_limits(lim_a), EngineLimits.from_limits(lim_b)]
    counters = fresh(2)
    now = T0 - 5 * DAY_MS
    admitted: list[int] = []
    leases: list[list[int]] = []
    for advance, give_back in steps:
        now += advance
        if give_back and leases:
            release(counters, leases.pop(0))
        before = copy.deepcopy(counters)
        expect = decide(counters, limits, now)
        d, leased = admit(counters, limits, now)
        assert d.allowed == expect.allowed
        if d.allowed:
            admitted.append(now)
            leases.append(leased)
        else:
            # refused requests change nothing
            assert counters == before
            assert d.limit is not None and d.scope in (0, 1)
        for lim in (lim_a, lim_b):
            if lim.total is not None:
                assert len(admitted) <= lim.total
            if lim.per_day is not None:
                assert sum(1 for t in admitted if day_id(t) == day_id(now)) <= lim.per_day
            if lim.per_month is not None:
                assert sum(1 for t in admitted if month_id(t) == month_id(now)) <= lim.per_month
            if lim.concurrent is not None:
                assert len(leases) <= lim.concurrent
            if lim.rate_per_second is not None and lim.effective_burst is not None:
                # token bucket bound over every suffix window of admissions
                for i, start in enumerate(admitted):
                    window = len(admitted) - i
                    bound = lim.effective_burst + lim.rate_per_second * (now - start) / 1000
                    assert window <= bound + 1e-9


@settings(max_examples=200, deadline=None)
@given(
    rate=st.sampled_from([0.25, 1, 7, 99.5, 1000]),
    burst=st.integers(1, 20),
    gaps=st.lists(st.integers(0, 3000), min_size=1, max_size=60),
)
def test_rate_retry_after_is_exact(rate: float, burst: int, gaps: list[int]) -> None:
    lim = lims(rate_per_second=rate, burst=burst)
    c = fresh()
    now = T0
    for gap in gaps:
        now += gap
        d, _ = admit(c, lim, now)
        if not d.allowed:
            assert d.limit == "rate" and d.retry_after_ms is not None and d.retry_after_ms > 0
            assert not decide(c, lim, now + d.retry_after_ms - 1).allowed
            assert decide(c, lim, now + d.retry_after_ms).allowed


@settings(max_examples=100, deadline=None)
@given(rate=st.sampled_from([1, 5, 20]), seconds=st.integers(1, 30))
def test_steady_overload_admits_burst_plus_rate(rate: int, seconds: int) -> None:
    lim = lims(rate_per_second=rate, burst=rate)
    c = fresh()
    ok = 0
    for ms in range(0, seconds * 1000 + 1, 10):  # a request every 10 ms, far above the rate
        ok += admit(c, lim, T0 + ms)[0].allowed
    assert ok == rate + rate * seconds
