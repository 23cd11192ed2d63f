"""The model's copy of the usage export's bearer token (issue 14).

The gateway sends the token to ``usage_export_url`` and reads it from a file: the Secret
``<model>-usage-export`` (``render.manifests.usage_export_secret``) mounted into the gateway
container only. A Pod can mount a Secret of its own namespace only, so the operator copies
the one the platform keeps (``settings.usage_export_token_secret`` in
``usage_export_token_secret_namespace``, read by name) into each model's namespace, puts it
back when it differs (a new token, an edit) and deletes it when export is switched off. The
token is never logged and never put in an environment variable.

``ensure_usage_export_secret`` is the one call the model reconcile makes, next to the Redis
credentials' copy; it returns why the copy cannot be made (reported like a missing Redis
Secret: Degraded, retried), or None.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, NamedTuple

from modelseal.config import Settings
from modelseal.k8s import api as k8s
from modelseal.k8s.api import ApiError, Kube
from modelseal.models.spec import ModelSpec
from modelseal.render import manifests
from modelseal.render.compare import differences, update_body
from modelseal.render.names import names_for

log = logging.getLogger("modelseal.operator")

PostEvent = Callable[[Mapping[str, str], str, str, str], Awaitable[None]]


def _owned(obj: Mapping[str, Any], uid: str) -> bool:
    return any(
        r.get("uid") == uid and r.get("controller")
        for r in (obj.get("metadata") or {}).get("ownerReferences") or []
    )


def source_problem(where: str, source: Mapping[str, Any] | None) -> str | None:
    """Why the token cannot be copied from ``source``, or None."""
    if source is None:
        return f"Secret {where} with the usage export token does not exist"
    if not (source.get("data") or {}).get(manifests.USAGE_TOKEN_KEY):
        return f"Secret {where} has no {manifests.USAGE_TOKEN_KEY!r} for the usage export"
    return None


class Source(NamedTuple):
    """The platform's token Secret as read once (for many models)."""

    where: str
    body: Mapping[str, Any] | None


async def read_source(kube: Kube, settings: Settings) -> Source:
    ns, secret = settings.usage_export_token_secret_namespace, settings.usage_export_token_secret
    body = await kube.get(k8s.SECRET, ns, secret) if manifests.needs_usage_token(settings) else None
    return Source(f"{ns}/{secret}", body)


async def ensure_usage_export_secret(
    kube: Kube,
    settings: Settings,
    spec: ModelSpec,
    ref: Mapping[str, str],
    post_event: PostEvent,
    source: Source | None = None,
) -> str | None:
    """Create, put back or delete ``<model>-usage-export``; why it cannot be made, or None.
    ``source``: the platform's Secret when already read (else it is read here)."""
    names = names_for(spec.namespace, spec.name, spec.uid, settings.vault_policy_prefix)
    name = names.usage_export_secret
    live = await kube.get(k8s.SECRET, spec.namespace, name)
    if live is not None and not _owned(live, spec.uid):
        if not manifests.needs_usage_token(settings):
            return None  # someone else's Secret of that name, and we need none: left alone
        return (
            f"Secret {spec.namespace}/{name} exists and is not this model's: the operator "
            "keeps the usage export token there; rename or delete it"
        )
    if not manifests.needs_usage_token(settings):
        if live is not None:
            uid = str((live.get("metadata") or {}).get("uid") or "") or None
            try:
                if await kube.delete(k8s.SECRET, spec.namespace, name, uid=uid):
                    log.info("Secret %s/%s deleted (no usage export token)", spec.namespace, name)
            except ApiError as exc:
                if not exc.conflict:
                    raise
        return None
    source = source or await read_source(kube, settings)
    where = source.where
    problem = source_problem(where, source.body)
    if source.body is None or problem:
        return problem
    desired = manifests.usage_export_secret(spec, settings, source.body.get("data") or {})
    if live is None:
        try:
            await kube.create(k8s.SECRET, spec.namespace, desired)
        except ApiError as exc:
            if not exc.conflict:
                raise
            return f"Secret {spec.namespace}/{name} appeared meanwhile; retrying"
        log.info("Secret %s/%s created (usage export token from %s)", spec.namespace, name, where)
        return None
    if live.get("data") == desired["data"] and not differences(desired, live):
        return None
    body = update_body(desired, live)
    body.pop("stringData", None)
    body["data"] = desired["data"]
    await kube.replace(k8s.SECRET, spec.namespace, name, body)
    log.warning("Secret %s/%s differed from %s; put back", spec.namespace, name, where)
    await post_event(
        ref, "Warning", "DriftRepaired", f"Secret {name} differed from {where}; put back"
    )
    return None
