"""The operator role: kopf handlers (thin) over the reconciler.

``run(settings)`` is what ``python -m modelseal operator`` calls; kopf is imported lazily so
that importing this package costs nothing for the other roles.
"""

from __future__ import annotations

from modelseal.config import Settings


def run(settings: Settings) -> None:
    from modelseal.handlers.run import run as _run

    _run(settings)


__all__ = ["run"]
