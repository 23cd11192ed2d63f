"""The operator's list-and-watch (`modelseal.k8s.watch.Follower`) when the API server no
longer has the version it asks for: a real 410 Expired, from a real API server and etcd.

An API server serves watches and list continuations from its watch cache, which keeps a
young cluster's whole history (a watch from resourceVersion 1 is accepted), so this
module starts a control plane of its own with the ConfigMaps' cache off
(`--watch-cache-sizes=configmaps#0`, as some clusters run large kinds): their watches and
continuations then go to etcd, and once etcd's history is compacted past a version (what
the API server does on its own every 5 minutes) the API server answers 410 for it.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tests.integration.watch_helpers import Seen, recorder, until

from modelseal.k8s import api as k8s
from modelseal.k8s.api import ApiError, Kind, Kube, ListChunk
from modelseal.k8s.watch import Follower, Restart
from modelseal_devenv.kube import KubeCluster, ensure_binaries


@pytest.fixture(scope="module")
def uncached() -> Iterator[KubeCluster]:
    """A control plane whose API server serves ConfigMaps from etcd, not its cache."""
    with KubeCluster(
        nodes=0,
        bin_dir=ensure_binaries(),
        extra_apiserver_args=["--watch-cache-sizes=configmaps#0"],
    ) as cluster:
        yield cluster


def _namespace(cluster: KubeCluster, name: str, configmaps: tuple[str, ...]) -> str:
    """A namespace with `configmaps`, and the kube-root-ca.crt that the controller manager
    puts in every namespace (waited for: the listings below count it)."""
    cluster.kubectl("create", "namespace", name)
    for cm in configmaps:
        _configmap(cluster, name, cm)
    cluster.wait_for_root_ca(name)
    return name


def _configmap(cluster: KubeCluster, ns: str, name: str) -> None:
    cluster.kubectl("create", "configmap", name, "-n", ns, f"--from-literal=k={name}")


def test_a_watch_from_a_compacted_version_lists_again_and_loses_nothing(
    uncached: KubeCluster,
) -> None:
    ns = _namespace(uncached, "expired-watch", ("kept", "gone"))

    async def scenario() -> tuple[Seen, list[int], list[Restart]]:
        seen, on_event = recorder()
        listings: list[int] = []
        restarts: list[Restart] = []

        def on_listed() -> None:
            listings.append(len(seen))
            if len(listings) == 1:
                # Between the listing and its watch: changes the watch would have shown,
                # then etcd's history compacted past the listing's version.
                uncached.kubectl("delete", "configmap", "gone", "-n", ns)
                _configmap(uncached, ns, "new")
                uncached.compact_etcd()

        follower = Follower(
            Kube(uncached.kube_client()),
            k8s.CONFIG_MAP,
            ns,
            on_event,
            on_listed=on_listed,
            on_restart=restarts.append,
        )
        task = asyncio.create_task(follower.run())
        try:
            await until(lambda: len(listings) >= 2, timeout_s=30.0)
            # the watch after the second listing is live: a change reaches us
            uncached.kubectl("label", "configmap", "kept", "-n", ns, "x=1")
            await until(lambda: ("MODIFIED", "kept") in seen[listings[1] :], timeout_s=30.0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await follower.kube.close()
        return seen, listings, restarts

    seen, listings, restarts = asyncio.run(scenario())
    gc.collect()  # a connection left open fails this test, not a later one
    first, second = seen[: listings[0]], seen[listings[0] : listings[1]]
    assert sorted(first) == [(None, "gone"), (None, "kept"), (None, "kube-root-ca.crt")]
    # the watch from the compacted version was refused (410): the follower listed again,
    # and the object deleted meanwhile is handed on as DELETED, the new one as listed
    assert restarts == [Restart.EXPIRED]
    assert sorted(e for e in second if e[0] is None) == [
        (None, "kept"),
        (None, "kube-root-ca.crt"),
        (None, "new"),
    ]
    assert [e for e in second if e[0] is not None] == [("DELETED", "gone")]
    assert seen[listings[1] :] == [("MODIFIED", "kept")]


class _CompactAfterFirstPage(Kube):
    """Our client, unchanged, with a hook after the first page of a listing: another
    object is created and etcd compacted, so that the page's continuation expires (the
    server decides that: the 410 below is its answer)."""

    def __init__(self, client: Any, compact: Callable[[], None]) -> None:
        super().__init__(client)
        self._compact = compact
        self.calls: list[tuple[bool, int]] = []  # (had a continuation, HTTP status)

    async def list_chunk(
        self,
        kind: Kind,
        namespace: str | None,
        limit: int,
        token: str | None = None,
        metadata_only: bool = False,
    ) -> ListChunk:
        try:
            chunk = await super().list_chunk(kind, namespace, limit, token, metadata_only)
        except ApiError as exc:
            self.calls.append((token is not None, exc.status))
            raise
        self.calls.append((token is not None, 200))
        if len(self.calls) == 1:
            self._compact()
        return chunk


def test_a_listing_whose_continuation_expired_starts_over(uncached: KubeCluster) -> None:
    ns = _namespace(uncached, "expired-listing", ("a", "b", "c"))

    def change_and_compact() -> None:
        _configmap(uncached, ns, "d")
        uncached.compact_etcd()

    async def scenario() -> tuple[Seen, list[tuple[bool, int]]]:
        seen, on_event = recorder()
        kube = _CompactAfterFirstPage(uncached.kube_client(), change_and_compact)
        follower = Follower(kube, k8s.CONFIG_MAP, ns, on_event, page_size=1)
        try:
            version = await follower.relist()
        finally:
            await kube.close()
        assert version
        return seen, kube.calls

    seen, calls = asyncio.run(scenario())
    gc.collect()
    # the first page, then its continuation refused as expired (410), then a whole new
    # listing from the start, page by page (5 objects: 5 pages)
    assert calls[:2] == [(False, 200), (True, 410)]
    assert calls[2:] == [(False, 200)] + [(True, 200)] * 4
    # the objects of the listing that completed, each once; the first page's object was
    # handed on before too (a listing hands on what it reads), and nothing as DELETED
    listed_again = seen[1:]
    assert sorted(listed_again) == [(None, n) for n in ("a", "b", "c", "d", "kube-root-ca.crt")]
    assert seen[0] in listed_again
