"""Which watch events are worth a reconcile (what controller-runtime calls predicates).

The reconcile is level-triggered and writes nothing when nothing changed, so waking it
for an event that changes nothing it reads is never wrong, only wasted: at 1,000 models
a model was reconciled 5.9 times on its way to Ready, each pass ~10 API calls, and the
API server, not the operator, was the limit (issue 13 §3). Most of those passes were
woken by changes the reconcile does not read: the scheduler binding a Pod, kopf writing
its own annotations on the ProtectedModel, a ReplicaSet's replica counts.

Each kind gets a fingerprint of what the reconcile reads of it; an event wakes the model
only when the object's fingerprint differs from the last one seen (or it is new, or
gone). Pure: no I/O, the fingerprints live in a `WakeFilter` the caller keeps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from modelseal.policies.readiness import UNSEALER_CONTAINER

Json = Mapping[str, Any]
Fingerprint = Callable[[Json], int]


def _meta(body: Json) -> Json:
    meta = body.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _hash(view: Any) -> int:
    return hash(orjson.dumps(view, option=orjson.OPT_SORT_KEYS))


def model_fingerprint(body: Json) -> int:
    """A ProtectedModel: its spec (by generation), finalizers, deletion and status; not
    the annotations kopf keeps on it nor any other metadata the reconcile never reads."""
    meta = _meta(body)
    return _hash(
        [
            meta.get("uid"),
            meta.get("generation"),
            meta.get("finalizers"),
            meta.get("deletionTimestamp"),
            body.get("status"),
        ]
    )


def pod_fingerprint(body: Json) -> int:
    """One of the model's Pods: what its artifact state is read from
    (`modelseal.policies.readiness`): labels, annotations, deletion, the unsealer's
    container status and the Ready condition; not its node, IP or other containers."""
    meta = _meta(body)
    status = body.get("status") or {}
    unsealer = [
        cs
        for cs in status.get("initContainerStatuses") or []
        if isinstance(cs, Mapping) and cs.get("name") == UNSEALER_CONTAINER
    ]
    ready = [
        c.get("status")
        for c in status.get("conditions") or []
        if isinstance(c, Mapping) and c.get("type") == "Ready"
    ]
    return _hash(
        [
            meta.get("uid"),
            meta.get("labels"),
            meta.get("annotations"),
            meta.get("deletionTimestamp"),
            meta.get("ownerReferences"),
            unsealer,
            ready,
        ]
    )


def object_fingerprint(body: Json) -> int:
    """Any other owned object: all of it but its resourceVersion and managedFields (the
    drift check reads its spec, data, labels and owners; a Deployment's status counts)."""
    meta = dict(_meta(body))
    meta.pop("resourceVersion", None)
    meta.pop("managedFields", None)
    return _hash({**body, "metadata": meta})


FINGERPRINTS: dict[str, Fingerprint] = {"ProtectedModel": model_fingerprint, "Pod": pod_fingerprint}


class WakeFilter:
    """The last fingerprint seen of each object, by (kind, namespace, name)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str, str], int] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def changed(self, kind: str, event_type: str | None, body: Json) -> bool:
        """True when the event may change what a reconcile reads: the object is new,
        gone, or differs in its fingerprint from the last event of it."""
        meta = _meta(body)
        key = (kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if event_type == "DELETED":
            self._seen.pop(key, None)
            return True
        fingerprint = FINGERPRINTS.get(kind, object_fingerprint)(body)
        if self._seen.get(key) == fingerprint:
            return False
        self._seen[key] = fingerprint
        return True
