"""The operator's watch cache against a real API server: a deletion no watch event told
(a watch resumed after a gap) is seen by the periodic resync's reads, which go to the API
server (`read_through`) and put the cache right for the reads after them."""

from __future__ import annotations

import asyncio

from tests.integration.operator_helpers import OpsEnv

from modelseal.k8s import api as k8s
from modelseal.k8s.api import Kube
from modelseal.k8s.cache import CachedKube, WatchCache, read_through

LABEL, OURS = "app.kubernetes.io/managed-by", "modelseal-operator"


def test_resync_reads_see_a_deletion_the_cache_missed(ops_cluster: OpsEnv) -> None:
    ns = ops_cluster.namespace("cache")
    ops_cluster.kubectl("create", "configmap", "m-license", "-n", ns, "--from-literal=a=1")

    async def scenario() -> list[bool]:
        cache = WatchCache(LABEL, OURS)
        cache.enable()
        kube = CachedKube(Kube(ops_cluster.cluster.kube_client()), cache)
        seen = [await kube.get(k8s.CONFIG_MAP, ns, "m-license") is not None]  # GET, kept
        # deleted with no event fed to the cache (as in a watch's gap)
        ops_cluster.kubectl("delete", "configmap", "m-license", "-n", ns)
        seen.append(await kube.get(k8s.CONFIG_MAP, ns, "m-license") is not None)  # stale

        async def resync_run() -> bool:
            read_through()
            return await kube.get(k8s.CONFIG_MAP, ns, "m-license") is not None

        seen.append(await asyncio.create_task(resync_run()))
        # the read-through answer was kept: an ordinary read now says absent too, and
        # the read-through did not leak out of its task
        seen.append(await kube.get(k8s.CONFIG_MAP, ns, "m-license") is not None)
        await kube.close()
        return seen

    assert asyncio.run(scenario()) == [True, True, False, False]
