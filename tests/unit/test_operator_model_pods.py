"""The index of each model's Pods (`modelseal.handlers.controller.pods.ModelPods`) and the
view of a Pod it keeps (`modelseal.policies.readiness.pod_view`): the reconcile decides the
same from it as from a listing of the model's Pods."""

from __future__ import annotations

import copy
import itertools
from typing import Any

from tests.unit.test_policies_wakes import _spec, _variants

from modelseal.handlers.controller.pods import ModelPods
from modelseal.models.status import WorkloadState
from modelseal.policies import readiness


def pod(name: str, uid: str, model: str = "m", ns: str = "ns", ready: bool = False) -> Any:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": uid,
            "labels": {"modelseal.io/model": model, "app": "x"},
            "annotations": {"other": "y"},
            "managedFields": [{"manager": "kubelet"}],
        },
        "spec": {"containers": [{"name": "triton", "image": "i"}]},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def names(index: ModelPods, model: str = "m", ns: str = "ns") -> list[str]:
    return sorted(p["metadata"]["name"] for p in index.of(ns, model))


def test_the_artifact_state_is_the_same_from_views_as_from_pods() -> None:
    """Every pair of Pod states (unsealer started, ready, failed now or before; Pod Ready
    or not; current version and digest or not; being deleted or not), in either order:
    `artifact_state` of the views equals that of the whole Pods."""
    spec = _spec()
    variants = _variants()
    for i, (a, b) in enumerate(itertools.product(variants, repeat=2)):
        a, b = copy.deepcopy(a), copy.deepcopy(b)
        b["metadata"]["name"] = "m-other"
        for workload in (WorkloadState(exists=True, desired=1), WorkloadState(desired=0)):
            pods = [a, b]
            views = [readiness.pod_view(p) for p in pods]
            assert readiness.artifact_state(spec, views, workload) == readiness.artifact_state(
                spec, pods, workload
            ), (i, a, b)


def test_views_keep_only_what_is_read() -> None:
    body = pod("p", "u1", ready=True)
    body["status"]["initContainerStatuses"] = [
        {"name": "unsealer", "started": True, "image": "big", "imageID": "sha256:x"},
        {"name": "other", "started": False},
    ]
    view = readiness.pod_view(body)
    assert view == {
        "metadata": {"name": "p", "labels": {"modelseal.io/model": "m"}, "annotations": {}},
        "status": {
            "initContainerStatuses": [{"name": "unsealer", "started": True}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def test_filed_by_namespace_and_model_label() -> None:
    index = ModelPods()
    index.observe("ADDED", pod("a", "1"))
    index.observe("ADDED", pod("b", "2"))
    index.observe("ADDED", pod("c", "3", model="n"))
    index.observe("ADDED", pod("d", "4", ns="other"))
    unlabelled = pod("e", "5")
    del unlabelled["metadata"]["labels"]["modelseal.io/model"]
    index.observe("ADDED", unlabelled)
    assert names(index) == ["a", "b"] and names(index, "n") == ["c"]
    assert names(index, ns="other") == ["d"] and len(index) == 4
    # a label moved: filed under its new model; taken off: no longer filed
    moved = pod("a", "1", model="n")
    index.observe("MODIFIED", moved)
    assert names(index) == ["b"] and names(index, "n") == ["a", "c"]
    index.observe("MODIFIED", unlabelled | {"metadata": {**moved["metadata"], "labels": {}}})
    assert names(index, "n") == ["c"]
    index.observe("DELETED", pod("b", "2"))
    assert names(index) == [] and len(index) == 2


def test_the_latest_event_is_what_is_held() -> None:
    index = ModelPods()
    index.observe("ADDED", pod("a", "1"))
    index.observe("MODIFIED", pod("a", "1", ready=True))
    state = readiness.artifact_state(_spec(), index.of("ns", "m"), WorkloadState(desired=1))
    (held,) = index.of("ns", "m")
    assert held["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert state.reason != "Verified"  # the Pod is not of the spec's version: not current


def test_events_then_readiness() -> None:
    index = ModelPods()
    assert not index.ready
    index.observe(None, pod("old", "1"))  # listed
    index.observe(None, pod("new", "2"))
    index.observe("MODIFIED", pod("new", "2", ready=True))
    index.observe("DELETED", pod("gone", "3"))
    index.seeded()
    assert index.ready
    assert names(index) == ["new", "old"]
    (new,) = [p for p in index.of("ns", "m") if p["metadata"]["name"] == "new"]
    assert new["status"]["conditions"][0]["status"] == "True"


def test_a_listing_puts_right_a_deletion_the_watch_missed() -> None:
    index = ModelPods()
    index.seeded()
    index.observe("ADDED", pod("a", "1"))
    index.observe("ADDED", pod("b", "2"))
    listing = index.begin("ns", "m")
    index.fill(listing, [pod("b", "2", ready=True), pod("x", "9", model="n")])
    assert names(index) == ["b"]  # "a" was deleted while the watch was away
    assert names(index, "n") == []  # only the listed model's Pods are filed by its listing


def test_an_event_during_a_listing_wins() -> None:
    index = ModelPods()
    index.seeded()
    index.observe("ADDED", pod("a", "1"))
    listing = index.begin("ns", "m")
    index.observe("ADDED", pod("b", "2"))  # newer than what the listing may have seen
    index.fill(listing, [pod("a", "1")])
    assert names(index) == ["a", "b"]
    # another model's events do not hold back this model's listing
    listing = index.begin("ns", "m")
    index.observe("ADDED", pod("c", "3", model="n"))
    index.fill(listing, [pod("a", "1")])
    assert names(index) == ["a"]


def test_a_listing_before_the_seed_files_nothing() -> None:
    index = ModelPods()
    index.fill(index.begin("ns", "m"), [pod("a", "1")])
    assert names(index) == []


def test_callers_cannot_change_what_is_held() -> None:
    index = ModelPods()
    index.observe("ADDED", pod("a", "1"))
    (view,) = index.of("ns", "m")
    view["metadata"]["name"] = "changed"
    view["metadata"]["labels"] = {}
    assert names(index) == ["a"]
