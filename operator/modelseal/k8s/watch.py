"""List, then watch, one kind in one scope, and hand each object to a callback at once.

The operator follows Pods, its owned kinds and every workload kind with this, not with
kopf (kopf keeps the models and licenses, whose finalizer and deletion it handles). kopf
queues each object's events for a per-object worker task: after a restart at 1,000
models the listed Pods, Deployments and ReplicaSets waited there whole, tens of MB of
Python objects, and each event cost kopf's per-object machinery although our handlers
only file it (issue 13 §3). Here a page of a listing is decoded, each object handed on
synchronously and dropped before the next page is read; a watch event the same.

The same semantics as an informer's: a listing shows every object (event type None),
the watch resumes from the listing's resourceVersion (no event between them is lost);
a dropped connection resumes from the last version seen, an expired one (410) lists
again, and an object that vanished between two listings is handed on as DELETED (a
watch that resumed after a gap cannot show it; kopf's re-listing did not either).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

from modelseal.k8s.api import ApiError, Json, Kind, Kube

log = logging.getLogger("modelseal.operator.watch")

#: A watch event's type (ADDED, MODIFIED, DELETED) or None for a listed object, and the
#: object. The callback runs in the event loop and must not block.
OnEvent = Callable[[str | None, Json], None]


class Restart(StrEnum):
    """Why a follower started over."""

    #: The server no longer has the version to resume from (410): listed again.
    EXPIRED = "expired"
    #: The connection or the server failed: the watch resumed from the last version seen
    #: (or the listing was tried again).
    FAILED = "failed"


class Tombstone(NamedTuple):
    """What a DELETED event made up for a vanished object carries: what the callbacks
    read of a deleted object (its key, uid and labels)."""

    namespace: str
    name: str
    labels: Any

    def body(self, kind: Kind, uid: str) -> Json:
        meta = {"namespace": self.namespace, "name": self.name, "uid": uid}
        if self.labels:
            meta["labels"] = self.labels
        return {"kind": kind.kind, "metadata": meta}


def api_version(kind: Kind) -> str:
    return f"{kind.group}/{kind.version}" if kind.group else kind.version


def vanished(known: dict[str, Tombstone], listed: set[str]) -> list[str]:
    """The uids of objects known before a listing that the listing did not show."""
    return [uid for uid in known if uid not in listed]


def _uid(obj: Json) -> str:
    meta = obj.get("metadata")
    return str(meta.get("uid") or "") if isinstance(meta, dict) else ""


def _version(obj: Json) -> str:
    meta = obj.get("metadata")
    return str(meta.get("resourceVersion") or "") if isinstance(meta, dict) else ""


@dataclass
class Follower:
    """One kind in one scope (a namespace, or None: the whole cluster), kept in step."""

    kube: Kube
    kind: Kind
    namespace: str | None
    on_event: OnEvent
    #: Called after each complete listing (the first one: the callbacks have seen every
    #: object; an index fed by them can answer from then on).
    on_listed: Callable[[], None] = lambda: None
    on_restart: Callable[[Restart], None] = lambda _: None
    page_size: int = 100
    #: How long the server keeps one watch open (it ends it; we watch again from there).
    server_timeout_s: int = 300
    retry_s: float = 1.0
    max_retry_s: float = 30.0
    _known: dict[str, Tombstone] = field(default_factory=dict)

    async def run(self) -> None:
        """Forever (until cancelled): list, then watch; list again when the watch expires."""
        delay = self.retry_s
        while True:
            try:
                version = await self.relist()
                delay = self.retry_s
                self.on_listed()
                await self.follow(version)
                self.on_restart(Restart.EXPIRED)
            except Exception as exc:
                # A follower that stopped would leave the indexes silently stale: never.
                if isinstance(exc, ApiError | ValueError):  # ValueError: an answer not JSON
                    log.warning(
                        "listing %s failed (again in %.0f s): %s", self.kind.kind, delay, exc
                    )
                else:
                    log.exception("following %s failed (again in %.0f s)", self.kind.kind, delay)
                self.on_restart(Restart.FAILED)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_s)

    async def relist(self) -> str:
        """Hand on every object (type None) and, as DELETED, every object known before
        that is gone; the version to watch from. A continuation that expired mid-listing
        (410) starts the listing over."""
        while True:
            listed: set[str] = set()
            token: str | None = None
            try:
                while True:
                    chunk = await self.kube.list_chunk(
                        self.kind, self.namespace, self.page_size, token
                    )
                    for item in chunk.items:
                        # A list's items carry no kind: set it, so that a body kept from
                        # a listing reads as one from a GET or a watch event.
                        item.setdefault("kind", self.kind.kind)
                        item.setdefault("apiVersion", api_version(self.kind))
                        listed.add(_uid(item))
                        self._hand_on(None, item)
                    del chunk.items[:]
                    if not chunk.token:
                        version = chunk.version
                        break
                    token = chunk.token
            except ApiError as exc:
                if exc.status != 410 or token is None:
                    raise
                log.info("listing %s expired midway; listing again", self.kind.kind)
                continue
            for uid in vanished(self._known, listed):
                self._hand_on("DELETED", self._known[uid].body(self.kind, uid))
            return version

    async def follow(self, version: str) -> None:
        """Watch from `version` until the server no longer has it (410); a failed
        connection is resumed from the last version seen, after a pause that doubles."""
        delay = self.retry_s
        while True:
            try:
                events = self.kube.watch(self.kind, self.namespace, version, self.server_timeout_s)
                async with contextlib.aclosing(events):
                    async for event in events:
                        kind = event.get("type")
                        obj = event.get("object")
                        if not isinstance(obj, dict):
                            continue
                        if kind == "ERROR":
                            code = obj.get("code")
                            if code == 410:
                                log.info("watch of %s expired; listing again", self.kind.kind)
                                return
                            raise ApiError(int(code or 0), str(obj.get("reason") or ""), str(obj))
                        version = _version(obj) or version
                        if kind in ("ADDED", "MODIFIED", "DELETED"):
                            self._hand_on(str(kind), obj)
                        delay = self.retry_s
            except (ApiError, ValueError) as exc:
                if isinstance(exc, ApiError) and exc.status == 410:
                    log.info("watch of %s expired; listing again", self.kind.kind)
                    return
                log.warning(
                    "watch of %s failed (resumed in %.0f s): %s", self.kind.kind, delay, exc
                )
                self.on_restart(Restart.FAILED)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_s)

    def _hand_on(self, event_type: str | None, obj: Json) -> None:
        uid = _uid(obj)
        if uid:
            if event_type == "DELETED":
                self._known.pop(uid, None)
            else:
                meta = obj.get("metadata") or {}
                self._known[uid] = Tombstone(
                    str(meta.get("namespace") or ""),
                    str(meta.get("name") or ""),
                    meta.get("labels"),
                )
        try:
            self.on_event(event_type, obj)
        except Exception:
            # One object's failure must not stop the kind's watch (kopf logs a failed
            # event handler and goes on, too).
            log.exception(
                "handling a %s event of %s failed", event_type or "listed", self.kind.kind
            )
