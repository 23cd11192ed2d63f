#!/usr/bin/env bash
# mmdebstrap --customize-hook of images/build.sh: turns the fresh Debian root filesystem in
# $1 into the Modelseal image's. Runs on the build host as root, with /proc, /sys and /dev
# mounted in $1 by mmdebstrap; commands inside the root filesystem run through chroot.
#
# Inputs (environment, set by build.sh):
#   IMAGES_WORK         build.sh's work folder: wheels/ (the wheels to install and their
#                       pinned dependencies), tools/ (pip and cyclonedx-bom wheels),
#                       constraints.txt, tools-constraints.txt; outputs land in out/ there
#   IMAGES_KIND         modelseal or triton
#   IMAGES_VENV         the venv to make: /opt/modelseal or /opt/triton
#   IMAGES_REQUIREMENT  what pip installs into it ("modelseal==0.1.0", "nvidia-pytriton==...")
#   SOURCE_DATE_EPOCH
# Result in $1: the venv (bytecode compiled, no pip), for Triton also /opt/tritonserver
# (backends) and /usr/local/bin/tritonserver; user and group 65532, no package manager
# (dpkg's programs and data are removed; /var/lib/dpkg/status stays, without dpkg's own
# entry, so that image scanners still see the Debian packages). Writes out/python.cdx.json
# (cyclonedx-py, the venv's packages) and out/dpkg-status (the Debian packages) beside it
# for the SBOM.
set -euo pipefail

