"""`modelseal verify` (see bundle_commands)."""

from .bundle_commands import register_verify as register

__all__ = ["register"]
