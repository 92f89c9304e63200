#!/usr/bin/env bash
# The whole suite N times in a row (default 5) while `stress --cpu 2` loads
# both cores: what "no flaky test" means here. Prints one line per run and
# exits non-zero if any run failed; each run's output is kept in
# target-dir/stress/runN.log.
#   scripts/stress.sh [N]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/essops/target}"
runs="${1:-5}"
command -v stress >/dev/null || {
    echo "stress: installing Debian's stress" >&2
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y -qq stress >/dev/null; else sudo apt-get install -y -qq stress >/dev/null; fi
}
scripts/services.sh up
cargo test --locked --no-run
logs="$CARGO_TARGET_DIR/stress"
mkdir -p "$logs"
stress --cpu 2 >/dev/null 2>&1 &
load=$!
trap 'kill $load 2>/dev/null || true' EXIT
failed=0
for i in $(seq 1 "$runs"); do
    start=$(date +%s)
    if cargo test --locked --no-fail-fast >"$logs/run$i.log" 2>&1; then result=passed; else result=FAILED; failed=$((failed + 1)); fi
    passed=$(grep -E '^test result' "$logs/run$i.log" | grep -oE '[0-9]+ passed' | awk '{s += $1} END {print s + 0}')
    echo "run $i/$runs: $result, $passed tests passed, $(( $(date +%s) - start )) s$(grep -E '^test .* FAILED$' "$logs/run$i.log" | sed 's/^test / /; s/ \.\.\. FAILED$//' | tr '\n' ' ')"
done
echo "$((runs - failed)) of $runs runs passed under stress --cpu 2"
[ "$failed" -eq 0 ]
