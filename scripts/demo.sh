#!/usr/bin/env bash
# Set up and run essops on the shipped default config: installs and starts the
# services, builds essops, creates and migrates every site database on both
# servers. Later: the full `essops demo` loop.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/essops/target}"
scripts/services.sh up
cargo build --locked
"$CARGO_TARGET_DIR/debug/essops" migrate --create-database "$@"
