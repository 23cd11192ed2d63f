"""Typed, validated view of the ModelLicense custom resource. Pure: no I/O.

Like `modelseal.models.spec` for ProtectedModel: checks again what the operator relies on
and raises `SpecError` naming the first problem. The gateway's license file is another
format (`modelseal.quota.license`); `modelseal.render.license_config` maps one onto the
other.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from modelseal.models.resource import (
    DNS1035_RE,
    DNS1123_LABEL_RE,
    OutputPolicy,
    SpecError,
    as_object,
    int_field,
    must_match,
    number_field,
    opt_str,
    parse_meta,
    parse_output_policy,
    parse_time,
    req_str,
)


@dataclass(frozen=True)
class Quotas:
    rate_per_second: float | None = None
    burst: int | None = None
    per_day: int | None = None
    per_month: int | None = None
    total: int | None = None
    max_concurrent: int | None = None


@dataclass(frozen=True)
class LicenseSpec:
    namespace: str
    name: str
    uid: str
    generation: int
    tenant: str
    not_before: datetime | None
    not_after: datetime | None
    allowed_models: frozenset[str]
    max_replicas: int
    max_gpus: int
    quotas: Quotas
    model_quotas: Mapping[str, Quotas]
    output_ceiling: OutputPolicy
    revoked: bool
    revocation_reason: str | None

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def allows(self, model_name: str) -> bool:
        return "*" in self.allowed_models or model_name in self.allowed_models


def _parse_quotas(data: Mapping[str, Any], where: str) -> Quotas:
    big = 2**50
    quotas = Quotas(
        rate_per_second=number_field(data, "ratePerSecond", where),
        burst=int_field(data, "burst", where, None, 1, 1_000_000),
        per_day=int_field(data, "perDay", where, None, 0, big),
        per_month=int_field(data, "perMonth", where, None, 0, big),
        total=int_field(data, "total", where, None, 0, big),
        max_concurrent=int_field(data, "maxConcurrent", where, None, 1, 100_000),
    )
    if quotas.burst is not None and quotas.rate_per_second is None:
        raise SpecError(f"{where}.burst needs {where}.ratePerSecond")
    return quotas


def parse_license(body: Mapping[str, Any]) -> LicenseSpec:
    """Parse a ModelLicense body; raises SpecError naming the first problem."""
    meta = parse_meta(body)
    spec = as_object(body.get("spec"), "spec")
    if not spec:
        raise SpecError("spec is required")
    tenant = must_match(
        req_str(spec, "tenant", "spec"),
        DNS1123_LABEL_RE,
        "spec.tenant must be a DNS label (lower-case letters, digits and '-')",
    )
    not_before = parse_time(spec.get("notBefore"), "spec.notBefore")
    not_after = parse_time(spec.get("notAfter"), "spec.notAfter")
    if not_before and not_after and not_after <= not_before:
        raise SpecError("spec.notAfter must be later than spec.notBefore")
    allowed = spec.get("allowedModels")
    if not isinstance(allowed, Sequence) or isinstance(allowed, str) or not allowed:
        raise SpecError("spec.allowedModels must be a non-empty list of model names or '*'")
    for item in allowed:
        if not isinstance(item, str) or not (item == "*" or DNS1035_RE.match(item)):
            raise SpecError(f"spec.allowedModels has an invalid entry {item!r}")
    seats = as_object(spec.get("seats"), "spec.seats")
    if not seats:
        raise SpecError("spec.seats is required (maxReplicas and maxGPUs)")
    max_replicas = int_field(seats, "maxReplicas", "spec.seats", None, 0, 10_000)
    max_gpus = int_field(seats, "maxGPUs", "spec.seats", None, 0, 10_000)
    if max_replicas is None or max_gpus is None:
        raise SpecError("spec.seats needs maxReplicas and maxGPUs")
    quotas = _parse_quotas(as_object(spec.get("quotas"), "spec.quotas"), "spec.quotas")
    model_quotas: dict[str, Quotas] = {}
    for model, raw in as_object(spec.get("modelQuotas"), "spec.modelQuotas").items():
        where = f"spec.modelQuotas.{model}"
        if "*" not in allowed and model not in allowed:
            raise SpecError(f"{where} names a model not in spec.allowedModels")
        model_quotas[str(model)] = _parse_quotas(as_object(raw, where), where)
    ceiling = parse_output_policy(
        as_object(spec.get("outputPolicy"), "spec.outputPolicy"),
        "spec.outputPolicy",
        "maxMode",
        "maxTopK",
    )
    revoked = spec.get("revoked", False)
    if not isinstance(revoked, bool):
        raise SpecError("spec.revoked must be true or false")
    return LicenseSpec(
        namespace=meta.namespace,
        name=meta.name,
        uid=meta.uid,
        generation=meta.generation,
        tenant=tenant,
        not_before=not_before,
        not_after=not_after,
        allowed_models=frozenset(str(a) for a in allowed),
        max_replicas=max_replicas,
        max_gpus=max_gpus,
        quotas=quotas,
        model_quotas=model_quotas,
        output_ceiling=ceiling,
        revoked=revoked,
        revocation_reason=opt_str(spec, "revocationReason", "spec"),
    )
