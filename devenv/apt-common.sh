# Shared by install-system-deps.sh and install-image-deps.sh (sourced, not run): the
# Debian checks, the installed-package test, sudo, and the check after installing.
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
