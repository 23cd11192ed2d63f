"""``make bench-unseal``: `modelseal unseal` against `cp -r` and `age -d | tar -x`.

One run: builds (or reuses) a model directory of ``--size-mib`` MiB (one large file,
several medium ones, many small ones) under ``--workdir`` (on disk; its page cache is warm
after the first round), seals it with the real CLI against a real Vault (started here),
makes an age-encrypted tarball of the same directory, then times, ``--runs`` times in
rotating order, each of

  (a) cp -r PLAIN  /dev/shm/.../cp-N
  (b) modelseal unseal BUNDLE --to /dev/shm/.../unseal-N --digest <pin>   (full verification:
      Transit unwrap, every chunk authenticated, digest pin checked, atomic publish)
  (c) age -d -i KEY PLAIN.tar.age | tar -x -C /dev/shm/.../age-N
  and, for information, (b') the same unseal without --digest (every chunk still
  authenticated, but the records are not hashed since no pin asks for the digest)

each into a fresh tmpfs directory (removed, untimed, after each run). Every command runs
as a child process; its wall time and peak RSS (wait4) are recorded. A warm-up round is not
counted. Prints medians, min and max, the unsealer's peak RSS at two model sizes (to show it
does not grow with the model), and last:

    unseal_vs_cp_ratio=<median unseal / median cp> unseal_vs_age_ratio=<median unseal / median age>

where "unseal" is (b), the pinned unseal the sidecar does.

Options: --size-mib (default 2048), --runs (default 5), --workers (unseal threads, default:
CPUs), --chunk-size (default 1 MiB), --workdir, --json FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
SHM = Path("/dev/shm")


def log(msg: str) -> None:
    print(msg, flush=True)


def build_model(root: Path, size_mib: int) -> None:
    """A Triton-like repository: config, one big weight file, medium shards, small files."""
    stamp = root / ".bench-size"
    if stamp.exists() and stamp.read_text() == str(size_mib):
        return
    if root.exists():
        shutil.rmtree(root)
    total = size_mib * MiB
    small = [(f"llm/1/tokenizer/part-{i:03d}.json", 10_000 + i) for i in range(100)]
    small_total = sum(s for _, s in small) + 4096
    medium_each = max(total // 20, 1)
    medium = [(f"llm/1/shard-{i}.bin", medium_each) for i in range(4)]
    big = total - small_total - 4 * medium_each
    files = [("llm/config.pbtxt", 4096), ("llm/1/model.bin", big), *medium, *small]
    for rel, size in files:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, 8 * MiB)
                f.write(os.urandom(n))
                left -= n
    stamp.write_text(str(size_mib))


GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").is_file() else None


def timed(cmd: list[str] | str, env: dict[str, str] | None = None) -> tuple[float, int, float]:
    """Run a child; return (wall s, peak RSS KiB, CPU s = user + sys, children included).

    Peak RSS comes from GNU time when installed: measured by wait4 in a small process it
    forks, so it is the command's own (a child forked straight from this Python process
    would inherit Python's RSS high-water mark at exec). Without GNU time the numbers come
    from wait4 here and include that inherited mark.
    """
    argv = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    report = Path(f"/tmp/modelseal-bench-time-{os.getpid()}")
    if GNU_TIME:
        argv = [GNU_TIME, "-f", "%M %U %S", "-o", str(report), *argv]
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {cmd}\n{err}")
    if GNU_TIME:
        rss, user, sys_ = report.read_text().split()[-3:]
        report.unlink()
        return wall, int(rss), float(user) + float(sys_)
    return wall, int(usage.ru_maxrss), usage.ru_utime + usage.ru_stime


def modelseal_cmd() -> list[str]:
    script = Path(sys.executable).parent / "modelseal"
    return [str(script)] if script.exists() else [sys.executable, "-m", "modelseal"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=2048)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--chunk-size", type=int, default=MiB)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/modelseal-bench-unseal"))
    ap.add_argument("--small-mib", type=int, default=256, help="second size for the RSS check")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from modelseal.unsealer.engine import filesystem_type
    from modelseal_devenv.vault import VaultServer

    if filesystem_type(SHM) != "tmpfs":
        raise SystemExit("/dev/shm is not tmpfs here; the benchmark needs a tmpfs target")
    age = shutil.which("age")
    age_keygen = shutil.which("age-keygen")
    if not age or not age_keygen:
        raise SystemExit("age is not installed (make system-deps installs Debian's 'age')")

    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    plain = work / f"model-{args.size_mib}"
    small_plain = work / f"model-{args.small_mib}"
    log(f"bench-unseal: model of {args.size_mib} MiB in {plain} (cpus: {os.cpu_count()})")
    build_model(plain, args.size_mib)
    build_model(small_plain, args.small_mib)
    targets = SHM / f"modelseal-bench-{os.getpid()}"
    targets.mkdir()

    ms = modelseal_cmd()
    results: dict[str, Any] = {"size_mib": args.size_mib, "cpus": os.cpu_count()}
    with VaultServer() as vault:
        key = vault.create_transit_key("bench-unseal")
        env = {**os.environ, "VAULT_ADDR": vault.addr, "VAULT_TOKEN": vault.root_token}
        bundle = work / "model.mseal"
        small_bundle = work / "model-small.mseal"
        t_seal, rss_seal, _ = timed(
            [
                *ms,
                "seal",
                str(plain),
                "-o",
                str(bundle),
                "--transit-key",
                key,
                "--force",
                "--no-progress",
                "--chunk-size",
                str(args.chunk_size),
            ],
            env,
        )
        timed(
            [
                *ms,
                "seal",
                str(small_plain),
                "-o",
                str(small_bundle),
                "--transit-key",
                key,
                "--force",
                "--no-progress",
            ],
            env,
        )
        log(f"seal: {t_seal:.2f}s, peak RSS {rss_seal / 1024:.0f} MiB")
        pin = subprocess.run(
            [*ms, "inspect", "--digest-only", "--no-progress", str(bundle)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        small_pin = subprocess.run(
            [*ms, "inspect", "--digest-only", "--no-progress", str(small_bundle)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

        age_key = work / "age.key"
        if not age_key.exists():
            subprocess.run([age_keygen, "-o", str(age_key)], check=True, capture_output=True)
        recipient = subprocess.run(
            [age_keygen, "-y", str(age_key)], check=True, capture_output=True, text=True
        ).stdout.strip()
        tarball = work / f"model-{args.size_mib}.tar.age"
        if (
            not tarball.exists()
            or tarball.stat().st_mtime < (plain / ".bench-size").stat().st_mtime
        ):
            t_age_enc, _, _ = timed(
                f"tar -C {plain} -cf - . | {age} -r {recipient} -o {tarball}.tmp && "
                f"mv {tarball}.tmp {tarball}"
            )
            log(f"age encrypt (tar | age): {t_age_enc:.2f}s")

        workers = ["--workers", str(args.workers)] if args.workers else []

        def run_cp(i: int) -> tuple[float, int, float]:
            return timed(["cp", "-r", str(plain), str(targets / f"cp-{i}")])

        def run_unseal(i: int) -> tuple[float, int, float]:
            return timed(
                [
                    *ms,
                    "unseal",
                    str(bundle),
                    "--to",
                    str(targets / f"unseal-{i}"),
                    "--digest",
                    pin,
                    "--no-progress",
                    *workers,
                ],
                env,
            )

        def run_unseal_nopin(i: int) -> tuple[float, int, float]:
            return timed(
                [
                    *ms,
                    "unseal",
                    str(bundle),
                    "--to",
                    str(targets / f"unseal-nopin-{i}"),
                    "--no-progress",
                    *workers,
                ],
                env,
            )

        def run_age(i: int) -> tuple[float, int, float]:
            dest = targets / f"age-{i}"
            dest.mkdir()
            return timed(f"{age} -d -i {age_key} {tarball} | tar -x -C {dest}")

        tools = {
            "cp": run_cp,
            "unseal": run_unseal,
            "unseal-nopin": run_unseal_nopin,
            "age": run_age,
        }
        samples: dict[str, list[tuple[float, int, float]]] = {k: [] for k in tools}
        order = list(tools)
        loads: list[float] = []
        for rnd in range(args.runs + 1):
            for name in order:
                load = os.getloadavg()[0]
                wall, rss, cpu = tools[name](rnd)
                shutil.rmtree(targets / f"{name}-{rnd}")
                if rnd > 0:
                    samples[name].append((wall, rss, cpu))
                    loads.append(load)
            tag = "warm-up" if rnd == 0 else f"round {rnd}"
            log(f"  {tag}: done")
            order = order[1:] + order[:1]

        # peak RSS of the unsealer at a smaller model size: should be the same
        _, rss_small, _ = timed(
            [
                *ms,
                "unseal",
                str(small_bundle),
                "--to",
                str(targets / "small"),
                "--digest",
                small_pin,
                "--no-progress",
                *workers,
            ],
            env,
        )
        shutil.rmtree(targets / "small")
    shutil.rmtree(targets, ignore_errors=True)

    log("")
    log(
        f"{'tool':<13} {'median s':>9} {'min s':>7} {'max s':>7} {'GiB/s':>6} {'CPU s':>6} "
        f"{'peak RSS MiB':>13}"
    )
    med: dict[str, float] = {}
    gib = args.size_mib / 1024
    for name, vals in samples.items():
        walls = [w for w, _, _ in vals]
        med[name] = statistics.median(walls)
        cpu = statistics.median(c for _, _, c in vals)
        rss = max(r for _, r, _ in vals) / 1024
        log(
            f"{name:<13} {med[name]:>9.3f} {min(walls):>7.3f} {max(walls):>7.3f} "
            f"{gib / med[name]:>6.2f} {cpu:>6.2f} {rss:>13.1f}"
        )
        results[name] = {
            "walls": walls,
            "median": med[name],
            "cpu_median": cpu,
            "peak_rss_kib": max(r for _, r, _ in vals),
        }
    log(
        f"load average (1 min) during the timed runs: median {statistics.median(loads):.2f}, "
        f"max {max(loads):.2f}; peak RSS via {'GNU time' if GNU_TIME else 'wait4 (inflated)'}"
    )
    results["load_median"] = statistics.median(loads)
    rss_big = max(r for _, r, _ in samples["unseal"]) / 1024
    log(
        f"unsealer peak RSS: {rss_big:.1f} MiB at {args.size_mib} MiB, "
        f"{rss_small / 1024:.1f} MiB at {args.small_mib} MiB"
    )
    results["unseal_small_peak_rss_kib"] = rss_small
    results["seal_seconds"] = t_seal
    log(
        f"unseal without pin: {med['unseal-nopin'] / med['cp']:.3f} x cp, "
        f"{med['unseal-nopin'] / med['age']:.3f} x age"
    )
    best = {k: min(w for w, _, _ in v) for k, v in samples.items()}
    log(
        f"best runs (least disturbed by other load): "
        f"unseal {best['unseal'] / best['cp']:.3f} x cp, "
        f"unseal without pin {best['unseal-nopin'] / best['cp']:.3f} x cp, "
        f"unseal {best['unseal'] / best['age']:.3f} x age"
    )
    results["best_ratios"] = {k: best[k] / best["cp"] for k in best}
    ratio_cp = med["unseal"] / med["cp"]
    ratio_age = med["unseal"] / med["age"]
    results["unseal_vs_cp_ratio"] = ratio_cp
    results["unseal_vs_age_ratio"] = ratio_age
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    log(f"unseal_vs_cp_ratio={ratio_cp:.3f} unseal_vs_age_ratio={ratio_age:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
