#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages that the tests and the demo need, if any are missing.
# Idempotent: runs `apt-get update` and `apt-get install` only when a package is missing,
# so a second run on a ready machine does nothing and needs no network.
#
#   redis-server   the Redis test server (tests/fixtures/redis.py)
#   age, lua5.4    used by the demo and by Redis-script tests
#   libpython3.11  the Python backend stub of the pytriton-bundled tritonserver links
#                  libpython3.11.so.1.0; Debian's python3.11 binary is static, so the
#                  shared library is a separate package
#   libstdc++6, libgcc-s1, zlib1g, libexpat1, libc6
#                  system libraries that tritonserver, its backends and the libraries
#                  in nvidia_pytriton.libs need at run time (checked with ldd); everything
#                  else ships inside the wheel
#   procps         pgrep/ps used by the process helpers' diagnostics
set -euo pipefail

PACKAGES=(
    redis-server
    age
    lua5.4
    libpython3.11
    libstdc++6
    libgcc-s1
    zlib1g
    libexpat1
    libc6
    procps
    ca-certificates
)

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: needs a Debian-based system (dpkg, apt-get); install by hand: ${PACKAGES[*]}" >&2
    exit 1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "installed" ]]; then
        missing+=("$pkg")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-system-deps: all present (${PACKAGES[*]})"
    exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        echo "install-system-deps: missing ${missing[*]} and not root (no sudo)" >&2
        exit 1
    fi
fi

echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get update -qq
"${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"

# The Debian package starts a system-wide redis-server on port 6379 where an init system
# runs; the tests start their own on free ports and never use it, so it is left alone.
for pkg in "${PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
    if [[ "$status" != "installed" ]]; then
        echo "install-system-deps: $pkg still not installed" >&2
        exit 1
    fi
done
command -v redis-server >/dev/null
echo "install-system-deps: done"
