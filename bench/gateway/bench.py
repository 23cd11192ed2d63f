"""``make bench-gateway``: Triton directly vs the same Triton through the gateway.

One process tree, one run: this script starts Triton (the pytriton-bundled server on CPU,
serving the ``identity`` model from tmpfs), Redis, and one gateway process with every
feature on (API key auth, quotas checked and counted in Redis by the Lua script, audit
records hash-chained to a file with signed checkpoints, metrics). A closed-loop load
generator (``loadgen``) then drives (a) Triton's HTTP endpoint and (b) the gateway's, with
the same request, at each concurrency, alternating the two.

A third target runs in the same run, between the two: the floor (``bench.gateway.floor``),
one process that makes exactly the gateway's round trips per request (Redis script, Triton,
an ``fsync``-ed line, the answer) and nothing else. Its CPU per request is what sockets,
wake-ups and ``fsync`` cost on the machine at hand; the gateway's CPU above it is the
gateway's own work.

Prints p50/p99 latency and throughput for each (for the gateway and the floor also their
CPU per answered request at that concurrency: it falls as concurrency rises, since batched
writes to Redis and group-committed audit records share their system calls), and last the
line ``gateway_vs_direct_throughput_ratio=<x> added_p50_ms=<y> gateway_cpu_us_per_request=<z>
floor_cpu_us_per_request=<f> gateway_vs_floor_cpu_ratio=<r>``: the ratio of the best
throughput through the gateway to the best direct throughput (over all concurrencies), the
difference of the p50 latencies at concurrency 1 (the gateway's added latency when nothing
queues), the gateway's CPU time per answered request, the floor's at the gateway's mix of
concurrencies (each concurrency's figure weighted by the requests the gateway answered at
it), and the ratio of the two.

Before it, the gateway's CPU (user + system, every worker process) per answered request
and the load average: on a shared machine the throughput figures move with what else runs
(repeat the run and report ranges); the CPU per request moves much less. The load
generator is the same for both targets; its own CPU (~50 us a request) is spent on the
same cores as Triton's, so it lowers the direct figures more than the gateway's.

Options: ``--duration`` seconds per measurement (default 4), ``--concurrency 1,4,16,64``,
``--elements`` FP32 values per request (default 16), ``--workers`` gateway worker
processes (``gateway_workers``, default 1), ``--json FILE`` for the raw numbers.
Redis runs with ``appendfsync everysec`` here (production advice; the test fixture's
``always`` puts a disk flush on every request).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.gateway.harness import (
    GatewayProcess,
    license_doc,
    write_keys,
    write_license,
)
from bench.gateway.loadgen import Result, run_load
from modelseal_devenv.common import LOOPBACK, ManagedProcess, free_port, wait_until
from modelseal_devenv.models import build_identity_model
from modelseal_devenv.redis import RedisServer
from modelseal_devenv.triton import TritonServer

KEY = "bench-key-0123456789abcdefghijkl"


def _body(elements: int) -> bytes:
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "INPUT",
                    "datatype": "FP32",
                    "shape": [1, elements],
                    "data": [float(i) for i in range(elements)],
                }
            ]
        }
    ).encode()


def _row(name: str, r: Result, cpu_us: float | None) -> str:
    cpu = f"{cpu_us:>10.0f}" if cpu_us is not None else f"{'-':>10}"
    return (
        f"{name:<8} {r.concurrency:>5} {r.count:>8} {r.throughput:>10.1f} "
        f"{r.percentile(50) * 1000:>9.3f} {r.percentile(99) * 1000:>9.3f} {r.errors:>7} {cpu}"
    )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (the gateway's workers)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    total = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def _measure(
    args: argparse.Namespace,
    direct_url: str,
    gw_url: str,
    gw_pid: int,
    floor_url: str,
    floor_pid: int,
) -> list[dict[str, Any]]:
    body = _body(args.elements)
    plain = {"Content-Type": "application/json"}
    authed = {**plain, "Authorization": f"Bearer {KEY}"}
    targets = (
        ("direct", direct_url, plain, None),
        ("floor", floor_url, plain, floor_pid),
        ("gateway", gw_url, authed, gw_pid),
    )
    rows: list[dict[str, Any]] = []
    print(
        f"{'target':<8} {'conc':>5} {'requests':>8} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'errors':>7} {'cpu us':>10}",
        flush=True,
    )
    for conc in args.concurrency:
        for name, url, headers, pid in targets:
            cpu0 = _cpu_seconds(pid) if pid else 0.0
            r = await run_load(url, body, headers, conc, args.duration)
            cpu_s = _cpu_seconds(pid) - cpu0 if pid else 0.0
            answered = r.count + r.warmup_count
            per_request = cpu_s / max(1, answered) * 1e6 if pid else None
            print(_row(name, r, per_request), flush=True)
            rows.append(
                {
                    "target": name,
                    "concurrency": conc,
                    "requests": r.count,
                    "throughput": r.throughput,
                    "p50_ms": r.percentile(50) * 1000,
                    "p99_ms": r.percentile(99) * 1000,
                    "errors": r.errors,
                    "statuses": r.statuses,
                    "cpu_s": cpu_s,
                    "answered": answered,  # warm-up included, as in cpu_s
                }
            )
    return rows


def start_floor(
    work: Path,
    redis: RedisServer,
    triton_http_url: str,
    path: str = "/v2/models/identity/infer",
) -> tuple[ManagedProcess, str]:
    """``bench.gateway.floor`` as a process of its own, like the gateway: (process, URL)."""
    port = free_port()
    process = ManagedProcess(
        "gateway-floor",
        [
            sys.executable,
            "-m",
            "bench.gateway.floor",
            "--port",
            str(port),
            "--redis",
            f"{redis.host}:{redis.port}",
            "--triton",
            triton_http_url.removeprefix("http://"),
            "--audit",
            str(work / "floor-audit.jsonl"),
            "--path",
            path,
        ],
        work / "floor.log",
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    ).start()
    wait_until(lambda: b"ready" in process.log_path.read_bytes(), "gateway floor", 30, process)
    return process, f"http://{LOOPBACK}:{port}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=4.0)
    parser.add_argument(
        "--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16, 64]
    )
    parser.add_argument("--elements", type=int, default=16)
    parser.add_argument(
        "--workers", type=int, default=1, help="gateway worker processes (gateway_workers)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="modelseal-bench-"))
    repo = Path(tempfile.mkdtemp(prefix="modelseal-bench-models-", dir="/dev/shm"))
    build_identity_model(repo, "identity")
    triton = TritonServer(repo, model_control_mode="explicit", load_models=["identity"])
    redis = RedisServer(work / "redis")
    gateway: GatewayProcess | None = None
    floor: tuple[ManagedProcess, str] | None = None
    try:
        triton.start()
        redis.start()
        with redis.client() as client:
            client.config_set("appendfsync", "everysec")
        write_license(
            work / "license.json",
            license_doc(
                "bench",
                ["identity"],
                quotas={
                    "rate_per_second": 1_000_000,
                    "burst": 1_000_000,
                    "per_day": 10**12,
                    "per_month": 10**12,
                    "total": 10**14,
                    "concurrent": 10_000,
                },
            ),
        )
        write_keys(work / "keys.json", {"bench": ("bench", KEY)})
        gateway = GatewayProcess(
            work,
            name="bench",
            store="redis",
            redis_url=redis.url,
            triton_http_url=triton.http_url,
            triton_grpc_url=triton.grpc_url,
            env={
                "MODELSEAL_LOG_LEVEL": "WARNING",
                "MODELSEAL_AUDIT_CHECKPOINT_EVERY": "1000",
                "MODELSEAL_GATEWAY_WORKERS": str(args.workers),
            },
        ).start()
        print(
            f"triton {triton.version} (CPU, python backend 'identity'), redis {redis.version}, "
            f"gateway ({args.workers} worker process{'es' if args.workers > 1 else ''}) with "
            f"auth + redis quotas + file audit; {os.cpu_count()} CPUs; "
            f"{args.duration:g}s per point, FP32[1,{args.elements}]",
            flush=True,
        )
        floor = start_floor(work, redis, triton.http_url)
        path = "/v2/models/identity/infer"
        rows = asyncio.run(
            _measure(
                args,
                triton.http_url + path,
                gateway.http_url + path,
                gateway.pid,
                floor[1] + path,
                floor[0].pid,
            )
        )
    finally:
        if floor is not None:
            floor[0].stop()
        if gateway is not None:
            gateway.stop()
        redis.close()
        triton.close()
        shutil.rmtree(repo, ignore_errors=True)
    audited = 0
    if gateway is not None:
        audited = sum(1 for r in gateway.all_audit_lines() if r["type"] == "request")
    shutil.rmtree(work, ignore_errors=True)

    direct = [r for r in rows if r["target"] == "direct"]
    through = [r for r in rows if r["target"] == "gateway"]
    floor_rows = {r["concurrency"]: r for r in rows if r["target"] == "floor"}
    ratio = max(r["throughput"] for r in through) / max(r["throughput"] for r in direct)
    c1 = min(args.concurrency)
    added = next(r["p50_ms"] for r in through if r["concurrency"] == c1) - next(
        r["p50_ms"] for r in direct if r["concurrency"] == c1
    )
    errors = sum(r["errors"] for r in rows)
    served = sum(r["answered"] for r in through)
    cpu_us = sum(r["cpu_s"] for r in through) / max(1, served) * 1e6
    # The floor's CPU per request at each concurrency, weighted by the requests the gateway
    # answered at it: the floor at the gateway's own mix (the floor answers more at high
    # concurrency, where a request costs less, so its plain mean would flatter it).
    floor_us = {c: r["cpu_s"] / max(1, r["answered"]) * 1e6 for c, r in floor_rows.items()}
    floor_cpu_us = sum(floor_us[r["concurrency"]] * r["answered"] for r in through) / max(1, served)
    print(
        f"gateway CPU per request (user+sys, every worker): {cpu_us:.0f} us; the floor's at "
        f"the gateway's mix of concurrencies: {floor_cpu_us:.0f} us; "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    floor_ratio = max(r["throughput"] for r in floor_rows.values()) / max(
        r["throughput"] for r in direct
    )
    print(f"the floor's best throughput against direct Triton's best: {floor_ratio:.3f}")
    for r in through:
        c = r["concurrency"]
        gw_us = r["cpu_s"] / max(1, r["answered"]) * 1e6
        print(
            f"  c={c}: gateway {gw_us:.0f} us, floor {floor_us[c]:.0f} us, "
            f"the gateway's own {gw_us - floor_us[c]:.0f} us"
        )
    print(f"gateway audit records written: {audited}; non-200 answers: {errors}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "rows": rows,
                    "ratio": ratio,
                    "added_p50_ms": added,
                    "gateway_cpu_us_per_request": cpu_us,
                    "floor_cpu_us_per_request": floor_cpu_us,
                    "floor_vs_direct_throughput_ratio": floor_ratio,
                }
            )
        )
    print(
        f"gateway_vs_direct_throughput_ratio={ratio:.3f} added_p50_ms={added:.3f} "
        f"gateway_cpu_us_per_request={cpu_us:.0f} floor_cpu_us_per_request={floor_cpu_us:.0f} "
        f"gateway_vs_floor_cpu_ratio={cpu_us / max(1e-9, floor_cpu_us):.2f}"
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
