#!/usr/bin/env bash
# Build the Modelseal container image with no Docker engine and no base image from any
# registry: mmdebstrap makes a Debian bookworm root filesystem (python3.11 and the few
# runtime libraries), the project wheel and its dependencies pinned by constraints.txt go
# into a venv in it (images/customize-rootfs.sh), and buildah turns it into an OCI image.
#
#   images/build.sh [KIND]            build if the inputs changed, else print the cached result
#   images/build.sh --force [KIND]    rebuild even when cached
#   images/build.sh --print [KIND]    print the cached result only (exit 1 when there is none)
#
# KIND:
#   modelseal (default)  <registry>/modelseal:<version>. One image serves every role:
#                        `python -m modelseal operator|unsealer|gateway` and the `modelseal`
#                        command line (the chart passes the role as args). Two layers: the
#                        Debian root filesystem, then /opt/modelseal (the venv).
#   triton               <registry>/triton-cpu:pytriton-<version>, for the tests: the
#                        `tritonserver` of the nvidia-pytriton wheel (pinned by
#                        constraints.txt) on CPU with its Python backend, `tritonserver` on
#                        PATH and the backends in Triton's default /opt/tritonserver/backends,
#                        as the operator's rendered Triton container expects. Two layers:
#                        the Debian root filesystem (with libpython3.11 for the backend stub),
#                        then /opt/triton (venv) and /opt/tritonserver. The chart's default
#                        Triton image stays NVIDIA's.
#
# Output (build/images/, git-ignored), <file> = modelseal-<version> or triton-cpu-pytriton-<v>:
#   <file>.oci.tar        OCI archive (skopeo copy oci-archive:<file>.oci.tar docker://...)
#   <file>.cdx.json       CycloneDX SBOM: Debian and Python packages
#   <file>.digest         "<manifest digest> <size in bytes>"
#   <kind>.stamp          hash of the inputs of the cached build
# The last lines printed are "image: <name>:<tag> sha256:... <size>".
#
# Inputs hashed for the cache: constraints.txt, images/ (these scripts,
# tools-constraints.txt, image-requirements.txt) and the settings below; for modelseal also
# pyproject.toml and operator/. Debian's packages are not pinned (deb.debian.org serves the current
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

  local mode="build" kind="modelseal" arg
  for arg in "$@"; do
    case "${arg}" in
      --force) mode="force" ;;
      --print) mode="print" ;;
      modelseal | triton) kind="${arg}" ;;
      *) echo "usage: $0 [--force|--print] [modelseal|triton]" >&2; exit 2 ;;
    esac
  done

  log() { echo "images: $*" >&2; }
  die() { echo "images: ERROR: $*" >&2; exit 1; }

  local version registry name tag file venv requirement out inputs packages layers
  version="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -1)"
  [[ -n "${version}" ]] || die "no version in pyproject.toml"
  registry="${IMAGE_REGISTRY:-ghcr.io/modelseal}"
  out="${repo}/build/images"
  local mirror="${IMAGES_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
  local security="${IMAGES_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
  # The image depends on `inputs` only; its time and revision label come from the last
  # commit that changed one of them, so that a commit elsewhere changes neither the cache
  # key nor the digest. `packages`: the runtime libraries, python3.11 (and what it depends
  # on), CA certificates, libstdc++ for the C++ wheels (grpcio and others); the build checks
  # every shared object with ldd.
  if [[ "${kind}" == modelseal ]]; then
    name="${registry}/modelseal"
    tag="${version}"
    file="modelseal-${version}"
    venv=/opt/modelseal
    requirement="modelseal==${version}"
    inputs=(constraints.txt pyproject.toml operator images)
    packages="python3.11,ca-certificates,libstdc++6"
    layers=(./opt/modelseal)
  else
    local pytriton
    pytriton="$(sed -n 's/^nvidia-pytriton==//p' constraints.txt)"
    [[ -n "${pytriton}" ]] || die "constraints.txt pins no nvidia-pytriton"
    name="${registry}/triton-cpu"
    tag="pytriton-${pytriton}"
    file="triton-cpu-${tag}"
    venv=/opt/triton
    requirement="nvidia-pytriton==${pytriton}"
    inputs=(constraints.txt images)
    # libpython3.11: the Python backend stub links the shared libpython.
    packages="python3.11,libpython3.11,ca-certificates,libstdc++6"
    layers=(./opt/triton ./opt/tritonserver)
  fi
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
      find "${inputs[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 \
        | LC_ALL=C sort -z | xargs -0 sha256sum
      echo "kind=${kind} version=${version} name=${name}:${tag}"
      echo "mirror=${mirror} security=${security}"
      echo "packages=${packages} epoch=${SOURCE_DATE_EPOCH} revision=${revision}"
      echo "arch=$(dpkg --print-architecture)"
    } | sha256sum | cut -d' ' -f1
  }

  report() {  # the lines `make images` ends with
    local digest size
    read -r digest size <"${out}/${file}.digest"
    echo "image: ${name}:${tag} ${digest} ${size} bytes ($((size / 1048576)) MiB)"
    echo "  archive: ${out#"${repo}"/}/${file}.oci.tar"
    echo "  sbom:    ${out#"${repo}"/}/${file}.cdx.json"
  }

  local want
  want="$(inputs_hash)"
  is_built() {
    [[ -f "${out}/${kind}.stamp" && "$(cat "${out}/${kind}.stamp")" == "${want}" ]] \
      && [[ -s "${out}/${file}.oci.tar" && -s "${out}/${file}.digest" \
            && -s "${out}/${file}.cdx.json" ]]
  }
  if [[ "${mode}" == "print" ]]; then
    is_built || die "no cached ${kind} image for these inputs; run images/build.sh ${kind}"
    report
    return 0
  fi
  if [[ "${mode}" == "build" ]] && is_built; then
    log "${kind}: cached (inputs unchanged: ${want:0:12})"
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
  work="${out}/.work-${kind}"  # global: the EXIT trap uses it
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
  # shipped package; the dev-environment package stays out) or nvidia-pytriton, their
  # dependencies pinned by constraints.txt, and the build tools pinned by
  # images/tools-constraints.txt. Binary wheels only: a dependency that would need a
  # compiler fails here, loudly.
  log "${kind}: wheels (constraints.txt) with ${py}"
  [[ "$(dpkg --print-architecture)" == amd64 ]] || die "only amd64 is supported for now"
  local platforms=()
  local minor
  for minor in $(seq 36 -1 5); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
  platforms+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64
    --platform manylinux1_x86_64)
  local target=(--only-binary=:all: "${platforms[@]}" --python-version 3.11
    --implementation cp --abi cp311)
  local wanted=("${requirement}")
  if [[ "${kind}" == modelseal ]]; then
    mkdir -p "${work}/src/operator"
    # The package's long description is a short stand-in, not the whole README, so that a
    # README edit neither rebuilds the image nor changes its digest.
    cp pyproject.toml "${work}/src/"
    printf '%s\n' "Modelseal: Kubernetes operator for protected (sealed, licensed, metered)" \
      "model serving with Triton and Vault. See README.md in the source repository." \
      >"${work}/src/README.md"
    tar -C operator --exclude=__pycache__ --exclude='*.pyc' -cf - modelseal \
      | tar -C "${work}/src/operator" -xf -
    PIP_CONSTRAINT="${here}/tools-constraints.txt" "${py}" -m pip wheel --quiet --no-deps \
      -w "${work}/wheels" "${work}/src"
    wanted=("${work}/wheels/modelseal-${version}-py3-none-any.whl")
  else
    # The Python-backend models run with this venv's packages; numpy as constraints.txt
    # pins it (with numpy 2.x, as_numpy() failed in this stub on a GPU host).
    wanted+=(numpy)
    requirement+=" numpy"
  fi
  # pip evaluates environment markers with the interpreter it runs on, not the target's:
  # images/image-requirements.txt adds what the image's Python (Debian's 3.11.2) needs
  # beyond that, pinned.
  "${py}" -m pip download --quiet -d "${work}/wheels" "${target[@]}" -c constraints.txt \
    "${wanted[@]}" -r "${here}/image-requirements.txt"
  "${py}" -m pip download --quiet -d "${work}/tools" "${target[@]}" \
    -c "${here}/tools-constraints.txt" pip cyclonedx-bom
  cat constraints.txt "${here}/image-requirements.txt" >"${work}/constraints.txt"
  cp "${here}/tools-constraints.txt" "${work}/tools-constraints.txt"
  log "$(find "${work}/wheels" -name '*.whl' | wc -l) wheels in $((SECONDS - start))s"

  # 2. The root filesystem: Debian's Essential:yes packages (no apt) plus the runtime
  # libraries, without documentation other than the copyright files; then the venv
  # (customize-rootfs.sh).
  log "${kind}: mmdebstrap bookworm (${packages}) SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH}"
  local rootfs="${work}/rootfs"
  IMAGES_WORK="${work}" IMAGES_KIND="${kind}" IMAGES_VENV="${venv}" \
    IMAGES_REQUIREMENT="${requirement}" mmdebstrap --mode=root --variant=essential \
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
  # then the venv (and for Triton its backends).
  local tar_opts=(--sort=name --numeric-owner --owner=0 --group=0 "--mtime=@${SOURCE_DATE_EPOCH}"
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime
    --xattrs --acls --selinux)
  local excludes=() layer
  for layer in "${layers[@]}"; do excludes+=("--exclude=${layer}"); done
  tar -C "${rootfs}" "${tar_opts[@]}" "${excludes[@]}" -cf "${work}/base.tar" .
  tar -C "${rootfs}" "${tar_opts[@]}" -cf "${work}/app.tar" "${layers[@]}"

  # 4. The image, with buildah (no daemon). --timestamp gives every history entry and every
  # file that time; the history names no path of this build folder.
  local ctr base_id archive
  archive="${out}/${file}.oci.tar"
  ctr="$(buildah "${storage[@]}" from --quiet scratch)"
  buildah "${storage[@]}" add --quiet "${ctr}" "${work}/base.tar" / >/dev/null
  base_id="$(buildah "${storage[@]}" commit --quiet --omit-history --identity-label=false \
    --timestamp "${SOURCE_DATE_EPOCH}" --rm "${ctr}" modelseal-rootfs:build)"
  ctr="$(buildah "${storage[@]}" from --quiet "${base_id}")"
  buildah "${storage[@]}" add --quiet "${ctr}" "${work}/app.tar" / >/dev/null
  local created
  created="$(date -u -d "@${SOURCE_DATE_EPOCH}" +%Y-%m-%dT%H:%M:%SZ)"
  local kind_config
  if [[ "${kind}" == modelseal ]]; then
    kind_config=(
      --env PATH=/opt/modelseal/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
      --entrypoint '["/opt/modelseal/bin/python", "-m", "modelseal"]'
      --label org.opencontainers.image.title=modelseal
      --label "org.opencontainers.image.description=Modelseal: sealed model serving (operator, unsealer, gateway roles and the modelseal CLI)"
      --label "org.opencontainers.image.version=${version}"
      --label "io.modelseal.roles=operator unsealer gateway cli"
    )
  else
    kind_config=(
      --env PATH=/opt/triton/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
      --env "LD_LIBRARY_PATH=/opt/triton/lib/python3.11/site-packages/nvidia_pytriton.libs"
      --entrypoint '["/usr/local/bin/tritonserver"]'
      --label org.opencontainers.image.title=triton-cpu
      --label "org.opencontainers.image.description=Triton Inference Server from the nvidia-pytriton ${pytriton} wheel, CPU, Python backend (Modelseal's tests)"
      --label "org.opencontainers.image.version=${tag}"
    )
  fi
  buildah "${storage[@]}" config \
    --user 65532:65532 \
    --workingdir /tmp \
    --env PYTHONDONTWRITEBYTECODE=1 \
    --env PYTHONUNBUFFERED=1 \
    --env HOME=/tmp \
    --env LANG=C.UTF-8 \
    --cmd '' \
    --label org.opencontainers.image.licenses=Apache-2.0 \
    --label "org.opencontainers.image.revision=${revision}" \
    --label "org.opencontainers.image.created=${created}" \
    "${kind_config[@]}" \
    "${ctr}"
  rm -f "${archive}" "${archive}.tmp"
  buildah "${storage[@]}" commit --quiet --omit-history --identity-label=false \
    --disable-compression=false --timestamp "${SOURCE_DATE_EPOCH}" --rm \
    "${ctr}" "oci-archive:${archive}.tmp:${name}:${tag}" >/dev/null
  # buildah stamps the archive's own tar entries with the current time; repacked with the
  # layers' fixed order, owners and times, the archive file is reproducible too (the image
  # digest does not depend on it).
  mkdir "${work}/oci"
  tar -C "${work}/oci" -xf "${archive}.tmp"
  rm -f "${archive}.tmp"
  tar -C "${work}/oci" "${tar_opts[@]}" -cf "${archive}.tmp" blobs index.json oci-layout
  rm -rf "${work}/oci"
  mv "${archive}.tmp" "${archive}"

  # 5. Digest, size, SBOM.
  local digest size
  read -r digest size < <(python3 "${here}/imagetool.py" oci-digest "${archive}")
  [[ "${digest}" == sha256:* ]] || die "no digest for ${archive}"
  python3 "${here}/imagetool.py" sbom --python "${work}/out/python.cdx.json" \
    --dpkg-status "${work}/out/dpkg-status" --image-name "${name}" --image-version "${tag}" \
    --digest "${digest}" >"${out}/${file}.cdx.json.tmp"
  mv "${out}/${file}.cdx.json.tmp" "${out}/${file}.cdx.json"
  echo "${digest} ${size}" >"${out}/${file}.digest"
  echo "${want}" >"${out}/${kind}.stamp"
  log "built in $((SECONDS - start))s"
  report
}

main "$@"
