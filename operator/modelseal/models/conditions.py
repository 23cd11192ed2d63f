"""Status conditions keyed by type, Kubernetes style. Pure.

`merge` keeps ``lastTransitionTime`` when a condition's status does not change, so that
recomputing the same conditions yields the same status and the operator writes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Status = Literal["True", "False", "Unknown"]


@dataclass(frozen=True)
class Condition:
    type: str
    status: Status
    reason: str
    message: str = ""


def fmt_time(moment: datetime) -> str:
    """RFC 3339 in UTC with second precision, as Kubernetes writes metav1.Time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


MAX_MESSAGE = 1024


def merge(
    existing: Sequence[Mapping[str, Any]] | None,
    desired: Iterable[Condition],
    generation: int,
    now: datetime,
) -> list[dict[str, Any]]:
    """The new condition list: `desired` in order, transition times carried over."""
    old = {
        str(c.get("type")): c for c in (existing or []) if isinstance(c, Mapping) and c.get("type")
    }
    out: list[dict[str, Any]] = []
    for cond in desired:
        prev = old.get(cond.type)
        changed = prev is None or prev.get("status") != cond.status
        when = fmt_time(now) if changed or not prev or not prev.get("lastTransitionTime") else None
        message = cond.message
        if len(message) > MAX_MESSAGE:
            message = message[: MAX_MESSAGE - 1] + "…"
        out.append(
            {
                "type": cond.type,
                "status": cond.status,
                "reason": cond.reason,
                "message": message,
                "lastTransitionTime": when
                if when is not None
                else str(prev.get("lastTransitionTime") if prev else ""),
                "observedGeneration": generation,
            }
        )
    return out


def find(conditions: Sequence[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for cond in conditions or []:
        if isinstance(cond, Mapping) and cond.get("type") == type_:
            return cond
    return None


def transitions(
    before: Sequence[Mapping[str, Any]] | None, after: Sequence[Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    """Conditions whose status or reason differ between two lists (for Events and audit)."""
    changed: list[Mapping[str, Any]] = []
    for cond in after:
        prev = find(before, str(cond.get("type")))
        if (
            prev is None
            or prev.get("status") != cond.get("status")
            or prev.get("reason") != cond.get("reason")
        ):
            changed.append(cond)
    return changed
