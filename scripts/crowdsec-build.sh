#!/usr/bin/env bash
# Builds CrowdSec at a release tag from the Go module proxy (no git, no GitHub):
# a throwaway Go module in the cache directory requires crowdsec at that version,
# blank-imports its two commands and builds them with the tags and version ldflags
# that crowdsec's own Makefile uses. The result has the layout of Debian's unpacked
# package (root/usr/bin/{crowdsec,cscli}, root/etc/crowdsec/...), so that
# scripts/crowdsec-lapi.sh runs it the same way. Seconds when already built.
#
# usage: crowdsec-build.sh VERSION [CACHE_DIR]     (VERSION like 1.7.8)
set -euo pipefail

VERSION=${1:?usage: crowdsec-build.sh VERSION [CACHE_DIR]}
VERSION=${VERSION#v}
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CS_HOME="${2:-$REPO_ROOT/.cache/crowdsec-$VERSION}"
MODULE=github.com/crowdsecurity/crowdsec

die() {
    echo "crowdsec-build: $*" >&2
    exit 1
}

log() {
    echo "crowdsec-build: $*" >&2
}

built() {
    [[ -f "$CS_HOME/.installed" && -x "$CS_HOME/root/usr/bin/crowdsec" &&
        -x "$CS_HOME/root/usr/bin/cscli" && -f "$CS_HOME/root/etc/crowdsec/profiles.yaml" ]]
}

command -v go >/dev/null 2>&1 || die "needs Go (go1.24 or newer) on PATH"
mkdir -p "$CS_HOME"
exec 9>"$CS_HOME/.lock"
flock 9
if built; then
    exit 0
fi

build="$CS_HOME/build"
rm -rf "$build"
mkdir -p "$build"
cd "$build"
log "building crowdsec v$VERSION from the Go module proxy (minutes on a cold cache)"

# The module's own source, for its go.mod (replace lines), go.sum and config/.
go mod download -json "$MODULE@v$VERSION" >download.json 2>download.log || {
    cat download.log >&2
    die "go mod download $MODULE@v$VERSION failed"
}
src=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' download.json)
[[ -d "$src" ]] || die "the downloaded module has no source dir (see $build/download.json)"

{
    echo "module cerberus.local/crowdsec-build"
    echo
    go_line=$(grep -m1 '^go ' "$src/go.mod")
    echo "$go_line"
    echo
    echo "require $MODULE v$VERSION"
    echo
    # crowdsec's own replace lines (forks of golang.org/x/time and coraza): a
    # dependent module must repeat them, Go does not apply a dependency's replaces.
    grep -E '^replace ' "$src/go.mod" || true
    awk '/^replace \($/ {on=1; print; next} on {print} on && /^\)$/ {on=0}' "$src/go.mod"
} >go.mod
cat >tools.go <<GO
//go:build tools

package tools

import (
	_ "$MODULE/cmd/crowdsec"
	_ "$MODULE/cmd/crowdsec-cli"
)
GO
# The coraza fork is not in the checksum database: start from crowdsec's own sums.
cp "$src/go.sum" go.sum
chmod u+w go.mod go.sum
GOFLAGS=-mod=mod go mod tidy -e >tidy.log 2>&1 || {
    cat tidy.log >&2
    die "go mod tidy failed"
}

ldflags="-s -w -X 'github.com/crowdsecurity/go-cs-lib/version.Version=v$VERSION'"
tags="netgo,osusergo,expr_debug,nomsgpack,sqlite_omit_load_extension"
mkdir -p out
for cmd in crowdsec crowdsec-cli; do
    CGO_ENABLED=1 go build -trimpath -tags "$tags" -ldflags "$ldflags" \
        -o "out/$cmd" "$MODULE/cmd/$cmd" 2>"build-$cmd.log" || {
        cat "build-$cmd.log" >&2
        die "go build $cmd failed"
    }
done

root="$CS_HOME/root.tmp"
rm -rf "$root"
mkdir -p "$root/usr/bin" "$root/etc/crowdsec" "$root/usr/lib/crowdsec/plugins"
mv out/crowdsec "$root/usr/bin/crowdsec"
mv out/crowdsec-cli "$root/usr/bin/cscli"
cp -r "$src/config/." "$root/etc/crowdsec/"
chmod -R u+w "$root/etc/crowdsec"
# Debian ships simulation.yaml; the module's config dir has it too, but make sure.
[[ -f "$root/etc/crowdsec/simulation.yaml" ]] || echo 'simulation: off' >"$root/etc/crowdsec/simulation.yaml"
"$root/usr/bin/cscli" version 2>&1 | grep -q "v$VERSION" ||
    die "the built cscli does not report v$VERSION: $("$root/usr/bin/cscli" version 2>&1 | head -3)"
rm -rf "$CS_HOME/root"
mv "$root" "$CS_HOME/root"
echo "$MODULE@v$VERSION" >"$CS_HOME/.installed"
# Keep the logs, drop the build's module files.
log "built crowdsec v$VERSION into $CS_HOME/root"
