"""Helpers for tests and the benchmarks, kept out of the production modules.

Like ``kopf.testing``: importable by anyone, used by no production code path (the
``crypto`` layer has its own, ``modelseal.crypto.testing``, for in-memory bundles).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelseal.config import Settings


def settings_for_tests(tmp: Path, **over: Any) -> Settings:
    """Settings with every path under ``tmp`` (for tests and the benchmark)."""
    base: dict[str, Any] = {
        "license_file": tmp / "license.json",
        "api_keys_file": tmp / "keys.json",
        "quota_state_dir": tmp / "quota",
        "audit_sink": "file",
        "audit_file": tmp / "audit.jsonl",
    }
    base.update(over)
    return Settings(**base)
