"""Which watch events wake a model's reconcile (`modelseal.policies.wakes`): every change
of what the reconcile reads, and nothing else."""

from __future__ import annotations

import copy
from typing import Any

from modelseal.models.spec import ModelSpec, parse_model
from modelseal.models.status import WorkloadState
from modelseal.policies import readiness
from modelseal.policies.wakes import WakeFilter
from modelseal.render.names import ANNOTATION_DIGEST, LABEL_VERSION

DIGEST = "sha256tree:" + "aa" * 32


def pod() -> dict[str, Any]:
    return {
        "metadata": {
            "name": "m-abc",
            "namespace": "ns",
            "uid": "u1",
            "resourceVersion": "10",
            "labels": {"modelseal.io/model": "m", "modelseal.io/version": "1.0.0"},
            "annotations": {"modelseal.io/bundle-digest": "sha256tree:aa"},
            "ownerReferences": [{"kind": "ReplicaSet", "uid": "rs", "controller": True}],
            "managedFields": [{"manager": "kubelet"}],
        },
        "spec": {"serviceAccountName": "m-sa", "containers": [{"name": "triton"}]},
        "status": {"phase": "Pending"},
    }


def model() -> dict[str, Any]:
    return {
        "metadata": {
            "name": "m",
            "namespace": "ns",
            "uid": "pm1",
            "generation": 1,
            "resourceVersion": "5",
            "annotations": {},
            "finalizers": ["modelseal.io/finalizer"],
        },
        "spec": {"version": "1.0.0"},
        "status": {"conditions": []},
    }


def seen(kind: str, body: dict[str, Any], wakes: WakeFilter, event: str = "MODIFIED") -> bool:
    return wakes.changed(kind, event, body)


def test_a_new_object_wakes_and_the_same_again_does_not() -> None:
    wakes = WakeFilter()
    assert seen("Pod", pod(), wakes, "ADDED")
    assert not seen("Pod", pod(), wakes)
    assert seen("Pod", pod(), wakes, "DELETED")
    assert len(wakes) == 0
    assert seen("Pod", pod(), wakes, None)  # listed again after a restart: new


def test_pod_changes_the_reconcile_does_not_read_do_not_wake() -> None:
    wakes = WakeFilter()
    body = pod()
    seen("Pod", body, wakes, "ADDED")
    body["spec"]["nodeName"] = "node-1"  # the scheduler's binding
    body["metadata"]["resourceVersion"] = "11"
    body["metadata"]["managedFields"].append({"manager": "kube-scheduler"})
    body["status"]["conditions"] = [{"type": "PodScheduled", "status": "True"}]
    assert not seen("Pod", body, wakes)
    body["status"]["podIP"] = "10.0.0.9"
    body["status"]["containerStatuses"] = [{"name": "triton", "ready": False}]
    assert not seen("Pod", body, wakes)


def test_pod_changes_the_reconcile_reads_wake() -> None:
    base = pod()
    changes = [
        lambda p: p["status"].update(
            initContainerStatuses=[{"name": "unsealer", "started": True, "ready": False}]
        ),
        lambda p: p["status"].update(conditions=[{"type": "Ready", "status": "True"}]),
        lambda p: p["metadata"]["labels"].update({"modelseal.io/version": "2.0.0"}),
        lambda p: p["metadata"]["annotations"].update({"modelseal.io/bundle-digest": "x"}),
        lambda p: p["metadata"].update(deletionTimestamp="2026-12-01T00:00:00Z"),
        lambda p: p["metadata"].update(uid="u2"),  # another Pod of the same name
        lambda p: p["metadata"].update(ownerReferences=[]),
    ]
    for change in changes:
        wakes = WakeFilter()
        seen("Pod", base, wakes, "ADDED")
        changed = copy.deepcopy(base)
        change(changed)
        assert seen("Pod", changed, wakes), change


