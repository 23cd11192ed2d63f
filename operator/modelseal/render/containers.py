"""The model Pod's three containers (unsealer, Triton, gateway) and their settings. Pure.

See ``modelseal.render.manifests`` for what each one does and why."""

from __future__ import annotations

import json
from pathlib import PurePosixPath

from modelseal.config import Settings
from modelseal.models.quantity import MIB, format_bytes, parse_quantity
from modelseal.models.spec import ModelSpec
from modelseal.render.names import (
    Names,
)
from modelseal.render.pod_base import (
    AUDIT_KEY_KEY,
    AUDIT_KEY_MOUNT,
    AUDIT_KEY_VOLUME,
    AUDIT_STATE_FILE,
    CONTROL_HEADER,
    CONTROL_MOUNT,
    CONTROL_TOKEN_KEY,
    MODELS_VOLUME,
    REDIS_AUTH_MOUNT,
    REDIS_AUTH_VOLUME,
    REDIS_PASSWORD_KEY,
    REDIS_USERNAME_KEY,
    RESTRICTED_GRPC_PROTOCOLS,
    RESTRICTED_HTTP_APIS,
    SEALED_MOUNT,
    TOKEN_VOLUME,
    TRITON_COMMAND,
    TRITON_METRICS_PORT,
    TRUSTED_KEYS_KEY,
    USAGE_EXPORT_MOUNT,
    USAGE_EXPORT_VOLUME,
    USAGE_TOKEN_KEY,
    Json,
    Ports,
    common_env,
    container_defaults,
    env_var,
    http_probe,
    restricted_security_context,
    tmpfs_bytes,
)


def _control_token_env(names: Names) -> Json:
    return {
        "name": "MODELSEAL_TRITON_CONTROL_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": names.control_secret, "key": CONTROL_TOKEN_KEY}},
    }


def unsealer_env(model: ModelSpec, settings: Settings, names: Names, p: Ports) -> list[Json]:
    """The unsealer's settings (`modelseal.unsealer.service`). The one place to adapt when
    the unsealer's contract moves."""
    src = model.source
    env = [
        *common_env(settings),
        env_var("MODELSEAL_VAULT_ADDR", settings.vault_addr),
        env_var("MODELSEAL_VAULT_KUBERNETES_MOUNT", settings.vault_kubernetes_mount),
        env_var("MODELSEAL_VAULT_TRANSIT_MOUNT", settings.vault_transit_mount),
        env_var("MODELSEAL_UNSEALER_VAULT_ROLE", names.vault_role),
        env_var("MODELSEAL_SERVICE_ACCOUNT_TOKEN_FILE", str(settings.service_account_token_file)),
        env_var("MODELSEAL_MODEL_DIR", str(settings.model_dir)),
        env_var("MODELSEAL_UNSEALER_REPOSITORY_SUBDIR", settings.unsealer_repository_subdir),
        env_var("MODELSEAL_UNSEALER_PORT", p.unsealer),
        env_var("MODELSEAL_UNSEAL_WORKERS", settings.unseal_workers),
        env_var("MODELSEAL_BUNDLE_URI", _local_uri(model)),
        env_var("MODELSEAL_BUNDLE_DIGEST", src.digest),
        env_var("MODELSEAL_BUNDLE_TRANSIT_KEY", model.transit_key),
        env_var("MODELSEAL_UNSEALER_TRITON_MODELS", json.dumps([model.model_name])),
        env_var("MODELSEAL_TRITON_HTTP_URL", f"http://127.0.0.1:{p.triton_http}"),
        # The license file it watches: on revocation or expiry it unloads and wipes.
        env_var("MODELSEAL_LICENSE_FILE", str(settings.license_file)),
        env_var("MODELSEAL_UNSEALER_CONTROL_TOKEN_FILE", f"{CONTROL_MOUNT}/{CONTROL_TOKEN_KEY}"),
    ]
    if src.publisher_keys:
        env.append(env_var("MODELSEAL_BUNDLE_TRUSTED_KEYS_FILE", _trusted_keys_path(settings)))
    if src.endpoint:
        env.append(env_var("MODELSEAL_UNSEALER_S3_ENDPOINT_URL", src.endpoint))
    if src.region:
        env.append(env_var("AWS_REGION", src.region))
    return env


def _trusted_keys_path(settings: Settings) -> str:
    return str(PurePosixPath(settings.license_file).parent / TRUSTED_KEYS_KEY)


def _local_uri(model: ModelSpec) -> str:
    """The bundle as the unsealer sees it: pvc:// becomes a file on the read-only mount."""
    src = model.source
    if src.scheme == "pvc":
        return f"file://{SEALED_MOUNT}/{src.pvc_path}"
    return src.uri


