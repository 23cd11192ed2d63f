"""`python -m modelseal operator`: the operator process.

Settings come from ``MODELSEAL_*``; the Kubernetes connection from the in-cluster
ServiceAccount or, out of cluster, ``KUBECONFIG`` (or ~/.kube/config). Serves Prometheus
metrics on ``operator_metrics_port`` and kopf's health endpoint on ``operator_health_port``
(``/healthz``); logs JSON lines on stderr with the object they are about; audit records go
to the configured audit sink.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import kopf
from prometheus_client import start_http_server

from modelseal.config import Settings
from modelseal.handlers.auditing import Auditor
from modelseal.handlers.metrics import Metrics
from modelseal.handlers.operator import build_registry
from modelseal.handlers.reconciler import Reconciler
from modelseal.handlers.vaultio import VaultSession
from modelseal.k8s.access import load_access
from modelseal.k8s.api import Kube, KubeClient
from modelseal.logging import setup_logging as json_logging

log = logging.getLogger("modelseal.operator")


def setup_logging(settings: Settings) -> None:
    kopf.configure(verbose=settings.log_level == "DEBUG")
    # kopf.configure sets its loggers up; the lines are ours (modelseal.logging), the
    # same fields as the gateway's and the unsealer's. Chatty libraries: their warnings only.
    json_logging(settings.log_level, quiet=("urllib3", "kubernetes", "aiohttp.access"))
    if settings.log_level != "DEBUG":
        # kopf logs every handler call at INFO; our own lines say what was decided.
        logging.getLogger("kopf").setLevel(logging.WARNING)


async def operate(
    settings: Settings,
    stop_flag: Any = None,
    ready_flag: Any = None,
    metrics: Metrics | None = None,
) -> None:
    """Run the operator until stopped (SIGTERM/SIGINT, or `stop_flag`)."""
    metrics = metrics or Metrics()
    client = KubeClient(load_access(), max_connections=settings.operator_api_concurrency)
    kube = Kube(client, on_call=metrics.api_call)
    vault = VaultSession(settings, metrics)
    auditor = Auditor(settings)
    reconciler = Reconciler(settings, kube, vault, metrics, auditor)
    background: list[asyncio.Task[None]] = []
    registry = build_registry(settings, reconciler, background)
    namespaces = list(settings.namespaces)
    try:
        await kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not namespaces,
            namespaces=namespaces,
            liveness_endpoint=f"http://0.0.0.0:{settings.operator_health_port}/healthz",
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await kube.close()


def run(settings: Settings) -> None:
    setup_logging(settings)
    metrics = Metrics()
    server, thread = start_http_server(settings.operator_metrics_port, registry=metrics.registry)
    log.info(
        "modelseal operator starting",
        extra={
            "metrics_port": settings.operator_metrics_port,
            "health_port": settings.operator_health_port,
            "namespaces": settings.namespaces or "all",
            "vault_addr": settings.vault_addr,
        },
    )
    try:
        asyncio.run(operate(settings, metrics=metrics))
    finally:
        server.shutdown()
        if isinstance(thread, threading.Thread):
            thread.join(timeout=5)
