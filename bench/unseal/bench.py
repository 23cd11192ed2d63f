"""``make bench-unseal``: `modelseal unseal` against `cp -r`, `age -d | tar -x` and the
physical limit of writing the same bytes into tmpfs, all in the same run.

One run: builds (or reuses) a model directory of ``--size-mib`` MiB (one large file,
several medium ones, many small ones) under ``--workdir`` (on disk; its page cache is warm
after the first round), seals it with the real CLI against a real Vault (started here) --
or, with ``--local-key``, with a LOCALLY GENERATED data key and no Vault and no Go-built
server at all (bench/unseal/local_key.py: the same unseal engine, fed the key through a
pipe; the Transit unwrap is left out, and the output says so) -- makes an age-encrypted
tarball of the same directory, then times, ``--runs`` times in rotating order, each of

  (a) cp -r PLAIN  /dev/shm/.../cp-N
  (b) modelseal unseal BUNDLE --to /dev/shm/.../unseal-N --digest <pin>   (full verification:
      Transit unwrap, every chunk authenticated, digest pin checked, atomic publish)
  (c) age -d -i KEY PLAIN.tar.age | tar -x -C /dev/shm/.../age-N
  (d) limit-files: T threads each pwrite the model's byte count / T into a file of its own
  (e) limit-mmap: T threads copy the model's byte count into one shared mmap of one file
      (bench/unseal/tmpfs_limit.py; T = CPUs); the limit is the faster of (d) and (e)
  and, for information, (b') the same unseal without --digest (every chunk still
  authenticated, but the records are not hashed since no pin asks for the digest), (b'')
  the same bundle pinned by its sha256tree digest instead of the default blake3tree, and
  with --compare-modes the pinned unseal forced to each write mode (pwrite, and decryption
  straight into a shared mmap of each file)

each into a fresh tmpfs directory (removed, untimed, after each run). Every command runs
as a child process; its wall time and peak RSS (wait4) are recorded. A warm-up round is not
counted. Prints medians, min and max, the unsealer's peak RSS at two model sizes (to show it
does not grow with the model), and last:

    unseal_vs_cp_ratio=<x> unseal_vs_age_ratio=<y> unseal_vs_limit_ratio=<z>

(medians of unseal / cp, unseal / age, unseal / limit) where "unseal" is (b), the pinned
unseal the sidecar does. Without `age` installed the age ratio prints as nan.

Options: --size-mib (default 2048), --runs (default 5), --workers (unseal threads, default:
CPUs), --chunk-size (default 1 MiB), --local-key, --compare-modes, --limit-threads,
--workdir, --json FILE.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
#: Where the unseals, copies and limit runs write: a tmpfs (a container's /dev/shm can be
#: small: `MODELSEAL_BENCH_TMPFS` names another one, e.g. mounted by bench/unseal/on-device.sh).
SHM = Path(os.environ.get("MODELSEAL_BENCH_TMPFS") or "/dev/shm")


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


def timed(
    cmd: list[str] | str,
    env: dict[str, str] | None = None,
    stdin_data: bytes | None = None,
) -> tuple[float, int, float]:
    """Run a child; return (wall s, peak RSS KiB, CPU s = user + sys, children included).

    Peak RSS comes from GNU time when installed: measured by wait4 in a small process it
    forks, so it is the command's own (a child forked straight from this Python process
    would inherit Python's RSS high-water mark at exec). Without GNU time the numbers come
    from wait4 here and include that inherited mark. `stdin_data` goes to the child through
    a pipe (the local data key: never a file, an argument or the environment).
    """
    argv = ["bash", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    report = Path(f"/tmp/modelseal-bench-time-{os.getpid()}")
    if GNU_TIME:
        argv = [GNU_TIME, "-f", "%M %U %S", "-o", str(report), *argv]
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.PIPE if stdin_data is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if stdin_data is not None and proc.stdin is not None:
        proc.stdin.write(stdin_data)
        proc.stdin.close()
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


def tree_bytes(root: Path) -> int:
    return sum(
        (Path(d) / f).stat().st_size
        for d, _, files in os.walk(root)
        for f in files
        if not f.startswith(".bench")
    )


class Sealer:
    """Seals and unseals with Vault (the real CLI) or with a local data key."""

    def __init__(self, local_key: bool, workers: list[str]) -> None:
        self.local = local_key
        self.workers = workers
        self.env: dict[str, str] = dict(os.environ)
        self.key_bytes = b""
        self.transit_key = ""
        self._vault: Any = None

    def __enter__(self) -> Sealer:
        if self.local:
            self.key_bytes = os.urandom(32)
            return self
        from modelseal_devenv.vault import VaultServer

        self._vault = VaultServer()
        vault = self._vault.__enter__()
        self.transit_key = vault.create_transit_key("bench-unseal")
        self.env = {**os.environ, "VAULT_ADDR": vault.addr, "VAULT_TOKEN": vault.root_token}
        return self

    def __exit__(self, *exc: object) -> None:
        self.key_bytes = b""
        if self._vault is not None:
            self._vault.__exit__(*exc)

    def seal(self, plain: Path, bundle: Path, chunk_size: int) -> tuple[float, int, str]:
        """(seconds, peak RSS KiB, pin)."""
        if self.local:
            from bench.unseal.local_key import seal_with_local_key
            from modelseal.crypto.stream import SecretBytes

            start = time.perf_counter()
            pin = seal_with_local_key(plain, bundle, SecretBytes(self.key_bytes), chunk_size)
            return time.perf_counter() - start, 0, pin
        ms = modelseal_cmd()
        wall, rss, _ = timed(
            [
                *ms,
                "seal",
                str(plain),
                "-o",
                str(bundle),
                "--transit-key",
                self.transit_key,
                "--force",
                "--no-progress",
                "--chunk-size",
                str(chunk_size),
            ],
            self.env,
        )
        pin = subprocess.run(
            [*ms, "inspect", "--digest-only", "--no-progress", str(bundle)],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return wall, rss, pin

    def unseal(
        self, bundle: Path, dest: Path, pin: str | None, extra_env: dict[str, str] | None = None
    ) -> tuple[float, int, float]:
        env = {**self.env, **(extra_env or {})}
        if self.local:
            cmd = [sys.executable, "-m", "bench.unseal.local_key", str(bundle), "--to", str(dest)]
            if pin:
                cmd += ["--digest", pin]
            return timed([*cmd, *self.workers], env, stdin_data=self.key_bytes)
        cmd = [*modelseal_cmd(), "unseal", str(bundle), "--to", str(dest), "--no-progress"]
        if pin:
            cmd += ["--digest", pin]
        return timed([*cmd, *self.workers], env)


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
    ap.add_argument(
        "--local-key",
        action="store_true",
        help="no Vault: seal and unseal with a locally generated data key (labelled in the output)",
    )
    ap.add_argument(
        "--compare-modes",
        action="store_true",
        help="also time the pinned unseal forced to each write mode (pwrite, mmap)",
    )
    ap.add_argument("--limit-threads", type=int, default=0, help="threads of the limit (CPUs)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from modelseal.unsealer.engine import filesystem_type

    if filesystem_type(SHM) != "tmpfs":
        raise SystemExit(f"{SHM} is not tmpfs here; the benchmark needs a tmpfs target")
    age = shutil.which("age")
    age_keygen = shutil.which("age-keygen")
    if not (age and age_keygen):
        age = age_keygen = None
        log("age is not installed: the age comparison is skipped (ratio printed as nan)")

    cpus = len(os.sched_getaffinity(0))
    limit_threads = args.limit_threads or cpus
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    plain = work / f"model-{args.size_mib}"
    small_plain = work / f"model-{args.small_mib}"
    key_label = (
        "LOCAL DATA KEY (--local-key: generated here, no Vault; Transit unwrap not timed)"
        if args.local_key
        else "data key from Vault Transit (real Vault, unwrap timed)"
    )
    log(f"bench-unseal: model of {args.size_mib} MiB in {plain} (cpus: {cpus}); {key_label}")
    build_model(plain, args.size_mib)
    build_model(small_plain, args.small_mib)
    model_bytes = tree_bytes(plain)
    targets = SHM / f"modelseal-bench-{os.getpid()}"
    targets.mkdir()

    results: dict[str, Any] = {
        "size_mib": args.size_mib,
        "model_bytes": model_bytes,
        "workers": args.workers,
        "cpus": cpus,
        "key": "local" if args.local_key else "vault-transit",
    }
    workers = ["--workers", str(args.workers)] if args.workers else []
    try:
        with Sealer(args.local_key, workers) as sealer:
            bundle = work / ("model-local.mseal" if args.local_key else "model.mseal")
            small_bundle = work / (
                "model-small-local.mseal" if args.local_key else "model-small.mseal"
            )
            t_seal, rss_seal, pin = sealer.seal(plain, bundle, args.chunk_size)
            _, _, small_pin = sealer.seal(small_plain, small_bundle, MiB)
            sha256_pin = sha256tree_pin(bundle)
            log(
                f"seal: {t_seal:.2f}s"
                + (f", peak RSS {rss_seal / 1024:.0f} MiB" if rss_seal else "")
            )

            age_key = work / "age.key"
            tarball = work / f"model-{args.size_mib}.tar.age"
            if age and age_keygen:
                if not age_key.exists():
                    subprocess.run(
                        [age_keygen, "-o", str(age_key)], check=True, capture_output=True
                    )
                recipient = subprocess.run(
                    [age_keygen, "-y", str(age_key)], check=True, capture_output=True, text=True
                ).stdout.strip()
                if (
                    not tarball.exists()
                    or tarball.stat().st_mtime < (plain / ".bench-size").stat().st_mtime
                ):
                    t_age_enc, _, _ = timed(
                        f"tar -C {plain} -cf - . | {age} -r {recipient} -o {tarball}.tmp && "
                        f"mv {tarball}.tmp {tarball}"
                    )
                    log(f"age encrypt (tar | age): {t_age_enc:.2f}s")

            tools: dict[str, Any] = {
                "cp": lambda i: timed(["cp", "-r", str(plain), str(targets / f"cp-{i}")]),
                "unseal": lambda i: sealer.unseal(bundle, targets / f"unseal-{i}", pin),
                "unseal-nopin": lambda i: sealer.unseal(
                    bundle, targets / f"unseal-nopin-{i}", None
                ),
                # the same bundle pinned by its SHA-256 tree digest (the only digest before
                # blake3tree): what the hash alone costs, in the same run
                "unseal-sha256tree": lambda i: sealer.unseal(
                    bundle, targets / f"unseal-sha256tree-{i}", sha256_pin
                ),
            }
            if age:
                tools["age"] = lambda i: _run_age(age, age_key, tarball, targets / f"age-{i}")
            for mode in ("files", "mmap"):
                tools[f"limit-{mode}"] = lambda i, mode=mode: timed(
                    [
                        sys.executable,
                        "-m",
                        "bench.unseal.tmpfs_limit",
                        "--mode",
                        mode,
                        "--threads",
                        str(limit_threads),
                        "--bytes",
                        str(model_bytes),
                        "--to",
                        str(targets / f"limit-{mode}-{i}"),
                    ]
                )
            if args.compare_modes:
                variants = {
                    "unseal-pwrite": {"MODELSEAL_UNSEAL_WRITE_MODE": "pwrite"},
                    "unseal-mmap": {"MODELSEAL_UNSEAL_WRITE_MODE": "mmap"},
                }
                for name, extra in variants.items():
                    tools[name] = lambda i, name=name, extra=extra: sealer.unseal(
                        bundle, targets / f"{name}-{i}", pin, extra
                    )
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
            _, rss_small, _ = sealer.unseal(small_bundle, targets / "small", small_pin)
            shutil.rmtree(targets / "small")
    finally:
        shutil.rmtree(targets, ignore_errors=True)

    log("")
    log(
        f"{'tool':<20} {'median s':>9} {'min s':>7} {'max s':>7} {'GiB/s':>6} {'CPU s':>6} "
        f"{'peak RSS MiB':>13}"
    )
    med: dict[str, float] = {}
    gib = model_bytes / (1024 * MiB)
    for name, vals in samples.items():
        walls = [w for w, _, _ in vals]
        med[name] = statistics.median(walls)
        cpu = statistics.median(c for _, _, c in vals)
        rss = max(r for _, r, _ in vals) / 1024
        log(
            f"{name:<20} {med[name]:>9.3f} {min(walls):>7.3f} {max(walls):>7.3f} "
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
    log(f"key: {key_label}")
    log(f"limit: {limit_threads} threads writing {model_bytes} bytes into tmpfs")
    results["load_median"] = statistics.median(loads)
    rss_big = max(r for _, r, _ in samples["unseal"]) / 1024
    log(
        f"unsealer peak RSS: {rss_big:.1f} MiB at {args.size_mib} MiB, "
        f"{rss_small / 1024:.1f} MiB at {args.small_mib} MiB"
    )
    results["unseal_small_peak_rss_kib"] = rss_small
    results["seal_seconds"] = t_seal
    limit_name = min(("limit-files", "limit-mmap"), key=lambda k: med[k])
    limit = med[limit_name]
    age_med = med.get("age", math.nan)
    log(
        f"unseal without pin: {med['unseal-nopin'] / med['cp']:.3f} x cp, "
        f"{med['unseal-nopin'] / age_med:.3f} x age, {med['unseal-nopin'] / limit:.3f} x limit"
    )
    log(
        f"pinned by sha256tree instead of {pin.split(':')[0]}: "
        f"{med['unseal-sha256tree'] / med['cp']:.3f} x cp "
        f"(CPU {results['unseal-sha256tree']['cpu_median']:.2f} s against "
        f"{results['unseal']['cpu_median']:.2f} s)"
    )
    best = {k: min(w for w, _, _ in v) for k, v in samples.items()}
    best_limit = min(best["limit-files"], best["limit-mmap"])
    log(
        f"best runs (least disturbed by other load): "
        f"unseal {best['unseal'] / best['cp']:.3f} x cp, "
        f"unseal without pin {best['unseal-nopin'] / best['cp']:.3f} x cp, "
        f"unseal {best['unseal'] / best.get('age', math.nan):.3f} x age, "
        f"unseal {best['unseal'] / best_limit:.3f} x limit"
    )
    results["best_ratios"] = {k: best[k] / best["cp"] for k in best}
    ratio_cp = med["unseal"] / med["cp"]
    ratio_age = med["unseal"] / age_med
    ratio_limit = med["unseal"] / limit
    results["limit_tool"] = limit_name
    results["unseal_vs_cp_ratio"] = ratio_cp
    results["unseal_vs_age_ratio"] = ratio_age
    results["unseal_vs_limit_ratio"] = ratio_limit
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    log(
        f"unseal_vs_cp_ratio={ratio_cp:.3f} unseal_vs_age_ratio={ratio_age:.3f} "
        f"unseal_vs_limit_ratio={ratio_limit:.3f}"
    )
    return 0


def sha256tree_pin(bundle: Path) -> str:
    """The bundle's sha256tree digest (needs no key; what `modelseal inspect
    --digest-algorithm sha256tree` prints)."""
    from modelseal.crypto import format as fmt
    from modelseal.crypto.pipeline import digest_records

    with open(bundle, "rb") as stream:
        header = fmt.read_header(stream)
        digest, _ = digest_records(header, stream, algorithm=fmt.DigestAlgorithm.SHA256_TREE)
    return str(digest)


def _run_age(age: str, key: Path, tarball: Path, dest: Path) -> tuple[float, int, float]:
    dest.mkdir()
    return timed(f"{age} -d -i {key} {tarball} | tar -x -C {dest}")


if __name__ == "__main__":
    sys.exit(main())
