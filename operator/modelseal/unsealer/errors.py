"""The unsealing steps' errors (`modelseal.unsealer.engine` re-exports them)."""

from __future__ import annotations


class UnsealError(Exception):
    """The unseal cannot proceed (bad target, no room, key mismatch...)."""


class NotTmpfsError(UnsealError):
    """The target is not a memory filesystem."""