def unsealer_container(model: ModelSpec, settings: Settings, names: Names, p: Ports) -> Json:
    memory = format_bytes(
        settings.unsealer_memory_mib * MIB + tmpfs_bytes(model.source.plaintext_bytes)
    )
    token_dir = str(PurePosixPath(settings.service_account_token_file).parent)
    mounts: list[Json] = [
        {"name": MODELS_VOLUME, "mountPath": str(settings.model_dir)},
        {"name": TOKEN_VOLUME, "mountPath": token_dir, "readOnly": True},
        {
            "name": "license",
            "mountPath": str(PurePosixPath(settings.license_file).parent),
            "readOnly": True,
        },
        {"name": "control", "mountPath": CONTROL_MOUNT, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp", "subPath": "unsealer"},
    ]
    if model.source.scheme == "pvc":
        mounts.append({"name": "sealed", "mountPath": SEALED_MOUNT, "readOnly": True})
    container: Json = {
        "name": "unsealer",
        **container_defaults(settings.image),
        "command": ["python", "-m", "modelseal"],
        "args": ["unsealer"],
        "restartPolicy": "Always",
        "env": unsealer_env(model, settings, names, p),
        "ports": [{"name": "unsealer", "containerPort": p.unsealer, "protocol": "TCP"}],
        # Startup: until the model is decrypted into memory (Triton starts only after).
        "startupProbe": http_probe(
            "/readyz", "unsealer", 2, max(1, settings.unseal_timeout_s // 2)
        ),
        "readinessProbe": http_probe("/readyz", "unsealer", 10, 3),
        "livenessProbe": http_probe("/healthz", "unsealer", 20, 3),
        "resources": {
            "requests": {"cpu": "100m", "memory": memory},
            "limits": {"memory": memory},
        },
        "securityContext": restricted_security_context(settings),
        "volumeMounts": mounts,
    }
    if model.source.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": model.source.credentials_secret}}]
    return container


def triton_args(model: ModelSpec, settings: Settings, p: Ports) -> list[str]:
    repository = PurePosixPath(settings.model_dir) / settings.unsealer_repository_subdir
    return [
        f"--model-repository={repository}",
        "--model-control-mode=explicit",
        f"--load-model={model.model_name}",
        "--exit-on-error=true",
        "--strict-readiness=true",
        "--http-address=127.0.0.1",
        f"--http-port={p.triton_http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={p.triton_grpc}",
        "--allow-metrics=true",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={TRITON_METRICS_PORT}",
        f"--http-restricted-api={RESTRICTED_HTTP_APIS}:{CONTROL_HEADER}="
        "$(MODELSEAL_TRITON_CONTROL_TOKEN)",
        f"--grpc-restricted-protocol={RESTRICTED_GRPC_PROTOCOLS}:{CONTROL_HEADER}="
        "$(MODELSEAL_TRITON_CONTROL_TOKEN)",
    ]


def _quantities(values: dict[str, str | int]) -> dict[str, str]:
    """Requests/limits as written (the drift check compares quantities by value)."""
    for value in values.values():
        parse_quantity(value)  # the spec parser checked them; fail loudly if not
    return {key: str(value) for key, value in values.items()}


def triton_container(model: ModelSpec, settings: Settings, names: Names, p: Ports) -> Json:
    serving = model.serving
    requests = _quantities(dict(serving.requests))
    limits = _quantities(dict(serving.limits))
    if serving.gpus_per_replica:
        requests["nvidia.com/gpu"] = str(serving.gpus_per_replica)
        limits["nvidia.com/gpu"] = str(serving.gpus_per_replica)
    resources: Json = {}
    if requests:
        resources["requests"] = requests
    if limits:
        resources["limits"] = limits
    return {
        "name": "triton",
        **container_defaults(serving.triton_image or settings.triton_image),
        # Core dumps off before Triton starts (a dump would write the model's plaintext
        # weights to the node's disk): the shell sets RLIMIT_CORE to 0 (soft and hard, so
        # Triton cannot raise it) and execs Triton in its place, same PID, same args.
        "command": [*TRITON_COMMAND],
        "args": triton_args(model, settings, p),
        "env": [_control_token_env(names)],
        "resources": resources,
        "securityContext": restricted_security_context(settings),
        "volumeMounts": [
            {"name": MODELS_VOLUME, "mountPath": str(settings.model_dir), "readOnly": True},
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp", "subPath": "triton"},
        ],
    }


def usage_spool_file(settings: Settings) -> str:
    """The gateway's audit file when usage is exported (modelseal.audit.usage)."""
    return str(PurePosixPath(settings.quota_state_dir) / "audit.jsonl")


def needs_redis_auth(model: ModelSpec, settings: Settings) -> bool:
    """Whether the model's gateway gets the quota Redis credentials (as files)."""
    return model.gateway.quota_store == "redis" and bool(settings.redis_auth_secret)


def needs_usage_token(settings: Settings) -> bool:
    """Whether the gateway gets the usage export's bearer token (as a file)."""
    return bool(settings.usage_export_url and settings.usage_export_token_secret)


def gateway_env(model: ModelSpec, settings: Settings, p: Ports) -> list[Json]:
    """The gateway's settings. The one place to adapt when the gateway's contract moves."""
    env = [
        *common_env(settings),
        env_var("MODELSEAL_GATEWAY_HTTP_PORT", p.gateway_http),
        env_var("MODELSEAL_GATEWAY_GRPC_PORT", p.gateway_grpc),
        env_var("MODELSEAL_GATEWAY_METRICS_PORT", p.gateway_metrics),
        env_var("MODELSEAL_TRITON_HTTP_URL", f"http://127.0.0.1:{p.triton_http}"),
        env_var("MODELSEAL_TRITON_GRPC_URL", f"127.0.0.1:{p.triton_grpc}"),
        env_var("MODELSEAL_LICENSE_FILE", str(settings.license_file)),
        env_var("MODELSEAL_API_KEYS_FILE", str(settings.api_keys_file)),
        env_var("MODELSEAL_QUOTA_STORE", model.gateway.quota_store),
        env_var("MODELSEAL_QUOTA_STATE_DIR", str(settings.quota_state_dir)),
        env_var("MODELSEAL_MAX_REQUEST_BYTES", settings.max_request_bytes),
        env_var(
            "MODELSEAL_AUDIT_SINK", "file" if settings.usage_export_url else settings.audit_sink
        ),
        {
            "name": "MODELSEAL_GATEWAY_INSTANCE",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        },
    ]
    if model.gateway.quota_store == "redis" and model.gateway.redis_url:
        env.append(env_var("MODELSEAL_REDIS_URL", model.gateway.redis_url))
    if needs_redis_auth(model, settings):
        # File names only: the values stay in the mounted Secret.
        env.append(
            env_var("MODELSEAL_REDIS_USERNAME_FILE", f"{REDIS_AUTH_MOUNT}/{REDIS_USERNAME_KEY}")
        )
        env.append(
            env_var("MODELSEAL_REDIS_PASSWORD_FILE", f"{REDIS_AUTH_MOUNT}/{REDIS_PASSWORD_KEY}")
        )
    if settings.audit_sink == "webhook" and settings.audit_webhook_url:
        env.append(env_var("MODELSEAL_AUDIT_WEBHOOK_URL", settings.audit_webhook_url))
    env.append(env_var("MODELSEAL_AUDIT_HMAC_KEY_FILE", f"{AUDIT_KEY_MOUNT}/{AUDIT_KEY_KEY}"))
    env.append(env_var("MODELSEAL_AUDIT_STATE_FILE", AUDIT_STATE_FILE))
    if settings.usage_export_url:
        # Usage is exported from the audit file (the spool): on the quota-state volume,
        # the model's claim when it has one, so that it outlives the Pod.
        env.append(env_var("MODELSEAL_AUDIT_FILE", usage_spool_file(settings)))
        env.append(env_var("MODELSEAL_USAGE_EXPORT_URL", settings.usage_export_url))
        if needs_usage_token(settings):
            # The file's name only: the token stays in the mounted Secret.
            env.append(
                env_var(
                    "MODELSEAL_USAGE_EXPORT_TOKEN_FILE", f"{USAGE_EXPORT_MOUNT}/{USAGE_TOKEN_KEY}"
                )
            )
    return env


def gateway_container(model: ModelSpec, settings: Settings, p: Ports) -> Json:
    license_dir = str(PurePosixPath(settings.license_file).parent)
    keys_dir = str(PurePosixPath(settings.api_keys_file).parent)
    mounts: list[Json] = [
        {"name": "license", "mountPath": license_dir, "readOnly": True},
        {"name": "api-keys", "mountPath": keys_dir, "readOnly": True},
        {"name": "quota-state", "mountPath": str(settings.quota_state_dir)},
        {"name": "tmp", "mountPath": "/tmp", "subPath": "gateway"},
        {"name": AUDIT_KEY_VOLUME, "mountPath": AUDIT_KEY_MOUNT, "readOnly": True},
    ]
    if needs_redis_auth(model, settings):
        mounts.append({"name": REDIS_AUTH_VOLUME, "mountPath": REDIS_AUTH_MOUNT, "readOnly": True})
    if needs_usage_token(settings):
        mounts.append(
            {"name": USAGE_EXPORT_VOLUME, "mountPath": USAGE_EXPORT_MOUNT, "readOnly": True}
        )
    return {
        "name": "gateway",
        **container_defaults(settings.image),
        "command": ["python", "-m", "modelseal"],
        "args": ["gateway"],
        "env": gateway_env(model, settings, p),
        "ports": [
            {"name": "http", "containerPort": p.gateway_http, "protocol": "TCP"},
            {"name": "grpc", "containerPort": p.gateway_grpc, "protocol": "TCP"},
            {"name": "metrics", "containerPort": p.gateway_metrics, "protocol": "TCP"},
        ],
        # The gateway's /readyz covers the license file, the keys file and Triton's readiness.
        "readinessProbe": http_probe("/readyz", "metrics", 5, 3),
        "livenessProbe": http_probe("/healthz", "metrics", 10, 6, delay=10),
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": restricted_security_context(settings),
        "volumeMounts": mounts,
    }
