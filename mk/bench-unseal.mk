# make bench-unseal: `modelseal unseal` (full verification) vs `cp -r` vs `age -d | tar -x`
# vs the physical limit (the same byte count written into tmpfs by one thread per CPU, into
# a file each and into one shared mmap), same 2 GiB model, same run, each into a fresh tmpfs
# directory; prints medians, the unsealer's peak RSS at two model sizes and, last,
# unseal_vs_cp_ratio=<x> unseal_vs_age_ratio=<y> unseal_vs_limit_ratio=<z>.
#   BENCH_UNSEAL_ARGS="--size-mib 2048 --runs 5 --workers 0 --json bench-unseal.json"
# With --local-key in BENCH_UNSEAL_ARGS (or `make bench-unseal-local`) no Vault is built or
# started: a locally generated data key, labelled as such in the output; runs on a bare
# machine with the venv and no network. --compare-modes adds runs forced to pwrite and to mmap.
BENCH_UNSEAL_ARGS ?=

.PHONY: bench-unseal bench-unseal-local
bench-unseal: venv ## unseal vs cp -r vs age vs the tmpfs write limit; last line: the three ratios
	@case " $(BENCH_UNSEAL_ARGS) " in *" --local-key "*) ;; \
	    *) bash devenv/install-system-deps.sh && bash devenv/build-vault.sh ;; esac
	$(PY) -m bench.unseal.bench $(BENCH_UNSEAL_ARGS)

bench-unseal-local: venv ## the unseal benchmark with a local data key: no Vault, no Go build
	$(PY) -m bench.unseal.bench --local-key $(BENCH_UNSEAL_ARGS)

# Issue 13's 16-core table on the GPU host (Python 3.12, no network): fetch the wheels here,
# carry .whl, and run `bash bench/unseal/on-device.sh` there (docs/unsealer.md).
.PHONY: bench-unseal-device-wheels
bench-unseal-device-wheels: ## cp312 wheels of the unseal bench's compiled dependencies into .whl/, for the GPU host
	bash bench/unseal/device-wheels.sh
