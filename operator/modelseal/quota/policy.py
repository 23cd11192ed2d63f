"""Quota policy: token bucket, calendar windows and the admit decision, as pure functions.

This module is the reference semantics of metering. The embedded store runs it directly;
the Redis store runs the same algorithm as one Lua script (``modelseal.store.lua``), and a
property test checks that both agree step by step.

Model
-----
A request is counted in one or more *scopes* (the tenant, and the tenant's use of one
model). Each scope has limits (``Limits``) and counters (``ScopeCounters``):

* ``rate``: a token bucket of ``burst`` tokens refilled at ``rate_per_second``. Tokens are
  held as integers in micro-tokens (``UNIT``) and time in integer milliseconds, so that the
  Lua version (doubles) computes bit-for-bit the same values.
* ``per_day`` / ``per_month``: UTC calendar day / month counters (window ids are integers:
  days since the epoch, ``year * 12 + month - 1``).
* ``total``: lifetime counter of the license id.
* ``concurrent``: in-flight requests (a lease taken on admit, given back on release).

Decision: every limit of every scope is checked first, in the order ``LIMIT_ORDER`` (the
longest-lasting block is reported), and only if all pass are all counters of all scopes
incremented. A refused request changes no counter ("blocked requests do not consume
quota"). Day, month and total are counted even where unlimited, for usage reporting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from modelseal.quota.license import Limits

UNIT: Final = 1_000_000
DAY_MS: Final = 86_400_000
UNLIMITED: Final = -1

LimitName = Literal["total", "per_month", "per_day", "concurrent", "rate"]
LIMIT_ORDER: Final[tuple[LimitName, ...]] = (
    "total",
    "per_month",
    "per_day",
    "concurrent",
    "rate",
)
#: Nominal wait suggested when the concurrency limit is hit.
CONCURRENT_RETRY_MS: Final = 1000


@dataclass(frozen=True, slots=True)
class EngineLimits:
    """Integer form of ``Limits`` as both engines use it; ``-1`` is unlimited."""

    rate_units: int = UNLIMITED  # micro-tokens per second
    burst_units: int = UNLIMITED  # micro-tokens
    per_day: int = UNLIMITED
    per_month: int = UNLIMITED
    total: int = UNLIMITED
    concurrent: int = UNLIMITED

    @classmethod
    def from_limits(cls, limits: Limits) -> EngineLimits:
        def opt(value: int | None) -> int:
            return UNLIMITED if value is None else int(value)

        burst = limits.effective_burst
        rate_units = UNLIMITED
        burst_units = UNLIMITED
        if limits.rate_per_second is not None and burst is not None:
            rate_units = max(1, round(limits.rate_per_second * UNIT))
            burst_units = burst * UNIT
        return cls(
            rate_units=rate_units,
            burst_units=burst_units,
            per_day=opt(limits.per_day),
            per_month=opt(limits.per_month),
            total=opt(limits.total),
            concurrent=opt(limits.concurrent),
        )

    def as_args(self) -> tuple[int, int, int, int, int, int]:
        return (
            self.rate_units,
            self.burst_units,
            self.per_day,
            self.per_month,
            self.total,
            self.concurrent,
        )


@dataclass(slots=True)
class ScopeCounters:
    """Counters of one scope. ``tokens is None``: the bucket was never used (it is full)."""

    tokens: int | None = None
    bucket_ms: int = 0
    day: int = 0
    day_count: int = 0
    month: int = 0
    month_count: int = 0
    total: int = 0
    inflight: int = 0

    def count_in_day(self, day: int) -> int:
        return self.day_count if self.day == day else 0

    def count_in_month(self, month: int) -> int:
        return self.month_count if self.month == month else 0


@dataclass(frozen=True, slots=True)
class Remaining:
    """What is left after a decision, the minimum over scopes; ``-1`` is unlimited."""

    tokens: int = UNLIMITED  # whole tokens in the tightest bucket
    per_day: int = UNLIMITED
    per_month: int = UNLIMITED
    total: int = UNLIMITED


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: LimitName | None = None
    scope: int = -1
    retry_after_ms: int | None = None  # None: waiting does not help (lifetime total)
    remaining: Remaining = Remaining()


# --- windows -----------------------------------------------------------------------------


def day_id(now_ms: int) -> int:
    return now_ms // DAY_MS


def month_id(now_ms: int) -> int:
    when = datetime.fromtimestamp(now_ms / 1000, UTC)
    return when.year * 12 + when.month - 1


def month_start_ms(month: int) -> int:
    year, index = divmod(month, 12)
    return int(datetime(year, index + 1, 1, tzinfo=UTC).timestamp()) * 1000


def ms_until_next_day(now_ms: int) -> int:
    return (day_id(now_ms) + 1) * DAY_MS - now_ms


def ms_until_next_month(now_ms: int) -> int:
    return month_start_ms(month_id(now_ms) + 1) - now_ms


# --- token bucket ------------------------------------------------------------------------


def bucket_tokens(c: ScopeCounters, lim: EngineLimits, now_ms: int) -> int:
    """Micro-tokens in the bucket at ``now_ms`` (exact integer arithmetic)."""
    burst = lim.burst_units
    if c.tokens is None:
        return burst
    need = burst - c.tokens
    if need <= 0:
        return burst
    elapsed = max(0, now_ms - c.bucket_ms)
    fill_ms = (need * 1000 + lim.rate_units - 1) // lim.rate_units
    if elapsed >= fill_ms:
        return burst
    return c.tokens + (elapsed * lim.rate_units) // 1000


def ms_until_token(tokens: int, lim: EngineLimits) -> int:
    return (((UNIT - tokens) * 1000) + lim.rate_units - 1) // lim.rate_units


# --- the decision ------------------------------------------------------------------------


def _remaining(
    counters: list[ScopeCounters],
    limits: list[EngineLimits],
    now_ms: int,
    day: int,
    month: int,
) -> Remaining:
    tokens = per_day = per_month = total = UNLIMITED

    def tighter(current: int, value: int) -> int:
        return value if current == UNLIMITED else min(current, value)

    for c, lim in zip(counters, limits, strict=True):
        if lim.rate_units != UNLIMITED:
            tokens = tighter(tokens, bucket_tokens(c, lim, now_ms) // UNIT)
        if lim.per_day != UNLIMITED:
            per_day = tighter(per_day, max(0, lim.per_day - c.count_in_day(day)))
        if lim.per_month != UNLIMITED:
            per_month = tighter(per_month, max(0, lim.per_month - c.count_in_month(month)))
        if lim.total != UNLIMITED:
            total = tighter(total, max(0, lim.total - c.total))
    return Remaining(tokens, per_day, per_month, total)


def decide(counters: list[ScopeCounters], limits: list[EngineLimits], now_ms: int) -> Decision:
    """Would one more request be admitted now? Changes nothing."""
    day, month = day_id(now_ms), month_id(now_ms)
    for kind in LIMIT_ORDER:
        for i, (c, lim) in enumerate(zip(counters, limits, strict=True)):
            if kind == "total":
                if lim.total != UNLIMITED and c.total + 1 > lim.total:
                    return Decision(False, kind, i, None)
            elif kind == "per_month":
                if lim.per_month != UNLIMITED and c.count_in_month(month) + 1 > lim.per_month:
                    return Decision(False, kind, i, ms_until_next_month(now_ms))
            elif kind == "per_day":
                if lim.per_day != UNLIMITED and c.count_in_day(day) + 1 > lim.per_day:
                    return Decision(False, kind, i, ms_until_next_day(now_ms))
            elif kind == "concurrent":
                if lim.concurrent != UNLIMITED and c.inflight + 1 > lim.concurrent:
                    return Decision(False, kind, i, CONCURRENT_RETRY_MS)
            elif lim.rate_units != UNLIMITED:
                tokens = bucket_tokens(c, lim, now_ms)
                if tokens < UNIT:
                    return Decision(False, kind, i, ms_until_token(tokens, lim))
    return Decision(True)


def commit(counters: list[ScopeCounters], limits: list[EngineLimits], now_ms: int) -> list[int]:
    """Count one admitted request in every scope; returns the scopes that took a lease."""
    day, month = day_id(now_ms), month_id(now_ms)
    leased: list[int] = []
    for i, (c, lim) in enumerate(zip(counters, limits, strict=True)):
        c.day_count = c.count_in_day(day) + 1
        c.day = day
        c.month_count = c.count_in_month(month) + 1
        c.month = month
        c.total += 1
        if lim.rate_units != UNLIMITED:
            c.tokens = bucket_tokens(c, lim, now_ms) - UNIT
            c.bucket_ms = now_ms
        if lim.concurrent != UNLIMITED:
            c.inflight += 1
            leased.append(i)
    return leased


def admit(
    counters: list[ScopeCounters], limits: list[EngineLimits], now_ms: int
) -> tuple[Decision, list[int]]:
    """Decide, and if admitted count it. Returns the decision and the leased scopes."""
    decision = decide(counters, limits, now_ms)
    leased: list[int] = []
    if decision.allowed:
        leased = commit(counters, limits, now_ms)
    remaining = _remaining(counters, limits, now_ms, day_id(now_ms), month_id(now_ms))
    return (
        Decision(
            decision.allowed,
            decision.limit,
            decision.scope,
            decision.retry_after_ms,
            remaining,
        ),
        leased,
    )


def refund(
    counters: list[ScopeCounters], limits: list[EngineLimits], now_ms: int, leased: list[int]
) -> None:
    """Undo ``commit`` of a request admitted at ``now_ms`` that never reached the model
    (Triton could not be connected to): its day / month counts (if those windows are still
    current), its lifetime count, its token (the bucket never goes above ``burst``) and
    its leases. The Redis store does the same in one script (``REFUND_LUA``)."""
    day, month = day_id(now_ms), month_id(now_ms)
    for c, lim in zip(counters, limits, strict=True):
        if c.day == day and c.day_count > 0:
            c.day_count -= 1
        if c.month == month and c.month_count > 0:
            c.month_count -= 1
        if c.total > 0:
            c.total -= 1
        if lim.rate_units != UNLIMITED and c.tokens is not None:
            c.tokens = min(lim.burst_units, c.tokens + UNIT)
    release(counters, leased)


def release(counters: list[ScopeCounters], leased: list[int]) -> None:
    for i in leased:
        counters[i].inflight = max(0, counters[i].inflight - 1)


def retry_after_seconds(decision: Decision) -> int | None:
    """Whole seconds for the HTTP ``Retry-After`` header (at least 1), or None."""
    if decision.retry_after_ms is None:
        return None
    return max(1, -(-decision.retry_after_ms // 1000))


LIMIT_MESSAGES: Final[dict[str, str]] = {
    "total": "the lifetime request total of the license is used up",
    "per_month": "the monthly request quota is used up",
    "per_day": "the daily request quota is used up",
    "concurrent": "too many requests in flight",
    "rate": "request rate above the license's rate limit",
}
