"""One request budget per license: which models may count a license's quotas. Pure.

A ModelLicense's ``quotas`` are one budget for the tenant across every model and replica
under it (issue 12, High 4). The gateway keys its counters by the license id
(``<namespace>/<license>``, see ``modelseal.render.license_config``), so every gateway that
counts in the same store shares the budget exactly. That holds only where they do count in
the same store:

* ``redis``: every model under the license must name the same Redis (scheme, host, port,
  database); the key prefix is the operator's, the same for all.
* ``embedded``: the counters live in one Pod's folder, which no other gateway can share, so
  a license with quotas may then have one model only (replicas above 1 are already refused
  by the model's spec).

As with seats, the oldest model (creation time, then name) decides: it keeps serving, and
a younger model counting somewhere else is refused with a message that says what to change.

Durability: an embedded store without ``quotaStateClaimName`` keeps its counters in an
emptyDir, which deleting the Pod resets. With ``require_durable`` (the operator setting
``quota_require_durable_state``) such a model is refused when its license counts days,
months or a lifetime total.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import NamedTuple
from urllib.parse import urlsplit

from modelseal.models.license_spec import LicenseSpec, Quotas
from modelseal.models.spec import ModelSpec

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class CounterHome(NamedTuple):
    """Where a model's gateway counts: ``("redis", "<scheme>://<host>:<port>/<db>")`` or
    ``("embedded", "<namespace>/<model>")`` (its own Pod)."""

    kind: str
    where: str


class BudgetProblem(NamedTuple):
    """Why a model may not count its license's quotas: ``reason`` is a condition reason."""

    reason: str
    message: str


NOT_SHARED = "QuotaBudgetNotShared"
NOT_DURABLE = "QuotaStateNotDurable"


def counter_home(model: ModelSpec) -> CounterHome:
    if model.gateway.quota_store == "redis" and model.gateway.redis_url:
        parts = urlsplit(model.gateway.redis_url)
        db = parts.path.strip("/") or "0"
        host = (parts.hostname or "").lower()
        return CounterHome("redis", f"{parts.scheme}://{host}:{parts.port or 6379}/{db}")
    return CounterHome("embedded", model.key)


def has_license_quotas(lic: LicenseSpec) -> bool:
    """Whether the license sets any license-wide quota (then it is a shared budget)."""
    return lic.quotas != Quotas()


def counts_windows(lic: LicenseSpec, model: ModelSpec) -> bool:
    """Whether the model's gateway keeps day, month or lifetime counts that must persist."""
    scopes = [lic.quotas]
    per_model = lic.model_quotas.get(model.name)
    if per_model is not None:
        scopes.append(per_model)
    return any(
        q.per_day is not None or q.per_month is not None or q.total is not None for q in scopes
    )


def budget_problem(
    model: ModelSpec,
    lic: LicenseSpec,
    peers: Iterable[ModelSpec],
    *,
    require_durable: bool = False,
) -> BudgetProblem | None:
    """Why ``model`` may not count ``lic``'s quotas, or None. ``peers``: the other models
    under the license that pass its terms (``model`` itself among them is ignored)."""
    home = counter_home(model)
    if (
        require_durable
        and home.kind == "embedded"
        and model.gateway.quota_state_claim is None
        and counts_windows(lic, model)
    ):
        return BudgetProblem(
            NOT_DURABLE,
            f"license {lic.name} counts requests per day, month or in total, but the embedded "
            "quota store of this model keeps them in an emptyDir that deleting the Pod resets; "
            "set spec.gateway.quotaStateClaimName or use quotaStore redis",
        )
    if not has_license_quotas(lic):
        return None
    everyone = {p.key: p for p in peers if p.key != model.key}
    everyone[model.key] = model
    ordered = sorted(everyone.values(), key=lambda m: (m.created or _EPOCH, m.key))
    if len(ordered) < 2:
        return None
    first = ordered[0]
    first_home = counter_home(first)
    if first.key == model.key:
        return None  # the oldest keeps its store; the younger ones that differ are refused
    if first_home.kind == "embedded":
        return BudgetProblem(
            NOT_SHARED,
            f"license {lic.name}'s quotas are one budget for all its models, and model "
            f"{first.name} (the oldest) counts them in its embedded store, which no other "
            "model can share; use quotaStore redis with the same redisUrl for every model "
            "of the license",
        )
    if home != first_home:
        return BudgetProblem(
            NOT_SHARED,
            f"license {lic.name}'s quotas are one budget for all its models, counted in Redis "
            f"{first_home.where} by model {first.name} (the oldest); this model counts in "
            f"{'its embedded store' if home.kind == 'embedded' else 'Redis ' + home.where}: use "
            f"quotaStore redis with redisUrl on {first_home.where}",
        )
    return None
