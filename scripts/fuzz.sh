#!/usr/bin/env bash
# Coverage-guided fuzzing of the parsers that take outside input: Modbus
# answers from devices, register maps and configs from operators, time
# arguments from the command line (targets in fuzz/fuzz_targets/).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     default: 600 s each, every target
#
# Needs a nightly toolchain (`rustup toolchain list`) and cargo-fuzz (installed
# from crates.io into ~/.cargo when missing). Seeds are in fuzz/seeds/; the
# growing corpus and any crash land under fuzz/corpus/ and fuzz/artifacts/
# (git-ignored). A crash makes this script exit 1 and print the input's path:
# fix it, and keep the input as a regression test.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"
SECS="${1:-600}"
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(modbus_answer register_map config window)
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/essops/fuzz-target}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
# Build first, with its output, so a build error is seen as one.
cargo +nightly fuzz build >&2
for t in "${TARGETS[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
    echo "fuzz: $t for $SECS s" >&2
    mkdir -p logs
    # The whole run goes to logs/TARGET.log; the summary lines are shown.
    cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$SECS" \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 >"logs/$t.log" 2>&1 || true
    grep -E "^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::new_units_added|==[0-9]+== ERROR|SUMMARY|Test unit written)" "logs/$t.log" || true
    found="$(find "artifacts/$t" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \))"
    if [ -n "$found" ]; then
        echo "fuzz: $t FAILED; inputs: $found (log: fuzz/logs/$t.log)" >&2
        exit 1
    fi
done
echo "fuzz: no crash in ${TARGETS[*]} ($SECS s each)" >&2
