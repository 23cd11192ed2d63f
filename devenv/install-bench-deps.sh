#!/usr/bin/env bash
# Installs the Debian packages the benchmarks need beyond install-system-deps.sh, if any are
# missing (idempotent: apt-get runs only when one is missing).
#
#   nginx-light   the HTTP(S) server on 127.0.0.1 that `make bench-ready` fetches the plain
#                 model and the sealed bundle from (run as a child with its own config;
#                 the packaged service is not used)
#   curl          the plain download of `make bench-ready`
#   openssl       the bench's self-signed CA and server certificate (--https)
set -euo pipefail

# shellcheck source=devenv/apt-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-common.sh"

REQUIRED=(nginx-light curl openssl)

apt_install_missing install-bench-deps "${REQUIRED[@]}"
