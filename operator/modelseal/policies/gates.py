"""The decisions of a ProtectedModel reconcile, in the order the reconcile asks them.

Each is a small pure function over inputs the caller gathered first (cert-manager's
policy chain): whether to reconcile at all, what the model conflicts with, whether it may
run, which Vault step applies, whether serving holds through a Vault problem, and when
to look again."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from modelseal.config import Settings
from modelseal.models.identity import REASON_IN_USE, IdentityCheck
from modelseal.models.license import LicenseDecision
from modelseal.models.spec import (
    LicenseSpec,
    ModelSpec,
    SpecError,
    parse_license,
    parse_meta,
    parse_model,
)
from modelseal.models.status import KeyState
from modelseal.render import manifests
from modelseal.render.compare import conflict
from modelseal.render.model import Rendered
from modelseal.render.names import parse_vault_name

#: How often a model whose ServiceAccount is used by an intruder is checked again (s).
INTRUDER_RECHECK_S = 10.0
#: Key of the live objects for the ServiceAccount named after the model (before issue 12).
LEGACY_ACCOUNT = "LegacyServiceAccount"
#: Key of the live objects for the model's copy of the quota Redis credentials.
REDIS_AUTH = "RedisAuthSecret"
#: Key states that leave serving as it is: a Vault problem is no license decision, and
#: while an intruder holds the account the running Pods (which hold the model) stay.
HOLDING_REASONS = ("VaultUnavailable", "VaultError", REASON_IN_USE)


class Gate(StrEnum):
    """Whether a model is reconciled now."""

    GONE = "Gone"  # forget it
    DELETING = "Deleting"  # the delete handler withdraws access; owners' GC the rest
    NO_FINALIZER = "NoFinalizer"  # kopf adds it first; provisioning waits for it
    PROCEED = "Proceed"


def gate(body: Mapping[str, Any] | None, finalizer: str) -> Gate:
    if body is None:
        return Gate.GONE
    if parse_meta(body).deleting:
        return Gate.DELETING
    if finalizer not in ((body.get("metadata") or {}).get("finalizers") or []):
        return Gate.NO_FINALIZER
    return Gate.PROCEED


def parsed_model(body: Mapping[str, Any]) -> tuple[ModelSpec | None, str | None]:
    """The model's spec, or why it cannot be read."""
    try:
        return parse_model(body), None
    except SpecError as exc:
        return None, str(exc)


def parsed_license(body: Mapping[str, Any] | None) -> tuple[LicenseSpec | None, str | None]:
    """The license's spec, or why it cannot be read (neither when there is no license)."""
    if body is None:
        return None, None
    try:
        return parse_license(body), None
    except SpecError as exc:
        return None, str(exc)


def peers(spec: ModelSpec, items: Iterable[Mapping[str, Any]]) -> list[ModelSpec]:
    """The other readable models, not being deleted, that draw on the model's license."""
    out: list[ModelSpec] = []
    for item in items:
        meta = parse_meta(item)
        if meta.name == spec.name or meta.deleting:
            continue
        try:
            peer = parse_model(item)
        except SpecError:
            continue
        if peer.license_name == spec.license_name:
            out.append(peer)
    return out


def conflicts(
    spec: ModelSpec,
    settings: Settings,
    preview: Rendered,
    live: Mapping[str, Mapping[str, Any]],
) -> str | None:
    """Why the model cannot take over the objects of its names (someone else owns them)."""
    found = [
        c
        for obj in preview.objects()
        if (have := live.get(obj["kind"])) is not None and (c := conflict(obj, have))
    ]
    secret = live.get("Secret")
    if secret is not None and (c := conflict(manifests.control_secret(spec, settings, ""), secret)):
        found.append(c)
    redis = live.get(REDIS_AUTH)
    if preview.redis_auth is not None and redis is not None:
        blank = dict.fromkeys(manifests.REDIS_AUTH_KEYS, "")
        if c := conflict(manifests.redis_auth_secret(spec, settings, blank), redis):
            found.append(c)
    return "; ".join(found) or None


