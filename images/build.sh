#!/usr/bin/env bash
# Build the Modelseal container image with no Docker engine and no base image from any
# registry: mmdebstrap makes a Debian bookworm root filesystem (python3.11 and the few
# runtime libraries), the project wheel and its dependencies pinned by constraints.txt go
# into a venv in it (images/customize-rootfs.sh), and buildah turns it into an OCI image.
#
#   images/build.sh            build if the inputs changed, else print the cached result
#   images/build.sh --force    rebuild even when cached
#   images/build.sh --print    print the cached result only (exit 1 when there is none)
#
# One image serves every role: `python -m modelseal operator|unsealer|gateway` and the
# `modelseal` command line (the chart passes the role as args). Two layers: the Debian
# root filesystem, then /opt/modelseal (the venv).
#
# Output (build/images/, git-ignored):
#   modelseal-<version>.oci.tar        OCI archive (skopeo copy oci-archive:<file> docker://...)
#   modelseal-<version>.cdx.json       CycloneDX SBOM: Debian and Python packages
#   modelseal-<version>.digest         "<manifest digest> <size in bytes>"
#   modelseal.stamp                    hash of the inputs of the cached build
# The last lines printed are "image: <name>:<version> sha256:... <size>" per image.
#
# Inputs hashed for the cache: constraints.txt, pyproject.toml, operator/, images/ (these
# scripts, tools-constraints.txt, image-requirements.txt) and the settings below. Debian's packages are not pinned (deb.debian.org serves the current
# bookworm point release): point IMAGES_DEBIAN_MIRROR at a snapshot to pin them too.
#
# Settings (environment): IMAGE_REGISTRY (default ghcr.io/modelseal), IMAGES_DEBIAN_MIRROR
# (default http://deb.debian.org/debian), IMAGES_DEBIAN_SECURITY_MIRROR, IMAGES_PYTHON (a
# Python with pip for downloading wheels; default .venv/bin/python, else python3),
# SOURCE_DATE_EPOCH (default: the time of the last commit).
# Needs root (mmdebstrap's root mode, buildah with STORAGE_DRIVER=vfs) and the Debian
# packages of devenv/install-image-deps.sh.
set -euo pipefail

