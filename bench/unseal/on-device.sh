#!/usr/bin/env bash
# Issue 13's 16-core unseal table, on the many-core GPU host (no network, Python 3.12, no
# Vault, no venv): installs the wheels that bench/unseal/device-wheels.sh put in .whl/,
# runs `bench.unseal.bench --local-key` once per worker count, and prints the table
# (bench/unseal/table.py). From the repository root, with .whl carried along:
#   bash bench/unseal/on-device.sh            # 4096 MiB, 3 runs, workers 1 2 4 8 16
#   SIZE_MIB=1024 RUNS=2 WORKERS="1 2" bash bench/unseal/on-device.sh   # a short try
# Each run's JSON and log go to $OUT (or ./bench-unseal-device) too.
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZE_MIB="${SIZE_MIB:-4096}"
RUNS="${RUNS:-3}"
WORKERS="${WORKERS:-1 2 4 8 16}"
PYTHON="${PYTHON:-python3}"
results="${OUT:-$PWD/bench-unseal-device}"
site="${SITE:-/tmp/modelseal-bench-site}"
mkdir -p "$results"

ls .whl/*.whl >/dev/null 2>&1 || { echo "on-device: no wheels in .whl/ (run bench/unseal/device-wheels.sh here first, then carry .whl)" >&2; exit 2; }
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target "$site" .whl/*.whl
export PYTHONPATH="$site:$PWD/operator:$PWD"
export PYTHONUNBUFFERED=1
"$PYTHON" -c "import blake3, cryptography, hvac, modelseal.unsealer.engine" \
  || { echo "on-device: the wheels do not import with $("$PYTHON" -V)" >&2; exit 2; }
echo "on-device: $("$PYTHON" -V), $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
# The bench writes one unsealed copy at a time into tmpfs, plus the limit run's bytes: a
# container's /dev/shm is often far smaller, so mount a tmpfs of our own when it is (root).
need_kib=$(( SIZE_MIB * 1024 * 3 ))
free_kib=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')
if [[ -z "${MODELSEAL_BENCH_TMPFS:-}" && "${free_kib:-0}" -lt "$need_kib" ]]; then
  mkdir -p /tmp/modelseal-bench-tmpfs
  mount -t tmpfs -o "size=$(( need_kib / 1024 + 1024 ))m" tmpfs /tmp/modelseal-bench-tmpfs \
    || { echo "on-device: /dev/shm has ${free_kib:-0} KiB free, $need_kib needed, and no tmpfs could be mounted" >&2; exit 2; }
  export MODELSEAL_BENCH_TMPFS=/tmp/modelseal-bench-tmpfs
fi
df -h "${MODELSEAL_BENCH_TMPFS:-/dev/shm}" /var/tmp | sed 's/^/on-device: /'

files=()
for w in $WORKERS; do
  echo "=== workers=$w"
  "$PYTHON" -m bench.unseal.bench --local-key --size-mib "$SIZE_MIB" --runs "$RUNS" \
    --workers "$w" --json "$results/unseal-w$w.json" 2>&1 | tee "$results/unseal-w$w.log" | tail -4
  files+=("$results/unseal-w$w.json")
done
"$PYTHON" -m bench.unseal.table "${files[@]}" | tee "$results/table.txt"
