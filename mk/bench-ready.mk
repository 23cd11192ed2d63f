# make bench-ready: time-to-Ready of one model, sealed (the unsealer's ranged fetch + verify +
# decrypt + atomic publish, digest pinned) versus plain (curl --parallel of the model's files
# straight into tmpfs; boto3 one GET per object for S3), from Debian's nginx on 127.0.0.1 and
# from the test S3 server (the Versity S3 Gateway, built from its Go module by
# devenv/build-versitygw.sh), each into a fresh /dev/shm directory, medians of --runs.
# A LOCALLY GENERATED data key (no Vault; labelled in the output). Last line:
#   ready_sealed_s=<x> ready_plain_s=<y> sealed_vs_plain_ratio_http=<a> sealed_vs_plain_ratio_s3=<b>
#   BENCH_READY_ARGS="--size-mib 4096 --runs 3 --https --json ready.json"
BENCH_READY_ARGS ?=

.PHONY: bench-ready
bench-ready: venv ## time-to-Ready, sealed vs plain, from nginx on loopback and from S3 (versitygw); last line: the ratios
	bash devenv/install-bench-deps.sh
	bash devenv/build-versitygw.sh
	$(PY) -m bench.ready.bench $(BENCH_READY_ARGS)
