#!/usr/bin/env bash
# A real CrowdSec Local API (LAPI) for tests, at the version that
# CERBERUS_CROWDSEC_VERSION names: 1.4.6 (the default) is Debian's crowdsec package,
# any other (1.7.8 is the one tested) is built from the Go module proxy by
# scripts/crowdsec-build.sh into <repo>/.cache/crowdsec-VERSION.
#
# Debian's package is only unpacked (apt-get download + dpkg-deb -x), never installed:
# its post-install script would try to reach the Central API. Each LAPI lives in a
# directory of its own (config, sqlite database, credentials, log, pid) and listens
# on 127.0.0.1 only. Run without arguments for the usage.
set -euo pipefail

SCRIPT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd "$(dirname "$SCRIPT")/.." && pwd)"
CS_VERSION="${CERBERUS_CROWDSEC_VERSION:-1.4.6}"
CS_VERSION="${CS_VERSION#v}"
[[ "$CS_VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
    { echo "crowdsec-lapi: CERBERUS_CROWDSEC_VERSION must be like 1.7.8, not '$CS_VERSION'" >&2 && exit 1; }
if [[ "$CS_VERSION" == 1.4.6 ]]; then
    CS_HOME="${CERBERUS_CROWDSEC_HOME:-$REPO_ROOT/.cache/crowdsec}"
else
    CS_HOME="$REPO_ROOT/.cache/crowdsec-$CS_VERSION"
fi
CS_ROOT="$CS_HOME/root"
CROWDSEC="$CS_ROOT/usr/bin/crowdsec"
CSCLI="$CS_ROOT/usr/bin/cscli"
PKG_ETC="$CS_ROOT/etc/crowdsec"

# Names given to the credentials created on the first start of a LAPI.
BOUNCER_NAME="cerberus"
MACHINE_ID="cerberus-tests"

HEALTH_TIMEOUT_S=30
STOP_TIMEOUT_S=10
# Ports are picked below Linux's default ephemeral range (32768-60999), so that an
# outgoing connection cannot take a LAPI's port between a stop and a restart.
PORT_MIN=20000
PORT_MAX=32000

usage() {
    cat <<EOF
usage: $(basename "$0") COMMAND [ARGS]

  install               unpack Debian's crowdsec package into
                        \${CERBERUS_CROWDSEC_HOME:-<repo>/.cache/crowdsec} (or, for
                        another CERBERUS_CROWDSEC_VERSION, build it into
                        <repo>/.cache/crowdsec-VERSION); prints the binaries' paths and
                        CROWDSEC_VERSION
  start DIR [--owner-pid PID] [--port PORT]
                        start a LAPI whose config, database and credentials live in DIR
                        (created on the first start; later starts reuse port, database
                        and credentials); writes DIR/env. With --owner-pid, the LAPI is
                        stopped as soon as process PID is gone. With --port PORT, a new
                        DIR's LAPI listens on PORT (an error when it is taken).
  stop DIR              stop the LAPI of DIR (no error when it is not running)
  status DIR            exit 0 when the LAPI of DIR answers GET /health
  bouncer DIR NAME      add a bouncer NAME and print its new API key
  cscli DIR ARGS...     run cscli against the LAPI of DIR
  env DIR               print DIR/env

DIR/env holds KEY=VALUE lines: LAPI_URL, LAPI_PORT, LAPI_BOUNCER_KEY, LAPI_MACHINE_ID,
LAPI_MACHINE_PASSWORD, LAPI_PID, LAPI_CONFIG, LAPI_LOG, CSCLI, CROWDSEC_VERSION.
EOF
}

die() {
    echo "crowdsec-lapi: $*" >&2
    exit 1
}

log() {
    echo "crowdsec-lapi: $*" >&2
}

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# 32 hex characters from the kernel's random source: safe in a shell, YAML, a URL
# and a Rust string literal.
random_hex() {
    od -An -N16 -tx1 /dev/urandom | tr -d ' \n'
}

# Quotes a string as a single-quoted YAML scalar.
yaml_quote() {
    local s=${1//\'/\'\'}
    printf "'%s'" "$s"
}

installed() {
    [[ -f "$CS_HOME/.installed" && -x "$CROWDSEC" && -x "$CSCLI" && -f "$PKG_ETC/profiles.yaml" ]]
}

# Downloads crowdsec's .deb into the current directory.
download_deb() {
    local opts=()
    # As root, apt hands the download to the unprivileged _apt user, which cannot
    # write into a private temp dir: keep the download as root instead.
    [[ $EUID -eq 0 ]] && opts=(-o APT::Sandbox::User=root)
    if apt-get "${opts[@]}" download crowdsec >download.log 2>&1; then
        return 0
    fi
    log "apt-get download crowdsec failed; running apt-get update once"
    as_root apt-get update >update.log 2>&1 || {
        cat update.log >&2
        die "apt-get update failed"
    }
    apt-get "${opts[@]}" download crowdsec >download.log 2>&1 || {
        cat download.log >&2
        die "apt-get download crowdsec failed"
    }
}

# The runtime needs of the binaries, beyond the package's own files: shared
# libraries (libsqlite3, from the package's Depends).
check_runtime() {
    local bin missing
    for bin in "$CROWDSEC" "$CSCLI"; do
        missing=$(ldd "$bin" 2>/dev/null | awk '/not found/ {print $1}' || true)
        if [[ -n "$missing" ]]; then
            log "$(basename "$bin") misses shared libraries: $missing; installing libsqlite3-0"
            as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y libsqlite3-0 >/dev/null 2>&1 ||
                { as_root apt-get update >/dev/null 2>&1 &&
                    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y libsqlite3-0 >/dev/null; } ||
                die "could not install libsqlite3-0"
        fi
    done
    "$CROWDSEC" -version >/dev/null 2>&1 || die "$CROWDSEC does not run"
    "$CSCLI" version >/dev/null 2>&1 || die "$CSCLI does not run"
}

cmd_install() {
    if [[ "$CS_VERSION" != 1.4.6 ]]; then
        bash "$(dirname "$SCRIPT")/crowdsec-build.sh" "$CS_VERSION" "$CS_HOME" ||
            die "could not build crowdsec $CS_VERSION"
        check_runtime
        echo "CROWDSEC=$CROWDSEC"
        echo "CSCLI=$CSCLI"
        echo "CROWDSEC_VERSION=$CS_VERSION"
        return 0
    fi
    mkdir -p "$CS_HOME"
    # Several test processes may install at the same time.
    exec 9>"$CS_HOME/.lock"
    flock 9
    if ! installed; then
        local work deb
        # Left by an install that failed half way.
        rm -rf "$CS_HOME"/.unpack.*
        work=$(mktemp -d "$CS_HOME/.unpack.XXXXXX")
        (
            cd "$work"
            download_deb
        )
        deb=$(find "$work" -maxdepth 1 -name 'crowdsec_*.deb' -print -quit)
        [[ -n "$deb" ]] || die "apt-get download left no crowdsec_*.deb in $work"
        dpkg-deb -x "$deb" "$work/root"
        rm -rf "$CS_ROOT"
        mv "$work/root" "$CS_ROOT"
        basename "$deb" >"$CS_HOME/.installed"
        rm -rf "$work"
    fi
    check_runtime
    flock -u 9
    echo "CROWDSEC=$CROWDSEC"
    echo "CSCLI=$CSCLI"
    echo "CROWDSEC_VERSION=$CS_VERSION"
}

# Absolute path of a LAPI directory (created when missing).
lapi_dir() {
    [[ -n "${1:-}" ]] || die "missing DIR"
    mkdir -p "$1"
    (cd "$1" && pwd)
}

# Absolute path of the directory of a LAPI that was started once.
existing_lapi_dir() {
    [[ -n "${1:-}" ]] || die "missing DIR"
    [[ -f "$1/config.yaml" ]] || die "no LAPI in $1: run start first"
    (cd "$1" && pwd)
}

port_free() {
    local port=$1
    if command -v python3 >/dev/null 2>&1; then
        python3 - "$port" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)
EOF
    else
        # Nobody answers a connection on it.
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            return 1
        fi
    fi
}

pick_port() {
    local port _
    for _ in $(seq 50); do
        port=$((PORT_MIN + (RANDOM * 32768 + RANDOM) % (PORT_MAX - PORT_MIN)))
        if port_free "$port"; then
            echo "$port"
            return 0
        fi
    done
    die "found no free port in $PORT_MIN-$PORT_MAX"
}

# The database: a sqlite file of the DIR's own, or, when CERBERUS_LAPI_PG_ENV names the
# env file of scripts/postgres.sh, that PostgreSQL database (shared by every LAPI
# started with it, as CrowdSec scales out).
db_config() {
    local dir=$1 pg=${CERBERUS_LAPI_PG_ENV:-}
    if [[ -z "$pg" ]]; then
        echo "  type: sqlite"
        echo "  db_path: $(yaml_quote "$dir/crowdsec.db")"
        echo "  use_wal: true"
        return 0
    fi
    [[ -f "$pg" ]] || die "CERBERUS_LAPI_PG_ENV: no file $pg"
    echo "  type: postgresql"
    echo "  host: $(kv_get "$pg" PG_HOST)"
    echo "  port: $(kv_get "$pg" PG_PORT)"
    echo "  user: $(yaml_quote "$(kv_get "$pg" PG_USER)")"
    echo "  password: $(yaml_quote "$(kv_get "$pg" PG_PASSWORD)")"
    echo "  db_name: $(yaml_quote "$(kv_get "$pg" PG_DB)")"
    echo "  sslmode: disable"
}

write_config() {
    local dir=$1 port=$2 prom_enabled=false prom_port=6060
    # From 1.6 on, `cscli metrics show bouncers` (which shows the usage metrics that
    # bouncers push) refuses to run unless prometheus is on: give it a port of its own.
    if [[ "$CS_VERSION" != 1.4.6 ]]; then
        prom_enabled=true
        prom_port=$(pick_port)
    fi
    mkdir -p "$dir/config/notifications" "$dir/config/acquis.d" "$dir/data" "$dir/hub"
    echo '{}' >"$dir/hub/.index.json"
    cp "$PKG_ETC/profiles.yaml" "$dir/profiles.yaml"
    cp "$PKG_ETC/simulation.yaml" "$dir/config/simulation.yaml"
    # Only the agent (crowdsec without -no-cs) reads the grok patterns; copied so that
    # a test may run one on this config.
    rm -rf "$dir/config/patterns"
    cp -r "$PKG_ETC/patterns" "$dir/config/patterns"
    : >"$dir/config/acquis.yaml"
    cat >"$dir/config.yaml" <<EOF
# Written by scripts/crowdsec-lapi.sh: a LAPI for tests, on loopback only.
common:
  daemonize: false
  log_media: file
  log_level: info
  log_dir: $(yaml_quote "$dir")
  working_dir: .
config_paths:
  config_dir: $(yaml_quote "$dir/config/")
  data_dir: $(yaml_quote "$dir/data/")
  simulation_path: $(yaml_quote "$dir/config/simulation.yaml")
  hub_dir: $(yaml_quote "$dir/hub/")
  index_path: $(yaml_quote "$dir/hub/.index.json")
  notification_dir: $(yaml_quote "$dir/config/notifications/")
  plugin_dir: $(yaml_quote "$CS_ROOT/usr/lib/crowdsec/plugins/")
crowdsec_service:
  acquisition_path: $(yaml_quote "$dir/config/acquis.yaml")
  acquisition_dir: $(yaml_quote "$dir/config/acquis.d")
  parser_routines: 1
cscli:
  output: human
  color: "no"
db_config:
  log_level: info
$(db_config "$dir")
  flush:
    max_items: 5000
    max_age: 7d
api:
  client:
    insecure_skip_verify: false
    credentials_path: $(yaml_quote "$dir/creds.yaml")
  server:
    log_level: info
    listen_uri: 127.0.0.1:$port
    profiles_path: $(yaml_quote "$dir/profiles.yaml")
    trusted_ips:
      - 127.0.0.1
      - ::1
prometheus:
  enabled: $prom_enabled
  level: full
  listen_addr: 127.0.0.1
  listen_port: $prom_port
EOF
    echo "$port" >"$dir/port"
}

# Prints the pid of the LAPI of DIR when it is running, else nothing (exit 1).
running_pid() {
    local dir=$1 pid cmdline
    [[ -f "$dir/crowdsec.pid" ]] || return 1
    pid=$(<"$dir/crowdsec.pid")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    # The pid must still be a crowdsec of this DIR (not a recycled pid).
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ "$cmdline" == *"-c $dir/config.yaml "* ]] || return 1
    echo "$pid"
}

