#!/usr/bin/env bash
# A throwaway PostgreSQL server for tests (the multi-node test's shared CrowdSec
# database): Debian's postgresql package (installed when absent), a data directory of
# its own, 127.0.0.1 and a free port only, run as the unprivileged `postgres` user
# (postgres refuses to run as root, and CI runs as root). Run without arguments for
# the usage.
set -euo pipefail

PORT_MIN=32100
PORT_MAX=32700
START_TIMEOUT_S=30
RUN_AS=postgres

usage() {
    cat <<EOF
usage: $(basename "$0") COMMAND [ARGS]

  install               install Debian's postgresql package when no server is there
                        (apt-get update once, then apt-get install -y postgresql)
  start DIR [--owner-pid PID]
                        initdb in DIR/data (first time), start on 127.0.0.1 and a free
                        port, create database crowdsec owned by user crowdsec; writes
                        DIR/env (PG_HOST, PG_PORT, PG_USER, PG_PASSWORD, PG_DB). With
                        --owner-pid, the server is stopped as soon as process PID is gone.
  stop DIR              stop the server of DIR (no error when it is not running)
EOF
}

die() {
    echo "postgres: $*" >&2
    exit 1
}

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# The newest server's bin directory (/usr/lib/postgresql/N/bin), or nothing.
bindir() {
    local d
    d=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
    [[ -n "$d" && -x "$d/initdb" && -x "$d/pg_ctl" ]] && echo "$d"
}

# Runs a command as the unprivileged user when we are root (postgres refuses root).
as_user() {
    if [[ $EUID -eq 0 ]]; then
        runuser -u "$RUN_AS" -- "$@"
    else
        "$@"
    fi
}

cmd_install() {
    if [[ -z "$(bindir)" ]]; then
        echo "postgres: installing Debian's postgresql package" >&2
        as_root apt-get update >/dev/null 2>&1 || die "apt-get update failed"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql >/dev/null ||
            die "apt-get install postgresql failed"
    fi
    [[ -n "$(bindir)" ]] || die "no initdb/pg_ctl under /usr/lib/postgresql after the install"
    if [[ $EUID -eq 0 ]] && ! id "$RUN_AS" >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_AS" ||
            die "cannot create user $RUN_AS"
    fi
    echo "PG_BIN=$(bindir)"
}

port_free() {
    ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

pick_port() {
    local port _
    for _ in $(seq 50); do
        port=$((PORT_MIN + RANDOM % (PORT_MAX - PORT_MIN)))
        if port_free "$port"; then
            echo "$port"
            return 0
        fi
    done
    die "found no free port in $PORT_MIN-$PORT_MAX"
}

cmd_start() {
    local dir=${1:-} owner=""
    [[ -n "$dir" ]] || die "missing DIR"
    shift
    while (($#)); do
        case $1 in
        --owner-pid) owner=${2:?}; shift 2 ;;
        *) die "unknown option $1" ;;
        esac
    done
    cmd_install >/dev/null
    local bin password port _
    bin=$(bindir)
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    # The user must reach the directory to run the server in it.
    if [[ $EUID -eq 0 ]]; then
        chmod o+x "$dir"
        local up=$dir
        while [[ "$up" != / ]]; do
            up=$(dirname "$up")
            chmod o+x "$up" 2>/dev/null || true
        done
    fi
    if [[ ! -f "$dir/data/PG_VERSION" ]]; then
        password=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
        mkdir -p "$dir/data"
        [[ $EUID -eq 0 ]] && chown "$RUN_AS" "$dir/data"
        echo "$password" >"$dir/pwfile"
        [[ $EUID -eq 0 ]] && chown "$RUN_AS" "$dir/pwfile"
        as_user "$bin/initdb" -D "$dir/data" -U postgres --auth=scram-sha-256 \
            --pwfile="$dir/pwfile" -E UTF8 >"$dir/initdb.log" 2>&1 ||
            { cat "$dir/initdb.log" >&2; die "initdb failed"; }
        rm -f "$dir/pwfile"
        (umask 077 && echo "$password" >"$dir/password")
    fi
    password=$(<"$dir/password")
    for _ in 1 2 3; do
        port=$(pick_port)
        # The socket goes into the data directory, not /var/run/postgresql.
        if as_user "$bin/pg_ctl" -D "$dir/data" -l "$dir/data/server.log" -w -t "$START_TIMEOUT_S" \
            -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/data -c fsync=off" start >/dev/null; then
            break
        fi
        port=""
    done
    [[ -n "$port" ]] || { tail -n 20 "$dir/data/server.log" >&2; die "the server did not start"; }
    export PGPASSWORD=$password
    local psql=("$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 -q -d postgres)
    if ! "${psql[@]}" -tAc "SELECT 1 FROM pg_roles WHERE rolname='crowdsec'" | grep -q 1; then
        if ! "${psql[@]}" -c "CREATE ROLE crowdsec LOGIN PASSWORD '$password'" ||
            ! "${psql[@]}" -c "CREATE DATABASE crowdsec OWNER crowdsec"; then
            die "cannot create the crowdsec role and database"
        fi
    fi
    {
        echo "PG_HOST=127.0.0.1"
        echo "PG_PORT=$port"
        echo "PG_USER=crowdsec"
        echo "PG_PASSWORD=$password"
        echo "PG_DB=crowdsec"
    } >"$dir/env"
    if [[ -n "$owner" ]]; then
        # shellcheck disable=SC2016 # expanded by the inner shell
        setsid bash -c '
            while kill -0 "$1" 2>/dev/null && [[ -f "$3/data/postmaster.pid" ]]; do sleep 1; done
            exec bash "$2" stop "$3"' _ "$owner" "$0" "$dir" </dev/null >/dev/null 2>&1 &
    fi
    cat "$dir/env"
}

cmd_stop() {
    local dir=${1:-}
    [[ -n "$dir" ]] || die "missing DIR"
    [[ -f "$dir/data/postmaster.pid" ]] || return 0
    local bin
    bin=$(bindir) || return 0
    as_user "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 20 stop >/dev/null 2>&1 || true
}

case ${1:-} in
install) cmd_install ;;
start) shift; cmd_start "$@" ;;
stop) shift; cmd_stop "$@" ;;
*) usage; exit 2 ;;
esac
