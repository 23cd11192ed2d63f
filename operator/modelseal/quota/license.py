"""The license file the gateway enforces: format, parsing and the pure checks on it.

The operator renders this file (JSON, a ConfigMap mounted at ``settings.license_file``)
from the tenant's ``ModelLicense``; the gateway re-reads it whenever it changes. The file is
either one license object or ``{"licenses": [<license>, ...]}`` (one gateway may serve
several tenants). One license::

    {
      "id": "team-a/acme-gold",            # optional, default = tenant; counters are keyed
                                            # by it, so a new license id starts new counters
      "tenant": "acme",                     # [A-Za-z0-9][A-Za-z0-9._-]*
      "models": ["digits", "identity"],     # models this tenant may call (Triton names)
      "valid": {"not_before": "2025-01-01T00:00:00Z",   # RFC 3339, both optional
                "not_after":  "2026-01-01T00:00:00Z"},
      "revoked": false,
      "quotas": {                           # whole tenant, all models; each field optional,
        "rate_per_second": 50,              # absent or null = unlimited
        "burst": 100,                       # token-bucket size (default ceil(rate), min 1)
        "per_day": 10000,                   # UTC calendar day
        "per_month": 200000,                # UTC calendar month
        "total": 1000000,                   # lifetime of this license id
        "concurrent": 8                     # in-flight requests
      },
      "model_quotas": {"digits": {"per_day": 500}},   # optional, same fields, per model
      "model_counters": {"digits": "team-a/digits-v2"},  # optional: the key of a model's
                                            # own counters (default its name); the operator
                                            # sets the ProtectedModel, so that two models
                                            # with one Triton name count apart
      "output_policy": {"mode": "top-k", "k": 3}      # full | top-k | labels-only
    }

Unknown fields are refused (a typo such as ``"revokd"`` must not silently fail open); the
gateway then refuses every request with 503 until the file is fixed.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
LICENSE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,252}$")

#: Upper bounds that keep the token-bucket arithmetic exact in Redis' Lua (doubles, 2^53).
MAX_RATE = 1_000_000
MAX_BURST = 1_000_000

Count = Annotated[int, Field(ge=0, le=2**50)]


class LicenseError(ValueError):
    """The license file is missing, not JSON, or does not match the format."""


# --- the file's schema (pydantic) ------------------------------------------------------
#
# Names: ``*Schema`` are this file's JSON shapes, `License`/`Limits`/`OutputFilter` the
# parsed view. The ModelLicense custom resource the operator reads is another format with
# its own names (`modelseal.models.license_spec`: `LicenseSpec`, `Quotas`, and
# `modelseal.models.resource.OutputPolicy`); `modelseal.render.license_config` holds the one
# mapping from its fields onto this file.

#: Output modes as the file spells them (the CRD says ``topK`` and ``labels``).
FileOutputMode = Literal["full", "top-k", "labels-only"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class QuotasSchema(_Strict):
    rate_per_second: Annotated[float, Field(gt=0, le=MAX_RATE)] | None = None
    burst: Annotated[int, Field(ge=1, le=MAX_BURST)] | None = None
    per_day: Count | None = None
    per_month: Count | None = None
    total: Count | None = None
    concurrent: Annotated[int, Field(ge=0, le=1_000_000)] | None = None

    @model_validator(mode="after")
    def _burst_needs_rate(self) -> QuotasSchema:
        if self.burst is not None and self.rate_per_second is None:
            raise ValueError("burst is set but rate_per_second is not")
        return self


class OutputPolicySchema(_Strict):
    mode: FileOutputMode = "full"
    k: Annotated[int, Field(ge=1, le=1000)] | None = None

    @model_validator(mode="after")
    def _k_for_top_k(self) -> OutputPolicySchema:
        if self.mode == "top-k" and self.k is None:
            raise ValueError("output_policy mode 'top-k' needs k")
        return self


class ValiditySchema(_Strict):
    not_before: datetime | None = None
    not_after: datetime | None = None

    @model_validator(mode="after")
    def _ordered(self) -> ValiditySchema:
        for name in ("not_before", "not_after"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"valid.{name} needs a time zone (e.g. a trailing Z)")
        if self.not_before and self.not_after and self.not_after <= self.not_before:
            raise ValueError("valid.not_after must be later than valid.not_before")
        return self


class LicenseSchema(_Strict):
    id: str | None = None
    tenant: str
    models: list[str] = Field(min_length=1)
    valid: ValiditySchema = ValiditySchema()
    revoked: bool = False
    quotas: QuotasSchema = QuotasSchema()
    model_quotas: dict[str, QuotasSchema] = Field(default_factory=dict)
    model_counters: dict[str, str] = Field(default_factory=dict)
    output_policy: OutputPolicySchema = OutputPolicySchema()

    @model_validator(mode="after")
    def _names(self) -> LicenseSchema:
        if not NAME_RE.match(self.tenant):
            raise ValueError(f"tenant {self.tenant!r} is not a valid name")
        if self.id is not None and not LICENSE_ID_RE.match(self.id):
            raise ValueError(f"id {self.id!r} is not a valid license id")
        for model in [*self.models, *self.model_quotas]:
            if not NAME_RE.match(model):
                raise ValueError(f"model name {model!r} is not valid")
        stray = set(self.model_quotas) - set(self.models)
        if stray:
            raise ValueError(f"model_quotas names models not in models: {sorted(stray)}")
        stray = set(self.model_counters) - set(self.models)
        if stray:
            raise ValueError(f"model_counters names models not in models: {sorted(stray)}")
        for key in self.model_counters.values():
            if not LICENSE_ID_RE.match(key):
                raise ValueError(f"model_counters key {key!r} is not valid")
        return self


class LicenseFileSchema(_Strict):
    licenses: list[LicenseSchema]


# --- the parsed, immutable view the gateway works with ----------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits of one counting scope; ``None`` is unlimited."""

    rate_per_second: float | None = None
    burst: int | None = None
    per_day: int | None = None
    per_month: int | None = None
    total: int | None = None
    concurrent: int | None = None

    @property
    def effective_burst(self) -> int | None:
        if self.rate_per_second is None:
            return None
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.rate_per_second))

    @classmethod
    def from_spec(cls, spec: QuotasSchema) -> Limits:
        return cls(
            rate_per_second=spec.rate_per_second,
            burst=spec.burst,
            per_day=spec.per_day,
            per_month=spec.per_month,
            total=spec.total,
            concurrent=spec.concurrent,
        )