main() {
  local root="$1"
  local work="${IMAGES_WORK:?}"
  local kind="${IMAGES_KIND:?}"
  local venv="${IMAGES_VENV:?}"
  local requirement="${IMAGES_REQUIREMENT:?}"
  : "${SOURCE_DATE_EPOCH:?}"
  log() { echo "customize-rootfs: $*" >&2; }
  in_root() { chroot "${root}" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \
    SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH}" PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 "$@"; }

  # The wheels come in read-only through /tmp of the root filesystem (emptied below); pip
  # installs with no index, so nothing inside the root filesystem touches the network.
  mkdir -p "${root}/tmp/build"
  cp -a "${work}/wheels" "${work}/tools" "${work}/constraints.txt" \
    "${work}/tools-constraints.txt" "${root}/tmp/build/"

  local pip_whl
  pip_whl="$(cd "${root}/tmp/build/tools" && ls pip-*.whl)"
  # pip runs from its wheel file and is never installed into the image.
  local pip=("${venv}/bin/python" "/tmp/build/tools/${pip_whl}/pip")

  log "venv ${venv} with ${requirement} (constraints.txt, no index)"
  in_root /usr/bin/python3.11 -m venv --without-pip "${venv}"
  # shellcheck disable=SC2086 # the requirement list splits into words
  in_root "${pip[@]}" install --quiet --no-index --no-compile \
    --find-links /tmp/build/wheels -c /tmp/build/constraints.txt ${requirement}

  # Every extension module of the venv must find its libraries in the image (the libraries
  # that auditwheel bundled in <package>.libs/ are found through the extensions' RPATH, so
  # ldd is asked about the extensions, not about those).
  local missing
  missing="$(in_root /bin/sh -c \
    "find ${venv} -name '*.so*' -type f ! -path '*.libs/*' -exec ldd {} + 2>/dev/null \
       | grep 'not found' | sort -u" || true)"
  if [[ -n "${missing}" ]]; then
    log "shared libraries missing in the image:"
    echo "${missing}" >&2
    exit 1
  fi
  if [[ "${kind}" == modelseal ]]; then
    in_root /opt/modelseal/bin/python -c 'import modelseal.__main__, modelseal.handlers
import modelseal.unsealer, modelseal.gateway, modelseal.cli.main
import numpy, grpc, uvloop, pydantic_core, cryptography.hazmat.bindings._rust, yaml, aiohttp'
    test -x "${root}/opt/modelseal/bin/modelseal"
  else
    setup_triton "${root}"
  fi

  # SBOM of the Python packages: cyclonedx-py in a throw-away venv under /tmp, pointed at
  # /opt/modelseal; reproducible output (no serial number, no timestamp).
  log "cyclonedx-py environment /opt/modelseal"
  in_root /usr/bin/python3.11 -m venv --without-pip /tmp/build/sbom
  in_root /tmp/build/sbom/bin/python "/tmp/build/tools/${pip_whl}/pip" install --quiet \
    --no-index --no-compile --find-links /tmp/build/tools -c /tmp/build/tools-constraints.txt \
    cyclonedx-bom
  in_root /tmp/build/sbom/bin/cyclonedx-py environment --output-reproducible \
    --output-format JSON --output-file /tmp/build/python.cdx.json "${venv}"
  mkdir -p "${work}/out"
  cp "${root}/tmp/build/python.cdx.json" "${work}/out/python.cdx.json"

  # The root filesystem is read-only at run time: compile all bytecode now, hash-based and
  # unchecked (a timestamp-based .pyc would go stale when the image's file times are set to
  # SOURCE_DATE_EPOCH, and Python could then neither use nor rewrite it).
  log "compileall (unchecked-hash) /usr/lib/python3* ${venv}"
  find "${root}/usr/lib" "${root}${venv}" -name __pycache__ -type d -prune \
    -exec rm -rf {} +
  in_root /usr/bin/python3.11 -m compileall -q -f -j 1 --invalidation-mode unchecked-hash \
    -x '/(lib2to3/tests|test|idlelib|tkinter|turtledemo)/' \
    /usr/lib/python3.11 /usr/lib/python3 "${venv}/lib" >/dev/null

  # Non-root user and group 65532 (the chart's runAsUser), no login shell, HOME=/tmp.
  grep -q '^modelseal:' "${root}/etc/passwd" \
    || echo 'modelseal:x:65532:65532:modelseal:/tmp:/usr/sbin/nologin' >>"${root}/etc/passwd"
  grep -q '^modelseal:' "${root}/etc/group" || echo 'modelseal:x:65532:' >>"${root}/etc/group"

  # No package manager: dpkg's files go (apt is not in the "essential" variant, pip never
  # was installed); the status file stays for scanners, without dpkg's own stanza.
  log "removing dpkg"
  python3 "$(dirname "${BASH_SOURCE[0]}")/imagetool.py" dpkg-status-without dpkg \
    <"${root}/var/lib/dpkg/status" >"${work}/out/dpkg-status"
  # dpkg's files only, resolved inside the root filesystem: folders it shares with other
  # packages stay, and so do /lib and /sbin, which it lists as folders but which merged /usr
  # made symlinks to folders.
  in_root /bin/sh -ec 'while IFS= read -r f; do
      if [ -n "$f" ] && [ ! -d "$f" ] && { [ -e "$f" ] || [ -L "$f" ]; }; then rm -f "$f"; fi
    done </var/lib/dpkg/info/dpkg.list'
  rm -rf "${root}/etc/dpkg" "${root}/usr/share/dpkg" "${root}/usr/lib/dpkg" \
    "${root}/var/lib/dpkg/info" "${root}/var/lib/dpkg/updates" "${root}/var/lib/dpkg/triggers" \
    "${root}/var/lib/dpkg/alternatives" "${root}/var/lib/dpkg/"*-old \
    "${root}/var/lib/dpkg/diversions" "${root}/var/lib/dpkg/statoverride" \
    "${root}/var/lib/dpkg/lock"* "${root}/var/lib/dpkg/available"
  cp "${work}/out/dpkg-status" "${root}/var/lib/dpkg/status"
  local f
  for f in dpkg dpkg-deb dpkg-query dpkg-split dpkg-divert dpkg-statoverride \
    dpkg-maintscript-helper dpkg-realpath dpkg-trigger update-alternatives apt apt-get; do
    if in_root /bin/sh -c "command -v ${f}" >/dev/null 2>&1; then
      log "${f} is still in the image"
      exit 1
    fi
  done

  # What a running container brings itself, or what differs from host to host.
  rm -rf "${root}/tmp/"* "${root}/tmp/".[!.]* "${root}/var/cache/"* "${root}/var/log/"* \
    "${root}/var/lib/apt" "${root}/var/cache/ldconfig" "${root}/root/.cache"
  : >"${root}/etc/resolv.conf"
  : >"${root}/etc/hostname"
  rm -f "${root}/etc/machine-id" "${root}/var/lib/dbus/machine-id"
  chmod 1777 "${root}/tmp"

  # The finished root filesystem runs the entry point as the image's user.
  if [[ "${kind}" == modelseal ]]; then
    local help
    help="$(chroot --userspec=65532:65532 "${root}" env -i HOME=/tmp PYTHONDONTWRITEBYTECODE=1 \
      /opt/modelseal/bin/python -m modelseal operator --help)"
    [[ "${help}" == *unsealer* ]] || { log "python -m modelseal operator --help failed"; exit 1; }
    chroot --userspec=65532:65532 "${root}" env -i HOME=/tmp /opt/modelseal/bin/modelseal \
      --help >/dev/null
  else
    local help
    help="$(chroot --userspec=65532:65532 "${root}" env -i HOME=/tmp \
      LD_LIBRARY_PATH="${TRITON_LIBS}" /usr/local/bin/tritonserver --help 2>&1 || true)"
    [[ "${help}" == *--model-repository* ]] || {
      log "tritonserver --help failed:"; echo "${help}" | tail -20 >&2; exit 1; }
  fi
  log "done"
}

