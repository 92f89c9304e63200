#!/usr/bin/env bash
# Builds the Debian package from a binary that is already built.
#
#   scripts/package.sh              release: cargo build --release, then the .deb
#   scripts/package.sh --profile dev   the .deb around the binary the tests built
#                                   (CI: no second compile)
#
# Writes the man page and the shell completions beside the binary (where
# Cargo.toml's [package.metadata.deb] assets name them), then runs
# `cargo deb --no-build`. cargo-deb is installed from crates.io into ~/.cargo
# when missing. Prints the path of the .deb on its last line.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/essops/target}"
PROFILE=release
[ "${1:-}" = "--profile" ] && PROFILE="${2:?--profile needs a name}"
case "$PROFILE" in
    dev) OUT="$CARGO_TARGET_DIR/debug" ;;
    *) OUT="$CARGO_TARGET_DIR/$PROFILE" ;;
esac

log() { echo "package: $*" >&2; }

command -v cargo-deb >/dev/null || {
    log "installing cargo-deb (once; kept in ~/.cargo/bin)"
    cargo install --locked cargo-deb >&2
}
if [ "$PROFILE" = release ]; then
    cargo build --locked --release >&2
fi
[ -x "$OUT/essops" ] || { log "no binary at $OUT/essops; build it first"; exit 1; }

mkdir -p "$OUT/completions"
"$OUT/essops" man | gzip -9n > "$OUT/essops.1.gz"
"$OUT/essops" completions bash > "$OUT/completions/essops.bash"
"$OUT/essops" completions zsh > "$OUT/completions/_essops"
"$OUT/essops" completions fish > "$OUT/completions/essops.fish"

mkdir -p "$CARGO_TARGET_DIR/debian"
cargo deb --no-build --locked --profile "$PROFILE" --output "$CARGO_TARGET_DIR/debian/" >&2
ls -t "$CARGO_TARGET_DIR"/debian/essops_*.deb | head -n 1
