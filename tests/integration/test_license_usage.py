"""ModelLicense request usage (issue 14) against the real API server and a real Redis.

* The operator (a real ``python -m modelseal operator`` process) reads the counters that
  the gateway's own store code wrote into Redis and shows them in ``status.usage.requests``
  and the printer columns, sets QuotaExhausted False then True (window, reset time), posts
  Events at 80% and 100%, exports the per-tenant gauges, and Argo CD's health check reads
  the exhausted license as Degraded.
* The write rate is bounded: the usage writer (in process, against the same API server and
  Redis) over many licenses whose counters change all the time writes each license's
  status at most once per interval; the figures are printed (``-s``) and
  MODELSEAL_USAGE_BENCH_LICENSES sets how many licenses (default 120) and
  MODELSEAL_USAGE_BENCH_INTERVAL_S the interval (default 6 s).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from tests.fixtures.redis_acl import acl_redis, chart_acl, chart_auth_data
from tests.integration.operator_helpers import GROUP, VERSION, Operator, OpsEnv, condition, wait_for
from tests.integration.test_operator import apply, license_doc, model_doc
from tests.unit.test_argocd_health import run_health

from modelseal.config import Settings
from modelseal.handlers.licenses_usage import UsageWriter
from modelseal.k8s.api import Kube
from modelseal.models.spec import parse_license, parse_model
from modelseal.quota.license import parse_licenses
from modelseal.render.license_config import license_document
from modelseal.store.base import Scope, scopes_for
from modelseal.store.redis import RedisStore
from modelseal_devenv.redis import RedisServer

pytestmark = pytest.mark.integration


def _scopes(lic_body: dict[str, Any], model_body: dict[str, Any]) -> tuple[Scope, ...]:
    """The scopes the gateway of ``model_body`` counts in, from the license file the
    operator renders for it."""
    lic_body = {**lic_body, "metadata": {"uid": "u", "generation": 1, **lic_body["metadata"]}}
    model_body = {
        **model_body,
        "metadata": {"uid": "u", "generation": 1, **model_body["metadata"]},
    }
    model = parse_model(model_body)
    doc = license_document(model, parse_license(lic_body), granted=True)
    (lic,) = parse_licenses(json.dumps(doc)).values()
    return scopes_for(lic, model.model_name)


#: The tests' own stores only fill the counters the operator reads (the gateways' part):
#: what they test is the operator, so they wait for Redis longer than a gateway's 1 s. On
#: a loaded CI machine (a cold build beside the tests) Redis once took longer than that.
FILL_TIMEOUT_S = 15.0


async def _admit_all(store: RedisStore, scopes: list[tuple[Scope, ...]], n: int) -> list[bool]:
    """``n`` requests in each of ``scopes``, counted by the gateway's store code."""
    out = []
    for i in range(n):
        for scope in scopes:
            now = int(time.time() * 1000)
            admission = await store.admit(scope, now, f"usage-{i}-{now}")
            if admission.lease is not None:
                await store.release(admission.lease)
            out.append(admission.decision.allowed)
    return out


async def _admit(
    redis_url: str, lic_body: dict[str, Any], model_body: dict[str, Any], n: int
) -> list[bool]:
    store = RedisStore(redis_url, timeout_s=FILL_TIMEOUT_S)
    try:
        return await _admit_all(store, [_scopes(lic_body, model_body)], n)
    finally:
        await store.close()


def admit(
    redis_url: str, lic_body: dict[str, Any], model_body: dict[str, Any], n: int
) -> list[bool]:
    return asyncio.run(_admit(redis_url, lic_body, model_body, n))


@pytest.fixture
def usage_op(ops_env: OpsEnv) -> Iterator[Operator]:
    op = Operator(ops_env, usage_status_interval_s=1, resync_interval_s=600).start()
    try:
        yield op
    finally:
        op.stop()


def _requests(env: OpsEnv, ns: str, name: str) -> dict[str, Any]:
    body = env.get_license(ns, name) or {}
    return dict(((body.get("status") or {}).get("usage") or {}).get("requests") or {})


