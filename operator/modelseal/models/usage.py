"""A license's request usage as its status shows it (issue 14): figures, the QuotaExhausted
condition, the 80% / 100% crossings that become Events, and when to write. Pure.

The operator reads the counters from the quota store (``handlers/licenses_usage.py``) and
hands them here as a ``Reading``; this module turns it into ``status.usage.requests``::

    requests:
      readAt: "2026-06-01T12:00:00Z"
      store: "redis://quota.modelseal-system.svc:6379/0"
      today: "90/100"            # printer columns (used/limit, or used alone)
      thisMonth: "900/2000"
      day:      {used: 90, limit: 100, remaining: 10, period: "2026-06-01", resetsAt: ...}
      month:    {used: 900, limit: 2000, remaining: 1100, period: "2026-06", resetsAt: ...}
      lifetime: {used: 5000}
      models:   {digits: {day: {used: 60}, month: {...}, lifetime: {...}}}

``period`` names the window the figure belongs to, so that a comparison with the previous
status never mistakes yesterday's count for today's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, NamedTuple

from modelseal.models.conditions import Condition, fmt_time
from modelseal.models.license_spec import LicenseSpec, Quotas

QUOTA_EXHAUSTED = "QuotaExhausted"
#: Share of a limit whose crossing posts an Event (once per window period).
THRESHOLDS: tuple[int, ...] = (80, 100)


class Window(StrEnum):
    DAY = "day"
    MONTH = "month"
    LIFETIME = "lifetime"


class QuotaReason(StrEnum):
    """Reasons of the QuotaExhausted condition."""

    DAY = "DailyQuotaExhausted"
    MONTH = "MonthlyQuotaExhausted"
    LIFETIME = "TotalQuotaExhausted"
    WITHIN = "WithinQuota"
    NOT_READ = "UsageNotRead"
    UNREADABLE = "UsageNotReadable"
    STORE_DOWN = "QuotaStoreUnavailable"


#: Reasons only the usage writer sets (the license reconcile keeps them as they are).
USAGE_REASONS = frozenset(QuotaReason) - {QuotaReason.NOT_READ}

_FIELD = {Window.DAY: "perDay", Window.MONTH: "perMonth", Window.LIFETIME: "total"}
_EXHAUSTED_ORDER = (Window.LIFETIME, Window.MONTH, Window.DAY)  # the longest block first


class Counts(NamedTuple):
    """What the store holds for one scope now."""

    day: int
    month: int
    lifetime: int


@dataclass(frozen=True)
class Reading:
    """The counters of one license: the license-wide scope and each model's own scope
    (ProtectedModel name -> counts). ``error``: why nothing could be read."""

    read_at: datetime
    store: str
    total: Counts | None = None
    models: Mapping[str, Counts] = field(default_factory=dict)
    error: str | None = None
    unreadable: bool = False


def limit_of(quotas: Quotas, window: Window) -> int | None:
    if window is Window.DAY:
        return quotas.per_day
    if window is Window.MONTH:
        return quotas.per_month
    return quotas.total


def period_of(window: Window, now: datetime) -> str:
    now = now.astimezone(UTC)
    if window is Window.DAY:
        return now.strftime("%Y-%m-%d")
    if window is Window.MONTH:
        return now.strftime("%Y-%m")
    return "lifetime"


def resets_at(window: Window, now: datetime) -> datetime | None:
    now = now.astimezone(UTC)
    if window is Window.DAY:
        return datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
    if window is Window.MONTH:
        year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
        return datetime(year, month, 1, tzinfo=UTC)
    return None


def _figure(used: int, limit: int | None, window: Window, now: datetime) -> dict[str, Any]:
    out: dict[str, Any] = {"used": used}
    if limit is not None:
        out["limit"] = limit
        out["remaining"] = max(0, limit - used)
    if window is not Window.LIFETIME:
        out["period"] = period_of(window, now)
        when = resets_at(window, now)
        if when is not None:
            out["resetsAt"] = fmt_time(when)
    return out


def _counts(c: Counts, window: Window) -> int:
    return {Window.DAY: c.day, Window.MONTH: c.month, Window.LIFETIME: c.lifetime}[window]


def _ratio_text(fig: Mapping[str, Any]) -> str:
    return f"{fig['used']}/{fig['limit']}" if "limit" in fig else str(fig["used"])


def usage_figures(lic: LicenseSpec, reading: Reading) -> dict[str, Any] | None:
    """``status.usage.requests`` for ``reading``; None when nothing could be read."""
    if reading.total is None:
        return None
    now = reading.read_at
    out: dict[str, Any] = {"readAt": fmt_time(now), "store": reading.store}
    for window in Window:
        out[window.value] = _figure(
            _counts(reading.total, window), limit_of(lic.quotas, window), window, now
        )
    out["today"] = _ratio_text(out[Window.DAY.value])
    out["thisMonth"] = _ratio_text(out[Window.MONTH.value])
    models: dict[str, Any] = {}
    for name, counts in sorted(reading.models.items()):
        quotas = lic.model_quotas.get(name, Quotas())
        models[name] = {
            w.value: _figure(_counts(counts, w), limit_of(quotas, w), w, now) for w in Window
        }
    if models:
        out["models"] = models
    return out


def same_figures(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> bool:
    """Equal but for the time they were read (a write that would change only readAt is
    skipped)."""
    if old is None or new is None:
        return old is None and new is None

    def strip(d: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in d.items() if k != "readAt"}

    return strip(old) == strip(new)


class Exhaustion(NamedTuple):
    window: Window
    model: str | None  # None: the license-wide quota
    used: int
    limit: int
    resets: datetime | None


def exhausted(lic: LicenseSpec, reading: Reading) -> list[Exhaustion]:
    """Every window whose limit is used up (license-wide first, longest block first)."""
    if reading.total is None:
        return []
    now = reading.read_at
    found: list[Exhaustion] = []
    scopes: list[tuple[str | None, Counts, Quotas]] = [(None, reading.total, lic.quotas)]
    for name, counts in sorted(reading.models.items()):
        scopes.append((name, counts, lic.model_quotas.get(name, Quotas())))
    for model, counts, quotas in scopes:
        for window in _EXHAUSTED_ORDER:
            limit = limit_of(quotas, window)
            used = _counts(counts, window)
            if limit is not None and used >= limit:
                found.append(Exhaustion(window, model, used, limit, resets_at(window, now)))
    return found


_REASON = {Window.DAY: QuotaReason.DAY, Window.MONTH: QuotaReason.MONTH}


def _describe(e: Exhaustion) -> str:
    scope = f"model {e.model}'s" if e.model else "the license's"
    when = f"resets at {fmt_time(e.resets)}" if e.resets else "never resets (lifetime total)"
    return f"{scope} {_FIELD[e.window]} quota is used up ({e.used}/{e.limit}); {when}"


def quota_condition(lic: LicenseSpec, reading: Reading | None) -> Condition:
    """QuotaExhausted: True naming the window and when it resets, False, or Unknown."""
    if reading is None:
        return Condition(
            QUOTA_EXHAUSTED,
            "Unknown",
            QuotaReason.NOT_READ,
            "the operator has not read the quota store for this license yet",
        )
    if reading.unreadable:
        return Condition(
            QUOTA_EXHAUSTED, "Unknown", QuotaReason.UNREADABLE, reading.error or "not readable"
        )
    if reading.total is None:
        return Condition(
            QUOTA_EXHAUSTED,
            "Unknown",
            QuotaReason.STORE_DOWN,
            reading.error or "the quota store did not answer",
        )
    used_up = exhausted(lic, reading)
    if used_up:
        first = used_up[0]
        reason = _REASON.get(first.window, QuotaReason.LIFETIME)
        message = "; ".join(_describe(e) for e in used_up)
        return Condition(QUOTA_EXHAUSTED, "True", reason, message)
    return Condition(QUOTA_EXHAUSTED, "False", QuotaReason.WITHIN, "every request quota has room")


def carried_quota_condition(previous: Mapping[str, Any] | None) -> Condition | None:
    """The QuotaExhausted condition the usage writer last set, for the license reconcile to
    keep (it does not read the store itself); None if the writer never set one."""
    for c in (previous or {}).get("conditions") or []:
        if (
            isinstance(c, Mapping)
            and c.get("type") == QUOTA_EXHAUSTED
            and c.get("reason") in USAGE_REASONS
            and c.get("status") in ("True", "False", "Unknown")
        ):
            return Condition(
                QUOTA_EXHAUSTED, c["status"], str(c["reason"]), str(c.get("message") or "")
            )
    return None


class Crossing(NamedTuple):
    """A tenant crossed ``percent`` of a window's limit since the last written figures."""

    window: Window
    model: str | None
    percent: int
    used: int
    limit: int

    def message(self, license_name: str, tenant: str) -> str:
        scope = f"model {self.model} of license" if self.model else "license"
        return (
            f"tenant {tenant} used {self.percent}% of the {_FIELD[self.window]} quota of "
            f"{scope} {license_name} ({self.used}/{self.limit})"
        )


