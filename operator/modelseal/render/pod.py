"""The model's Pod template (volumes, placement) and Deployment. Pure."""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath

from modelseal.config import Settings
from modelseal.models.quantity import format_bytes
from modelseal.models.spec import ModelSpec
from modelseal.render.containers import (
    gateway_container,
    needs_redis_auth,
    needs_usage_token,
    triton_container,
    unsealer_container,
)
from modelseal.render.names import (
    ANNOTATION_DIGEST,
    ANNOTATION_URI,
    LABEL_VERSION,
    Names,
    common_labels,
    names_for,
    selector_labels,
)
from modelseal.render.pod_base import (
    AUDIT_KEY_KEY,
    AUDIT_KEY_VOLUME,
    CONTROL_TOKEN_KEY,
    MODELS_VOLUME,
    REDIS_AUTH_KEYS,
    REDIS_AUTH_VOLUME,
    SHM_BYTES,
    TOKEN_VOLUME,
    USAGE_EXPORT_VOLUME,
    USAGE_TOKEN_KEY,
    Json,
    object_meta,
    ports,
    tmpfs_bytes,
)


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
        "initContainers": [unsealer_container(model, settings, names, p)],
        "containers": [
            triton_container(model, settings, names, p),
            gateway_container(model, settings, p),
        ],
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
        "metadata": object_meta(model, names.deployment),
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


def template_hash(template: Json) -> str:
    """A short digest of a pod template (for logs and Events)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:12]
