"""The unsealer role (`python -m modelseal unsealer`) and the unseal engine it shares with
`modelseal unseal`. `run(settings)` imports aiohttp and the rest lazily."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from modelseal.config import Settings


def run(settings: Settings) -> None:
    from modelseal.unsealer.service import run as _run

    _run(settings)


__all__ = ["run"]
