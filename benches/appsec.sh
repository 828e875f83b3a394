#!/usr/bin/env bash
# What AppSec costs per request, loopback only, bounded in time. One CrowdSec 1.7.8 LAPI
# (scripts/crowdsec-lapi.sh) and one 1.7.8 agent whose only acquisition is AppSec
# (`source: appsec`, crowdsecurity/appsec-virtual-patching and appsec-generic-rules
# installed offline from the hub index in $CERBERUS_HUB_FIXTURES, default
# ../shared/crowdsec-hub); two release cerberus daemons syncing from the LAPI, one with
# `appsec_url` and one without. wrk -t2 -c64 for SECONDS per row on GET / (allowed by
# AppSec) through:
#   (a) our Caddy with the module, `appsec off` for the site;
#   (b) the same Caddy and daemon, AppSec on;
#   (c) Debian's Caddy with forward_auth to the daemon without AppSec;
#   (d) the same with forward_auth to the daemon with AppSec.
# Prints a Markdown table: requests/s, p50, p99, and what AppSec adds to p50 and p99.
#
# usage: bash benches/appsec.sh [SECONDS]     (default 10; 1 for a smoke run)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECS="${1:-10}"
[[ "$SECS" =~ ^[0-9]+$ && "$SECS" -ge 1 && "$SECS" -le 300 ]] ||
    { echo "SECONDS must be 1..300, got $SECS" >&2; exit 2; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/cerberus-appsec-bench.XXXXXX")"
HUB="${CERBERUS_HUB_FIXTURES:-$ROOT/../shared/crowdsec-hub}"
export CERBERUS_CROWDSEC_VERSION=1.7.8
# shellcheck source=benches/lib.sh
source "$ROOT/benches/lib.sh"
trap bench_cleanup EXIT

for cmd in caddy wrk python3 curl go; do
    command -v "$cmd" >/dev/null || { echo "$cmd is missing (bash scripts/test.sh installs it)" >&2; exit 1; }
done
[[ -f "$HUB/.index.json" ]] || { echo "no hub index at $HUB/.index.json (set CERBERUS_HUB_FIXTURES)" >&2; exit 1; }

echo "building the release daemon and our Caddy..." >&2
(cd "$ROOT" && cargo build --release --quiet --bin cerberus)
CERBERUS="$ROOT/target/release/cerberus"
bash "$ROOT/scripts/build-caddy.sh" >/dev/null
OUR_CADDY="$ROOT/caddy-module/bin/caddy"

eval "$(bash "$ROOT/scripts/crowdsec-lapi.sh" install | grep -E '^(CROWDSEC|CSCLI)=')"
bash "$ROOT/scripts/crowdsec-lapi.sh" start "$WORK/lapi" >/dev/null
# shellcheck disable=SC1091
source "$WORK/lapi/env"

# The hub, served on loopback as cscli asks for it: /BRANCH/.index.json.
HUB_PORT="$(free_port)"
mkdir -p "$WORK/hubsrv/hub"
cp "$HUB/.index.json" "$WORK/hubsrv/hub/.index.json"
python3 -m http.server "$HUB_PORT" --bind 127.0.0.1 --directory "$WORK/hubsrv" >/dev/null 2>&1 &
PIDS+=($!)

A="$WORK/agent"
APPSEC_PORT="$(free_port)"
mkdir -p "$A/config/acquis.d" "$A/config/notifications" "$A/hub" "$A/data"
cp -r "$WORK/lapi/config/patterns" "$A/config/"
cp "$WORK/lapi/config/simulation.yaml" "$A/config/"
cat >"$A/acquis.yaml" <<YAML
source: appsec
listen_addr: 127.0.0.1:$APPSEC_PORT
appsec_config: crowdsecurity/appsec-default
labels:
  type: appsec
YAML
cat >"$A/config.yaml" <<YAML
common: {daemonize: false, log_media: file, log_level: warning, log_dir: $A, working_dir: .}
config_paths:
  config_dir: $A/config/
  data_dir: $A/data/
  simulation_path: $A/config/simulation.yaml
  hub_dir: $A/hub/
  index_path: $A/hub/.index.json
  notification_dir: $A/config/notifications/
crowdsec_service: {acquisition_path: $A/acquis.yaml, acquisition_dir: $A/config/acquis.d, parser_routines: 1}
cscli: {output: human, color: "no", hub_branch: hub, __hub_url_template__: "http://127.0.0.1:$HUB_PORT/%s/%s"}
db_config: {type: sqlite, db_path: $WORK/lapi/crowdsec.db, use_wal: true}
api: {client: {credentials_path: $WORK/lapi/creds.yaml}}
prometheus: {enabled: false, level: full, listen_addr: 127.0.0.1, listen_port: 6060}
YAML
for _ in $(seq 50); do curl -fs -o /dev/null "http://127.0.0.1:$HUB_PORT/hub/.index.json" && break; sleep 0.1; done
"$CSCLI" -c "$A/config.yaml" --error hub update >/dev/null
"$CSCLI" -c "$A/config.yaml" --error collections install \
    crowdsecurity/appsec-virtual-patching crowdsecurity/appsec-generic-rules >/dev/null
"$CROWDSEC" -c "$A/config.yaml" -no-api -no-capi >"$A/run.log" 2>&1 &
PIDS+=($!)

daemon() { # NAME APPSEC_URL|"" -> starts it; sets FA_<NAME> and SOCK_<NAME>
    local name=$1 url=$2 fa key
    fa="$(free_port)"
    key="$(bash "$ROOT/scripts/crowdsec-lapi.sh" bouncer "$WORK/lapi" "bench-$name")"
    cat >"$WORK/$name.yaml" <<YAML
api_url: $LAPI_URL
api_key: $key
data_dir: $WORK/data-$name
socket: $WORK/$name.sock
forward_auth_listen: 127.0.0.1:$fa
admin_listen: "off"
log_level: warn
appsec_timeout: 1s
YAML
    [[ -n "$url" ]] && echo "appsec_url: $url" >>"$WORK/$name.yaml"
    "$CERBERUS" run -c "$WORK/$name.yaml" >"$WORK/$name.log" 2>&1 &
    PIDS+=($!)
    printf -v "FA_$name" '%s' "$fa"
    printf -v "SOCK_$name" '%s' "$WORK/$name.sock"
}
daemon with "http://127.0.0.1:$APPSEC_PORT/"
daemon without ""
# Set by `daemon` through printf -v.
: "${SOCK_with:?}" "${FA_with:?}" "${FA_without:?}"

for _ in $(seq 600); do
    (exec 3<>"/dev/tcp/127.0.0.1/$APPSEC_PORT") 2>/dev/null && break
    sleep 0.1
done

GLOBAL="$(printf '{\n\tadmin off\n\tauto_https off\n}')"
MOD_ON="$(free_port)" MOD_OFF="$(free_port)" FWD_ON="$(free_port)" FWD_OFF="$(free_port)"
cat >"$WORK/Caddyfile.ours" <<CADDY
$GLOBAL
http://127.0.0.1:$MOD_OFF {
	cerberus {
		socket $SOCK_with
		appsec off
	}
	respond "ok"
}
http://127.0.0.1:$MOD_ON {
	cerberus {
		socket $SOCK_with
	}
	respond "ok"
}
CADDY
cat >"$WORK/Caddyfile.debian" <<CADDY
$GLOBAL
http://127.0.0.1:$FWD_OFF {
	forward_auth 127.0.0.1:$FA_without {
		uri /
	}
	respond "ok"
}
http://127.0.0.1:$FWD_ON {
	forward_auth 127.0.0.1:$FA_with {
		uri /
	}
	respond "ok"
}
CADDY
start_caddy "$OUR_CADDY" "$WORK/Caddyfile.ours" ours
start_caddy "$(command -v caddy)" "$WORK/Caddyfile.debian" debian

