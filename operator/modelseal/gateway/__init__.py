"""The gateway role: KServe v2 HTTP and gRPC in front of Triton, with tenant API keys,
license quotas (embedded or Redis counters), output policy, audit trail and metrics.

``run(settings)`` is the entry point (``python -m modelseal gateway``, or
``python -m modelseal.gateway``). Formats of the files it follows: the license file in
``modelseal.quota.license``, the API keys file in ``modelseal.gateway.keys``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelseal.config import Settings


def run(settings: Settings) -> None:
    from modelseal.gateway.main import run as _run

    _run(settings)


__all__ = ["run"]
