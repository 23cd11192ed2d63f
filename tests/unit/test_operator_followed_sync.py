"""The reconciler's start: its reconciles wait for the followers' first listings
(`Reconciler.synced`), and the indexes answer once every workload kind was listed in
every scope, not before (a second listing of a scope after a watch expired counts for
nothing)."""

from __future__ import annotations

from pathlib import Path

from modelseal.handlers.auditing import Auditor
from modelseal.handlers.metrics import Metrics
from modelseal.handlers.reconciler import Reconciler
from modelseal.handlers.vaultio import VaultSession
from modelseal.k8s.access import ClusterAccess
from modelseal.k8s.api import Kube, KubeClient
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
