"""The one typed settings object, read from `MODELSEAL_*` environment variables.

Every role (operator, unsealer, gateway, CLI) reads the same object and uses its own
section; the Helm chart passes these through as env vars. Each field is documented by its
description, which `modelseal config --help`-style tooling and the chart's values.yaml
repeat. Secrets are never settings: a setting may name a *file* holding a secret.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# Header that Triton's restricted APIs (model repository, shared memory, ...) require in a
# model pod; the operator renders Triton with it and the unsealer sends it to unload.
TRITON_CONTROL_HEADER = "x-modelseal-control"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MODELSEAL_", extra="ignore", frozen=True)

    # --- common -------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Log level of every role; logs are JSON lines on stderr."
    )
    api_group: str = Field(
        "modelseal.io",
        description="API group of the custom resources; also the prefix of kopf's finalizer "
        "and annotations.",
    )

    # --- Vault --------------------------------------------------------------------------
    vault_addr: str = Field("http://127.0.0.1:8200", description="Vault (or OpenBao) API address.")
    vault_token_file: Path | None = Field(
        None,
        description="File holding a Vault token (operator, development). When unset, roles "
        "log in with Kubernetes auth.",
    )
    vault_kubernetes_mount: str = Field(
        "kubernetes", description="Mount path of Vault's Kubernetes auth method."
    )
    vault_transit_mount: str = Field("transit", description="Mount path of the Transit engine.")
    vault_ca_file: Path | None = Field(
        None, description="CA bundle to verify Vault's TLS certificate."
    )
    vault_policy_prefix: str = Field(
        "modelseal", description="Prefix of the Vault policies and roles the operator creates."
    )
    vault_role_token_ttl: str = Field(
        "10m", description="TTL of the Vault tokens issued to a model's unsealer."
    )
    service_account_token_file: Path = Field(
        Path("/var/run/secrets/modelseal/token"),
        description="Projected ServiceAccount token the unsealer logs in to Vault with.",
    )

    # --- operator -----------------------------------------------------------------------
    namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces the operator watches; empty means the whole cluster.",
    )
    operator_health_port: int = Field(8080, description="Operator liveness/readiness port.")
    operator_metrics_port: int = Field(9090, description="Operator Prometheus metrics port.")
    expiry_check_interval_s: float = Field(
        60.0, description="How often the operator re-checks licenses for expiry (seconds)."
    )
    resync_interval_s: float = Field(
        300.0,
        description="How often the operator re-checks owned objects for drift (seconds).",
    )
    # Concurrency bounds (issue 13 §3, `make bench-operator`): the operator never floods
    # the API server or Vault, however many objects change at once.
    operator_workers: int = Field(
        4,
        ge=1,
        le=64,
        description="Reconciles that run at once (the work queue's workers); more objects "
        "wait in the queue, one entry each.",
    )
    operator_api_concurrency: int = Field(
        8,
        ge=1,
        le=64,
        description="Kubernetes calls the reconciler has in flight at once (the "
        "connections of its client; more wait for one), and likewise Vault calls (the "
        "thread pool its Vault client runs in).",
    )
    operator_coalesce_s: float = Field(
        0.5,
        ge=0.0,
        le=30.0,
        description="Events about one object within this many seconds fold into one "
        "reconcile (a new model's finalizer, Deployment, ReplicaSet and Pod events come in "
        "a burst); the delay a change waits before it is acted on.",
    )
    operator_kopf_worker_limit: int = Field(
        128,
        ge=1,
        description="kopf's per-object event workers at once, per watched resource "
        "(kopf's own default is unbounded: one task per object that has events). kopf "
        "watches only ProtectedModels and ModelLicenses; events of objects waiting for a "
        "worker are held whole in memory.",
    )
    quota_require_durable_state: bool = Field(
        False,
        description="Refuse a model with quotaStore embedded and no "
        "gateway.quotaStateClaimName when its license counts per day, per month or a "
        "total: its counters would live in an emptyDir that deleting the Pod resets "
        "(the chart turns this on).",
    )
    usage_status_interval_s: float = Field(
        30.0,
        gt=0,
        description="Least time between two writes of one ModelLicense's status.usage "
        "request figures (read from the quota store); a write happens only when a figure "
        "changed, so N licenses cause at most N writes per interval.",
    )
    image: str = Field(
        "ghcr.io/modelseal/modelseal:0.1.0",
        description="Image that runs the unsealer and gateway roles in model pods.",
    )
    triton_image: str = Field(
        "nvcr.io/nvidia/tritonserver:24.08-py3",
        description="Default Triton image when a ProtectedModel does not name one.",
    )
    operator_vault_role: str = Field(
        "modelseal-operator",
        description="Kubernetes-auth role the operator logs in to Vault with when "
        "vault_token_file is unset.",
    )
    operator_token_file: Path = Field(
        Path("/var/run/secrets/kubernetes.io/serviceaccount/token"),
        description="ServiceAccount token the operator logs in to Vault with (Kubernetes auth).",
    )
    vault_token_audience: str = Field(
        "vault",
        description="Audience of the projected ServiceAccount token in model pods; the "
        "model's Vault role accepts only this audience.",
    )
    unsealer_memory_mib: int = Field(
        256,
        description="Memory of the unsealer container besides the decrypted model; the "
        "in-memory model volume is charged to it, so its limit is this plus the model size.",
    )
    unseal_timeout_s: int = Field(
        1800,
        description="How long a model pod's unsealer may take to fetch, verify and decrypt "
        "the bundle before its startup probe gives up.",
    )
    run_as_user: int = Field(
        1000, description="UID (and GID) every container of a model pod runs as."
    )
    tenancy_file: Path | None = Field(
        None,
        description="JSON file (the chart's tenancy ConfigMap) declaring which Transit keys "
        "and Triton images each namespace's ProtectedModels may use; a model that uses "
        "others gets no Pods and no Vault access (condition NotAllowedInNamespace). Unset: "
        "no restriction (development only).",
    )
    model_namespace_label: str = Field(
        "",
        description="A key=value label a namespace must carry for the operator to serve "
        "models there (the chart sets rbac.modelNamespaceLabel when the operator watches the "
        "whole cluster; its admission policy refuses the operator's writes elsewhere). A "
        "model in a namespace without it reports NotAllowedInNamespace. Empty: any.",
    )
    redis_auth_secret: str = Field(
        "",
        description="Secret holding 'username' and 'password' of the quota Redis (the "
        "chart's <release>-modelseal-redis-auth), read by name in "
        "redis_auth_secret_namespace. For every model with quotaStore redis the operator "
        "copies the two keys into a Secret it owns in the model's namespace "
        "(<model>-redis-auth) and mounts it into the gateway container only, as the files "
        "named by redis_username_file and redis_password_file. Empty: no credentials are "
        "rendered (a Redis without auth).",
    )
    redis_auth_secret_namespace: str = Field(
        "",
        description="Namespace of redis_auth_secret (the chart passes its release "
        "namespace, where the operator runs). Required when redis_auth_secret is set.",
    )
    operator_pod_namespace: str = Field(
        "",
        description="Namespace of the operator's Pods (the chart passes its release "
        "namespace). With operator_pod_labels, a model whose ingressFrom limits who reaches "
        "it still admits the operator on its gateway's metrics port, where the operator "
        "reads the embedded store's counters (GET /usage) for the license's status.",
    )
    operator_pod_labels: dict[str, str] = Field(
        default_factory=dict,
        description="Labels of the operator's Pods (JSON object; the chart passes its "
        "selector labels), for the NetworkPolicy rule described at operator_pod_namespace.",
    )
    usage_export_token_secret: str = Field(
        "",
        description="Secret (in usage_export_token_secret_namespace) holding the bearer "
        "token for usage_export_url under the key 'token'. The operator copies it into a "
        "Secret it owns in each model's namespace (<model>-usage-export) and mounts it into "
        "the gateway container only, as the file usage_export_token_file; never an "
        "environment value. Empty: the export sends no token.",
    )
    usage_export_token_secret_namespace: str = Field(
        "",
        description="Namespace of usage_export_token_secret (the chart passes its release "
        "namespace).",
    )

    # --- unsealer -----------------------------------------------------------------------
    model_dir: Path = Field(
        Path("/models"), description="Where the unsealer publishes the decrypted model."
    )
    allow_non_tmpfs: bool = Field(
        False,
        description="Development only: let the unsealer write to a target that is not tmpfs.",
    )
    unseal_workers: int = Field(0, description="Parallel decryption workers; 0 means one per CPU.")
    unsealer_port: int = Field(8081, description="Unsealer readiness/control port.")
    unsealer_bind_address: str = Field(
        "0.0.0.0",
        description="Address the unsealer's readiness/control server listens on.",
    )
    bundle_uri: str = Field(
        "",
        description="Where the sealed bundle is: file:///path, a mounted path, "
        "https://host/path or s3://bucket/key.",
    )
    bundle_digest: str = Field(
        "",
        description="Pinned bundle digest ('blake3tree:<64 hex>' or 'sha256tree:<64 hex>'); "
        "the unsealer refuses "
        "any other bundle. Required.",
    )
    bundle_transit_key: str = Field(
        "",
        description="Transit key this model's unsealer may use; a bundle wrapped by another "
        "key is refused. Empty: the key the bundle names.",
    )
    bundle_trusted_keys_file: Path | None = Field(
        None,
        description="PEM file of publisher Ed25519 public keys; when set, the bundle must carry "
        "a valid signature by one of them.",
    )
    unsealer_vault_role: str = Field(
        "",
        description="Vault Kubernetes-auth role of this model (when vault_token_file is unset); "
        "the JWT is service_account_token_file.",
    )
    unsealer_repository_subdir: str = Field(
        "repository",
        description="Folder under model_dir the model is published as (Triton's "
        "--model-repository is model_dir/<this>).",
    )
    unsealer_ready_marker: str = Field(
        ".modelseal-ready",
        description="File under model_dir written (JSON: digest, sizes, time) once the model "
        "is published; removed on revocation.",
    )
    unsealer_license_file: Path | None = Field(
        None,
        description="License file the unsealer watches for revocation/expiry; unset means "
        "license_file (the gateway's).",
    )
    unsealer_license_poll_s: float = Field(
        2.0, description="How often the unsealer re-reads the license file (seconds)."
    )
    unsealer_control_token_file: Path | None = Field(
        None,
        description="File with a bearer token required by POST /revoke; unset: no token "
        "(restrict the port with the NetworkPolicy).",
    )
    unsealer_triton_models: list[str] = Field(
        default_factory=list,
        description="Triton model names to unload on revocation; empty: the bundle's top-level "
        "folders.",
    )
    unsealer_source_timeout_s: float = Field(
        30.0, description="A bundle source that sends nothing for this long fails (seconds)."
    )
    unsealer_source_ca_file: Path | None = Field(
        None, description="CA bundle for https:// bundle sources."
    )
    unsealer_s3_endpoint_url: str = Field(
        "", description="S3 endpoint for s3:// sources (empty: AWS, or $AWS_ENDPOINT_URL)."
    )
    unsealer_allow_http_source: bool = Field(
        False, description="Development only: allow plain http:// bundle sources."
    )

    # --- gateway ------------------------------------------------------------------------
    gateway_http_port: int = Field(8000, description="Gateway KServe v2 HTTP port.")
    gateway_grpc_port: int = Field(8001, description="Gateway KServe v2 gRPC port.")
    gateway_metrics_port: int = Field(8002, description="Gateway Prometheus metrics port.")
    triton_http_url: str = Field(
        "http://127.0.0.1:8100", description="Triton's HTTP endpoint (loopback only)."
    )
    triton_grpc_url: str = Field(
        "127.0.0.1:8101", description="Triton's gRPC endpoint (loopback only)."
    )
    quota_store: Literal["embedded", "redis"] = Field(
        "embedded",
        description="Counter store: 'embedded' (one replica, file-backed) or 'redis' (shared).",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL for quotas.")
    quota_state_dir: Path = Field(
        Path("/var/lib/modelseal/quota"),
        description="Folder of the embedded counter store (mount a PVC to survive rescheduling).",
    )
    license_file: Path = Field(
        Path("/etc/modelseal/license/license.json"),
        description="License and quota settings rendered by the operator (ConfigMap mount).",
    )
    api_keys_file: Path = Field(
        Path("/etc/modelseal/apikeys/keys.json"),
        description="Hashed consumer API keys (Secret mount); reloaded when it changes.",
    )
    max_request_bytes: int = Field(
        16 * 1024 * 1024, description="Largest request body the gateway accepts."
    )
    audit_sink: Literal["stdout", "file", "webhook"] = Field(
        "stdout", description="Where audit records go."
    )
    audit_file: Path = Field(
        Path("/var/log/modelseal/audit.jsonl"), description="Audit file for the 'file' sink."
    )
    audit_webhook_url: str = Field("", description="Audit webhook URL for the 'webhook' sink.")
    audit_hmac_key_file: Path | None = Field(
        None, description="File holding the HMAC key that signs audit checkpoints."
    )
    audit_checkpoint_every: int = Field(
        100, description="Records between signed audit checkpoints."
    )
    audit_checkpoint_interval_s: float = Field(
        60.0,
        gt=0,
        description="Seconds between time checkpoints (also when idle): the age of a log's "
        "last checkpoint tells a stopped or truncated log from a running one.",
    )
    audit_state_file: Path | None = Field(
        None,
        description="Where the gateway keeps the last audit line its sink accepted (in a "
        "volume that outlives the container), so that after a restart the new chain links "
        "to it: for sinks that cannot be read back (stdout, webhook).",
    )
    audit_queue_size: int = Field(10000, description="Bounded audit queue length.")
    usage_export_url: str = Field(
        "",
        description="HTTP endpoint that receives metered usage as CloudEvents (JSON batch "
        "mode), one per admitted request, delivered at least once from the gateway's audit "
        "file (needs audit_sink=file; see modelseal.audit.usage). Empty: no export. The "
        "operator passes it to every model's gateway.",
    )
    usage_export_token_file: Path | None = Field(
        None, description="File holding a bearer token for usage_export_url (from a Secret)."
    )
    usage_export_batch_max: int = Field(500, ge=1, description="Most events per POST.")
    usage_export_interval_s: float = Field(
        1.0, gt=0, description="How often the gateway looks for new usage in its audit file."
    )
    usage_export_retry_max_s: float = Field(
        60.0, gt=0, description="Longest wait between two delivery attempts (back-off cap)."
    )
    usage_export_timeout_s: float = Field(10.0, gt=0, description="Timeout of one POST.")
    usage_export_drain_s: float = Field(
        5.0,
        ge=0,
        description="On shutdown, how long the gateway still tries to deliver what is left "
        "(the rest is sent after its next start).",
    )
    audit_overflow_policy: Literal["block", "reject"] = Field(
        "block",
        description="When the audit queue is full: block requests until there is room, "
        "or reject them with 503.",
    )
    audit_webhook_token_file: Path | None = Field(
        default=None, description="File holding a bearer token the webhook sink sends."
    )
    audit_batch_max: int = Field(default=512, description="Most audit records per sink write.")
    gateway_host: str = Field(default="0.0.0.0", description="Address the gateway's ports bind to.")
    gateway_instance: str = Field(
        default="",
        description="Name of this gateway in audit records; empty means the host name.",
    )
    gateway_body_timeout_s: float = Field(
        default=10.0,
        description="Time a client has to send a request body (slow clients get 408).",
    )
    gateway_header_timeout_s: float = Field(
        default=10.0,
        description="Time a client has to send a request's headers, from their first byte "
        "(then 408, audited, connection closed).",
    )
    gateway_workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Gateway worker processes sharing the HTTP and gRPC ports (SO_REUSEPORT). "
        "More than one needs quota_store=redis and an audit sink other than stdout.",
    )
    gateway_idle_timeout_s: float = Field(
        default=75.0,
        description="Idle keep-alive connections are closed after this many seconds.",
    )
    gateway_upstream_timeout_s: float = Field(
        default=60.0, description="Longest wait for Triton's answer (then 504)."
    )
    gateway_upstream_connections: int = Field(
        default=256, description="Most pooled connections to Triton's HTTP endpoint."
    )
    gateway_reload_interval_s: float = Field(
        default=1.0,
        description="How often the license and API keys files are checked for changes.",
    )
    gateway_metadata_ttl_s: float = Field(
        default=30.0, description="How long model metadata from Triton is cached."
    )
    redis_password_file: Path | None = Field(
        default=None,
        description="File holding the Redis password, mounted from a Secret (never in "
        "redis_url, the environment or arguments: a redis_url with a password is refused).",
    )
    redis_username_file: Path | None = Field(
        default=None,
        description="File holding the Redis ACL user name (with redis_password_file; "
        "unset: Redis' default user).",
    )
    redis_key_prefix: str = Field(
        default="modelseal", description="Prefix of the gateway's Redis keys."
    )
    redis_timeout_s: float = Field(
        default=1.0,
        description="Redis connect and call timeout; past it the gateway answers 503.",
    )
    quota_lease_s: float = Field(
        default=120.0,
        description="Redis concurrency slots held by a gateway that died expire after this.",
    )
    quota_fsync_interval_s: float = Field(
        default=1.0, description="How often the embedded store's journal is fsync-ed."
    )

    @model_validator(mode="after")
    def _redis_auth_namespaced(self) -> Settings:
        if self.redis_auth_secret and not self.redis_auth_secret_namespace:
            raise ValueError("redis_auth_secret needs redis_auth_secret_namespace")
        if self.usage_export_token_secret and not self.usage_export_token_secret_namespace:
            raise ValueError("usage_export_token_secret needs usage_export_token_secret_namespace")
        return self


def load_settings() -> Settings:
    """Read settings from the environment (tests build `Settings(...)` directly)."""
    return Settings()
