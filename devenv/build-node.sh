#!/usr/bin/env bash
# Build the real test node's binaries from Go modules (through the Go module proxy) and
# cache them: kubelet and kube-proxy (the control plane's k8s.io/kubernetes version),
# containerd v2 with its CRI plugin, its runc shim and ctr, and the pod sandbox program
# (go/node/pause) packed as an OCI image archive (pause.oci.tar, by buildah).
#
#   devenv/build-node.sh            build if missing, print the binary folder on the last line
#   devenv/build-node.sh --print    only print the binary folder (builds nothing)
#   devenv/build-node.sh --force    rebuild even when cached
#
# Same cache rules as build-kube.sh: ${MODELSEAL_CACHE_DIR:-~/.cache/modelseal}/bin/<key>/,
# a stamp with the hash of every build input, built in a temporary folder and moved whole,
# a lock against two concurrent builds. runc and the CNI plugins are Debian's
# (devenv/install-node-deps.sh).
set -euo pipefail

main() {
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  src="${here}/go/node"
  # shellcheck source=go/kube/versions.env
  source "${here}/go/kube/versions.env"
  containerd_version="$(sed -n 's#^require github.com/containerd/containerd/v2 \(v[^ ]*\)$#\1#p' "${src}/containerd/go.mod")"
  [[ -n "${containerd_version}" ]] || { echo "build-node: no containerd version in ${src}/containerd/go.mod" >&2; exit 1; }

  cache="${MODELSEAL_CACHE_DIR:-${HOME}/.cache/modelseal}"
  key="node-k8s-${K8S_VERSION}_containerd-${containerd_version}"
  dest="${cache}/bin/${key}"
  binaries=(kubelet kube-proxy containerd containerd-shim-runc-v2 ctr pause)
  files=(pause.oci.tar)

  mode="build"
  case "${1:-}" in
    --print) echo "${dest}"; exit 0 ;;
    --force) mode="force" ;;
    "") ;;
    *) echo "usage: $0 [--print|--force]" >&2; exit 2 ;;
  esac

  log() { echo "build-node: $*" >&2; }

  grep -q "k8s.io/kubernetes ${K8S_VERSION}\$" "${src}/k8s/go.mod" \
    || { log "node/k8s/go.mod does not require k8s.io/kubernetes ${K8S_VERSION}"; exit 1; }

  inputs_hash() {
    (
      cd "${here}"
      find go/node -type f \( -name '*.go' -o -name 'go.mod' -o -name 'go.sum' \) \
        | LC_ALL=C sort | xargs sha256sum
      sha256sum build-node.sh | sed 's#  .*#  build-node.sh#'
      echo "${K8S_VERSION} ${K8S_BUILD_DATE}"
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
  if [[ "${mode}" != "force" ]] && is_built; then
    echo "${dest}"
    exit 0
  fi

  tmp="$(mktemp -d "${cache}/bin/.${key}.XXXXXX")"
  trap 'rm -rf "${tmp}"' EXIT

  export GOFLAGS="-mod=mod -buildvcs=false"
  export CGO_ENABLED=0
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
  log "building kubelet + kube-proxy ${K8S_VERSION} into ${dest} (-p ${jobs})"
  (
    cd "${src}/k8s"
    go build -p "${jobs}" -trimpath -ldflags "${k8s_ldflags}" -o "${tmp}/" \
      k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy
  )
  log "kubelet + kube-proxy built in $((SECONDS - start))s"

  cstart=${SECONDS}
  log "building containerd ${containerd_version}"
  (
    cd "${src}/containerd"
    # The release build's tags for a static binary; btrfs, devmapper and zfs snapshotters
    # need C libraries and the node uses overlayfs.
    go build -p "${jobs}" -trimpath \
      -tags "urfave_cli_no_docs osusergo netgo static_build no_btrfs no_devmapper no_zfs" \
      -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=${containerd_version}" \
      -o "${tmp}/" \
      github.com/containerd/containerd/v2/cmd/containerd \
      github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 \
      github.com/containerd/containerd/v2/cmd/ctr
  )
  log "containerd built in $((SECONDS - cstart))s"

  (cd "${src}/pause" && go build -trimpath -ldflags "-s -w" -o "${tmp}/pause" .)

  # The sandbox image: the pause program alone, as uid 65535, with a fixed timestamp.
  export STORAGE_DRIVER=vfs
  command -v buildah >/dev/null || { log "buildah missing (devenv/install-image-deps.sh)"; exit 1; }
  container="$(buildah from scratch)"
  buildah copy --quiet "${container}" "${tmp}/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 "${container}"
  buildah commit --quiet --timestamp 0 --rm "${container}" "oci-archive:${tmp}/pause.oci.tar" >/dev/null

  "${tmp}/kubelet" --version >&2
  "${tmp}/containerd" --version >&2

  echo "${want}" >"${tmp}/.stamp"
  chmod 0755 "${tmp}"
  rm -rf "${dest}"
  mv "${tmp}" "${dest}"
  trap - EXIT
  log "done in $((SECONDS - start))s"
  echo "${dest}"
}

main "$@"