def _crossed(
    old: Mapping[str, Any] | None, new: Mapping[str, Any], window: Window, model: str | None
) -> list[Crossing]:
    limit = new.get("limit")
    if not isinstance(limit, int) or limit <= 0:
        return []
    used = int(new.get("used") or 0)
    before = 0
    same_window = isinstance(old, Mapping) and old.get("period") == new.get("period")
    if same_window and isinstance(old, Mapping) and old.get("limit") == limit:
        before = int(old.get("used") or 0)
    out = []
    for pct in THRESHOLDS:
        mark = -(-limit * pct // 100)  # the first count at or above pct% of the limit
        if before < mark <= used:
            out.append(Crossing(window, model, pct, used, limit))
    return out


def crossings(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[Crossing]:
    """Thresholds crossed between the previously written figures and the new ones."""
    old = old if isinstance(old, Mapping) else {}
    out: list[Crossing] = []
    for window in Window:
        out += _crossed(old.get(window.value), new.get(window.value) or {}, window, None)
    old_models = old.get("models") if isinstance(old.get("models"), Mapping) else {}
    for name, figs in (new.get("models") or {}).items():
        prev = old_models.get(name) if isinstance(old_models, Mapping) else None
        prev = prev if isinstance(prev, Mapping) else {}
        for window in Window:
            out += _crossed(prev.get(window.value), figs.get(window.value) or {}, window, name)
    return out


def write_due(last_write: float | None, now: float, interval_s: float) -> bool:
    """At most one write per license every ``interval_s`` (monotonic seconds)."""
    return last_write is None or now - last_write >= interval_s
