"""What the controllers share: clients, settings, the clock, and the in-memory state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from modelseal.config import Settings
from modelseal.handlers.auditing import Auditor
from modelseal.handlers.metrics import Metrics
from modelseal.handlers.vaultio import VaultSession
from modelseal.k8s import api as k8s
from modelseal.k8s.api import ApiError, Kube
from modelseal.models.spec import (
    GROUP,
    LICENSE_KIND,
    LICENSE_PLURAL,
    MODEL_KIND,
    MODEL_PLURAL,
    VERSION,
)
from modelseal.render.names import Names, names_for

MODELS = k8s.custom_kind(MODEL_KIND, GROUP, VERSION, MODEL_PLURAL)
LICENSES = k8s.custom_kind(LICENSE_KIND, GROUP, VERSION, LICENSE_PLURAL)

log = logging.getLogger("modelseal.operator")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Context:
    """The clients and settings every controller uses."""

    settings: Settings
    kube: Kube
    vault: VaultSession
    metrics: Metrics
    auditor: Auditor
    now: Callable[[], datetime] = utc_now

    def names(self, namespace: str, name: str, uid: str) -> Names:
        """The names of the objects and Vault entries of the model `namespace/name`."""
        return names_for(namespace, name, uid, self.settings.vault_policy_prefix)


@dataclass
class Memory:
    """What the operator remembers between reconciles (lost on restart, rebuilt by the
    first resync; nothing in it is needed for a correct decision, only for prompt ones)."""

    #: One reconcile (or deletion, or collection) of a model at a time.
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    #: model key -> what it last claimed of its license's seats.
    claims: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    #: license key -> what its models were last evaluated against.
    license_seen: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    #: (namespace, ServiceAccount) -> model name: which model an account belongs to, so
    #: that a Pod or workload appearing with it wakes that model's check at once.
    accounts: dict[tuple[str, str], str] = field(default_factory=dict)
    #: (namespace, Secret, model uid) of the copies a model does not need (the quota Redis
    #: credentials, the usage export token) found absent or removed: not read again until
    #: the next resync, since only this operator makes them, and not while not needed.
    gone_secrets: set[tuple[str, str, str]] = field(default_factory=set)
    #: The API server selects ProtectedModels by their license (`models_of_license`); an
    #: older one (or a CRD installed without ``selectableFields``) refuses: then False.
    license_selectable: bool = True

    def lock(self, key: str) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def forget_model(self, key: str) -> None:
        namespace, _, name = key.partition("/")
        for account in [a for a, m in self.accounts.items() if a[0] == namespace and m == name]:
            del self.accounts[account]
        self.claims.pop(key, None)
        self.locks.pop(key, None)


#: The ProtectedModel field the CRD declares selectable (``selectableFields``).
LICENSE_FIELD = "spec.licenseRef.name"


async def models_of_license(
    kube: Kube, memory: Memory, namespace: str, license_name: str
) -> list[dict[str, Any]]:
    """The ProtectedModels of `namespace` that may name the license (the caller still
    filters by the name): selected by the API server, so that a namespace of a thousand
    models costs a reconcile the license's ten, not the thousand (issue 13 §3). An API
    server that cannot select on the field (Kubernetes before 1.31, a CRD without
    ``selectableFields``) answers 400; then the namespace is listed whole, as before."""
    if memory.license_selectable:
        try:
            return await kube.list(
                MODELS, namespace, field_selector=f"{LICENSE_FIELD}={license_name}"
            )
        except ApiError as exc:
            if exc.status != 400:
                raise
            log.warning(
                "the API server cannot select ProtectedModels by %s (%s); listing every "
                "model of a namespace instead (install the chart's CRDs on Kubernetes 1.31+)",
                LICENSE_FIELD,
                exc,
            )
            memory.license_selectable = False
    return await kube.list(MODELS, namespace)


class WakeupCause(StrEnum):
    """Why a controller asks for a reconcile (the wakeups metric's `source`)."""

    #: A license re-evaluates its models, or a model its license.
    CONTROLLER = "controller"
    #: Seats moved between a license's models without a change of the license.
    SEATS = "seats"


@dataclass(frozen=True)
class Enqueue:
    """How a controller asks for another reconcile (the work queue's keys)."""

    add: Callable[[str, float, WakeupCause], None]

    def model(
        self,
        namespace: str,
        name: str,
        delay: float = 0.0,
        cause: WakeupCause = WakeupCause.CONTROLLER,
    ) -> None:
        self.add(model_key(namespace, name), delay, cause)

    def license(self, namespace: str, name: str, delay: float = 0.0) -> None:
        self.add(license_key(namespace, name), delay, WakeupCause.CONTROLLER)


def model_key(namespace: str, name: str) -> str:
    """The work queue's key of a ProtectedModel."""
    return f"pm/{namespace}/{name}"


def license_key(namespace: str, name: str) -> str:
    """The work queue's key of a ModelLicense."""
    return f"ml/{namespace}/{name}"
