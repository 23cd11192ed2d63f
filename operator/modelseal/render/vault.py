"""The Vault policy and Kubernetes-auth role of one model, as data. Pure.

The policy allows exactly one thing: ``update`` on ``<transit>/decrypt/<key>``, which is
how the unsealer unwraps the bundle's data key. The role admits exactly one
ServiceAccount in one namespace, with one audience, and issues short-lived,
non-renewable-beyond-max tokens carrying only that policy (no default policy).
"""

from __future__ import annotations

from dataclasses import dataclass

from modelseal.config import Settings
from modelseal.models.spec import ModelSpec
from modelseal.render.names import names_for


@dataclass(frozen=True)
class VaultAccess:
    policy_name: str
    policy: str
    role_name: str
    role: dict[str, object]


def _ttl_seconds(ttl: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    text = ttl.strip()
    if text.isdigit():
        return int(text)
    if text and text[-1] in units and text[:-1].isdigit():
        return int(text[:-1]) * units[text[-1]]
    raise ValueError(f"vault_role_token_ttl {ttl!r} must be seconds or like 10m, 1h")


def policy_document(transit_mount: str, key: str) -> str:
    mount = transit_mount.strip("/")
    return (
        "# Managed by the Modelseal operator: decrypt with one Transit key, nothing else.\n"
        f'path "{mount}/decrypt/{key}" {{\n'
        '  capabilities = ["update"]\n'
        "}\n"
    )


def vault_access(model: ModelSpec, settings: Settings) -> VaultAccess:
    names = names_for(model.namespace, model.name, model.uid, settings.vault_policy_prefix)
    ttl = _ttl_seconds(settings.vault_role_token_ttl)
    role: dict[str, object] = {
        "bound_service_account_names": [names.service_account],
        "bound_service_account_namespaces": [model.namespace],
        "audience": settings.vault_token_audience,
        "token_policies": [names.vault_policy],
        "token_ttl": ttl,
        "token_max_ttl": ttl * 3,
        "token_no_default_policy": True,
        "token_type": "service",
        "alias_name_source": "serviceaccount_uid",
    }
    return VaultAccess(
        policy_name=names.vault_policy,
        policy=policy_document(settings.vault_transit_mount, model.transit_key),
        role_name=names.vault_role,
        role=role,
    )
