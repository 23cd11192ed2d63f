"""The Pods of each model, from the operator's Pod watch: what the reconcile reads to say
whether a model's bundle was verified (`modelseal.policies.readiness`), without a LIST of
the model's Pods per reconcile (issue 13 §3: one LIST per reconcile was left, each a
consistent read the API server confirms with etcd)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from modelseal.handlers.controller.filing import Filing
from modelseal.policies.readiness import pod_view
from modelseal.render.names import LABEL_MODEL

Where = tuple[str, str]  # (namespace, model name)


class Listing:
    """A LIST of one model's Pods in flight (`ModelPods.begin`)."""

    __slots__ = ("epoch", "where")

    def __init__(self, where: Where, epoch: int) -> None:
        self.where = where
        self.epoch = epoch


class ModelPods:
    """Every Pod labelled ``modelseal.io/model=<name>`` (whoever made it: what a listing by
    that label gives), filed by namespace and model as its `pod_view`, fed by the
    operator's Pod follower (`observe`: its listings, then its watch;
    `modelseal.k8s.watch`), complete once the first listing was observed (`seeded`). A
    follower's listing again hands on a Pod gone meanwhile as deleted; as a safeguard the
    periodic resync still lists each model's Pods (`begin`, `fill`)
    and files what it found in place of what it held, unless an event of that model's
    Pods came while the listing was in flight (the event is newer)."""

    def __init__(self) -> None:
        self._filing: Filing[Where] = Filing()
        #: where -> events seen so far (a listing compares before and after).
        self._events: dict[Where, int] = {}

    def __len__(self) -> int:
        return len(self._filing)

    @property
    def ready(self) -> bool:
        return self._filing.ready

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """One watch event of a Pod."""
        uid = str((body.get("metadata") or {}).get("uid") or "")
        if not uid:
            return
        old = self._filing.where_of(uid)
        if old is not None:
            self._touch(old)
        if event_type == "DELETED":
            self._filing.remove(uid)
            return
        self._file(uid, body)

    def seeded(self) -> None:
        self._filing.seeded()

    def of(self, namespace: str, model: str) -> list[dict[str, Any]]:
        """The views of the model's Pods (fresh copies of the lists they hold)."""
        return [
            {"metadata": dict(v["metadata"]), "status": v["status"]}
            for v in self._filing.under((namespace, model)).values()
        ]

    def begin(self, namespace: str, model: str) -> Listing:
        where = (namespace, model)
        return Listing(where, self._events.get(where, 0))

    def fill(self, listing: Listing, items: Iterable[Mapping[str, Any]]) -> None:
        """The answer of `listing`: what it found replaces what is held of the model,
        unless an event of its Pods came meanwhile (then the events' state stays)."""
        where = listing.where
        if not self.ready or self._events.get(where, 0) != listing.epoch:
            return
        found = {}
        for item in items:
            uid = str((item.get("metadata") or {}).get("uid") or "")
            if uid and _where_of(item) == where:
                found[uid] = item
        for uid in [u for u in self._filing.under(where) if u not in found]:
            self._filing.drop(uid)
        for uid, item in found.items():
            self._file(uid, item)

    def _file(self, uid: str, body: Mapping[str, Any]) -> None:
        where = _where_of(body)
        if where is not None:
            self._touch(where)
        self._filing.put(uid, where, pod_view(body))

    def _touch(self, where: Where) -> None:
        self._events[where] = self._events.get(where, 0) + 1


def _where_of(body: Mapping[str, Any]) -> Where | None:
    meta = body.get("metadata") or {}
    model = (meta.get("labels") or {}).get(LABEL_MODEL)
    namespace = meta.get("namespace")
    return (str(namespace), str(model)) if model and namespace else None
