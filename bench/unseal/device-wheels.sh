#!/usr/bin/env bash
# The wheels the unseal benchmark's --local-key mode needs on the many-core GPU host (issue
# 13's 16-core table) beyond what that host's Python 3.12 image holds (requests, urllib3,
# typing-extensions, numpy, ...): the project's compiled dependencies built for CPython
# 3.12 on x86-64, at the versions constraints.txt pins. Downloaded into .whl/ (ignored by
# git), which `bench/unseal/on-device.sh` installs there: the host has no network.
#   usage: bash bench/unseal/device-wheels.sh [DEST]   (default .whl)
set -euo pipefail
cd "$(dirname "$0")/../.."
dest="${1:-.whl}"
pin() { # the version constraints.txt pins for a package
  local v
  v="$(grep -i "^$1==" constraints.txt | head -1 | cut -d= -f3)"
  [[ -n "$v" ]] || { echo "device-wheels: $1 is not pinned in constraints.txt" >&2; exit 1; }
  echo "$1==$v"
}
packages=()
for p in cryptography cffi pycparser blake3 hvac; do packages+=("$(pin "$p")"); done
mkdir -p "$dest"
rm -f "$dest"/*.whl
platforms=()
for p in manylinux_2_34_x86_64 manylinux_2_28_x86_64 manylinux_2_27_x86_64 \
    manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d "$dest" "${packages[@]}"
ls -1 "$dest"
du -sh "$dest"
