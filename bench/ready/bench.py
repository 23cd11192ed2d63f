"""``make bench-ready``: time-to-Ready of a model, sealed versus plain, from a real HTTP
server on loopback (Debian's nginx) and from the local S3 server (versitygw).

The same model as `make bench-unseal` (one large file, four shards, 100 small files;
``--size-mib``, default 4096) is served, as a plain folder and as one sealed bundle, by

  (a) nginx on 127.0.0.1 (http, or https with a CA made here: ``--https``), and
  (b) the test S3 server, the Versity S3 Gateway (``modelseal_devenv.s3``), on 127.0.0.1
      (objects under plain/ and the bundle sealed.mseal).

Timed, ``--runs`` times in rotating order after an uncounted warm-up round, each into a
fresh /dev/shm directory (removed, untimed, after each run), as child processes:

  plain-http   curl --parallel --parallel-max 4 --create-dirs: every file of the model
               straight into the destination (no staging, no copy: the fastest plain
               reference a simple tool gives, stricter than "download + cp -r")
  sealed-http  the unsealer's path from the bundle's URL: the first response read in
               order, parallel ranges for the rest once that one stream is what the
               unsealer waits on (sources/ranged.py AdaptiveReader) -> every chunk
               authenticated -> decrypt -> staging -> atomic publish, digest pinned
               (bench/ready/unseal_remote.py)
  plain-s3     boto3, 4 threads, one GET per object streamed into its file
               (bench/ready/fetch_s3.py)
  sealed-s3    the unsealer's path from s3://bench/sealed.mseal
  sealed-s3-1stream, (with --compare-one-stream) sealed-http-1stream: the same with the
               ranged fetch switched off (one GET read in order), for comparison only

The data key is a LOCALLY GENERATED one (no Vault; the Transit unwrap, one round trip of
tens of milliseconds, is not timed) and the output says so.

versitygw stores each object as a file (uploaded through the S3 API, so it keeps its own
ETag) and serves a range by reading only that range, as real S3 does, so the S3 leg runs
at the model's full size (until session 14 the S3 server was moto, which reads the whole
object for every GET, and the leg ran at 512 MiB). Once uploaded, the folder nginx serves
is hard-linked to versitygw's object files (same bytes, one copy in the page cache
instead of two). ``--s3-size-mib`` sets another size for the S3 leg.

Prints medians, min and max, the load average during the timed runs, and last:

    ready_sealed_s=<x> ready_plain_s=<y> sealed_vs_plain_ratio_http=<a> sealed_vs_plain_ratio_s3=<b>

(x, y: medians of sealed-http and plain-http; a, b: sealed / plain medians per server).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.unseal.bench import SHM, build_model, log, timed, tree_bytes

MiB = 1024 * 1024
BUCKET = "bench"
Sample = tuple[float, int, float]


def model_files(root: Path) -> list[str]:
    return sorted(
        str((Path(d) / f).relative_to(root))
        for d, _, files in os.walk(root)
        for f in files
        if not f.startswith(".bench")
    )


def seal_bundle(plain: Path, bundle: Path, key: bytes, chunk_size: int) -> str:
    from bench.unseal.local_key import seal_with_local_key
    from modelseal.crypto.stream import SecretBytes

    start = time.perf_counter()
    pin = seal_with_local_key(plain, bundle, SecretBytes(key), chunk_size)
    log(f"sealed {bundle.name} in {time.perf_counter() - start:.1f}s")
    return pin


def curl_config(base_url: str, url_dir: str, files: list[str], dest: Path, cfg: Path) -> None:
    lines = []
    for rel in files:
        lines.append(f'url = "{base_url}/{url_dir}/{rel}"')
        lines.append(f'output = "{dest / rel}"')
    cfg.write_text("\n".join(lines) + "\n")


def run_rounds(
    tools: dict[str, Callable[[int], Sample]], runs: int, targets: Path
) -> tuple[dict[str, list[Sample]], list[float]]:
    samples: dict[str, list[Sample]] = {k: [] for k in tools}
    loads: list[float] = []
    order = list(tools)
    for rnd in range(runs + 1):
        for name in order:
            load = os.getloadavg()[0]
            sample = tools[name](rnd)
            shutil.rmtree(targets / f"{name}-{rnd}", ignore_errors=True)
            if rnd > 0:
                samples[name].append(sample)
                loads.append(load)
        log(f"  {'warm-up' if rnd == 0 else f'round {rnd}'}: done")
        order = order[1:] + order[:1]
    return samples, loads


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=4096)
    ap.add_argument("--s3-size-mib", type=int, default=0, help="S3 leg size (--size-mib)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="unseal threads (default: CPUs)")
    ap.add_argument("--chunk-size", type=int, default=MiB)
    ap.add_argument("--curl-parallel", type=int, default=4)
    ap.add_argument("--https", action="store_true", help="nginx with TLS (a CA made here)")
    ap.add_argument("--skip-s3", action="store_true")
    ap.add_argument(
        "--compare-one-stream",
        action="store_true",
        help="also time sealed-http with one stream (sealed-s3-1stream always runs)",
    )
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/modelseal-bench-ready"))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from modelseal.unsealer.engine import filesystem_type

    if filesystem_type(SHM) != "tmpfs":
        raise SystemExit("/dev/shm is not tmpfs here; the benchmark needs a tmpfs target")
    curl = shutil.which("curl")
    if not curl:
        raise SystemExit("curl not found: run devenv/install-bench-deps.sh")
    cpus = len(os.sched_getaffinity(0))
    s3_mib = args.s3_size_mib or args.size_mib
    serve = args.workdir / "serve"
    serve.mkdir(parents=True, exist_ok=True)
    key = os.urandom(32)
    key_label = "LOCAL DATA KEY (generated here, no Vault; Transit unwrap not timed)"
    log(
        f"bench-ready: {args.size_mib} MiB model (S3 leg: {s3_mib} MiB), cpus {cpus}, "
        f"load {os.getloadavg()[0]:.2f}; {key_label}"
    )

    sizes = sorted({args.size_mib} | (set() if args.skip_s3 else {s3_mib}))
    pins: dict[int, str] = {}
    for size in sizes:
        plain = serve / f"plain-{size}"
        build_model(plain, size)
        # a fresh key every run: the bundle is sealed again with it (not timed)
        pins[size] = seal_bundle(plain, serve / f"sealed-{size}.mseal", key, args.chunk_size)
    model_bytes = tree_bytes(serve / f"plain-{args.size_mib}")

    targets = SHM / f"modelseal-bench-ready-{os.getpid()}"
    targets.mkdir()
    results: dict[str, Any] = {
        "size_mib": args.size_mib,
        "s3_size_mib": s3_mib,
        "cpus": cpus,
    }
    all_samples: dict[str, list[Sample]] = {}
    fetches: dict[str, list[dict[str, Any]]] = {}  # what each sealed run's source did
    loads: list[float] = []
    stack: list[Any] = []
    try:
        from bench.ready.nginx import NginxServer

        nginx = NginxServer(serve, tls=args.https).start()
        stack.append(nginx)
        log(f"nginx {nginx.base_url} (pid {nginx.pid}), serving {serve}")
        files = model_files(serve / f"plain-{args.size_mib}")
        ca = ["--cacert", str(nginx.ca_file)] if nginx.ca_file else []
        py = sys.executable

        def plain_http(i: int) -> Sample:
            dest = targets / f"plain-http-{i}"
            cfg = targets / f"curl-{i}.cfg"
            curl_config(nginx.base_url, f"plain-{args.size_mib}", files, dest, cfg)
            try:
                return timed(
                    [curl, "-sS", "-f", "--parallel", "--parallel-max",
                     str(args.curl_parallel), "--create-dirs", *ca, "-K", str(cfg)]
                )  # fmt: skip
            finally:
                cfg.unlink()

        def sealed(name: str, uri: str, size: int, extra: list[str], env: dict[str, str]):  # type: ignore[no-untyped-def]
            def run(i: int) -> Sample:
                report = targets / f"{name}-{i}.json"
                cmd = [py, "-m", "bench.ready.unseal_remote", uri, "--to",
                       str(targets / f"{name}-{i}"), "--digest", pins[size],
                       "--report", str(report), *extra]  # fmt: skip
                if args.workers:
                    cmd += ["--workers", str(args.workers)]
                sample = timed(cmd, env, stdin_data=key)
                if i > 0:  # counted runs only
                    fetches.setdefault(name, []).append(json.loads(report.read_text()))
                report.unlink()
                return sample

            return run

        tools: dict[str, Callable[[int], Sample]] = {
            "plain-http": plain_http,
            "sealed-http": sealed(
                "sealed-http",
                f"{nginx.base_url}/sealed-{args.size_mib}.mseal",
                args.size_mib,
                ["--ca", str(nginx.ca_file)] if nginx.ca_file else [],
                dict(os.environ),
            ),
        }
        if args.compare_one_stream:
            tools["sealed-http-1stream"] = sealed(
                "sealed-http-1stream",
                f"{nginx.base_url}/sealed-{args.size_mib}.mseal",
                args.size_mib,
                [*(["--ca", str(nginx.ca_file)] if nginx.ca_file else []), "--one-stream"],
                dict(os.environ),
            )
        if not args.skip_s3:
            from modelseal_devenv.s3 import S3Server

            shutil.rmtree(args.workdir / "s3", ignore_errors=True)  # an empty store
            s3 = S3Server(args.workdir / "s3").start()
            stack.append(s3)
            s3_env = {**os.environ, **s3.env()}
            upload_s3(s3, serve / f"plain-{s3_mib}", serve / f"sealed-{s3_mib}.mseal")
            log(f"versitygw {s3.version} at {s3.endpoint_url} (pid {s3.pid})")
            linked = share_pages(serve, s3.data_dir / BUCKET, s3_mib)
            log(f"nginx's copies of {linked} files hard-linked to versitygw's objects")

            def plain_s3(i: int) -> Sample:
                return timed(
                    [py, "-m", "bench.ready.fetch_s3", BUCKET, "plain",
                     str(targets / f"plain-s3-{i}")],
                    s3_env,
                )  # fmt: skip

            tools["plain-s3"] = plain_s3
            tools["sealed-s3"] = sealed(
                "sealed-s3",
                f"s3://{BUCKET}/sealed.mseal",
                s3_mib,
                ["--s3-endpoint", s3.endpoint_url],
                s3_env,
            )
            tools["sealed-s3-1stream"] = sealed(
                "sealed-s3-1stream",
                f"s3://{BUCKET}/sealed.mseal",
                s3_mib,
                ["--s3-endpoint", s3.endpoint_url, "--one-stream"],
                s3_env,
            )
        check_plain_copy(plain_http, targets, model_bytes)
        all_samples, loads = run_rounds(tools, args.runs, targets)
    finally:
        for server in reversed(stack):
            server.close()
        shutil.rmtree(targets, ignore_errors=True)

    log("")
    log(f"{'tool':<19} {'size MiB':>8} {'median s':>9} {'min s':>7} {'max s':>7} "
        f"{'GiB/s':>6} {'CPU s':>6} {'peak RSS MiB':>13}")  # fmt: skip
    med: dict[str, float] = {}
    for name, vals in all_samples.items():
        size = s3_mib if "-s3" in name else args.size_mib
        walls = [w for w, _, _ in vals]
        med[name] = statistics.median(walls)
        cpu = statistics.median(c for _, _, c in vals)
        rss = max(r for _, r, _ in vals) / 1024
        log(
            f"{name:<19} {size:>8} {med[name]:>9.3f} {min(walls):>7.3f} {max(walls):>7.3f} "
            f"{size / 1024 / med[name]:>6.2f} {cpu:>6.2f} {rss:>13.1f}"
        )
        results[name] = {"walls": walls, "median": med[name], "cpu_median": cpu, "size_mib": size}
    for name, runs in fetches.items():
        log(f"{name}: {fetch_summary(runs)}")
    results["fetches"] = fetches
    load_med = statistics.median(loads)
    log(f"load average (1 min) during the timed runs: median {load_med:.2f}, max {max(loads):.2f}")
    log(f"key: {key_label}; nginx over {'https (CA made here)' if args.https else 'http'}")
    results["load_median"] = load_med
    ratio_http = med["sealed-http"] / med["plain-http"]
    ratio_s3 = med["sealed-s3"] / med["plain-s3"] if "sealed-s3" in med else math.nan
    results["sealed_vs_plain_ratio_http"] = ratio_http
    results["sealed_vs_plain_ratio_s3"] = ratio_s3
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    log(
        f"ready_sealed_s={med['sealed-http']:.3f} ready_plain_s={med['plain-http']:.3f} "
        f"sealed_vs_plain_ratio_http={ratio_http:.3f} sealed_vs_plain_ratio_s3={ratio_s3:.3f}"
    )
    return 0


def fetch_summary(runs: list[dict[str, Any]]) -> str:
    """How the sealed runs fetched: ranged or one stream, and the sample's two rates."""
    ranged_runs = [r for r in runs if r.get("switched_at") is not None]
    text = f"ranged in {len(ranged_runs)} of {len(runs)} runs"
    if ranged_runs:
        where = sorted(r["switched_at"] / MiB for r in ranged_runs)
        text += f" (from MiB {', '.join(f'{w:.0f}' for w in where)})"
    rates = [r["sampled"] for r in runs if r.get("sampled")]
    if rates:
        text += "; stream vs sampled ranges, MB/s: " + ", ".join(
            f"{s / 1e6:.0f} vs {p / 1e6:.0f}" for s, p in rates
        )
    return text


