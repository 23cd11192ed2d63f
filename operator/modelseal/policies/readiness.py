"""What the model's Deployment and its unsealers' Pods say. Pure: the caller lists them."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from modelseal.models.spec import ModelSpec
from modelseal.models.status import ArtifactState, WorkloadState
from modelseal.render.names import ANNOTATION_DIGEST, LABEL_MODEL, LABEL_VERSION

#: How much of an unsealer's termination message is kept in the condition.
FAILURE_TAIL = 400
#: The name of the unsealer's (init) container in the model's Pods.
UNSEALER_CONTAINER = "unsealer"


def workload_state(dep: Mapping[str, Any] | None, desired: int) -> WorkloadState:
    """The Deployment's progress (`desired` replicas when there is none yet)."""
    if dep is None:
        return WorkloadState(exists=False, desired=desired)
    status = dep.get("status") or {}
    meta = dep.get("metadata") or {}
    deadline = any(
        c.get("type") == "Progressing"
        and c.get("status") == "False"
        and c.get("reason") == "ProgressDeadlineExceeded"
        for c in status.get("conditions") or []
    )
    return WorkloadState(
        exists=True,
        desired=int((dep.get("spec") or {}).get("replicas") or 0),
        observed_current=int(status.get("observedGeneration") or 0)
        >= int(meta.get("generation") or 0),
        replicas=int(status.get("replicas") or 0),
        updated=int(status.get("updatedReplicas") or 0),
        ready=int(status.get("readyReplicas") or 0),
        available=int(status.get("availableReplicas") or 0),
        deadline_exceeded=deadline,
    )


def current_pods(spec: ModelSpec, pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The Pods of the model's current version and bundle that are not going away."""
    out = []
    for pod in pods:
        meta = pod.get("metadata") or {}
        if (
            (meta.get("labels") or {}).get(LABEL_VERSION) == spec.version
            and (meta.get("annotations") or {}).get(ANNOTATION_DIGEST) == spec.source.digest
            and not meta.get("deletionTimestamp")
        ):
            out.append(pod)
    return out


def unsealer_failure(pod: Mapping[str, Any]) -> str | None:
    """Why the Pod's unsealer init container last failed (its latest failure), or None."""
    failure = None
    for cs in (pod.get("status") or {}).get("initContainerStatuses") or []:
        if cs.get("name") != UNSEALER_CONTAINER:
            continue
        last = ((cs.get("lastState") or {}).get("terminated")) or {}
        now_term = ((cs.get("state") or {}).get("terminated")) or {}
        for term in (now_term, last):
            if term and int(term.get("exitCode") or 0) != 0:
                text = str(term.get("message") or term.get("reason") or "").strip()
                failure = (
                    f"unsealer in Pod {pod['metadata']['name']} failed "
                    f"(exit {term.get('exitCode')}): {text[-FAILURE_TAIL:]}"
                )
    return failure


def unsealed(pod: Mapping[str, Any]) -> bool:
    """The Pod's unsealer has finished (started or ready) or the Pod is Ready."""
    status = pod.get("status") or {}
    for cs in status.get("initContainerStatuses") or []:
        if cs.get("name") == UNSEALER_CONTAINER and (cs.get("started") or cs.get("ready")):
            return True
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )


def artifact_state(
    spec: ModelSpec, pods: Iterable[Mapping[str, Any]], workload: WorkloadState
) -> ArtifactState:
    """What the unsealers of the current version say about the bundle.

    Verified as soon as one current Pod's unsealer got through (the last such Pod is
    named); else the last unsealer failure; else not running, or waiting."""
    failure = None
    verified = None
    for pod in current_pods(spec, pods):
        failure = unsealer_failure(pod) or failure
        if unsealed(pod):
            verified = pod["metadata"]["name"]
    if verified:
        return ArtifactState(
            "True",
            "Verified",
            f"bundle {spec.source.digest} verified and decrypted into memory (Pod {verified})",
        )
    if failure:
        return ArtifactState("False", "UnsealFailed", failure)
    if workload.desired == 0:
        return ArtifactState(
            "Unknown", "NotRunning", f"no Pods of version {spec.version} are asked for"
        )
    return ArtifactState("Unknown", "Pending", f"waiting for an unsealer of version {spec.version}")


def pod_view(pod: Mapping[str, Any]) -> dict[str, Any]:
    """What `current_pods`, `unsealer_failure` and `unsealed` read of a Pod, as plain data
    (the operator's index of models' Pods keeps these instead of whole Pods): they decide
    the same on the view as on the Pod."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    view_meta: dict[str, Any] = {
        "name": meta.get("name"),
        "labels": {k: labels[k] for k in (LABEL_MODEL, LABEL_VERSION) if k in labels},
        "annotations": {k: annotations[k] for k in (ANNOTATION_DIGEST,) if k in annotations},
    }
    if meta.get("deletionTimestamp"):
        view_meta["deletionTimestamp"] = meta["deletionTimestamp"]
    status = pod.get("status") or {}
    unsealer = [
        {k: cs[k] for k in ("name", "started", "ready", "state", "lastState") if k in cs}
        for cs in status.get("initContainerStatuses") or []
        if cs.get("name") == UNSEALER_CONTAINER
    ]
    ready = [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return {
        "metadata": view_meta,
        "status": {"initContainerStatuses": unsealer, "conditions": ready},
    }
