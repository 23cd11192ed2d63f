"""ModelLicense request usage (issue 14), the pure part: figures, QuotaExhausted, the 80% /
100% crossings, the write throttle, and the license reconcile keeping the writer's
condition. The writer against a real API server and Redis: tests/integration/
test_license_usage.py."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.unit.test_models_license import lic

from modelseal.models import conditions
from modelseal.models.status import license_status
from modelseal.models.usage import (
    Counts,
    QuotaReason,
    Reading,
    carried_quota_condition,
    crossings,
    quota_condition,
    same_figures,
    usage_figures,
    write_due,
)

NOW = datetime(2026, 6, 30, 22, 15, tzinfo=UTC)
QUOTAS = {"perDay": 100, "perMonth": 2000, "total": 10_000}


def reading(day: int, month: int = 500, total: int = 5000, **models: Counts) -> Reading:
    return Reading(NOW, "redis://q:6379/0", Counts(day, month, total), models)


def test_figures_per_window_and_model() -> None:
    license_ = lic(quotas=QUOTAS, modelQuotas={"digits": {"perDay": 70}})
    figs = usage_figures(
        license_, reading(90, digits=Counts(60, 400, 4000), other=Counts(30, 100, 1000))
    )
    assert figs is not None
    assert figs["readAt"] == "2026-06-30T22:15:00Z"
    assert figs["day"] == {
        "used": 90,
        "limit": 100,
        "remaining": 10,
        "period": "2026-06-30",
        "resetsAt": "2026-07-01T00:00:00Z",
    }
    assert figs["month"]["resetsAt"] == "2026-07-01T00:00:00Z"
    assert figs["lifetime"] == {"used": 5000, "limit": 10_000, "remaining": 5000}
    assert (figs["today"], figs["thisMonth"]) == ("90/100", "500/2000")
    assert figs["models"]["digits"]["day"]["limit"] == 70
    assert "limit" not in figs["models"]["other"]["day"]  # no per-model quota: used alone
    unlimited = usage_figures(lic(), reading(3))
    assert unlimited is not None and unlimited["today"] == "3" and "limit" not in unlimited["day"]
    assert usage_figures(license_, Reading(NOW, "x", error="down")) is None


def test_december_rolls_over_to_january() -> None:
    dec = Reading(datetime(2026, 12, 31, 23, 0, tzinfo=UTC), "r", Counts(1, 1, 1))
    figs = usage_figures(lic(quotas=QUOTAS), dec)
    assert figs is not None and figs["month"]["resetsAt"] == "2027-01-01T00:00:00Z"


def test_quota_exhausted_names_the_window_and_when_it_resets() -> None:
    license_ = lic(quotas=QUOTAS)
    within = quota_condition(license_, reading(99))
    assert (within.status, within.reason) == ("False", QuotaReason.WITHIN)
    day = quota_condition(license_, reading(100))
    assert (day.status, day.reason) == ("True", QuotaReason.DAY)
    assert "perDay quota is used up (100/100); resets at 2026-07-01T00:00:00Z" in day.message
    month = quota_condition(license_, reading(100, 2000))
    assert month.reason == QuotaReason.MONTH  # the longer block is reported first
    assert "perDay" in month.message  # and the day as well
    total = quota_condition(license_, reading(5, 5, 10_000))
    assert total.reason == QuotaReason.LIFETIME and "never resets" in total.message
    per_model = quota_condition(
        lic(quotas=QUOTAS, modelQuotas={"digits": {"perDay": 10}}),
        reading(10, digits=Counts(10, 10, 10)),
    )
    assert per_model.status == "True" and "model digits's perDay quota" in per_model.message


def test_unknown_when_not_read_or_not_readable() -> None:
    license_ = lic(quotas=QUOTAS)
    assert quota_condition(license_, None).reason == QuotaReason.NOT_READ
    down = quota_condition(license_, Reading(NOW, "r", error="quota Redis r: refused"))
    assert (down.status, down.reason) == ("Unknown", QuotaReason.STORE_DOWN)
    assert "refused" in down.message
    embedded = quota_condition(license_, Reading(NOW, "embedded", unreadable=True, error="in Pod"))
    assert (embedded.status, embedded.reason) == ("Unknown", QuotaReason.UNREADABLE)


def test_crossings_at_80_and_100_percent_once_per_period() -> None:
    license_ = lic(quotas={"perDay": 10, "total": 100})
    f79 = usage_figures(license_, reading(7, 7, 7))
    f80 = usage_figures(license_, reading(8, 8, 8))
    f100 = usage_figures(license_, reading(10, 10, 80))
    assert f79 and f80 and f100
    assert crossings(None, f79) == []
    got = crossings(f79, f80)
    assert [(c.window, c.percent, c.used, c.limit) for c in got] == [("day", 80, 8, 10)]
    assert "tenant acme used 80% of the perDay quota of license gold (8/10)" in got[0].message(
        "gold", "acme"
    )
    # 80% to 100% of the day and 80% of the lifetime total at once
    got = crossings(f80, f100)
    assert sorted((c.window, c.percent) for c in got) == [("day", 100), ("lifetime", 80)]
    assert crossings(f100, f100) == []  # nothing new: no second Event
    # a new day: yesterday's 10 is not today's, today's 8 crosses 80% again
    tomorrow = Reading(datetime(2026, 7, 1, 1, 0, tzinfo=UTC), "r", Counts(8, 8, 80))
    f_next = usage_figures(license_, tomorrow)
    assert f_next is not None
    assert [(c.window, c.percent) for c in crossings(f100, f_next)] == [("day", 80)]
    # small limits: 80% of 3 is the 3rd request (rounded up), not the 2nd
    small = lic(quotas={"perDay": 3})
    f2 = usage_figures(small, reading(2))
    f3 = usage_figures(small, reading(3))
    assert f2 and f3 and crossings(None, f2) == []
    assert sorted(c.percent for c in crossings(f2, f3)) == [80, 100]


def test_same_figures_ignores_read_time_and_write_due_throttles() -> None:
    license_ = lic(quotas=QUOTAS)
    a = usage_figures(license_, reading(5))
    b = usage_figures(
        license_, Reading(NOW.replace(minute=16), "redis://q:6379/0", Counts(5, 500, 5000))
    )
    assert a and b and a != b and same_figures(a, b)
    c = usage_figures(license_, reading(6))
    assert not same_figures(a, c)
    assert write_due(None, 0.0, 30.0)
    assert not write_due(100.0, 129.9, 30.0)
    assert write_due(100.0, 130.0, 30.0)


def test_license_reconcile_keeps_the_writers_condition() -> None:
    license_ = lic(quotas=QUOTAS)
    first = license_status(license_, 4, None, None, None, NOW)
    quota = conditions.find(first["conditions"], "QuotaExhausted")
    assert quota is not None and (quota["status"], quota["reason"]) == ("Unknown", "UsageNotRead")
    assert carried_quota_condition(first) is None
    # the usage writer set it True; a later reconcile (a spec edit) keeps it as it is
    exhausted = quota_condition(license_, reading(100))
    written = dict(first)
    written["conditions"] = conditions.merge(first["conditions"], [exhausted], 4, NOW) + [
        c for c in first["conditions"] if c["type"] != "QuotaExhausted"
    ]
    again = license_status(license_, 5, None, None, written, NOW)
    kept = conditions.find(again["conditions"], "QuotaExhausted")
    assert kept is not None and (kept["status"], kept["reason"]) == ("True", "DailyQuotaExhausted")
    assert kept["message"] == exhausted.message
