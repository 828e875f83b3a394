#!/usr/bin/env bash
# Build Caddy with the standard modules and the cerberus handler into
# caddy-module/bin/caddy (gitignored), then check that the module is in it.
#
#   scripts/build-caddy.sh            # build
#   GOFLAGS=-trimpath scripts/build-caddy.sh
#
# Dependencies come from the Go module proxy (GOPROXY) as pinned by
# caddy-module/go.mod and go.sum. Needs the Go toolchain named in go.mod.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
module="$root/caddy-module"
out="$module/bin/caddy"

mkdir -p "$module/bin"
start=$SECONDS
(cd "$module" && go build -o "$out" ./cmd/caddy)
echo "built $out in $((SECONDS - start)) s"

if ! "$out" list-modules | grep -x 'http.handlers.cerberus' >/dev/null; then
    echo "error: $out list-modules does not show http.handlers.cerberus" >&2
    exit 1
fi
"$out" version
echo "ok: http.handlers.cerberus is in $out"
