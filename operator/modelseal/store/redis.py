"""Redis counter store: exact, shared counters for many gateway replicas.

One request = one round trip: ``EVALSHA`` of the admit script (``modelseal.store.lua``),
which reads every counter of every scope, decides, and increments only if all limits pass,
atomically (Redis runs a script alone). A request that took a concurrency lease gives it
back with one ``ZREM`` after its response has been sent, off the response path; a gateway
that dies holding leases loses them when they expire (``lease_ms``).

Keys (all of a tenant's keys share the hash tag ``{tenant}`` so they live in one Redis
Cluster slot)::

    <prefix>:{<tenant>}:<license id>|<scope>:rb           token bucket (hash t, ts)
    <prefix>:{<tenant>}:<license id>|<scope>:d:<day id>    day counter   (expires after 3 days)
    <prefix>:{<tenant>}:<license id>|<scope>:mo:<month id> month counter (expires after 70 days)
    <prefix>:{<tenant>}:<license id>|<scope>:t             lifetime total (never expires)
    <prefix>:{<tenant>}:<license id>|<scope>:c             concurrency leases (sorted set)

``<scope>`` is ``*`` (the whole tenant) or ``m:<model>``. Durability across a Redis restart
is Redis' own (run it with ``appendonly yes``); a gateway restart loses nothing since the
gateway keeps no counter of its own.

Failing closed: any error talking to Redis (refused, timeout, script error) raises
``StoreUnavailable``; the gateway answers 503 and never forwards an unmetered request.
Only connection errors are retried (once): a timed-out script may have run, and counting a
request twice is the safe side.
"""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from modelseal.quota.policy import (
    CONCURRENT_RETRY_MS,
    LIMIT_ORDER,
    Decision,
    Remaining,
    day_id,
    month_id,
    ms_until_next_day,
    ms_until_next_month,
)
from modelseal.store.base import Admission, CounterStore, Lease, Scope, StoreUnavailable, Usage
from modelseal.store.lua import ADMIT_LUA

log = logging.getLogger(__name__)

DAY_TTL_S = 3 * 86_400
MONTH_TTL_S = 70 * 86_400


class RedisStore(CounterStore):
    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "modelseal",
        timeout_s: float = 1.0,
        lease_ms: int = 120_000,
        max_connections: int = 64,
        pool_timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.lease_ms = lease_ms
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=pool_timeout_s,  # waiting for a free connection is not Redis being down
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        )
        self._redis = aioredis.Redis(connection_pool=pool)
        self._admit = self._redis.register_script(ADMIT_LUA)

    def _keys(self, scope: Scope, now_ms: int) -> list[str]:
        base = f"{self.prefix}:{{{scope.tenant}}}:{scope.key}"
        return [
            f"{base}:rb",
            f"{base}:d:{day_id(now_ms)}",
            f"{base}:mo:{month_id(now_ms)}",
            f"{base}:t",
            f"{base}:c",
        ]

    async def admit(self, scopes: tuple[Scope, ...], now_ms: int, lease_id: str) -> Admission:
        keys: list[str] = []
        args: list[int | str] = [now_ms, lease_id, self.lease_ms, DAY_TTL_S, MONTH_TTL_S]
        args.append(len(scopes))
        for scope in scopes:
            keys += self._keys(scope, now_ms)
            args += scope.limits.as_args()
        try:
            raw: Any = await self._admit(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return _admission(raw, scopes, now_ms, lease_id)

    async def release(self, lease: Lease) -> None:
        now_ms = 0  # the lease key does not depend on time
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for scope in lease.scopes:
                    pipe.zrem(self._keys(scope, now_ms)[4], lease.lease_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            # the lease expires on its own; the slot is lost only until then
            log.warning("redis: could not release lease %s: %s", lease.lease_id, exc)

    async def usage(self, scope: Scope, now_ms: int) -> Usage:
        _rb, d, mo, t, c = self._keys(scope, now_ms)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(d)
                pipe.get(mo)
                pipe.get(t)
                pipe.zcount(c, now_ms, "+inf")
                day, month, total, inflight = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise StoreUnavailable(f"redis: {type(exc).__name__}: {exc}") from exc
        return Usage(int(day or 0), int(month or 0), int(total or 0), int(inflight or 0))

    async def ping(self) -> bool:
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self._redis.aclose(close_connection_pool=True)


def _admission(raw: Any, scopes: tuple[Scope, ...], now_ms: int, lease_id: str) -> Admission:
    allowed, kind, scope, retry, tokens, per_day, per_month, total, leased = (int(v) for v in raw)
    remaining = Remaining(tokens, per_day, per_month, total)
    if allowed:
        lease = None
        if leased:
            held = tuple(s for i, s in enumerate(scopes) if leased & (1 << i))
            lease = Lease(lease_id, held)
        return Admission(Decision(True, remaining=remaining), lease)
    limit = LIMIT_ORDER[kind - 1]
    retry_ms: int | None
    if limit == "total":
        retry_ms = None
    elif limit == "per_month":
        retry_ms = ms_until_next_month(now_ms)
    elif limit == "per_day":
        retry_ms = ms_until_next_day(now_ms)
    elif limit == "concurrent":
        retry_ms = CONCURRENT_RETRY_MS
    else:
        retry_ms = retry
    return Admission(Decision(False, limit, scope, retry_ms, remaining))
