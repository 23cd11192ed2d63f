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
  Secret (`redis_auth_secret`; never in env, args or the ConfigMap). Only the gateway
  mounts it.

Every field the API server would default is rendered explicitly, so that a rendered object
compares equal to what the server returns (see `modelseal.render.compare`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from modelseal.config import TRITON_CONTROL_HEADER, Settings
from modelseal.models.quantity import MIB, format_bytes, parse_quantity, round_up_mib
from modelseal.models.spec import LicenseSpec, ModelSpec
from modelseal.render.license_config import license_config_data
from modelseal.render.names import (
    ANNOTATION_DIGEST,
    ANNOTATION_URI,
    LABEL_VERSION,
    Names,
    common_labels,
    names_for,
    owner_reference,
    selector_labels,
)

Json = dict[str, Any]

TRITON_METRICS_PORT = 8102
TOKEN_VOLUME = "vault-token"  # noqa: S105 - a volume name
MODELS_VOLUME = "models"
CONTROL_TOKEN_KEY = "token"  # noqa: S105 - a Secret key name
CONTROL_HEADER = TRITON_CONTROL_HEADER
#: Triton HTTP APIs only the unsealer may call (with the per-model control token).
RESTRICTED_HTTP_APIS = "model-repository,shared-memory,trace,logging"
RESTRICTED_GRPC_PROTOCOLS = "model-repository,shared-memory,trace,logging"
SEALED_MOUNT = "/sealed"
CONTROL_MOUNT = "/var/run/modelseal/control"
#: The gateway's audit checkpoint key: an item of the control Secret, mounted into the
#: gateway only (the unsealer's mount of that Secret holds the token alone).
AUDIT_KEY_KEY = "audit-hmac-key"
AUDIT_KEY_VOLUME = "audit-key"
AUDIT_KEY_MOUNT = "/var/run/modelseal/audit-key"
#: Where the gateway keeps its last audit chain point (the /tmp emptyDir outlives the
#: container), so that a restarted gateway's chain links to the one before.
AUDIT_STATE_FILE = "/tmp/audit-chain.json"  # the gateway's own emptyDir
REDIS_AUTH_VOLUME = "redis-auth"
REDIS_AUTH_MOUNT = "/var/run/modelseal/redis"
#: Keys of the quota Redis credentials, in the chart's Secret and in the model's copy.
REDIS_USERNAME_KEY = "username"
REDIS_PASSWORD_KEY = "password"  # noqa: S105 - a Secret key name
REDIS_AUTH_KEYS = (REDIS_USERNAME_KEY, REDIS_PASSWORD_KEY)
#: The usage export's bearer token: the key in the chart's Secret and in the model's copy,
#: mounted into the gateway only (``settings.usage_export_token_secret``).
USAGE_TOKEN_KEY = "token"  # noqa: S105 - a Secret key name
USAGE_EXPORT_VOLUME = "usage-export"
USAGE_EXPORT_MOUNT = "/var/run/modelseal/usage-export"
TRUSTED_KEYS_KEY = "trusted-keys"
TMPFS_SLACK_BYTES = 32 * MIB
SHM_BYTES = 256 * MIB
#: Triton's entrypoint: ``ulimit -c 0`` (RLIMIT_CORE soft and hard) and exec; "$0" is the
#: program, "$@" the container's args. The Kubernetes ``$(VAR)`` expansion leaves it alone.
CORE_DUMPS_OFF = 'ulimit -c 0 && exec "$0" "$@"'
TRITON_COMMAND = ("/bin/sh", "-c", CORE_DUMPS_OFF, "tritonserver")


@dataclass(frozen=True)
class Ports:
    triton_http: int
    triton_grpc: int
    gateway_http: int
    gateway_grpc: int
    gateway_metrics: int
    unsealer: int


def ports(settings: Settings) -> Ports:
    http = urlsplit(settings.triton_http_url).port or 8100
    grpc_text = settings.triton_grpc_url
    grpc = urlsplit(grpc_text if "//" in grpc_text else f"//{grpc_text}").port or 8101
    return Ports(
        triton_http=http,
        triton_grpc=grpc,
        gateway_http=settings.gateway_http_port,
        gateway_grpc=settings.gateway_grpc_port,
        gateway_metrics=settings.gateway_metrics_port,
        unsealer=settings.unsealer_port,
    )


def tmpfs_bytes(plaintext_bytes: int) -> int:
    """Size of the in-memory model volume: the model, 2% and 32 MiB of slack, whole MiB."""
    return round_up_mib(plaintext_bytes + plaintext_bytes // 50 + TMPFS_SLACK_BYTES)


def _meta(model: ModelSpec, name: str, extra_labels: dict[str, str] | None = None) -> Json:
    labels = common_labels(model)
    if extra_labels:
        labels.update(extra_labels)
    return {
        "name": name,
        "namespace": model.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(model)],
    }


def _restricted_security_context(settings: Settings) -> Json:
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": settings.run_as_user,
        "runAsGroup": settings.run_as_user,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(name: str, value: str | int) -> Json:
    return {"name": name, "value": str(value)}


def _http_probe(path: str, port: str | int, period: int, failures: int, delay: int = 0) -> Json:
    probe: Json = {
        "httpGet": {"path": path, "port": port, "scheme": "HTTP"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "successThreshold": 1,
        "failureThreshold": failures,
    }
    if delay:
        probe["initialDelaySeconds"] = delay
    return probe


def _container_defaults(image: str) -> Json:
    return {
        "image": image,
        "imagePullPolicy": "Always"
        if image.endswith(":latest") or ":" not in image.split("/")[-1]
        else "IfNotPresent",
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _common_env(settings: Settings) -> list[Json]:
    return [
        _env("MODELSEAL_LOG_LEVEL", settings.log_level),
        _env("MODELSEAL_API_GROUP", settings.api_group),
    ]


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
        *_common_env(settings),
        _env("MODELSEAL_VAULT_ADDR", settings.vault_addr),
        _env("MODELSEAL_VAULT_KUBERNETES_MOUNT", settings.vault_kubernetes_mount),
        _env("MODELSEAL_VAULT_TRANSIT_MOUNT", settings.vault_transit_mount),
        _env("MODELSEAL_UNSEALER_VAULT_ROLE", names.vault_role),
        _env("MODELSEAL_SERVICE_ACCOUNT_TOKEN_FILE", str(settings.service_account_token_file)),
        _env("MODELSEAL_MODEL_DIR", str(settings.model_dir)),
        _env("MODELSEAL_UNSEALER_REPOSITORY_SUBDIR", settings.unsealer_repository_subdir),
        _env("MODELSEAL_UNSEALER_PORT", p.unsealer),
        _env("MODELSEAL_UNSEAL_WORKERS", settings.unseal_workers),
        _env("MODELSEAL_BUNDLE_URI", _local_uri(model)),
        _env("MODELSEAL_BUNDLE_DIGEST", src.digest),
        _env("MODELSEAL_BUNDLE_TRANSIT_KEY", model.transit_key),
        _env("MODELSEAL_UNSEALER_TRITON_MODELS", json.dumps([model.model_name])),
        _env("MODELSEAL_TRITON_HTTP_URL", f"http://127.0.0.1:{p.triton_http}"),
        # The license file it watches: on revocation or expiry it unloads and wipes.
        _env("MODELSEAL_LICENSE_FILE", str(settings.license_file)),
        _env("MODELSEAL_UNSEALER_CONTROL_TOKEN_FILE", f"{CONTROL_MOUNT}/{CONTROL_TOKEN_KEY}"),
    ]
    if src.publisher_keys:
        env.append(_env("MODELSEAL_BUNDLE_TRUSTED_KEYS_FILE", _trusted_keys_path(settings)))
    if src.endpoint:
        env.append(_env("MODELSEAL_UNSEALER_S3_ENDPOINT_URL", src.endpoint))
    if src.region:
        env.append(_env("AWS_REGION", src.region))
    return env


def _trusted_keys_path(settings: Settings) -> str:
    return str(PurePosixPath(settings.license_file).parent / TRUSTED_KEYS_KEY)


def _local_uri(model: ModelSpec) -> str:
    """The bundle as the unsealer sees it: pvc:// becomes a file on the read-only mount."""
    src = model.source
    if src.scheme == "pvc":
        return f"file://{SEALED_MOUNT}/{src.pvc_path}"
    return src.uri


def _unsealer(model: ModelSpec, settings: Settings, names: Names, p: Ports) -> Json:
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
        **_container_defaults(settings.image),
        "command": ["python", "-m", "modelseal"],
        "args": ["unsealer"],
        "restartPolicy": "Always",
        "env": unsealer_env(model, settings, names, p),
        "ports": [{"name": "unsealer", "containerPort": p.unsealer, "protocol": "TCP"}],
        # Startup: until the model is decrypted into memory (Triton starts only after).
        "startupProbe": _http_probe(
            "/readyz", "unsealer", 2, max(1, settings.unseal_timeout_s // 2)
        ),
        "readinessProbe": _http_probe("/readyz", "unsealer", 10, 3),
        "livenessProbe": _http_probe("/healthz", "unsealer", 20, 3),
        "resources": {
            "requests": {"cpu": "100m", "memory": memory},
            "limits": {"memory": memory},
        },
        "securityContext": _restricted_security_context(settings),
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


def _triton(model: ModelSpec, settings: Settings, names: Names, p: Ports) -> Json:
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
        **_container_defaults(serving.triton_image or settings.triton_image),
        # Core dumps off before Triton starts (a dump would write the model's plaintext
        # weights to the node's disk): the shell sets RLIMIT_CORE to 0 (soft and hard, so
        # Triton cannot raise it) and execs Triton in its place, same PID, same args.
        "command": [*TRITON_COMMAND],
        "args": triton_args(model, settings, p),
        "env": [_control_token_env(names)],
        "resources": resources,
        "securityContext": _restricted_security_context(settings),
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
        *_common_env(settings),
        _env("MODELSEAL_GATEWAY_HTTP_PORT", p.gateway_http),
        _env("MODELSEAL_GATEWAY_GRPC_PORT", p.gateway_grpc),
        _env("MODELSEAL_GATEWAY_METRICS_PORT", p.gateway_metrics),
        _env("MODELSEAL_TRITON_HTTP_URL", f"http://127.0.0.1:{p.triton_http}"),
        _env("MODELSEAL_TRITON_GRPC_URL", f"127.0.0.1:{p.triton_grpc}"),
        _env("MODELSEAL_LICENSE_FILE", str(settings.license_file)),
        _env("MODELSEAL_API_KEYS_FILE", str(settings.api_keys_file)),
        _env("MODELSEAL_QUOTA_STORE", model.gateway.quota_store),
        _env("MODELSEAL_QUOTA_STATE_DIR", str(settings.quota_state_dir)),
        _env("MODELSEAL_MAX_REQUEST_BYTES", settings.max_request_bytes),
        _env("MODELSEAL_AUDIT_SINK", "file" if settings.usage_export_url else settings.audit_sink),
        {
            "name": "MODELSEAL_GATEWAY_INSTANCE",
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
        },
    ]
    if model.gateway.quota_store == "redis" and model.gateway.redis_url:
        env.append(_env("MODELSEAL_REDIS_URL", model.gateway.redis_url))
    if needs_redis_auth(model, settings):
        # File names only: the values stay in the mounted Secret.
        env.append(
            _env("MODELSEAL_REDIS_USERNAME_FILE", f"{REDIS_AUTH_MOUNT}/{REDIS_USERNAME_KEY}")
        )
        env.append(
            _env("MODELSEAL_REDIS_PASSWORD_FILE", f"{REDIS_AUTH_MOUNT}/{REDIS_PASSWORD_KEY}")
        )
    if settings.audit_sink == "webhook" and settings.audit_webhook_url:
        env.append(_env("MODELSEAL_AUDIT_WEBHOOK_URL", settings.audit_webhook_url))
    env.append(_env("MODELSEAL_AUDIT_HMAC_KEY_FILE", f"{AUDIT_KEY_MOUNT}/{AUDIT_KEY_KEY}"))
    env.append(_env("MODELSEAL_AUDIT_STATE_FILE", AUDIT_STATE_FILE))
    if settings.usage_export_url:
        # Usage is exported from the audit file (the spool): on the quota-state volume,
        # the model's claim when it has one, so that it outlives the Pod.
        env.append(_env("MODELSEAL_AUDIT_FILE", usage_spool_file(settings)))
        env.append(_env("MODELSEAL_USAGE_EXPORT_URL", settings.usage_export_url))
        if needs_usage_token(settings):
            # The file's name only: the token stays in the mounted Secret.
            env.append(
                _env("MODELSEAL_USAGE_EXPORT_TOKEN_FILE", f"{USAGE_EXPORT_MOUNT}/{USAGE_TOKEN_KEY}")
            )
    return env


def _gateway(model: ModelSpec, settings: Settings, p: Ports) -> Json:
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
        **_container_defaults(settings.image),
        "command": ["python", "-m", "modelseal"],
        "args": ["gateway"],
        "env": gateway_env(model, settings, p),
        "ports": [
            {"name": "http", "containerPort": p.gateway_http, "protocol": "TCP"},
            {"name": "grpc", "containerPort": p.gateway_grpc, "protocol": "TCP"},
            {"name": "metrics", "containerPort": p.gateway_metrics, "protocol": "TCP"},
        ],
        # The gateway's /readyz covers the license file, the keys file and Triton's readiness.
        "readinessProbe": _http_probe("/readyz", "metrics", 5, 3),
        "livenessProbe": _http_probe("/healthz", "metrics", 10, 6, delay=10),
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": _restricted_security_context(settings),
        "volumeMounts": mounts,
    }


def _quota_state_volume(model: ModelSpec) -> Json:
    """The embedded store's folder: the model's claim (counters survive the Pod), else an
    emptyDir (they reset with it; the license decision may refuse that, see
    ``modelseal.models.quota_budget``)."""
    claim = model.gateway.quota_state_claim
    if claim:
        return {"name": "quota-state", "persistentVolumeClaim": {"claimName": claim}}
    return {"name": "quota-state", "emptyDir": {}}


def _volumes(model: ModelSpec, settings: Settings, names: Names) -> list[Json]:
    token_file = PurePosixPath(settings.service_account_token_file).name
    volumes: list[Json] = [
        {
            "name": MODELS_VOLUME,
            "emptyDir": {
                "medium": "Memory",
                "sizeLimit": format_bytes(tmpfs_bytes(model.source.plaintext_bytes)),
            },
        },
        {
            "name": TOKEN_VOLUME,
            "projected": {
                "defaultMode": 0o440,
                "sources": [
                    {
                        "serviceAccountToken": {
                            "audience": settings.vault_token_audience,
                            "expirationSeconds": 600,
                            "path": token_file,
                        }
                    }
                ],
            },
        },
        {
            "name": "license",
            "configMap": {"name": names.license_config, "defaultMode": 0o444},
        },
        {
            "name": "api-keys",
            "secret": {"secretName": model.gateway.api_keys_secret, "defaultMode": 0o440},
        },
        {
            "name": "control",
            "secret": {
                "secretName": names.control_secret,
                "defaultMode": 0o440,
                "items": [{"key": CONTROL_TOKEN_KEY, "path": CONTROL_TOKEN_KEY}],
            },
        },
        {
            "name": AUDIT_KEY_VOLUME,
            "secret": {
                "secretName": names.control_secret,
                "defaultMode": 0o440,
                "items": [{"key": AUDIT_KEY_KEY, "path": AUDIT_KEY_KEY}],
            },
        },
        _quota_state_volume(model),
        {"name": "tmp", "emptyDir": {}},
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": format_bytes(SHM_BYTES)}},
    ]
    if needs_redis_auth(model, settings):
        volumes.append(
            {
                "name": REDIS_AUTH_VOLUME,
                "secret": {
                    "secretName": names.redis_auth_secret,
                    "defaultMode": 0o440,
                    "items": [{"key": k, "path": k} for k in REDIS_AUTH_KEYS],
                },
            }
        )
    if needs_usage_token(settings):
        volumes.append(
            {
                "name": USAGE_EXPORT_VOLUME,
                "secret": {
                    "secretName": names.usage_export_secret,
                    "defaultMode": 0o440,
                    "items": [{"key": USAGE_TOKEN_KEY, "path": USAGE_TOKEN_KEY}],
                },
            }
        )
    claim = model.source.pvc_claim
    if claim:
        volumes.append(
            {"name": "sealed", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        )
    return volumes


def _tolerations(model: ModelSpec) -> list[Json]:
    out: list[Json] = []
    for t in model.serving.tolerations:
        item: Json = {}
        if t.key is not None:
            item["key"] = t.key
        if t.operator is not None:
            item["operator"] = t.operator
        if t.value is not None:
            item["value"] = t.value
        if t.effect is not None:
            item["effect"] = t.effect
        if t.toleration_seconds is not None:
            item["tolerationSeconds"] = t.toleration_seconds
        out.append(item)
    return out


def pod_template(model: ModelSpec, settings: Settings) -> Json:
    names = names_for(model.namespace, model.name, model.uid, settings.vault_policy_prefix)
    p = ports(settings)
    spec: Json = {
        "serviceAccountName": names.service_account,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "restartPolicy": "Always",
        "dnsPolicy": "ClusterFirst",
        "schedulerName": "default-scheduler",
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": settings.run_as_user,
            "runAsGroup": settings.run_as_user,
            "fsGroup": settings.run_as_user,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "initContainers": [_unsealer(model, settings, names, p)],
        "containers": [_triton(model, settings, names, p), _gateway(model, settings, p)],
        "volumes": _volumes(model, settings, names),
    }
    if model.serving.node_selector:
        spec["nodeSelector"] = dict(model.serving.node_selector)
    tolerations = _tolerations(model)
    if tolerations:
        spec["tolerations"] = tolerations
    if model.serving.affinity:
        spec["affinity"] = dict(model.serving.affinity)
    if model.serving.priority_class_name:
        spec["priorityClassName"] = model.serving.priority_class_name
    labels = common_labels(model)
    labels[LABEL_VERSION] = model.version
    return {
        "metadata": {
            "labels": labels,
            "annotations": {
                ANNOTATION_DIGEST: model.source.digest,
                ANNOTATION_URI: model.source.uri,
            },
        },
        "spec": spec,
    }


def deployment(model: ModelSpec, settings: Settings, replicas: int) -> Json:
    names = names_for(model.namespace, model.name, model.uid, settings.vault_policy_prefix)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(model, names.deployment),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(model.name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {
                    "maxSurge": model.rollout.max_surge,
                    "maxUnavailable": model.rollout.max_unavailable,
                },
            },
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": max(600, settings.unseal_timeout_s + 300),
            "minReadySeconds": 0,
            "template": pod_template(model, settings),
        },
    }


