"""What a ModelLicense reconcile decides beyond its status (`modelseal.models.status`):
which models it re-evaluates, and when it is looked at again. Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from modelseal.models.conditions import find
from modelseal.models.license import LicenseDecision, Reason, SeatGrant, license_state
from modelseal.models.spec import LicenseSpec, ModelSpec, ObjectMeta, SpecError, parse_model
from modelseal.models.status import LICENSE_VALID
from modelseal.policies.gates import seconds_until

INVALID_SPEC = "InvalidSpec"


def models_naming(models: Iterable[Mapping[str, Any]], name: str) -> list[Mapping[str, Any]]:
    """The model bodies whose licenseRef names the license `name`."""
    return [
        m
        for m in models
        if isinstance((m.get("spec") or {}).get("licenseRef"), Mapping)
        and m["spec"]["licenseRef"].get("name") == name
    ]


def readable(models: Iterable[Mapping[str, Any]]) -> list[ModelSpec]:
    """The models whose spec can be read (the others claim no seats)."""
    out: list[ModelSpec] = []
    for m in models:
        try:
            out.append(parse_model(m))
        except SpecError:
            continue
    return out


def confirms(decision: LicenseDecision, status: Mapping[str, Any]) -> bool:
    """Whether `decision` is what the model's status says already (its LicenseValid
    condition: granted or not, reason and message alike). Only then may a decision made
    on the watch's view of the license and its models stand (`LicenseBook`)."""
    said = find(status.get("conditions"), LICENSE_VALID)
    return (
        said is not None
        and said.get("status") == ("True" if decision.granted else "False")
        and said.get("reason") == decision.reason
        and said.get("message") == decision.message
    )


def seats_moved(models: Iterable[Mapping[str, Any]], grants: Mapping[str, SeatGrant]) -> list[str]:
    """The names of the models whose seat, as the license now allocates its seats, is not
    what their status says: serving (LicenseValid True) without a seat, or refused for
    seats (SeatsExceeded) with one. An older model that grew, or one that left, moves
    seats without any change to the license or to the models whose seat moved; these are
    the models to decide again. A model not decided yet, or refused for another reason,
    is left to its own reconcile."""
    moved: list[str] = []
    for m in models:
        meta = m.get("metadata") or {}
        grant = grants.get(f"{meta.get('namespace')}/{meta.get('name')}")
        said = find((m.get("status") or {}).get("conditions"), LICENSE_VALID)
        if grant is None or said is None:
            continue
        serving = said.get("status") == "True"
        refused_for_seats = said.get("status") == "False" and said.get("reason") == Reason.SEATS
        if (serving and not grant.granted) or (refused_for_seats and grant.granted):
            moved.append(str(meta.get("name")))
    return moved


def state(
    lic: LicenseSpec | None, error: str | None, now: datetime
) -> tuple[str, str | None, datetime | None]:
    """(reason, message, next change) of the license itself."""
    if lic is None:
        return INVALID_SPEC, error, None
    reason, message, moment = license_state(lic, now)
    return reason, message, moment


def seen(meta: ObjectMeta, reason: str) -> tuple[Any, ...]:
    """What the license's models were last evaluated against: a change re-evaluates them."""
    return (meta.uid, meta.generation, reason)


def next_look(moment: datetime | None, now: datetime, interval_s: float) -> float | None:
    """When to look at the license again: when a window opens or closes, and meanwhile
    every `interval_s` (a safety net against clock steps; it costs reads only)."""
    delay = seconds_until(moment, now)
    if delay is not None:
        delay = min(delay, max(1.0, interval_s))
    return delay


def license_ref_name(body: Mapping[str, Any]) -> str | None:
    """The license a model body names, if it names one (read without parsing the spec)."""
    spec = (body.get("spec") or {}) if isinstance(body.get("spec"), Mapping) else {}
    ref = spec.get("licenseRef") if isinstance(spec.get("licenseRef"), Mapping) else None
    if ref and isinstance(ref.get("name"), str):
        return str(ref["name"])
    return None
