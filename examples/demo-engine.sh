#!/usr/bin/env bash
# The whole promise of cerberus with a managed CrowdSec engine, on one machine, loopback
# only:
#
#   1. Caddy (with the cerberus module) writes a JSON access log to a file;
#   2. cerberus starts the CrowdSec engine itself (engine.enabled: true), which reads that
#      file; the `crowdsecurity/caddy` preset is installed through cerberus' admin API;
#   3. a client at 127.0.0.5 probes 40 missing paths through Caddy: the engine bans it,
#      and Caddy answers it 403 through cerberus, while 127.0.0.6 keeps getting 200;
#   4. `cerberus unban 127.0.0.5` lets it in again.
#
# Run from anywhere:   bash examples/demo-engine.sh
# Keep the files:      KEEP=1 bash examples/demo-engine.sh   (the temp dir is printed)
#
# Needs: Linux, bash, curl, python3 (serves the hub index on loopback), cargo, the Go
# toolchain named in caddy-module/go.mod (scripts/build-caddy.sh), and root or sudo once
# for scripts/crowdsec-lapi.sh install (unpacks Debian's crowdsec 1.4.6 into .cache/; it
# is never installed system-wide). The first run downloads and builds for a few minutes;
# after that the demo itself takes under a minute, and every wait is bounded.
#
# Hub index: the 1.4.6 engine needs hub content of its time. The demo serves the hub's
# .index.json of 2023-03-01 (github.com/crowdsecurity/hub, commit 511a7e31d) from a file:
# HUB_INDEX=/path/to/index-2023-03-01.json (default: ../shared/crowdsec-hub/ next to
# the repository). Today's hub content is rejected by crowdsec 1.4.6.
#
# Everything started here (cerberus and its engine, Caddy, the hub server) is stopped
# when the script exits, however it exits.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HUB_INDEX="${HUB_INDEX:-$REPO/../shared/crowdsec-hub/index-2023-03-01.json}"
ATTACKER=127.0.0.5
NEIGHBOUR=127.0.0.6
PROBES=40
BAN_WAIT_S=60

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
die() {
    echo "demo-engine: $*" >&2
    exit 1
}

for tool in curl python3 cargo go; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is needed (see the top of $0)"
done
[[ -r "$HUB_INDEX" ]] || die "no hub index at $HUB_INDEX: set HUB_INDEX to the hub's .index.json of 2023-03-01 (github.com/crowdsecurity/hub, commit 511a7e31d)"
# Loopback answers for all of 127.0.0.0/8 on Linux; check the two client addresses.
for ip in $ATTACKER $NEIGHBOUR; do
    python3 -c "import socket,sys; s=socket.socket(); s.bind((sys.argv[1], 0))" "$ip" 2>/dev/null ||
        die "cannot bind $ip (this demo needs Linux loopback's 127.0.0.0/8)"
done

# --- Everything stopped on exit ---------------------------------------------------------
DIR="$(mktemp -d "${TMPDIR:-/tmp}/cerberus-demo.XXXXXX")"
PIDS=()
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    # Newest first: Caddy, then cerberus (which stops its engine), then the hub server.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        kill -TERM "$pid" 2>/dev/null || continue
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ $rc -ne 0 ]]; then
        echo "demo-engine: failed (exit $rc); logs:" >&2
        for f in cerberus.log engine/crowdsec.log caddy.log; do
            [[ -f "$DIR/$f" ]] && { echo "--- $DIR/$f (last 30 lines)" >&2; tail -n 30 "$DIR/$f" >&2; }
        done
    fi
    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "demo-engine: files kept in $DIR"
    else
        rm -rf "$DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free port on 127.0.0.1, below the ephemeral range.
free_port() {
    python3 - <<'EOF'
import random, socket
for _ in range(200):
    port = random.randrange(20000, 32000)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        continue
    finally:
        s.close()
    print(port)
    break
else:
    raise SystemExit("no free port in 20000-32000")
EOF
}

# wait_for SECONDS WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "timed out after ${secs}s waiting for $what"
        sleep 0.2
    done
}

# code_from IP PATH: the HTTP status Caddy gives the client at IP.
code_from() {
    curl -s -o /dev/null -w '%{http_code}' -m 5 --interface "$1" "http://127.0.0.1:$CADDY_PORT$2" || true
}

