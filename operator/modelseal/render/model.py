"""Everything one ProtectedModel renders to, in apply order. Pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelseal.config import Settings
from modelseal.models.spec import LicenseSpec, ModelSpec
from modelseal.render import manifests
from modelseal.render.names import Names, endpoint, names_for
from modelseal.render.vault import VaultAccess, vault_access

Json = dict[str, Any]


@dataclass(frozen=True)
class Rendered:
    names: Names
    service_account: Json
    license_config: Json
    service: Json
    network_policy: Json
    deployment: Json
    vault: VaultAccess
    endpoint: str
    replicas: int
    #: Name of the Secret with the quota Redis credentials the gateway mounts (the
    #: operator copies them from settings.redis_auth_secret), or None when it needs none.
    redis_auth: str | None = None
    #: Name of the Secret with the usage export's bearer token the gateway mounts (the
    #: operator copies it from settings.usage_export_token_secret), or None.
    usage_export: str | None = None

    def objects(self) -> list[Json]:
        """Kubernetes objects in the order they are applied (the Deployment last)."""
        return [
            self.service_account,
            self.license_config,
            self.service,
            self.network_policy,
            self.deployment,
        ]


def render_model(
    model: ModelSpec, lic: LicenseSpec | None, granted: bool, settings: Settings
) -> Rendered:
    """Render `model`; without a grant the Deployment asks for zero replicas."""
    replicas = model.serving.replicas if granted else 0
    names = names_for(model.namespace, model.name, model.uid, settings.vault_policy_prefix)
    return Rendered(
        names=names,
        service_account=manifests.service_account(model, settings),
        license_config=manifests.license_config_map(model, settings, lic, granted),
        service=manifests.service(model, settings),
        network_policy=manifests.network_policy(model, settings),
        deployment=manifests.deployment(model, settings, replicas),
        vault=vault_access(model, settings),
        endpoint=endpoint(model, settings.gateway_http_port),
        replicas=replicas,
        redis_auth=names.redis_auth_secret if manifests.needs_redis_auth(model, settings) else None,
        usage_export=names.usage_export_secret if manifests.needs_usage_token(settings) else None,
    )
