"""What to do with each object a model owns. Pure: the caller reads and writes them.

The desired object carries a hash of itself (`stamp`): a live object that differs from
the desired one but carries the same hash was changed by someone else (drift, put back
with a Warning Event); one with another hash is simply out of date (updated)."""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelseal.render import manifests
from modelseal.render.compare import differences
from modelseal.render.model import Rendered

ANNOTATION_RENDERED = "modelseal.io/rendered-hash"
#: How many differences a drift Event names.
SHOWN_DIFFERENCES = 6


def stamp(desired: Mapping[str, Any]) -> dict[str, Any]:
    """The desired object with a hash of itself in an annotation (tells drift from updates)."""
    digest = hashlib.sha256(json.dumps(desired, sort_keys=True).encode()).hexdigest()[:16]
    out = copy.deepcopy(dict(desired))
    out["metadata"].setdefault("annotations", {})[ANNOTATION_RENDERED] = digest
    return out


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning `old` into `new` (lists are replaced whole)."""
    patch: dict[str, Any] = {}
    for key in old:
        if key not in new:
            patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif before != value:
            patch[key] = value
    return patch


def owned(obj: Mapping[str, Any], uid: str) -> bool:
    """`obj` has the object with `uid` as its controlling owner."""
    return any(
        r.get("uid") == uid and r.get("controller")
        for r in (obj.get("metadata") or {}).get("ownerReferences") or []
    )


def uid_of(obj: Mapping[str, Any]) -> str | None:
    """The object's uid (a precondition for deleting exactly it), or None."""
    return str((obj.get("metadata") or {}).get("uid") or "") or None


def replicas_of(obj: Mapping[str, Any] | None) -> int:
    """The replica count a (live) Deployment asks for; 0 when there is none."""
    return int(((obj or {}).get("spec") or {}).get("replicas") or 0)


def with_replicas(rendered: Rendered, replicas: int) -> Rendered:
    """`rendered` with its Deployment asking for `replicas`."""
    dep = copy.deepcopy(rendered.deployment)
    dep["spec"]["replicas"] = replicas
    return dataclasses.replace(rendered, deployment=dep, replicas=replicas)


@dataclass(frozen=True)
class Create:
    """The object is missing."""


@dataclass(frozen=True)
class InSync:
    """The live object is as desired."""


@dataclass(frozen=True)
class Update:
    """The live object differs in `diffs`; `drift` when someone else changed it."""

    diffs: tuple[str, ...]
    drift: bool

    def shown(self) -> str:
        """The differences as an Event names them (the first few)."""
        more = " …" if len(self.diffs) > SHOWN_DIFFERENCES else ""
        return ", ".join(self.diffs[:SHOWN_DIFFERENCES]) + more


ApplyAction = Create | InSync | Update


def apply_action(desired: Mapping[str, Any], found: Mapping[str, Any] | None) -> ApplyAction:
    """What to do for one stamped desired object given what is live."""
    if found is None:
        return Create()
    diffs = differences(desired, found)
    if not diffs:
        return InSync()
    ours = (found.get("metadata") or {}).get("annotations") or {}
    drift = ours.get(ANNOTATION_RENDERED) == desired["metadata"]["annotations"][ANNOTATION_RENDERED]
    return Update(tuple(diffs), drift)


@dataclass(frozen=True)
class ControlSecretValues:
    """The control Secret's values to write; None where a fresh random one is made."""

    token: str | None
    audit_key: str | None


def control_secret_values(
    live: Mapping[str, Any] | None, want_audit: str | None
) -> ControlSecretValues | None:
    """None when the live control Secret is as it should be, else the values to write.

    The Triton control token is made once and kept; the audit checkpoint key is
    `want_audit` (derived from the platform key) when there is one, else kept once made."""
    key, audit = manifests.CONTROL_TOKEN_KEY, manifests.AUDIT_KEY_KEY
    data = (live or {}).get("data") or {}
    have = {k: base64.b64decode(v).decode() for k, v in data.items() if k in (key, audit)}
    if (
        live is not None
        and key in have
        and have.get(audit)
        and (want_audit is None or have[audit] == want_audit)
    ):
        return None
    return ControlSecretValues(have.get(key) or None, want_audit or have.get(audit) or None)


def redis_source_problem(where: str, source: Mapping[str, Any] | None) -> str | None:
    """Why the quota Redis credentials cannot be copied from `source`, or None."""
    if source is None:
        return (
            f"Secret {where} with the quota Redis credentials does not exist "
            "(the chart makes it with redis.enabled)"
        )
    data = source.get("data") or {}
    missing = [k for k in manifests.REDIS_AUTH_KEYS if not data.get(k)]
    if missing:
        return f"Secret {where} has no {' or '.join(missing)} for the quota Redis"
    return None


def secret_in_sync(desired: Mapping[str, Any], live: Mapping[str, Any]) -> bool:
    """The live copy of a Secret holds the desired data (as the API server holds it)."""
    return live.get("data") == desired["data"] and not differences(desired, live)


def revoked_config_patch(
    live: Mapping[str, Any] | None, revoked: Mapping[str, Any], uid: str
) -> dict[str, Any] | None:
    """The merge patch turning the model's license ConfigMap into a revocation, or None."""
    if live is None or not owned(live, uid) or live.get("data") == revoked["data"]:
        return None
    return {"data": merge_patch(live.get("data") or {}, revoked["data"])}