# Triton from the nvidia-pytriton wheel, laid out as the operator's rendered container runs
# it (`tritonserver` on PATH, no --backend-directory): the Python backend and the backend
# stub for Python 3.11 in Triton's default /opt/tritonserver/backends/python (the backend
# starts the stub that sits next to libtriton_python.so), the local cache in
# /opt/tritonserver/caches. The image's LD_LIBRARY_PATH points at the wheel's bundled
# libraries (the copied stub's $ORIGIN RPATH no longer reaches them); PATH starts with the
# venv's bin/, so the stub's embedded Python finds the venv's packages (numpy...).
TRITON_LIBS=/opt/triton/lib/python3.11/site-packages/nvidia_pytriton.libs
setup_triton() {
  local root="$1"
  local src=/opt/triton/lib/python3.11/site-packages/pytriton/tritonserver
  [[ -x "${root}${src}/bin/tritonserver" ]] || { log "no tritonserver in the wheel"; exit 1; }
  mkdir -p "${root}/opt/tritonserver" "${root}/usr/local/bin"
  cp -a "${root}${src}/backends" "${root}${src}/caches" "${root}/opt/tritonserver/"
  find "${root}/opt/tritonserver" -name __pycache__ -type d -prune -exec rm -rf {} +
  install -m 0755 "${root}${src}/python_backend_stubs/3.11/triton_python_backend_stub" \
    "${root}/opt/tritonserver/backends/python/triton_python_backend_stub"
  ln -sf "${src}/bin/tritonserver" "${root}/usr/local/bin/tritonserver"
  local missing f
  for f in "${src}/bin/tritonserver" /opt/tritonserver/backends/python/libtriton_python.so \
    /opt/tritonserver/backends/python/triton_python_backend_stub \
    /opt/tritonserver/caches/local/libtritoncache_local.so; do
    missing="$(in_root env LD_LIBRARY_PATH="${TRITON_LIBS}" ldd "${f}" | grep 'not found' || true)"
    [[ -z "${missing}" ]] || { log "${f}: ${missing}"; exit 1; }
  done
}

main "$@"
