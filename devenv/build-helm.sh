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
# A stamp file next to the binary holds a hash of the build inputs (go.mod, go.sum, this
# script, the Go toolchain), so a changed input rebuilds and an unchanged one is a no-op.
# The binary is built into a temporary file and moved into place; a lock keeps two
# concurrent runs from building it twice.
#
# Environment:
#   MODELSEAL_CACHE_DIR     cache root (default ~/.cache/modelseal)
#   MODELSEAL_BUILD_JOBS    parallel package builds (default: number of cores)
#   HELM_BUILD_NICE         nice level for the compile (default 0)
set -euo pipefail

here="$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
moddir="${here}/go/helm"
cache="${MODELSEAL_CACHE_DIR:-${HOME}/.cache/modelseal}"

mode="build"
case "${1:-}" in
  --print) mode="print" ;;
  --force) mode="force" ;;
  "") ;;
  *) echo "usage: $0 [--print|--force]" >&2; exit 2 ;;
esac

log() { echo "build-helm: $*" >&2; }

cd "${moddir}"
# -mod=readonly: the wrapper's go.mod/go.sum are committed and must not drift during a build.
export GOFLAGS="-mod=readonly -buildvcs=false"
export CGO_ENABLED=0
version="$(go list -m -f '{{.Version}}' helm.sh/helm/v3)"
dest_dir="${cache}/bin/helm-${version#v}"
dest="${dest_dir}/helm"

if [[ "${mode}" == "print" ]]; then
  echo "${dest}"
  exit 0
fi

inputs_hash() {
  (
    sha256sum go.mod go.sum
    sha256sum "${here}/build-helm.sh" | sed 's#  .*#  build-helm.sh#'
    go env GOVERSION GOOS GOARCH
  ) | sha256sum | cut -d' ' -f1
}
want="$(inputs_hash)"

is_built() {
  [[ -x "${dest}" && -f "${dest_dir}/.stamp" && "$(cat "${dest_dir}/.stamp")" == "${want}" ]] \
    && "${dest}" version --short 2>/dev/null | grep -q "^${version}"
}

if [[ "${mode}" != "force" ]] && is_built; then
  echo "${dest}"
  exit 0
fi

mkdir -p "${dest_dir}"
exec 9>"${dest_dir}/.build.lock"
flock 9
if [[ "${mode}" != "force" ]] && is_built; then  # another run built it while we waited
  echo "${dest}"
  exit 0
fi

# The same version stamps as helm's own Makefile: the CLI version, and the Kubernetes
# version that `helm template`/`helm lint` assume without a cluster (client-go v0.X.Y -> 1.X).
k8s_ver="$(go list -m -f '{{.Version}}' k8s.io/client-go)"
k8s_minor="$(echo "${k8s_ver#v0.}" | cut -d. -f1)"
ldflags="-s -w"
ldflags+=" -X helm.sh/helm/v3/internal/version.version=${version}"
ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
  ldflags+=" -X ${pkg}.k8sVersionMajor=1 -X ${pkg}.k8sVersionMinor=${k8s_minor}"
done

jobs="${MODELSEAL_BUILD_JOBS:-$(nproc)}"
log "building helm ${version} -> ${dest} (-p ${jobs})"
start=${SECONDS}
tmp="${dest_dir}/helm.tmp.$$"
trap 'rm -f "${tmp}"' EXIT
nice -n "${HELM_BUILD_NICE:-0}" go build -p "${jobs}" -trimpath -ldflags "${ldflags}" \
  -o "${tmp}" helm.sh/helm/v3/cmd/helm
"${tmp}" version --short >&2
mv -f "${tmp}" "${dest}"
trap - EXIT
echo "${want}" >"${dest_dir}/.stamp"
log "built helm ${version} in $((SECONDS - start))s"
echo "${dest}"
