"""Redis counter store: exact, shared counters for many gateway replicas.

One request = one round trip: ``EVALSHA`` of the admit script (``modelseal.store.lua``),
which reads every counter of every scope, decides, and increments only if all limits pass,
atomically (Redis runs a script alone). A request that took a concurrency lease gives it
back with one ``ZREM`` after its response has been sent, off the response path; a gateway
that dies holding leases loses them when they expire (``lease_ms``). A request admitted
but never delivered (Triton could not be connected to) is refunded by a second script
(``REFUND_LUA``), atomically: counts, token and lease together.

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

Authentication: Redis should require it (issue 12, High 2). The gateway logs in as an ACL
user (``AUTH <user> <password>``) whose name and password it reads from files mounted from
a Secret (``redis_username_file``, ``redis_password_file``; never in the URL, the
environment or arguments). ``gateway_acl_rule`` is that user's ACL line: its own key
prefix only, and only the commands the gateway and its scripts run (no ``FLUSHALL``,
``DEL``, ``KEYS``, ``CONFIG``...). The chart's Redis (``templates/redis.yaml``) renders the
same line; a unit test keeps the two equal.

Failing closed: any error talking to Redis (refused, timeout, script error) raises
``StoreUnavailable``; the gateway answers 503 and never forwards an unmetered request.
Nothing is retried: a timed-out script may have run, and counting a request twice is the
safe side. The client is ``modelseal.store.resp``: one pipelining connection, reopened on
the next request after a failure.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import Any

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
from modelseal.store.base import (
    Admission,
    CounterStore,
    Lease,
    Scope,
    StoreUnavailable,
    Ticket,
    Usage,
)
from modelseal.store.lua import ADMIT_LUA, REFUND_LUA
from modelseal.store.resp import RespClient, RespError, RespUnavailable, encode

log = logging.getLogger(__name__)

DAY_TTL_S = 3 * 86_400
MONTH_TTL_S = 70 * 86_400
ADMIT_SHA = hashlib.sha1(ADMIT_LUA.encode()).hexdigest()  # noqa: S324 - Redis' script id
REFUND_SHA = hashlib.sha1(REFUND_LUA.encode()).hexdigest()  # noqa: S324 - Redis' script id


# Every command the gateway sends, and every command its Lua scripts call (Redis checks
# those against the ACL too).
GATEWAY_ACL_COMMANDS: tuple[str, ...] = (
    "ping",
    "select",
    "eval",
    "evalsha",
    "get",
    "zcount",
    "zrem",
    "decr",
    "expire",
    "hget",
    "hmget",
    "hset",
    "incr",
    "pexpire",
    "zadd",
    "zcard",
    "zremrangebyscore",
)


def gateway_acl_rule(user: str, password_sha256_hex: str, prefix: str = "modelseal") -> str:
    """The ACL file line of the gateway's Redis user (the password as its SHA-256)."""
    commands = " ".join(f"+{c}" for c in GATEWAY_ACL_COMMANDS)
    return (
        f"user {user} on #{password_sha256_hex} resetkeys ~{prefix}:* resetchannels "
        f"nocommands {commands}"
    )


