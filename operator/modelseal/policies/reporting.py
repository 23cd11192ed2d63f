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
)

COMPONENT = "modelseal-operator"
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

    @property
    def event_type(self) -> str:
        return "Normal" if self.good else "Warning"


def model_transitions(
    before: Iterable[Mapping[str, Any]] | None, after: Iterable[Mapping[str, Any]]
) -> list[Transition]:
    """The model's condition changes that become Events, in the order of `after`."""
    out = []
    for change in cond.transitions(_listed(before), list(after)):
        ctype = str(change["type"])
        if ctype not in EVENT_CONDITIONS:
            continue
        good = (change["status"] == "True") != (ctype == DEGRADED)
        out.append(_transition(change, good))
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


def _transition(change: Mapping[str, Any], good: bool) -> Transition:
    return Transition(
        str(change["type"]),
        str(change["status"]),
        str(change["reason"]),
        str(change["message"]),
        good,
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
        for ctype, value in conds.items():
            counts[(ctype, value)] = counts.get((ctype, value), 0) + 1
    return counts