# --- Build -----------------------------------------------------------------------------
say "Building (Debian's crowdsec 1.4.6 unpacked, our Caddy, cerberus)"
eval "$(bash "$REPO/scripts/crowdsec-lapi.sh" install | grep -E '^(CROWDSEC|CSCLI)=')"
PKG="$(cd "$(dirname "$CROWDSEC")/../.." && pwd)"
bash "$REPO/scripts/build-caddy.sh" | tail -n 1
CADDY="$REPO/caddy-module/bin/caddy"
(cd "$REPO" && cargo build --quiet --bin cerberus)
CERBERUS="${CERBERUS_BIN:-$REPO/target/debug/cerberus}"
echo "crowdsec: $CROWDSEC"
echo "caddy:    $CADDY"
echo "cerberus: $CERBERUS"

LAPI_PORT=$(free_port)
METRICS_PORT=$(free_port)
ADMIN_PORT=$(free_port)
CADDY_PORT=$(free_port)
HUB_PORT=$(free_port)
ACCESS_LOG="$DIR/caddy-access.log"

# --- The hub index, served on loopback ---------------------------------------------------
mkdir -p "$DIR/hub-server"
ln -s "$(cd "$(dirname "$HUB_INDEX")" && pwd)/$(basename "$HUB_INDEX")" "$DIR/hub-server/.index.json"
python3 -m http.server "$HUB_PORT" --bind 127.0.0.1 --directory "$DIR/hub-server" \
    >"$DIR/hub-server.log" 2>&1 &
PIDS+=($!)
HUB_URL="http://127.0.0.1:$HUB_PORT/.index.json"
wait_for 10 "the hub index at $HUB_URL" curl -fsS -o /dev/null "$HUB_URL"

# --- The engine's config (CrowdSec's own format) ----------------------------------------
say "Writing the configs into $DIR"
E="$DIR/engine"
mkdir -p "$E/config/acquis.d" "$E/config/notifications" "$E/hub" "$E/data"
cp -r "$PKG/etc/crowdsec/patterns" "$E/config/patterns"
cp "$PKG/etc/crowdsec/profiles.yaml" "$E/profiles.yaml"
cp "$PKG/etc/crowdsec/simulation.yaml" "$E/config/simulation.yaml"
# An index with the sections the 1.4.6 agent needs; the preset install puts the real one.
echo '{"parsers":{},"postoverflows":{},"scenarios":{},"collections":{}}' >"$E/hub/.index.json"
# The 1.4.6 engine only tails files that exist when it starts.
: >"$ACCESS_LOG"
cat >"$E/config/acquis.yaml" <<EOF
filenames:
  - $ACCESS_LOG
labels:
  type: caddy
EOF
cat >"$E/config.yaml" <<EOF
common:
  daemonize: true          # CrowdSec 1.4 handles SIGTERM and SIGHUP (reload) only then
  log_media: file
  log_level: info
  log_dir: $E/
  working_dir: .
config_paths:
  config_dir: $E/config/
  data_dir: $E/data/
  simulation_path: $E/config/simulation.yaml
  hub_dir: $E/hub/
  index_path: $E/hub/.index.json
  notification_dir: $E/config/notifications/
  plugin_dir: $PKG/usr/lib/crowdsec/plugins/
crowdsec_service:
  acquisition_path: $E/config/acquis.yaml
  acquisition_dir: $E/config/acquis.d
  parser_routines: 1
cscli:
  output: human
  color: "no"
  hub_branch: master
db_config:
  type: sqlite
  db_path: $E/crowdsec.db
  use_wal: true
api:
  client:
    credentials_path: $E/local_api_credentials.yaml
  server:
    listen_uri: 127.0.0.1:$LAPI_PORT
    profiles_path: $E/profiles.yaml
    trusted_ips: [127.0.0.1]
prometheus:
  enabled: true
  level: full
  listen_addr: 127.0.0.1
  listen_port: $METRICS_PORT
EOF

# --- cerberus' config --------------------------------------------------------------------
cat >"$DIR/cerberus.yaml" <<EOF
data_dir: $DIR/cerberus-data
socket: $DIR/cerberus-data/cerberus.sock
admin_listen: 127.0.0.1:$ADMIN_PORT
forward_auth_listen: "off"
update_frequency: 1s
log_level: info
engine:
  enabled: true
  crowdsec_bin: $CROWDSEC
  cscli_bin: $CSCLI
  config_file: $E/config.yaml
  hub_url: $HUB_URL
EOF
"$CERBERUS" check -c "$DIR/cerberus.yaml"

# --- Caddy's config ----------------------------------------------------------------------
cat >"$DIR/Caddyfile" <<EOF
{
	admin off
	auto_https off
}

http://:$CADDY_PORT {
	bind 127.0.0.1
	log {
		output file $ACCESS_LOG
		format json
	}
	cerberus {
		socket $DIR/cerberus-data/cerberus.sock
		timeout 200ms
		fail closed
	}
	respond / "hello from behind cerberus" 200
	respond "not found" 404
}
EOF

