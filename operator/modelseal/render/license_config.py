"""The gateway's license file for one model, rendered from its ModelLicense. Pure.

The format is the gateway's (see `modelseal.quota.license`): one license object with
snake_case fields. This is the only place that maps the CRD's camelCase fields onto it.
A model whose license is withdrawn (expired, revoked, not granted) gets a file that says
so (``revoked: true`` or the real window), so the gateway refuses calls even before the
Pods are gone.

The mapping (CRD side parsed by `modelseal.models.license_spec` / `modelseal.models.spec`,
file side by `modelseal.quota.license`):

=====================================  ==========================================
ModelLicense / ProtectedModel field    license file field
=====================================  ==========================================
``<license namespace>/<license name>`` ``id`` (counters are keyed by it)
``ModelLicense.spec.tenant``           ``tenant``
ProtectedModel ``spec.modelName``      ``models`` (this one model only)
``spec.notBefore`` / ``spec.notAfter`` ``valid.not_before`` / ``valid.not_after``
                                       (UTC, whole seconds, ``Z``)
``spec.revoked``, or not granted       ``revoked``
``spec.quotas.ratePerSecond``          ``quotas.rate_per_second``
``spec.quotas.burst``                  ``quotas.burst``
``spec.quotas.perDay``                 ``quotas.per_day``
``spec.quotas.perMonth``               ``quotas.per_month``
``spec.quotas.total``                  ``quotas.total``
``spec.quotas.maxConcurrent``          ``quotas.concurrent``
``spec.modelQuotas.<ProtectedModel>``  ``model_quotas.<modelName>`` (same fields)
ProtectedModel ``<namespace>/<name>``  ``model_counters.<modelName>``
ProtectedModel ``spec.outputPolicy``:  ``output_policy``:
``mode`` full / topK / labels          ``mode`` full / top-k / labels-only
``topK``                               ``k`` (only with top-k)
=====================================  ==========================================

Absent CRD fields are left out of the file (unlimited, open window). The license's
``spec.outputPolicy.maxMode``/``maxTopK`` is a ceiling the operator checks the model
against (`modelseal.models.license`); it is not written to the file, and neither are
``spec.seats`` (the operator counts seats) and ``spec.revocationReason``.
"""

from __future__ import annotations

import json
from typing import Any

from modelseal.models.license_spec import LicenseSpec, Quotas
from modelseal.models.resource import OutputMode, OutputPolicy
from modelseal.models.spec import ModelSpec
from modelseal.quota.license import FileOutputMode

LICENSE_KEY = "license.json"

#: The output modes as the CRD spells them -> as the license file spells them.
MODE_IN_FILE: dict[OutputMode, FileOutputMode] = {
    "full": "full",
    "topK": "top-k",
    "labels": "labels-only",
}


def _quotas(q: Quotas) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if q.rate_per_second is not None:
        out["rate_per_second"] = q.rate_per_second
    if q.burst is not None:
        out["burst"] = q.burst
    if q.per_day is not None:
        out["per_day"] = q.per_day
    if q.per_month is not None:
        out["per_month"] = q.per_month
    if q.total is not None:
        out["total"] = q.total
    if q.max_concurrent is not None:
        out["concurrent"] = q.max_concurrent
    return out


def _policy(p: OutputPolicy) -> dict[str, Any]:
    out: dict[str, Any] = {"mode": MODE_IN_FILE[p.mode]}
    if p.mode == "topK" and p.top_k is not None:
        out["k"] = p.top_k
    return out


def _time(moment: Any) -> str:
    return str(moment.strftime("%Y-%m-%dT%H:%M:%SZ"))


def license_document(model: ModelSpec, lic: LicenseSpec | None, granted: bool) -> dict[str, Any]:
    """The license object for the gateway of `model`.

    Without a usable license (missing, another tenant's, or not granted) the document is
    revoked, so a gateway that still runs refuses every call.
    """
    if lic is None or lic.tenant != model.tenant:
        return {
            "id": f"{model.namespace}/{model.license_name}",
            "tenant": model.tenant,
            "models": [model.model_name],
            "revoked": True,
        }
    doc: dict[str, Any] = {
        "id": f"{lic.namespace}/{lic.name}",
        "tenant": lic.tenant,
        "models": [model.model_name],
        "revoked": bool(lic.revoked or not granted),
    }
    valid: dict[str, str] = {}
    if lic.not_before is not None:
        valid["not_before"] = _time(lic.not_before)
    if lic.not_after is not None:
        valid["not_after"] = _time(lic.not_after)
    if valid:
        doc["valid"] = valid
    quotas = _quotas(lic.quotas)
    if quotas:
        doc["quotas"] = quotas
    per_model = lic.model_quotas.get(model.name)
    if per_model is not None and _quotas(per_model):
        doc["model_quotas"] = {model.model_name: _quotas(per_model)}
    # The model's own counters are the ProtectedModel's, not its Triton name's: two models
    # with one modelName under one license must not count (and be limited) as one.
    doc["model_counters"] = {model.model_name: model.key}
    doc["output_policy"] = _policy(model.output_policy)
    return doc


def license_config_data(model: ModelSpec, lic: LicenseSpec | None, granted: bool) -> dict[str, str]:
    """ConfigMap data: one stable JSON text (sorted keys), so equal input renders equal bytes."""
    text = json.dumps(license_document(model, lic, granted), indent=2, sort_keys=True)
    return {LICENSE_KEY: text + "\n"}
