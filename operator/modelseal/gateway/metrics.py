"""The gateway's Prometheus metrics (its own registry, served on the metrics port).

* ``modelseal_gateway_requests_total{tenant,model,code,protocol}``
* ``modelseal_gateway_quota_rejections_total{tenant,model,limit}``
* ``modelseal_gateway_quota_refunds_total{tenant,model}``
* ``modelseal_gateway_overhead_seconds{protocol}``: time spent in the gateway itself
  (total latency minus upstream time)
* ``modelseal_gateway_upstream_seconds{protocol}``: time waiting for Triton
* ``modelseal_gateway_quota_remaining{tenant,model,limit}``: what the last decision left
  (``tokens``, ``per_day``, ``per_month``, ``total``; -1 = unlimited)
* ``modelseal_gateway_store_errors_total{store}``, ``modelseal_gateway_store_up{store}``
* ``modelseal_gateway_audit_queue_depth``, ``modelseal_gateway_audit_records_total``,
  ``modelseal_gateway_audit_overflow_total{policy}``,
  ``modelseal_gateway_audit_sink_errors_total{sink}``
* ``modelseal_gateway_auth_failures_total``
* ``modelseal_gateway_config_state{file}`` (1 loaded, 0 refused or missing),
  ``modelseal_gateway_config_reloads_total{file,result}``
* ``modelseal_gateway_output_policy_dropped_total{tenant,model}``: outputs withheld
* ``modelseal_gateway_usage_events_delivered_total``,
  ``modelseal_gateway_usage_export_failures_total``,
  ``modelseal_gateway_usage_export_backlog_bytes``: the usage export (when configured)

Every label value comes from a bounded set: ``tenant`` from the keys file (empty before
authentication), ``model`` only from the models the loaded licenses name (any other name a
request carries is counted as ``unknown``; see ``Gateway.model_label``), codes, protocols,
limits and file names from the gateway's own lists.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        p = "modelseal_gateway_"
        self.requests = Counter(
            p + "requests",
            "Requests by tenant, model and status code.",
            ["tenant", "model", "code", "protocol"],
            registry=r,
        )
        self.quota_rejections = Counter(
            p + "quota_rejections",
            "Requests refused by a quota, by limit.",
            ["tenant", "model", "limit"],
            registry=r,
        )
        self.quota_refunds = Counter(
            p + "quota_refunds",
            "Admitted requests given back their quota: Triton could not be connected to.",
            ["tenant", "model"],
            registry=r,
        )
        self.overhead = Histogram(
            p + "overhead_seconds",
            "Time spent in the gateway (latency minus upstream).",
            ["protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.upstream = Histogram(
            p + "upstream_seconds",
            "Time waiting for Triton.",
            ["protocol"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.remaining = Gauge(
            p + "quota_remaining",
            "Quota left after the last decision (-1 = unlimited).",
            ["tenant", "model", "limit"],
            registry=r,
        )
        self.store_errors = Counter(
            p + "store_errors",
            "Counter store errors (requests refused with 503).",
            ["store"],
            registry=r,
        )
        self.store_up = Gauge(
            p + "store_up", "1 when the last store call worked.", ["store"], registry=r
        )
        self.audit_depth = Gauge(
            p + "audit_queue_depth", "Audit records queued or reserved.", registry=r
        )
        self.audit_records = Counter(
            p + "audit_records", "Audit records handed to the sink.", registry=r
        )
        self.audit_overflow = Counter(
            p + "audit_overflow",
            "Requests that found the audit queue full, by policy.",
            ["policy"],
            registry=r,
        )
        self.audit_sink_errors = Counter(
            p + "audit_sink_errors", "Failed audit sink writes (retried).", ["sink"], registry=r
        )
        self.auth_failures = Counter(p + "auth_failures", "Requests refused with 401.", registry=r)
        self.config_state = Gauge(
            p + "config_state",
            "1 when the file is loaded, 0 when refused or missing.",
            ["file"],
            registry=r,
        )
        self.config_reloads = Counter(
            p + "config_reloads",
            "Reloads of followed files, by result.",
            ["file", "result"],
            registry=r,
        )
        self.policy_dropped = Counter(
            p + "output_policy_dropped",
            "Outputs withheld by the output policy.",
            ["tenant", "model"],
            registry=r,
        )
        self.usage_delivered = Counter(
            p + "usage_events_delivered",
            "Usage CloudEvents acknowledged by the usage endpoint (re-sends included).",
            registry=r,
        )
        self.usage_failures = Counter(
            p + "usage_export_failures",
            "Usage deliveries that failed and are retried.",
            registry=r,
        )
        self.usage_backlog = Gauge(
            p + "usage_export_backlog_bytes",
            "Bytes of the audit file not yet delivered as usage events.",
            registry=r,
        )
