"""The operator's own list-and-watch (`modelseal.k8s.watch.Follower`) against a real API
server: a listing in pages, then the watch from the listing's version; an object deleted
while nothing watched is handed on as DELETED by the next listing; a watch the server
ended, or a connection cut, resumes without losing what changed meanwhile.

A watch or a continuation the server no longer has (410), which makes the follower list
again, is in test_k8s_watch_expired.py: this cluster's watch cache still has every
version (a watch from resourceVersion 1 is accepted), so it needs a control plane whose
API server reads ConfigMaps from etcd."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

from tests.integration.operator_helpers import OpsEnv
from tests.integration.watch_helpers import Seen, recorder, until

from modelseal.k8s import api as k8s
from modelseal.k8s.api import Json, Kube
from modelseal.k8s.watch import Follower, OnEvent, Restart


def _follower(env: OpsEnv, ns: str, on_event: OnEvent, **options: Any) -> Follower:
    """A follower of the ConfigMaps of `ns`, on a client of its own."""
    return Follower(Kube(env.cluster.kube_client()), k8s.CONFIG_MAP, ns, on_event, **options)


async def _stop(follower: Follower, task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await follower.kube.close()


def _configmap(env: OpsEnv, ns: str, name: str) -> None:
    env.kubectl("create", "configmap", name, "-n", ns, f"--from-literal=k={name}")


def _namespace(env: OpsEnv) -> str:
    ns = env.namespace("watch")
    env.cluster.wait_for_root_ca(ns)  # the listings below count it
    return ns


def test_a_listing_in_pages_then_the_watch_from_its_version(ops_cluster: OpsEnv) -> None:
    ns = _namespace(ops_cluster)
    for name in ("a", "b", "c"):
        _configmap(ops_cluster, ns, name)

    async def scenario() -> tuple[Seen, int]:
        seen, on_event = recorder()
        listings: list[int] = []
        follower = _follower(
            ops_cluster,
            ns,
            on_event,
            on_listed=lambda: listings.append(len(seen)),
            page_size=1,  # every object its own page: the continuation is followed
        )
        task = asyncio.create_task(follower.run())
        await until(lambda: bool(listings))
        ops_cluster.kubectl("label", "configmap", "a", "-n", ns, "x=1")
        ops_cluster.kubectl("delete", "configmap", "b", "-n", ns)
        _configmap(ops_cluster, ns, "d")
        await until(lambda: len(seen) >= 7)
        await _stop(follower, task)
        return seen, listings[0]

    seen, listed = asyncio.run(scenario())
    gc.collect()  # a connection left open fails this test, not a later one
    # the namespace's own kube-root-ca.crt is listed too
    assert sorted(seen[:listed]) == [(None, n) for n in ("a", "b", "c", "kube-root-ca.crt")]
    assert seen[listed:] == [("MODIFIED", "a"), ("DELETED", "b"), ("ADDED", "d")]


def test_an_object_gone_between_two_listings_is_handed_on_as_deleted(ops_cluster: OpsEnv) -> None:
    ns = _namespace(ops_cluster)
    ops_cluster.kubectl("create", "configmap", "kept", "-n", ns, "--from-literal=k=1")
    ops_cluster.kubectl("create", "configmap", "gone", "-n", ns, "--from-literal=k=1")
    ops_cluster.kubectl("label", "configmap", "gone", "-n", ns, "app=m")

    async def scenario() -> tuple[Seen, list[Json]]:
        seen, on_event = recorder()
        bodies: list[Json] = []

        def keep(event_type: str | None, obj: Json) -> None:
            on_event(event_type, obj)
            if event_type == "DELETED":
                bodies.append(obj)

        follower = _follower(ops_cluster, ns, keep)
        await follower.relist()
        # while nothing watches (a watch that expired): one deleted, one made
        ops_cluster.kubectl("delete", "configmap", "gone", "-n", ns)
        _configmap(ops_cluster, ns, "new")
        del seen[:]
        await follower.relist()
        await follower.kube.close()
        return seen, bodies

    seen, bodies = asyncio.run(scenario())
    gc.collect()
    assert sorted(e for e in seen if e[0] is None) == [
        (None, "kept"),
        (None, "kube-root-ca.crt"),
        (None, "new"),
    ]
    assert [e for e in seen if e[0] is not None] == [("DELETED", "gone")]
    meta = bodies[0]["metadata"]
    assert (meta["namespace"], meta["labels"], bool(meta["uid"])) == (ns, {"app": "m"}, True)


def _drop_connections(kube: Kube) -> int:
    """Cut the client's open connections as a network fault would (a TCP abort): the
    watch's response ends mid-stream."""
    connector = kube.api._open().connector
    assert connector is not None
    cut = 0
    for protocol in list(getattr(connector, "_acquired", ())):
        if protocol.transport is not None:
            protocol.transport.abort()
            cut += 1
    return cut


def test_a_watch_ended_or_cut_resumes_and_loses_nothing(ops_cluster: OpsEnv) -> None:
    ns = _namespace(ops_cluster)

    async def scenario() -> tuple[Seen, list[Restart], int]:
        seen, on_event = recorder()
        restarts: list[Restart] = []
        listed = asyncio.Event()
        follower = _follower(
            ops_cluster,
            ns,
            on_event,
            on_listed=listed.set,
            on_restart=restarts.append,
            server_timeout_s=2,  # the server ends each watch after 2 s: resumed
            retry_s=0.5,
        )
        task = asyncio.create_task(follower.run())
        await listed.wait()
        _configmap(ops_cluster, ns, "first")
        await asyncio.sleep(5)  # two watches ended by the server meanwhile
        _configmap(ops_cluster, ns, "second")
        await until(lambda: ("ADDED", "second") in seen)
        cut = _drop_connections(follower.kube)
        _configmap(ops_cluster, ns, "third")
        await until(lambda: ("ADDED", "third") in seen)
        await _stop(follower, task)
        return seen, restarts, cut

    seen, restarts, cut = asyncio.run(scenario())
    gc.collect()
    assert cut == 1
    assert [e for e in seen if e[0] is not None] == [
        ("ADDED", "first"),
        ("ADDED", "second"),
        ("ADDED", "third"),
    ]
    # a watch the server ended is no restart; the cut one is resumed (or ended: then
    # resumed without a pause), never listed again
    assert set(restarts) <= {Restart.FAILED}