def _spec() -> ModelSpec:
    return parse_model(
        {
            "metadata": {"name": "m", "namespace": "ns", "uid": "pm1", "generation": 1},
            "spec": {
                "tenant": "acme",
                "licenseRef": {"name": "gold"},
                "version": "1.0.0",
                "source": {"uri": "s3://bkt/x", "digest": DIGEST, "plaintextSize": "1Mi"},
                "vault": {"transitKey": "k"},
            },
        }
    )


def _variants() -> list[dict[str, Any]]:
    statuses: list[dict[str, Any]] = [
        {},
        {"initContainerStatuses": [{"name": "unsealer"}]},
        {"initContainerStatuses": [{"name": "unsealer", "started": True}]},
        {"initContainerStatuses": [{"name": "unsealer", "ready": True}]},
        {"initContainerStatuses": [
            {"name": "unsealer", "state": {"terminated": {"exitCode": 3, "message": "tampered"}}}
        ]},
        {"initContainerStatuses": [
            {"name": "unsealer", "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}
        ]},
        {"conditions": [{"type": "Ready", "status": "True"}]},
        {"conditions": [{"type": "Ready", "status": "False"}]},
    ]  # fmt: skip
    out = []
    for status in statuses:
        for version in ("1.0.0", "0.9.0"):
            for digest in (DIGEST, "sha256tree:" + "bb" * 32):
                for deleting in (False, True):
                    body = pod()
                    body["metadata"]["labels"][LABEL_VERSION] = version
                    body["metadata"]["annotations"] = {ANNOTATION_DIGEST: digest}
                    if deleting:
                        body["metadata"]["deletionTimestamp"] = "2026-12-01T00:00:00Z"
                    body["status"] = copy.deepcopy(status)
                    out.append(body)
    return out


def test_every_pod_change_that_changes_the_artifact_state_wakes() -> None:
    """Between any two states of a Pod: when `readiness.artifact_state` tells them apart,
    so does the fingerprint (the change wakes the reconcile)."""
    spec = _spec()
    workload = WorkloadState(exists=True, desired=1)
    variants = _variants()
    compared = 0
    for before in variants:
        for after in variants:
            if readiness.artifact_state(spec, [before], workload) == readiness.artifact_state(
                spec, [after], workload
            ):
                continue
            wakes = WakeFilter()
            seen("Pod", before, wakes, "ADDED")
            assert seen("Pod", after, wakes), (before, after)
            compared += 1
    assert compared > 100


def test_model_wakes_on_spec_finalizer_deletion_and_status_not_kopfs_annotations() -> None:
    wakes = WakeFilter()
    body = model()
    seen("ProtectedModel", body, wakes, None)
    body["metadata"]["annotations"]["modelseal.io/last-handled-configuration"] = "{...}"
    body["metadata"]["annotations"]["modelseal.io/kopf-managed"] = "yes"
    body["metadata"]["labels"] = {"team": "a"}
    body["metadata"]["resourceVersion"] = "6"
    assert not seen("ProtectedModel", body, wakes)
    for change in (
        lambda m: m["metadata"].update(generation=2),
        lambda m: m["metadata"].update(finalizers=[]),
        lambda m: m["metadata"].update(deletionTimestamp="2026-12-01T00:00:00Z"),
        lambda m: m["status"].update(observedGeneration=7),
    ):
        change(body)
        assert seen("ProtectedModel", body, wakes)


def test_other_kinds_wake_on_any_change_but_version_and_managed_fields() -> None:
    wakes = WakeFilter()
    dep = {
        "metadata": {"name": "m", "namespace": "ns", "resourceVersion": "1", "managedFields": []},
        "spec": {"replicas": 1},
        "status": {"readyReplicas": 0},
    }
    seen("Deployment", dep, wakes, "ADDED")
    dep["metadata"]["resourceVersion"] = "2"
    dep["metadata"]["managedFields"] = [{"manager": "x"}]
    assert not seen("Deployment", dep, wakes)
    dep["status"]["readyReplicas"] = 1
    assert seen("Deployment", dep, wakes)
    dep["spec"]["template"] = {"spec": {"serviceAccountName": "other"}}
    assert seen("Deployment", dep, wakes)
    # kinds are kept apart
    assert seen("Service", dep, wakes, "ADDED")