# --- Start cerberus (it starts the engine) ----------------------------------------------
say "Starting cerberus, which starts the CrowdSec engine"
"$CERBERUS" run -c "$DIR/cerberus.yaml" >"$DIR/cerberus.log" 2>&1 &
PIDS+=($!)
ADMIN="http://127.0.0.1:$ADMIN_PORT/api/v1/cerberus/crowdsec"
wait_for 90 "cerberus and its engine to be ready" curl -fsS -o /dev/null "http://127.0.0.1:$ADMIN_PORT/readyz"
grep -m1 'the CrowdSec engine is up' "$DIR/cerberus.log" || true
TOKEN="$(cat "$DIR/cerberus-data/admin_token")"

admin() { # admin METHOD PATH [JSON]
    curl -sS -m 180 -X "$1" -H "Authorization: Bearer $TOKEN" \
        ${3:+-H 'Content-Type: application/json' --data "$3"} "$ADMIN$2"
}

say "Installing presets through the admin API (POST /hub/presets/install)"
# crowdsecurity/syslog-logs holds the raw-stage parser that names a non-syslog line's
# program after its acquisition label; crowdsecurity/caddy needs it (CrowdSec's own
# installer brings it with crowdsecurity/linux).
for preset in crowdsecurity/syslog-logs crowdsecurity/caddy; do
    out=$(admin POST /hub/presets/install "{\"name\":\"$preset\"}")
    echo "$out" | python3 -c '
import json, sys
r = json.load(sys.stdin)
if "error" in r:
    raise SystemExit("install refused: " + json.dumps(r))
print("installed %s: %d items, validated=%s, engine reloaded=%s" % (
    r["name"], len(r["installed"]), r["validated"], r["reloaded"]))'
done
# The engine reloads after each install; let it load the new parsers and scenarios.
reloaded() { [[ $(grep -c 'Reload is finished' "$E/crowdsec.log") -ge 2 ]]; }
wait_for 60 "the engine to finish its reloads" reloaded

# --- Start Caddy -------------------------------------------------------------------------
say "Starting Caddy on 127.0.0.1:$CADDY_PORT (JSON access log: $ACCESS_LOG)"
"$CADDY" run --config "$DIR/Caddyfile" --adapter caddyfile >"$DIR/caddy.log" 2>&1 &
PIDS+=($!)
ok_from() { [[ $(code_from "$1" /) == 200 ]]; }
wait_for 30 "Caddy to answer 200" ok_from $NEIGHBOUR
echo "$NEIGHBOUR -> GET / -> $(code_from $NEIGHBOUR /)"
echo "$ATTACKER -> GET / -> $(code_from $ATTACKER /)"

# --- The attack --------------------------------------------------------------------------
say "$ATTACKER probes $PROBES missing paths"
codes=""
for i in $(seq 1 $PROBES); do
    codes+="$(code_from $ATTACKER "/probe-$i/missing") "
done
echo "answers: $codes"

say "Waiting (at most ${BAN_WAIT_S}s) for the engine's ban to reach Caddy"
start=$SECONDS
banned() { [[ $(code_from $ATTACKER /) == 403 ]]; }
wait_for $BAN_WAIT_S "the ban of $ATTACKER" banned
echo "banned after $((SECONDS - start)) s"
echo "--- curl --interface $ATTACKER http://127.0.0.1:$CADDY_PORT/"
curl -sS -i -m 5 --interface $ATTACKER "http://127.0.0.1:$CADDY_PORT/" | head -n 1 || true
echo "--- curl --interface $NEIGHBOUR http://127.0.0.1:$CADDY_PORT/"
curl -sS -i -m 5 --interface $NEIGHBOUR "http://127.0.0.1:$CADDY_PORT/" | sed -n '1p;$p'
echo
echo "--- cerberus decisions list"
"$CERBERUS" decisions list -c "$DIR/cerberus.yaml"

# --- The unban ---------------------------------------------------------------------------
say "cerberus unban $ATTACKER"
"$CERBERUS" unban $ATTACKER -c "$DIR/cerberus.yaml"
allowed() { [[ $(code_from $ATTACKER /) == 200 ]]; }
wait_for 10 "$ATTACKER to be let in again" allowed
echo "--- curl --interface $ATTACKER http://127.0.0.1:$CADDY_PORT/"
curl -sS -i -m 5 --interface $ATTACKER "http://127.0.0.1:$CADDY_PORT/" | sed -n '1p;$p'
echo

say "Done: the engine banned the prober, Caddy refused it through cerberus, the unban let it in"
