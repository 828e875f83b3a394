#!/usr/bin/env bash
# The Debian package's tests: bash scripts/test-packaging.sh [contents|install|all] [DEB]
#
#   contents  build the .deb (scripts/build-deb.sh, unless DEB is given) and check its
#             file list, conffiles, maintainer scripts and unit; `systemd-analyze
#             verify` must accept the unit without a warning, and `systemd-analyze
#             security --offline=true` must rate it at most MAX_EXPOSURE.
#   install   dpkg -i the .deb on THIS machine (its real root, as root), next to a
#             CrowdSec LAPI on 127.0.0.1:8080 (scripts/crowdsec-lapi.sh, port 8080)
#             with a `cscli` on PATH: the postinst registers a bouncer, the daemon
#             started as the unit starts it serves its socket and admin API and
#             enforces a decision added with cscli; a reinstall keeps the key; purge
#             leaves nothing behind; then again without a working cscli: the install
#             succeeds and says what to run.
#   all       both (the default).
#
# Why the real root and not a debootstrap chroot: this machine has no systemd as PID 1
# either way (the daemon is started here as the unit would start it), and a chroot
# needs a Debian mirror and minutes per run. The install test refuses to run when it
# could clobber anything: a cerberus package, user, /etc/cerberus, /var/lib/cerberus
# or /run/cerberus already there, or port 8080, 8088 or 7420 taken. It purges
# everything it installed on exit, also on failure.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

# The highest `systemd-analyze security` exposure accepted (0 safest, 10 worst).
MAX_EXPOSURE=2.0
# With the engine-mode drop-in (crowdsec runs inside the unit, with more rights).
MAX_EXPOSURE_ENGINE=3.0
UNIT_PATH=lib/systemd/system/cerberus.service
CONF=/etc/cerberus/cerberus.yaml
BANNED_IP=203.0.113.99

say() { printf 'test-packaging: %s\n' "$*"; }
fail() {
    printf 'test-packaging: FAIL: %s\n' "$*" >&2
    exit 1
}

WHAT=${1:-all}
DEB=${2:-}
case $WHAT in
    contents | install | all) ;;
    *)
        echo "usage: bash scripts/test-packaging.sh [contents|install|all] [DEB]" >&2
        exit 2
        ;;
esac

