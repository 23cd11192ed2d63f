"""Names and labels of everything the operator creates for one ProtectedModel. Pure."""

from __future__ import annotations

from dataclasses import dataclass

from modelseal.models.spec import API_VERSION, MODEL_KIND, ModelSpec

MANAGED_BY = "modelseal-operator"
LABEL_MODEL = "modelseal.io/model"
LABEL_TENANT = "modelseal.io/tenant"
LABEL_VERSION = "modelseal.io/version"
ANNOTATION_DIGEST = "modelseal.io/digest"
ANNOTATION_URI = "modelseal.io/source-uri"


@dataclass(frozen=True)
class Names:
    service_account: str
    deployment: str
    service: str
    license_config: str
    network_policy: str
    control_secret: str
    redis_auth_secret: str
    usage_export_secret: str
    vault_role: str
    vault_policy: str


def vault_name(prefix: str, namespace: str, name: str) -> str:
    """``<prefix>_<namespace>_<name>``: unambiguous, since Kubernetes names have no ``_``.

    (With ``-`` as separator, model ``b-c`` in namespace ``a`` and model ``c`` in namespace
    ``a-b`` would share one Vault role.)
    """
    return f"{prefix}_{namespace}_{name}"


def parse_vault_name(prefix: str, vault: str) -> tuple[str, str] | None:
    """(namespace, model name) of a `vault_name`, or None when it is not one of ours."""
    head = f"{prefix}_"
    if not vault.startswith(head):
        return None
    namespace, sep, name = vault[len(head) :].partition("_")
    if not sep or not namespace or not name or "_" in name:
        return None
    return namespace, name


def service_account_name(name: str, uid: str) -> str:
    """``<model name>-<first 8 characters of the ProtectedModel's metadata.uid>``.

    The API server assigns the uid when the model is created, so nobody can know this name
    before the model exists (a workload planted earlier names the wrong account), and it is
    deterministic, so every reconcile and every operator restart agrees on it. The chart's
    admission policies compute the same formula from the ProtectedModel; keep them equal.
    """
    if not uid:
        raise ValueError(f"ProtectedModel {name!r} has no uid yet; its ServiceAccount is unnamed")
    return f"{name}-{uid[:8]}"


def names_for(namespace: str, name: str, uid: str, prefix: str = "modelseal") -> Names:
    """Every name of one model; `uid` is the ProtectedModel's ``metadata.uid``."""
    vault = vault_name(prefix, namespace, name)
    return Names(
        service_account=service_account_name(name, uid),
        deployment=name,
        service=name,
        license_config=f"{name}-license",
        network_policy=name,
        control_secret=f"{name}-triton-control",
        redis_auth_secret=f"{name}-redis-auth",
        usage_export_secret=f"{name}-usage-export",
        vault_role=vault,
        vault_policy=vault,
    )


def selector_labels(name: str) -> dict[str, str]:
    """The Deployment selector (immutable, so it never carries the version)."""
    return {"app.kubernetes.io/name": "modelseal-model", LABEL_MODEL: name}


def common_labels(model: ModelSpec) -> dict[str, str]:
    return {
        **selector_labels(model.name),
        "app.kubernetes.io/instance": model.name,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "modelseal",
        LABEL_TENANT: model.tenant,
    }


def owner_reference(model: ModelSpec) -> dict[str, object]:
    return {
        "apiVersion": API_VERSION,
        "kind": MODEL_KIND,
        "name": model.name,
        "uid": model.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def endpoint(model: ModelSpec, http_port: int) -> str:
    return f"{model.name}.{model.namespace}.svc:{http_port}"
