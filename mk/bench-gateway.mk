# make bench-gateway: Triton directly vs the same Triton through the gateway (auth, Redis
# quotas, audit on), and the floor (bench/gateway/floor.py: the gateway's round trips and
# fsync, nothing else), several concurrencies; prints p50/p99/throughput and, last,
# gateway_vs_direct_throughput_ratio=<x> added_p50_ms=<y> gateway_cpu_us_per_request=<z>
# floor_cpu_us_per_request=<f> gateway_vs_floor_cpu_ratio=<r>.
#   BENCH_GATEWAY_ARGS="--duration 4 --concurrency 1,4,16,64 --workers 2"
BENCH_GATEWAY_ARGS ?=

.PHONY: bench-gateway
bench-gateway: venv system-deps ## Triton direct vs through the gateway; last line: throughput ratio and gateway CPU per request
	$(PY) -m bench.gateway.bench $(BENCH_GATEWAY_ARGS)
