"""The operator's account index (`modelseal.handlers.controller.identity.AccountIndex`):
what it holds after which watch events and seed listings."""

from __future__ import annotations

from typing import Any

from modelseal.handlers.controller.identity import AccountIndex


def pod(name: str, sa: str, uid: str | None = None, ns: str = "ns") -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": ns, "uid": uid or f"uid-{name}"},
        "spec": {"serviceAccountName": sa},
    }


def dep(name: str, sa: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}"},
        "spec": {"template": {"spec": {"serviceAccountName": sa}}},
    }


def names(index: AccountIndex, kind: str, account: str, ns: str = "ns") -> list[str]:
    return sorted(v["metadata"]["name"] for v in index.running_as(kind, ns, account))


def test_filed_by_kind_namespace_and_account() -> None:
    index = AccountIndex()
    index.observe("Pod", None, pod("a", "sa-1"))
    index.observe("Pod", "ADDED", pod("b", "sa-2"))
    index.observe("Pod", "ADDED", pod("c", "sa-1", ns="other"))
    index.observe("Deployment", "ADDED", dep("r", "sa-1"))
    index.observe("ReplicaSet", "ADDED", dep("s", "sa-1"))
    cron = {
        "metadata": {"name": "j", "namespace": "ns", "uid": "uid-j"},
        "spec": {"jobTemplate": {"spec": {"template": {"spec": {"serviceAccountName": "sa-1"}}}}},
    }
    index.observe("CronJob", "ADDED", cron)
    index.observe("Secret", "ADDED", pod("x", "sa-1"))  # not a kind that makes Pods
    assert names(index, "Pod", "sa-1") == ["a"]
    assert names(index, "Pod", "sa-1", ns="other") == ["c"]
    assert names(index, "Deployment", "sa-1") == ["r"]
    assert names(index, "ReplicaSet", "sa-1") == ["s"]
    assert names(index, "CronJob", "sa-1") == ["j"]
    assert names(index, "Pod", "sa-3") == []
    assert len(index) == 6


def test_an_account_change_moves_the_object_and_a_deletion_drops_it() -> None:
    index = AccountIndex()
    index.observe("Deployment", "ADDED", dep("r", "other"))
    index.observe("Deployment", "MODIFIED", dep("r", "sa-1"))
    assert names(index, "Deployment", "other") == []
    assert names(index, "Deployment", "sa-1") == ["r"]
    index.observe("Deployment", "DELETED", dep("r", "sa-1"))
    assert names(index, "Deployment", "sa-1") == []
    assert len(index) == 0


def test_not_ready_until_seeded() -> None:
    index = AccountIndex()
    index.observe("Pod", "ADDED", pod("a", "sa-1"))
    assert not index.ready
    index.seeded()
    assert index.ready
    assert names(index, "Pod", "sa-1") == ["a"]


def test_views_not_whole_objects_are_kept() -> None:
    index = AccountIndex()
    body = pod("a", "sa-1")
    body["status"] = {"phase": "Running"}
    body["spec"]["containers"] = [{"name": "c"}]
    index.observe("Pod", "ADDED", body)
    (view,) = index.running_as("Pod", "ns", "sa-1")
    assert view == {
        "metadata": {"name": "a", "uid": "uid-a"},
        "spec": {"serviceAccountName": "sa-1"},
    }


def test_observe_says_when_what_it_holds_changed() -> None:
    """Only a change of what the index holds can change a verdict (and wake a model)."""
    index = AccountIndex()
    first = pod("a", "sa-1")
    assert index.observe("Pod", "ADDED", first)
    status_only = {**pod("a", "sa-1"), "status": {"phase": "Running"}}
    assert not index.observe("Pod", "MODIFIED", status_only)
    assert index.observe("Pod", "MODIFIED", pod("a", "sa-2"))  # another account
    owned = pod("a", "sa-2")
    owned["metadata"]["ownerReferences"] = [{"kind": "ReplicaSet", "uid": "rs", "controller": True}]
    assert index.observe("Pod", "MODIFIED", owned)
    assert index.observe("Pod", "DELETED", owned)
    assert not index.observe("Pod", "DELETED", owned)  # already gone
    assert not index.observe("Secret", "ADDED", pod("s", "sa-1"))
