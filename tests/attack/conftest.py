"""The attack suite: every test here tries to get around one protection the way a tenant
with edit rights in the model's namespace would (other verbs, other kinds, timing), or
injects a fault, and passes only when the protection held.

`make attack` runs this folder alone and prints, last,
``attacks: tried=<n> refused=<n> lost_records=<n> leaked=<n>``: ``tried`` counts the attack
tests that ran, ``refused`` those that passed (the attack was refused or the fault handled
safely); ``lost_records`` and ``leaked`` add up what the tests reported through the
``attack_ledger`` fixture (audit records lost, secret bytes found where they must not be).
The tests also run in ``make test`` (they live under ``tests/``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

_HERE = Path(__file__).parent


@dataclass
class AttackLedger:
    """What the attacks observed, summed over the run (reported even when a test fails)."""

    lost_records: int = 0
    leaked: int = 0

    def record_lost(self, count: int) -> None:
        """Report audit records lost by one attack (0 when none were)."""
        self.lost_records += count

    def record_leaked(self, count: int) -> None:
        """Report secret bytes or strings found where they must not be (0 when none)."""
        self.leaked += count


_LEDGER = AttackLedger()
_OUTCOMES: dict[str, bool] = {}


@pytest.fixture(scope="session")
def attack_ledger() -> Iterator[AttackLedger]:
    yield _LEDGER


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.attack)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if _HERE not in Path(str(item.path)).parents:
        return
    # An attack counts as tried once its body ran (or its set-up failed: that is a failed
    # attempt, not a skipped one); it counts as refused when every phase passed.
    if report.when == "setup" and report.failed:
        _OUTCOMES[item.nodeid] = False
    elif report.when == "call":
        _OUTCOMES[item.nodeid] = report.passed
    elif report.when == "teardown" and report.failed:
        _OUTCOMES[item.nodeid] = False


def summary_line() -> str:
    tried = len(_OUTCOMES)
    refused = sum(1 for ok in _OUTCOMES.values() if ok)
    return (
        f"attacks: tried={tried} refused={refused} "
        f"lost_records={_LEDGER.lost_records} leaked={_LEDGER.leaked}"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _OUTCOMES:
        return
    line = summary_line()
    terminalreporter.write_line(line)
    # `make attack` prints this file after pytest's own closing line, so that the summary
    # is the target's last line.
    target = os.environ.get("MODELSEAL_ATTACK_SUMMARY")
    if target:
        Path(target).write_text(line + "\n", encoding="utf-8")
