#!/usr/bin/env bash
# Two Caddy processes mapping the same snapshot segments share their pages: each
# one's Rss counts the mapped pages it touched, its Pss only its share of them.
#
#   bash benches/segments_sharing.sh [N]    (N decisions, default 1000000)
#
# Writes a base segment of N decisions with the Rust writer (segment_gen), a `current`
# file whose heartbeat this script keeps fresh (standing in for the daemon's writer:
# SNAPSHOT.md section 8), starts two Caddys (caddy-module/bin/caddy, built by
# scripts/build-caddy.sh) whose module maps that directory, sends each 20000 requests
# from random client IPs (X-Forwarded-For from a trusted loopback proxy), then prints
# Rss, Pss and the file-backed shares from /proc/PID/smaps_rollup. Loopback only;
# stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-1000000}
caddy=caddy-module/bin/caddy
[[ -x $caddy ]] || bash scripts/build-caddy.sh >/dev/null
cargo build -q --release -p bouncer-api --example segment_gen
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
mkdir "$work/snapshot"
target/release/examples/segment_gen "$n" "$work/snapshot/base-00000000000000000001.seg"
python3 - "$work/snapshot/current" <<'PY' &
import struct, sys, time
path = sys.argv[1]
with open(path, "wb") as f:
    f.write(b"\0" * 4096)
deadline = time.time() + 120
while time.time() < deadline:
    with open(path, "r+b") as f:  # in place: same inode, as the daemon's mapped writes
        f.write(b"CERBCURR" + struct.pack("<IIQQQQ", 1, 0, 0, 1, 0, int(time.time())))
    time.sleep(1)
PY
pids+=($!)
sleep 1
ports=()
for i in 1 2; do
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    ports+=("$port")
    cat >"$work/Caddyfile$i" <<CF
{
	admin off
	servers {
		trusted_proxies static 127.0.0.0/8
	}
}
http://:$port {
	bind 127.0.0.1
	cerberus {
		socket $work/none.sock
		snapshot_dir $work/snapshot
	}
	respond "ok"
}
CF
    "$caddy" run --config "$work/Caddyfile$i" --adapter caddyfile >"$work/caddy$i.log" 2>&1 &
    pids+=($!)
done
sleep 2
for port in "${ports[@]}"; do
    python3 - "$port" <<'PY'
import http.client, random, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
codes = {}
for _ in range(20000):
    ip = ".".join(str(random.randrange(256)) for _ in range(4))
    c.request("GET", "/", headers={"X-Forwarded-For": ip})
    r = c.getresponse(); r.read()
    codes[r.status] = codes.get(r.status, 0) + 1
print("port", sys.argv[1], "answers", codes)
PY
done
echo "segment: $(stat -c %s "$work/snapshot/base-00000000000000000001.seg") bytes, $n decisions"
for p in "${pids[@]:1}"; do
    echo "caddy pid $p, whole process: $(grep -E '^(Rss|Pss|Shared_Clean|Private_Clean):' /proc/$p/smaps_rollup | tr -s ' ' | tr '\n' ' ')"
    # The segment's own mapping (its block in /proc/PID/smaps).
    echo "caddy pid $p, segment mapping: $(awk '/base-00000000000000000001.seg/ {m=1; next} /^[0-9a-f]+-[0-9a-f]+ / {m=0} m && /^(Rss|Pss):/ {printf "%s %s kB ", $1, $2}' /proc/$p/smaps)"
done
echo "Caddys that mapped the segments: $(grep -l "looking up in the daemon's mapped snapshot segments" "$work"/caddy*.log | wc -l) of 2"