def may_run(decision: LicenseDecision, conflict_msg: str | None) -> bool:
    """The license grants the model and nobody else owns its objects."""
    return decision.granted and not conflict_msg


@dataclass(frozen=True)
class Withdraw:
    """Vault access is withdrawn (`why`); the key state is then `key`."""

    why: str
    key: KeyState


@dataclass(frozen=True)
class Provision:
    """Vault access is granted once the Transit key is found to exist."""


VaultPlan = Withdraw | Provision


def vault_plan(
    decision: LicenseDecision, conflict_msg: str | None, identity: IdentityCheck
) -> VaultPlan:
    """The Vault step: withdrawn while the model may not run or an intruder uses its
    account (never granted then), else provisioned."""
    if not may_run(decision, conflict_msg):
        why = decision.message if not decision.granted else (conflict_msg or "")
        return Withdraw(why, KeyState("False", "AccessWithdrawn", f"no Vault role while: {why}"))
    if not identity.clear:
        message = identity.message()
        return Withdraw(message, KeyState("False", REASON_IN_USE, message))
    return Provision()


def key_missing(spec: ModelSpec, settings: Settings) -> Withdraw:
    """The model's Transit key does not exist: no access."""
    where = f"{settings.vault_transit_mount}/{spec.transit_key}"
    return Withdraw(
        "Transit key missing",
        KeyState(
            "False",
            "KeyNotFound",
            f"Transit key {where} does not exist in Vault at {settings.vault_addr}",
        ),
    )


def key_provisioned(spec: ModelSpec, settings: Settings, role: str) -> KeyState:
    return KeyState(
        "True",
        "KeyProvisioned",
        f"role {role} may decrypt with {settings.vault_transit_mount}/{spec.transit_key} only",
        role=role,
    )


def vault_failed(exc: Exception, unreachable: bool) -> KeyState:
    """The key state while Vault cannot be reached or answers with an error."""
    return KeyState("Unknown", "VaultUnavailable" if unreachable else "VaultError", str(exc))


def invalid_key(message: str) -> KeyState:
    """The key state of a model whose spec the operator cannot act on."""
    return KeyState("False", "AccessWithdrawn", f"no Vault access: {message}")


def holds(key: KeyState) -> bool:
    """Serving is left as it is (replicas kept, license file granted)."""
    return key.reason in HOLDING_REASONS


def serves(key: KeyState) -> bool:
    """The license file says granted: Vault access is in place, or serving holds."""
    return key.ok or holds(key)


def claim(spec: ModelSpec, effective: bool) -> tuple[Any, ...]:
    """What the model claims of its license's seats (a change re-evaluates the license)."""
    return (spec.license_name, spec.serving.replicas, spec.serving.total_gpus, effective)


def seconds_until(moment: datetime | None, now: datetime) -> float | None:
    """Seconds until `moment` (half a second after it, half a second at least)."""
    if moment is None:
        return None
    return max(0.5, (moment - now).total_seconds() + 0.5)


def next_look(decision: LicenseDecision, identity_clear: bool, now: datetime) -> float | None:
    """When to reconcile again: when the decision changes by itself, and soon while an
    intruder holds the account (the role comes back as soon as it is gone)."""
    delay = seconds_until(decision.next_change, now)
    if not identity_clear:
        delay = min(delay, INTRUDER_RECHECK_S) if delay is not None else INTRUDER_RECHECK_S
    return delay


def orphaned_model(
    prefix: str, namespaces: Iterable[str], role: str, namespace: str
) -> tuple[str, str] | None:
    """(namespace, model) of a Vault role bound in `namespace` if it is one of ours in a
    watched namespace (all when `namespaces` is empty), else None."""
    watched = list(namespaces)
    if watched and namespace not in watched:
        return None
    parsed = parse_vault_name(prefix, role)
    if parsed is None or parsed[0] != namespace:
        return None
    return parsed
