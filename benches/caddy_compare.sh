#!/usr/bin/env bash
# Caddy bouncers compared in one run, same machine, loopback only, bounded in time:
#   (a) bare Caddy (static respond);
#   (b) Caddy with the cerberus module (Unix socket to the cerberus daemon);
#   (c) Caddy with forward_auth to the cerberus daemon;
#   (d) Caddy with the incumbent hslatman/caddy-crowdsec-bouncer (in process, stream
#       mode), built from benches/incumbent/ against the same Caddy version.
# One real LAPI (scripts/crowdsec-lapi.sh) holds N decisions (default 100000, imported
# with cscli); cerberus and the incumbent each sync from it with a bouncer key of their
# own. wrk -t2 -c64 measures every setup with the client not banned, then again after
# `cscli decisions add --ip 127.0.0.1`. Prints a Markdown table: requests/s, p50, p99
# and the ratio to bare Caddy.
#
# usage: bash benches/caddy_compare.sh [DECISIONS] [SECONDS]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-100000}"
SECS="${2:-10}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cerberus-compare.XXXXXX")"
OUR_CADDY="$ROOT/caddy-module/bin/caddy"
INC_DIR="$ROOT/benches/incumbent"
INC_CADDY="$INC_DIR/bin/caddy"

status_of() { curl -s -o /dev/null -w '%{http_code}' "$@" || true; }
# Waits up to $1 tenths of a second until `status_of ARGS...` answers $2.
wait_status() {
    local tenths="$1" want="$2"
    shift 2
    for _ in $(seq "$tenths"); do
        [[ "$(status_of "$@")" == "$want" ]] && return 0
        sleep 0.1
    done
    return 1
}

command -v go >/dev/null || { echo "go is missing" >&2; exit 1; }
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_start
bash "$ROOT/scripts/build-caddy.sh" >/dev/null

INCUMBENT=1
echo "building Caddy with the incumbent bouncer (benches/incumbent)..." >&2
if ! (cd "$INC_DIR" && go build -o "$INC_CADDY" .) >"$WORK/incumbent-build.log" 2>&1; then
    INCUMBENT=0
    echo "SKIPPING the incumbent: its build failed:" >&2
    cat "$WORK/incumbent-build.log" >&2
fi

# Both Caddyfiles trust 127.0.0.1 as a proxy, so that a probe can ask for an imported
# address with X-Forwarded-For (wrk sends none: its client IP stays 127.0.0.1). Same
# global options in both, so that the four setups differ only in their handler.
GLOBAL="$(printf '{\n\tadmin off\n\tauto_https off\n\tservers {\n\t\ttrusted_proxies static 127.0.0.1/32\n\t}\n')"

BARE_PORT="$(free_port)"
MOD_PORT="$(free_port)"
FWD_PORT="$(free_port)"
cat >"$WORK/Caddyfile.ours" <<CADDY
$GLOBAL
}
:$BARE_PORT {
	respond "ok"
}
:$MOD_PORT {
	route {
		cerberus {
			socket $WORK/cerberus.sock
			timeout 20ms
			fail open
		}
		respond "ok"
	}
}
:$FWD_PORT {
	forward_auth 127.0.0.1:$FA_PORT {
		uri /
	}
	respond "ok"
}
CADDY
start_caddy "$OUR_CADDY" "$WORK/Caddyfile.ours" caddy-ours
wait_status 100 200 "http://127.0.0.1:$BARE_PORT/" || {
    echo "our Caddy did not start; log:" >&2
    tail -20 "$WORK/caddy-ours.log" >&2
    exit 1
}
# (forward_auth gets the synced daemon too, but passes the connection's address on.)
wait_status 100 403 -H 'X-Forwarded-For: 10.0.0.1' "http://127.0.0.1:$MOD_PORT/" || {
    echo "the cerberus module does not ban 10.0.0.1; log:" >&2
    tail -20 "$WORK/caddy-ours.log" >&2
    exit 1
}