status_of() { curl -s -o /dev/null -w '%{http_code}' "$@" || true; }
for port in "$MOD_OFF" "$MOD_ON" "$FWD_OFF" "$FWD_ON"; do
    for _ in $(seq 300); do
        [[ "$(status_of "http://127.0.0.1:$port/")" == 200 ]] && break
        sleep 0.1
    done
done
# AppSec must be in the path: /.env is refused where it is on, served where it is off.
[[ "$(status_of "http://127.0.0.1:$MOD_ON/.env")" == 403 ]] || { echo "AppSec does not refuse /.env through the module" >&2; exit 1; }
[[ "$(status_of "http://127.0.0.1:$FWD_ON/.env")" == 403 ]] || { echo "AppSec does not refuse /.env through forward_auth" >&2; exit 1; }
[[ "$(status_of "http://127.0.0.1:$MOD_OFF/.env")" == 200 ]] || { echo "appsec off still refuses" >&2; exit 1; }

ms() { python3 -c "
v='$1'
f={'us':1e-3,'ms':1.0,'s':1e3}
for u in ('us','ms','s'):
    if v.endswith(u):
        print(float(v[:-len(u)])*f[u]); break"; }
add() { python3 -c "print(f'{float(\"$(ms "$2")\") - float(\"$(ms "$1")\"):+.2f} ms')"; }

echo "| path | AppSec | requests/s | p50 | p99 | added p50 | added p99 | non-2xx |"
echo "|---|---|---|---|---|---|---|---|"
IFS='|' read -r r0 a0 b0 n0 <<<"$(run_wrk "http://127.0.0.1:$MOD_OFF/")"
echo "| module | off | $r0 | $a0 | $b0 | | | $n0 |"
IFS='|' read -r r1 a1 b1 n1 <<<"$(run_wrk "http://127.0.0.1:$MOD_ON/")"
echo "| module | on | $r1 | $a1 | $b1 | $(add "$a0" "$a1") | $(add "$b0" "$b1") | $n1 |"
IFS='|' read -r r2 a2 b2 n2 <<<"$(run_wrk "http://127.0.0.1:$FWD_OFF/")"
echo "| forward_auth | off | $r2 | $a2 | $b2 | | | $n2 |"
IFS='|' read -r r3 a3 b3 n3 <<<"$(run_wrk "http://127.0.0.1:$FWD_ON/")"
echo "| forward_auth | on | $r3 | $a3 | $b3 | $(add "$a2" "$a3") | $(add "$b2" "$b3") | $n3 |"
echo
echo "AppSec on / off, requests/s: module $(ratio "$r1" "$r0"), forward_auth $(ratio "$r3" "$r2")"
