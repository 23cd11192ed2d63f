"""`modelseal seal` (see bundle_commands)."""

from .bundle_commands import register_seal as register

__all__ = ["register"]
