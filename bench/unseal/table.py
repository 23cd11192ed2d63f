"""Issue 13's unseal table from `bench.unseal.bench --json` files, one per worker count:
GB/s (10^9 bytes per second, the median run) of the pinned unseal, the unseal without a
pin, the same bundle pinned by sha256tree, and of `cp -r` and the tmpfs write limits.

    python -m bench.unseal.table unseal-w1.json unseal-w2.json ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

ROWS = (
    ("unseal", "pinned unseal (blake3tree)"),
    ("unseal-nopin", "unpinned unseal"),
    ("unseal-sha256tree", "pinned unseal (sha256tree)"),
    ("unseal_vs_cp_ratio", "pinned unseal / cp (time)"),
)
REFERENCES = (
    ("cp", "cp -r"),
    ("limit-files", "limit: a file per thread"),
    ("limit-mmap", "limit: one shared map"),
)


def rate(run: dict[str, Any], tool: str) -> float:
    return float(run["model_bytes"]) / float(run[tool]["median"]) / 1e9


def table(runs: list[dict[str, Any]]) -> str:
    runs = sorted(runs, key=lambda r: int(r.get("workers") or 0))
    heads = [str(r.get("workers") or "auto") for r in runs]
    width = max(len(label) for _, label in ROWS + REFERENCES)
    lines = [f"{'workers':<{width}} | " + " | ".join(f"{h:>6}" for h in heads)]
    for tool, label in ROWS:
        if tool.endswith("_ratio"):
            cells = [f"{float(r[tool]):>6.3f}" for r in runs]
        else:
            cells = [f"{rate(r, tool):>6.2f}" for r in runs]
        lines.append(f"{label:<{width}} | " + " | ".join(cells))
    for tool, label in REFERENCES:  # no worker count: the median over every run
        values = sorted(rate(r, tool) for r in runs)
        lines.append(f"{label:<{width}} | {values[len(values) // 2]:.2f} GB/s (median of runs)")
    first = runs[0]
    loads = ", ".join(f"{float(r['load_median']):.1f}" for r in runs)
    lines.append(
        f"model {first['model_bytes'] / 1e9:.2f} GB, {first['cpus']} CPUs, key: {first['key']}, "
        f"load (median) {loads}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args(argv)
    print(table([json.loads(f.read_text()) for f in args.files]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
