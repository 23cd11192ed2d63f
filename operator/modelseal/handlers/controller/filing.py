"""Views of watched objects filed by uid under a key: what the account index
(`identity.AccountIndex`) and the index of models' Pods (`pods.ModelPods`) both keep.

Fed by watch events (`put`, `remove`) and seeded by one listing at start (`seeds` says
which listed objects to take), complete once `seeded`. The seed never overrides what an
event already said of an object (the event is newer) nor brings back one an event
deleted meanwhile."""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Generic, TypeVar

W = TypeVar("W", bound=Hashable)


class Filing(Generic[W]):
    def __init__(self) -> None:
        #: uid -> the key it is filed under.
        self._where: dict[str, W] = {}
        self._filed: dict[W, dict[str, dict[str, Any]]] = {}
        #: uids deleted by an event while the seed runs.
        self._deleted: set[str] = set()
        self.ready = False

    def __len__(self) -> int:
        return len(self._where)

    def put(self, uid: str, where: W | None, view: dict[str, Any]) -> bool:
        """File `view` of `uid` under `where` (None: under nothing; what was filed goes).
        True when what is filed of it changed."""
        moved = self._where.get(uid) != where
        if moved:
            self.drop(uid)
        if where is None:
            return moved
        self._where[uid] = where
        filed = self._filed.setdefault(where, {})
        if filed.get(uid) == view:
            return False
        filed[uid] = view
        return True

    def remove(self, uid: str) -> bool:
        """A deletion event; True when the object was filed."""
        known = self.drop(uid)
        if not self.ready:
            self._deleted.add(uid)
        return known

    def seeds(self, uid: str) -> bool:
        """Whether the seed's listed object `uid` is to be filed (no event told of it)."""
        return bool(uid) and uid not in self._where and uid not in self._deleted

    def seeded(self) -> None:
        """The seed is complete: the filing answers from now on."""
        self.ready = True
        self._deleted.clear()

    def where_of(self, uid: str) -> W | None:
        return self._where.get(uid)

    def under(self, where: W) -> dict[str, dict[str, Any]]:
        """uid -> view of what is filed under `where` (the filing's own: do not change)."""
        return self._filed.get(where, {})

    def drop(self, uid: str) -> bool:
        """Unfile `uid`; True when it was filed."""
        where = self._where.pop(uid, None)
        if where is None:
            return False
        filed = self._filed.get(where)
        if filed is not None:
            filed.pop(uid, None)
            if not filed:
                del self._filed[where]
        return True
