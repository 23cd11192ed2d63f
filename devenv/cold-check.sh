#!/usr/bin/env bash
# make cold-check: prove that the set-up works on a machine whose caches are empty.
#
# Clones the committed HEAD of this repository into a new folder and runs, there, with every
# cache empty and private to this run (Go module and build caches, the Modelseal cache of
# built servers, pip's cache, a new venv):
#   make system-deps    (Debian packages: system-wide, so only checked/installed, not emptied)
#   make venv           (timed as venv=)
#   make testservers    (kube, etcd, kwok, Vault, Helm from their Go modules: go_builds=)
#   make node           (kubelet, kube-proxy, containerd v2, the pause image: node_build=)
#   make images images-triton  (the Modelseal and Triton test images: images=)
#   make env-check      (start every real test server and prove it works: env_check=)
#   make $COLD_CHECK_ALSO, if set (for example "demo" or "test"; each timed as <target>=)
# and prints, last:
#   cold-check: ok total=<s> go_builds=<s> venv=<s> env_check=<s>
#
# The developer's own caches (~/go/pkg/mod, ~/.cache/go-build, ~/.cache/modelseal, ~/.cache/pip)
# are never read or written: every cache variable points into the run's folder, and the
# script refuses to start if `go env` disagrees.
#
# Environment:
#   COLD_CHECK_DIR    where the clone and the caches go (default: a new folder under /tmp);
#                     removed at the end unless COLD_CHECK_KEEP=1
#   COLD_CHECK_ALSO   extra make targets to run in the clone after env-check
#   COLD_CHECK_REF    what to clone (default HEAD); uncommitted changes are not included
set -euo pipefail

main() {
  here="$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  repo="$(cd "${here}/.." && git rev-parse --show-toplevel)"
  ref="${COLD_CHECK_REF:-HEAD}"
  root="${COLD_CHECK_DIR:-$(mktemp -d /tmp/modelseal-cold-check.XXXXXX)}"
  mkdir -p "${root}"
  root="$(cd "${root}" && pwd)"

  log() { echo "cold-check: $*" >&2; }
  cleanup() {
    if [[ "${COLD_CHECK_KEEP:-0}" != 1 ]]; then
      # The Go module cache is read-only by design; make it removable first.
      chmod -R u+w "${root}" 2>/dev/null || true
      rm -rf "${root}"
    else
      log "kept ${root}"
    fi
  }
  trap cleanup EXIT

  # Every cache this set-up touches, private to the run.
  export GOMODCACHE="${root}/go/mod"
  export GOCACHE="${root}/go/build"
  export GOPATH="${root}/go/path"
  export MODELSEAL_CACHE_DIR="${root}/modelseal-cache"
  export PIP_CACHE_DIR="${root}/pip-cache"
  export XDG_CACHE_HOME="${root}/xdg-cache"
  # PIP_FIND_LINKS: a local wheel folder would stand in for the registry.
  unset GOFLAGS MODELSEAL_VAULT_BINARY PIP_NO_CACHE_DIR PIP_FIND_LINKS VIRTUAL_ENV
  mkdir -p "${GOMODCACHE}" "${GOCACHE}" "${GOPATH}" "${MODELSEAL_CACHE_DIR}" \
    "${PIP_CACHE_DIR}" "${XDG_CACHE_HOME}"

  # Refuse to run if Go would still use another cache (a go.env or GOENV file can override).
  local v
  for v in GOMODCACHE GOCACHE; do
    [[ "$(go env "${v}")" == "${root}/"* ]] \
      || { log "go env ${v}=$(go env "${v}") is outside ${root}; refusing to touch it"; exit 1; }
  done

  clone="${root}/modelseal"
  log "cloning ${ref} of ${repo} into ${clone}"
  git clone --quiet --no-local "${repo}" "${clone}"
  git -C "${clone}" checkout --quiet --detach "$(git -C "${repo}" rev-parse "${ref}")"
  log "commit $(git -C "${clone}" rev-parse --short=12 HEAD); caches under ${root}"
  log "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg) at start"

  declare -A took=()
  phase() { # phase NAME make-target...
    local name="$1"
    shift
    local start=${SECONDS}
    log "--- ${name}: make $*"
    make -C "${clone}" --no-print-directory "$@"
    took[${name}]=$((SECONDS - start))
    log "--- ${name}: ${took[${name}]}s (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  }

  local total_start=${SECONDS}
  phase system_deps system-deps
  phase venv venv
  phase go_builds testservers
  phase node_build node
  phase images images images-triton
  phase env_check env-check
  local extra=""
  local target
  for target in ${COLD_CHECK_ALSO:-}; do
    phase "${target}" "${target}"
    extra+=" ${target}=${took[${target}]}"
  done
  local total=$((SECONDS - total_start))

  # What the run filled, so a reader sees it really started empty.
  log "sizes: go modules $(du -sh "${GOMODCACHE}" | cut -f1), go build cache" \
    "$(du -sh "${GOCACHE}" | cut -f1), servers $(du -sh "${MODELSEAL_CACHE_DIR}" | cut -f1)," \
    "pip cache $(du -sh "${PIP_CACHE_DIR}" | cut -f1), venv $(du -sh "${clone}/.venv" | cut -f1)"
  echo "cold-check: ok total=${total} go_builds=${took[go_builds]} venv=${took[venv]}" \
    "node_build=${took[node_build]} images=${took[images]} env_check=${took[env_check]}${extra}"
}

main "$@"
