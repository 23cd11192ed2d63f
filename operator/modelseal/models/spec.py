"""Typed, validated views of the ProtectedModel and ModelLicense custom resources.

The API server already enforces the CRD schema and its CEL rules; this module checks again
what the operator relies on (an old CRD, a schema-less apply or a future field must never
crash it) and turns raw bodies into frozen dataclasses. A problem raises `SpecError` with a
message meant for a person; the operator reports it as ``Ready=False, reason=InvalidSpec``.
Pure: no I/O.

This module parses ProtectedModel and is the one import path for both resources: the
ModelLicense view lives in `modelseal.models.license_spec`, the shared readers, API names
and output policy in `modelseal.models.resource`; both are re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from modelseal.models.license_spec import LicenseSpec, Quotas, parse_license
from modelseal.models.quantity import QuantityError, parse_bytes, parse_quantity
from modelseal.models.resource import (
    API_VERSION,
    DNS1035_RE,
    DNS1123_LABEL_RE,
    GROUP,
    LICENSE_KIND,
    LICENSE_PLURAL,
    MODEL_KIND,
    MODEL_PLURAL,
    OUTPUT_MODES,
    VERSION,
    ObjectMeta,
    OutputMode,
    OutputPolicy,
    SpecError,
    as_object,
    int_field,
    must_match,
    opt_str,
    parse_meta,
    parse_output_policy,
    parse_time,
    req_str,
)

#: The names callers import from here (this module's own and the two it re-exports).
__all__ = [
    "API_VERSION",
    "GROUP",
    "LICENSE_KIND",
    "LICENSE_PLURAL",
    "MODEL_KIND",
    "MODEL_PLURAL",
    "OUTPUT_MODES",
    "VERSION",
    "Gateway",
    "LicenseSpec",
    "ModelSpec",
    "ObjectMeta",
    "OutputMode",
    "OutputPolicy",
    "Quotas",
    "Rollout",
    "Serving",
    "Source",
    "SpecError",
    "Toleration",
    "parse_license",
    "parse_meta",
    "parse_model",
    "parse_output_policy",
    "parse_time",
]

QuotaStore = Literal["embedded", "redis"]

DNS1123_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
VERSION_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$")
TRITON_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
DIGEST_RE = re.compile(r"^(blake3tree|sha256tree):[a-f0-9]{64}$")
URI_RE = re.compile(
    r"^(?P<scheme>s3|pvc)://(?P<host>[a-z0-9][-a-z0-9.]{1,251}[a-z0-9])/(?P<path>\S+)$"
    r"|^(?P<hscheme>https)://(?P<hhost>[^/\s]+)/(?P<hpath>\S*)$"
)
PUBLISHER_KEY_RE = re.compile(r"^[A-Za-z0-9+/]{43}=$")
PERCENT_RE = re.compile(r"^[0-9]+%$")
MAX_MODEL_NAME = 50
SCHEMES = ("s3", "https", "pvc")

# --- ProtectedModel ----------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    uri: str
    scheme: str  # s3 | https | pvc
    digest: str
    plaintext_bytes: int
    endpoint: str | None = None
    region: str | None = None
    credentials_secret: str | None = None
    publisher_keys: tuple[str, ...] = ()

    @property
    def pvc_claim(self) -> str | None:
        """The claim name of a pvc:// URI."""
        if self.scheme != "pvc":
            return None
        return self.uri[len("pvc://") :].split("/", 1)[0]

    @property
    def pvc_path(self) -> str | None:
        """The path inside the claim of a pvc:// URI."""
        if self.scheme != "pvc":
            return None
        return self.uri[len("pvc://") :].split("/", 1)[1]


@dataclass(frozen=True)
class Toleration:
    key: str | None = None
    operator: str | None = None
    value: str | None = None
    effect: str | None = None
    toleration_seconds: int | None = None


@dataclass(frozen=True)
class Serving:
    replicas: int = 1
    gpus_per_replica: int = 0
    triton_image: str | None = None
    requests: Mapping[str, str | int] = field(default_factory=dict)
    limits: Mapping[str, str | int] = field(default_factory=dict)
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Toleration, ...] = ()
    affinity: Mapping[str, Any] | None = None
    priority_class_name: str | None = None

    @property
    def total_gpus(self) -> int:
        return self.replicas * self.gpus_per_replica


