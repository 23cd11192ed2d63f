"""The model's objects besides its Deployment: ServiceAccount, Service, NetworkPolicy,
license ConfigMap and the Secrets the operator keeps (Triton control token and audit key,
the quota Redis credentials' copy, the usage export token's copy). Pure."""

from __future__ import annotations

from modelseal.config import Settings
from modelseal.models.spec import LicenseSpec, ModelSpec
from modelseal.render.license_config import license_config_data
from modelseal.render.names import (
    names_for,
    selector_labels,
)
from modelseal.render.pod_base import (
    AUDIT_KEY_KEY,
    CONTROL_TOKEN_KEY,
    REDIS_AUTH_KEYS,
    TRUSTED_KEYS_KEY,
    USAGE_TOKEN_KEY,
    Json,
    object_meta,
    ports,
)


def service_account(model: ModelSpec, settings: Settings) -> Json:
    names = names_for(model.namespace, model.name, model.uid, settings.vault_policy_prefix)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": object_meta(model, names.service_account),
        "automountServiceAccountToken": False,
    }


def service(model: ModelSpec, settings: Settings) -> Json:
    names = names_for(model.namespace, model.name, model.uid, settings.vault_policy_prefix)
    p = ports(settings)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": object_meta(model, names.service),
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
        "metadata": object_meta(model, names.network_policy),
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
        "metadata": object_meta(model, names.license_config),
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
        "metadata": object_meta(model, names.control_secret),
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
        "metadata": object_meta(model, names.redis_auth_secret),
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
        "metadata": object_meta(model, names.usage_export_secret),
        "type": "Opaque",
        "data": {USAGE_TOKEN_KEY: data[USAGE_TOKEN_KEY]},
    }
