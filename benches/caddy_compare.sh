#!/usr/bin/env bash
# Caddy bouncers compared in one run, same machine, loopback only, bounded in time:
#   (a) bare Caddy (static respond);
#   (b) Caddy with the cerberus module (answers from the daemon's mapped snapshot
#       segments; the Unix socket only for control and reports);
#   (c) Caddy with forward_auth to the cerberus daemon;
#   (d) Caddy with the incumbent hslatman/caddy-crowdsec-bouncer (in process, stream
#       mode), built from benches/incumbent/ against the same Caddy version.
# One real LAPI (scripts/crowdsec-lapi.sh) holds N decisions (10.x.y.z, imported with
# cscli); cerberus and the incumbent each sync from it with a bouncer key of their own.
# wrk -t2 -c64 measures each setup in four cases:
#   one IP, allowed     wrk's own address (127.0.0.1), not banned;
#   random IPs, allowed  a random public address per request in X-Forwarded-For (every
#                        Caddyfile trusts 127.0.0.1 as a proxy), almost none banned;
#   random IPs, refused  a random banned address (one of the N) per request;
#   one IP, refused      after `cscli decisions add --ip 127.0.0.1`.
# Rounds are interleaved (round 1 of every setup, then round 2, ...), so a change of
# load on the machine hits every setup alike; the table gives the median over rounds
# and ratios (to bare Caddy in the same case, module/incumbent, refused/allowed), both
# as the ratio of the medians and as the median of the per-round ratios (round i of
# one against round i of the other, measured within a minute: on this VM a setup's
# rounds spread by 30% as the host's load changes, and pairing cancels most of it).
#
# usage: bash benches/caddy_compare.sh [DECISIONS]      (default 100000)
#   ROUND_SECS  seconds per wrk round (default 10)
#   ROUNDS      rounds per setup and case (default 3)
# A smoke run: ROUND_SECS=2 ROUNDS=1 bash benches/caddy_compare.sh 1000
# Keep this interface: the test command's smoke step calls it so.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-100000}"
SECS="${ROUND_SECS:-10}"
ROUNDS="${ROUNDS:-3}"
[[ $N =~ ^[0-9]+$ && $N -ge 1 ]] || { echo "DECISIONS must be a positive number, not '$N'" >&2; exit 2; }
[[ $SECS =~ ^[0-9]+$ && $SECS -ge 1 ]] || { echo "ROUND_SECS must be a positive number of seconds, not '$SECS'" >&2; exit 2; }
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 ]] || { echo "ROUNDS must be a positive number, not '$ROUNDS'" >&2; exit 2; }
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
# global options in both, so that the four setups differ only in their handler. No
# `route` block: it costs Caddy about 5 us per request (benches/caddy_profile.sh), which
# would be charged to the bouncers; the module has its directive order, the incumbent
# gets one with `order`.
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
$(cerberus_directive 1)
	respond "ok"
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
# (forward_auth: Caddy passes the client address on in X-Forwarded-For, which the
# daemon trusts from 127.0.0.1; see benches/lib.sh.)
wait_status 100 403 -H 'X-Forwarded-For: 10.0.0.1' "http://127.0.0.1:$MOD_PORT/" || {
    echo "the cerberus module does not ban 10.0.0.1; log:" >&2
    tail -20 "$WORK/caddy-ours.log" >&2
    exit 1
}
grep -q "looking up in the daemon's mapped snapshot segments" "$WORK/caddy-ours.log" || {
    echo "the cerberus module did not map the segments; log:" >&2
    tail -20 "$WORK/caddy-ours.log" >&2
    exit 1
}

INC_PORT=""
if [[ $INCUMBENT == 1 ]]; then
    INC_KEY="$(bash "$ROOT/scripts/crowdsec-lapi.sh" bouncer "$WORK/lapi" incumbent)"
    INC_PORT="$(free_port)"
    cat >"$WORK/Caddyfile.incumbent" <<CADDY
$GLOBAL
	order crowdsec before respond
	crowdsec {
		api_url $LAPI_URL
		api_key $INC_KEY
		ticker_interval 1s
	}
}
:$INC_PORT {
	crowdsec
	respond "ok"
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
    [module]="(b) cerberus module (segments)"
    [forward_auth]="(c) forward_auth to cerberus"
    [incumbent]="(d) hslatman/caddy-crowdsec-bouncer (stream)"
)
declare -A CASE_LABEL=(
    [one_allowed]="one IP, allowed"
    [random_allowed]="random IPs, allowed"
    [random_refused]="random IPs, refused"
    [one_refused]="one IP, refused"
)
# RESULTS[setup/case] holds one "requests/s|p50|p99|non-2xx" line per round.
declare -A RESULTS

# wrk's script for the random cases: benches/xff.lua.
XFF_LUA="$ROOT/benches/xff.lua"

# One round of case $2 on setup index $1.
measure() {
    local i=$1 case=$2 url="http://127.0.0.1:${PORTS[$1]}/" out
    case $case in
    random_allowed) out="$(XFF_MODE=allowed XFF_N=$N run_wrk "$url" "$XFF_LUA")" ;;
    random_refused) out="$(XFF_MODE=banned XFF_N=$N run_wrk "$url" "$XFF_LUA")" ;;
    *) out="$(run_wrk "$url")" ;;
    esac
    RESULTS[${NAMES[$i]}/$case]+="$out"$'\n'
}

