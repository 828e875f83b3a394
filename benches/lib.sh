# Shared by benches/e2e.sh, caddy_compare.sh and caddy_profile.sh; sourced, not run.
# The caller sets ROOT, N (decisions), SECS (seconds per wrk row) and WORK (a temporary
# directory), then calls bench_start, which installs the exit trap, starts a real LAPI
# holding N imported decisions, and starts the release cerberus daemon syncing from it
# (socket $WORK/cerberus.sock, forward_auth on 127.0.0.1:$FA_PORT).
# shellcheck shell=bash

PIDS=()

bench_cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    bash "$ROOT/scripts/crowdsec-lapi.sh" stop "$WORK/lapi" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cscli() { bash "$ROOT/scripts/crowdsec-lapi.sh" cscli "$WORK/lapi" "$@"; }

# The cerberus directive of the bench Caddyfiles (the module on the daemon's mapped
# segments, its socket for the rest), indented by $1 tabs, so that every bench
# measures the module configured alike.
cerberus_directive() {
    local t
    t="$(printf '%*s' "$1" '' | tr ' ' '\t')"
    printf '%scerberus {\n' "$t"
    printf '%s\tsocket %s\n' "$t" "$WORK/cerberus.sock"
    printf '%s\tsnapshot_dir %s\n' "$t" "$WORK/snapshot"
    printf '%s\ttimeout 20ms\n' "$t"
    printf '%s\tfail open\n' "$t"
    printf '%s}\n' "$t"
}

# wrk -t2 -c64 for SECS on URL ($1), with the Lua script $2 if given; prints
# "requests/s|p50|p99|non-2xx".
run_wrk() {
    local out rps p50 p99 non2xx
    out="$(wrk -t2 -c64 -d"${SECS}s" --latency ${2:+-s "$2"} "$1")"
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    p50="$(awk '$1=="50%" {print $2}' <<<"$out")"
    p99="$(awk '$1=="99%" {print $2}' <<<"$out")"
    non2xx="$(awk '/Non-2xx/ {print $5}' <<<"$out")"
    echo "$rps|$p50|$p99|${non2xx:-0}"
}

# Runs Caddy BINARY on CADDYFILE in the background with XDG directories of its own;
# its log goes to $WORK/NAME.log.
start_caddy() {
    local bin=$1 file=$2 name=$3
    XDG_DATA_HOME="$WORK/xdg-$name" XDG_CONFIG_HOME="$WORK/xdg-$name" \
        "$bin" run --config "$file" --adapter caddyfile >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
}

ratio() { python3 -c "print(f'{float(\"$1\") / float(\"$2\"):.2f}')"; }

bench_start() {
    trap bench_cleanup EXIT
    for cmd in caddy wrk python3 curl; do
        command -v "$cmd" >/dev/null || { echo "$cmd is missing (bash scripts/test.sh installs it)" >&2; exit 1; }
    done
    echo "building the release daemon..." >&2
    (cd "$ROOT" && cargo build --release --quiet --bin cerberus)
    CERBERUS="$ROOT/target/release/cerberus"

    bash "$ROOT/scripts/crowdsec-lapi.sh" install >/dev/null
    bash "$ROOT/scripts/crowdsec-lapi.sh" start "$WORK/lapi" >/dev/null
    # shellcheck disable=SC1091
    source "$WORK/lapi/env"

    echo "importing $N decisions into LAPI..." >&2
    python3 - "$N" >"$WORK/decisions.csv" <<'PY'
import sys
n = int(sys.argv[1])
print("duration,scope,value,type,reason")
for i in range(n):
    print(f"4h,ip,10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255},ban,bench")
PY
    cscli decisions import -i "$WORK/decisions.csv" --format csv >/dev/null 2>&1 ||
        cscli decisions import -i "$WORK/decisions.csv" >/dev/null

    FA_PORT="$(free_port)"
    cat >"$WORK/cerberus.yaml" <<YAML
api_url: $LAPI_URL
api_key: $LAPI_BOUNCER_KEY
update_frequency: 1s
data_dir: $WORK/data
socket: $WORK/cerberus.sock
forward_auth_listen: 127.0.0.1:$FA_PORT
# Caddy (a trusted proxy on loopback) forwards the client address in X-Forwarded-For.
trusted_proxies: [127.0.0.1/32]
admin_listen: "off"
log_level: warn
YAML
    "$CERBERUS" run -c "$WORK/cerberus.yaml" >"$WORK/cerberus.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 300); do
        if [[ -S "$WORK/cerberus.sock" ]] && "$CERBERUS" lookup 10.0.0.1 --socket "$WORK/cerberus.sock" 2>/dev/null | grep -q '"ban"'; then
            return 0
        fi
        sleep 0.1
    done
    echo "cerberus did not sync the decisions within 30 s; log:" >&2
    tail -20 "$WORK/cerberus.log" >&2
    exit 1
}
