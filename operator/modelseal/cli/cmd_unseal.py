"""`modelseal unseal` (see bundle_commands)."""

from .bundle_commands import register_unseal as register

__all__ = ["register"]
