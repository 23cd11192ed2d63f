"""What every counter store offers, and the scopes a request is counted in."""

from __future__ import annotations

import abc
import asyncio
from dataclasses import dataclass, field

from modelseal.quota.license import License, Limits
from modelseal.quota.policy import Decision, EngineLimits

_BACKGROUND: set[asyncio.Task[None]] = set()


class StoreError(RuntimeError):
    """The store cannot be used at all (bad configuration, held by another process)."""


class StoreUnavailable(RuntimeError):
    """The store did not answer; the gateway fails closed (503) and says why."""


@dataclass(frozen=True, slots=True)
class Scope:
    """One set of counters: ``key`` names it, ``tenant`` groups a tenant's keys together
    (a Redis Cluster hash tag), ``limits`` are what it may not exceed."""

    key: str
    tenant: str
    limits: EngineLimits


def scopes_for(lic: License, model: str) -> tuple[Scope, Scope]:
    """A request is counted for the tenant (license-wide quotas) and for the tenant's use
    of the model (per-model quotas, unlimited unless the license sets some), keyed by
    ``License.counter_key``: the ProtectedModel where the operator rendered the license, so
    that two models with one Triton name under one license count apart."""
    return (
        Scope(f"{lic.id}|*", lic.tenant, EngineLimits.from_limits(lic.quotas)),
        model_scope(lic.id, lic.tenant, lic.counter_key(model), lic.limits_for(model)),
    )


def model_scope(license_id: str, tenant: str, counter_key: str, limits: Limits) -> Scope:
    """The scope of one model's own counters (also what the operator reads for status)."""
    return Scope(f"{license_id}|m:{counter_key}", tenant, EngineLimits.from_limits(limits))


def license_scope(license_id: str, tenant: str) -> Scope:
    """The license-wide scope, for reading (its limits are not needed to read it)."""
    return Scope(f"{license_id}|*", tenant, EngineLimits())


@dataclass(frozen=True, slots=True)
class Lease:
    """Concurrency slots an admitted request holds until it is released."""

    lease_id: str
    scopes: tuple[Scope, ...]


@dataclass(frozen=True, slots=True)
class Ticket:
    """What an admitted request was counted as (scopes, time, leases), to refund it."""

    scopes: tuple[Scope, ...]
    now_ms: int
    lease_id: str
    leased: tuple[int, ...]  # indexes of the scopes that hold a concurrency lease


@dataclass(frozen=True, slots=True)
class Admission:
    decision: Decision
    lease: Lease | None = None
    ticket: Ticket | None = None  # set when admitted


@dataclass(slots=True)
class Usage:
    """Counters of one scope as the store holds them now (for status and tests)."""

    day: int = 0
    month: int = 0
    total: int = 0
    inflight: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class CounterStore(abc.ABC):
    kind: str = "abstract"

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open files or connections; raises StoreError when the store cannot be used."""

    @abc.abstractmethod
    async def admit(self, scopes: tuple[Scope, ...], now_ms: int, lease_id: str) -> Admission:
        """Check every limit of every scope and, only if all pass, count the request in
        all of them, atomically. Raises StoreUnavailable."""

    @abc.abstractmethod
    async def release(self, lease: Lease) -> None:
        """Give back the concurrency slots of an admitted request."""

    @abc.abstractmethod
    async def refund(self, ticket: Ticket) -> None:
        """Undo an admission, atomically, for a request that never reached the model:
        its day / month / lifetime counts, its token and its leases. Raises
        StoreUnavailable (the request then stays counted: the safe side)."""

    def release_soon(self, lease: Lease) -> None:
        """Give the slots back without waiting (from a request's response path)."""
        task = asyncio.get_running_loop().create_task(self.release(lease))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    @abc.abstractmethod
    async def usage(self, scope: Scope, now_ms: int) -> Usage:
        """Current counters of one scope."""

    async def ping(self) -> bool:
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and close."""
