"""`modelseal rewrap` (see bundle_commands)."""

from .bundle_commands import register_rewrap as register

__all__ = ["register"]
