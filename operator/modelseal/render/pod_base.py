"""The parts every rendered object of a model shares: names of volumes, mounts and keys,
the ports, object metadata, and the container and security-context defaults. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from modelseal.config import TRITON_CONTROL_HEADER, Settings
from modelseal.models.quantity import MIB, round_up_mib
from modelseal.models.spec import ModelSpec
from modelseal.render.names import (
    common_labels,
    owner_reference,
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


def object_meta(model: ModelSpec, name: str, extra_labels: dict[str, str] | None = None) -> Json:
    labels = common_labels(model)
    if extra_labels:
        labels.update(extra_labels)
    return {
        "name": name,
        "namespace": model.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(model)],
    }


def restricted_security_context(settings: Settings) -> Json:
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


def env_var(name: str, value: str | int) -> Json:
    return {"name": name, "value": str(value)}


def http_probe(path: str, port: str | int, period: int, failures: int, delay: int = 0) -> Json:
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


def container_defaults(image: str) -> Json:
    return {
        "image": image,
        "imagePullPolicy": "Always"
        if image.endswith(":latest") or ":" not in image.split("/")[-1]
        else "IfNotPresent",
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def common_env(settings: Settings) -> list[Json]:
    return [
        env_var("MODELSEAL_LOG_LEVEL", settings.log_level),
        env_var("MODELSEAL_API_GROUP", settings.api_group),
    ]