WORK=$(mktemp -d "${TMPDIR:-/tmp}/cerberus-packaging.XXXXXX")
CLEANUPS=()
cleanup() {
    local rc=$? i
    for ((i = ${#CLEANUPS[@]} - 1; i >= 0; i--)); do
        eval "${CLEANUPS[i]}" || true
    done
    rm -rf "$WORK"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

deb() {
    if [[ -z "$DEB" ]]; then
        say "building the .deb (scripts/build-deb.sh)"
        DEB=$(bash scripts/build-deb.sh | tail -n 1)
    fi
    [[ -f "$DEB" ]] || fail "no .deb at $DEB"
}

# --- contents ----------------------------------------------------------------------

expect_line() { # FILE LINE WHAT
    grep -qxF -- "$2" "$1" || fail "$3: no line '$2' in $1"
}

check_file_list() {
    local list=$WORK/files f
    dpkg-deb -c "$DEB" | awk '{print $1, $6}' >"$list"
    for f in ./usr/bin/cerberus ./etc/cerberus/cerberus.yaml ./$UNIT_PATH \
        ./usr/share/doc/cerberus/README.md ./usr/share/doc/cerberus/copyright \
        ./usr/share/doc/cerberus/examples/cerberus.yaml \
        ./usr/share/doc/cerberus/examples/engine-mode.conf \
        ./usr/share/doc/cerberus/examples/Caddyfile \
        ./usr/share/doc/cerberus/examples/Caddyfile.forward_auth; do
        grep -q " $f\$" "$list" || fail "the .deb holds no $f (it holds: $(awk '{print $2}' "$list" | tr '\n' ' '))"
    done
    grep -qE '^-rwxr-xr-x \./usr/bin/cerberus$' "$list" || fail "/usr/bin/cerberus is not mode 0755"
    grep -qE '^-rw-r--r-- \./etc/cerberus/cerberus.yaml$' "$list" || fail "the config is not mode 0644"
    # The key is written by the postinst, never shipped.
    ! grep -q 'api_key$' "$list" || fail "the .deb ships an api_key file"
    say "file list ok ($(wc -l <"$list") entries)"
}

check_control() {
    local ctl=$WORK/control s
    dpkg-deb -e "$DEB" "$ctl"
    [[ "$(cat "$ctl/conffiles")" == "/etc/cerberus/cerberus.yaml" ]] ||
        fail "conffiles should be exactly /etc/cerberus/cerberus.yaml, is: $(cat "$ctl/conffiles")"
    for s in postinst prerm postrm; do
        [[ -x "$ctl/$s" ]] || fail "no executable $s in the .deb"
        sh -n "$ctl/$s" || fail "$s is not valid sh"
    done
    grep -q 'cscli bouncers add' "$ctl/postinst" || fail "the postinst registers no bouncer"
    grep -q 'cscli bouncers delete' "$ctl/postrm" || fail "the postrm deletes no bouncer"
    grep -qE '^Depends:.*adduser' "$ctl/control" || fail "Depends lacks adduser: $(grep ^Depends "$ctl/control")"
    say "conffiles and maintainer scripts ok"
}

# Every key of examples/cerberus.yaml is in the packaged config, set or commented.
check_config_keys() {
    local root=$1 key missing=()
    local packaged=$root/etc/cerberus/cerberus.yaml
    while IFS= read -r key; do
        grep -qE "^[# ]*${key}:" "$packaged" || missing+=("$key")
    done < <(grep -oE '^[# ]*[a-z_]+:' examples/cerberus.yaml | tr -d '# :' | sort -u)
    ((${#missing[@]} == 0)) || fail "the packaged config lacks keys of examples/cerberus.yaml: ${missing[*]}"
    expect_line "$packaged" "api_url: http://127.0.0.1:8080/" "packaged config"
    expect_line "$packaged" "api_key_file: /etc/cerberus/api_key" "packaged config"
    expect_line "$packaged" "data_dir: /var/lib/cerberus" "packaged config"
    expect_line "$packaged" "socket: /run/cerberus/cerberus.sock" "packaged config"
    expect_line "$packaged" 'socket_mode: "0660"' "packaged config"
    say "packaged config ok (every key of examples/cerberus.yaml)"
}

check_unit_text() {
    local unit=$1 line
    for line in Type=notify WatchdogSec=30s User=cerberus Group=cerberus \
        RuntimeDirectory=cerberus RuntimeDirectoryMode=0750 StateDirectory=cerberus \
        ProtectSystem=strict NoNewPrivileges=yes PrivateTmp=yes ProtectHome=yes \
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" SystemCallFilter=@system-service \
        CapabilityBoundingSet= Restart=on-failure \
        "ExecStartPre=/usr/bin/cerberus check -c $CONF" \
        "ExecStart=/usr/bin/cerberus run -c $CONF" WantedBy=multi-user.target; do
        expect_line "$unit" "$line" "the unit"
    done
    say "unit directives ok"
}

# systemd-analyze on the unpacked package, with the host's units for the targets.
check_unit_analyze() {
    local root=$1 out score
    command -v systemd-analyze >/dev/null || fail "no systemd-analyze (Debian's package systemd)"
    out=$(systemd-analyze verify --root="$root" cerberus.service 2>&1) ||
        fail "systemd-analyze verify refused the unit: $out"
    [[ -z "$out" ]] || fail "systemd-analyze verify warned about the unit: $out"
    out=$(systemd-analyze security --offline=true --root="$root" cerberus.service 2>&1) ||
        fail "systemd-analyze security failed: $out"
    score=$(sed -n 's/.*Overall exposure level for cerberus.service: \([0-9.]*\).*/\1/p' <<<"$out")
    [[ -n "$score" ]] || fail "no exposure level in: $out"
    awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }' ||
        fail "systemd-analyze security rates the unit $score, above $MAX_EXPOSURE: $out"
    say "systemd-analyze verify: no complaint; security (offline): exposure $score"
}

contents() {
    deb
    check_file_list
    check_control
    local root=$WORK/root
    mkdir -p "$root/lib/systemd"
    cp -a /lib/systemd/system "$root/lib/systemd/"
    dpkg-deb -x "$DEB" "$root"
    check_config_keys "$root"
    check_unit_text "$root/$UNIT_PATH"
    check_unit_analyze "$root"
    # The engine-mode drop-in, installed as the README says: still accepted.
    local dropin=$root/etc/systemd/system/cerberus.service.d
    mkdir -p "$dropin"
    cp "$root/usr/share/doc/cerberus/examples/engine-mode.conf" "$dropin/"
    MAX_EXPOSURE=$MAX_EXPOSURE_ENGINE check_unit_analyze "$root"
    # The packaged config passes `cerberus check` once the postinst wrote a key (and
    # systemd made /run/cerberus: here, a directory of ours).
    local conf=$WORK/check.yaml
    # 0600, as the postinst writes it: `cerberus check` refuses a key others can read.
    (umask 077 && echo test-key >"$WORK/api_key")
    sed -e "s|^api_key_file: .*|api_key_file: $WORK/api_key|" \
        -e "s|^socket: .*|socket: $WORK/cerberus.sock|" "$root$CONF" >"$conf"
    "$root/usr/bin/cerberus" check -c "$conf" >/dev/null || fail "cerberus check refuses the packaged config"
    sed -i "s|^api_key_file: .*|api_key_file: $WORK/no_api_key|" "$conf"
    ! "$root/usr/bin/cerberus" check -c "$conf" >/dev/null 2>&1 ||
        fail "cerberus check passes without the key file (the unit would start keyless)"
    say "contents: ok"
}

# --- install -----------------------------------------------------------------------

port_taken() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

refuse_if_unsafe() {
    [[ $EUID -eq 0 ]] || fail "the install test needs root (it runs dpkg -i on this machine)"
    [[ -d /run/systemd/system ]] &&
        fail "systemd runs here: the postinst would start the real service; run this test where systemd is not PID 1"
    local p
    for p in /etc/cerberus /var/lib/cerberus /run/cerberus; do
        [[ ! -e $p ]] || fail "$p exists already; not installing over it"
    done
    ! dpkg -s cerberus >/dev/null 2>&1 || fail "a cerberus package is installed already; not touching it"
    ! getent passwd cerberus >/dev/null || fail "a user cerberus exists already; not touching it"
    ! getent group cerberus >/dev/null || fail "a group cerberus exists already; not touching it"
    for p in 8080 8088 7420; do
        ! port_taken "$p" || fail "port $p on 127.0.0.1 is taken by another process (the packaged config needs it); not stopping it"
    done
}

# The CrowdSec LAPI on 127.0.0.1:8080 and a `cscli` wrapper for it on PATH.
start_lapi() {
    LAPI_DIR=$WORK/lapi
    bash scripts/crowdsec-lapi.sh start "$LAPI_DIR" --port 8080 --owner-pid $$ >"$WORK/lapi.env"
    CLEANUPS+=("bash scripts/crowdsec-lapi.sh stop '$LAPI_DIR'")
    # shellcheck disable=SC1091
    source "$WORK/lapi.env"
    [[ "$LAPI_PORT" == 8080 ]] || fail "the LAPI listens on $LAPI_PORT, not 8080"
    mkdir -p "$WORK/bin"
    printf '#!/bin/sh\nexec %q -c %q "$@"\n' "$CSCLI" "$LAPI_CONFIG" >"$WORK/bin/cscli"
    chmod 755 "$WORK/bin/cscli"
}

purge_package() {
    dpkg --purge cerberus >>"$WORK/purge.log" 2>&1
}

# The unit's KEY= value (the first).
unit_value() {
    sed -n "s/^$1=//p" "/$UNIT_PATH" | head -n 1
}

# Runs the unit's ExecStartPre, then ExecStart in the background, as the unit does: its
# user and group, no new privileges, no capabilities, its UMask, /run/cerberus made as
# RuntimeDirectory= makes it, NOTIFY_SOCKET to a listener of ours (Type=notify).
start_as_unit() {
    local user group umask pre start notify=$WORK/notify/sock
    user=$(unit_value User)
    group=$(unit_value Group)
    umask=$(unit_value UMask)
    pre=$(unit_value ExecStartPre)
    start=$(unit_value ExecStart)
    install -d -o "$user" -g "$group" -m "$(unit_value RuntimeDirectoryMode)" /run/cerberus
    install -d -o "$user" -g "$group" -m "$(unit_value StateDirectoryMode)" /var/lib/cerberus
    mkdir -p "$WORK/notify"
    chmod 755 "$WORK" "$WORK/notify"
    python3 - "$notify" "$WORK/notify/ready" <<'EOF' &
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o777)
s.settimeout(60)
while True:
    msg = s.recv(4096).decode()
    if "READY=1" in msg.split("\n"):
        open(sys.argv[2], "w").write(msg)
        break
EOF
    NOTIFY_PID=$!
    CLEANUPS+=("kill $NOTIFY_PID 2>/dev/null")
    local run_as=(setpriv --reuid="$user" --regid="$group" --init-groups --no-new-privs
        --inh-caps=-all --bounding-set=-all)
    for _ in $(seq 50); do [[ -S $notify ]] && break; sleep 0.1; done
    # shellcheck disable=SC2086
    (cd / && umask "$umask" && env -i PATH=/usr/bin:/bin "${run_as[@]}" $pre) ||
        fail "ExecStartPre ($pre) failed"
    # shellcheck disable=SC2086
    (cd / && umask "$umask" && exec env -i PATH=/usr/bin:/bin NOTIFY_SOCKET="$notify" \
        WATCHDOG_USEC=30000000 "${run_as[@]}" $start) >"$WORK/daemon.log" 2>&1 &
    DAEMON_PID=$!
    CLEANUPS+=("kill $DAEMON_PID 2>/dev/null; wait $DAEMON_PID 2>/dev/null")
    local i
    for i in $(seq 600); do
        [[ -s "$WORK/notify/ready" ]] && break
        kill -0 "$DAEMON_PID" 2>/dev/null || fail "the daemon exited before READY=1: $(cat "$WORK/daemon.log")"
        sleep 0.1
    done
    [[ -s "$WORK/notify/ready" ]] || fail "no READY=1 within 60s: $(cat "$WORK/daemon.log")"
    say "started as the unit does ($user:$group); READY=1 with: $(grep STATUS= "$WORK/notify/ready")"
}

check_running_daemon() {
    local sock=/run/cerberus/cerberus.sock stat_line answer i
    [[ -S $sock ]] || fail "no socket $sock"
    stat_line=$(stat -c '%a %U %G' "$sock")
    [[ "$stat_line" == "660 cerberus cerberus" ]] || fail "$sock is '$stat_line', want '660 cerberus cerberus'"
    [[ "$(stat -c '%a %U %G' /run/cerberus)" == "750 cerberus cerberus" ]] || fail "/run/cerberus is $(stat -c '%a %U %G' /run/cerberus)"
    [[ "$(stat -c '%a %U' /etc/cerberus/api_key)" == "600 cerberus" ]] || fail "the key file is $(stat -c '%a %U' /etc/cerberus/api_key)"
    [[ "$(ps -o user= -p "$DAEMON_PID" | tr -d ' ')" == cerberus ]] || fail "the daemon runs as $(ps -o user= -p "$DAEMON_PID")"
    [[ "$(stat -c '%a %U' /var/lib/cerberus/cerberus.db)" == "600 cerberus" ]] ||
        fail "the database is $(stat -c '%a %U' /var/lib/cerberus/cerberus.db) (UMask=0077 wants 600 cerberus)"
    # The admin API, with the token the daemon generated into data_dir.
    cerberus -c "$CONF" status --json >"$WORK/status.json" || fail "cerberus status (admin API) failed"
    grep -q '"mode":"lapi"' "$WORK/status.json" || fail "the admin API's status is not LAPI mode: $(cat "$WORK/status.json")"
    "$WORK/bin/cscli" decisions add --ip "$BANNED_IP" --duration 1h --reason "packaging test" >/dev/null 2>&1 ||
        fail "cscli decisions add failed"
    for i in $(seq 40); do
        answer=$(cerberus -c "$CONF" lookup "$BANNED_IP" 2>&1) || fail "cerberus lookup failed: $answer"
        [[ "$answer" == *'"remediation":"ban"'* ]] && break
        sleep 1
    done
    [[ "$answer" == *'"remediation":"ban"'* ]] || fail "the decision added with cscli is not enforced after 40s: $answer"
    say "the socket door enforces the cscli decision: $answer"
    # Caddy's user reaches the socket through the group cerberus, and only so.
    setpriv --reuid=nobody --regid=cerberus --clear-groups cerberus lookup "$BANNED_IP" --socket "$sock" >/dev/null 2>&1 ||
        fail "a user in the group cerberus cannot ask the socket"
    ! setpriv --reuid=nobody --regid=nogroup --clear-groups cerberus lookup "$BANNED_IP" --socket "$sock" >/dev/null 2>&1 ||
        fail "a user outside the group cerberus can ask the socket"
    "$WORK/bin/cscli" bouncers list -o raw | grep -q "^$BOUNCER," || fail "bouncer $BOUNCER not listed"
}

stop_daemon() {
    kill -TERM "$DAEMON_PID"
    wait "$DAEMON_PID" || fail "the daemon did not exit cleanly on SIGTERM: $(tail -n 20 "$WORK/daemon.log")"
}

check_purged() {
    local what=$1 p
    for p in /etc/cerberus /var/lib/cerberus /run/cerberus /usr/bin/cerberus "/$UNIT_PATH" \
        /etc/systemd/system/multi-user.target.wants/cerberus.service; do
        [[ ! -e $p && ! -L $p ]] || fail "$what: $p is left behind"
    done
    ! getent passwd cerberus >/dev/null || fail "$what: the user cerberus is left behind"
    ! getent group cerberus >/dev/null || fail "$what: the group cerberus is left behind"
    ! dpkg -s cerberus >/dev/null 2>&1 || fail "$what: dpkg still knows the package"
    [[ -z "$(find /var/lib/systemd/deb-systemd-helper-enabled -name '*cerberus*' 2>/dev/null)" ]] ||
        fail "$what: deb-systemd-helper state is left behind"
    say "$what: nothing left (config, state, runtime dir, user, group, unit links)"
}

install_test() {
    deb
    command -v setpriv >/dev/null || fail "no setpriv (util-linux)"
    refuse_if_unsafe
    exec 9>/run/lock/cerberus-packaging-test.lock
    flock -n 9 || fail "another packaging install test runs"
    BOUNCER="cerberus-$(hostname)"
    start_lapi
    CLEANUPS+=("dpkg -s cerberus >/dev/null 2>&1 && purge_package")

    # 1. Next to a local CrowdSec.
    PATH="$WORK/bin:$PATH" dpkg -i "$DEB" >"$WORK/install.log" 2>&1 ||
        fail "dpkg -i failed: $(cat "$WORK/install.log")"
    grep -q "registered bouncer $BOUNCER" "$WORK/install.log" ||
        fail "the postinst did not register $BOUNCER: $(cat "$WORK/install.log")"
    "$WORK/bin/cscli" bouncers list -o raw | grep -q "^$BOUNCER," ||
        fail "cscli bouncers list does not show $BOUNCER"
    runuser -u cerberus -- cerberus check -c "$CONF" >/dev/null || fail "the packaged config fails cerberus check"
    say "installed; postinst registered $BOUNCER; cerberus check passes"
    start_as_unit
    check_running_daemon
    stop_daemon

    # A reinstall (as an upgrade runs the postinst) keeps the key and the registration.
    local key
    key=$(cat /etc/cerberus/api_key)
    PATH="$WORK/bin:$PATH" dpkg -i "$DEB" >"$WORK/reinstall.log" 2>&1 ||
        fail "the reinstall failed: $(cat "$WORK/reinstall.log")"
    [[ "$(cat /etc/cerberus/api_key)" == "$key" ]] || fail "the reinstall replaced the key"
    [[ $("$WORK/bin/cscli" bouncers list -o raw | grep -c "^$BOUNCER,") == 1 ]] ||
        fail "the reinstall registered $BOUNCER again"

    PATH="$WORK/bin:$PATH" purge_package || fail "dpkg --purge failed: $(cat "$WORK/purge.log")"
    check_purged "purge after the install next to CrowdSec"
    ! "$WORK/bin/cscli" bouncers list -o raw | grep -q "^$BOUNCER," ||
        fail "purge left the bouncer $BOUNCER registered"
    say "purge deleted the bouncer registration"

    # 2. Without a working cscli: a cscli that cannot reach any LAPI (shadowing any
    # real one), as on a host whose CrowdSec runs elsewhere.
    mkdir -p "$WORK/nolapi"
    printf '#!/bin/sh\necho "cannot reach the local API" >&2\nexit 1\n' >"$WORK/nolapi/cscli"
    chmod 755 "$WORK/nolapi/cscli"
    PATH="$WORK/nolapi:$PATH" dpkg -i "$DEB" >"$WORK/install2.log" 2>&1 ||
        fail "dpkg -i without CrowdSec failed: $(cat "$WORK/install2.log")"
    if ! grep -q "not started" "$WORK/install2.log" ||
        ! grep -q "cscli bouncers add cerberus-" "$WORK/install2.log"; then
        fail "the postinst without CrowdSec does not say what to run: $(cat "$WORK/install2.log")"
    fi
    [[ ! -e /etc/cerberus/api_key ]] || fail "a key file without a registration"
    ! runuser -u cerberus -- cerberus check -c "$CONF" >/dev/null 2>&1 ||
        fail "cerberus check passes without a key (ExecStartPre would let a keyless daemon start)"
    say "installed without CrowdSec; the postinst says what to run:"
    sed 's/^/  | /' "$WORK/install2.log"
    PATH="$WORK/nolapi:$PATH" purge_package || fail "dpkg --purge failed: $(cat "$WORK/purge.log")"
    check_purged "purge after the install without CrowdSec"
    say "install: ok"
}

case $WHAT in
    contents) contents ;;
    install) install_test ;;
    all)
        contents
        install_test
        ;;
esac
