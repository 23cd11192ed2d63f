# Helm chart targets (charts/modelseal). Included by the top-level Makefile.
#   make chart-crds        copy crds/*.yaml into the chart (files/crds/); never edit those by hand
#   make chart-crds-check  fail when the copies differ from crds/ (what `make test` runs)
#   make helm-lint         helm lint, default values and every optional block on
#   make helm              build (or reuse) the helm binary from its Go module
CHART_DIR := charts/modelseal
CHART_CRDS_DIR := $(CHART_DIR)/files/crds
HELM_BIN = $(shell bash devenv/build-helm.sh --print)

.PHONY: chart-crds chart-crds-check helm helm-lint

helm: ## build (or reuse) the helm binary from its Go module
	bash devenv/build-helm.sh

# The chart's CRDs are byte-for-byte copies of crds/ (tests/integration/test_chart_static.py
# fails when they drift); the chart adds its labels and the keep policy when it renders them.
chart-crds: ## copy crds/*.yaml into the chart (files/crds/); never edit those by hand
	@mkdir -p $(CHART_CRDS_DIR)
	@rm -f $(CHART_CRDS_DIR)/*.yaml
	@set -e; for f in crds/*.yaml; do \
	  cp "$$f" "$(CHART_CRDS_DIR)/"; echo "chart-crds: $$f -> $(CHART_CRDS_DIR)/"; \
	done

chart-crds-check: ## fail when the chart's CRD copies differ from crds/
	@diff -r --exclude=.gitkeep crds $(CHART_CRDS_DIR) \
	  || { echo "charts: $(CHART_CRDS_DIR) differs from crds/; run make chart-crds"; exit 1; }

helm-lint: helm chart-crds-check ## helm lint, default values and every optional block on
	$(HELM_BIN) lint $(CHART_DIR)
	$(HELM_BIN) lint $(CHART_DIR) -f $(CHART_DIR)/ci/all-on-values.yaml

# `make test` and `make attack` check the copies and never write into the tree (generate
# with `make chart-crds`, verify with `make chart-crds-check`): a change in crds/ without
# its copies fails the run; commit the copies together with the CRDs.
test: chart-crds-check
