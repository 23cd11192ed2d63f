"""bench/ready/bench.py: `share_pages` (nginx's copies become hard links to versitygw's
object files only where the bytes' size matches, and nothing else changes) and
`fetch_summary` (how the sealed runs fetched)."""

from __future__ import annotations

from pathlib import Path

from bench.ready.bench import MiB, fetch_summary, share_pages


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_copies_become_links_to_the_objects(tmp_path: Path) -> None:
    serve, bucket = tmp_path / "serve", tmp_path / "s3" / "data" / "bench"
    files = {"llm/config.pbtxt": b"c" * 10, "llm/1/model.bin": b"m" * 100}
    for rel, data in files.items():
        _write(serve / "plain-1" / rel, data)
        _write(bucket / "plain" / rel, data)
    _write(serve / "sealed-1.mseal", b"s" * 50)
    _write(bucket / "sealed.mseal", b"s" * 50)

    assert share_pages(serve, bucket, 1) == 3

    for rel, data in files.items():
        copy, obj = serve / "plain-1" / rel, bucket / "plain" / rel
        assert copy.samefile(obj)
        assert copy.read_bytes() == data
    assert (serve / "sealed-1.mseal").samefile(bucket / "sealed.mseal")
    assert not list(serve.rglob("*.link"))


def test_a_missing_or_different_object_keeps_the_copy(tmp_path: Path) -> None:
    serve, bucket = tmp_path / "serve", tmp_path / "bucket"
    _write(serve / "plain-1" / "a.bin", b"a" * 10)
    _write(serve / "plain-1" / "b.bin", b"b" * 10)
    _write(bucket / "plain" / "a.bin", b"a" * 11)  # another size: not the same bytes
    _write(serve / "sealed-1.mseal", b"s" * 5)  # no object at all

    assert share_pages(serve, bucket, 1) == 0

    assert (serve / "plain-1" / "a.bin").read_bytes() == b"a" * 10
    assert (serve / "plain-1" / "a.bin").stat().st_nlink == 1
    assert (serve / "sealed-1.mseal").stat().st_nlink == 1


def test_fetch_summary_says_how_each_run_fetched() -> None:
    runs = [
        {"switched_at": 64 * MiB, "sampled": [900e6, 2100e6]},
        {"switched_at": None, "sampled": [1500e6, 1600e6]},
        {"switched_at": None, "sampled": None},
    ]
    assert fetch_summary(runs) == (
        "ranged in 1 of 3 runs (from MiB 64); "
        "stream vs sampled ranges, MB/s: 900 vs 2100, 1500 vs 1600"
    )
    assert fetch_summary([{"switched_at": None, "sampled": None}]) == "ranged in 0 of 1 runs"
