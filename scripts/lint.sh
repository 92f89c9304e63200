#!/usr/bin/env bash
# Cheap checks of the source that CI runs before the tests (scripts/test.sh):
#   - formatting (cargo fmt --check);
#   - no `Result<_, String>` in src/: errors are typed (thiserror), so a
#     caller can tell them apart and the message is written once;
#   - the README stays a short front door (at most 250 lines; the docs test
#     checks its links, flags and config examples).
#   scripts/lint.sh --clippy   also clippy on every target, warnings denied
#                              (a full check build: not cheap when cold)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
fail=0

if ! cargo fmt --version >/dev/null 2>&1; then
    # A minimal toolchain profile has no rustfmt; the other checks still run.
    echo "lint: rustfmt is not installed (rustup component add rustfmt); formatting not checked" >&2
elif ! cargo fmt --check >/dev/null 2>&1; then
    echo "lint: the code is not formatted; run cargo fmt" >&2
    cargo fmt --check 2>&1 | head -20 >&2 || true
    fail=1
fi

if grep -rnE 'Result<[^;{]*, *String>' src --include='*.rs'; then
    echo "lint: the lines above return Result<_, String>; give the error a type (thiserror) instead" >&2
    fail=1
fi

lines=$(wc -l < README.md)
if [ "$lines" -gt 250 ]; then
    echo "lint: README.md has $lines lines (at most 250); move detail to docs/" >&2
    fail=1
fi

if [ "${1:-}" = "--clippy" ]; then
    cargo clippy --locked --all-targets --quiet -- -D warnings || fail=1
fi

[ "$fail" = 0 ] && echo "lint: ok" >&2
exit "$fail"
