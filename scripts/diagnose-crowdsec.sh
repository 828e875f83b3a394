#!/usr/bin/env bash
# Why is CrowdSec protection not working? Runs `cerberus diagnose` against the running
# daemon (its admin API), and prints every check with a fix. Exits non-zero when a check
# fails. Arguments go to `cerberus diagnose` (e.g. -c /etc/cerberus/cerberus.yaml,
# --json, --data-dir DIR).
#
# The binary: $CERBERUS, else `cerberus` on PATH, else this checkout's target/ build.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${CERBERUS:-}
if [[ -z $bin ]]; then
    if command -v cerberus >/dev/null 2>&1; then
        bin=$(command -v cerberus)
    elif [[ -x $here/target/release/cerberus ]]; then
        bin=$here/target/release/cerberus
    elif [[ -x $here/target/debug/cerberus ]]; then
        bin=$here/target/debug/cerberus
    else
        echo "diagnose-crowdsec: no cerberus binary (set CERBERUS=/path/to/cerberus, or run cargo build)" >&2
        exit 2
    fi
fi
exec "$bin" diagnose "$@"
