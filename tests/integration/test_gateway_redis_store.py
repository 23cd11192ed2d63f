"""Redis counter store against a real Redis: the Lua script equals the Python policy,
concurrent admits are exact, and an unreachable Redis fails closed."""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime

import pytest
import redis as redis_py
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelseal.quota import policy
from modelseal.quota.license import Limits
from modelseal.quota.policy import DAY_MS, EngineLimits, ScopeCounters
from modelseal.store.base import Scope, StoreUnavailable, Ticket
from modelseal.store.lua import ADMIT_LUA, REFUND_LUA
from modelseal.store.redis import RedisStore, _admission
from modelseal_devenv.common import free_port
from modelseal_devenv.redis import RedisServer

pytestmark = pytest.mark.integration

T0 = int(datetime(2025, 1, 30, 22, 0, tzinfo=UTC).timestamp() * 1000)

limits_st = st.builds(
    Limits,
    rate_per_second=st.one_of(st.none(), st.sampled_from([0.3, 1, 4, 33.3, 1000])),
    burst=st.none(),
    per_day=st.one_of(st.none(), st.integers(0, 12)),
    per_month=st.one_of(st.none(), st.integers(0, 25)),
    total=st.one_of(st.none(), st.integers(0, 40)),
    concurrent=st.one_of(st.none(), st.integers(0, 4)),
)
step_st = st.tuples(
    st.sampled_from([0, 0, 1, 7, 250, 999, 3_600_000, DAY_MS, 20 * DAY_MS]),
    st.sampled_from(["admit", "admit", "admit", "release", "refund"]),
)


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(lim_a=limits_st, lim_b=limits_st, steps=st.lists(step_st, min_size=1, max_size=60))
def test_lua_script_equals_python_policy(
    redis_server: RedisServer, lim_a: Limits, lim_b: Limits, steps: list[tuple[int, str]]
) -> None:
    client = redis_server.client()
    script = client.register_script(ADMIT_LUA)
    refund = client.register_script(REFUND_LUA)
    store = RedisStore(redis_server.url, prefix=f"eq-{secrets.token_hex(6)}", lease_ms=10**12)
    scopes = (
        Scope("lic|*", "acme", EngineLimits.from_limits(lim_a)),
        Scope("lic|m:x", "acme", EngineLimits.from_limits(lim_b)),
    )
    counters = [ScopeCounters(), ScopeCounters()]
    limits = [s.limits for s in scopes]
    # admitted and neither released nor refunded: (python leases, the Lua side's ticket)
    open_: list[tuple[list[int], Ticket]] = []
    now = T0
    try:
        for n, (advance, action) in enumerate(steps):
            now += advance
            if action == "release":
                if open_:
                    leased, ticket = open_.pop(0)
                    policy.release(counters, leased)
                    for i in ticket.leased:
                        client.zrem(store._keys(scopes[i], ticket.now_ms)[4], ticket.lease_id)
                continue
            if action == "refund":  # the newest request never reached the model
                if open_:
                    leased, ticket = open_.pop()
                    policy.refund(counters, limits, ticket.now_ms, leased)
                    keys, args = store.refund_call(ticket)
                    refund(keys=keys, args=args)
                continue
            expect, leased = policy.admit(counters, limits, now)
            lease_id = f"l{n}"
            keys = []
            args: list[int | str] = [now, lease_id, store.lease_ms, 3 * 86400, 70 * 86400, 2]
            for scope in scopes:
                keys += store._keys(scope, now)
                args += scope.limits.as_args()
            got = _admission(script(keys=keys, args=args), scopes, now, lease_id)
            assert got.decision == expect, f"step {n}: lua {got.decision} != python {expect}"
            held = [s.key for s in got.lease.scopes] if got.lease else []
            assert held == [scopes[i].key for i in leased]
            if expect.allowed:
                assert got.ticket is not None and list(got.ticket.leased) == leased
                open_.append((leased, got.ticket))
    finally:
        client.close()
        asyncio.run(store.close())


