#!/usr/bin/env bash
# End-to-end hot-path benchmark, all on loopback, bounded in time:
#   1. the running daemon's Unix socket driven by bouncer-api's socket_load example at
#      1, 16 and 64 connections (lookups/s, p50, p99);
#   2. wrk through Debian's Caddy: bare (static respond) and with forward_auth to
#      cerberus, same run, client not banned and then banned.
# A real LAPI (scripts/crowdsec-lapi.sh) holds N decisions (default 100000, imported with
# cscli) that cerberus syncs. Prints Markdown tables for benches/README.md.
#
# usage: bash benches/e2e.sh [DECISIONS] [SECONDS]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-100000}"
SECS="${2:-10}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cerberus-e2e.XXXXXX")"
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    bash "$ROOT/scripts/crowdsec-lapi.sh" stop "$WORK/lapi" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

for cmd in caddy wrk python3; do
    command -v "$cmd" >/dev/null || { echo "$cmd is missing (bash scripts/test.sh installs it)" >&2; exit 1; }
done

echo "building release binaries..." >&2
(cd "$ROOT" && cargo build --release --quiet --bin cerberus && cargo build --release --quiet -p bouncer-api --example socket_load)
CERBERUS="$ROOT/target/release/cerberus"
LOAD="$ROOT/target/release/examples/socket_load"

bash "$ROOT/scripts/crowdsec-lapi.sh" install >/dev/null
bash "$ROOT/scripts/crowdsec-lapi.sh" start "$WORK/lapi" >/dev/null
# shellcheck disable=SC1091
source "$WORK/lapi/env"
cscli() { bash "$ROOT/scripts/crowdsec-lapi.sh" cscli "$WORK/lapi" "$@"; }

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
admin_listen: "off"
log_level: warn
YAML
"$CERBERUS" run -c "$WORK/cerberus.yaml" >"$WORK/cerberus.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 300); do
    if [[ -S "$WORK/cerberus.sock" ]] && "$CERBERUS" lookup 10.0.0.1 --socket "$WORK/cerberus.sock" 2>/dev/null | grep -q '"ban"'; then
        break
    fi
    sleep 0.1
done
"$CERBERUS" lookup 10.0.0.1 --socket "$WORK/cerberus.sock" | grep -q '"ban"' || {
    echo "cerberus did not sync the decisions; log:" >&2
    tail -20 "$WORK/cerberus.log" >&2
    exit 1
}

echo
echo "Unix socket, $N decisions, ${SECS}s per row (connections x lookups in flight on each):"
echo
echo "| connections x in flight | lookups/s | p50 | p99 |"
echo "|---|---|---|---|"
for shape in 1:1 16:1 64:1 4:16; do
    c="${shape%%:*}"
    depth="${shape##*:}"
    line="$("$LOAD" --socket "$WORK/cerberus.sock" --connections "$c" --depth "$depth" --seconds "$SECS")"
    rate="$(sed -E 's/.* rate=([0-9]+).*/\1/' <<<"$line")"
    p50="$(sed -E 's/.* p50=([0-9.]+us).*/\1/' <<<"$line")"
    p99="$(sed -E 's/.* p99=([0-9.]+us).*/\1/' <<<"$line")"
    echo "| $c x $depth | $rate | $p50 | $p99 |"
done

BARE_PORT="$(free_port)"
FWD_PORT="$(free_port)"
cat >"$WORK/Caddyfile" <<CADDY
{
	admin off
	auto_https off
}
:$BARE_PORT {
	respond "ok"
}
:$FWD_PORT {
	forward_auth 127.0.0.1:$FA_PORT {
		uri /
	}
	respond "ok"
}
CADDY
XDG_DATA_HOME="$WORK/xdg" XDG_CONFIG_HOME="$WORK/xdg" caddy run --config "$WORK/Caddyfile" --adapter caddyfile >"$WORK/caddy.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$BARE_PORT/" >/dev/null 2>&1 && break
    sleep 0.1
done

run_wrk() {
    local out
    out="$(wrk -t2 -c64 -d"${SECS}s" --latency "$1")"
    local rps p50 p99 non2xx
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    p50="$(awk '$1=="50%" {print $2}' <<<"$out")"
    p99="$(awk '$1=="99%" {print $2}' <<<"$out")"
    non2xx="$(awk '/Non-2xx/ {print $5}' <<<"$out")"
    echo "$rps|$p50|$p99|${non2xx:-0}"
}

bare="$(run_wrk "http://127.0.0.1:$BARE_PORT/")"
fwd="$(run_wrk "http://127.0.0.1:$FWD_PORT/")"
cscli decisions add --ip 127.0.0.1 --duration 1h --reason bench >/dev/null
for _ in $(seq 100); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$FWD_PORT/")" == 403 ]] && break
    sleep 0.1
done
fwd_banned="$(run_wrk "http://127.0.0.1:$FWD_PORT/")"

ratio() { python3 -c "print(f'{float(\"$1\") / float(\"$2\"):.2f}')"; }
echo
echo "wrk -t2 -c64 -d${SECS}s through Debian's Caddy $(caddy version | awk '{print $1}'), same run:"
echo
echo "| setup | requests/s | p50 | p99 | non-2xx | ratio to bare Caddy |"
echo "|---|---|---|---|---|---|"
IFS='|' read -r r a b c <<<"$bare"
echo "| bare Caddy (respond) | $r | $a | $b | $c | 1.00 |"
IFS='|' read -r r2 a b c <<<"$fwd"
echo "| forward_auth to cerberus, client not banned | $r2 | $a | $b | $c | $(ratio "$r2" "$r") |"
IFS='|' read -r r3 a b c <<<"$fwd_banned"
echo "| forward_auth to cerberus, client banned (403) | $r3 | $a | $b | $c | $(ratio "$r3" "$r") |"
