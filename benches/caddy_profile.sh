#!/usr/bin/env bash
# Where our Caddy with the cerberus module spends its CPU under load: the CPU profile
# of the Caddy process (its admin API's /debug/pprof/profile) while wrk -t2 -c64 sends
# one case of benches/caddy_compare.sh, first to a site with the module, then to a bare
# site of the same Caddy (`respond` alone), then to a bare site whose `respond` is in a
# `route` block as the module's is. For each: requests/s, the CPU time Caddy
# was sampled for, and so its CPU per request, and wrk's own CPU per request; then `go tool pprof -top` of the
# module's run (flat, and cumulative for the module's own functions). Loopback only,
# bounded in time. The setup is caddy_compare.sh's: a real LAPI holding N decisions,
# the release daemon syncing from it, the module on the mapped segments.
#
# usage: bash benches/caddy_profile.sh [DECISIONS] [CASE]
#   DECISIONS  default 100000
#   CASE       random_allowed (default), random_refused or one_allowed
#   SECS       seconds of load (default 15; the profile takes SECS - 3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${1:-100000}"
CASE="${2:-random_allowed}"
SECS="${SECS:-15}"
[[ $N =~ ^[0-9]+$ && $N -ge 1 ]] || { echo "DECISIONS must be a positive number, not '$N'" >&2; exit 2; }
[[ $SECS =~ ^[0-9]+$ && $SECS -ge 5 ]] || { echo "SECS must be a number of seconds >= 5, not '$SECS'" >&2; exit 2; }
case $CASE in
random_allowed) MODE=allowed ;;
random_refused) MODE=banned ;;
one_allowed) MODE="" ;;
*) echo "CASE must be random_allowed, random_refused or one_allowed, not '$CASE'" >&2; exit 2 ;;
esac
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cerberus-profile.XXXXXX")"
OUR_CADDY="$ROOT/caddy-module/bin/caddy"

# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
bench_start
bash "$ROOT/scripts/build-caddy.sh" >/dev/null

PORT="$(free_port)"
BARE="$(free_port)"
ROUTED="$(free_port)"
ADMIN="$(free_port)"
cat >"$WORK/Caddyfile" <<CADDY
{
	admin 127.0.0.1:$ADMIN
	auto_https off
	servers {
		trusted_proxies static 127.0.0.1/32
	}
}
:$PORT {
	route {
$(cerberus_directive 2)
		respond "ok"
	}
}
:$BARE {
	respond "ok"
}
:$ROUTED {
	route {
		respond "ok"
	}
}
CADDY
start_caddy "$OUR_CADDY" "$WORK/Caddyfile" caddy
for _ in $(seq 100); do
    [[ "$(curl -s -o /dev/null -w '%{http_code}' -H 'X-Forwarded-For: 10.0.0.1' "http://127.0.0.1:$PORT/" || true)" == 403 ]] && break
    sleep 0.1
done
grep -q "looking up in the daemon's mapped snapshot segments" "$WORK/caddy.log" || {
    echo "the module did not map the segments; log:" >&2
    tail -20 "$WORK/caddy.log" >&2
    exit 1
}

script=()
[[ -n $MODE ]] && script=(-s "$ROOT/benches/xff.lua")
PROFILE_SECS=$((SECS - 3))

# Load on port $1 for SECS while Caddy is profiled for PROFILE_SECS into $2; prints
# "requests/s|sampled CPU seconds|CPU us per request|wrk's CPU us per request" (wrk's
# user and system time, from the `times` of the subshell that ran it: the client's
# share of the two cores, which a bigger answer, such as a refusal page, makes grow).
profile() {
    local port=$1 out=$2 rps cpu wrk_cpu total
    (
        XFF_MODE="$MODE" XFF_N="$N" wrk -t2 -c64 -d"${SECS}s" "${script[@]}" "http://127.0.0.1:$port/" >"$WORK/wrk-$port.txt"
        times >"$WORK/wrk-$port.times"
    ) &
    local wrk_pid=$!
    sleep 2
    curl -s -o "$out" "http://127.0.0.1:$ADMIN/debug/pprof/profile?seconds=$PROFILE_SECS"
    wait "$wrk_pid"
    rps="$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk-$port.txt")"
    total="$(awk '/requests in/ {print $1}' "$WORK/wrk-$port.txt")"
    # times: the shell's user and system time, then its children's ("0m1.234s 0m0.567s").
    wrk_cpu="$(sed -n 2p "$WORK/wrk-$port.times" | sed -E 's/([0-9]+)m([0-9.]+)s/\1 \2/g' |
        awk '{ print $1 * 60 + $2 + $3 * 60 + $4 }')"
    cpu="$(cd "$ROOT/caddy-module" && go tool pprof -top -nodecount=1 "$OUR_CADDY" "$out" 2>/dev/null |
        sed -nE 's/.*Total samples = ([0-9.]+)(m?s).*/\1 \2/p' |
        awk '{ print ($2 == "ms") ? $1 / 1000 : $1 }')"
    python3 -c "print(f'$rps|$cpu|{float(\"$cpu\") * 1e6 / (float(\"$rps\") * $PROFILE_SECS):.1f}|{float(\"$wrk_cpu\") * 1e6 / float(\"$total\"):.1f}')"
}

IFS='|' read -r m_rps m_cpu m_us m_wrk <<<"$(profile "$PORT" "$WORK/module.pprof")"
IFS='|' read -r b_rps b_cpu b_us b_wrk <<<"$(profile "$BARE" "$WORK/bare.pprof")"
IFS='|' read -r r_rps r_cpu r_us r_wrk <<<"$(profile "$ROUTED" "$WORK/routed.pprof")"
echo "case $CASE, $N decisions; wrk -t2 -c64 -d${SECS}s, Caddy profiled for ${PROFILE_SECS}s of it:"
echo
echo "| site | requests/s | Caddy CPU sampled | Caddy CPU per request | wrk CPU per request |"
echo "|---|---|---|---|---|"
echo "| with the module | $m_rps | ${m_cpu} s | ${m_us} us | ${m_wrk} us |"
echo "| bare (respond) | $b_rps | ${b_cpu} s | ${b_us} us | ${b_wrk} us |"
echo "| bare in a route block, as the module's site | $r_rps | ${r_cpu} s | ${r_us} us | ${r_wrk} us |"
echo
echo "go tool pprof -top (flat), the site with the module:"
(cd "$ROOT/caddy-module" && go tool pprof -top -nodecount=30 "$OUR_CADDY" "$WORK/module.pprof" 2>/dev/null | sed -n '6,$p')
echo
echo "go tool pprof -top -cum, the module's own functions (the handler after it excluded):"
(cd "$ROOT/caddy-module" && go tool pprof -top -cum -focus='caddy-module\.' -ignore='StaticResponse' -nodecount=25 "$OUR_CADDY" "$WORK/module.pprof" 2>/dev/null | sed -n '6,$p')
