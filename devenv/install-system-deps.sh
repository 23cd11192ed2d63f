#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages that the tests and the demo need, if any are missing.
# Idempotent: runs `apt-get update` and `apt-get install` only when a package is missing,
# so a second run on a ready machine does nothing and needs no network.
#
# Required:
#   redis-server   the Redis test server (modelseal_devenv/redis.py)
#   age, lua5.4    used by the demo and by Redis-script tests
#   libstdc++6, libgcc-s1, zlib1g, libexpat1, libc6
#                  system libraries that tritonserver, its Python backend, the backend
#                  stub and the libraries in nvidia_pytriton.libs load at run time (checked
#                  with ldd); everything else ships inside the nvidia-pytriton wheel
#   procps, ca-certificates
# For Python 3.11 (the project's interpreter), installed when the distribution has them:
#   libpython3.11    the Python-backend stub links libpython3.11.so.1.0; Debian's python3.11
#                    binary is static, so the shared library is a separate package (a pyenv
#                    or python.org build brings its own, see modelseal_devenv/triton.py)
#   python3.11-venv  `python3.11 -m venv` (the Makefile's venv) on Debian's python3.11
set -euo pipefail

# shellcheck source=devenv/apt-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-common.sh"

PYVER="${MODELSEAL_PYTHON_VERSION:-3.11}"

REQUIRED=(
    redis-server
    age
    lua5.4
    libstdc++6
    libgcc-s1
    zlib1g
    libexpat1
    libc6
    procps
    ca-certificates
)
IF_AVAILABLE=(
    "libpython${PYVER}"
    "python${PYVER}-venv"
)

apt_require_debian install-system-deps "${REQUIRED[*]} ${IF_AVAILABLE[*]}"

has_candidate() {
    local candidate
    candidate="$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')"
    [[ -n "$candidate" && "$candidate" != "(none)" ]]
}

missing_required=()
for pkg in "${REQUIRED[@]}"; do
    installed "$pkg" || missing_required+=("$pkg")
done
missing_optional=()
for pkg in "${IF_AVAILABLE[@]}"; do
    installed "$pkg" || missing_optional+=("$pkg")
done

if [[ ${#missing_required[@]} -eq 0 && ${#missing_optional[@]} -eq 0 ]]; then
    echo "install-system-deps: all present (${REQUIRED[*]} ${IF_AVAILABLE[*]})"
    exit 0
fi

apt_set_sudo install-system-deps "${missing_required[*]} ${missing_optional[*]}"

export DEBIAN_FRONTEND=noninteractive
echo "install-system-deps: apt-get update (missing: ${missing_required[*]} ${missing_optional[*]})"
"${SUDO[@]}" apt-get update -qq

to_install=("${missing_required[@]}")
for pkg in "${missing_optional[@]}"; do
    if has_candidate "$pkg"; then
        to_install+=("$pkg")
    else
        echo "install-system-deps: $pkg is not in this distribution; skipped" \
            "(the Python interpreter must then bring its own shared libpython)" >&2
    fi
done

if [[ ${#to_install[@]} -gt 0 ]]; then
    echo "install-system-deps: installing ${to_install[*]}"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${to_install[@]}"
fi

# The Debian package starts a system-wide redis-server on port 6379 where an init system
# runs; the tests start their own on free ports and never use it, so it is left alone.
apt_check_installed install-system-deps "${REQUIRED[@]}"
command -v redis-server >/dev/null
echo "install-system-deps: done"
