"""``modelseal audit verify FILE`` (the command itself lives in ``modelseal.cli.audit``)."""

from modelseal.cli.audit import register

__all__ = ["register"]
