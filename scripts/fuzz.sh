#!/usr/bin/env bash
# The cargo fuzz targets of fuzz/ (README.md, "Fuzzing"):
#
#   bash scripts/fuzz.sh install             cargo-fuzz (pinned) into .cache/
#   bash scripts/fuzz.sh smoke [SECONDS]     every target SECONDS (default 5) each
#   bash scripts/fuzz.sh run TARGET RUNS     one target for RUNS executions (the
#                                            documented runs: 10000000), with the
#                                            seed corpus of fuzz/seeds/TARGET
#
# Runs on the stable toolchain: cargo fuzz needs nightly only for a sanitizer, and the
# targets are built without one (`-s none`; the code under test is safe Rust, and
# overflow checks and debug assertions are on in fuzz/Cargo.toml's profile). libFuzzer
# itself comes with the libfuzzer-sys crate (built from its C++ source: needs a C++
# compiler, which Debian's build-essential has).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"
export CARGO_INCREMENTAL=0

CARGO_FUZZ_VERSION=0.13.1
CARGO_FUZZ_ROOT="$REPO_ROOT/.cache/cargo-fuzz-$CARGO_FUZZ_VERSION"
TARGETS=(lapi_stream forward_auth config)

install() {
    if [[ -x "$CARGO_FUZZ_ROOT/bin/cargo-fuzz" ]]; then
        return 0
    fi
    cargo install --locked --root "$CARGO_FUZZ_ROOT" cargo-fuzz --version "$CARGO_FUZZ_VERSION"
}

fuzz() {
    PATH="$CARGO_FUZZ_ROOT/bin:$PATH" cargo fuzz "$@"
}

# A fresh corpus dir per target (fuzz/corpus/TARGET, not committed), seeded from
# fuzz/seeds/TARGET (committed).
corpus() {
    local dir="fuzz/corpus/$1"
    mkdir -p "$dir"
    if [[ -d "fuzz/seeds/$1" ]]; then
        cp -n "fuzz/seeds/$1"/* "$dir"/ 2>/dev/null || true
    fi
    printf '%s\n' "$dir"
}

check_target() {
    local t
    for t in "${TARGETS[@]}"; do
        [[ "$t" == "$1" ]] && return 0
    done
    echo "unknown target $1 (targets: ${TARGETS[*]})" >&2
    return 2
}

case ${1:-} in
    install)
        install
        ;;
    smoke)
        secs=${2:-5}
        install
        fuzz build -s none
        for t in "${TARGETS[@]}"; do
            echo "fuzz: $t for ${secs}s"
            fuzz run -s none "$t" "$(corpus "$t")" -- -max_total_time="$secs" -print_final_stats=1 \
                2>&1 | tail -n 14
            test "${PIPESTATUS[0]}" -eq 0
        done
        ;;
    run)
        check_target "${2:?target}"
        runs=${3:?runs}
        install
        fuzz run -s none "$2" "$(corpus "$2")" -- -runs="$runs" -print_final_stats=1
        ;;
    *)
        sed -n '2,14p' "$0" >&2
        exit 2
        ;;
esac
