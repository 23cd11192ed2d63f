"""How a status change is told: object references, Events, the model-conditions gauge.

Pure: the status writer patches, posts and records what these functions say."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelseal.models import conditions as cond
from modelseal.models.spec import API_VERSION, ObjectMeta
from modelseal.models.status import (
    ARTIFACT_VERIFIED,
    DEGRADED,
    KEY_ACCESSIBLE,
    LICENSE_VALID,
    MODEL_CONDITIONS,
    READY,
    VALID,
    ConditionReason,
)

COMPONENT = "modelseal-operator"
#: Ready=False for these is the way to Ready, not a problem.
PROGRESS_REASONS = frozenset(
    {ConditionReason.ROLLING_OUT, ConditionReason.RECONCILING, ConditionReason.SCALING_DOWN}
)
#: Conditions whose transitions become Events (and, for the license, audit records).
EVENT_CONDITIONS = (READY, LICENSE_VALID, KEY_ACCESSIBLE, ARTIFACT_VERIFIED, DEGRADED)
#: The longest Event message the operator posts.
MESSAGE_LIMIT = 1024


def ref(kind: str, meta: ObjectMeta | Mapping[str, Any]) -> dict[str, str]:
    """The reference to a custom resource (an Event's involvedObject, an audit record's
    subject, a log line's object)."""
    if isinstance(meta, ObjectMeta):
        return {
            "apiVersion": API_VERSION,
            "kind": kind,
            "namespace": meta.namespace,
            "name": meta.name,
            "uid": meta.uid,
        }
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "namespace": str(meta.get("namespace", "")),
        "name": str(meta.get("name", "")),
        "uid": str(meta.get("uid", "")),
    }


def event_body(
    involved: Mapping[str, str], type_: str, reason: str, message: str, now: datetime
) -> dict[str, Any]:
    """A core/v1 Event about a custom resource."""
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "generateName": f"{involved['name']}.",
            "namespace": involved["namespace"],
            "labels": {"app.kubernetes.io/managed-by": COMPONENT},
        },
        "involvedObject": dict(involved),
        "type": type_,
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": COMPONENT,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


@dataclass(frozen=True)
class Transition:
    """A condition that changed, as it is told."""

    type: str
    status: str
    reason: str
    message: str
    #: Good news (a Normal Event, an INFO line); Degraded is good when False.
    good: bool
    #: The condition's first value (the object had no condition of this type before).
    first: bool = False

    @property
    def event_type(self) -> str:
        return "Normal" if self.good else "Warning"

    @property
    def problem(self) -> bool:
        """Bad news: not good, and not still unknown (waiting is no problem)."""
        return not self.good and self.status != "Unknown"

    @property
    def announced(self) -> bool:
        """Told as an Event: every change of a value, but a condition's first value only
        when it is a problem, which Ready's first "rolling out" is not. A new model that
        comes up healthy posts what happened (created, Vault access, serving, verified),
        not a Warning for each first "not yet" and a Normal for each first "fine": 4
        Events instead of 9 (issue 13 §3: at 1,000 models those were a fifth of the
        operator's API calls)."""
        if not self.first:
            return True
        return self.problem and not (self.type == READY and self.reason in PROGRESS_REASONS)


def model_transitions(
    before: Iterable[Mapping[str, Any]] | None, after: Iterable[Mapping[str, Any]]
) -> list[Transition]:
    """The model's condition changes that become Events, in the order of `after`."""
    out = []
    listed = _listed(before)
    for change in cond.transitions(listed, list(after)):
        ctype = str(change["type"])
        if ctype not in EVENT_CONDITIONS:
            continue
        good = (change["status"] == "True") != (ctype == DEGRADED)
        out.append(_transition(change, good, first=cond.find(listed, ctype) is None))
    return out


def license_transitions(
    before: Iterable[Mapping[str, Any]] | None, after: Iterable[Mapping[str, Any]]
) -> list[Transition]:
    """The license's Valid changes (the only ones that become Events)."""
    return [
        _transition(change, change["status"] == "True")
        for change in cond.transitions(_listed(before), list(after))
        if change["type"] == VALID
    ]


def _listed(items: Iterable[Mapping[str, Any]] | None) -> list[Mapping[str, Any]] | None:
    return None if items is None else list(items)


def _transition(change: Mapping[str, Any], good: bool, first: bool = False) -> Transition:
    return Transition(
        str(change["type"]),
        str(change["status"]),
        str(change["reason"]),
        str(change["message"]),
        good,
        first,
    )


def condition_values(status: Mapping[str, Any]) -> dict[str, str]:
    """type -> status of a status's conditions."""
    return {str(c["type"]): str(c["status"]) for c in status.get("conditions") or []}


def condition_counts(models: Iterable[Mapping[str, str]]) -> dict[tuple[str, str], int]:
    """How many models have each (condition, value); every known pair is present."""
    counts: dict[tuple[str, str], int] = {}
    for ctype in MODEL_CONDITIONS:
        for value in ("True", "False", "Unknown"):
            counts[(ctype, value)] = 0
    for conds in models:
        count_in(counts, conds, 1)
    return counts


def count_in(
    counts: dict[tuple[str, str], int], conds: Mapping[str, str], sign: int
) -> list[tuple[str, str]]:
    """Add (`sign` 1) or take away (-1) one model's conditions; the pairs it touched."""
    for ctype, value in conds.items():
        counts[(ctype, value)] = counts.get((ctype, value), 0) + sign
    return list(conds.items())
