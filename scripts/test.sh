#!/usr/bin/env bash
# The project's one test command: bash scripts/test.sh [--quick]
#
# Works on a fresh Debian 12 machine (as root, or with sudo): installs the system
# packages the tests use when they are missing, unpacks Debian's crowdsec for the
# LAPI-backed tests (scripts/crowdsec-lapi.sh), then runs, stopping at the first
# failure:
#   cargo fmt --check, cargo clippy -D warnings   (skipped with --quick)
#   cargo test --workspace                         (CrowdSec 1.4.6, Debian's)
#   the CrowdSec-backed tests again on CrowdSec 1.7.8 (built from the Go module proxy)
#   gofmt -l, go vet, go test                     (when caddy-module/go.mod exists)
#   schemathesis on docs/admin-api.yaml           (scripts/schemathesis.sh)
#   the web console and captcha in chromium       (scripts/browser-test.sh)
#   the .deb: build and contents, then dpkg -i on this machine (scripts/test-packaging.sh;
#   the install part is skipped where systemd is PID 1)
#   fuzz smoke, bench smoke                        (each fuzz target 5 s, each benchmark
#                                                   once at a small size)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
# One build per run: incremental compilation only costs disk (GBs) and time here.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

# System packages the tests need, as COMMAND:PACKAGE (installed when COMMAND is
# missing). openssl makes the TLS test certificates; caddy (stock Caddy, for the
# forward_auth tests) and wrk (load) are Debian's. systemd-analyze checks the packaged unit.
APT_NEEDS=(curl:curl python3:python3 openssl:openssl caddy:caddy wrk:wrk
    systemd-analyze:systemd)

CS_HOME="${CERBERUS_CROWDSEC_HOME:-$REPO_ROOT/.cache/crowdsec}"
CS_BIN="$CS_HOME/root/usr/bin/crowdsec"
# Today's CrowdSec, built by scripts/crowdsec-build.sh; the tests below run on it too.
CS_MODERN=1.7.8
CS_MODERN_BIN="$REPO_ROOT/.cache/crowdsec-$CS_MODERN/root/usr/bin/crowdsec"
# The test binaries that run a real CrowdSec (LAPI, agent, cscli): run once per version.
# crash_rounds (20 SIGKILLs, minutes) runs on 1.4.6 only: what it tests is the daemon's
# own persistence, the same whatever LAPI's version.
CROWDSEC_TESTS=(admin_lapi cli cli_admin console engine_capi engine_e2e engine_hub engine_mode
    engine_supervisor lapi_harness lapi_sync lapi_watcher module_caddy_e2e serve_caddy_e2e
    usage_metrics multi_node appsec_e2e reconcile)

QUICK=false

usage() {
    cat <<EOF
usage: bash scripts/test.sh [--quick]

  --quick   skip cargo fmt and cargo clippy

Environment: CERBERUS_CROWDSEC_HOME (where crowdsec is unpacked, default
<repo>/.cache/crowdsec), CARGO_TARGET_DIR, and whatever cargo and go read.
EOF
}

