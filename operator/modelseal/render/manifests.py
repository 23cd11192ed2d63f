"""Every Kubernetes object of one ProtectedModel, as plain dicts. Pure: no I/O.

The Pod (one image for the Modelseal roles, plus Triton):

* ``unsealer`` — native sidecar (init container, ``restartPolicy: Always``): logs in to
  Vault with a projected ServiceAccount token (audience ``settings.vault_token_audience``),
  unwraps the bundle's data key through Transit, verifies and decrypts the bundle into the
  memory-backed ``models`` volume, then stays up (revocation watch, model unload). Its
  startup probe holds Triton back until the model is in place. The memory volume is
  charged to it, so its memory limit is the model size plus ``unsealer_memory_mib``.
* ``triton`` — listens on 127.0.0.1 only (HTTP, gRPC, metrics), explicit model control,
  the model directory mounted read-only, model-repository/shared-memory/trace/logging APIs
  restricted by a per-model token only the unsealer also has; started through
  ``/bin/sh -c 'ulimit -c 0 && exec ...'`` so that it never dumps core (docs/node-requirements.md).
* ``gateway`` — the only exposed ports (HTTP, gRPC, metrics); reads the license ConfigMap
  and the API keys Secret; with ``quotaStore: redis`` and ``settings.redis_auth_secret``
  set, also the quota Redis user and password, as files from the ``<model>-redis-auth``
  Secret (`redis_auth_secret`; never in env, args or the ConfigMap); with a usage export
  token (``settings.usage_export_token_secret``), that token as a file from the
  ``<model>-usage-export`` Secret (`usage_export_secret`). Only the gateway mounts them.

Every field the API server would default is rendered explicitly, so that a rendered object
compares equal to what the server returns (see `modelseal.render.compare`).

The code is split by concern, and this module names it all (every caller imports from
here): ``pod_base`` (names, ports, metadata, defaults), ``containers`` (the three
containers and their settings), ``pod`` (Pod template and Deployment) and ``resources``
(ServiceAccount, Service, NetworkPolicy, license ConfigMap, the Secrets).
"""

from __future__ import annotations

from modelseal.render.containers import (
    gateway_env,
    needs_redis_auth,
    needs_usage_token,
    triton_args,
    unsealer_env,
    usage_spool_file,
)
from modelseal.render.pod import (
    deployment,
    pod_template,
    template_hash,
)
from modelseal.render.pod_base import (
    AUDIT_KEY_KEY,
    AUDIT_KEY_MOUNT,
    AUDIT_KEY_VOLUME,
    AUDIT_STATE_FILE,
    CONTROL_HEADER,
    CONTROL_MOUNT,
    CONTROL_TOKEN_KEY,
    CORE_DUMPS_OFF,
    MODELS_VOLUME,
    REDIS_AUTH_KEYS,
    REDIS_AUTH_MOUNT,
    REDIS_AUTH_VOLUME,
    REDIS_PASSWORD_KEY,
    REDIS_USERNAME_KEY,
    RESTRICTED_GRPC_PROTOCOLS,
    RESTRICTED_HTTP_APIS,
    SEALED_MOUNT,
    SHM_BYTES,
    TMPFS_SLACK_BYTES,
    TOKEN_VOLUME,
    TRITON_COMMAND,
    TRITON_METRICS_PORT,
    TRUSTED_KEYS_KEY,
    USAGE_EXPORT_MOUNT,
    USAGE_EXPORT_VOLUME,
    USAGE_TOKEN_KEY,
    Json,
    Ports,
    ports,
    tmpfs_bytes,
)
from modelseal.render.resources import (
    control_secret,
    license_config_map,
    network_policy,
    redis_auth_secret,
    service,
    service_account,
    usage_export_secret,
)

__all__ = [
    "AUDIT_KEY_KEY",
    "AUDIT_KEY_MOUNT",
    "AUDIT_KEY_VOLUME",
    "AUDIT_STATE_FILE",
    "CONTROL_HEADER",
    "CONTROL_MOUNT",
    "CONTROL_TOKEN_KEY",
    "CORE_DUMPS_OFF",
    "MODELS_VOLUME",
    "REDIS_AUTH_KEYS",
    "REDIS_AUTH_MOUNT",
    "REDIS_AUTH_VOLUME",
    "REDIS_PASSWORD_KEY",
    "REDIS_USERNAME_KEY",
    "RESTRICTED_GRPC_PROTOCOLS",
    "RESTRICTED_HTTP_APIS",
    "SEALED_MOUNT",
    "SHM_BYTES",
    "TMPFS_SLACK_BYTES",
    "TOKEN_VOLUME",
    "TRITON_COMMAND",
    "TRITON_METRICS_PORT",
    "TRUSTED_KEYS_KEY",
    "USAGE_EXPORT_MOUNT",
    "USAGE_EXPORT_VOLUME",
    "USAGE_TOKEN_KEY",
    "Json",
    "Ports",
    "control_secret",
    "deployment",
    "gateway_env",
    "license_config_map",
    "needs_redis_auth",
    "needs_usage_token",
    "network_policy",
    "pod_template",
    "ports",
    "redis_auth_secret",
    "service",
    "service_account",
    "template_hash",
    "tmpfs_bytes",
    "triton_args",
    "unsealer_env",
    "usage_export_secret",
    "usage_spool_file",
]
