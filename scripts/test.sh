#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: the cheap source checks
# (scripts/lint.sh), then installs and starts the services
# (scripts/services.sh up), runs every unit and integration test,
# then tests the Debian package built around the binary the tests built
# (scripts/package-test.sh; cargo-deb is installed into ~/.cargo once).
# Cargo's target directory lives outside the clone so a machine that has built
# before only rebuilds what changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/lint.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/essops/target}"
scripts/services.sh up
cargo test --locked "$@"
scripts/package-test.sh
