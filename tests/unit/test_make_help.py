"""`make help` is generated from the targets' own `## ` comments: every phony target of the
Makefile and mk/*.mk must appear there with a description, so the list cannot drift."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def phony_targets() -> set[str]:
    targets: set[str] = set()
    for makefile in [ROOT / "Makefile", *sorted((ROOT / "mk").glob("*.mk"))]:
        for line in makefile.read_text(encoding="utf-8").splitlines():
            if line.startswith(".PHONY:"):
                targets.update(line.split(":", 1)[1].split())
    return targets


def help_lines() -> dict[str, str]:
    out = subprocess.run(
        ["make", "--no-print-directory", "-s", "-C", str(ROOT), "help"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    described: dict[str, str] = {}
    for line in out.splitlines():
        match = re.match(r"^\s+(\S+)\s+(\S.*)$", line)
        assert match, f"unexpected line in make help: {line!r}"
        described[match.group(1)] = match.group(2)
    return described


def test_every_phony_target_is_listed_with_a_description() -> None:
    described = help_lines()
    missing = sorted(phony_targets() - described.keys())
    assert not missing, f"phony targets without a '## ' comment on their own line: {missing}"


def test_help_lists_only_real_targets() -> None:
    extra = sorted(help_lines().keys() - phony_targets())
    assert not extra, f"make help lists targets that are not declared .PHONY: {extra}"


def test_the_readme_commands_are_listed() -> None:
    described = help_lines()
    for target in ("test", "demo", "env-check", "cold-check", "attack"):
        assert target in described