while (($#)); do
    case $1 in
        --quick) QUICK=true ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
    shift
done

# Toolchains installed outside Debian's packages (rustup, the Go tarball) may be
# missing from a non-login shell's PATH.
for d in "$HOME/.cargo/bin" /usr/local/go/bin "$HOME/go/bin"; do
    if [[ -d "$d" && ":$PATH:" != *":$d:"* ]]; then
        PATH="$PATH:$d"
    fi
done
export PATH
export DEBIAN_FRONTEND=noninteractive

# --- bookkeeping -----------------------------------------------------------------

SUMMARY=()
TESTS_PASSED=0
TESTS_FAILED=0
TESTS_SKIPPED=0
LOG_DIR="$(mktemp -d "${TMPDIR:-/tmp}/cerberus-test.XXXXXX")"

say() {
    printf '%s\n' "$*"
}

# Stops every crowdsec process started from our unpacked binary (a LAPI left behind
# by a test that was killed or that kept one in a static), matched by the exact path
# in its argv[0].
stop_leftover_lapis() {
    local p argv0 pids=()
    for p in /proc/[0-9]*; do
        argv0=""
        IFS= read -r -d '' argv0 <"$p/cmdline" 2>/dev/null || true
        [[ "$argv0" == "$CS_BIN" || "$argv0" == "$CS_MODERN_BIN" ]] && pids+=("${p#/proc/}")
    done
    ((${#pids[@]})) || return 0
    say "test.sh: stopping ${#pids[@]} leftover crowdsec process(es): ${pids[*]}" >&2
    kill -TERM "${pids[@]}" 2>/dev/null || true
    local _
    for _ in $(seq 50); do
        kill -0 "${pids[@]}" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

on_exit() {
    local rc=$?
    stop_leftover_lapis || true
    rm -rf "$LOG_DIR"
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

print_summary() {
    local line
    say ""
    say "== summary =="
    for line in "${SUMMARY[@]}"; do
        say "  $line"
    done
}

# step NAME COMMAND...: runs one step; on failure, names it and exits.
# (A function run here has errexit off: steps chain their commands with && or return.)
step() {
    local name=$1 start rc=0
    shift
    say ""
    say "==> $name"
    start=$SECONDS
    "$@" || rc=$?
    if ((rc != 0)); then
        SUMMARY+=("FAILED  $name (exit $rc)")
        print_summary
        say ""
        say "test.sh: FAILED at step: $name (exit $rc)"
        exit 1
    fi
    SUMMARY+=("ok      $name ($((SECONDS - start))s)")
}

skip() {
    SUMMARY+=("skipped $1 ($2)")
}

as_root() {
    if [[ $EUID -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        say "need root (or sudo) to run: $*" >&2
        return 1
    fi
}

# --- steps -----------------------------------------------------------------------

apt_install() {
    local log="$LOG_DIR/apt.log"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        >"$log" 2>&1 && return 0
    say "apt-get install failed; running apt-get update once"
    as_root apt-get update -q >"$log" 2>&1 || {
        cat "$log" >&2
        return 1
    }
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" \
        >"$log" 2>&1 || {
        cat "$log" >&2
        return 1
    }
}

system_packages() {
    local spec missing=()
    for spec in "${APT_NEEDS[@]}"; do
        command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
    done
    if ((${#missing[@]} == 0)); then
        say "all present: ${APT_NEEDS[*]%%:*}"
        return 0
    fi
    say "installing: ${missing[*]}"
    apt_install "${missing[@]}"
}

toolchains() {
    command -v cargo >/dev/null 2>&1 || {
        say "cargo not found (install Rust with rustup)" >&2
        return 1
    }
    cargo --version || return 1
    if ! $QUICK; then
        cargo fmt --version || return 1
        cargo clippy --version || return 1
    fi
    if [[ -f caddy-module/go.mod ]]; then
        command -v go >/dev/null 2>&1 || {
            say "go not found, and caddy-module/go.mod exists" >&2
            return 1
        }
        go version || return 1
    fi
}

crowdsec_install() {
    bash scripts/crowdsec-lapi.sh install
}

# Debian's PostgreSQL server, for the shared database of tests/multi_node.rs (the test
# starts its own server in a temporary directory with scripts/postgres.sh).
postgres_install() {
    bash scripts/postgres.sh install
}

# Builds CrowdSec 1.7.8 from the Go module proxy (minutes the first time, then cached).
crowdsec_modern_install() {
    CERBERUS_CROWDSEC_VERSION=$CS_MODERN bash scripts/crowdsec-lapi.sh install &&
        "${CS_MODERN_BIN%/crowdsec}/cscli" version 2>&1 | grep -q "v$CS_MODERN"
}

# Adds up the "test result:" lines of cargo test.
count_cargo_tests() {
    local line n
    while IFS= read -r line; do
        [[ "$line" =~ ([0-9]+)\ passed ]] && n=${BASH_REMATCH[1]} && TESTS_PASSED=$((TESTS_PASSED + n))
        [[ "$line" =~ ([0-9]+)\ failed ]] && n=${BASH_REMATCH[1]} && TESTS_FAILED=$((TESTS_FAILED + n))
        [[ "$line" =~ ([0-9]+)\ ignored ]] && n=${BASH_REMATCH[1]} && TESTS_SKIPPED=$((TESTS_SKIPPED + n))
    done < <(grep -E '^test result: ' "$1" || true)
}

# Adds up the passed and failed counts of the named test binaries in a cargo test log
# (prints "PASSED FAILED").
counts_of_targets() {
    local log=$1
    shift
    awk -v want=" $* " '
        /^     Running tests\// { t = $2; sub("^tests/", "", t); sub("\\.rs$", "", t) }
        /^test result: / && index(want, " " t " ") {
            for (i = 1; i <= NF; i++) {
                if ($(i + 1) ~ /^passed/) p += $i
                if ($(i + 1) ~ /^failed/) f += $i
            }
        }
        END { print p + 0, f + 0 }' "$log"
}

# After a failed cargo test run (log $1; the command in the remaining arguments), runs
# the integration test binaries that failed once more, alone. Tests that start real
# CrowdSec engines, Caddys and daemons on a loaded 2-core machine can miss a wait once;
# a binary that fails again fails the step. Every retry is named in the summary, never
# hidden, and the counts are those of the retry.
retry_failed_targets() {
    local log=$1 retry_log="$1.retry" rc=0 t targets=() args=() counts
    shift
    # Only integration test binaries are retried: a failing unit or doc test fails.
    grep -qE '^[[:space:]]+`--(lib|doc|bin|bench|example)' "$log" && return 1
    # cargo names each failed target as `--test NAME`, or `-p PKG --test NAME` in a
    # workspace run.
    local pkg
    while read -r pkg t; do
        targets+=("$t")
        [[ "$pkg" == - ]] || args+=(-p "$pkg")
        args+=(--test "$t")
    done < <(sed -nE 's/^[[:space:]]+`(-p ([A-Za-z0-9_-]+) )?--test ([A-Za-z0-9_]+)`$/\2 \3/p' "$log" |
        sed -E 's/^ /- /')
    ((${#targets[@]})) || return 1
    say ""
    say "test.sh: retrying once, alone: ${targets[*]}"
    "$@" "${args[@]}" 2>&1 | tee "$retry_log" || rc=$?
    ((rc == 0)) || {
        count_cargo_tests "$retry_log"
        return "$rc"
    }
    read -r p f < <(counts_of_targets "$log" "${targets[@]}")
    TESTS_PASSED=$((TESTS_PASSED - p))
    TESTS_FAILED=$((TESTS_FAILED - f))
    count_cargo_tests "$retry_log"
    counts=$(counts_of_targets "$retry_log" "${targets[@]}")
    SUMMARY+=("flaky   ${targets[*]}: failed once ($f failed), passed when run again alone (${counts% *} passed)")
}

cargo_test() {
    local log="$LOG_DIR/cargo-test.log" rc=0
    cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || rc=$?
    count_cargo_tests "$log"
    ((rc == 0)) || retry_failed_targets "$log" cargo test --no-fail-fast
}

# The CrowdSec-backed test binaries again, against CrowdSec 1.7.8.
cargo_test_modern() {
    local log="$LOG_DIR/cargo-test-$CS_MODERN.log" rc=0 t args=()
    for t in "${CROWDSEC_TESTS[@]}"; do
        args+=(--test "$t")
    done
    CERBERUS_CROWDSEC_VERSION=$CS_MODERN cargo test --no-fail-fast "${args[@]}" 2>&1 |
        tee "$log" || rc=$?
    count_cargo_tests "$log"
    ((rc == 0)) ||
        retry_failed_targets "$log" env CERBERUS_CROWDSEC_VERSION="$CS_MODERN" cargo test --no-fail-fast
}

go_fmt() {
    local out
    out=$(cd caddy-module && gofmt -l .) || return 1
    if [[ -n "$out" ]]; then
        say "these files need gofmt -w:" >&2
        say "$out" >&2
        return 1
    fi
}

go_vet() {
    (cd caddy-module && go vet ./...)
}

# go test -v, showing only the per-package lines unless something fails; counts the
# top-level tests.
go_test() {
    local log="$LOG_DIR/go-test.log" rc=0 n
    (cd caddy-module && go test -v ./...) >"$log" 2>&1 || rc=$?
    if ((rc != 0)); then
        cat "$log"
    else
        grep -E '^(ok|FAIL|\?)[[:space:]]' "$log" || true
    fi
    n=$(grep -c -E '^--- PASS' "$log" || true)
    TESTS_PASSED=$((TESTS_PASSED + n))
    n=$(grep -c -E '^--- FAIL' "$log" || true)
    TESTS_FAILED=$((TESTS_FAILED + n))
    n=$(grep -c -E '^--- SKIP' "$log" || true)
    TESTS_SKIPPED=$((TESTS_SKIPPED + n))
    return "$rc"
}

# docs/admin-api.yaml against a live daemon (--checks all); one counted test.
schemathesis_run() {
    if bash scripts/schemathesis.sh; then
        TESTS_PASSED=$((TESTS_PASSED + 1))
    else
        TESTS_FAILED=$((TESTS_FAILED + 1))
        return 1
    fi
}

# The web console in Debian's chromium (scripts/browser-test.sh installs chromium and
# playwright-core); counts the summary lines of node's test runner.
browser_test() {
    local log="$LOG_DIR/browser-test.log" rc=0 n
    bash scripts/browser-test.sh 2>&1 | tee "$log" || rc=$?
    n=$(sed -nE 's/^(# |ℹ )pass ([0-9]+)$/\2/p' "$log" | tail -1)
    TESTS_PASSED=$((TESTS_PASSED + ${n:-0}))
    n=$(sed -nE 's/^(# |ℹ )fail ([0-9]+)$/\2/p' "$log" | tail -1)
    TESTS_FAILED=$((TESTS_FAILED + ${n:-0}))
    n=$(sed -nE 's/^(# |ℹ )skipped ([0-9]+)$/\2/p' "$log" | tail -1)
    TESTS_SKIPPED=$((TESTS_SKIPPED + ${n:-0}))
    return "$rc"
}

# Every benchmark once at a small size (benches/README.md, "Smoke runs"): the Rust ones
# built in the test profile (on the dependencies cargo test built), the shell ones on a
# few decisions with rounds of a second, on the release build of the packaging step.
bench_smoke() {
    CERBERUS_BENCH_SIZE=1000 cargo test --bench snapshot &&
        cargo test --bench startup -- 2000 &&
        cargo test --bench socket_load -- --decisions 1000 --seconds 0.2 --connections 2 &&
        cargo test --bench admin_unban -- 1000 &&
        cargo test --bench web_decisions -- 1000 &&
        cargo test --bench soak -- 2000 6 &&
        cargo test --bench segments_unban -- 1000 &&
        bash benches/e2e.sh 100 1 &&
        ROUND_SECS=1 ROUNDS=1 bash benches/caddy_compare.sh 100 &&
        SECS=5 bash benches/caddy_profile.sh 100 &&
        bash benches/segments_sharing.sh 1000 &&
        bash benches/appsec.sh 1
}

# The fuzz targets a few seconds each: cargo fuzz (scripts/fuzz.sh, stable toolchain)
# and go test -fuzz on the module's protocol decoder.
fuzz_smoke() {
    bash scripts/fuzz.sh smoke 5 || return 1
    if [[ -f caddy-module/go.mod ]]; then
        local t
        for t in FuzzDecodeRequest FuzzDecodeResponse; do
            (cd caddy-module && go test -run '^$' -fuzz "^$t\$" -fuzztime 5s -parallel 2 .) || return 1
        done
    fi
}

# --- run -------------------------------------------------------------------------

step "system packages" system_packages
step "toolchains" toolchains
step "crowdsec (LAPI for tests)" crowdsec_install
step "crowdsec $CS_MODERN (built from the Go module proxy)" crowdsec_modern_install
step "postgresql (for tests/multi_node.rs)" postgres_install
if $QUICK; then
    skip "cargo fmt" "--quick"
    skip "cargo clippy" "--quick"
else
    step "cargo fmt" cargo fmt --all -- --check
    step "cargo clippy" cargo clippy --workspace --all-targets -- -D warnings
fi
step "cargo test" cargo_test
step "cargo test, CrowdSec-backed tests on crowdsec $CS_MODERN" cargo_test_modern
if [[ -f caddy-module/go.mod ]]; then
    step "gofmt" go_fmt
    step "go vet" go_vet
    step "go test" go_test
else
    skip "go (caddy-module)" "no caddy-module/go.mod"
fi
step "schemathesis (docs/admin-api.yaml)" schemathesis_run
step "browser tests (web console, captcha)" browser_test
step "packaging: .deb contents" bash scripts/test-packaging.sh contents
if [[ -d /run/systemd/system ]]; then
    skip "packaging: install" "systemd runs here; the test would start the real service"
else
    step "packaging: install" as_root bash scripts/test-packaging.sh install
fi
# After packaging: the shell benchmarks run the release daemon that cargo deb built.
step "fuzz smoke (cargo fuzz, go test -fuzz; 5 s per target)" fuzz_smoke
step "bench smoke (every benchmark once, small size)" bench_smoke
print_summary
say ""
say "tests: $TESTS_PASSED passed, $TESTS_FAILED failed, $TESTS_SKIPPED skipped"
