# make bench-unseal: `modelseal unseal` (full verification) vs `cp -r` vs `age -d | tar -x`,
# same 2 GiB model, same run, each into a fresh tmpfs directory; prints medians, the
# unsealer's peak RSS at two model sizes and, last,
# unseal_vs_cp_ratio=<x> unseal_vs_age_ratio=<y>.
#   BENCH_UNSEAL_ARGS="--size-mib 2048 --runs 5 --workers 0 --json bench-unseal.json"
BENCH_UNSEAL_ARGS ?=

.PHONY: bench-unseal
bench-unseal: venv system-deps
	bash devenv/build-vault.sh
	$(PY) -m bench.unseal.bench $(BENCH_UNSEAL_ARGS)
