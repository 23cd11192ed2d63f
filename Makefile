# Modelseal — every target does its own set-up from a clean clone.
#   make test       lint, type checks, the whole test suite against real servers
#   make demo       the whole system on one machine, step by step
#   make env-check  start every test server, prove each works, stop them
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
export MODELSEAL_CACHE_DIR ?= $(HOME)/.cache/modelseal
PYTEST_ARGS ?=

.PHONY: help venv system-deps testservers lint typecheck test unit env-check demo cold-check clean

# `make help` is generated from the `## ` comment on each target's own line (here and in
# mk/*.mk), so the list cannot drift from the targets; tests/unit/test_make_help.py checks
# that every phony target has one.
help: ## list every target with what it does
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-zA-Z0-9_.-]+:[^=]*## / {printf "  %-20s %s\n", $$1, $$2}' \
	  $(MAKEFILE_LIST) | LC_ALL=C sort

$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

venv: $(VENV)/.installed ## create .venv and install the pinned Python packages

system-deps: ## install the Debian packages the tests and the demo need (if missing)
	bash devenv/install-system-deps.sh

# Builds (or reuses, keyed by pinned versions) the Go test servers under $(MODELSEAL_CACHE_DIR).
testservers: venv ## build (or reuse) kube, etcd, kwok, Vault, Helm and versitygw (S3) from their Go modules
	bash devenv/build-kube.sh
	bash devenv/build-vault.sh
	bash devenv/build-helm.sh
	bash devenv/build-versitygw.sh

lint: venv ## ruff check, ruff format --check and the import contracts
	$(VENV)/bin/ruff check operator devenv tests bench
	$(VENV)/bin/ruff format --check operator devenv tests bench
	$(VENV)/bin/lint-imports

typecheck: venv ## mypy --strict
	$(VENV)/bin/mypy

unit: venv ## the tests that need no server
	$(VENV)/bin/pytest -m "not integration and not e2e" $(PYTEST_ARGS)

test: system-deps venv testservers node images images-triton lint typecheck ## set up, lint, type-check and run every test (no GPU needed)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

env-check: system-deps venv testservers node ## start each real test server, prove it works, print versions
	$(PY) -m modelseal_devenv.envcheck

demo: system-deps venv testservers node images images-triton ## the whole story on the real node: seal, license, serve, meter, revoke, audit
	$(PY) -m modelseal_devenv.demo

# Slow (a cold build of every server): run it before closing work that changes set-up.
cold-check: ## set up from a fresh clone with every cache empty and private, then env-check
	bash devenv/cold-check.sh

clean: ## remove the venv and the tool caches of this clone
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

-include mk/*.mk