def check_plain_copy(plain_http: Callable[[int], Sample], targets: Path, model_bytes: int) -> None:
    """One untimed plain download, to be sure curl fetched every byte."""
    plain_http(-1)
    got = tree_bytes(targets / "plain-http--1")
    shutil.rmtree(targets / "plain-http--1")
    if got != model_bytes:
        raise SystemExit(f"curl fetched {got} bytes, the model has {model_bytes}")


def share_pages(serve: Path, objects: Path, size_mib: int) -> int:
    """Replace nginx's copies of the model and bundle of `size_mib` with hard links to
    versitygw's object files under `objects` (the bucket's folder), when both hold the
    same bytes on one file system: the page cache then holds one copy of each, not two.
    The number of files linked."""
    pairs = [(serve / f"sealed-{size_mib}.mseal", objects / "sealed.mseal")]
    plain = serve / f"plain-{size_mib}"
    pairs += [(plain / rel, objects / "plain" / rel) for rel in model_files(plain)]
    linked = 0
    for copy, obj in pairs:
        if not obj.is_file() or obj.stat().st_size != copy.stat().st_size:
            continue
        tmp = copy.with_name(copy.name + ".link")
        try:
            os.link(obj, tmp)
        except OSError:  # another file system: keep the copy
            continue
        os.replace(tmp, copy)
        linked += 1
    return linked


def upload_s3(s3: Any, plain: Path, bundle: Path) -> None:
    from boto3.s3.transfer import TransferConfig

    s3.create_bucket(BUCKET)
    client = s3.client()
    config = TransferConfig(multipart_chunksize=64 * MiB, max_concurrency=2)
    try:
        for rel in model_files(plain):
            client.upload_file(str(plain / rel), BUCKET, f"plain/{rel}", Config=config)
        client.upload_file(str(bundle), BUCKET, "sealed.mseal", Config=config)
    finally:
        client.close()


if __name__ == "__main__":
    sys.exit(main())
