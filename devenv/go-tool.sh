# Shared by the build scripts of Go tools that have a wrapper module under devenv/go/<name>
# (build-helm.sh, build-versitygw.sh); sourced, not run. The binary is cached at
#   ${MODELSEAL_CACHE_DIR:-~/.cache/modelseal}/bin/<name>-<version>/<name>
# with a stamp file beside it holding a hash of the build inputs (go.mod, go.sum, the
# calling script, this file, the Go toolchain), so a changed input rebuilds and an
# unchanged one is a no-op. The binary is built into a temporary file and moved into
# place; a lock keeps two concurrent runs from building it twice.
#
#   go_tool_init NAME MODULE SCRIPT MODE   cd into devenv/go/NAME; sets GO_TOOL_VERSION
#                                          (MODULE's version in go.mod), GO_TOOL_BIN and
#                                          GO_TOOL_DIR. MODE is the script's argument:
#                                          "" (build if needed), --print or --force.
#   go_tool_build CHECK PKG [go build flags...]
#                                          prints GO_TOOL_BIN when it is built, stamped
#                                          and CHECK (a command run with the binary's
#                                          path appended) succeeds; otherwise builds PKG.
#
# Environment: MODELSEAL_CACHE_DIR (cache root), MODELSEAL_BUILD_JOBS (parallel package
# builds, default: number of cores), <NAME>_BUILD_NICE (nice level of the compile, default
# 0; HELM_BUILD_NICE, VERSITYGW_BUILD_NICE).

go_tool_log() { echo "build-${GO_TOOL_NAME}: $*" >&2; }

go_tool_init() {
  GO_TOOL_NAME="$1"
  local module="$2"
  GO_TOOL_SCRIPT="$(cd -P "$(dirname "$3")" && pwd)/$(basename "$3")"
  GO_TOOL_MODE="build"
  case "$4" in
    --print) GO_TOOL_MODE="print" ;;
    --force) GO_TOOL_MODE="force" ;;
    "") ;;
    *) echo "usage: ${GO_TOOL_SCRIPT} [--print|--force]" >&2; exit 2 ;;
  esac
  GO_TOOL_HERE="$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  cd "${GO_TOOL_HERE}/go/${GO_TOOL_NAME}"
  # -mod=readonly: the wrapper's go.mod/go.sum are committed and must not drift in a build.
  export GOFLAGS="-mod=readonly -buildvcs=false"
  export CGO_ENABLED=0
  GO_TOOL_VERSION="$(go list -m -f '{{.Version}}' "${module}")"
  local cache="${MODELSEAL_CACHE_DIR:-${HOME}/.cache/modelseal}"
  GO_TOOL_DIR="${cache}/bin/${GO_TOOL_NAME}-${GO_TOOL_VERSION#v}"
  GO_TOOL_BIN="${GO_TOOL_DIR}/${GO_TOOL_NAME}"
}

go_tool_inputs_hash() {
  (
    sha256sum go.mod go.sum
    sha256sum "${GO_TOOL_SCRIPT}" "${GO_TOOL_HERE}/go-tool.sh" | sed 's#  .*/#  #'
    go env GOVERSION GOOS GOARCH
  ) | sha256sum | cut -d' ' -f1
}

go_tool_build() {
  local check="$1" pkg="$2"
  shift 2
  if [[ "${GO_TOOL_MODE}" == "print" ]]; then
    echo "${GO_TOOL_BIN}"
    return 0
  fi
  local want
  want="$(go_tool_inputs_hash)"
  built() {
    [[ -x "${GO_TOOL_BIN}" && -f "${GO_TOOL_DIR}/.stamp" \
      && "$(cat "${GO_TOOL_DIR}/.stamp")" == "${want}" ]] && ${check} "${GO_TOOL_BIN}"
  }
  if [[ "${GO_TOOL_MODE}" != "force" ]] && built; then
    echo "${GO_TOOL_BIN}"
    return 0
  fi
  mkdir -p "${GO_TOOL_DIR}"
  # Children get `9>&-` so that an orphaned compiler (after the build is killed) cannot
  # keep holding the lock.
  exec 9>"${GO_TOOL_DIR}/.build.lock"
  flock 9
  if [[ "${GO_TOOL_MODE}" != "force" ]] && built; then  # built by another run meanwhile
    echo "${GO_TOOL_BIN}"
    return 0
  fi
  local jobs="${MODELSEAL_BUILD_JOBS:-$(nproc)}"
  go_tool_log "building ${GO_TOOL_NAME} ${GO_TOOL_VERSION} -> ${GO_TOOL_BIN} (-p ${jobs})"
  local start=${SECONDS} nice_var="${GO_TOOL_NAME^^}_BUILD_NICE"
  GO_TOOL_TMP="${GO_TOOL_DIR}/${GO_TOOL_NAME}.tmp.$$"
  trap 'rm -f "${GO_TOOL_TMP}"' EXIT
  nice -n "${!nice_var:-0}" go build -p "${jobs}" -trimpath "$@" \
    -o "${GO_TOOL_TMP}" "${pkg}" 9>&-
  ${check} "${GO_TOOL_TMP}" 9>&-
  mv -f "${GO_TOOL_TMP}" "${GO_TOOL_BIN}"
  trap - EXIT
  echo "${want}" >"${GO_TOOL_DIR}/.stamp"
  go_tool_log "built ${GO_TOOL_NAME} ${GO_TOOL_VERSION} in $((SECONDS - start))s"
  echo "${GO_TOOL_BIN}"
}
