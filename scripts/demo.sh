#!/usr/bin/env bash
# Set up and run essops on the shipped default config: installs and starts the
# services, builds essops, then runs `essops demo` (simulators for the four
# sites, migrate, ingest into both servers with an injected outage and
# unanswered requests, loss, reconcile, loss again, cache warm, one summary).
# Extra arguments go to `essops demo` (e.g. --duration 30s).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/essops/target}"
scripts/services.sh up
cargo build --locked
"$CARGO_TARGET_DIR/debug/essops" demo "$@"
