"""The operator's view of licenses and their models (`handlers.controller.licensebook`)
and the rule that lets it only confirm a model's license decision
(`policies.licensing.confirms`)."""

from __future__ import annotations

from typing import Any

import pytest

from modelseal.handlers.controller.licensebook import LicenseBook
from modelseal.models.license import LicenseDecision
from modelseal.policies import licensing


def model(
    name: str,
    license_name: str | None = "gold",
    ns: str = "ns",
    uid: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "modelseal.io/v1alpha1",
        "kind": "ProtectedModel",
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": uid or f"uid-{ns}-{name}",
            "managedFields": [{"manager": "x"}],
        },
        "spec": dict(spec),
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    if license_name is not None:
        body["spec"]["licenseRef"] = {"name": license_name}
    return body


def lic(
    name: str = "gold", ns: str = "ns", seats: int = 2, uid: str | None = None
) -> dict[str, Any]:
    return {
        "kind": "ModelLicense",
        "metadata": {"name": name, "namespace": ns, "uid": uid or f"uid-{ns}-{name}"},
        "spec": {"seats": {"maxReplicas": seats}},
        "status": {"usage": {}},
    }


def names(book: LicenseBook, license_name: str = "gold", ns: str = "ns") -> list[str]:
    return sorted(m["metadata"]["name"] for m in book.models_naming(ns, license_name))


def test_models_are_filed_by_the_license_they_name_without_status_or_managed_fields() -> None:
    book = LicenseBook()
    book.observe_model(None, model("a"))
    book.observe_model("ADDED", model("b"))
    book.observe_model("ADDED", model("c", "silver"))
    book.observe_model("ADDED", model("d", None))  # names none: filed nowhere
    book.observe_model("ADDED", model("e", ns="other"))
    assert names(book) == ["a", "b"]
    assert names(book, "silver") == ["c"]
    assert names(book, ns="other") == ["e"]
    kept = book.models_naming("ns", "gold")[0]
    assert "status" not in kept and "managedFields" not in kept["metadata"]
    kept["spec"]["changed"] = True  # a fresh copy each time
    assert all("changed" not in m["spec"] for m in book.models_naming("ns", "gold"))


def test_a_model_that_names_another_license_moves_and_a_deleted_one_goes() -> None:
    book = LicenseBook()
    book.observe_model("ADDED", model("a"))
    book.observe_model("MODIFIED", model("a", "silver"))
    assert names(book) == [] and names(book, "silver") == ["a"]
    book.observe_model("MODIFIED", model("a", None))
    assert names(book, "silver") == []
    book.observe_model("MODIFIED", model("a", "gold", replicas=2))
    assert book.models_naming("ns", "gold")[0]["spec"]["replicas"] == 2
    book.observe_model("DELETED", model("a"))
    assert names(book) == [] and len(book) == 0


def test_licenses_as_last_seen() -> None:
    book = LicenseBook()
    assert book.license("ns", "gold") is None
    book.observe_license(None, lic(seats=2))
    book.observe_license("MODIFIED", lic(seats=3))
    got = book.license("ns", "gold")
    assert got is not None and got["spec"]["seats"]["maxReplicas"] == 3 and "status" not in got
    book.observe_license("DELETED", lic())
    assert book.license("ns", "gold") is None


def test_the_seed_never_overrides_an_event_nor_brings_back_a_deletion() -> None:
    book = LicenseBook()
    book.observe_model("MODIFIED", model("newer-by-event", replicas=3))
    book.observe_model("DELETED", model("gone"))
    book.observe_license("DELETED", lic("old"))
    book.seed_models([model("newer-by-event", replicas=1), model("gone"), model("listed")])
    book.seed_licenses([lic("old"), lic("gold")])
    assert not book.ready
    book.seeded()
    assert book.ready
    assert names(book) == ["listed", "newer-by-event"]
    replicas = {
        m["metadata"]["name"]: m["spec"].get("replicas") for m in book.models_naming("ns", "gold")
    }
    assert replicas["newer-by-event"] == 3
    assert book.license("ns", "old") is None and book.license("ns", "gold") is not None
    # after the seed a deletion is just a deletion (nothing to remember)
    book.observe_model("DELETED", model("listed"))
    book.observe_model("ADDED", model("listed"))
    assert names(book) == ["listed", "newer-by-event"]


