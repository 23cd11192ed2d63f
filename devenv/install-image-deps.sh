#!/usr/bin/env bash
# Installs the Debian packages that `make images` (images/build.sh) needs, if any are
# missing. Only the image build needs them; `make test` does not.
# Idempotent like install-system-deps.sh: apt-get runs only when a package is missing.
#
#   mmdebstrap   the image's Debian root filesystem, with no base image from a registry
#   buildah      turns it into an OCI image (STORAGE_DRIVER=vfs, no daemon); pulls in runc
#   skopeo       copies the image archive to a registry (README "Images"); inspects archives
#   tar, python3 layer tarballs; images/imagetool.py (digests, SBOM)
set -euo pipefail

REQUIRED=(mmdebstrap buildah skopeo tar python3)

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-image-deps: needs a Debian-based system (dpkg, apt-get);" \
        "install by hand: ${REQUIRED[*]}" >&2
    exit 1
fi

installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == "installed" ]]
}

missing=()
for pkg in "${REQUIRED[@]}"; do
    installed "$pkg" || missing+=("$pkg")
done
if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-image-deps: all present (${REQUIRED[*]})"
    exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-image-deps: missing ${missing[*]} and not root (no sudo)" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-image-deps: apt-get update (missing: ${missing[*]})"
"${SUDO[@]}" apt-get update -qq
echo "install-image-deps: installing ${missing[*]}"
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
for pkg in "${REQUIRED[@]}"; do
    if ! installed "$pkg"; then
        echo "install-image-deps: $pkg still not installed" >&2
        exit 1
    fi
done
echo "install-image-deps: done"
