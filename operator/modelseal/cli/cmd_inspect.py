"""`modelseal inspect` (see bundle_commands)."""

from .bundle_commands import register_inspect as register

__all__ = ["register"]
