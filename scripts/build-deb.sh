#!/usr/bin/env bash
# Builds the Debian package: bash scripts/build-deb.sh [--no-build]
#
# Installs cargo-deb from crates.io into <repo>/.cache/cargo-deb when it is missing,
# then runs `cargo deb -p cerberus --strip` (a release build, unless --no-build reuses
# target/release/cerberus). The unit, config and maintainer scripts are in debian/,
# the file list in [package.metadata.deb] of Cargo.toml. Prints the .deb's path last.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

CARGO_DEB_VERSION="3.8.0"
CARGO_DEB_ROOT="$REPO_ROOT/.cache/cargo-deb"
CARGO_DEB="$CARGO_DEB_ROOT/bin/cargo-deb"
OUT_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debian"

args=()
case "${1:-}" in
    "") ;;
    --no-build) args+=(--no-build) ;;
    -h | --help)
        sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *)
        echo "usage: bash scripts/build-deb.sh [--no-build]" >&2
        exit 2
        ;;
esac

# rustup's cargo may be missing from a non-login shell's PATH.
if [[ -d "$HOME/.cargo/bin" && ":$PATH:" != *":$HOME/.cargo/bin:"* ]]; then
    PATH="$PATH:$HOME/.cargo/bin"
fi

if [[ ! -x "$CARGO_DEB" ]] || ! "$CARGO_DEB" --version 2>/dev/null | grep -qF "$CARGO_DEB_VERSION"; then
    echo "build-deb: installing cargo-deb $CARGO_DEB_VERSION into $CARGO_DEB_ROOT" >&2
    cargo install --locked --quiet --root "$CARGO_DEB_ROOT" --version "$CARGO_DEB_VERSION" cargo-deb >&2
fi
if [[ ${#args[@]} -gt 0 && ! -x "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/cerberus" ]]; then
    echo "build-deb: --no-build, but there is no target/release/cerberus; run without it" >&2
    exit 1
fi

mkdir -p "$OUT_DIR"
# cargo-deb is found as a cargo subcommand through PATH; it prints the .deb's path.
# No debug info: the package is stripped anyway, and it halves a cold release build.
deb=$(CARGO_PROFILE_RELEASE_DEBUG=0 PATH="$CARGO_DEB_ROOT/bin:$PATH" cargo deb -p cerberus --strip --output "$OUT_DIR" "${args[@]}" | tail -n 1)
[[ -f "$deb" ]] || {
    echo "build-deb: cargo deb wrote no .deb (it printed: $deb)" >&2
    exit 1
}
echo "$deb"
