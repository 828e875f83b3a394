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
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_start
(cd "$ROOT" && cargo build --release --quiet -p bouncer-api --example socket_load)
LOAD="$ROOT/target/release/examples/socket_load"

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
start_caddy caddy "$WORK/Caddyfile" caddy
for _ in $(seq 100); do
    curl -fsS "http://127.0.0.1:$BARE_PORT/" >/dev/null 2>&1 && break
    sleep 0.1
done

bare="$(run_wrk "http://127.0.0.1:$BARE_PORT/")"
fwd="$(run_wrk "http://127.0.0.1:$FWD_PORT/")"
cscli decisions add --ip 127.0.0.1 --duration 1h --reason bench >/dev/null
for _ in $(seq 100); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$FWD_PORT/")" == 403 ]] && break
    sleep 0.1
done
fwd_banned="$(run_wrk "http://127.0.0.1:$FWD_PORT/")"

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