@dataclass(frozen=True)
class Gateway:
    api_keys_secret: str
    quota_store: QuotaStore = "embedded"
    redis_url: str | None = None
    #: PersistentVolumeClaim holding the embedded store's counters (None: an emptyDir,
    #: whose counters reset when the Pod is deleted).
    quota_state_claim: str | None = None


@dataclass(frozen=True)
class Rollout:
    max_surge: int | str = 0
    max_unavailable: int | str = 1


@dataclass(frozen=True)
class ModelSpec:
    namespace: str
    name: str
    uid: str
    generation: int
    created: datetime | None
    tenant: str
    license_name: str
    version: str
    model_name: str
    source: Source
    transit_key: str
    serving: Serving
    gateway: Gateway
    output_policy: OutputPolicy
    rollout: Rollout
    ingress_from: tuple[Mapping[str, Any], ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def _parse_uri(uri: str) -> str:
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme not in SCHEMES:
        shown = scheme or uri[:20]
        raise SpecError(
            f"spec.source.uri has an unsupported scheme ({shown}); use s3://, https:// or pvc://"
        )
    if not URI_RE.match(uri):
        raise SpecError(
            "spec.source.uri must be s3://BUCKET/KEY, pvc://CLAIM/PATH or https://HOST/PATH "
            "with no spaces"
        )
    if scheme == "pvc":
        claim = uri[len("pvc://") :].split("/", 1)[0]
        if not DNS1123_SUBDOMAIN_RE.match(claim):
            raise SpecError(f"spec.source.uri names an invalid claim {claim!r}")
        path = uri[len("pvc://") :].split("/", 1)[1]
        if any(part in ("..", ".") for part in path.split("/")):
            raise SpecError("spec.source.uri must not contain '.' or '..' path segments")
    return scheme


def _parse_source(data: Mapping[str, Any]) -> Source:
    where = "spec.source"
    uri = req_str(data, "uri", where)
    scheme = _parse_uri(uri)
    digest = must_match(
        req_str(data, "digest", where),
        DIGEST_RE,
        "spec.source.digest must be blake3tree: or sha256tree: followed by 64 lower-case "
        "hex digits (as modelseal seal prints it)",
    )
    raw_size = data.get("plaintextSize")
    if raw_size is None:
        raise SpecError("spec.source.plaintextSize is required (the bundle header holds it)")
    if isinstance(raw_size, bool) or not isinstance(raw_size, (int, str)):
        raise SpecError("spec.source.plaintextSize must be a byte count or a quantity")
    try:
        size = parse_bytes(raw_size)
    except QuantityError as exc:
        raise SpecError(f"spec.source.plaintextSize: {exc}") from None
    endpoint = opt_str(data, "endpoint", where)
    region = opt_str(data, "region", where)
    if (endpoint or region) and scheme != "s3":
        raise SpecError("spec.source.endpoint and region are only meaningful for s3:// URIs")
    if endpoint and not re.match(r"^https?://\S+$", endpoint):
        raise SpecError("spec.source.endpoint must be an http(s) URL")
    creds = as_object(data.get("credentialsSecretRef"), f"{where}.credentialsSecretRef")
    cred_name = opt_str(creds, "name", f"{where}.credentialsSecretRef") if creds else None
    if cred_name and scheme == "pvc":
        raise SpecError("spec.source.credentialsSecretRef is not used for pvc:// URIs")
    raw_keys = data.get("publisherKeys") or []
    if not isinstance(raw_keys, Sequence) or isinstance(raw_keys, str):
        raise SpecError("spec.source.publisherKeys must be a list of base64 Ed25519 keys")
    keys = tuple(
        must_match(
            k if isinstance(k, str) else "",
            PUBLISHER_KEY_RE,
            "spec.source.publisherKeys must hold base64 Ed25519 public keys (32 bytes)",
        )
        for k in raw_keys
    )
    return Source(
        uri=uri,
        scheme=scheme,
        digest=digest,
        plaintext_bytes=size,
        endpoint=endpoint,
        region=region,
        credentials_secret=cred_name,
        publisher_keys=keys,
    )


def _quantity_map(data: Any, where: str) -> dict[str, str | int]:
    values = as_object(data, where)
    out: dict[str, str | int] = {}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise SpecError(f"{where}.{name} must be a quantity")
        try:
            parse_quantity(value)
        except QuantityError as exc:
            raise SpecError(f"{where}.{name}: {exc}") from None
        if name == "nvidia.com/gpu":
            raise SpecError("set GPUs with spec.serving.gpusPerReplica, not resources")
        out[str(name)] = value
    return out


def _parse_serving(data: Mapping[str, Any]) -> Serving:
    where = "spec.serving"
    replicas = int_field(data, "replicas", where, 1, 0, 64)
    gpus = int_field(data, "gpusPerReplica", where, 0, 0, 16)
    assert replicas is not None and gpus is not None
    resources = as_object(data.get("resources"), f"{where}.resources")
    selector = as_object(data.get("nodeSelector"), f"{where}.nodeSelector")
    for k, v in selector.items():
        if not isinstance(v, str):
            raise SpecError(f"{where}.nodeSelector.{k} must be a string")
    tolerations: list[Toleration] = []
    raw_tols = data.get("tolerations") or []
    if not isinstance(raw_tols, Sequence) or isinstance(raw_tols, str):
        raise SpecError(f"{where}.tolerations must be a list")
    for i, raw in enumerate(raw_tols):
        tol = as_object(raw, f"{where}.tolerations[{i}]")
        op = opt_str(tol, "operator", f"{where}.tolerations[{i}]")
        if op not in (None, "Exists", "Equal"):
            raise SpecError(f"{where}.tolerations[{i}].operator must be Exists or Equal")
        effect = opt_str(tol, "effect", f"{where}.tolerations[{i}]")
        if effect not in (None, "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise SpecError(f"{where}.tolerations[{i}].effect is not a taint effect")
        tolerations.append(
            Toleration(
                key=opt_str(tol, "key", where),
                operator=op,
                value=opt_str(tol, "value", where),
                effect=effect,
                toleration_seconds=int_field(
                    tol, "tolerationSeconds", where, None, -(2**62), 2**62
                ),
            )
        )
    affinity = data.get("affinity")
    if affinity is not None and not isinstance(affinity, Mapping):
        raise SpecError(f"{where}.affinity must be an object")
    return Serving(
        replicas=replicas,
        gpus_per_replica=gpus,
        triton_image=opt_str(data, "tritonImage", where),
        requests=_quantity_map(resources.get("requests"), f"{where}.resources.requests"),
        limits=_quantity_map(resources.get("limits"), f"{where}.resources.limits"),
        node_selector={str(k): str(v) for k, v in selector.items()},
        tolerations=tuple(tolerations),
        affinity=dict(affinity) if affinity else None,
        priority_class_name=opt_str(data, "priorityClassName", where),
    )


def _int_or_percent(data: Mapping[str, Any], key: str, default: int) -> int | str:
    value = data.get(key, default)
    if isinstance(value, bool):
        raise SpecError(f"spec.rollout.{key} must be a count or a percentage")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and PERCENT_RE.match(value):
        return value
    raise SpecError(f"spec.rollout.{key} must be a count or a percentage such as 25%")


def _is_zero(value: int | str) -> bool:
    return value in (0, "0%")


def parse_model(body: Mapping[str, Any]) -> ModelSpec:
    """Parse a ProtectedModel body; raises SpecError naming the first problem."""
    meta = parse_meta(body)
    if not DNS1035_RE.match(meta.name) or len(meta.name) > MAX_MODEL_NAME:
        raise SpecError(
            "metadata.name must be a DNS-1035 label of at most 50 characters "
            "(it names the model's Service and Vault role)"
        )
    spec = as_object(body.get("spec"), "spec")
    if not spec:
        raise SpecError("spec is required")
    tenant = must_match(
        req_str(spec, "tenant", "spec"),
        DNS1123_LABEL_RE,
        "spec.tenant must be a DNS label (lower-case letters, digits and '-')",
    )
    lic_ref = as_object(spec.get("licenseRef"), "spec.licenseRef")
    if not lic_ref:
        raise SpecError("spec.licenseRef.name is required")
    license_name = must_match(
        req_str(lic_ref, "name", "spec.licenseRef"),
        DNS1123_SUBDOMAIN_RE,
        "spec.licenseRef.name is not a valid object name",
    )
    version = must_match(
        req_str(spec, "version", "spec"),
        VERSION_RE,
        "spec.version must be letters, digits, '.', '_' or '-' (at most 63)",
    )
    if len(version) > 63:
        raise SpecError("spec.version must be at most 63 characters")
    model_name = opt_str(spec, "modelName", "spec") or meta.name
    must_match(model_name, TRITON_NAME_RE, "spec.modelName is not a valid Triton model name")
    source_data = as_object(spec.get("source"), "spec.source")
    if not source_data:
        raise SpecError("spec.source is required")
    source = _parse_source(source_data)
    vault = as_object(spec.get("vault"), "spec.vault")
    transit_key = must_match(
        req_str(vault, "transitKey", "spec.vault"),
        TRITON_NAME_RE,
        "spec.vault.transitKey is not a valid Transit key name",
    )
    serving = _parse_serving(as_object(spec.get("serving"), "spec.serving"))
    gw = as_object(spec.get("gateway"), "spec.gateway")
    store = gw.get("quotaStore", "embedded")
    if store not in ("embedded", "redis"):
        raise SpecError(f"spec.gateway.quotaStore must be embedded or redis (got {store!r})")
    redis_url = opt_str(gw, "redisUrl", "spec.gateway")
    if store == "redis" and not redis_url:
        raise SpecError("spec.gateway.quotaStore: redis needs spec.gateway.redisUrl")
    if serving.replicas > 1 and store != "redis":
        raise SpecError(
            "spec.serving.replicas above 1 needs spec.gateway.quotaStore: redis, so that "
            "every replica counts against the same quotas"
        )
    state_claim = opt_str(gw, "quotaStateClaimName", "spec.gateway")
    if state_claim is not None:
        if store != "embedded":
            raise SpecError(
                "spec.gateway.quotaStateClaimName is only used with quotaStore embedded"
            )
        if not DNS1123_SUBDOMAIN_RE.match(state_claim) or len(state_claim) > 253:
            raise SpecError("spec.gateway.quotaStateClaimName is not a valid claim name")
    gateway = Gateway(
        api_keys_secret=opt_str(gw, "apiKeysSecretName", "spec.gateway") or f"{meta.name}-api-keys",
        quota_store=store,
        redis_url=redis_url,
        quota_state_claim=state_claim,
    )
    policy = parse_output_policy(
        as_object(spec.get("outputPolicy"), "spec.outputPolicy"),
        "spec.outputPolicy",
        "mode",
        "topK",
    )
    rollout_data = as_object(spec.get("rollout"), "spec.rollout")
    rollout = Rollout(
        max_surge=_int_or_percent(rollout_data, "maxSurge", 0),
        max_unavailable=_int_or_percent(rollout_data, "maxUnavailable", 1),
    )
    if _is_zero(rollout.max_surge) and _is_zero(rollout.max_unavailable):
        raise SpecError("spec.rollout.maxSurge and maxUnavailable cannot both be zero")
    if state_claim is not None and not _is_zero(rollout.max_surge):
        raise SpecError(
            "spec.gateway.quotaStateClaimName needs spec.rollout.maxSurge 0: the embedded "
            "store's counters are held by one Pod at a time"
        )
    netpol = as_object(spec.get("networkPolicy"), "spec.networkPolicy")
    peers = netpol.get("ingressFrom") or []
    if not isinstance(peers, Sequence) or isinstance(peers, str):
        raise SpecError("spec.networkPolicy.ingressFrom must be a list")
    ingress = tuple(dict(as_object(p, "spec.networkPolicy.ingressFrom[]")) for p in peers)
    return ModelSpec(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        generation=meta.generation,
        created=meta.created,
        tenant=tenant,
        license_name=license_name,
        version=version,
        model_name=model_name,
        source=source,
        transit_key=transit_key,
        serving=serving,
        gateway=gateway,
        output_policy=policy,
        rollout=rollout,
        ingress_from=ingress,
    )
