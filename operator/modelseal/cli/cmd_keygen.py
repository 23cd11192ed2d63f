"""`modelseal keygen` (see keys_commands)."""

from .keys_commands import register

__all__ = ["register"]