def service_account(model: ModelSpec, settings: Settings) -> Json:
    names = names_for(model.namespace, model.name, model.uid, settings.vault_policy_prefix)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _meta(model, names.service_account),
        "automountServiceAccountToken": False,
    }


def service(model: ModelSpec, settings: Settings) -> Json:
    names = names_for(model.namespace, model.name, model.uid, settings.vault_policy_prefix)
    p = ports(settings)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(model, names.service),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(model.name),
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
            "ports": [
                {"name": "http", "port": p.gateway_http, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": p.gateway_grpc, "targetPort": "grpc", "protocol": "TCP"},
                {
                    "name": "metrics",
                    "port": p.gateway_metrics,
                    "targetPort": "metrics",
                    "protocol": "TCP",
                },
            ],
        },
    }


def network_policy(model: ModelSpec, settings: Settings) -> Json:
    names = names_for(model.namespace, model.name, model.uid, settings.vault_policy_prefix)
    p = ports(settings)
    rule: Json = {
        "ports": [
            {"port": p.gateway_http, "protocol": "TCP"},
            {"port": p.gateway_grpc, "protocol": "TCP"},
            {"port": p.gateway_metrics, "protocol": "TCP"},
        ]
    }
    rules = [rule]
    if model.ingress_from:
        rule["from"] = [dict(peer) for peer in model.ingress_from]
        if settings.operator_pod_namespace and settings.operator_pod_labels:
            # The operator reads the embedded store's counters from the gateway (GET /usage
            # on the metrics port, modelseal.handlers.usage_pods) for the license's status.
            ns_label = {"kubernetes.io/metadata.name": settings.operator_pod_namespace}
            peer = {
                "namespaceSelector": {"matchLabels": ns_label},
                "podSelector": {"matchLabels": dict(settings.operator_pod_labels)},
            }
            rules.append(
                {"from": [peer], "ports": [{"port": p.gateway_metrics, "protocol": "TCP"}]}
            )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(model, names.network_policy),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(model.name)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def license_config_map(
    model: ModelSpec, settings: Settings, lic: LicenseSpec | None, granted: bool
) -> Json:
    names = names_for(model.namespace, model.name, model.uid, settings.vault_policy_prefix)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(model, names.license_config),
        "data": _model_config_data(model, lic, granted),
    }


