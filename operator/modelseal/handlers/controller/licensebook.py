"""The ModelLicenses, and by license the ProtectedModels that name it, as the watches
last showed them: what a model's license decision reads (issue 13 §3: each pass read
the license with a GET and its models with a LIST, a fifth of a rollout's requests).

Fed by kopf's events of both kinds (`observe_model`, `observe_license`) and seeded by one
listing of each at start (`seed_models`, `seed_licenses`, then `seeded`); until then it
answers nothing. The seed never overrides what an event already said of an object (the
event is newer) nor brings back one an event deleted meanwhile. Each entry is the
object's metadata (without managedFields) and spec as compact JSON; status is not kept
(nothing here reads it) and a change of status alone changes nothing here.

A watch is a little behind the API server. The model reconcile therefore lets these
answers only confirm what the model's status already says (`gates.confirms`): a license
decision that would change the status is made again on a fresh GET and LIST, as every
decision was before. A seat is never granted or taken on what a watch had not yet
delivered."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from modelseal import fastjson
from modelseal.k8s.cache import pack
from modelseal.policies.licensing import license_ref_name

Where = tuple[str, str]  # (namespace, name)


def _essence(body: Mapping[str, Any]) -> bytes:
    """What is kept of an object: apiVersion, kind, metadata, spec (no status)."""
    return pack({k: v for k, v in body.items() if k != "status"})


def _where(body: Mapping[str, Any]) -> Where | None:
    meta = body.get("metadata")
    if not isinstance(meta, Mapping) or not meta.get("namespace") or not meta.get("name"):
        return None
    return (str(meta["namespace"]), str(meta["name"]))


def _unpack(raw: bytes) -> dict[str, Any]:
    doc = fastjson.loads(raw)
    return doc if isinstance(doc, dict) else {}


class LicenseBook:
    def __init__(self) -> None:
        self._licenses: dict[Where, bytes] = {}
        #: (namespace, license) -> model name -> the model as kept.
        self._models: dict[Where, dict[str, bytes]] = {}
        #: (namespace, model) -> the license it names (where it is filed).
        self._filed: dict[Where, str] = {}
        #: ("ProtectedModel" | "ModelLicense", namespace, name) deleted by an event while
        #: the seed runs.
        self._deleted: set[tuple[str, str, str]] = set()
        self.ready = False

    # --- the feed ------------------------------------------------------------------------
    def observe_model(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a ProtectedModel (kopf's type: None for a listed one)."""
        where = _where(body)
        if where is None:
            return
        if event_type == "DELETED":
            self._unfile(where)
            if not self.ready:
                self._deleted.add(("ProtectedModel", *where))
            return
        self._file(where, body)

    def observe_license(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a ModelLicense."""
        where = _where(body)
        if where is None:
            return
        if event_type == "DELETED":
            self._licenses.pop(where, None)
            if not self.ready:
                self._deleted.add(("ModelLicense", *where))
            return
        self._licenses[where] = _essence(body)

    def seed_models(self, items: Iterable[Mapping[str, Any]]) -> None:
        """One page of the listing of every ProtectedModel (begun after the watch's events
        began to be observed)."""
        for item in items:
            where = _where(item)
            if (
                where is not None
                and where not in self._filed
                and not self._gone("ProtectedModel", where)
            ):
                self._file(where, item)

    def seed_licenses(self, items: Iterable[Mapping[str, Any]]) -> None:
        """One page of the listing of every ModelLicense."""
        for item in items:
            where = _where(item)
            if (
                where is not None
                and where not in self._licenses
                and not self._gone("ModelLicense", where)
            ):
                self._licenses[where] = _essence(item)

    def seeded(self) -> None:
        """Both listings are complete: the book answers from now on."""
        self.ready = True
        self._deleted.clear()

    # --- the reconciler's side -----------------------------------------------------------
    def license(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The license as last seen (a fresh copy), or None when there is none."""
        raw = self._licenses.get((namespace, name))
        return None if raw is None else _unpack(raw)

    def models_naming(self, namespace: str, license_name: str) -> list[dict[str, Any]]:
        """The models of `namespace` whose licenseRef names `license_name` (fresh copies)."""
        return [_unpack(raw) for raw in self._models.get((namespace, license_name), {}).values()]

    def __len__(self) -> int:
        return len(self._filed) + len(self._licenses)

    # --- inside --------------------------------------------------------------------------
    def _gone(self, kind: str, where: Where) -> bool:
        return (kind, *where) in self._deleted

    def _file(self, where: Where, body: Mapping[str, Any]) -> None:
        license_name = license_ref_name(body)
        if self._filed.get(where) != license_name:
            self._unfile(where)
        if license_name is None:
            return
        self._filed[where] = license_name
        self._models.setdefault((where[0], license_name), {})[where[1]] = _essence(body)

    def _unfile(self, where: Where) -> None:
        license_name = self._filed.pop(where, None)
        if license_name is None:
            return
        filed = self._models.get((where[0], license_name))
        if filed is not None:
            filed.pop(where[1], None)
            if not filed:
                del self._models[(where[0], license_name)]
