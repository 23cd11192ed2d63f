"""Who else runs as a model's ServiceAccount. Pure: the reconciler lists, this decides.

A model's Vault role admits one ServiceAccount; whoever runs a Pod as that account can log
in as the model and unwrap its data key. The operator therefore grants (and keeps) the
role only while nothing it does not own uses the account: no Pod, and no workload that
makes Pods (Deployment, ReplicaSet, StatefulSet, DaemonSet, Job, CronJob), including one
still waiting for the account to exist (the squat of issue 12, C2).

What the model owns is the chain of controller ownerReferences, checked by uid:

* its Deployment: named as the model's Deployment and controlled by the ProtectedModel;
* its ReplicaSets: controlled by that Deployment;
* its Pods: controlled by one of those ReplicaSets.

Everything else that names the account is an intruder. Intruding Pods are to be deleted
(the operator owns that identity); intruding workloads are reported (by kind and name),
and the Vault role stays withdrawn until they are gone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Json = Mapping[str, Any]

#: The kinds searched, in report order. Pods first: they are the ones that can log in now.
KINDS = ("Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob")
#: How many intruders a condition message names before it says "and N more".
MESSAGE_LIMIT = 8

REASON_IN_USE = "ServiceAccountInUse"


@dataclass(frozen=True, order=True)
class Intruder:
    kind: str
    name: str

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


@dataclass(frozen=True)
class IdentityCheck:
    """The verdict on one model's ServiceAccount."""

    service_account: str
    intruders: tuple[Intruder, ...] = ()
    #: Intruding Pods not already being deleted, as (name, uid): the operator deletes these.
    pods_to_delete: tuple[tuple[str, str], ...] = ()
    #: The model's own Pods running as the account (for the legacy-account migration).
    own_pods: tuple[str, ...] = ()

    @property
    def clear(self) -> bool:
        return not self.intruders

    def message(self) -> str:
        if self.clear:
            return ""
        refs = [i.ref for i in self.intruders]
        shown = ", ".join(refs[:MESSAGE_LIMIT])
        more = len(refs) - MESSAGE_LIMIT
        if more > 0:
            shown += f" and {more} more"
        return (
            f"ServiceAccount {self.service_account} is used by workloads the operator does "
            f"not own: {shown}; no Vault access until they are gone"
        )


def _meta(obj: Json) -> Json:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _controller(obj: Json) -> tuple[str, str] | None:
    """(kind, uid) of the object's controller ownerReference, if any."""
    for ref in _meta(obj).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller") is True:
            return str(ref.get("kind") or ""), str(ref.get("uid") or "")
    return None


def _pod_spec_account(pod_spec: Any) -> str:
    """The account a Pod spec runs as (``serviceAccountName``, else the deprecated
    ``serviceAccount``, else ``default``)."""
    if not isinstance(pod_spec, Mapping):
        return "default"
    name = pod_spec.get("serviceAccountName") or pod_spec.get("serviceAccount") or "default"
    return str(name)


def _dig(obj: Json, *path: str) -> Any:
    cur: Any = obj
    for key in path:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def service_account_of(kind: str, obj: Json) -> str:
    """The ServiceAccount the Pods of `obj` (of `kind`) run as."""
    if kind == "Pod":
        return _pod_spec_account(obj.get("spec"))
    if kind == "CronJob":
        return _pod_spec_account(_dig(obj, "spec", "jobTemplate", "spec", "template", "spec"))
    return _pod_spec_account(_dig(obj, "spec", "template", "spec"))


def check_identity(
    service_account: str,
    model_uid: str,
    deployment_name: str,
    objects: Mapping[str, Sequence[Json]],
) -> IdentityCheck:
    """Find what uses `service_account` without belonging to the model `model_uid`.

    `objects` maps a kind of `KINDS` to the objects of that kind listed in the model's
    namespace (kinds missing from it were not listed). Objects that do not run as the
    account are ignored, so the caller may pass every object of a kind.
    """
    deployment_uids = {
        str(_meta(d).get("uid") or "")
        for d in objects.get("Deployment", ())
        if _meta(d).get("name") == deployment_name
        and _controller(d) == ("ProtectedModel", model_uid)
    }
    deployment_uids.discard("")
    replicaset_uids = {
        str(_meta(rs).get("uid") or "")
        for rs in objects.get("ReplicaSet", ())
        if (c := _controller(rs)) is not None and c[0] == "Deployment" and c[1] in deployment_uids
    }
    replicaset_uids.discard("")

    def owned(kind: str, obj: Json) -> bool:
        if kind == "Deployment":
            return str(_meta(obj).get("uid") or "") in deployment_uids
        if kind == "ReplicaSet":
            return str(_meta(obj).get("uid") or "") in replicaset_uids
        if kind == "Pod":
            c = _controller(obj)
            return c is not None and c[0] == "ReplicaSet" and c[1] in replicaset_uids
        return False

    intruders: list[Intruder] = []
    to_delete: list[tuple[str, str]] = []
    own_pods: list[str] = []
    for kind in KINDS:
        for obj in objects.get(kind, ()):
            if service_account_of(kind, obj) != service_account:
                continue
            name = str(_meta(obj).get("name") or "")
            if owned(kind, obj):
                if kind == "Pod":
                    own_pods.append(name)
                continue
            intruders.append(Intruder(kind, name))
            if kind == "Pod" and not _meta(obj).get("deletionTimestamp"):
                to_delete.append((name, str(_meta(obj).get("uid") or "")))
    order = {k: i for i, k in enumerate(KINDS)}
    intruders.sort(key=lambda i: (order[i.kind], i.name))
    return IdentityCheck(
        service_account=service_account,
        intruders=tuple(intruders),
        pods_to_delete=tuple(sorted(to_delete)),
        own_pods=tuple(sorted(own_pods)),
    )


def owned_pods_running_as(
    service_account: str,
    model_uid: str,
    deployment_name: str,
    objects: Mapping[str, Sequence[Json]],
) -> tuple[str, ...]:
    """The model's own Pods that still run as `service_account` (a legacy account)."""
    return check_identity(service_account, model_uid, deployment_name, objects).own_pods


#: The kinds an operator may keep an index of by (namespace, ServiceAccount): all of them.
#: Listing the ReplicaSets (and the other workload kinds) of the namespace on every check
#: was most of what a reconcile read at 1,000 models (issue 13 §3): 20 ReplicaSets are
#: ~380 KB of JSON for the API server to encode and the operator to decode, per pass.
INDEXABLE = KINDS


def identity_view(kind: str, obj: Json) -> dict[str, Any]:
    """What `check_identity` reads of `obj` (of `kind`), as plain data: its name, uid,
    controller ownerReference, deletion mark, and the ServiceAccount its Pods run as.
    `check_identity` decides the same on views as on the whole objects."""
    meta = _meta(obj)
    view_meta: dict[str, Any] = {
        "name": str(meta.get("name") or ""),
        "uid": str(meta.get("uid") or ""),
    }
    controller = _controller(obj)
    if controller is not None:
        view_meta["ownerReferences"] = [
            {"kind": controller[0], "uid": controller[1], "controller": True}
        ]
    if meta.get("deletionTimestamp"):
        view_meta["deletionTimestamp"] = str(meta.get("deletionTimestamp"))
    account = {"serviceAccountName": service_account_of(kind, obj)}
    if kind == "Pod":
        spec: dict[str, Any] = account
    elif kind == "CronJob":
        spec = {"jobTemplate": {"spec": {"template": {"spec": account}}}}
    else:
        spec = {"template": {"spec": account}}
    return {"metadata": view_meta, "spec": spec}
