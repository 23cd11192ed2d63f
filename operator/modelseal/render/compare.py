"""Drift detection: does a live object still match what the operator rendered? Pure.

The comparison is strict where it matters for the threat model and tolerant only where
the API server legitimately adds things:

* metadata: our labels and annotations must be there with our values (others may add
  their own), and our controller ownerReference must be there;
* content (a Deployment's, Service's or NetworkPolicy's ``spec``, a ConfigMap's ``data``,
  a ServiceAccount's token automount): every rendered field must be equal — quantities by
  value, not spelling — and lists must have the same length; a field someone *added* is
  drift unless its value is empty (``false``, ``0``, ``""``, ``{}``, ``[]``, ``null``) or it
  is one the server allocates (a Service's cluster IPs and IP families).

So an edited image, a removed sidecar, replicas above the seats, an added ``hostPID:
true``, an added container or volume, or a paused rollout are all drift, while the fields
the server defaults are rendered explicitly by `modelseal.render.manifests` and compare
equal. `update_body` builds the object to PUT back.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from modelseal.models.quantity import quantities_equal

Json = dict[str, Any]

#: Top-level content keys per kind (compared strictly).
CONTENT_KEYS: dict[str, tuple[str, ...]] = {
    "Deployment": ("spec",),
    "Service": ("spec",),
    "NetworkPolicy": ("spec",),
    "ConfigMap": ("data", "binaryData"),
    "ServiceAccount": ("automountServiceAccountToken",),
}

#: Paths (dotted, list indices as []) where an added field is expected, per kind.
SERVER_OWNED: dict[str, frozenset[str]] = {
    "Service": frozenset(
        {"spec.clusterIP", "spec.clusterIPs", "spec.ipFamilies", "spec.ipFamilyPolicy"}
    ),
    "Deployment": frozenset(
        {
            "spec.template.metadata.annotations.kubectl.kubernetes.io/restartedAt",
            # The deprecated alias the server keeps equal to serviceAccountName.
            "spec.template.spec.serviceAccount",
        }
    ),
    "ServiceAccount": frozenset(),
    "NetworkPolicy": frozenset(),
    "ConfigMap": frozenset(),
}

_QUANTITY_PARENTS = ("requests", "limits")


def _empty(value: Any) -> bool:
    return value is None or value is False or value == 0 or value in ("", {}, [])


def _norm_path(path: str) -> str:
    """A path with list indices folded to [] (for the SERVER_OWNED lookup)."""
    out = []
    for part in path.split("."):
        out.append(part.split("[", 1)[0] + ("[]" if "[" in part else ""))
    return ".".join(out)


def _is_quantity_path(path: str) -> bool:
    parts = path.split(".")
    return (len(parts) >= 2 and parts[-2] in _QUANTITY_PARENTS) or parts[-1] == "sizeLimit"


def _scalar_equal(desired: Any, live: Any, path: str) -> bool:
    if desired == live and type(desired) is type(live):
        return True
    if isinstance(desired, bool) or isinstance(live, bool):
        return desired is live
    if isinstance(desired, (int, float)) and isinstance(live, (int, float)):
        return desired == live
    if _is_quantity_path(path):
        return quantities_equal(desired, live)
    return False


def _diff(desired: Any, live: Any, path: str, allowed: frozenset[str], out: list[str]) -> None:
    if isinstance(desired, Mapping):
        if not isinstance(live, Mapping):
            out.append(path)
            return
        for key, value in desired.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in live:
                if not _empty(value):
                    out.append(sub)
                continue
            _diff(value, live[key], sub, allowed, out)
        for key, value in live.items():
            if key in desired:
                continue
            sub = f"{path}.{key}" if path else str(key)
            if _empty(value) or _norm_path(sub) in allowed:
                continue
            out.append(sub)
        return
    if isinstance(desired, Sequence) and not isinstance(desired, str):
        if not isinstance(live, Sequence) or isinstance(live, str):
            out.append(path)
            return
        if len(desired) != len(live):
            out.append(f"{path} (length {len(live)}, want {len(desired)})")
            return
        for i, (d, v) in enumerate(zip(desired, live, strict=True)):
            _diff(d, v, f"{path}[{i}]", allowed, out)
        return
    if not _scalar_equal(desired, live, path):
        out.append(path)


def _owned_by(live: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    want = (desired.get("metadata") or {}).get("ownerReferences") or []
    have = (live.get("metadata") or {}).get("ownerReferences") or []
    for ref in want:
        if not any(
            h.get("uid") == ref.get("uid")
            and bool(h.get("controller")) == bool(ref.get("controller"))
            for h in have
        ):
            return False
    return True


def differences(desired: Mapping[str, Any], live: Mapping[str, Any]) -> list[str]:
    """Paths where `live` departs from `desired`; empty when the object is in sync."""
    kind = str(desired.get("kind"))
    out: list[str] = []
    dmeta = desired.get("metadata") or {}
    lmeta = live.get("metadata") or {}
    for field in ("labels", "annotations"):
        mine = dmeta.get(field) or {}
        theirs = lmeta.get(field) or {}
        for key, value in mine.items():
            if theirs.get(key) != value:
                out.append(f"metadata.{field}.{key}")
    if not _owned_by(live, desired):
        out.append("metadata.ownerReferences")
    allowed = SERVER_OWNED.get(kind, frozenset())
    for key in CONTENT_KEYS.get(kind, ()):
        want = desired.get(key)
        have = live.get(key)
        if want is None:
            if not _empty(have):
                out.append(key)
            continue
        if have is None:
            if not _empty(want):
                out.append(key)
            continue
        _diff(want, have, key, allowed, out)
    return out


def controller_of(live: Mapping[str, Any]) -> Mapping[str, Any] | None:
    for ref in (live.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, Mapping) and ref.get("controller"):
            return ref
    return None


def conflict(desired: Mapping[str, Any], live: Mapping[str, Any]) -> str | None:
    """Why `live` is not ours to change (another controller, or no owner at all)."""
    want = ((desired.get("metadata") or {}).get("ownerReferences") or [{}])[0]
    ref = controller_of(live)
    name = f"{desired.get('kind')} {(live.get('metadata') or {}).get('name')}"
    if ref is None:
        return f"{name} already exists and is not managed by this ProtectedModel"
    if ref.get("uid") != want.get("uid"):
        return f"{name} is controlled by {ref.get('kind')} {ref.get('name')}, not by this model"
    return None


def update_body(desired: Mapping[str, Any], live: Mapping[str, Any]) -> Json:
    """The object to PUT: the live object with our metadata and our content put back."""
    kind = str(desired.get("kind"))
    body: Json = copy.deepcopy(dict(live))
    body.pop("status", None)
    meta = body.setdefault("metadata", {})
    dmeta = desired.get("metadata") or {}
    for field in ("labels", "annotations"):
        mine = dmeta.get(field) or {}
        if mine:
            merged = dict(meta.get(field) or {})
            merged.update(mine)
            meta[field] = merged
    refs = [
        r
        for r in meta.get("ownerReferences") or []
        if not (isinstance(r, Mapping) and r.get("controller"))
    ]
    meta["ownerReferences"] = list(dmeta.get("ownerReferences") or []) + refs
    allowed = SERVER_OWNED.get(kind, frozenset())
    for key in CONTENT_KEYS.get(kind, ()):
        if key in desired:
            content = copy.deepcopy(desired[key])
            old = live.get(key)
            # Keep what the server allocated (cluster IPs), drop everything else of theirs.
            if isinstance(content, dict) and isinstance(old, Mapping):
                for sub, value in old.items():
                    if sub not in content and _norm_path(f"{key}.{sub}") in allowed:
                        content[sub] = value
            body[key] = content
        else:
            body.pop(key, None)
    return body
