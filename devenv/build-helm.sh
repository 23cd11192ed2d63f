#!/usr/bin/env bash
# Build the helm CLI (v3) from its Go module helm.sh/helm/v3 through the Go module proxy
# (no release binary is downloaded) and cache it:
#   ${MODELSEAL_CACHE_DIR:-~/.cache/modelseal}/bin/helm-<version>/helm
#
#   devenv/build-helm.sh            build if missing; print the binary's path on the last line
#   devenv/build-helm.sh --print    only print the binary's path (builds nothing)
#   devenv/build-helm.sh --force    rebuild even when cached
#
# The version comes from devenv/go/helm/go.mod (the wrapper module; see the comment there).
# Caching, the input stamp and the build lock: devenv/go-tool.sh.
#
# Environment:
#   MODELSEAL_CACHE_DIR     cache root (default ~/.cache/modelseal)
#   MODELSEAL_BUILD_JOBS    parallel package builds (default: number of cores)
#   HELM_BUILD_NICE         nice level for the compile (default 0)
set -euo pipefail

# shellcheck source=devenv/go-tool.sh
source "$(dirname "${BASH_SOURCE[0]}")/go-tool.sh"
go_tool_init helm helm.sh/helm/v3 "${BASH_SOURCE[0]}" "${1:-}"

helm_ok() { "$1" version --short 2>/dev/null | grep -q "^${GO_TOOL_VERSION}"; }

ldflags=()
if [[ "${GO_TOOL_MODE}" != "print" ]]; then
  # The same version stamps as helm's own Makefile: the CLI version, and the Kubernetes
  # version that `helm template`/`helm lint` assume without a cluster (client-go v0.X.Y -> 1.X).
  k8s_ver="$(go list -m -f '{{.Version}}' k8s.io/client-go)"
  k8s_minor="$(echo "${k8s_ver#v0.}" | cut -d. -f1)"
  flags="-s -w"
  flags+=" -X helm.sh/helm/v3/internal/version.version=${GO_TOOL_VERSION}"
  flags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    flags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${k8s_minor}"
  done
  ldflags=(-ldflags "${flags}")
fi
go_tool_build helm_ok helm.sh/helm/v3/cmd/helm "${ldflags[@]}"