def _model_config_data(model: ModelSpec, lic: LicenseSpec | None, granted: bool) -> dict[str, str]:
    data = license_config_data(model, lic, granted)
    if model.source.publisher_keys:
        data[TRUSTED_KEYS_KEY] = "".join(f"{k}\n" for k in model.source.publisher_keys)
    return data


def control_secret(model: ModelSpec, settings: Settings, token: str, audit_key: str = "") -> Json:
    """The per-model token for Triton's restricted APIs (created once; never compared) and
    the gateway's audit checkpoint key (``AUDIT_KEY_KEY``: derived from the platform's
    audit key when the operator has one, ``modelseal.audit.keyfile.model_audit_key``, and
    then put back when edited; else random, made once)."""
    names = names_for(model.namespace, model.name, model.uid, settings.vault_policy_prefix)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(model, names.control_secret),
        "type": "Opaque",
        "stringData": {CONTROL_TOKEN_KEY: token, AUDIT_KEY_KEY: audit_key},
    }


def redis_auth_secret(model: ModelSpec, settings: Settings, credentials: dict[str, str]) -> Json:
    """The model's copy of the quota Redis user and password (`credentials`: the chart
    Secret's ``data``, base64 as the API server returns it; only the two keys are kept)."""
    names = names_for(model.namespace, model.name, model.uid, settings.vault_policy_prefix)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(model, names.redis_auth_secret),
        "type": "Opaque",
        "data": {key: credentials[key] for key in REDIS_AUTH_KEYS},
    }


def usage_export_secret(model: ModelSpec, settings: Settings, data: dict[str, str]) -> Json:
    """The model's copy of the usage export's bearer token (``data``: the chart Secret's
    ``data``, base64 as the API server returns it; only ``USAGE_TOKEN_KEY`` is kept)."""
    names = names_for(model.namespace, model.name, model.uid, settings.vault_policy_prefix)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(model, names.usage_export_secret),
        "type": "Opaque",
        "data": {USAGE_TOKEN_KEY: data[USAGE_TOKEN_KEY]},
    }


def template_hash(template: Json) -> str:
    """A short digest of a pod template (for logs and Events)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:12]