def test_status_usage_quota_exhausted_events_and_gauges(
    ops_env: OpsEnv, usage_op: Operator, redis_server: RedisServer
) -> None:
    env = ops_env
    ns = env.namespace("usage")
    try:
        lic_body = license_doc(ns, quotas={"perDay": 10, "perMonth": 1000})
        model_body = model_doc(
            ns,
            "digits",
            "some-key",
            gateway={"quotaStore": "redis", "redisUrl": redis_server.url},
        )
        apply(env, lic_body)
        apply(env, model_body)
        assert admit(redis_server.url, lic_body, model_body, 8) == [True] * 8

        def figures_at(used: int) -> dict[str, Any] | None:
            figs = _requests(env, ns, "gold")
            return figs if (figs.get("day") or {}).get("used") == used else None

        figs = wait_for(lambda: figures_at(8), "status.usage.requests at 8", 60)
        assert figs["day"]["limit"] == 10 and figs["day"]["remaining"] == 2
        assert figs["today"] == "8/10" and figs["thisMonth"] == "8/1000"
        assert figs["models"]["digits"]["day"]["used"] == 8
        assert figs["store"].startswith("redis://127.0.0.1:")
        quota = condition(env.get_license(ns, "gold"), "QuotaExhausted")
        assert (quota["status"], quota["reason"]) == ("False", "WithinQuota")
        reasons = wait_for(
            lambda: (
                [e for e in env.events(ns, "gold") if e["reason"] == "QuotaAt80Percent"] or None
            ),
            "Event QuotaAt80Percent",
            30,
        )
        assert "used 80% of the perDay quota of license gold (8/10)" in reasons[0]["message"]

        assert admit(redis_server.url, lic_body, model_body, 3) == [True, True, False]
        wait_for(lambda: figures_at(10), "status.usage.requests at 10", 60)

        def exhausted() -> dict[str, Any] | None:
            c = condition(env.get_license(ns, "gold"), "QuotaExhausted")
            return c if c.get("status") == "True" else None

        quota = wait_for(exhausted, "QuotaExhausted=True", 30)
        tomorrow = datetime.now(UTC).date().toordinal() + 1
        reset = datetime.fromordinal(tomorrow).strftime("%Y-%m-%dT00:00:00Z")
        assert quota["reason"] == "DailyQuotaExhausted"
        assert f"perDay quota is used up (10/10); resets at {reset}" in quota["message"]
        wait_for(
            lambda: (
                [e for e in env.events(ns, "gold") if e["reason"] == "QuotaAt100Percent"] or None
            ),
            "Event QuotaAt100Percent",
            30,
        )
        status, message = run_health("ModelLicense", env.get_license(ns, "gold") or {})
        assert status == "Degraded" and message.startswith("DailyQuotaExhausted: ")

        metrics = usage_op.metrics()
        who = f'license="gold",namespace="{ns}",tenant="acme"'  # labels as exposed: sorted
        assert metrics[f'modelseal_license_requests_used{{{who},window="day"}}'] == 10
        assert metrics[f'modelseal_license_requests_remaining{{{who},window="day"}}'] == 0
        assert metrics[f'modelseal_license_requests_remaining{{{who},window="month"}}'] == 990
        assert metrics[f"modelseal_license_quota_exhausted{{{who}}}"] == 1

        table = env.kubectl("get", "ml", "-n", ns).splitlines()
        assert table[0].split()[:7] == [
            "NAME",
            "TENANT",
            "VALID",
            "REASON",
            "TODAY",
            "MONTH",
            "EXHAUSTED",
        ]
        assert table[1].split()[4:7] == ["10/10", "10/1000", "True"]
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "modelseal",
                "usage",
                "-n",
                ns,
                "gold",
                f"--kubeconfig={env.cluster.kubeconfig}",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        assert cli[1].split()[:6] == ["gold", "acme", "day", "10", "10", "0"]
        assert any("QuotaExhausted=True (DailyQuotaExhausted)" in line for line in cli)
        # the password-free address only, never credentials, in what the operator wrote
        assert "@" not in json.dumps(_requests(env, ns, "gold"))
    finally:
        env.drop_namespaces()


