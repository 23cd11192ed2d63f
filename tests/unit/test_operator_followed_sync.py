"""The reconciler's start: its reconciles wait for the followers' first listings
(`Reconciler.synced`), whose objects wake no model; the indexes answer once every
workload kind was listed in every scope, not before (a second listing of a scope after
a watch expired counts for nothing)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from modelseal.handlers.auditing import Auditor
from modelseal.handlers.metrics import Metrics
from modelseal.handlers.reconciler import Reconciler
from modelseal.handlers.vaultio import VaultSession
from modelseal.k8s.access import ClusterAccess
from modelseal.k8s.api import Kube, KubeClient
from modelseal.render.names import LABEL_MODEL, MANAGED_BY
from modelseal.testing import settings_for_tests


def _reconciler(tmp_path: Path, namespaces: list[str]) -> Reconciler:
    settings = settings_for_tests(tmp_path, namespaces=namespaces)
    metrics = Metrics()
    kube = Kube(KubeClient(ClusterAccess(server="https://127.0.0.1:1")))
    return Reconciler(settings, kube, VaultSession(settings, metrics), metrics, Auditor(settings))


def test_without_followers_nothing_is_waited_for(tmp_path: Path) -> None:
    assert _reconciler(tmp_path, []).synced.is_set()


def test_synced_and_seeded_once_every_kind_is_listed_in_every_scope(tmp_path: Path) -> None:
    r = _reconciler(tmp_path, ["a", "b"])
    r.follow(["Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job", "CronJob"])
    r.follow([*r._followed, "ConfigMap"])
    assert not r.synced.is_set()
    for kind in ("Pod", "Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "Job"):
        r.scope_listed(kind, "a")
        r.scope_listed(kind, "b")
    r.scope_listed("CronJob", "a")
    r.scope_listed("CronJob", "a")  # listed again (a watch expired): scope b still not
    assert not r.accounts.ready and not r.pods.ready
    r.scope_listed("CronJob", "b")
    assert r.accounts.ready and r.pods.ready
    assert not r.synced.is_set()  # the ConfigMaps are not listed yet
    assert r.cache.listed_kinds_missing().count("ConfigMap") == 1
    r.scope_listed("ConfigMap", "a")
    r.scope_listed("ConfigMap", "b")
    assert r.synced.is_set()
    assert "ConfigMap" not in r.cache.listed_kinds_missing()


def _deployment(replicas: int) -> dict[str, Any]:
    labels = {LABEL_MODEL: "m", "app.kubernetes.io/managed-by": MANAGED_BY}
    meta = {"namespace": "a", "name": "m", "uid": "u1", "labels": labels}
    return {"metadata": meta, "spec": {"replicas": replicas}}


def test_the_first_listings_wake_no_model_later_events_do(tmp_path: Path) -> None:
    """Before the first listings are complete, a listed object of a model's wakes
    nothing (kopf's listing of the models wakes each model once); after, a change does."""

    async def scenario() -> list[float]:
        r = _reconciler(tmp_path, ["a"])
        r.follow(["Deployment"])
        woken = r.metrics.wakeups.labels("Deployment")
        r.owned_changed("Deployment", None, _deployment(1), identity=True)
        seen = [woken._value.get()]
        r.scope_listed("Deployment", "a")
        r.owned_changed("Deployment", "MODIFIED", _deployment(0), identity=True)
        seen.append(woken._value.get())
        await r.queue.close()
        await r.kube.close()
        return seen

    assert asyncio.run(scenario()) == [0.0, 1.0]