rounds() {
    local r case i
    for r in $(seq "$ROUNDS"); do
        echo "round $r of $ROUNDS: $*" >&2
        for case in "$@"; do
            for i in "${!NAMES[@]}"; do measure "$i" "$case"; done
        done
    done
}

rounds one_allowed random_allowed random_refused
cscli decisions add --ip 127.0.0.1 --duration 1h --reason bench >/dev/null
for i in "${!NAMES[@]}"; do
    [[ ${NAMES[$i]} == bare ]] && continue
    wait_status 300 403 "http://127.0.0.1:${PORTS[$i]}/" ||
        echo "warning: ${NAMES[$i]} did not answer 403 to 127.0.0.1 within 30 s" >&2
done
rounds one_refused

inc_version=""
if [[ $INCUMBENT == 1 ]]; then
    inc_version=", incumbent $(cd "$INC_DIR" && go list -m -f '{{.Version}}' github.com/hslatman/caddy-crowdsec-bouncer)"
fi
echo
echo "wrk -t2 -c64, $ROUNDS interleaved rounds of ${SECS}s, medians; loopback, $N decisions in LAPI, Caddy $("$OUR_CADDY" version | awk '{print $1}')${inc_version}:"
echo
CASES="one_allowed random_allowed random_refused one_refused"
DUMP="$WORK/results.txt"
: >"$DUMP"
for key in "${!RESULTS[@]}"; do
    while IFS= read -r line; do
        [[ -n $line ]] && echo "$key|$line" >>"$DUMP"
    done <<<"${RESULTS[$key]}"
done
LABELS_SETUP="$(for n in "${NAMES[@]}"; do echo "$n=${LABEL[$n]}"; done)"
LABELS_CASE="$(for c in $CASES; do echo "$c=${CASE_LABEL[$c]}"; done)"
python3 - "$DUMP" "$LABELS_SETUP" "$LABELS_CASE" <<'PY'
import statistics, sys
setups = [l.split("=", 1) for l in sys.argv[2].splitlines()]
cases = [l.split("=", 1) for l in sys.argv[3].splitlines()]
rows = {}
for line in open(sys.argv[1]):
    key, rps, p50, p99, non2xx = line.strip().split("|")
    rows.setdefault(key, []).append((float(rps), p50, p99, int(non2xx)))

def ms(v):  # wrk prints 1.23ms / 456.78us / 1.02s
    for unit, f in (("ms", 1.0), ("us", 0.001), ("s", 1000.0)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float("nan")

med = {k: statistics.median(r[0] for r in v) for k, v in rows.items()}
print("| setup | case | requests/s (median) | rounds (requests/s) | p99 (median) | non-2xx (all rounds) | ratio to bare Caddy |")
print("|---|---|---|---|---|---|---|")
for c, clabel in cases:
    for s, slabel in setups:
        v = rows.get(f"{s}/{c}")
        if not v:
            continue
        bare = med.get(f"bare/{c}")
        ratio = f"{med[f'{s}/{c}'] / bare:.2f}" if bare else "-"
        each = ", ".join(f"{r[0]:,.0f}" for r in v)
        p99 = statistics.median(ms(r[2]) for r in v)
        print(f"| {slabel} | {clabel} | {med[f'{s}/{c}']:,.0f} | {each} | {p99:.2f} ms | {sum(r[3] for r in v):,} | {ratio} |")
def r(a, b):
    return f"{med[a] / med[b]:.2f}" if a in med and b in med else "-"

def paired(a, b):
    # Round i of a against round i of b: measured within a minute of each other, so
    # a change of the machine's speed between rounds cancels out of each ratio.
    if a not in rows or b not in rows or len(rows[a]) != len(rows[b]):
        return "-"
    return f"{statistics.median(x[0] / y[0] for x, y in zip(rows[a], rows[b])):.2f}"

RATIOS = [
    ("module / bare Caddy, allowed", "module/{}_allowed", "bare/{}_allowed"),
    ("module / incumbent, allowed", "module/{}_allowed", "incumbent/{}_allowed"),
    ("module / incumbent, refused", "module/{}_refused", "incumbent/{}_refused"),
    ("module refused / module allowed", "module/{}_refused", "module/{}_allowed"),
    ("incumbent refused / incumbent allowed", "incumbent/{}_refused", "incumbent/{}_allowed"),
    ("forward_auth / bare Caddy, allowed", "forward_auth/{}_allowed", "bare/{}_allowed"),
]
for title, f in (("ratio of the medians", r), ("median of the per-round ratios", paired)):
    print()
    print(f"| {title} | one IP | random IPs |")
    print("|---|---|---|")
    for name, a, b in RATIOS:
        print(f"| {name} | {f(a.format('one'), b.format('one'))} | {f(a.format('random'), b.format('random'))} |")
PY
if [[ $INCUMBENT == 0 ]]; then
    echo
    echo "(d) hslatman/caddy-crowdsec-bouncer: skipped (see the messages above)."
fi
