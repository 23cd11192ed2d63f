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

.PHONY: help venv system-deps testservers lint typecheck test unit env-check demo clean

help:
	@echo "make test       set up, lint, type-check and run every test (needs no GPU)"
	@echo "make demo       run the whole story on this machine"
	@echo "make env-check  start each real test server and prove it works"
	@echo "make bench-unseal / bench-gateway   benchmarks with a reference in the same run"

$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

system-deps:
	bash devenv/install-system-deps.sh

# Builds (or reuses, keyed by pinned versions) the Go test servers under $(MODELSEAL_CACHE_DIR).
testservers: venv
	bash devenv/build-kube.sh
	bash devenv/build-vault.sh
	bash devenv/build-helm.sh

lint: venv
	$(VENV)/bin/ruff check operator devenv tests bench
	$(VENV)/bin/ruff format --check operator devenv tests bench
	$(VENV)/bin/lint-imports

typecheck: venv
	$(VENV)/bin/mypy

unit: venv
	$(VENV)/bin/pytest -m "not integration and not e2e" $(PYTEST_ARGS)

test: system-deps venv testservers lint typecheck
	$(VENV)/bin/pytest $(PYTEST_ARGS)

env-check: system-deps venv testservers
	$(PY) -m modelseal_devenv.envcheck

demo: system-deps venv testservers
	$(PY) -m modelseal_devenv.demo

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

-include mk/*.mk