INC_PORT=""
if [[ $INCUMBENT == 1 ]]; then
    INC_KEY="$(bash "$ROOT/scripts/crowdsec-lapi.sh" bouncer "$WORK/lapi" incumbent)"
    INC_PORT="$(free_port)"
    cat >"$WORK/Caddyfile.incumbent" <<CADDY
$GLOBAL
	crowdsec {
		api_url $LAPI_URL
		api_key $INC_KEY
		ticker_interval 1s
	}
}
:$INC_PORT {
	route {
		crowdsec
		respond "ok"
	}
}
CADDY
    start_caddy "$INC_CADDY" "$WORK/Caddyfile.incumbent" caddy-inc
    # Synced once an imported address is banned (30 s at most).
    if ! wait_status 300 403 -H 'X-Forwarded-For: 10.0.0.1' "http://127.0.0.1:$INC_PORT/"; then
        INCUMBENT=0
        echo "SKIPPING the incumbent: it did not ban an imported address within 30 s; log:" >&2
        tail -20 "$WORK/caddy-inc.log" >&2
    fi
fi

NAMES=(bare module forward_auth)
PORTS=("$BARE_PORT" "$MOD_PORT" "$FWD_PORT")
if [[ $INCUMBENT == 1 ]]; then
    NAMES+=(incumbent)
    PORTS+=("$INC_PORT")
fi
declare -A LABEL=(
    [bare]="(a) bare Caddy (respond)"
    [module]="(b) cerberus module (Unix socket)"
    [forward_auth]="(c) forward_auth to cerberus"
    [incumbent]="(d) hslatman/caddy-crowdsec-bouncer (stream)"
)
declare -A FREE BANNED

echo "measuring, client not banned..." >&2
for i in "${!NAMES[@]}"; do
    FREE[${NAMES[$i]}]="$(run_wrk "http://127.0.0.1:${PORTS[$i]}/")"
done

cscli decisions add --ip 127.0.0.1 --duration 1h --reason bench >/dev/null
echo "measuring, client banned..." >&2
for i in "${!NAMES[@]}"; do
    [[ ${NAMES[$i]} == bare ]] && continue
    wait_status 300 403 "http://127.0.0.1:${PORTS[$i]}/" ||
        echo "warning: ${NAMES[$i]} did not answer 403 within 30 s" >&2
    BANNED[${NAMES[$i]}]="$(run_wrk "http://127.0.0.1:${PORTS[$i]}/")"
done

IFS='|' read -r BARE_RPS _ <<<"${FREE[bare]}"
row() {
    local r a b c
    IFS='|' read -r r a b c <<<"$2"
    echo "| $1 | $r | $a | $b | $c | $(ratio "$r" "$BARE_RPS") |"
}

inc_version=""
if [[ $INCUMBENT == 1 ]]; then
    inc_version=", incumbent $(cd "$INC_DIR" && go list -m -f '{{.Version}}' github.com/hslatman/caddy-crowdsec-bouncer)"
fi
echo
echo "wrk -t2 -c64 -d${SECS}s, loopback, $N decisions in LAPI, Caddy $("$OUR_CADDY" version | awk '{print $1}')${inc_version}, same run:"
echo
echo "| setup | client | requests/s | p50 | p99 | non-2xx | ratio to bare Caddy |"
echo "|---|---|---|---|---|---|---|"
for name in "${NAMES[@]}"; do
    row "${LABEL[$name]} | not banned" "${FREE[$name]}"
done
for name in "${NAMES[@]}"; do
    [[ $name == bare ]] && continue
    row "${LABEL[$name]} | banned (403)" "${BANNED[$name]}"
done
if [[ $INCUMBENT == 0 ]]; then
    echo
    echo "(d) hslatman/caddy-crowdsec-bouncer: skipped (see the messages above)."
fi
