#!/usr/bin/env bash
# Build the HashiCorp Vault server binary for the test environment from its Go module
# (through the Go module proxy) and cache it:
#   ${MODELSEAL_CACHE_DIR:-~/.cache/modelseal}/bin/vault-<version>/vault
# Idempotent: does nothing when that binary exists and runs. Prints the binary's path last.
#
# The version comes from devenv/go/vault/go.mod (the wrapper module; see the comment there).
# To move to another Vault version: cd devenv/go/vault && go get -tool github.com/hashicorp/vault@vX.Y.Z
#
# Environment:
#   MODELSEAL_CACHE_DIR  cache root (default ~/.cache/modelseal)
#   VAULT_BUILD_FORCE=1  rebuild even when the binary exists
#   VAULT_BUILD_NICE     nice level for the compile (default 0)
set -euo pipefail

here="$(cd -P "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
moddir="$here/go/vault"
cache="${MODELSEAL_CACHE_DIR:-$HOME/.cache/modelseal}"

cd "$moddir"
# -mod=readonly: the wrapper's go.mod/go.sum are committed and must not drift during a build.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-mod=readonly"
version="$(go list -m -f '{{.Version}}' github.com/hashicorp/vault)"
version="${version#v}"
dest_dir="$cache/bin/vault-$version"
dest="$dest_dir/vault"

binary_ok() {
    [[ -x "$dest" ]] && "$dest" version 2>/dev/null | grep -q "Vault v$version"
}

if [[ "${VAULT_BUILD_FORCE:-0}" != 1 ]] && binary_ok; then
    echo "$dest"
    exit 0
fi

mkdir -p "$dest_dir"
# One build at a time (a test session and a manual run may race); the loser waits, then
# finds the binary in place. Children get `9>&-` so that an orphaned compiler process
# (after the build is killed) cannot keep holding the lock.
exec 9>"$dest_dir/.build.lock"
flock 9
if [[ "${VAULT_BUILD_FORCE:-0}" != 1 ]] && binary_ok; then
    echo "$dest"
    exit 0
fi

# Download the module first: `go list -m -f '{{.Dir}}'` and `{{.Time}}` only read the module
# cache and answer empty strings on a machine where it is cold (with -mod=readonly nothing
# else would fetch it before `go build`).
go mod download github.com/hashicorp/vault 9>&-

# Reproducible metadata: the module's publication time stands in for the build date.
build_date="$(go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' \
    github.com/hashicorp/vault 9>&-)"
build_date="${build_date:-1970-01-01T00:00:00Z}"

echo "building vault $version -> $dest (cold builds take a long while)" >&2
start=$(date +%s)
tmp="$dest_dir/vault.tmp.$$"
work="$(mktemp -d)"
src="$cache/src/vault-$version"
trap 'rm -rf "$tmp" "$work" "$src"' EXIT

# Vault 1.21.x needs source fixes to build against the published sdk (see the comment
# in go/vault/go.mod). `go build -overlay` may not replace files in the module cache, so
# the module is copied (58 MB), fixed there, and the wrapper is built with a temporary
# go.mod that adds `replace github.com/hashicorp/vault => <copy>`; the committed
# go.mod/go.sum stay as they are. Each fix names a file, the exact text and its
# replacement; a fix whose text is not found (another Vault version) is skipped with a note.
vault_dir="$(go list -m -f '{{.Dir}}' github.com/hashicorp/vault 9>&-)"
if [[ -z "$vault_dir" || ! -f "$vault_dir/go.mod" ]]; then
    echo "build-vault: the module github.com/hashicorp/vault is not in the module cache" \
        "($(go env GOMODCACHE)) after 'go mod download'; cannot copy its source" >&2
    exit 1
fi
rm -rf "$src"
mkdir -p "$(dirname "$src")"
cp -a "$vault_dir" "$src"
chmod -R u+w "$src"
fix() { # fix REL_PATH OLD NEW
    if ! grep -qF -- "$2" "$src/$1"; then
        echo "note: source fix not applied (text not found in $1): $2" >&2
        return 0
    fi
    OLD="$2" NEW="$3" perl -pi -e 's/\Q$ENV{OLD}\E/$ENV{NEW}/g' "$src/$1"
}
# sdk v0.21.0 has framework.Backend.ActivationFunc(ctx, req, flagName); 1.21.x passes two.
fix vault/identity_store.go \
    'ActivationFunc: iStore.activateDeduplication,' \
    'ActivationFunc: func(ctx context.Context, req *logical.Request, _ string) error { return iStore.activateDeduplication(ctx, req) },'
fix vault/logical_system_activation_flags.go \
    'b.idStoreBackend.ActivationFunc(ctx, nil)' \
    'b.idStoreBackend.ActivationFunc(ctx, nil, "")'
# sdk v0.21.0's keysutil.LockManager.RestorePolicy returns only an error; 1.21.x expects
# (restored key name, error) and uses the name only for an observation record.
fix builtin/logical/transit/path_restore.go \
    'restoredKeyName, err := b.lm.RestorePolicy(ctx, req.Storage, keyName, backupB64, force)' \
    'restoredKeyName, err := keyName, b.lm.RestorePolicy(ctx, req.Storage, keyName, backupB64, force)'
cp go.mod go.sum "$work/"
go mod edit -modfile="$work/go.mod" -replace "github.com/hashicorp/vault=$src" 9>&-

# No `ui` build tag: the web UI is not embedded (http/assets_stub.go). CGO off, as upstream
# release builds. version.Version comes from the module's embedded VERSION file.
CGO_ENABLED=0 nice -n "${VAULT_BUILD_NICE:-0}" go build \
    -trimpath \
    -modfile="$work/go.mod" \
    -tags vault \
    -ldflags "-s -w -X github.com/hashicorp/vault/version.GitCommit=v$version -X github.com/hashicorp/vault/version.BuildDate=$build_date" \
    -o "$tmp" \
    github.com/hashicorp/vault 9>&-
mv -f "$tmp" "$dest"
echo "built vault $version in $(( $(date +%s) - start ))s" >&2
"$dest" version >&2
echo "$dest"