class RedisStore(CounterStore):
    kind = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "modelseal",
        timeout_s: float = 1.0,
        lease_ms: int = 120_000,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.lease_ms = lease_ms
        self._client = RespClient(url, timeout_s=timeout_s, username=username, password=password)
        self._parts: dict[tuple[tuple[Scope, ...], int, int], tuple[bytes, bytes]] = {}

    async def start(self) -> None:
        """Open the connection before the first request. Not fatal when Redis is down (it
        is reopened on demand, and requests fail closed meanwhile), but a gateway that
        starts under a burst would otherwise open it inside the first requests, where a
        busy event loop can make the connect miss its timeout and refuse the whole burst
        with 503."""
        if not await self.ping():
            log.warning(
                "quota store %s not reachable at start; requests fail closed until it is", self.kind
            )

    def _keys(self, scope: Scope, now_ms: int) -> list[str]:
        base = f"{self.prefix}:{{{scope.tenant}}}:{scope.key}"
        return [
            f"{base}:rb",
            f"{base}:d:{day_id(now_ms)}",
            f"{base}:mo:{month_id(now_ms)}",
            f"{base}:t",
            f"{base}:c",
        ]

    def _command(self, scopes: tuple[Scope, ...], now_ms: int, lease_id: str) -> bytes:
        """The EVALSHA command, from cached parts: only the time and lease id vary."""
        day, month = day_id(now_ms), month_id(now_ms)
        cache_key = (scopes, day, month)
        parts = self._parts.get(cache_key)
        if parts is None:
            keys: list[str] = []
            limits: list[int] = []
            for scope in scopes:
                keys += self._keys(scope, now_ms)
                limits += scope.limits.as_args()
            head = encode(("EVALSHA", ADMIT_SHA, len(keys), *keys))
            tail = encode((self.lease_ms, DAY_TTL_S, MONTH_TTL_S, len(scopes), *limits))
            count = 3 + len(keys) + 2 + 4 + len(limits)
            parts = (
                b"*%d\r\n" % count + head[head.index(b"\r\n") + 2 :],
                tail[tail.index(b"\r\n") + 2 :],
            )
            if len(self._parts) > 10_000:
                self._parts.clear()
            self._parts[cache_key] = parts
        now = str(now_ms).encode()
        lease = lease_id.encode()
        return b"".join(
            (parts[0], b"$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(now), now, len(lease), lease), parts[1])
        )

    async def admit(self, scopes: tuple[Scope, ...], now_ms: int, lease_id: str) -> Admission:
        try:
            try:
                raw: Any = await self._client.call_raw(self._command(scopes, now_ms, lease_id))
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                # a restarted or flushed Redis lost the script: EVAL loads it again
                keys: list[str] = []
                args: list[int | str] = [now_ms, lease_id, self.lease_ms, DAY_TTL_S, MONTH_TTL_S]
                args.append(len(scopes))
                for scope in scopes:
                    keys += self._keys(scope, now_ms)
                    args += scope.limits.as_args()
                raw = await self._client.call("EVAL", ADMIT_LUA, len(keys), *keys, *args)
        except (RespError, RespUnavailable) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        return _admission(raw, scopes, now_ms, lease_id)

    def refund_call(self, ticket: Ticket) -> tuple[list[str], list[int | str]]:
        """KEYS and ARGV of the refund script for ``ticket``."""
        keys: list[str] = []
        bursts: list[int | str] = []
        for scope in ticket.scopes:
            keys += self._keys(scope, ticket.now_ms)  # the windows it was counted in
            bursts.append(scope.limits.burst_units if scope.limits.rate_units >= 0 else -1)
        return keys, [ticket.lease_id if ticket.leased else "", len(ticket.scopes), *bursts]

    async def refund(self, ticket: Ticket) -> None:
        keys, args = self.refund_call(ticket)
        try:
            try:
                await self._client.call("EVALSHA", REFUND_SHA, len(keys), *keys, *args)
            except RespError as exc:
                if not str(exc).startswith("NOSCRIPT"):
                    raise
                await self._client.call("EVAL", REFUND_LUA, len(keys), *keys, *args)
        except (RespError, RespUnavailable) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc

    def release_soon(self, lease: Lease) -> None:
        # pipelined with whatever else is being written; the reply is not waited for.
        # If it is lost, the lease expires after lease_ms.
        for scope in lease.scopes:
            self._client.send("ZREM", self._keys(scope, 0)[4], lease.lease_id)

    async def release(self, lease: Lease) -> None:
        try:
            await asyncio.gather(
                *(
                    self._client.call("ZREM", self._keys(scope, 0)[4], lease.lease_id)
                    for scope in lease.scopes
                )
            )
        except (RespError, RespUnavailable) as exc:
            log.warning("redis: could not release lease %s: %s", lease.lease_id, exc)

    async def usage(self, scope: Scope, now_ms: int) -> Usage:
        _rb, d, mo, t, c = self._keys(scope, now_ms)
        call = self._client.call
        try:
            day, month, total, inflight = await asyncio.gather(
                call("GET", d), call("GET", mo), call("GET", t), call("ZCOUNT", c, now_ms, "+inf")
            )
        except (RespError, RespUnavailable) as exc:
            raise StoreUnavailable(f"redis: {exc}") from exc
        return Usage(int(day or 0), int(month or 0), int(total or 0), int(inflight or 0))

    async def ping(self) -> bool:
        try:
            return bool(await self._client.call("PING") == "PONG")
        except (RespError, RespUnavailable):
            return False

    async def close(self) -> None:
        await self._client.close()


def _admission(raw: Any, scopes: tuple[Scope, ...], now_ms: int, lease_id: str) -> Admission:
    allowed, kind, scope, retry, tokens, per_day, per_month, total, leased = (int(v) for v in raw)
    remaining = Remaining(tokens, per_day, per_month, total)
    if allowed:
        lease = None
        held_at: tuple[int, ...] = ()
        if leased:
            held_at = tuple(i for i in range(len(scopes)) if leased & (1 << i))
            lease = Lease(lease_id, tuple(scopes[i] for i in held_at))
        ticket = Ticket(scopes, now_ms, lease_id, held_at)
        return Admission(Decision(True, remaining=remaining), lease, ticket)
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