UNLIMITED = Limits()


@dataclass(frozen=True, slots=True)
class OutputFilter:
    """How much of a model's output the gateway lets through (`modelseal.quota.output`)."""

    mode: FileOutputMode = "full"
    k: int = 1

    @property
    def restricted(self) -> bool:
        return self.mode != "full"


FULL_OUTPUT = OutputFilter()


@dataclass(frozen=True, slots=True)
class License:
    id: str
    tenant: str
    models: frozenset[str]
    not_before: datetime | None
    not_after: datetime | None
    revoked: bool
    quotas: Limits
    model_quotas: dict[str, Limits] = field(default_factory=dict)
    output_policy: OutputFilter = FULL_OUTPUT
    model_counters: dict[str, str] = field(default_factory=dict)

    def limits_for(self, model: str) -> Limits:
        return self.model_quotas.get(model, UNLIMITED)

    def counter_key(self, model: str) -> str:
        """What the model's own counters are keyed by: ``model_counters`` names it (the
        operator: ``<namespace>/<ProtectedModel>``), else the model's name. A name never
        holds ``/``, so the two forms never meet."""
        return self.model_counters.get(model, model)


@dataclass(frozen=True, slots=True)
class LicenseRefusal:
    """Why a license does not let a request through (HTTP 403)."""

    reason: Literal["revoked", "not_yet_valid", "expired", "model_not_licensed"]
    message: str


def check_license(lic: License, model: str, now: datetime) -> LicenseRefusal | None:
    """Pure check of revocation, validity window and allowed models at time ``now``."""
    if lic.revoked:
        return LicenseRefusal("revoked", f"license {lic.id} is revoked")
    if lic.not_before is not None and now < lic.not_before:
        return LicenseRefusal(
            "not_yet_valid", f"license {lic.id} is valid from {lic.not_before.isoformat()}"
        )
    if lic.not_after is not None and now >= lic.not_after:
        return LicenseRefusal("expired", f"license {lic.id} expired at {lic.not_after.isoformat()}")
    if model not in lic.models:
        return LicenseRefusal(
            "model_not_licensed", f"model {model!r} is not licensed to this tenant"
        )
    return None


def _to_license(spec: LicenseSchema) -> License:
    policy = spec.output_policy
    return License(
        id=spec.id or spec.tenant,
        tenant=spec.tenant,
        models=frozenset(spec.models),
        not_before=spec.valid.not_before.astimezone(UTC) if spec.valid.not_before else None,
        not_after=spec.valid.not_after.astimezone(UTC) if spec.valid.not_after else None,
        revoked=spec.revoked,
        quotas=Limits.from_spec(spec.quotas),
        model_quotas={m: Limits.from_spec(q) for m, q in spec.model_quotas.items()},
        output_policy=OutputFilter(policy.mode, policy.k or 1),
        model_counters=dict(spec.model_counters),
    )


def parse_licenses(data: bytes | str) -> dict[str, License]:
    """Parse the license file; returns licenses by tenant. Raises LicenseError."""
    try:
        raw: Any = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LicenseError(f"license file is not JSON: {exc}") from exc
    if isinstance(raw, dict) and "licenses" not in raw:
        raw = {"licenses": [raw]}
    try:
        spec = LicenseFileSchema.model_validate_json(json.dumps(raw))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}"
            for err in exc.errors()
        )
        raise LicenseError(f"license file is not valid: {problems}") from None
    out: dict[str, License] = {}
    ids: set[str] = set()
    for item in spec.licenses:
        lic = _to_license(item)
        if lic.tenant in out:
            raise LicenseError(f"license file names tenant {lic.tenant!r} twice")
        if lic.id in ids:
            raise LicenseError(f"license file names license id {lic.id!r} twice")
        out[lic.tenant] = lic
        ids.add(lic.id)
    return out