def test_objects_without_a_name_or_uid_are_ignored() -> None:
    book = LicenseBook()
    book.observe_model("ADDED", {"metadata": {"namespace": "ns", "uid": "u"}, "spec": {}})
    book.observe_license("ADDED", {"metadata": {"name": "x", "uid": "u"}})
    unlisted = model("a")
    del unlisted["metadata"]["uid"]
    book.observe_model("ADDED", unlisted)
    book.seed_models([{"spec": {"licenseRef": {"name": "gold"}}}, unlisted])
    assert len(book) == 0


def test_a_license_made_again_keeps_answering_when_the_old_ones_deletion_comes_late() -> None:
    # kopf handles each object (uid) in its own worker: the old license's DELETED can be
    # handled after the new one's ADDED. Keyed by name, it took the new one out.
    book = LicenseBook()
    book.seeded()
    book.observe_license("ADDED", lic(seats=2, uid="old"))
    book.observe_license("ADDED", lic(seats=5, uid="new"))
    got = book.license("ns", "gold")
    assert got is not None and got["spec"]["seats"]["maxReplicas"] == 5  # the newer answers
    book.observe_license("DELETED", lic(seats=2, uid="old"))
    got = book.license("ns", "gold")
    assert got is not None and got["spec"]["seats"]["maxReplicas"] == 5
    book.observe_license("DELETED", lic(uid="new"))
    assert book.license("ns", "gold") is None


def test_a_model_made_again_is_counted_once_and_its_old_deletion_leaves_it() -> None:
    book = LicenseBook()
    book.seeded()
    book.observe_model("ADDED", model("a", uid="old", replicas=1))
    book.observe_model("ADDED", model("a", uid="new", replicas=2))
    book.observe_model("ADDED", model("b"))
    assert [
        (m["metadata"]["name"], m["spec"].get("replicas")) for m in book.models_naming("ns", "gold")
    ] == [
        ("a", 2),
        ("b", None),
    ]
    book.observe_model("DELETED", model("a", uid="old"))
    assert names(book) == ["a", "b"]
    assert book.models_naming("ns", "gold")[0]["spec"]["replicas"] == 2
    # the old one, changed late, still does not answer for the name
    book.observe_model("DELETED", model("a", uid="new"))
    assert names(book) == ["b"]


def test_a_deletion_during_the_seed_is_of_that_object_only() -> None:
    book = LicenseBook()
    book.observe_license("DELETED", lic(uid="old"))
    book.observe_license("ADDED", lic(seats=7, uid="new"))
    book.seed_licenses([lic(seats=2, uid="old")])  # a listing older than both events
    book.seed_models([model("a", uid="gone-a")])
    book.seeded()
    got = book.license("ns", "gold")
    assert got is not None and got["spec"]["seats"]["maxReplicas"] == 7
    assert names(book) == ["a"]


GRANTED = LicenseDecision(True, "LicenseGranted", "license gold of tenant acme is valid")
SEATS = LicenseDecision(False, "SeatsExceeded", "needs 1 replica(s) ...")


def status(state: str, reason: str, message: str) -> dict[str, Any]:
    return {
        "conditions": [
            {"type": "Ready", "status": state, "reason": "Serving", "message": "x"},
            {"type": "LicenseValid", "status": state, "reason": reason, "message": message},
        ]
    }


@pytest.mark.parametrize(
    ("decision", "said", "confirmed"),
    [
        (GRANTED, status("True", GRANTED.reason, GRANTED.message), True),
        (SEATS, status("False", SEATS.reason, SEATS.message), True),
        (GRANTED, {}, False),  # a new model: decided on fresh reads
        (GRANTED, status("False", SEATS.reason, SEATS.message), False),  # a seat freed
        (SEATS, status("True", GRANTED.reason, GRANTED.message), False),  # a seat lost
        (GRANTED, status("True", GRANTED.reason, "valid until another day"), False),
        (GRANTED, status("Unknown", "NotEvaluated", ""), False),
    ],
)
def test_the_view_only_confirms_what_the_status_says(
    decision: LicenseDecision, said: dict[str, Any], confirmed: bool
) -> None:
    assert licensing.confirms(decision, said) is confirmed
