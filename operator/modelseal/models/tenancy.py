"""Which Transit keys and Triton images each namespace may use (issue 12, Medium 7). Pure.

The platform declares it (the chart's ``tenancy`` values, rendered into a JSON file that
the operator reads and into an admission policy that the API server evaluates); tenants
cannot change it. A ProtectedModel whose key or image its namespace may not use is refused
by admission when it is written, and by the operator (condition ``NotAllowedInNamespace``,
no Pods, no Vault access) should it get past admission (admission off, the declaration
narrowed after the model was created).

File format (JSON)::

    {"unlisted": "Refuse",
     "namespaces": {"acme": {"transitKeys": ["acme-llm"],
                             "images": ["nvcr.io/nvidia/tritonserver", "registry.acme.io/"]}}}

* ``transitKeys``: exact Transit key names (no patterns, so that the operator's own Vault
  policy can list the exact policy bodies it may write: `modelseal.render.operator_policy`).
* ``images``: image repositories. ``registry/path/name`` allows that repository with any
  tag and/or digest; an entry ending in ``/`` allows every repository below it. A model
  that names no ``tritonImage`` gets the operator's configured default, always allowed.
* ``unlisted``: what a namespace not listed may use: ``Refuse`` (nothing) or ``Any``
  (any key and image: no restriction, the behaviour before this file existed).

The same regular expressions are rendered into the chart's admission policy
(charts/modelseal/templates/admission/tenancy.yaml); keep the two equal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, NamedTuple

#: Condition reason of a model refused here.
REASON_NOT_ALLOWED = "NotAllowedInNamespace"

#: What may follow an exact repository: a tag, a digest, or both.
TAG_DIGEST = r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$"
#: What may follow a prefix entry (``registry.io/team/``): a path of repository components.
BELOW_PREFIX = r"[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*" + TAG_DIGEST

_KEY = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REPOSITORY = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9._-]+)*/?$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class TenancyError(ValueError):
    """The declaration cannot be read; the message names the entry."""


class Unlisted(StrEnum):
    REFUSE = "Refuse"
    ANY = "Any"


class NamespaceGrant(NamedTuple):
    transit_keys: tuple[str, ...]
    images: tuple[str, ...]


class Tenancy(NamedTuple):
    namespaces: Mapping[str, NamespaceGrant]
    unlisted: Unlisted = Unlisted.REFUSE


#: No declaration at all (development, an operator run without the chart): no restriction.
UNRESTRICTED = Tenancy(namespaces={}, unlisted=Unlisted.ANY)


def image_pattern(entry: str) -> str:
    """The regular expression (RE2 and Python alike) an allowed image of `entry` matches."""
    tail = BELOW_PREFIX if entry.endswith("/") else TAG_DIGEST
    return "^" + re.escape(entry) + tail


def image_allowed(image: str, entries: tuple[str, ...]) -> bool:
    return any(re.fullmatch(image_pattern(e), image) for e in entries)


def _strings(value: Any, where: str, pattern: re.Pattern[str], what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TenancyError(f"{where} must be a list of strings")
    for v in value:
        if not pattern.match(v):
            raise TenancyError(f"{where}: {v!r} is not {what}")
    return tuple(value)


def parse_tenancy(data: Any) -> Tenancy:
    """The declaration from its JSON form; `TenancyError` names what is wrong."""
    if not isinstance(data, Mapping):
        raise TenancyError("the tenancy declaration must be an object")
    unknown = set(data) - {"namespaces", "unlisted"}
    if unknown:
        raise TenancyError(f"unknown tenancy fields: {', '.join(sorted(unknown))}")
    raw_unlisted = data.get("unlisted", Unlisted.REFUSE.value)
    try:
        unlisted = Unlisted(raw_unlisted)
    except ValueError:
        raise TenancyError(
            f"tenancy.unlisted must be Refuse or Any, not {raw_unlisted!r}"
        ) from None
    spaces = data.get("namespaces") or {}
    if not isinstance(spaces, Mapping):
        raise TenancyError("tenancy.namespaces must be an object keyed by namespace")
    grants: dict[str, NamespaceGrant] = {}
    for ns, entry in spaces.items():
        where = f"tenancy.namespaces.{ns}"
        if not isinstance(ns, str) or not _NAMESPACE.match(ns):
            raise TenancyError(f"{where}: not a namespace name")
        if not isinstance(entry, Mapping):
            raise TenancyError(f"{where} must be an object")
        extra = set(entry) - {"transitKeys", "images"}
        if extra:
            raise TenancyError(f"{where}: unknown fields {', '.join(sorted(extra))}")
        grants[ns] = NamespaceGrant(
            transit_keys=_strings(
                entry.get("transitKeys"), f"{where}.transitKeys", _KEY, "a Transit key name"
            ),
            images=_strings(
                entry.get("images"), f"{where}.images", _REPOSITORY, "an image repository"
            ),
        )
    return Tenancy(namespaces=grants, unlisted=unlisted)


def parse_tenancy_text(text: str, source: str) -> Tenancy:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise TenancyError(f"{source} is not JSON: {exc}") from None
    try:
        return parse_tenancy(data)
    except TenancyError as exc:
        raise TenancyError(f"{source}: {exc}") from None


def namespace_refusal(
    namespace: str, labels: Mapping[str, str] | None, required: str
) -> str | None:
    """Why the operator may not serve in `namespace` for lack of the `key=value` label
    `required` (empty: no label needed), or None. `labels` None: no such namespace."""
    if not required:
        return None
    key, _, value = required.partition("=")
    if labels is not None and labels.get(key) == value:
        return None
    return (
        f"namespace {namespace} is not labelled {required}: the operator, which watches the "
        f"whole cluster, serves only namespaces the platform labelled for Modelseal "
        f"(kubectl label namespace {namespace} {required}; chart value rbac.modelNamespaceLabel)"
    )


def _listing(values: tuple[str, ...]) -> str:
    return ", ".join(values) if values else "none"


def refusal(
    tenancy: Tenancy, namespace: str, transit_key: str, triton_image: str | None
) -> str | None:
    """Why a model in `namespace` may not use this key or image, or None when it may.

    `triton_image` is the image the model names (None: the operator's default, allowed)."""
    grant = tenancy.namespaces.get(namespace)
    if grant is None:
        if tenancy.unlisted is Unlisted.ANY:
            return None
        return (
            f"namespace {namespace} may use no Transit key or image: the platform has not "
            "declared it (Modelseal chart value tenancy.namespaces)"
        )
    problems = []
    if transit_key not in grant.transit_keys:
        problems.append(
            f"Transit key {transit_key} is not allowed in namespace {namespace} "
            f"(allowed: {_listing(grant.transit_keys)})"
        )
    if triton_image is not None and not image_allowed(triton_image, grant.images):
        problems.append(
            f"Triton image {triton_image} is not allowed in namespace {namespace} "
            f"(allowed repositories: {_listing(grant.images)})"
        )
    if not problems:
        return None
    return "; ".join(problems) + " (declared by the platform: chart value tenancy.namespaces)"
