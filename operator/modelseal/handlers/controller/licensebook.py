"""The ModelLicenses, and by license the ProtectedModels that name it, as the watches
last showed them: what a model's license decision reads (issue 13 §3: each pass read
the license with a GET and its models with a LIST, a fifth of a rollout's requests).

Fed by kopf's events of both kinds (`observe_model`, `observe_license`) and seeded by one
listing of each at start (`seed_models`, `seed_licenses`, then `seeded`); until then it
answers nothing. Both kinds are filed by uid (`Filing`): the seed never overrides what an
event already said of an object nor brings back one an event deleted meanwhile, and an
object deleted and made again under the same name is two objects. kopf handles each
object in its own worker, so the old one's DELETED may come after the new one's ADDED;
until it does, the one filed last answers for the name. Each entry is the object's
metadata (without managedFields) and spec as compressed compact JSON (`pack`); status
is not kept (nothing here reads it) and a change of status alone changes nothing here.

A watch is a little behind the API server. The model reconcile therefore lets these
answers only confirm what the model's status already says (`gates.confirms`): a license
decision that would change the status is made again on a fresh GET and LIST, as every
decision was before. A seat is never granted or taken on what a watch had not yet
delivered."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from modelseal.handlers.controller.filing import Filing
from modelseal.k8s.cache import pack, unpack
from modelseal.policies.licensing import license_ref_name

Where = tuple[str, str]  # (namespace, name)


def _kept(body: Mapping[str, Any]) -> dict[str, Any]:
    """What is filed of an object: apiVersion, kind, metadata, spec (no status), packed."""
    return {"packed": pack({k: v for k, v in body.items() if k != "status"})}


def _identity(body: Mapping[str, Any]) -> tuple[str, Where] | None:
    """(uid, (namespace, name)), or None for an object without them."""
    meta = body.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    uid, ns, name = meta.get("uid"), meta.get("namespace"), meta.get("name")
    if not uid or not ns or not name:
        return None
    return str(uid), (str(ns), str(name))


def _unpack(kept: Mapping[str, Any]) -> dict[str, Any]:
    doc = unpack(kept["packed"])
    return doc if isinstance(doc, dict) else {}


def _newest_by_name(docs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One object per name, the one filed last (filings keep the order things were filed)."""
    by_name: dict[str, dict[str, Any]] = {}
    for doc in docs:
        name = str((doc.get("metadata") or {}).get("name"))
        by_name.pop(name, None)
        by_name[name] = doc
    return list(by_name.values())


class LicenseBook:
    def __init__(self) -> None:
        #: licenses filed under their (namespace, name).
        self._licenses: Filing[Where] = Filing()
        #: models filed under (namespace, the license their licenseRef names).
        self._models: Filing[Where] = Filing()

    @property
    def ready(self) -> bool:
        return self._licenses.ready and self._models.ready

    # --- the feed ------------------------------------------------------------------------
    def observe_model(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a ProtectedModel (kopf's type: None for a listed one)."""
        found = _identity(body)
        if found is None:
            return
        uid, (ns, _) = found
        if event_type == "DELETED":
            self._models.remove(uid)
            return
        license_name = license_ref_name(body)
        self._models.put(uid, None if license_name is None else (ns, license_name), _kept(body))

    def observe_license(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A watch event of a ModelLicense."""
        found = _identity(body)
        if found is None:
            return
        uid, where = found
        if event_type == "DELETED":
            self._licenses.remove(uid)
            return
        self._licenses.put(uid, where, _kept(body))

    def seed_models(self, items: Iterable[Mapping[str, Any]]) -> None:
        """One page of the listing of every ProtectedModel (begun after the watch's events
        began to be observed)."""
        for item in items:
            found = _identity(item)
            if found is not None and self._models.seeds(found[0]):
                self.observe_model(None, item)

    def seed_licenses(self, items: Iterable[Mapping[str, Any]]) -> None:
        """One page of the listing of every ModelLicense."""
        for item in items:
            found = _identity(item)
            if found is not None and self._licenses.seeds(found[0]):
                self.observe_license(None, item)

    def seeded(self) -> None:
        """Both listings are complete: the book answers from now on."""
        self._licenses.seeded()
        self._models.seeded()

    # --- the reconciler's side -----------------------------------------------------------
    def license(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The license as last seen (a fresh copy), or None when there is none."""
        filed = list(self._licenses.under((namespace, name)).values())
        return _unpack(filed[-1]) if filed else None

    def models_naming(self, namespace: str, license_name: str) -> list[dict[str, Any]]:
        """The models of `namespace` whose licenseRef names `license_name` (fresh copies)."""
        filed = self._models.under((namespace, license_name))
        return _newest_by_name(_unpack(kept) for kept in filed.values())

    def __len__(self) -> int:
        return len(self._models) + len(self._licenses)
