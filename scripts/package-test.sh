#!/usr/bin/env bash
# The Debian package, tested as an operator would use it (run by
# scripts/test.sh after the test suite, against the services it started):
#
# - build the .deb around the binary the tests already built (no second
#   compile), check its contents and conffiles with dpkg-deb, and lintian;
# - verify the systemd units (systemd-analyze) against the unpacked root;
# - unpack it into a temporary root and, from `/`, with an /etc-style config
#   outside the repository: `essops config path` (by --config and by
#   $XDG_CONFIG_HOME), the production walk-through of the README (migrate,
#   check, the ingest unit's ExecStart for a few seconds), rows written, and a
#   bad password file reported in one line per server.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/essops/target}"

say() { echo "package-test: $*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

DEB="$(scripts/package.sh --profile dev | tail -n 1)"
say "built $DEB"

# Contents and conffiles.
contents="$(dpkg-deb -c "$DEB" | awk '{print $6}')"
for f in ./usr/bin/essops ./usr/share/man/man1/essops.1.gz \
         ./usr/share/bash-completion/completions/essops \
         ./usr/share/zsh/vendor-completions/_essops \
         ./usr/share/fish/vendor_completions.d/essops.fish \
         ./etc/essops/sites.toml \
         ./lib/systemd/system/essops-ingest@.service \
         ./lib/systemd/system/essops@.service \
         ./lib/systemd/system/essops-reconcile.timer \
         ./lib/systemd/system/essops-cache-warm.timer \
         ./lib/systemd/system/essops-status.timer \
         ./usr/lib/tmpfiles.d/essops.conf; do
    grep -qxF "$f" <<<"$contents" || fail "$f is not in the package"
done
dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./conffiles | grep -qx /etc/essops/sites.toml \
    || fail "/etc/essops/sites.toml is not a conffile"
dpkg-deb --ctrl-tarfile "$DEB" | tar -xO ./postinst | grep -q "adduser --system" \
    || fail "postinst does not create the essops user"
say "contents and conffiles ok"

if command -v lintian >/dev/null; then
    errors="$(lintian --tag-display-limit 0 "$DEB" 2>/dev/null | grep '^E:' || true)"
    [ -z "$errors" ] || fail "lintian errors:"$'\n'"$errors"
    say "lintian: no errors"
fi

TMP="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$TMP"' EXIT
PKG="$TMP/root"
dpkg-deb -x "$DEB" "$PKG"
ESSOPS="$PKG/usr/bin/essops"

if command -v systemd-analyze >/dev/null; then
    units=("$PKG"/lib/systemd/system/essops*.service "$PKG"/lib/systemd/system/essops*.timer)
    # The units name /usr/bin/essops; verify them with it in place.
    # A bare root has no sysinit.target and no man database; anything else
    # (an unknown key, a bad value, a missing executable) is a failure.
    out="$(systemd-analyze verify --root="$PKG" "${units[@]}" 2>&1 || true)"
    problems="$(grep -vE 'sysinit.target not found|man essops\(1\)' <<<"$out" || true)"
    [ -z "$problems" ] || fail "systemd-analyze verify:"$'\n'"$problems"
    say "systemd units verified"
fi

# An /etc-style config in the unpacked root, for a site of its own.
SITE=pkg_check_site
SECRETS="$PKG/etc/essops/secrets"
mkdir -p "$SECRETS" "$PKG/var/lib/essops" "$PKG/var/log/essops"
# Administration logs in as the dev superuser (admin_url); every other
# command as essops_pkg_runtime, a plain login that migrate --create-roles
# makes a member of essops_writer with the password its file holds.
cp .services/secrets/local.password "$SECRETS/local-admin.password"
cp .services/secrets/gcp.password "$SECRETS/gcp-admin.password"
printf 'pkg-%s\n' "$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')" > "$SECRETS/runtime.password"
chmod 600 "$SECRETS"/*.password
RUNTIME=essops_pkg_runtime
write_config() { # file password_file
    cat > "$1" <<TOML
log_dir = "$PKG/var/log/essops"
spool_dir = "$PKG/var/lib/essops/spool"

[modbus]
timeout_ms = 500
connections = 2

[redis]
url = "redis://127.0.0.1:26379/0"

[servers.local]
url = "postgres://$RUNTIME@127.0.0.1:25432"
password_file = "$2"
admin_url = "postgres://essops@127.0.0.1:25432"
admin_password_file = "$SECRETS/local-admin.password"
sslmode = "disable"

[servers.gcp]
url = "postgres://$RUNTIME@localhost:25433"
password_file = "$2"
admin_url = "postgres://essops@localhost:25433"
admin_password_file = "$SECRETS/gcp-admin.password"
sslmode = "verify-full"
ca_file = "$ROOT/.services/tls/ca.crt"

[[sites]]
name = "$SITE"
modbus = { bms = "127.0.0.1:15091", pcs = "127.0.0.1:15092" }
banks = [{ id = 1, racks = 2 }]
pcs = [1]
TOML
}
CONFIG="$PKG/etc/essops/sites.toml"
write_config "$CONFIG" "secrets/runtime.password"

cd /
# Which file, and why.
"$ESSOPS" --config "$CONFIG" config path | grep -q "named by --config" || fail "config path (--config)"
XDG="$TMP/xdg"
mkdir -p "$XDG/essops"
cp "$CONFIG" "$XDG/essops/sites.toml"
sed -i "s#\"secrets/runtime.password\"#\"$SECRETS/runtime.password\"#" "$XDG/essops/sites.toml"
env -u ESSOPS_CONFIG XDG_CONFIG_HOME="$XDG" "$ESSOPS" config path | grep -q "$XDG/essops/sites.toml" \
    || fail "config path did not find the file under \$XDG_CONFIG_HOME"
say "config path ok (--config and \$XDG_CONFIG_HOME)"

# The README's production walk-through, from /.
"$ESSOPS" --config "$CONFIG" config check >/dev/null || fail "config check"
"$ESSOPS" --config "$CONFIG" migrate --site "$SITE" --create-database --create-roles >/dev/null || fail "migrate"
super="$(cd "$ROOT" && PGPASSWORD="$(cat .services/secrets/local.password)" psql -X -q -t -A \
    -h 127.0.0.1 -p 25432 -U essops -d postgres -c "SELECT rolsuper FROM pg_roles WHERE rolname = '$RUNTIME'")"
[ "$super" = "f" ] || fail "the runtime login $RUNTIME is missing or a superuser ($super)"
say "migrate (as the admin login) made $RUNTIME, a plain login in essops_writer"
"$ESSOPS" --config "$CONFIG" simulate --site "$SITE" >/dev/null 2>&1 &
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/15091) 2>/dev/null && break; sleep 0.1; done
check_passes() { # how the config is found, then essops's arguments
    local how="$1" rc=0
    shift
    "$@" check --site "$SITE" > "$TMP/check.out" || rc=$?
    cat "$TMP/check.out" >&2
    case $rc in 0|10) ;; *) fail "essops check ($how) exited $rc" ;; esac
    if grep -q "^FAIL" "$TMP/check.out"; then fail "essops check ($how) reported a failure"; fi
    say "essops check passed (exit $rc), config $how"
}
check_passes "named by --config" "$ESSOPS" --config "$CONFIG"
check_passes "found through \$XDG_CONFIG_HOME" env -u ESSOPS_CONFIG XDG_CONFIG_HOME="$XDG" "$ESSOPS"

# The ingest unit's ExecStart, with the unpacked binary, for a few seconds.
exec_start="$(sed -n 's/^ExecStart=//p' "$PKG/lib/systemd/system/essops-ingest@.service")"
exec_start="${exec_start//%i/$SITE}"
exec_start="${exec_start//\/usr\/bin\/essops/$ESSOPS}"
exec_start="${exec_start//\/etc\/essops\/sites.toml/$CONFIG}"
rc=0
timeout --preserve-status -s TERM 6 $exec_start >/dev/null 2>&1 || rc=$?
[ "$rc" -eq 0 ] || fail "the ingest unit's ExecStart exited $rc (SIGTERM must give 0)"
rows="$(cd "$ROOT" && PGPASSWORD="$(cat .services/secrets/local.password)" psql -X -q -t -A \
    -h 127.0.0.1 -p 25432 -U essops -d "$SITE" -c 'SELECT count(*) FROM rack')"
[ "$rows" -gt 0 ] || fail "ingest wrote no rack rows"
say "ingest from the unit's ExecStart wrote $rows rack rows"

# Every timer's unit: its ExecStart with the unpacked binary and this config,
# and what systemd makes of its exit code (0 or SuccessExitStatus: the unit
# succeeds; anything else: it fails, for OnFailure= to act on).
UNITS="$PKG/lib/systemd/system"
for timer in "$UNITS"/essops-*.timer; do
    unit="$(sed -n 's/^Unit=//p' "$timer")"
    [ -n "$unit" ] || unit="$(basename "$timer" .timer).service"
    file="$unit" instance=""
    case "$unit" in *@?*.service)
        instance="${unit#*@}" instance="${instance%.service}" file="${unit%%@*}@.service" ;;
    esac
    exec_line="$(sed -n 's/^ExecStart=//p' "$UNITS/$file")"
    success=" 0 $(sed -n 's/^SuccessExitStatus=//p' "$UNITS/$file") "
    exec_line="${exec_line//%i/$instance}"
    exec_line="${exec_line//\/usr\/bin\/essops/$ESSOPS}"
    exec_line="${exec_line//\/etc\/essops\/sites.toml/$CONFIG}"
    exec_line="${exec_line//\/var\/lib\/essops/$PKG/var/lib/essops}"
    rc=0
    $exec_line >"$TMP/unit.out" 2>&1 || rc=$?
    verdict=fails
    [[ "$success" != *" $rc "* ]] || verdict=succeeds
    # The site holds seconds of data, none of yesterday: yesterday's loss is
    # critical (11), and so are its KPIs (no rack was available), which must
    # fail their units; every other step succeeds.
    want=succeeds
    case "$unit" in essops@loss.service|essops@kpi.service) want=fails ;; esac
    [ "$verdict" = "$want" ] \
        || fail "$unit: its ExecStart exited $rc, so the unit $verdict (expected: it $want):"$'\n'"$(cat "$TMP/unit.out")"
    say "$unit (from $(basename "$timer")): exit $rc, the unit $verdict"
done
[ -s "$PKG/var/lib/essops/metrics/essops.prom" ] || fail "the status unit wrote no metrics file"

# One server down: `--quiet loss` is not silent, and exits by the one rule
# (yesterday is critical on the other server: 11 beats 4).
DOWN="$TMP/down.toml"
write_config "$DOWN" "$SECRETS/runtime.password"
sed -i 's#localhost:25433#localhost:1#' "$DOWN"
rc=0
"$ESSOPS" --config "$DOWN" --quiet loss --site "$SITE" >"$TMP/down.out" 2>"$TMP/down.err" || rc=$?
[ "$rc" -eq 11 ] || fail "loss with gcp down exited $rc, not 11:"$'\n'"$(cat "$TMP/down.err")"
grep -q "gcp" "$TMP/down.err" || fail "--quiet loss with gcp down said nothing about gcp:"$'\n'"$(cat "$TMP/down.err")"
[ ! -s "$TMP/down.out" ] || fail "--quiet loss printed a table"
say "--quiet loss with a server down: exit 11, and stderr names it"

# A bad password file: one line per server names it, however many tables.
BAD="$TMP/bad.toml"
write_config "$BAD" "/nonexistent/essops.password"
out="$("$ESSOPS" --config "$BAD" loss --site "$SITE" 2>&1 || true)"
n="$(grep -c "/nonexistent/essops.password" <<<"$out" || true)"
[ "$n" -eq 2 ] || fail "a bad password file was reported in $n lines, not 2 (one per server):"$'\n'"$out"
say "a bad password file is reported in exactly one line per server"
say "all package checks passed"
