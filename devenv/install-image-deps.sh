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

# shellcheck source=devenv/apt-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-common.sh"

REQUIRED=(mmdebstrap buildah skopeo tar python3)

apt_install_missing install-image-deps "${REQUIRED[@]}"
