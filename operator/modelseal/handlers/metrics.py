"""Prometheus metrics of the operator (own registry, served on operator_metrics_port)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from modelseal.k8s.api import WRITE_VERBS

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.reconciles = Counter(
            "modelseal_operator_reconciles_total",
            "Reconcile runs, by kind and result (ok, error).",
            ["kind", "result"],
            registry=r,
        )
        self.reconcile_seconds = Histogram(
            "modelseal_operator_reconcile_duration_seconds",
            "Time one reconcile takes.",
            ["kind"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.errors = Counter(
            "modelseal_operator_errors_total",
            "Reconcile errors, by kind and stage (kubernetes, vault, internal).",
            ["kind", "stage"],
            registry=r,
        )
        self.api_calls = Counter(
            "modelseal_operator_api_calls_total",
            "Kubernetes API calls made by the reconciler, by verb, kind and HTTP code.",
            ["verb", "kind", "code"],
            registry=r,
        )
        self.watch_restarts = Counter(
            "modelseal_operator_watch_restarts_total",
            "The operator's own watches started over, by kind and why (expired: listed "
            "again; failed: the connection or the server failed, resumed after a pause).",
            ["kind", "reason"],
            registry=r,
        )
        self.api_writes = Counter(
            "modelseal_operator_api_writes_total",
            "Kubernetes API write calls (POST, PUT, PATCH, DELETE) made by the reconciler.",
            ["verb", "kind"],
            registry=r,
        )
        self.vault_seconds = Histogram(
            "modelseal_operator_vault_call_duration_seconds",
            "Latency of the operator's Vault operations.",
            ["op"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.vault_errors = Counter(
            "modelseal_operator_vault_errors_total",
            "Failed Vault operations, by operation and kind of failure.",
            ["op", "error"],
            registry=r,
        )
        self.vault_writes = Counter(
            "modelseal_operator_vault_writes_total",
            "Vault policy/role writes and deletes.",
            ["what"],
            registry=r,
        )
        self.drift_repairs = Counter(
            "modelseal_operator_drift_repairs_total",
            "Owned objects put back after someone changed them.",
            ["kind"],
            registry=r,
        )
        self.license_decisions = Counter(
            "modelseal_operator_license_decisions_total",
            "License decisions that changed a model's LicenseValid condition, by reason.",
            ["reason"],
            registry=r,
        )
        self.models = Gauge(
            "modelseal_operator_models",
            "ProtectedModels by condition type and status.",
            ["condition", "status"],
            registry=r,
        )
        self.wakeups = Counter(
            "modelseal_operator_wakeups_total",
            "Requests for a reconcile, by what asked: the object's own watch event, an "
            "event of an owned kind or of a workload running as a model's account "
            "(identity), a controller (a license re-evaluating its models; `seats` when seats "
            "moved between a license's models), the resync.",
            ["source"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "modelseal_operator_queue_depth",
            "Objects waiting for or in a reconcile.",
            registry=r,
        )

    def api_call(self, verb: str, kind: str, code: int) -> None:
        self.api_calls.labels(verb, kind, str(code)).inc()
        if verb in WRITE_VERBS:
            self.api_writes.labels(verb, kind).inc()
