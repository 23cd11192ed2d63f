#!/usr/bin/env bash
# Build the Versity S3 Gateway (versitygw) from its Go module github.com/versity/versitygw
# through the Go module proxy (no release binary is downloaded) and cache it:
#   ${MODELSEAL_CACHE_DIR:-~/.cache/modelseal}/bin/versitygw-<version>/versitygw
# It is the S3 server of the tests, the demo and `make bench-ready`
# (devenv/modelseal_devenv/s3.py).
#
#   devenv/build-versitygw.sh            build if missing; print the binary's path last
#   devenv/build-versitygw.sh --print    only print the binary's path (builds nothing)
#   devenv/build-versitygw.sh --force    rebuild even when cached
#
# The version comes from devenv/go/versitygw/go.mod (the wrapper module). Caching, the
# input stamp and the build lock: devenv/go-tool.sh.
#
# Environment:
#   MODELSEAL_CACHE_DIR     cache root (default ~/.cache/modelseal)
#   MODELSEAL_BUILD_JOBS    parallel package builds (default: number of cores)
#   VERSITYGW_BUILD_NICE    nice level for the compile (default 0)
set -euo pipefail

# shellcheck source=devenv/go-tool.sh
source "$(dirname "${BASH_SOURCE[0]}")/go-tool.sh"
go_tool_init versitygw github.com/versity/versitygw "${BASH_SOURCE[0]}" "${1:-}"

versitygw_ok() { "$1" --version 2>/dev/null | grep -q "^Version *: ${GO_TOOL_VERSION}$"; }

# The version stamp of versitygw's own Makefile (main.Version; main.Build is a commit there).
go_tool_build versitygw_ok github.com/versity/versitygw/cmd/versitygw \
  -ldflags "-s -w -X=main.Version=${GO_TOOL_VERSION} -X=main.Build=${GO_TOOL_VERSION}"