main() {
  local here repo
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
  repo="$(cd "${here}/.." && pwd)"
  cd "${repo}"

  local mode="build"
  case "${1:-}" in
    --force) mode="force" ;;
    --print) mode="print" ;;
    "") ;;
    *) echo "usage: $0 [--force|--print]" >&2; exit 2 ;;
  esac

  log() { echo "images: $*" >&2; }
  die() { echo "images: ERROR: $*" >&2; exit 1; }

  local version registry name out
  version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)"
  [[ -n "${version}" ]] || die "no version in pyproject.toml"
  registry="${IMAGE_REGISTRY:-ghcr.io/modelseal}"
  name="${registry}/modelseal"
  out="${repo}/build/images"
  local mirror="${IMAGES_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  local security="${IMAGES_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
  # The runtime libraries: python3.11 (and what it depends on), CA certificates, libstdc++
  # for the C++ wheels (grpcio and others); the build checks every shared object with ldd.
  local packages="python3.11,ca-certificates,libstdc++6"
  # The image depends on these files only; its time and revision label come from the last
  # commit that changed one of them, so that a commit elsewhere changes neither the cache
  # key nor the digest.
  local inputs=(constraints.txt pyproject.toml operator images)
  local revision
  revision="$(git log -1 --format=%H -- "${inputs[@]}" 2>/dev/null || true)"
  [[ -n "${revision}" ]] || revision=unknown
  if [[ -n "$(git status --porcelain -- "${inputs[@]}" 2>/dev/null)" ]]; then
    revision+="-modified"
  fi
  if [[ -z "${SOURCE_DATE_EPOCH:-}" ]]; then
    SOURCE_DATE_EPOCH="$(git log -1 --format=%ct -- "${inputs[@]}" 2>/dev/null || true)"
    [[ -n "${SOURCE_DATE_EPOCH}" ]] || die "SOURCE_DATE_EPOCH unset and no git commit to take it from"
  fi
  export SOURCE_DATE_EPOCH

  inputs_hash() {
    {
      sha256sum constraints.txt pyproject.toml
      find operator images -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
        | LC_ALL=C sort -z | xargs -0 sha256sum
      echo "version=${version} name=${name} mirror=${mirror} security=${security}"
      echo "packages=${packages} epoch=${SOURCE_DATE_EPOCH} revision=${revision}"
      echo "arch=$(dpkg --print-architecture)"
    } | sha256sum | cut -d' ' -f1
  }

  report() {  # the lines `make images` ends with
    local digest size
    read -r digest size <"${out}/modelseal-${version}.digest"
    echo "image: ${name}:${version} ${digest} ${size} bytes ($((size / 1048576)) MiB)"
    echo "  archive: ${out#"${repo}"/}/modelseal-${version}.oci.tar"
    echo "  sbom:    ${out#"${repo}"/}/modelseal-${version}.cdx.json"
  }

  local want
  want="$(inputs_hash)"
  is_built() {
    [[ -f "${out}/modelseal.stamp" && "$(cat "${out}/modelseal.stamp")" == "${want}" ]] \
      && [[ -s "${out}/modelseal-${version}.oci.tar" && -s "${out}/modelseal-${version}.digest" \
            && -s "${out}/modelseal-${version}.cdx.json" ]]
  }
  if [[ "${mode}" == "print" ]]; then
    is_built || die "no cached image for these inputs; run images/build.sh"
    report
    return 0
  fi
  if [[ "${mode}" == "build" ]] && is_built; then
    log "cached (inputs unchanged: ${want:0:12})"
    report
    return 0
  fi

  [[ "$(id -u)" == 0 ]] || die "needs root (mmdebstrap root mode, buildah vfs storage)"
  local tool
  for tool in mmdebstrap buildah tar python3; do
    command -v "${tool}" >/dev/null || die "${tool} not found: run devenv/install-image-deps.sh"
  done
  local py="${IMAGES_PYTHON:-}"
  if [[ -z "${py}" ]]; then
    if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
  fi
  "${py}" -m pip --version >/dev/null 2>&1 || die "${py} has no pip (set IMAGES_PYTHON)"

  mkdir -p "${out}"
  exec 9>"${out}/.lock"
  flock 9

  local start=${SECONDS}
  work="${out}/.work"  # global: the EXIT trap uses it
  rm -rf "${work}"
  mkdir -p "${work}/wheels" "${work}/tools" "${work}/src" "${work}/out"
  # Buildah keeps its own storage under the work folder (vfs: plain copies, no daemon,
  # no fuse), so nothing is left in /var/lib/containers.
  export STORAGE_DRIVER=vfs BUILDAH_ISOLATION=chroot
  storage=(--root "${work}/storage" --runroot "${work}/run" --storage-driver vfs)
  cleanup() {
    buildah "${storage[@]}" rm --all >/dev/null 2>&1 || true
    rm -rf "${work}"
  }
  trap cleanup EXIT

  # 1. Wheels, downloaded here (the build host's network settings apply), for CPython 3.11
  # on glibc 2.36 x86_64 (bookworm): the project wheel (built from a copy holding only the
  # shipped package; the dev-environment package stays out), its dependencies pinned by
  # constraints.txt, and the build tools pinned by images/tools-constraints.txt. Binary
  # wheels only: a dependency that would need a compiler fails here, loudly.
  log "wheels (constraints.txt) with ${py}"
  mkdir -p "${work}/src/operator"
  # The package's long description is a short stand-in, not the whole README, so that a
  # README edit neither rebuilds the image nor changes its digest.
  cp pyproject.toml "${work}/src/"
  printf '%s\n' "Modelseal: Kubernetes operator for protected (sealed, licensed, metered)" \
    "model serving with Triton and Vault. See README.md in the source repository." \
    >"${work}/src/README.md"
  tar -C operator --exclude=__pycache__ --exclude='*.pyc' -cf - modelseal \
    | tar -C "${work}/src/operator" -xf -
  [[ "$(dpkg --print-architecture)" == amd64 ]] || die "only amd64 is supported for now"
  local platforms=()
  local minor
  for minor in $(seq 36 -1 5); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64
    --platform manylinux1_x86_64)
  local target=(--only-binary=:all: "${platforms[@]}" --python-version 3.11
    --implementation cp --abi cp311)
  PIP_CONSTRAINT="${here}/tools-constraints.txt" "${py}" -m pip wheel --quiet --no-deps \
    -w "${work}/wheels" "${work}/src"
  # pip evaluates environment markers with the interpreter it runs on, not the target's:
  # images/image-requirements.txt adds what the image's Python (Debian's 3.11.2) needs
  # beyond that, pinned.
  "${py}" -m pip download --quiet -d "${work}/wheels" "${target[@]}" -c constraints.txt \
    "${work}/wheels/modelseal-${version}-py3-none-any.whl" -r "${here}/image-requirements.txt"
  "${py}" -m pip download --quiet -d "${work}/tools" "${target[@]}" \
    -c "${here}/tools-constraints.txt" pip cyclonedx-bom
  cat constraints.txt "${here}/image-requirements.txt" >"${work}/constraints.txt"
  cp "${here}/tools-constraints.txt" "${work}/tools-constraints.txt"
  log "$(find "${work}/wheels" -name '*.whl' | wc -l) wheels in $((SECONDS - start))s"

  # 2. The root filesystem: Debian's Essential:yes packages (no apt) plus the runtime
  # libraries, without documentation other than the copyright files; then the venv
  # (customize-rootfs.sh).
  log "mmdebstrap bookworm (${packages}) SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}"
  local rootfs="${work}/rootfs"
  IMAGES_WORK="${work}" IMAGES_VERSION="${version}" mmdebstrap --mode=root --variant=essential \
    --include="${packages}" --format=directory --aptopt='APT::Install-Recommends "false"' \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/lintian/*' \
    --customize-hook="bash '${here}/customize-rootfs.sh' \"\$1\"" \
    bookworm "${rootfs}" \
    "deb ${mirror} bookworm main" \
    "deb ${mirror} bookworm-updates main" \
    "deb ${security} bookworm-security main" 2> >(grep -v '^I: ' >&2 || true)
  log "root filesystem in $((SECONDS - start))s: $(du -sh "${rootfs}" | cut -f1)"

  # 3. Two layer tarballs with fixed order, owners and times: the Debian root filesystem,
  # then the venv.
  local tar_opts=(--sort=name --numeric-owner --owner=0 --group=0 "--mtime=@${SOURCE_DATE_EPOCH}"
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime
    --xattrs --acls --selinux)
  tar -C "${rootfs}" "${tar_opts[@]}" --exclude=./opt/modelseal -cf "${work}/base.tar" .
  tar -C "${rootfs}" "${tar_opts[@]}" -cf "${work}/app.tar" ./opt/modelseal

  # 4. The image, with buildah (no daemon). --timestamp gives every history entry and every
  # file that time; the history names no path of this build folder.
  local ctr base_id archive
  archive="${out}/modelseal-${version}.oci.tar"
  ctr="$(buildah "${storage[@]}" from --quiet scratch)"
  buildah "${storage[@]}" add --quiet "${ctr}" "${work}/base.tar" / >/dev/null
  base_id="$(buildah "${storage[@]}" commit --quiet --omit-history --identity-label=false \
    --timestamp "${SOURCE_DATE_EPOCH}" --rm "${ctr}" modelseal-rootfs:build)"
  ctr="$(buildah "${storage[@]}" from --quiet "${base_id}")"
  buildah "${storage[@]}" add --quiet "${ctr}" "${work}/app.tar" / >/dev/null
  local created
  created="$(date -u -d "@${SOURCE_DATE_EPOCH}" +%Y-%m-%dT%H:%M:%SZ)"
  buildah "${storage[@]}" config \
    --user 65532:65532 \
    --workingdir /tmp \
    --env PATH=/opt/modelseal/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env PYTHONDONTWRITEBYTECODE=1 \
    --env PYTHONUNBUFFERED=1 \
    --env HOME=/tmp \
    --env LANG=C.UTF-8 \
    --entrypoint '["/opt/modelseal/bin/python", "-m", "modelseal"]' \
    --cmd '' \
    --label org.opencontainers.image.title=modelseal \
    --label "org.opencontainers.image.description=Modelseal: sealed model serving (operator, unsealer, gateway roles and the modelseal CLI)" \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --label "org.opencontainers.image.version=${version}" \
    --label "org.opencontainers.image.revision=${revision}" \
    --label "org.opencontainers.image.created=${created}" \
    --label "io.modelseal.roles=operator unsealer gateway cli" \
    "${ctr}"
  rm -f "${archive}" "${archive}.tmp"
  buildah "${storage[@]}" commit --quiet --omit-history --identity-label=false \
    --disable-compression=false --timestamp "${SOURCE_DATE_EPOCH}" --rm \
    "${ctr}" "oci-archive:${archive}.tmp:${name}:${version}" >/dev/null
  mv "${archive}.tmp" "${archive}"

  # 5. Digest, size, SBOM.
  local digest size
  read -r digest size < <(python3 "${here}/imagetool.py" oci-digest "${archive}")
  [[ "${digest}" == sha256:* ]] || die "no digest for ${archive}"
  python3 "${here}/imagetool.py" sbom --python "${work}/out/python.cdx.json" \
    --dpkg-status "${work}/out/dpkg-status" --image-name "${name}" --image-version "${version}" \
    --digest "${digest}" >"${out}/modelseal-${version}.cdx.json.tmp"
  mv "${out}/modelseal-${version}.cdx.json.tmp" "${out}/modelseal-${version}.cdx.json"
  echo "${digest} ${size}" >"${out}/modelseal-${version}.digest"
  echo "${want}" >"${out}/modelseal.stamp"
  log "built in $((SECONDS - start))s"
  report
}

main "$@"
