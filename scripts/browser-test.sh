#!/usr/bin/env bash
# The web console and captcha in a real browser: bash scripts/browser-test.sh [--screenshots]
#
# Installs what it needs when missing (Debian's chromium and nodejs/npm with apt,
# playwright-core from the lockfile in tests/browser with npm ci), builds the cerberus
# binary (debug) and the engine-mode stage (tests/web_engine_scene.rs, with CrowdSec from
# scripts/crowdsec-lapi.sh), then runs tests/browser/*.test.mjs with node's test runner.
# --screenshots also saves every page into docs/screenshots/ (desktop and phone width).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
export DEBIAN_FRONTEND=noninteractive

SHOTS=""
if [[ "${1:-}" == "--screenshots" ]]; then
    SHOTS="$REPO_ROOT/docs/screenshots"
fi

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v python3 >/dev/null || missing+=(python3)
if ((${#missing[@]})); then
    echo "browser-test: installing ${missing[*]} (apt)"
    as_root apt-get update -qq
    as_root apt-get install -y -qq "${missing[@]}" >/dev/null
fi

(cd tests/browser && npm ci --no-audit --no-fund --silent)
cargo build --quiet --bin cerberus
# The engine pages (engine.test.mjs) run on the stage of tests/web_engine_scene.rs, with
# the managed CrowdSec engine: both ready before the browser starts.
bash scripts/crowdsec-lapi.sh install >/dev/null
cargo test --quiet --no-run --test web_engine_scene
# Captcha (captcha.test.mjs) runs through our Caddy with the module and Debian's caddy.
command -v caddy >/dev/null || as_root apt-get install -y -qq caddy >/dev/null
bash scripts/build-caddy.sh >/dev/null
BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/cerberus"

cd tests/browser
CERBERUS_BIN="$BIN" CHROMIUM="$(command -v chromium)" SCREENSHOTS="$SHOTS" \
    MODULE_CADDY="$REPO_ROOT/caddy-module/bin/caddy" \
    node --test --test-concurrency=1 --test-reporter=spec console.test.mjs engine.test.mjs \
    captcha.test.mjs
