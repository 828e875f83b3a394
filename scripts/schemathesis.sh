#!/usr/bin/env bash
# docs/admin-api.yaml against a live daemon: bash scripts/schemathesis.sh
#
# Installs schemathesis (PyPI, pinned) into .cache/venv when missing, builds the cerberus
# binary (debug), starts a standalone daemon on a free loopback port in a temporary
# directory, and runs `schemathesis run --checks all` with the admin token; stops the
# daemon at the end. Exits non-zero when schemathesis finds anything.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
VERSION=4.32.5
VENV="$REPO_ROOT/.cache/venv"
ST="$VENV/bin/schemathesis"

if ! "$ST" --version 2>/dev/null | grep -q "$VERSION"; then
    if ! python3 -m venv "$VENV" 2>/dev/null; then
        echo "schemathesis.sh: installing python3-venv (apt)"
        if [[ $(id -u) -eq 0 ]]; then SUDO=(); else SUDO=(sudo); fi
        "${SUDO[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq python3-venv >/dev/null
        rm -rf "$VENV"
        python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install --quiet "schemathesis==$VERSION"
fi

cargo build --quiet --bin cerberus
BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/debug/cerberus"
DIR="$(mktemp -d "${TMPDIR:-/tmp}/cerberus-schemathesis.XXXXXX")"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
TOKEN="$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
cat >"$DIR/cerberus.yaml" <<YAML
data_dir: $DIR
socket: $DIR/cerberus.sock
admin_listen: 127.0.0.1:$PORT
admin_token: $TOKEN
forward_auth_listen: off
capi_url: http://127.0.0.1:9
YAML
"$BIN" run -c "$DIR/cerberus.yaml" >"$DIR/daemon.log" 2>&1 &
DAEMON=$!
cleanup() {
    kill "$DAEMON" 2>/dev/null || true
    wait "$DAEMON" 2>/dev/null || true
    rm -rf "$DIR"
}
trap cleanup EXIT
for _ in $(seq 200); do
    curl -fsS "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1 && break
    sleep 0.05
done

# A fixed seed, so that a run repeats the last one; SCHEMATHESIS_SEED picks another.
"$ST" run docs/admin-api.yaml \
    --url "http://127.0.0.1:$PORT" \
    --checks all \
    --header "Authorization: Bearer $TOKEN" \
    --max-examples 25 \
    --seed "${SCHEMATHESIS_SEED:-1}" \
    --no-color
