# make bench-operator: the operator at scale on the kwok cluster with a real Vault (issue 13
# §3): a reference rollout of N/10 models, then N ProtectedModels under N/10 ModelLicenses
# in N/20 namespaces, a resync with nothing changed, and a kill mid-rollout; before them,
# the floor: the same N models' workloads created without the operator. Prints where the
# time goes and, last,
# operator_ready_s=<s> operator_rss_mb=<MB> resync_writes=<n> api_rps=<r>
# converge_after_kill_s=<s> ready_vs_linear_ratio=<x> controlplane_floor_s=<s>
# operator_vs_floor_ratio=<x>.
#   MODELSEAL_BENCH_FLOOR=0 make bench-operator        (no floor phase)
#   MODELSEAL_BENCH_MODELS=100 make bench-operator     (default 1000)
#   MODELSEAL_OPERATOR_WORKERS=8 ...                  (any operator setting, passed as is)
.PHONY: bench-operator
bench-operator: venv testservers ## the operator with 1,000 models on kwok + Vault; last line: time to all Ready, peak RSS, resync writes, API rate, converge after a kill
	$(PY) -m modelseal_devenv.bench_operator