def _seed(env: OpsEnv, ns: str, i: int, redis_url: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """License ``l<i>`` and model ``m<i>`` as objects (no operator runs here), the license
    with the first status the license reconcile would write."""
    custom = env.custom()
    lic_body = license_doc(ns, name=f"l{i}", quotas={"perDay": 1_000_000})
    model_body = model_doc(
        ns,
        f"m{i}",
        "k",
        license_name=f"l{i}",
        gateway={"quotaStore": "redis", "redisUrl": redis_url},
    )
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modellicenses", lic_body)
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, "protectedmodels", model_body)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        ns,
        "modellicenses",
        f"l{i}",
        {
            "status": {
                "observedGeneration": 1,
                "conditions": [
                    {
                        "type": "Valid",
                        "status": "True",
                        "reason": "Valid",
                        "message": "",
                        "lastTransitionTime": stamp,
                        "observedGeneration": 1,
                    },
                ],
            }
        },
    )
    return lic_body, model_body


def test_status_write_rate_is_bounded(ops_env: OpsEnv, redis_server: RedisServer) -> None:
    env = ops_env
    n = int(os.environ.get("MODELSEAL_USAGE_BENCH_LICENSES", "120"))
    interval = float(os.environ.get("MODELSEAL_USAGE_BENCH_INTERVAL_S", "6"))
    ns = env.namespace("usage-rate")
    try:
        scopes = [_scopes(*_seed(env, ns, i, redis_server.url)) for i in range(n)]
        patches: list[str] = []

        def on_call(verb: str, kind: str, code: int) -> None:
            if verb == "PATCH" and kind == "ModelLicense":
                patches.append(kind)

        settings = Settings(namespaces=[ns], usage_status_interval_s=interval)

        async def event(involved: Mapping[str, str], type_: str, reason: str, message: str) -> None:
            return None

        async def scenario() -> tuple[int, float, int]:
            kube = Kube(env.cluster.kube_client(), on_call=on_call)
            registry = CollectorRegistry()
            writer = UsageWriter(settings, kube, registry, event)
            store = RedisStore(redis_server.url, timeout_s=FILL_TIMEOUT_S)
            rounds = 0
            started = time.monotonic()
            try:
                # Every license's counters change before every round, and the rounds run
                # back to back (far more often than the interval): the throttle alone
                # bounds the writes.
                while time.monotonic() - started < 3 * interval:
                    await _admit_all(store, scopes, 1)
                    await writer.round()
                    rounds += 1
                written = registry.get_sample_value("modelseal_operator_usage_status_writes_total")
                return rounds, time.monotonic() - started, int(written or 0)
            finally:
                await writer.close()
                await store.close()
                await kube.close()

        rounds, elapsed, writes = asyncio.run(scenario())
        bound = n * (1 + int(elapsed // interval))
        print(
            f"\nusage status writes: licenses={n} rounds={rounds} elapsed={elapsed:.1f}s "
            f"interval={interval:g}s writes={writes} patches={len(patches)} bound={bound} "
            f"rate={writes / elapsed:.1f}/s (bound {n / interval:.1f}/s per interval)"
        )
        assert rounds >= 2
        assert writes == len(patches)
        assert writes <= bound
        assert writes >= n  # every license was written at least once
    finally:
        env.drop_namespaces()


def test_store_down_is_unknown_keeps_the_figures_and_gone_licenses_leave_no_series(
    ops_env: OpsEnv, tmp_path: Path
) -> None:
    """Redis stops: QuotaExhausted turns Unknown (QuotaStoreUnavailable, saying which
    Redis) and the last figures stay; a deleted license's gauges go away."""
    env = ops_env
    ns = env.namespace("usage-down")
    with RedisServer(tmp_path / "redis") as redis:
        try:
            lic_body, model_body = _seed(env, ns, 0, redis.url)
            assert admit(redis.url, lic_body, model_body, 3) == [True] * 3
            settings = Settings(namespaces=[ns], usage_status_interval_s=0.01)
            registry = CollectorRegistry()
            posted: list[str] = []

            async def event(
                involved: Mapping[str, str], type_: str, reason: str, message: str
            ) -> None:
                posted.append(reason)

            async def scenario() -> None:
                kube = Kube(env.cluster.kube_client())
                writer = UsageWriter(settings, kube, registry, event)
                try:
                    assert await writer.round() == 1
                    figs = _requests(env, ns, "l0")
                    assert figs["day"]["used"] == 3
                    assert (
                        condition(env.get_license(ns, "l0"), "QuotaExhausted")["status"] == "False"
                    )
                    redis.stop()
                    await asyncio.sleep(0.05)
                    assert await writer.round() == 1
                    quota = condition(env.get_license(ns, "l0"), "QuotaExhausted")
                    assert (quota["status"], quota["reason"]) == (
                        "Unknown",
                        "QuotaStoreUnavailable",
                    )
                    assert redis.url.split("//")[1].split("/")[0] in quota["message"]
                    assert _requests(env, ns, "l0")["day"]["used"] == 3  # kept
                    assert await writer.round() == 0  # nothing changed: no write
                    labels = {"namespace": ns, "license": "l0", "tenant": "acme", "window": "day"}
                    assert registry.get_sample_value("modelseal_license_requests_used", labels) == 3
                    env.custom().delete_namespaced_custom_object(
                        GROUP, VERSION, ns, "modellicenses", "l0"
                    )
                    await writer.round()
                    assert (
                        registry.get_sample_value("modelseal_license_requests_used", labels) is None
                    )
                finally:
                    await writer.close()
                    await kube.close()

            asyncio.run(scenario())
            assert registry.get_sample_value("modelseal_operator_usage_read_errors_total") == 2
            assert posted == []  # 3 of 1,000,000: no threshold crossed
        finally:
            env.drop_namespaces()


def test_reads_the_charts_redis_as_its_acl_user(ops_env: OpsEnv, tmp_path: Path) -> None:
    """With the chart's Redis (ACL users, protected mode): the writer logs in with the user
    and password from the chart's Secret (read by name, as the operator does), reads the
    counters, and no password reaches the status. A wrong password in the Secret is
    QuotaExhausted Unknown naming the refusal, not a crash."""
    env = ops_env
    ns = env.namespace("usage-acl")
    password = secrets.token_urlsafe(24)
    source = "usage-redis-auth"
    with acl_redis(tmp_path / "redis", chart_acl(password)) as port:
        url = f"redis://127.0.0.1:{port}/0"
        try:
            lic_body, model_body = _seed(env, ns, 0, url)
            secret = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": source, "namespace": ns},
                "data": chart_auth_data(password),
            }
            env.core().create_namespaced_secret(ns, secret)

            async def count() -> None:
                store = RedisStore(
                    url, username="modelseal", password=password, timeout_s=FILL_TIMEOUT_S
                )
                try:
                    await _admit_all(store, [_scopes(lic_body, model_body)], 4)
                finally:
                    await store.close()

            asyncio.run(count())
            settings = Settings(
                namespaces=[ns],
                usage_status_interval_s=0.01,
                redis_auth_secret=source,
                redis_auth_secret_namespace=ns,
            )

            async def noop(
                involved: Mapping[str, str], type_: str, reason: str, message: str
            ) -> None:
                return None

            async def scenario() -> None:
                kube = Kube(env.cluster.kube_client())
                writer = UsageWriter(settings, kube, CollectorRegistry(), noop)
                try:
                    assert await writer.round() == 1
                    assert _requests(env, ns, "l0")["day"]["used"] == 4
                    wrong = {**secret, "data": chart_auth_data("not-the-password")}
                    env.core().replace_namespaced_secret(source, ns, wrong)
                    await asyncio.sleep(0.05)
                    assert await writer.round() == 1
                    quota = condition(env.get_license(ns, "l0"), "QuotaExhausted")
                    assert (quota["status"], quota["reason"]) == (
                        "Unknown",
                        "QuotaStoreUnavailable",
                    )
                    assert "AUTH" in quota["message"]
                finally:
                    await writer.close()
                    await kube.close()

            asyncio.run(scenario())
            written = json.dumps(env.get_license(ns, "l0"))
            assert password not in written and "not-the-password" not in written
        finally:
            env.drop_namespaces()