async def test_refund_gives_back_counts_token_and_lease(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, prefix=f"rf-{secrets.token_hex(4)}")
    lim = Limits(rate_per_second=1, burst=1, per_day=1, total=1, concurrent=1)
    scopes = (
        Scope("lic|*", "acme", EngineLimits.from_limits(lim)),
        Scope("lic|m:digits", "acme", EngineLimits()),
    )
    now = int(datetime.now(UTC).timestamp() * 1000)
    first = await store.admit(scopes, now, "a")
    assert first.decision.allowed and first.ticket is not None
    assert not (await store.admit(scopes, now, "b")).decision.allowed
    await store.refund(first.ticket)
    for scope in scopes:
        usage = await store.usage(scope, now)
        assert (usage.day, usage.month, usage.total, usage.inflight) == (0, 0, 0, 0)
    again = await store.admit(scopes, now, "c")  # every limit has room again
    assert again.decision.allowed, again.decision
    await store.close()


async def test_concurrent_admits_are_exact(redis_server: RedisServer) -> None:
    stores = [RedisStore(redis_server.url, prefix=f"ex-{secrets.token_hex(4)}") for _ in range(3)]
    for s in stores[1:]:
        s.prefix = stores[0].prefix
    scopes = (
        Scope("lic|*", "acme", EngineLimits.from_limits(Limits(total=100))),
        Scope("lic|m:digits", "acme", EngineLimits()),
    )
    now = int(datetime.now(UTC).timestamp() * 1000)
    results = await asyncio.gather(*(stores[i % 3].admit(scopes, now, f"r{i}") for i in range(600)))
    allowed = sum(r.decision.allowed for r in results)
    assert allowed == 100
    assert all(r.decision.limit == "total" for r in results if not r.decision.allowed)
    usage = await stores[0].usage(scopes[1], now)
    assert (usage.day, usage.month, usage.total) == (100, 100, 100)
    for s in stores:
        await s.close()


async def test_leases_are_shared_released_and_expire(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, prefix=f"lease-{secrets.token_hex(4)}", lease_ms=500)
    scopes = (Scope("lic|*", "acme", EngineLimits.from_limits(Limits(concurrent=2))),)
    now = int(datetime.now(UTC).timestamp() * 1000)
    a = await store.admit(scopes, now, "a")
    b = await store.admit(scopes, now, "b")
    c = await store.admit(scopes, now, "c")
    assert a.lease and b.lease and not c.decision.allowed
    assert c.decision.limit == "concurrent"
    assert (await store.usage(scopes[0], now)).inflight == 2
    await store.release(a.lease)
    assert (await store.admit(scopes, now, "d")).decision.allowed
    # a gateway that died holding leases: they expire after lease_ms
    assert (await store.admit(scopes, now + 600, "e")).decision.allowed
    await store.close()


async def test_unreachable_redis_fails_closed() -> None:
    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    await store.start()  # warns, does not raise: the gateway starts and fails closed
    scopes = (Scope("lic|*", "acme", EngineLimits()),)
    with pytest.raises(StoreUnavailable, match="redis"):
        await store.admit(scopes, T0, "x")
    assert not await store.ping()
    with pytest.raises(StoreUnavailable):
        await store.usage(scopes[0], T0)
    await store.close()


async def test_start_opens_the_connection_before_the_first_request(
    redis_server: RedisServer,
) -> None:
    """A burst that arrives at a fresh gateway finds the connection open (the exactness
    test saw a whole gateway's share refused with 503 when the connect ran inside it)."""
    store = RedisStore(redis_server.url)
    await store.start()
    try:
        assert store._client._proto is not None and store._client._proto.lost is None
    finally:
        await store.close()


async def test_script_reloads_after_redis_restart(tmp_path: object) -> None:
    with RedisServer() as server:
        store = RedisStore(server.url)
        scopes = (Scope("lic|*", "acme", EngineLimits.from_limits(Limits(total=3))),)
        now = int(datetime.now(UTC).timestamp() * 1000)
        assert (await store.admit(scopes, now, "a")).decision.allowed
        server.stop()
        with pytest.raises(StoreUnavailable):
            await store.admit(scopes, now, "b")
        server.start()
        # the script cache is empty after a restart (NOSCRIPT): it is loaded again
        with redis_py.Redis.from_url(server.url) as c:
            c.script_flush()
        got = [(await store.admit(scopes, now, f"c{i}")).decision.allowed for i in range(3)]
        assert got == [True, True, False]  # the count survived the restart
        await store.close()