health_ok() {
    local port=$1
    if command -v curl >/dev/null 2>&1; then
        local body
        body=$(curl -fsS -m 2 "http://127.0.0.1:$port/health" 2>/dev/null) || return 1
        [[ "$body" == *'"up"'* ]]
    else
        # shellcheck disable=SC2016 # expanded by the inner shell
        timeout 2 bash -c '
            exec 3<>"/dev/tcp/127.0.0.1/$1"
            printf "GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3
            grep -q "\"up\"" <&3' _ "$port" 2>/dev/null
    fi
}

# Reads KEY from a KEY=VALUE file.
kv_get() {
    local file=$1 key=$2 k v
    [[ -f "$file" ]] || return 1
    while IFS='=' read -r k v; do
        if [[ "$k" == "$key" ]]; then
            echo "$v"
            return 0
        fi
    done <"$file"
    return 1
}

log_tail() {
    local dir=$1
    echo "--- last lines of $dir/crowdsec.log ---" >&2
    tail -n 30 "$dir/crowdsec.log" >&2 2>/dev/null || true
}

# Launches crowdsec in a session of its own; waits for /health. Returns 2 when the
# process died because its port was taken, 1 on any other failure.
launch() {
    local dir=$1 port=$2 pid deadline
    # No stdio of ours: a caller that reads our output until EOF must not wait for
    # the daemon. A background job of a script is no process group leader, so setsid
    # execs crowdsec in place and $! is its pid (and its process group id).
    setsid "$CROWDSEC" -c "$dir/config.yaml" -no-cs -no-capi \
        </dev/null >>"$dir/crowdsec.log" 2>&1 &
    pid=$!
    echo "$pid" >"$dir/crowdsec.pid"
    deadline=$((SECONDS + HEALTH_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        if ! proc_alive "$pid"; then
            rm -f "$dir/crowdsec.pid"
            if grep -q 'address already in use' < <(tail -n 20 "$dir/crowdsec.log"); then
                return 2
            fi
            log "crowdsec exited during start"
            log_tail "$dir"
            return 1
        fi
        # Checked after the pid: the answer must come from our crowdsec, not from some
        # other server that holds the port.
        if health_ok "$port" && proc_alive "$pid"; then
            return 0
        fi
        sleep 0.1
    done
    log "LAPI did not answer GET /health on port $port within ${HEALTH_TIMEOUT_S}s"
    log_tail "$dir"
    stop_pid "$pid"
    rm -f "$dir/crowdsec.pid"
    return 1
}

# Stops the LAPI when process OWNER is gone (the test process that started it).
spawn_watchdog() {
    local dir=$1 pid=$2 owner=$3
    # shellcheck disable=SC2016 # expanded by the inner shell
    setsid bash -c '
        pid=$1 owner=$2 script=$3 dir=$4
        while [[ -d "/proc/$pid" ]] && ! grep -q "^State:.*Z" "/proc/$pid/status" 2>/dev/null; do
            if ! kill -0 "$owner" 2>/dev/null; then
                exec bash "$script" stop "$dir"
            fi
            sleep 1
        done' _ "$pid" "$owner" "$SCRIPT" "$dir" \
        </dev/null >/dev/null 2>&1 &
}

write_env() {
    local dir=$1 port=$2 pid=$3
    local creds="$dir/credentials"
    {
        echo "LAPI_URL=http://127.0.0.1:$port"
        echo "LAPI_PORT=$port"
        echo "LAPI_BOUNCER_KEY=$(kv_get "$creds" LAPI_BOUNCER_KEY)"
        echo "LAPI_MACHINE_ID=$(kv_get "$creds" LAPI_MACHINE_ID)"
        echo "LAPI_MACHINE_PASSWORD=$(kv_get "$creds" LAPI_MACHINE_PASSWORD)"
        echo "LAPI_PID=$pid"
        echo "LAPI_CONFIG=$dir/config.yaml"
        echo "LAPI_LOG=$dir/crowdsec.log"
        echo "CSCLI=$CSCLI"
        echo "CROWDSEC_VERSION=$CS_VERSION"
    } >"$dir/env.tmp"
    mv "$dir/env.tmp" "$dir/env"
}

# The first start of a DIR: one bouncer and one watcher, with known secrets.
create_credentials() {
    local dir=$1 key password suffix=""
    key=$(random_hex)
    password=$(random_hex)
    # LAPIs on one shared database each need names of their own.
    [[ -n "${CERBERUS_LAPI_PG_ENV:-}" ]] && suffix="-$(<"$dir/port")"
    local BOUNCER_NAME="$BOUNCER_NAME$suffix" MACHINE_ID="$MACHINE_ID$suffix"
    "$CSCLI" -c "$dir/config.yaml" --error bouncers add "$BOUNCER_NAME" -k "$key" >/dev/null ||
        die "cscli bouncers add failed"
    "$CSCLI" -c "$dir/config.yaml" --error machines add "$MACHINE_ID" --password "$password" \
        -f "$dir/creds.yaml" --force >/dev/null ||
        die "cscli machines add failed"
    {
        echo "LAPI_BOUNCER_KEY=$key"
        echo "LAPI_MACHINE_ID=$MACHINE_ID"
        echo "LAPI_MACHINE_PASSWORD=$password"
    } >"$dir/credentials.tmp"
    mv "$dir/credentials.tmp" "$dir/credentials"
}

cmd_start() {
    local dir owner="" port pid rc attempt want_port=""
    dir=$(lapi_dir "${1:-}")
    shift
    while (($#)); do
        case $1 in
            --owner-pid)
                owner=${2:?--owner-pid needs a PID}
                shift 2
                ;;
            --port)
                want_port=${2:?--port needs a port number}
                [[ "$want_port" =~ ^[0-9]+$ ]] || die "start: --port $want_port is not a port number"
                shift 2
                ;;
            *) die "start: unknown argument: $1" ;;
        esac
    done
    installed || cmd_install >/dev/null

    if pid=$(running_pid "$dir"); then
        port=$(<"$dir/port")
        health_ok "$port" || die "LAPI of $dir runs (pid $pid) but does not answer /health"
        [[ -f "$dir/credentials" ]] || create_credentials "$dir"
        write_env "$dir" "$port" "$pid"
        cat "$dir/env"
        return 0
    fi

    local fresh=false
    if [[ ! -f "$dir/config.yaml" || ! -f "$dir/port" ]]; then
        fresh=true
        if [[ -n "$want_port" ]]; then
            port_free "$want_port" || die "port $want_port is taken by another process; not starting a LAPI there"
            write_config "$dir" "$want_port"
        else
            write_config "$dir" "$(pick_port)"
        fi
    fi
    port=$(<"$dir/port")

    for attempt in 1 2 3 4 5; do
        rc=0
        launch "$dir" "$port" || rc=$?
        ((rc == 0)) && break
        if ((rc == 2)) && $fresh && [[ -z "$want_port" ]] && ((attempt < 5)); then
            # Someone took the port between the pick and the bind: pick again (only
            # before anyone was told the URL).
            log "port $port was taken; picking another"
            write_config "$dir" "$(pick_port)"
            port=$(<"$dir/port")
            continue
        fi
        ((rc == 2)) && {
            log "port $port is taken by another process"
            log_tail "$dir"
        }
        die "could not start the LAPI of $dir"
    done
    pid=$(<"$dir/crowdsec.pid")

    [[ -f "$dir/credentials" ]] || create_credentials "$dir"
    write_env "$dir" "$port" "$pid"
    [[ -n "$owner" ]] && spawn_watchdog "$dir" "$pid" "$owner"
    cat "$dir/env"
}

# True while PID runs. A zombie (reparented crowdsec waits there until init reaps it)
# counts only while other threads of it are still exiting: until the last one is gone,
# the process keeps its files, and so its listening socket.
proc_alive() {
    local stat tasks
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    [[ -n "$stat" ]] || return 1
    [[ "${stat:0:1}" != Z ]] && return 0
    tasks=("/proc/$1/task/"*)
    ((${#tasks[@]} > 1))
}

# SIGTERM to the process group of PID, SIGKILL after STOP_TIMEOUT_S.
stop_pid() {
    local pid=$1 deadline
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || return 0
    deadline=$((SECONDS + STOP_TIMEOUT_S))
    while proc_alive "$pid"; do
        if ((SECONDS >= deadline)); then
            log "pid $pid still runs ${STOP_TIMEOUT_S}s after SIGTERM; sending SIGKILL"
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
            while proc_alive "$pid"; do
                sleep 0.05
            done
            break
        fi
        sleep 0.05
    done
}

cmd_stop() {
    local dir pid
    [[ -n "${1:-}" ]] || die "missing DIR"
    [[ -d "$1" ]] || return 0
    dir=$(cd "$1" && pwd)
    if pid=$(running_pid "$dir"); then
        stop_pid "$pid"
    fi
    rm -f "$dir/crowdsec.pid"
}

cmd_status() {
    local dir port
    dir=$(existing_lapi_dir "${1:-}")
    running_pid "$dir" >/dev/null || die "not running"
    port=$(<"$dir/port")
    health_ok "$port" || die "running but GET /health does not answer"
    echo "up"
}

cmd_bouncer() {
    local dir name key
    dir=$(existing_lapi_dir "${1:-}")
    name=${2:?usage: bouncer DIR NAME}
    key=$(random_hex)
    "$CSCLI" -c "$dir/config.yaml" --error bouncers add "$name" -k "$key" >/dev/null ||
        die "cscli bouncers add $name failed"
    echo "$key"
}

cmd_cscli() {
    local dir
    dir=$(existing_lapi_dir "${1:-}")
    shift
    exec "$CSCLI" -c "$dir/config.yaml" "$@"
}

main() {
    local cmd=${1:-}
    (($#)) && shift
    case $cmd in
        install) cmd_install ;;
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        bouncer) cmd_bouncer "$@" ;;
        cscli) cmd_cscli "$@" ;;
        env)
            local dir
            dir=$(existing_lapi_dir "${1:-}")
            cat "$dir/env"
            ;;
        -h | --help | help)
            usage
            ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"
