#!/usr/bin/env bash
# Build the Kubernetes test control plane from Go modules (through the Go module proxy) and
# cache it:  kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok.
#
#   devenv/build-kube.sh            build if missing, print the binary folder on the last line
#   devenv/build-kube.sh --print    only print the binary folder (builds nothing)
#   devenv/build-kube.sh --force    rebuild even when cached
#
# The binaries land in ${MODELSEAL_CACHE_DIR:-~/.cache/modelseal}/bin/<key>/, where the key
# names every pinned version; a stamp file holds a hash of the build inputs (go.mod, go.sum,
# sources, this script), so a changed input rebuilds and an unchanged one is a no-op.
# Builds go to a temporary folder first and are moved into place whole; a lock file keeps
# two concurrent runs from building the same thing twice.
set -euo pipefail

# Everything runs inside main(), so bash has parsed the whole file before it starts: editing
# this script while a (long) build runs cannot derail that build.
main() {

  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  src="${here}/go/kube"
  # shellcheck source=go/kube/versions.env
  source "${src}/versions.env"

  cache="${MODELSEAL_CACHE_DIR:-${HOME}/.cache/modelseal}"
  key="k8s-${K8S_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}"
  dest="${cache}/bin/${key}"
  binaries=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd kwok)
  files=(kwok-stages.yaml)

  mode="build"
  case "${1:-}" in
    --print) mode="print" ;;
    --force) mode="force" ;;
    "") ;;
    *) echo "usage: $0 [--print|--force]" >&2; exit 2 ;;
  esac

  if [[ "${mode}" == "print" ]]; then
    echo "${dest}"
    exit 0
  fi

  log() { echo "build-kube: $*" >&2; }

  # The go.mod files must agree with versions.env (one source of truth for Python and bash).
  grep -q "k8s.io/kubernetes ${K8S_VERSION}\$" "${src}/k8s/go.mod" \
    || { log "k8s/go.mod does not require k8s.io/kubernetes ${K8S_VERSION}"; exit 1; }
  grep -q "go.etcd.io/etcd/server/v3 ${ETCD_VERSION}\$" "${src}/k8s/go.mod" \
    || { log "k8s/go.mod does not require go.etcd.io/etcd/server/v3 ${ETCD_VERSION}"; exit 1; }
  grep -q "sigs.k8s.io/kwok ${KWOK_VERSION}\$" "${src}/kwok/go.mod" \
    || { log "kwok/go.mod does not require sigs.k8s.io/kwok ${KWOK_VERSION}"; exit 1; }

  inputs_hash() {
    (
      cd "${here}"
      find go/kube -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' -o -name '*.env' \) \
        | LC_ALL=C sort | xargs sha256sum
      sha256sum build-kube.sh | sed 's#  .*#  build-kube.sh#'
      go env GOVERSION GOOS GOARCH
    ) | sha256sum | cut -d' ' -f1
  }
  want="$(inputs_hash)"

  is_built() {
    [[ -f "${dest}/.stamp" && "$(cat "${dest}/.stamp")" == "${want}" ]] || return 1
    local b
    for b in "${binaries[@]}"; do [[ -x "${dest}/${b}" ]] || return 1; done
    for b in "${files[@]}"; do [[ -s "${dest}/${b}" ]] || return 1; done
  }

  if [[ "${mode}" != "force" ]] && is_built; then
    echo "${dest}"
    exit 0
  fi

  mkdir -p "${cache}/bin"
  exec 9>"${cache}/bin/.${key}.lock"
  log "waiting for the build lock ${cache}/bin/.${key}.lock"
  flock 9
  if [[ "${mode}" != "force" ]] && is_built; then  # another run built it while we waited
    echo "${dest}"
    exit 0
  fi

  tmp="$(mktemp -d "${cache}/bin/.${key}.XXXXXX")"
  trap 'rm -rf "${tmp}"' EXIT

  export GOFLAGS="-mod=mod -buildvcs=false"
  export CGO_ENABLED=0
  # -p: parallel package builds; default to the core count (2 on CI).
  jobs="${MODELSEAL_BUILD_JOBS:-$(nproc)}"

  minor="${K8S_VERSION#v1.}"
  minor="${minor%%.*}"
  k8s_ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    k8s_ldflags+=" -X ${pkg}.gitVersion=${K8S_VERSION}"
    k8s_ldflags+=" -X ${pkg}.gitMajor=1"
    k8s_ldflags+=" -X ${pkg}.gitMinor=${minor}"
    k8s_ldflags+=" -X ${pkg}.gitTreeState=clean"
    k8s_ldflags+=" -X ${pkg}.buildDate=${K8S_BUILD_DATE}"
  done

  start=${SECONDS}
  log "building Kubernetes ${K8S_VERSION} + etcd ${ETCD_VERSION} into ${dest} (-p ${jobs})"
  (
    cd "${src}/k8s"
    go build -p "${jobs}" -trimpath -ldflags "${k8s_ldflags}" -o "${tmp}/" \
      k8s.io/kubernetes/cmd/kube-apiserver \
      k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler \
      k8s.io/kubernetes/cmd/kubectl \
      ./cmd/etcd
  )
  log "Kubernetes + etcd built in $((SECONDS - start))s"

  kstart=${SECONDS}
  log "building kwok ${KWOK_VERSION}"
  (
    cd "${src}/kwok"
    go build -p "${jobs}" -trimpath -ldflags "-s -w" -o "${tmp}/" sigs.k8s.io/kwok/cmd/kwok
  )
  log "kwok built in $((SECONDS - kstart))s"

  # The kwok binary has no built-in lifecycle stages (kwokctl injects them); ship the
  # project's own default ones, from the same module version, next to the binary:
  # node initialize + heartbeat (with leases), pod ready/complete/delete.
  kwok_dir="$(cd "${src}/kwok" && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
  {
    for f in node/fast/node-initialize.yaml \
             node/heartbeat-with-lease/node-heartbeat-with-lease.yaml \
             pod/fast/pod-ready.yaml pod/fast/pod-complete.yaml pod/fast/pod-delete.yaml; do
      echo "---"
      cat "${kwok_dir}/kustomize/stage/${f}"
    done
  } >"${tmp}/kwok-stages.yaml"

  "${tmp}/kube-apiserver" --version >&2
  "${tmp}/etcd" --version >&2
  "${tmp}/kwok" --version >&2 || true

  echo "${want}" >"${tmp}/.stamp"
  chmod 0755 "${tmp}"
  rm -rf "${dest}"
  mv "${tmp}" "${dest}"
  trap - EXIT
  log "done in $((SECONDS - start))s"
  echo "${dest}"
}

main "$@"
