# Shared by the install-*-deps.sh scripts (sourced, not run): the Debian checks, the
# installed-package test, sudo, the check after installing, and a whole simple installer.
# Each function takes the calling script's name first, for its messages.

# Exit 1 unless dpkg-query and apt-get are here; $2: the packages to name for a manual install.
apt_require_debian() {
    if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
        echo "$1: needs a Debian-based system (dpkg, apt-get);" \
            "install by hand: $2" >&2
        exit 1
    fi
}

installed() {
    [[ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null || true)" == "installed" ]]
}

# Set SUDO (an array) to what apt-get needs in front of it; exit 1 when not root and no
# sudo. $2: the missing packages, for the message.
apt_set_sudo() {
    SUDO=()
    if [[ "$(id -u)" -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            SUDO=(sudo)
        else
            echo "$1: missing $2" \
                "and not root (no sudo)" >&2
            exit 1
        fi
    fi
}

# Exit 1 if any of the packages after $1 is still not installed.
apt_check_installed() {
    local name="$1" pkg
    shift
    for pkg in "$@"; do
        if ! installed "$pkg"; then
            echo "$name: $pkg still not installed" >&2
            exit 1
        fi
    done
}

# The whole job of a simple installer: $1 the script's name, then the packages. Installs
# those that are missing (one apt-get update, one install), checks them, says what it did;
# does nothing (no apt-get, no sudo) when all are present.
apt_install_missing() {
    local name="$1" pkg
    shift
    apt_require_debian "$name" "$*"
    local missing=()
    for pkg in "$@"; do
        installed "$pkg" || missing+=("$pkg")
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        echo "$name: all present ($*)"
        return 0
    fi
    apt_set_sudo "$name" "${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    echo "$name: apt-get update (missing: ${missing[*]})"
    "${SUDO[@]}" apt-get update -qq
    echo "$name: installing ${missing[*]}"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
    apt_check_installed "$name" "$@"
    echo "$name: done"
}
