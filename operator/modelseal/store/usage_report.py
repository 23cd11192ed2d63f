"""A gateway's counters as its read-only ``/usage`` endpoint reports them (issue 14).

The embedded store keeps a license's counters inside the model's Pod, where only that Pod's
gateway can read them; the operator asks the gateway for them over the Pod network to show
``ModelLicense.status.usage`` (``modelseal.handlers.licenses_usage``). Redis counters the
operator reads from Redis itself.

The endpoint (``GET /usage`` on the gateway's metrics port) answers only a caller that
presents ``Authorization: Bearer <token>``, the token being an HMAC of a fixed label under
the model's audit checkpoint key (``usage_read_token``): the gateway has that key as a file,
the operator in the model's control Secret (it wrote it). The token lets one read the
counts, nothing more: a copy seen on the wire does not sign audit checkpoints. Body::

    {"v": 1, "readAt": <ms>, "store": "embedded",
     "licenses": [{"id": "team-a/gold", "tenant": "acme",
                   "total": [<day>, <month>, <lifetime>],
                   "models": {"team-a/digits": [<day>, <month>, <lifetime>]}}]}

``models`` is keyed by each model's counter key (``License.counter_key``: the
ProtectedModel where the operator rendered the license).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any, Final, NamedTuple

from modelseal.quota.license import License, Limits
from modelseal.store.base import CounterStore, license_scope, model_scope

USAGE_PATH: Final = "/usage"
REPORT_VERSION: Final = 1
_LABEL: Final = b"modelseal-usage-read-v1"


def usage_read_token(audit_key: bytes) -> str:
    """The bearer token of the ``/usage`` endpoint of the gateway whose audit key this is."""
    return hmac.new(audit_key, _LABEL, hashlib.sha256).hexdigest()


def authorized(token: str, authorization: str | None) -> bool:
    """Whether the ``Authorization`` header carries ``token`` (compared in constant time)."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


async def usage_report(
    store: CounterStore, licenses: Mapping[str, License] | None, now_ms: int
) -> dict[str, Any]:
    """The counters of every license the gateway has loaded, and of each of its models."""
    out: list[dict[str, Any]] = []
    for lic in sorted((licenses or {}).values(), key=lambda x: x.id):
        total = await store.usage(license_scope(lic.id, lic.tenant), now_ms)
        models: dict[str, list[int]] = {}
        for model in sorted(lic.models):
            key = lic.counter_key(model)
            got = await store.usage(model_scope(lic.id, lic.tenant, key, Limits()), now_ms)
            models[key] = [got.day, got.month, got.total]
        out.append(
            {
                "id": lic.id,
                "tenant": lic.tenant,
                "total": [total.day, total.month, total.total],
                "models": models,
            }
        )
    return {"v": REPORT_VERSION, "readAt": now_ms, "store": store.kind, "licenses": out}


class Counted(NamedTuple):
    day: int
    month: int
    lifetime: int


class LicenseCounts(NamedTuple):
    """One license's counters from one gateway's report."""

    total: Counted
    models: dict[str, Counted]  # counter key -> counts


def _counted(raw: Any) -> Counted:
    if not isinstance(raw, list) or len(raw) != 3:
        raise ValueError(f"counts {raw!r} are not [day, month, lifetime]")
    day, month, lifetime = raw
    for v in (day, month, lifetime):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f"count {v!r} is not a whole number")
    return Counted(day, month, lifetime)


def license_counts(report: Any, license_id: str) -> LicenseCounts | None:
    """The counts of ``license_id`` in a gateway's report; None when the gateway has not
    loaded that license. Raises ValueError on a report of another shape or version."""
    if not isinstance(report, Mapping) or report.get("v") != REPORT_VERSION:
        raise ValueError("not a modelseal usage report (v1)")
    entries = report.get("licenses")
    if not isinstance(entries, list):
        raise ValueError("usage report without licenses")
    for entry in entries:
        if isinstance(entry, Mapping) and entry.get("id") == license_id:
            models = entry.get("models")
            if not isinstance(models, Mapping):
                raise ValueError("usage report: models is not an object")
            return LicenseCounts(
                _counted(entry.get("total")),
                {str(k): _counted(v) for k, v in models.items()},
            )
    return None
