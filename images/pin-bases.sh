#!/usr/bin/env bash
# Re-resolve the base images of images/base/Dockerfile to their current digests and rewrite
# the pinned ARG lines. Needs registry access and one of: crane, skopeo, docker buildx.
#   images/pin-bases.sh            print the digests and update the Dockerfile
#   images/pin-bases.sh --check    only print; exit 1 when a pin is out of date
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dockerfile="${here}/base/Dockerfile"
check=0
[[ "${1:-}" == "--check" ]] && check=1

resolve() {  # image:tag -> sha256:... (the multi-arch index digest)
  local ref="$1"
  if command -v crane >/dev/null; then crane digest "${ref}"; return; fi
  if command -v skopeo >/dev/null; then
    skopeo inspect --raw "docker://${ref}" | sha256sum | sed 's/^\([0-9a-f]*\).*/sha256:\1/'; return
  fi
  if command -v docker >/dev/null && docker buildx version >/dev/null 2>&1; then
    docker buildx imagetools inspect "${ref}" --format '{{json .Manifest.Digest}}' | tr -d '"'; return
  fi
  echo "pin-bases: need crane, skopeo or docker buildx to resolve ${ref}" >&2
  return 1
}

stale=0
for arg in BUILDER_IMAGE RUNTIME_IMAGE; do
  line="$(grep "^ARG ${arg}=" "${dockerfile}")"
  pinned="${line#ARG ${arg}=}"
  ref="${pinned%@*}"
  old="${pinned#*@}"
  new="$(resolve "${ref}")"
  echo "${arg}: ${ref} pinned ${old}, registry ${new}"
  if [[ "${old}" != "${new}" ]]; then
    stale=1
    if [[ "${check}" == 0 ]]; then
      sed -i "s|^ARG ${arg}=.*|ARG ${arg}=${ref}@${new}|" "${dockerfile}"
    fi
  fi
done
[[ "${check}" == 1 && "${stale}" == 1 ]] && exit 1
exit 0
