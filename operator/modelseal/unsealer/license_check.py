"""Whether the license file still allows the published model (pure: no file reading)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime

from modelseal.quota.license import License


def revocation_reason(
    licenses: Mapping[str, License], models: Iterable[str], now: datetime
) -> str | None:
    """Why the model must be revoked, or None while one license covering it allows it.

    A model no license names is left alone (the gateway refuses its requests anyway);
    every covering license revoked or expired revokes it, naming each."""
    wanted = set(models)
    covering = [lic for lic in licenses.values() if lic.models & wanted]
    if not covering:
        return None
    reasons: list[str] = []
    for lic in covering:
        if lic.revoked:
            reasons.append(f"license {lic.id} is revoked")
        elif lic.not_after is not None and now >= lic.not_after:
            reasons.append(f"license {lic.id} expired at {lic.not_after.isoformat()}")
        else:
            return None
    return "; ".join(reasons)
