"""bench/unseal/table.py: issue 13's unseal table from the benchmark's JSON results."""

from __future__ import annotations

from typing import Any

from bench.unseal.table import rate, table

GB = 10**9


def _run(workers: int, seconds: dict[str, float], cpus: int = 16) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "model_bytes": 4 * GB,
        "workers": workers,
        "cpus": cpus,
        "key": "local",
        "load_median": 0.5,
        "unseal_vs_cp_ratio": seconds["unseal"] / seconds["cp"],
    }
    for tool, s in seconds.items():
        doc[tool] = {"median": s}
    return doc


def _seconds(unseal: float, cp: float) -> dict[str, float]:
    return {
        "unseal": unseal,
        "unseal-nopin": unseal / 2,
        "unseal-sha256tree": unseal * 2,
        "cp": cp,
        "limit-files": 0.5,
        "limit-mmap": 1.0,
    }


def test_rate_is_decimal_gigabytes_per_second_of_the_median_run() -> None:
    assert rate(_run(1, _seconds(2.0, 2.0)), "unseal") == 2.0
    assert rate(_run(1, _seconds(2.0, 2.0)), "limit-files") == 8.0


def test_columns_by_worker_count_and_references_as_the_median_over_runs() -> None:
    runs = [
        _run(4, _seconds(1.0, 2.0)),
        _run(1, _seconds(4.0, 2.0)),
        _run(16, _seconds(0.5, 4.0)),
    ]
    lines = table(runs).splitlines()
    assert lines[0].split("|")[1:] == ["      1 ", "      4 ", "     16"]
    assert lines[1].split("|")[1:] == ["   1.00 ", "   4.00 ", "   8.00"]  # pinned
    assert lines[2].split("|")[1:] == ["   2.00 ", "   8.00 ", "  16.00"]  # unpinned
    assert lines[3].split("|")[1:] == ["   0.50 ", "   2.00 ", "   4.00"]  # sha256tree
    assert lines[4].split("|")[1:] == ["  2.000 ", "  0.500 ", "  0.125"]  # unseal / cp
    assert lines[5].endswith("| 2.00 GB/s (median of runs)")  # cp: 2, 2, 1 GB/s
    assert "model 4.00 GB, 16 CPUs, key: local" in lines[-1]
