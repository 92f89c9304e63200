#!/usr/bin/env bash
# Benchmarks of essops against the real dev services; prints figures and the
# command that reproduces them.
#
#   scripts/bench.sh            every benchmark
#   scripts/bench.sh loss       per-device loss, one site-day and one site-week of
#                               ESS_Operating_Site2 at 1 Hz (bank + rack tables)
#   scripts/bench.sh kpi        battery KPIs of the loss bench's site-day, timed next to
#                               loss of the same site-day (both over every table)
#   scripts/bench.sh lifecycle  on the loss bench's site-week: bytes per rack row and per
#                               index, the week's first rollup and a re-run, a retention
#                               dry run
#   scripts/bench.sh reconcile  one ESS_Operating_Site2 site-day on both servers:
#                               1 % scattered loss per side (5 rounds, each next to
#                               a bare binary-COPY key read of the same data), a
#                               clean re-run, the same over a relay adding 15 ms
#                               each way, a 2-hour outage, and a 30-day window of
#                               a 20-rack site; ratios and peak RSS
#   scripts/bench.sh ingest     one essops ingest polling 2,000 to 12,000 simulated
#                               rack-sized devices at 1 Hz into both servers, and
#                               raw binary COPY rows/s into a hypertable
#                               (SECS=N per size, default 60; SIZES="2000 4000 8000 12000")
#   scripts/bench.sh scale      one ingest of 80,000 devices (1,569 banks of 50 racks, 200
#                               banks per BMS endpoint) for 60 s into both servers: due
#                               polls against answered + missed, and what each server
#                               holds per second (DEVICES=N, SECS=N, CONNECTIONS=N per endpoint,
#                               PIPELINE=N)
#   scripts/bench.sh field      ingest in the field: 200 racks (4 banks of 50) behind one
#                               BMS endpoint with 2 connections, 40 s each (SECS=N):
#                               (a) 2 % of requests unanswered; (b) 5 dead racks;
#                               (b') (b) through a gateway (one shared bus, 2.5 ms a request,
#                               0x0B after 50 ms for a dead rack, 1 % of live requests
#                               failing); prints stored share, per-device missing, p99
#   scripts/bench.sh replay     a 60 s outage of gcp under 2,040 devices (SECS=N), then
#                               ingest again: the spool replays (merged COPYs) while live
#                               polling goes on; replay rows/s next to a raw binary COPY of
#                               the same rows, live p99 poll-to-commit, spool bytes per row
#   scripts/bench.sh replay-link  a spool of 122,400 rows (an outage of 6,120 devices for
#                               20 s) drained over a 1 Mbit/s relay while 204 devices
#                               ingest live over it: time to empty, rows on both servers
#   scripts/bench.sh index      a dashboard workload (pgbench) over the loss bench's
#                               site-week, p50/p95 before and after
#                               `essops index recommend --apply` (SECS=N per phase, default 20)
#   scripts/bench.sh index-stall  a live ingest's longest poll-to-commit delay while
#                               `index recommend` (no HypoPG) and `index create` run
#   scripts/bench.sh cache      cache warm of the four default sites with the last
#                               day of 1 Hz data: full and incremental (cron) runs,
#                               keys/s next to redis-benchmark with pipelining; then
#                               cache-month
#   scripts/bench.sh cache-month  a Site2-sized site with 30 days of 1 Hz data (44 M
#                               rack rows, loaded once): full warm from the rollups,
#                               from raw rows, incremental, a bare count(*), peak RSS
#
# Data lives in its own database (bench_site2 on the local dev server) and is
# loaded once; later runs reuse it. RUNS=N sets the repetitions (default 7).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/essops/target}"
RUNS="${RUNS:-7}"
ESSOPS="$CARGO_TARGET_DIR/debug/essops"

scripts/services.sh up
cargo build --locked --quiet
PSQL=(psql -X -q -t -A -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 25432 -U essops -d bench_site2)
export PGPASSWORD="$(cat .services/secrets/local.password)"

# A timed command as an operator types it: `essops …`, not the build's path.
one_run() {
    local words=("$@")
    words[0]=essops
    echo "${words[*]}"
}

# median, min and max of the wall times (ms) of RUNS runs of a command
timed() {
    local times=() i t0 t1
    for i in $(seq "$RUNS"); do
        t0=$(date +%s%N); "$@" >/dev/null 2>&1 || [ $? -ge 10 ]; t1=$(date +%s%N)
        times+=($(( (t1 - t0) / 1000000 )))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{a[NR]=$1} END {printf "median %d ms, min %d ms, max %d ms (%d runs)", a[int((NR+1)/2)], a[1], a[NR], NR}'
}

# The ratio of two `timed` lines' medians: median_ratio "$a_t" "$b_t" = a / b.
median_ratio() {
    local a b
    a="$(sed 's/median \([0-9]*\) ms.*/\1/' <<<"$1")"
    b="$(sed 's/median \([0-9]*\) ms.*/\1/' <<<"$2")"
    awk -v a="$a" -v b="$b" 'BEGIN {printf "%.2f", a / b}'
}

# One week of ESS_Operating_Site2 in bench_site2 (loaded once), migrated.
site_week() {
    "$ESSOPS" --config bench/loss.toml --quiet migrate --create-database
    # One week (2026-03-02 .. 03-08, Asia/Seoul) of 2 banks and 17 racks at 1 Hz,
    # with 0.5 % of samples missing, scattered (deterministic).
    local want=$(( 7 * 86400 * 17 ))
    local have
    have="$("${PSQL[@]}" -c 'SELECT count(*) FROM rack')"
    if [ "$have" -lt $(( want * 99 / 100 )) ]; then
        echo "loading a site-week of 1 Hz data into bench_site2 (about a minute)..." >&2
        "${PSQL[@]}" <<'SQL'
TRUNCATE rack; TRUNCATE bank;
INSERT INTO rack ("TIMESTAMP","BANK_ID","RACK_ID","SOC","SOH","DC_VOLTAGE","DC_CURRENT","MAX_CELL_VOLTAGE","MIN_CELL_VOLTAGE","MAX_CELL_TEMP","MIN_CELL_TEMP","STATUS")
SELECT t, b, r, 50 + 20*sin(extract(epoch from t)/3600), 98.5, 820 + r, 100*cos(extract(epoch from t)/600), 3.40, 3.35, 31.5, 27.0, 1
  FROM generate_series('2026-03-02 00:00:00+09'::timestamptz, '2026-03-09 00:00:00+09'::timestamptz - interval '1 second', interval '1 second') t,
       (SELECT 1 AS b, generate_series(1,9) AS r UNION ALL SELECT 2, generate_series(1,8)) d
 WHERE (extract(epoch from t)::int8 * 7919 + r * 104729 + b * 31) % 1000 >= 5;
INSERT INTO bank ("TIMESTAMP","BANK_ID","SOC","SOH","DC_VOLTAGE","DC_CURRENT","STATUS")
SELECT t, b, 50, 98.5, 820, 100, 1
  FROM generate_series('2026-03-02 00:00:00+09'::timestamptz, '2026-03-09 00:00:00+09'::timestamptz - interval '1 second', interval '1 second') t, generate_series(1,2) b
 WHERE (extract(epoch from t)::int8 * 7919 + b * 31) % 1000 >= 5;
VACUUM ANALYZE rack; VACUUM ANALYZE bank;
SQL
    fi
}

bench_loss() {
    local cfg=bench/loss.toml
    site_week
    local day_rows week_rows
    day_rows="$("${PSQL[@]}" -c "SELECT (SELECT count(*) FROM rack WHERE \"TIMESTAMP\" >= '2026-03-05 00:00+09' AND \"TIMESTAMP\" < '2026-03-06 00:00+09') + (SELECT count(*) FROM bank WHERE \"TIMESTAMP\" >= '2026-03-05 00:00+09' AND \"TIMESTAMP\" < '2026-03-06 00:00+09')")"
    week_rows="$("${PSQL[@]}" -c 'SELECT (SELECT count(*) FROM rack) + (SELECT count(*) FROM bank)')"
    local day_cmd=("$ESSOPS" --config "$cfg" loss --quiet --date 2026-03-05 --table bank --table rack)
    local week_cmd=("$ESSOPS" --config "$cfg" loss --quiet --from 2026-03-02 --to 2026-03-09 --table bank --table rack)
    echo "loss: ESS_Operating_Site2, 19 devices (2 banks, 17 racks), 1 Hz, 0.5 % scattered loss, dev build"
    echo "  site-day  ($day_rows rows): $(timed "${day_cmd[@]}")"
    echo "  site-week ($week_rows rows): $(timed "${week_cmd[@]}")"
    echo "  reproduce: scripts/bench.sh loss   (one run: $(one_run "${day_cmd[@]}"))"
}

# `essops kpi` next to `essops loss` on the same site-day (every table each),
# alternating so both see the same cache state. As nightly, `essops rollup`
# has run first (its KPI buckets are what kpi reads); its re-roll of the
# day is timed too, and kpi once more with the rollup's mark set back
# before the day, so the day is read from raw rows.
bench_kpi() {
    local cfg=bench/loss.toml
    site_week
    "$ESSOPS" --config "$cfg" --quiet rollup
    local roll_cmd=("$ESSOPS" --config "$cfg" --quiet rollup --date 2026-03-05)
    local loss_cmd=("$ESSOPS" --config "$cfg" loss --quiet --date 2026-03-05)
    local kpi_cmd=("$ESSOPS" --config "$cfg" kpi --quiet --date 2026-03-05)
    local roll_t loss_t kpi_t raw_t marks
    roll_t="$(RUNS=3 timed "${roll_cmd[@]}")"
    loss_t="$(timed "${loss_cmd[@]}")"
    kpi_t="$(timed "${kpi_cmd[@]}")"
    marks="$("${PSQL[@]}" -c "SELECT string_agg(format('(%L, %L)', table_name, rolled_until), ', ') FROM essops.rollup_marks")"
    "${PSQL[@]}" -c "UPDATE essops.rollup_marks SET rolled_until = '2026-03-05 00:00+09'"
    raw_t="$(RUNS=3 timed "${kpi_cmd[@]}")"
    "${PSQL[@]}" -c "UPDATE essops.rollup_marks m SET rolled_until = v.until::timestamptz FROM (VALUES $marks) v(t, until) WHERE m.table_name = v.t"
    echo "kpi: ESS_Operating_Site2 site-day (2 banks, 17 racks at 1 Hz, 0.5 % scattered loss), dev build"
    echo "  rollup of the day (nightly, before kpi; 1m, 1h and KPI buckets): $roll_t"
    echo "  loss: $loss_t"
    echo "  kpi:  $kpi_t"
    echo "  kpi / loss (medians): $(median_ratio "$kpi_t" "$loss_t")"
    echo "  kpi of a day not rolled up yet (read from raw rows): $raw_t"
    echo "  reproduce: scripts/bench.sh kpi   (one run: $(one_run "${kpi_cmd[@]}"))"
    bench_kpi_varied
}

# The same site and day in bench_kpi (loaded once), but with spreads, SoH
# and SOC that vary every second (70 cell-spread and 100 temperature-spread
# values per rack, 0.5 % scattered loss): the histograms are as wide as a
# real day's, and kpi merges them.
bench_kpi_varied() {
    local cfg=bench/kpi.toml
    local psql=("${PSQL[@]/bench_site2/bench_kpi}")
    "$ESSOPS" --config "$cfg" --quiet migrate --create-database
    if [ "$("${psql[@]}" -c 'SELECT count(*) FROM rack')" -lt $(( 86400 * 17 * 99 / 100 )) ]; then
        echo "loading a varied site-day into bench_kpi (about a minute)..." >&2
        "${psql[@]}" <<'SQL'
TRUNCATE rack; TRUNCATE bank;
INSERT INTO rack ("TIMESTAMP","BANK_ID","RACK_ID","SOC","SOH","DC_VOLTAGE","DC_CURRENT","MAX_CELL_VOLTAGE","MIN_CELL_VOLTAGE","MAX_CELL_TEMP","MIN_CELL_TEMP","STATUS")
SELECT t, b, r, 50 + 20*sin(s/3600.0) + ((s * 13 + r) % 9) / 10.0, 97 - r / 10.0 - (s % 7) / 100.0, 820 + r, 100*cos(s/600.0),
       3.33 + 0.001 * ((s * 7919 + r * 104729) % 70), 3.33, 27 + 0.1 * ((s * 31 + r * 17) % 100), 27, 1
  FROM (SELECT t, extract(epoch FROM t - '2026-03-05 00:00:00+09')::int8 AS s
          FROM generate_series('2026-03-05 00:00:00+09'::timestamptz, '2026-03-06 00:00:00+09'::timestamptz - interval '1 second', interval '1 second') t) x,
       (SELECT 1 AS b, generate_series(1,9) AS r UNION ALL SELECT 2, generate_series(1,8)) d
 WHERE (s * 7919 + r * 104729 + b * 31) % 1000 >= 5;
INSERT INTO bank ("TIMESTAMP","BANK_ID","SOC","SOH","DC_VOLTAGE","DC_CURRENT","STATUS")
SELECT t, b, 50, 98.5, 820, 100, 1
  FROM generate_series('2026-03-05 00:00:00+09'::timestamptz, '2026-03-06 00:00:00+09'::timestamptz - interval '1 second', interval '1 second') t, generate_series(1,2) b;
VACUUM ANALYZE rack; VACUUM ANALYZE bank;
SQL
    fi
    "$ESSOPS" --config "$cfg" --quiet rollup
    local roll_cmd=("$ESSOPS" --config "$cfg" --quiet rollup --date 2026-03-05)
    local loss_cmd=("$ESSOPS" --config "$cfg" loss --quiet --date 2026-03-05)
    local kpi_cmd=("$ESSOPS" --config "$cfg" kpi --quiet --date 2026-03-05)
    local roll_t loss_t kpi_t
    roll_t="$(RUNS=3 timed "${roll_cmd[@]}")"
    loss_t="$(timed "${loss_cmd[@]}")"
    kpi_t="$(timed "${kpi_cmd[@]}")"
    echo "kpi, varied day: the same site-day with spreads, SoH and SOC varying every second, dev build"
    echo "  rollup of the day: $roll_t"
    echo "  loss: $loss_t"
    echo "  kpi:  $kpi_t"
    echo "  kpi / loss (medians): $(median_ratio "$kpi_t" "$loss_t")"
    echo "  reproduce: scripts/bench.sh kpi   (one run: $(one_run "${kpi_cmd[@]}"))"
}

# Keeping data on the loss bench's site-week: bytes per rack row and per
# index, the week's first rollup (minute, hour and KPI buckets) and a
# re-run, a retention dry run.
bench_lifecycle() {
    local cfg=bench/lifecycle.toml
    site_week
    "${PSQL[@]}" -c "DELETE FROM essops.rollup_marks; TRUNCATE rack_1m, rack_1h, bank_1m, bank_1h, rack_kpi, bank_kpi, rack_bank_kpi"
    echo "keeping data: ESS_Operating_Site2 (2 banks, 17 racks), one week at 1 Hz, dev build"
    "${PSQL[@]}" -F ' ' <<'SQL' | awk '{printf "  %s: %s rows; per row: table %.1f B, indexes %.1f B, total %.1f B\n", $1, $2, $3/$2, $4/$2, $5/$2}'
SELECT t, (SELECT count(*) FROM rack), d.table_bytes + d.toast_bytes, d.index_bytes, d.total_bytes
  FROM (VALUES ('rack')) v(t), hypertable_detailed_size('rack') d;
SQL
    "${PSQL[@]}" -F ' ' -c "SELECT i.indexname, hypertable_index_size(format('%I', i.indexname)::regclass), (SELECT count(*) FROM rack) FROM pg_indexes i WHERE i.schemaname = 'public' AND i.tablename = 'rack' ORDER BY 1" \
        | awk '{printf "  index %s: %.1f B per rack row\n", $1, $2/$3}'
    local rows t0 t1
    rows="$("${PSQL[@]}" -c 'SELECT (SELECT count(*) FROM rack) + (SELECT count(*) FROM bank)')"
    t0=$(date +%s%N)
    "$ESSOPS" --config "$cfg" --quiet rollup --table rack --table bank >/dev/null
    t1=$(date +%s%N)
    echo "  first rollup of the week ($rows raw rows into 1 m, 1 h and 15-minute KPI buckets): $(( (t1 - t0) / 1000000 )) ms = $(( rows * 1000000000 / (t1 - t0) )) rows/s"
    echo "  rollup re-run (nothing new): $(timed "$ESSOPS" --config "$cfg" --quiet rollup --table rack --table bank)"
    "${PSQL[@]}" -F ' ' -c "SELECT (SELECT hypertable_size('rack_1m')), (SELECT hypertable_size('rack_1h')), (SELECT hypertable_size('rack_kpi')), (SELECT hypertable_size('rack'))" \
        | awk '{printf "  rack_1m %.1f MB, rack_1h %.2f MB, rack_kpi %.2f MB, raw rack %.1f MB for the week\n", $1/1048576, $2/1048576, $3/1048576, $4/1048576}'
    echo "  retention --dry-run (every raw chunk of rack and bank judged): $(timed "$ESSOPS" --config "$cfg" --quiet retention --dry-run --table rack --table bank)"
    echo "  reproduce: scripts/bench.sh lifecycle"
}

# psql against the reconcile bench database ($RDB, default bench_reconcile)
# on one server (local|gcp)
rpsql() {
    local port=25432 srv="$1" args=() sql
    [ "$srv" = gcp ] && port=25433
    shift
    for sql in "$@"; do args+=(-c "$sql"); done
    PGPASSWORD="$(cat ".services/secrets/$srv.password")" psql -X -q -t -A -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U essops -d "${RDB:-bench_reconcile}" "${args[@]}"
}

# wall ms and peak RSS (MiB) of one command: "ms rss"
measured() {
    python3 - "$@" <<'PY'
import resource, subprocess, sys, time
t0 = time.monotonic()
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode
ms = (time.monotonic() - t0) * 1000
assert rc in (0, 10), "exit code %d from %s" % (rc, sys.argv[1:])
print("%d %.0f" % (ms, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024))
PY
}

# The bare floor: a binary COPY of the sorted keys of rack and bank for the
# day, from both servers at once (gcp through port $1); wall ms.
bare_keys() {
    local gcp_port="$1" t0 t1 q w="\"TIMESTAMP\" >= '2026-03-05 00:00+09' AND \"TIMESTAMP\" < '2026-03-06 00:00+09'"
    q="COPY (SELECT \"BANK_ID\", \"RACK_ID\", \"TIMESTAMP\" FROM rack WHERE $w ORDER BY 1, 2, 3) TO STDOUT (FORMAT binary)"
    local qb="COPY (SELECT \"BANK_ID\", \"TIMESTAMP\" FROM bank WHERE $w ORDER BY 1, 2) TO STDOUT (FORMAT binary)"
    t0=$(date +%s%N)
    PGPASSWORD="$(cat .services/secrets/local.password)" psql -X -q -h 127.0.0.1 -p 25432 -U essops -d bench_reconcile -c "$q" -c "$qb" >/dev/null &
    PGPASSWORD="$(cat .services/secrets/gcp.password)" psql -X -q "host=localhost port=$gcp_port user=essops dbname=bench_reconcile sslmode=verify-full sslrootcert=.services/tls/ca.crt" -c "$q" -c "$qb" >/dev/null &
    wait
    t1=$(date +%s%N)
    echo $(( (t1 - t0) / 1000000 ))
}

# 1 % of rack and bank rows deleted, scattered, on each side (different
# seconds per side; $1 picks the pattern so each scenario has fresh loss)
scatter_loss() {
    local srv k
    for srv in local gcp; do
        k=$1; [ "$srv" = gcp ] && k=$(( $1 + 50 ))
        rpsql "$srv" "DELETE FROM rack WHERE (extract(epoch from \"TIMESTAMP\")::int8 * 7919 + \"RACK_ID\" * 104729) % 100 = $k;
                      DELETE FROM bank WHERE (extract(epoch from \"TIMESTAMP\")::int8 * 7919 + \"BANK_ID\") % 100 = $k" "VACUUM rack" "VACUUM bank"
    done
}

# Whole rows of the day, hashed, per server: "identical" or "DIFFER".
full_rows() {
    local l g q="SELECT md5(string_agg(t::text, ',' ORDER BY \"BANK_ID\", \"RACK_ID\", \"TIMESTAMP\")) FROM rack t"
    l="$(rpsql local "$q")"; g="$(rpsql gcp "$q")"
    [ "$l" = "$g" ] && echo identical || echo DIFFER
}

ratio() { python3 -c "print('%.2f' % ($1 / $2))"; }

bench_reconcile() {
    "$ESSOPS" --config bench/reconcile.toml --quiet migrate --create-database
    local day="'2026-03-05 00:00:00+09'::timestamptz"
    local srv
    for srv in local gcp; do
        if [ "$(rpsql "$srv" 'SELECT count(*) FROM rack')" -ne $(( 86400 * 17 )) ]; then
            echo "loading a site-day of 1 Hz data into bench_reconcile on $srv..." >&2
            rpsql "$srv" "TRUNCATE rack; TRUNCATE bank;
              INSERT INTO rack (\"TIMESTAMP\",\"BANK_ID\",\"RACK_ID\",\"SOC\",\"SOH\",\"DC_VOLTAGE\",\"DC_CURRENT\",\"MAX_CELL_VOLTAGE\",\"MIN_CELL_VOLTAGE\",\"MAX_CELL_TEMP\",\"MIN_CELL_TEMP\",\"STATUS\")
              SELECT t, b, r, 50 + 20*sin(extract(epoch from t)/3600), 98.5, 820 + r, 100*cos(extract(epoch from t)/600), 3.40, 3.35, 31.5, 27.0, 1
                FROM generate_series($day, $day + interval '1 day' - interval '1 second', interval '1 second') t,
                     (SELECT 1 AS b, generate_series(1,9) AS r UNION ALL SELECT 2, generate_series(1,8)) d;
              INSERT INTO bank (\"TIMESTAMP\",\"BANK_ID\",\"SOC\",\"SOH\",\"DC_VOLTAGE\",\"DC_CURRENT\",\"STATUS\")
              SELECT t, b, 50, 98.5, 820, 100, 1 FROM generate_series($day, $day + interval '1 day' - interval '1 second', interval '1 second') t, generate_series(1,2) b;
" "VACUUM ANALYZE rack" "VACUUM ANALYZE bank"
        fi
    done
    local run=("$ESSOPS" --config bench/reconcile.toml reconcile --date 2026-03-05 --table rack --table bank)
    "${run[@]}" --quiet >/dev/null 2>&1 || true
    local relay_cfg=.services/bench/reconcile-relay.toml
    mkdir -p .services/bench
    sed 's/localhost:25433/localhost:25533/; s|"\.\./\.services/|"../|' bench/reconcile.toml > "$relay_cfg"
    local relay_pid
    "$ESSOPS" relay --port 25533 --to 127.0.0.1:25433 --delay 15ms & relay_pid=$!
    trap 'kill $relay_pid 2>/dev/null' RETURN
    echo "reconcile: ESS_Operating_Site2 site-day (17 racks, 2 banks), dev build, $(( 86400 * 19 )) rows per server; 1 % scattered loss on each side; 5 rounds, each timed next to its own bare read"
    local bare diffed first clean slow bare_slow i rounds=()
    for i in 1 2 3 4 5; do
        scatter_loss $(( i * 7 ))
        bare=$(bare_keys 25433)
        diffed=$(measured "${run[@]}" --dry-run)
        first=$(measured "${run[@]}")
        clean=$(measured "${run[@]}")
        rounds+=("$bare ${first% *} ${first#* } ${clean% *} ${clean#* } $(full_rows) ${diffed% *}")
    done
    printf '%s\n' "${rounds[@]}" | python3 -c '
import statistics, sys
r = [l.split() for l in sys.stdin if l.strip()]
bare = [int(x[0]) for x in r]
f = [int(x[1]) / int(x[0]) for x in r]
c = [int(x[3]) / int(x[0]) for x in r]
d = [int(x[6]) / int(x[0]) for x in r]
print("  bare key read (binary COPY of the sorted keys of rack + bank, both servers at once): median %d ms (%s)" % (statistics.median(bare), ", ".join(map(str, bare))))
print("  the diff alone (--dry-run: probe, key streams, merge; nothing written): median %d ms, %.2fx (%s)" % (
    statistics.median(int(x[6]) for x in r), statistics.median(d), ", ".join("%.2f" % v for v in d)))
print("  first reconcile: median %d ms, %.2fx its bare read (%s); peak RSS %s MiB; rows afterwards: %s" % (
    statistics.median(int(x[1]) for x in r), statistics.median(f), ", ".join("%.2f" % v for v in f), max(int(x[2]) for x in r), ", ".join(x[5] for x in r)))
print("  clean re-run:    median %d ms, %.2fx (%s); peak RSS %s MiB" % (
    statistics.median(int(x[3]) for x in r), statistics.median(c), ", ".join("%.2f" % v for v in c), max(int(x[4]) for x in r)))'
    # the loopback floor for the slow-link target: the rounds' median
    bare=$(printf '%s\n' "${rounds[@]}" | awk '{print $1}' | sort -n | sed -n 3p)
    bare_slow=$(bare_keys 25533)
    scatter_loss 25
    slow=$(measured "$ESSOPS" --config "$relay_cfg" reconcile --date 2026-03-05 --table rack --table bank)
    echo "  over a relay adding 15 ms each way (30 ms round trip) to gcp: bare key read $bare_slow ms; first reconcile ${slow% *} ms (target: 1.6 x loopback bare + 1 s = $(( bare * 16 / 10 + 1000 )) ms), peak RSS ${slow#* } MiB; rows afterwards: $(full_rows)"
    rpsql gcp "DELETE FROM rack WHERE \"TIMESTAMP\" >= '2026-03-05 10:00+09' AND \"TIMESTAMP\" < '2026-03-05 12:00+09';
               DELETE FROM bank WHERE \"TIMESTAMP\" >= '2026-03-05 10:00+09' AND \"TIMESTAMP\" < '2026-03-05 12:00+09'" "VACUUM rack" "VACUUM bank"
    local outage
    outage=$(measured "${run[@]}")
    echo "  2-hour outage on gcp (hashes route, 136,800 rows to gcp): ${outage% *} ms ($(ratio "${outage% *}" "$bare")x), peak RSS ${outage#* } MiB; rows afterwards: $(full_rows)"
    bench_reconcile_month
    echo "  reproduce: scripts/bench.sh reconcile"
}

# A 30-day window of a 20-rack site (2 banks of 10; one sample per 10 s, so
# it loads in minutes) with 1 % scattered loss on each side: peak RSS.
bench_reconcile_month() {
    local cfg=bench/reconcile30.toml srv want=$(( 30 * 8640 * 20 ))
    "$ESSOPS" --config "$cfg" --quiet migrate --create-database
    for srv in local gcp; do
        if [ "$(RDB=bench_reconcile30 rpsql "$srv" 'SELECT count(*) FROM rack')" -lt $(( want * 98 / 100 )) ]; then
            echo "loading 30 days of a 20-rack site into bench_reconcile30 on $srv (a few minutes)..." >&2
            RDB=bench_reconcile30 rpsql "$srv" "TRUNCATE rack; TRUNCATE bank;
              INSERT INTO rack (\"TIMESTAMP\",\"BANK_ID\",\"RACK_ID\",\"SOC\",\"SOH\",\"DC_VOLTAGE\",\"STATUS\")
              SELECT t, b, r, 50 + 20*sin(extract(epoch from t)/3600), 98.5, 820 + r, 1
                FROM generate_series('2026-02-01 00:00:00+09'::timestamptz, '2026-03-03 00:00:00+09'::timestamptz - interval '10 seconds', interval '10 seconds') t,
                     generate_series(1, 2) b, generate_series(1, 10) r;
              INSERT INTO bank (\"TIMESTAMP\",\"BANK_ID\",\"SOC\",\"STATUS\")
              SELECT t, b, 50, 1 FROM generate_series('2026-02-01 00:00:00+09'::timestamptz, '2026-03-03 00:00:00+09'::timestamptz - interval '10 seconds', interval '10 seconds') t, generate_series(1, 2) b;" \
              "VACUUM ANALYZE rack" "VACUUM ANALYZE bank"
        fi
        local k=0; [ "$srv" = gcp ] && k=50
        RDB=bench_reconcile30 rpsql "$srv" "DELETE FROM rack WHERE (extract(epoch from \"TIMESTAMP\")::int8 / 10 * 7919 + \"RACK_ID\" * 104729) % 100 = $k" "VACUUM rack"
    done
    local run=("$ESSOPS" --config "$cfg" reconcile --from 2026-02-01 --to 2026-03-03 --table rack --table bank)
    local first clean
    first=$(measured "${run[@]}")
    clean=$(measured "${run[@]}")
    echo "  30-day window, 20 racks (one sample per 10 s, $(( want )) rack rows per server), 1 % scattered loss each side: first ${first% *} ms, peak RSS ${first#* } MiB; clean re-run ${clean% *} ms, peak RSS ${clean#* } MiB"
}

# The dev servers as a bench config (in .services/bench/) names them; gcp on port $1.
bench_servers() {
    cat <<TOML
[servers.local]
url = "postgres://essops@127.0.0.1:25432"
password_file = "../secrets/local.password"
sslmode = "disable"
[servers.gcp]
url = "postgres://essops@localhost:$1"
password_file = "../secrets/gcp.password"
sslmode = "verify-full"
ca_file = "../tls/ca.crt"
TOML
}

# A bench site's config in .services/bench/$1: spool folder $2, the
# [modbus] settings $3 (lines), gcp at port $4, site $5 in database $6, its
# banks $7 and its endpoints $8 (the inside of `modbus = { … }`).
bench_site() {
    local dir="$ROOT/.services/bench"
    mkdir -p "$dir"
    cat > "$dir/$1" <<TOML
log_dir = "logs"
spool_dir = "$2"
[modbus]
register_map = "../../bench/ingest-map.toml"
$3
$(bench_servers "$4")
[[sites]]
name = "$5"
database = "$6"
banks = [$7]
modbus = { $8 }
TOML
    echo "$dir/$1"
}

# A config for one ingest bench site: RACKS racks (50 per bank, each bank
# its own Modbus unit) plus their banks, on both dev servers.
ingest_config() {
    local racks="$1" i list=""
    for i in $(seq $(( racks / 50 ))); do list+="{ id = $i, racks = 50 }, "; done
    bench_site ingest.toml spool $'timeout_ms = 500\nconnections = 128' 25433 BenchIngest bench_ingest \
        "${list%, }" 'bms = "127.0.0.1:15901", pcs = "127.0.0.1:15902"'
}

# One `essops ingest --json` of site $2 (config $1) for $3 seconds: its due,
# answered and missed polls, each server's rows and delays, essops's CPU.
ingest_figures() {
    python3 - "$ESSOPS" "$1" "$2" "$3" <<'PY'
import json, resource, subprocess, sys, time
essops, cfg, site, secs = sys.argv[1:5]
t0 = time.time()
p = subprocess.run([essops, "--config", cfg, "--json", "ingest", "--site", site, "--duration", secs + "s"],
                   capture_output=True, text=True)
wall = time.time() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
rows = [json.loads(l) for l in p.stdout.splitlines() if '"server"' in l]
assert rows, p.stderr[-2000:]
r = rows[0]
m = {k: v for k, v in r["missed"].items() if v}
print("  %d devices, exit %d: %d polls due = %d answered (%.2f %%) + %d missed %s%s" % (
    r["devices"], p.returncode, r["polls_due"], r["polls_ok"], 100.0 * r["polls_ok"] / max(r["polls_due"], 1),
    r["polls_failed"], m or "{}",
    "" if r["polls_ok"] + r["polls_failed"] == r["polls_due"] else "  MISMATCH"))
for x in rows:
    print("    %s: written %d, spooled %d, lost %d, p50/p99/max poll-to-commit %s/%s/%s ms" % (
        x["server"], x["rows_written"], x["rows_spooled"], x["rows_lost"],
        x["delay_p50_ms"], x["delay_p99_ms"], x["delay_max_ms"]))
print("    essops CPU %.1f s in %.0f s (%.0f %% of one core)" % (
    ru.ru_utime + ru.ru_stime, wall, 100.0 * (ru.ru_utime + ru.ru_stime) / wall))
PY
}

bench_ingest() {
    local secs="${SECS:-60}" sizes="${SIZES:-2000 4000 8000 12000}" racks cfg sim srv
    echo "ingest: one essops ingest (dev build) polling simulated racks + banks at 1 Hz over Modbus TCP into local and gcp, simulator on the same 2 cores, ${secs} s per size"
    for racks in $sizes; do
        cfg="$(ingest_config "$racks")"
        "$ESSOPS" --config "$cfg" --quiet migrate --create-database
        for srv in local gcp; do ipsql "$srv" "TRUNCATE rack; TRUNCATE bank"; done
        "$ESSOPS" --config "$cfg" --quiet simulate --site BenchIngest --duration "$(( secs + 20 ))s" &
        sim=$!
        sleep 2
        ingest_figures "$cfg" BenchIngest "$secs"
        for srv in local gcp; do
            echo "         stored on $srv: $(ipsql "$srv" "SELECT round(100.0 * count(*) / ($racks * (extract(epoch FROM max(\"TIMESTAMP\") - min(\"TIMESTAMP\")) + 1)), 3) || ' % of the rack samples in its window' FROM rack")"
        done
        kill "$sim" 2>/dev/null; wait "$sim" 2>/dev/null || true
    done
    # Raw binary COPY into a hypertable with its unique natural key, for scale.
    echo "  raw binary COPY into a rack hypertable (unique key, local): $(raw_copy_rate local bench_ingest)"
    echo "  reproduce: scripts/bench.sh ingest   (SECS=$secs SIZES=\"$sizes\")"
}

# A site of DEVICES devices (about; 50 racks and their bank per bank), every
# 200 banks behind their own BMS endpoint (one port each, a unit per bank).
scale_config() {
    local banks b e ports="" list=""
    banks=$(( ($1 + 50) / 51 ))
    for b in $(seq "$banks"); do
        e=$(( (b - 1) / 200 + 1 ))
        list+="{ id = $b, racks = 50, endpoint = \"bms$e\", unit = $(( (b - 1) % 200 + 1 )) }, "
    done
    for e in $(seq $(( (banks - 1) / 200 + 1 ))); do ports+="bms$e = \"127.0.0.1:$(( 15920 + e ))\", "; done
    bench_site scale.toml spool-scale $'timeout_ms = 500\nconnections = '"${CONNECTIONS:-4}"$'\npipeline = '"${PIPELINE:-64}" \
        25433 BenchScale bench_scale "${list%, }" "${ports}pcs = \"127.0.0.1:15920\""
}

# One ingest of DEVICES (default 80,000) devices for SECS (default 60) into
# both servers: every due poll must end stored or missed with a reason, and
# what each server holds per second is set against what ingest counted.
bench_scale() {
    local devices="${DEVICES:-80000}" secs="${SECS:-60}" cfg sim srv
    cfg="$(scale_config "$devices")"
    "$ESSOPS" --config "$cfg" --quiet migrate --create-database
    for srv in local gcp; do dbpsql "$srv" bench_scale "TRUNCATE rack; TRUNCATE bank; TRUNCATE pcs"; done
    rm -rf "$ROOT/.services/bench/spool-scale"
    "$ESSOPS" --config "$cfg" --quiet simulate --site BenchScale --duration "$(( secs + 40 ))s" &
    sim=$!
    sleep 5
    echo "scale: one essops ingest (dev build) of BenchScale for ${secs} s into local and gcp, simulator and both servers on the same 2 cores"
    ingest_figures "$cfg" BenchScale "$secs"
    for srv in local gcp; do
        echo "    $srv holds: $(dbpsql "$srv" bench_scale "
            WITH s AS (SELECT \"TIMESTAMP\" t, count(*) n FROM (SELECT \"TIMESTAMP\" FROM rack UNION ALL SELECT \"TIMESTAMP\" FROM bank UNION ALL SELECT \"TIMESTAMP\" FROM pcs) x GROUP BY 1)
            SELECT sum(n) || ' rows over ' || count(*) || ' seconds; per second min ' || min(n) || ', max ' || max(n)
                   || '; seconds short of the fullest: ' || count(*) FILTER (WHERE n < (SELECT max(n) FROM s))
              FROM s")"
    done
    kill "$sim" 2>/dev/null; wait "$sim" 2>/dev/null || true
    echo "  reproduce: scripts/bench.sh scale   (DEVICES=$devices SECS=$secs)"
}

# The field bench's config: 200 racks in 4 banks of 50 behind one BMS
# endpoint (each bank its own unit, as behind a gateway), 2 connections.
field_config() {
    bench_site field.toml spool-field $'timeout_ms = 500\nconnections = 2' 25433 BenchField bench_field \
        "{ id = 1, racks = 50 }, { id = 2, racks = 50 }, { id = 3, racks = 50 }, { id = 4, racks = 50 }" \
        'bms = "127.0.0.1:15911", pcs = "127.0.0.1:15912"'
}

# One field scenario: $1 = label, the rest = essops simulate flags.
field_scenario() {
    local label="$1" secs="${SECS:-40}" cfg sim
    shift
    cfg="$(field_config)"
    for srv in local gcp; do fpsql "$srv" "TRUNCATE rack; TRUNCATE bank; TRUNCATE pcs; TRUNCATE etc"; done
    rm -rf "$ROOT/.services/bench/spool-field"
    "$ESSOPS" --config "$cfg" --json simulate --site BenchField --duration "$(( secs + 30 ))s" "$@" > "$ROOT/.services/bench/field-sim.json" 2>/dev/null &
    sim=$!
    sleep 2
    python3 - "$ESSOPS" "$cfg" "$secs" "$label" "$*" "$sim" <<'PY'
import json, math, os, signal, subprocess, sys, time
essops, cfg, secs, label, flags, sim = sys.argv[1:7]
t0 = time.time()
p = subprocess.run([essops, "--config", cfg, "--json", "ingest", "--site", "BenchField", "--duration", secs + "s"],
                   capture_output=True, text=True)
t1 = time.time()
assert p.returncode in (0, 10, 11), p.stderr
rows = [json.loads(l) for l in p.stdout.splitlines()]
first, last = math.ceil(t0) + 1, math.floor(t1) - 1   # whole grid seconds inside the run
dead = set()
for f in flags.split("--dead")[1:]:
    spec = f.split()[0].split(":")[1]
    a, b = spec.split("-") if "-" in spec else (spec, spec)
    (ba, ra), (bb, rb) = map(int, a.split(".")), map(int, b.split("."))
    dead |= {(ba, r) for r in range(ra, rb + 1)}
env = dict(os.environ, PGPASSWORD=open(".services/secrets/local.password").read().strip())
q = ('SELECT "BANK_ID", "RACK_ID", count(*) FROM rack WHERE "TIMESTAMP" >= to_timestamp(%d) AND "TIMESTAMP" <= to_timestamp(%d) GROUP BY 1, 2' % (first, last))
out = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-F", " ", "-h", "127.0.0.1", "-p", "25432", "-U", "essops", "-d", "bench_field", "-c", q],
                     capture_output=True, text=True, env=env, check=True).stdout
have = {(int(b), int(r)): int(n) for b, r, n in (l.split() for l in out.split("\n") if l.strip())}
grid = last - first + 1
live = [(b, r) for b in range(1, 5) for r in range(1, 51) if (b, r) not in dead]
missing = sorted(grid - have.get(d, 0) for d in live)
stored = sum(have.get(d, 0) for d in live)
r = rows[0]
print("  (%s) %s" % (label, flags))
print("      live racks stored: %.2f %% of %d grid samples (%d racks x %d s); per-rack missing: min %d, median %d, max %d; racks with no sample: %d" % (
    100.0 * stored / (len(live) * grid), len(live) * grid, len(live), grid, missing[0], missing[len(missing) // 2], missing[-1],
    sum(1 for d in live if have.get(d, 0) == 0)))
print("      missed polls (all devices): %s; breaker openings %d; p99 poll-to-commit %s" % (
    json.dumps(r["missed"]), r["breaker_openings"], ", ".join("%s %s ms" % (x["server"], x["delay_p99_ms"]) for x in rows)))
os.kill(int(sim), signal.SIGTERM)
for _ in range(50):
    try:
        os.kill(int(sim), 0)
        time.sleep(0.1)
    except OSError:
        break
for l in open(".services/bench/field-sim.json"):
    e = json.loads(l)
    if "bms" in e["endpoints"]:
        print("      the simulator answered %.2f %% of the BMS requests it got (%d dropped, %d exceptions)" % (
            100.0 * e["answered"] / max(e["requests"], 1), e["dropped"], e["exceptions"]))
    if e.get("bus_busy_ms") is not None and "bms" in e["endpoints"]:
        print("      gateway bus busy %.0f %% of the ingest's %s s (%d ms held)" % (e["bus_busy_ms"] / 10.0 / (t1 - t0), secs, e["bus_busy_ms"]))
PY
    kill "$sim" 2>/dev/null || true
    wait "$sim" 2>/dev/null || true
}

bench_field() {
    local cfg
    cfg="$(field_config)"
    "$ESSOPS" --config "$cfg" --quiet migrate --create-database
    echo "field: 200 racks + 4 banks behind one BMS endpoint, 2 connections, timeout_ms 500, ${SECS:-40} s each, into local and gcp"
    field_scenario a --drop-rate 0.02
    field_scenario b --dead rack:1.1-1.5
    field_scenario "b'" --gateway --gateway-connections 2 --bus-time 2500us --gateway-timeout 50ms --drop-rate 0.01 --dead rack:1.1-1.5
    echo "  reproduce: scripts/bench.sh field   (SECS=${SECS:-40}); the 12k-device run: SIZES=12000 scripts/bench.sh ingest"
}


# The replay bench's config: 2,040 devices; gcp on port $1 (a closed port: down).
replay_config() {
    bench_site "replay-$1.toml" spool-replay $'timeout_ms = 500\nconnections = 32' "$1" BenchReplay bench_replay \
        "$(for i in $(seq 40); do printf '{ id = %d, racks = 50 }, ' "$i"; done | sed 's/, $//')" \
        'bms = "127.0.0.1:15921", pcs = "127.0.0.1:15922"'
}

bench_replay() {
    local secs="${SECS:-60}" cfg sim
    cfg="$(replay_config 25433)"
    "$ESSOPS" --config "$cfg" --quiet migrate --create-database
    for srv in local gcp; do rpl_psql "$srv" "TRUNCATE rack; TRUNCATE bank; TRUNCATE pcs; TRUNCATE etc"; done
    rm -rf "$ROOT/.services/bench/spool-replay"
    "$ESSOPS" --config "$cfg" --quiet simulate --site BenchReplay --duration "$(( secs + 60 ))s" &
    sim=$!
    sleep 2
    echo "replay: 2,040 devices at 1 Hz; gcp unreachable for ${secs} s, then back while ingest goes on"
    "$ESSOPS" --config "$(replay_config 55499)" --quiet ingest --site BenchReplay --duration "${secs}s" || true
    "$ESSOPS" --config "$cfg" --json spool list --site BenchReplay --server gcp | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    if r["kind"] == "pending":
        print("  spool after the outage: %d rows in %d files, %d bytes (%.0f bytes per row)" % (r["rows"], r["files"], r["bytes"], r["bytes_per_row"] or 0))'
    "$ESSOPS" --config "$cfg" --json ingest --site BenchReplay --duration 30s | python3 -c '
import json, sys
for l in sys.stdin:
    r = json.loads(l)
    print("  %s: replayed %d rows at %s rows/s; written %d live; duplicates %d; live p50/p99 poll-to-commit %s/%s ms; pending after %d" % (
        r["server"], r["rows_replayed"], r["replay_rows_per_sec"], r["rows_written"] - r["rows_replayed"], r["rows_duplicate"],
        r["delay_p50_ms"], r["delay_p99_ms"], r["spool_pending"]))'
    kill "$sim" 2>/dev/null || true
    wait "$sim" 2>/dev/null || true
    # Raw binary COPY of the same rows into a fresh rack hypertable on gcp, in the same run.
    echo "  raw binary COPY of gcp's rack rows into a fresh rack hypertable: $(raw_copy_rate gcp bench_replay)"
    echo "  reproduce: scripts/bench.sh replay   (SECS=$secs)"
}


# The slow-link bench's site: BANKS banks of 50 racks (each bank its own
# unit), gcp at port $2 (the relay, or nothing during the outage).
link_config() {
    bench_site "link-$1-$2.toml" spool-link $'timeout_ms = 1000\nconnections = 4' "$2" BenchLink bench_link \
        "$(for i in $(seq "$1"); do printf '{ id = %d, racks = 50 }, ' "$i"; done | sed 's/, $//')" \
        'bms = "127.0.0.1:15931", pcs = "127.0.0.1:15932"'
}

# The spool of an outage (120 banks of 50 racks spooled for gcp for 20 s:
# 122,400 rows, as many as 200 racks make in 10 minutes) drains over a
# 1 Mbit/s link (`essops relay --kbit-per-sec 1000`, 5 ms each way) while
# the site's 200 racks ingest live over the same link.
bench_replay_link() {
    local cfg big relay_port=55497 sim relay ingest t0 pending
    cfg="$(link_config 4 "$relay_port")"
    big="$(link_config 120 55498)"
    "$ESSOPS" --config "$(link_config 4 25433)" --quiet migrate --create-database
    for srv in local gcp; do dbpsql "$srv" bench_link "TRUNCATE rack; TRUNCATE bank; TRUNCATE pcs; TRUNCATE etc"; done
    rm -rf "$ROOT/.services/bench/spool-link"
    "$ESSOPS" --config "$big" --quiet simulate --site BenchLink --duration 40s &
    sim=$!
    sleep 3
    "$ESSOPS" --config "$big" --quiet ingest --site BenchLink --duration 20s || true
    kill "$sim" 2>/dev/null; wait "$sim" 2>/dev/null || true
    spooled() {
        "$ESSOPS" --config "$cfg" --json spool list --site BenchLink --server gcp \
            | python3 -c 'import json, sys; print(sum(json.loads(l)["rows"] for l in sys.stdin if json.loads(l).get("kind") == "pending"))'
    }
    pending="$(spooled)"
    echo "replay-link: a spool of $pending rows for gcp (6,120 devices unreachable for 20 s), drained over 1 Mbit/s while 204 devices ingest live over the same link"
    "$ESSOPS" relay --port "$relay_port" --to 127.0.0.1:25433 --delay 5ms --kbit-per-sec 1000 &
    relay=$!
    "$ESSOPS" --config "$cfg" --quiet simulate --site BenchLink --duration 900s &
    sim=$!
    sleep 2
    t0=$(date +%s)
    "$ESSOPS" --config "$cfg" --json ingest --site BenchLink --duration 900s > "$ROOT/.services/bench/link-ingest.json" &
    ingest=$!
    while sleep 5; do
        pending="$(spooled)"
        [ "$pending" -eq 0 ] && break
        [ $(( $(date +%s) - t0 )) -gt 850 ] && break
    done
    echo "  spool empty after $(( $(date +%s) - t0 )) s (pending now: $pending)"
    sleep 3
    kill -TERM "$ingest"; wait "$ingest" || true
    kill "$sim" "$relay" 2>/dev/null; wait "$sim" "$relay" 2>/dev/null || true
    python3 -c '
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l)
    if "server" not in r: continue
    print("  %s: replayed %d rows (%s rows/s in replay transactions), %d live rows written, due %d = %d answered + %d missed, lost %d, rejected %d, pending %d; live p50/p99 poll-to-commit %s/%s ms" % (
        r["server"], r["rows_replayed"], r["replay_rows_per_sec"], r["rows_written"] - r["rows_replayed"],
        r["polls_due"], r["polls_ok"], r["polls_failed"], r["rows_lost"], r["rows_rejected"], r["spool_pending"],
        r["delay_p50_ms"], r["delay_p99_ms"]))' "$ROOT/.services/bench/link-ingest.json"
    echo "  rack rows: local $(dbpsql local bench_link 'SELECT count(*) FROM rack'), gcp $(dbpsql gcp bench_link 'SELECT count(*) FROM rack')"
    echo "  reproduce: scripts/bench.sh replay-link"
}

bench_cache() {
    local cfg=bench/cache.toml n db racks banks
    "$ESSOPS" --config "$cfg" --quiet migrate --create-database
    # The last 24 hours at 1 Hz, topped up to now on every run (periods are relative to now).
    for n in 1 2 3 4; do
        db="bench_cache_site$n"
        case $n in 1) racks="(1,8)" ;; 2) racks="(1,9),(2,8)" ;; 3) racks="(1,11)" ;; 4) racks="(1,9)" ;; esac
        PGPASSWORD="$(cat .services/secrets/local.password)" psql -X -q -t -A -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 25432 -U essops -d "$db" <<SQL
CREATE TEMP TABLE span AS SELECT greatest(coalesce(max("TIMESTAMP") + interval '1 second', now() - interval '1 day'), now() - interval '1 day') AS f, date_trunc('second', now()) AS t FROM rack;
INSERT INTO rack SELECT s, d.b, r, 50 + 20*sin(extract(epoch from s)/3600), 98.5, 820 + r, 100*cos(extract(epoch from s)/600), 80*cos(extract(epoch from s)/600), 3.30 + 0.001*r, 3.29, 3.295, 1, 2, 31.5 + 0.1*r, 27.0, 29, 3, 4, 1, 0, 0
  FROM span, generate_series(span.f, span.t, interval '1 second') s, (VALUES $racks) d(b, n), generate_series(1, d.n) r;
INSERT INTO bank ("TIMESTAMP","BANK_ID","SOC","DC_VOLTAGE","DC_CURRENT","MAX_CELL_TEMP")
  SELECT s, d.b, 50, 820, 100, 31 FROM span, generate_series(span.f, span.t, interval '1 second') s, (VALUES $racks) d(b, n);
INSERT INTO pcs ("TIMESTAMP","PCS_ID","AC_ACTIVE_POWER","AC_FREQUENCY","DC_VOLTAGE") SELECT s, 1, 500, 60, 820 FROM span, generate_series(span.f, span.t, interval '1 second') s;
INSERT INTO etc ("TIMESTAMP","AMBIENT_TEMP","METER_ACTIVE_POWER") SELECT s, 20, 480 FROM span, generate_series(span.f, span.t, interval '1 second') s;
DELETE FROM rack WHERE "TIMESTAMP" < now() - interval '1 day';
ANALYZE rack;
SQL
    done
    local rows
    rows="$(for n in 1 2 3 4; do PGPASSWORD="$(cat .services/secrets/local.password)" psql -X -t -A -h 127.0.0.1 -p 25432 -U essops -d "bench_cache_site$n" -c 'SELECT count(*) FROM rack' ; done | awk '{s+=$1} END {print s}')"
    echo "cache warm: the four default sites, the last day of 1 Hz data ($rows rack rows + banks, PCS, etc), local server, dev build"
    local full_cmd=("$ESSOPS" --config "$cfg" cache warm --full --quiet)
    local inc_cmd=("$ESSOPS" --config "$cfg" cache warm --quiet)
    echo "  full rebuild (first run, or --full after a reconcile): $(timed "${full_cmd[@]}")"
    echo "  incremental (cron every minute):                       $(timed "${inc_cmd[@]}")"
    "$ESSOPS" --config "$cfg" --json cache warm | python3 -c '
import json, sys, time
rows = [json.loads(l) for l in sys.stdin]
keys = sum(r["keys"] for r in rows); size = sum(r["bytes"] for r in rows); ms = max(r["millis"] for r in rows)
print("  one incremental run: %d keys, %.1f MiB, slowest site %d ms -> %.0f keys/s, %.1f MiB/s end to end" % (keys, size / 2**20, ms, keys * 1000.0 / ms, size / 2**20 * 1000.0 / ms))'
    echo "  redis-benchmark on the same Redis (SET, 3-byte values, pipeline 16): $(redis-benchmark -h 127.0.0.1 -p 26379 -t set -n 200000 -P 16 -q 2>/dev/null | tr -d '\r' | grep -o 'SET: [0-9.]* requests per second' | tail -1)"
    echo "  redis-benchmark, 100 KiB values, pipeline 16:                        $(redis-benchmark -h 127.0.0.1 -p 26379 -t set -n 20000 -d 102400 -P 16 -q 2>/dev/null | tr -d '\r' | grep -o 'SET: [0-9.]* requests per second' | tail -1)"
    echo "  reproduce: scripts/bench.sh cache"
}

# 30 days of 1 Hz data for a Site2-sized site (17 racks, 2 banks, a PCS),
# loaded once a day at a time, then topped up to now on every run; the
# rollups rolled forward to the last settled hour.
cache_month_data() {
    local cfg=bench/cache-month.toml day have
    local psql=(psql -X -q -t -A -v ON_ERROR_STOP=1 -h 127.0.0.1 -p 25432 -U essops -d bench_cache_month)
    "$ESSOPS" --config "$cfg" --quiet migrate --create-database
    have="$("${psql[@]}" -c 'SELECT count(*) FROM rack')"
    if [ "$have" -lt $(( 30 * 86400 * 17 * 99 / 100 )) ]; then
        echo "loading 30 days of 1 Hz data into bench_cache_month (44 M rack rows, about 10 minutes)..." >&2
        "${psql[@]}" -c 'TRUNCATE rack, bank, pcs, rack_1m, rack_1h, bank_1m, bank_1h, pcs_1m, pcs_1h; DELETE FROM essops.rollup_marks'
        for day in $(seq 30 -1 1); do
            "${psql[@]}" -v day="$day" <<'SQL'
SELECT date_trunc('second', now()) - make_interval(days => :day) AS f, date_trunc('second', now()) - make_interval(days => :day - 1) AS t \gset
INSERT INTO rack SELECT s, d.b, r, 50 + 20*sin(extract(epoch from s)/3600), 98.5, 820 + r, 100*cos(extract(epoch from s)/600), 80*cos(extract(epoch from s)/600), 3.30 + 0.001*r, 3.29, 3.295, 1, 2, 31.5 + 0.1*r, 27.0, 29, 3, 4, 1, 0, 0
  FROM generate_series(:'f'::timestamptz, :'t'::timestamptz - interval '1 second', interval '1 second') s, (VALUES (1, 9), (2, 8)) d(b, n), generate_series(1, d.n) r;
INSERT INTO bank ("TIMESTAMP","BANK_ID","SOC","DC_VOLTAGE","DC_CURRENT","MAX_CELL_TEMP")
  SELECT s, b, 50, 820, 100, 31 FROM generate_series(:'f'::timestamptz, :'t'::timestamptz - interval '1 second', interval '1 second') s, generate_series(1, 2) b;
INSERT INTO pcs ("TIMESTAMP","PCS_ID","AC_ACTIVE_POWER","AC_FREQUENCY","DC_VOLTAGE")
  SELECT s, 1, 500, 60, 820 FROM generate_series(:'f'::timestamptz, :'t'::timestamptz - interval '1 second', interval '1 second') s;
SQL
        done
    fi
    "${psql[@]}" <<'SQL'
CREATE TEMP TABLE span AS SELECT max("TIMESTAMP") + interval '1 second' AS f, date_trunc('second', now()) AS t FROM rack;
INSERT INTO rack SELECT s, d.b, r, 50 + 20*sin(extract(epoch from s)/3600), 98.5, 820 + r, 100*cos(extract(epoch from s)/600), 80*cos(extract(epoch from s)/600), 3.30 + 0.001*r, 3.29, 3.295, 1, 2, 31.5 + 0.1*r, 27.0, 29, 3, 4, 1, 0, 0
  FROM span, generate_series(span.f, span.t, interval '1 second') s, (VALUES (1, 9), (2, 8)) d(b, n), generate_series(1, d.n) r;
INSERT INTO bank ("TIMESTAMP","BANK_ID","SOC","DC_VOLTAGE","DC_CURRENT","MAX_CELL_TEMP")
  SELECT s, b, 50, 820, 100, 31 FROM span, generate_series(span.f, span.t, interval '1 second') s, generate_series(1, 2) b;
INSERT INTO pcs ("TIMESTAMP","PCS_ID","AC_ACTIVE_POWER","AC_FREQUENCY","DC_VOLTAGE")
  SELECT s, 1, 500, 60, 820 FROM span, generate_series(span.f, span.t, interval '1 second') s;
SELECT count(*) FROM drop_chunks('rack', older_than => now() - interval '32 days');
SELECT count(*) FROM drop_chunks('bank', older_than => now() - interval '32 days');
SELECT count(*) FROM drop_chunks('pcs', older_than => now() - interval '32 days');
VACUUM ANALYZE rack; VACUUM ANALYZE bank; VACUUM ANALYZE pcs;
SQL
    "$ESSOPS" --config "$cfg" --quiet rollup >/dev/null
}

# The month site: the full warm from the rollups and from raw rows, the
# incremental warm, a bare count(*) of the same rack rows, peak RSS.
bench_cache_month() {
    local cfg=bench/cache-month.toml
    cache_month_data
    local psql=(psql -X -q -t -A -h 127.0.0.1 -p 25432 -U essops -d bench_cache_month)
    local rows
    rows="$("${psql[@]}" -c "SELECT count(*) FROM rack WHERE \"TIMESTAMP\" > now() - interval '30 days'")"
    echo "cache warm at the scan limit: one Site2-sized site (17 racks, 2 banks, a PCS), 30 days of 1 Hz ($rows rack rows), rollups current, local server, dev build"
    local rolled raw inc
    "$ESSOPS" --config "$cfg" cache warm --full --quiet
    rolled="$(RUNS=$RUNS timed "$ESSOPS" --config "$cfg" cache warm --full --quiet)"
    echo "  full warm from the rollups + raw tail: $rolled; peak RSS $(measured "$ESSOPS" --config "$cfg" cache warm --full --quiet | cut -d' ' -f2) MiB"
    raw="$(measured "$ESSOPS" --config "$cfg" cache warm --full --raw --quiet)"
    echo "  full warm from raw rows (--raw):       ${raw% *} ms (one run); peak RSS ${raw#* } MiB"
    "$ESSOPS" --config "$cfg" cache warm --quiet
    inc="$(timed "$ESSOPS" --config "$cfg" cache warm --quiet)"
    echo "  incremental warm (cron every minute):  $inc; peak RSS $(measured "$ESSOPS" --config "$cfg" cache warm --quiet | cut -d' ' -f2) MiB"
    local t0 t1
    t0=$(date +%s%N)
    "${psql[@]}" -c "SELECT count(*) FROM rack WHERE \"TIMESTAMP\" > now() - interval '30 days'" >/dev/null
    t1=$(date +%s%N)
    echo "  bare count(*) of the same rack rows:   $(( (t1 - t0) / 1000000 )) ms"
    echo "  reproduce: scripts/bench.sh cache-month"
}

# p50 and p95 latency (ms) per script of a pgbench run's transaction logs
pgbench_percentiles() {
    python3 - "$@" <<'PY'
import glob, sys
lat = {}
for f in glob.glob(sys.argv[1] + "*"):
    for line in open(f):
        p = line.split()
        lat.setdefault(int(p[3]), []).append(int(p[2]) / 1000.0)
names = sys.argv[2:]
out = []
for k in sorted(lat):
    v = sorted(lat[k]); n = len(v)
    out.append("%s: p50 %.2f ms, p95 %.2f ms (%d runs)" % (names[k], v[n // 2], v[int(n * 0.95)], n))
print("; ".join(out))
PY
}

bench_index() {
    local secs="${SECS:-20}" dir="$ROOT/.services/bench/index" cfg=bench/loss.toml
    bench_loss >/dev/null   # the site-week in bench_site2
    mkdir -p "$dir"
    cat > "$dir/rack_hour.sql" <<'SQL'
\set r random(1, 9)
\set t random(1772377200, 1772982000 - 3600)
\set t2 :t + 3600
SELECT avg("SOC"), max("MAX_CELL_TEMP") FROM rack WHERE "RACK_ID" = :r AND "TIMESTAMP" >= to_timestamp(:t) AND "TIMESTAMP" < to_timestamp(:t2);
SQL
    cat > "$dir/bank_day.sql" <<'SQL'
\set b random(1, 2)
\set t random(1772377200, 1772982000 - 86400)
\set t2 :t + 86400
SELECT avg("SOC"), max("MAX_CELL_TEMP") FROM bank WHERE "BANK_ID" = :b AND "TIMESTAMP" >= to_timestamp(:t) AND "TIMESTAMP" < to_timestamp(:t2);
SQL
    local pg=(-h 127.0.0.1 -p 25432 -U essops)
    run_workload() {
        rm -f "$dir"/log.*
        (cd "$dir" && pgbench "${pg[@]}" -n -M prepared -c 2 -T "$secs" -l --log-prefix=log \
            -f rack_hour.sql@8 -f bank_day.sql@2 bench_site2 >/dev/null 2>&1)
        pgbench_percentiles "$dir/log" "rack-hour (most frequent)" "bank-day"
    }
    "${PSQL[@]}" -c "CREATE EXTENSION IF NOT EXISTS pg_stat_statements" -c "DROP INDEX IF EXISTS rack_rack_id_timestamp_idx" -c "SELECT pg_stat_statements_reset()" >/dev/null
    echo "index: dashboard workload on bench_site2 (ESS_Operating_Site2 site-week, $("${PSQL[@]}" -c 'SELECT count(*) FROM rack') rack rows), pgbench -M prepared, 2 clients, ${secs} s per phase, 80 % rack-hour (one rack's average SOC and peak temperature over an hour) / 20 % bank-day"
    echo "  before:  $(run_workload)"
    local rec
    rec="$("$ESSOPS" --config "$cfg" --json index recommend --min-calls 10 --apply || true)"
    echo "  recommended: $(echo "$rec" | python3 -c '
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
print("; ".join("%s (%s) on %s: planner cost %.0f -> %.0f per call over %d calls" % (r["index"], ", ".join(r["columns"]), r["table"], r["cost_before"], r["cost_after"], r["calls"]) for r in rows if r["kind"] == "create") or "nothing")')"
    "${PSQL[@]}" -c "ANALYZE rack" >/dev/null
    echo "  after:   $(run_workload)"
    "${PSQL[@]}" -c "DROP INDEX IF EXISTS rack_rack_id_timestamp_idx" >/dev/null
    echo "  reproduce: scripts/bench.sh index   (SECS=$secs)"
}

# One live ingest of 50 racks (SECS=N, default 40) into bench_stall on local
# while "$@" runs 10 s in (nothing: a baseline); prints the ingest's p99 and
# longest poll-to-commit delay, and what the command printed on stderr.
stall_run() {
    local label="$1" secs="${SECS:-40}" cfg="$ROOT/.services/bench/stall.toml" sim ingest out
    shift
    out="$ROOT/.services/bench/stall-ingest.json"
    "$ESSOPS" --config "$cfg" --quiet simulate --site BenchStall --duration "$(( secs + 20 ))s" >/dev/null 2>&1 &
    sim=$!
    sleep 2
    "$ESSOPS" --config "$cfg" --json ingest --site BenchStall --duration "${secs}s" > "$out" 2>/dev/null &
    ingest=$!
    local took="-"
    if [ $# -gt 0 ]; then
        sleep 10
        local t0 t1
        t0=$(date +%s%N); "$@" >"$ROOT/.services/bench/stall-cmd.out" 2>&1 || true; t1=$(date +%s%N)
        took="$(( (t1 - t0) / 1000000 )) ms"
    fi
    wait "$ingest" || true
    kill "$sim" 2>/dev/null || true; wait "$sim" 2>/dev/null || true
    python3 - "$out" "$label" "$took" <<'PY'
import json, sys
r = json.loads(open(sys.argv[1]).readline())
print("  %-34s command took %-9s ingest poll-to-commit p99 %s ms, longest %s ms, rows written %d, lost %d" % (
    sys.argv[2], sys.argv[3], r["delay_p99_ms"], r["delay_max_ms"], r["rows_written"], r["rows_lost"]))
PY
}

# How long index work stalls a live ingest: baseline, `index recommend`
# without HypoPG (explains only), and `index create` (per chunk, and in one
# transaction) on a rack
# hypertable holding two days of 50 racks at 1 Hz.
bench_index_stall() {
    local dir="$ROOT/.services/bench" cfg="$ROOT/.services/bench/stall.toml"
    mkdir -p "$dir"
    cat > "$cfg" <<TOML
log_dir = "logs"
spool_dir = "spool-stall"
[modbus]
register_map = "../../bench/ingest-map.toml"
$(bench_servers 25433)
[[sites]]
name = "BenchStall"
database = "bench_stall"
servers = ["local"]
banks = [{ id = 1, racks = 50 }]
modbus = { bms = "127.0.0.1:15921", pcs = "127.0.0.1:15922" }
TOML
    "$ESSOPS" --config "$cfg" --quiet migrate --create-database
    local want=$(( 2 * 86400 * 50 ))
    if [ "$(dbpsql local bench_stall 'SELECT count(*) FROM rack WHERE "TIMESTAMP" < now() - interval '"'"'1 hour'"'"'')" -lt "$want" ]; then
        dbpsql local bench_stall "TRUNCATE rack; INSERT INTO rack (\"TIMESTAMP\",\"BANK_ID\",\"RACK_ID\",\"SOC\",\"SOH\",\"DC_VOLTAGE\",\"DC_CURRENT\",\"MAX_CELL_VOLTAGE\",\"MIN_CELL_VOLTAGE\",\"MAX_CELL_TEMP\",\"MIN_CELL_TEMP\",\"STATUS\")
            SELECT t, 1, r, 50, 98, 820, 10, 3.31, 3.29, 31, 27, 1
              FROM generate_series(date_trunc('second', now()) - interval '2 days' - interval '1 hour', date_trunc('second', now()) - interval '1 hour 1 second', interval '1 second') t,
                   generate_series(1, 50) r; ANALYZE rack"
    fi
    dbpsql local bench_stall "SET client_min_messages = warning; DROP INDEX IF EXISTS rack_rack_id_timestamp_idx"
    echo "index stall: a live ingest of 50 racks at 1 Hz into local (bench_stall, $(dbpsql local bench_stall 'SELECT count(*) FROM rack') rack rows in $(dbpsql local bench_stall "SELECT count(*) FROM show_chunks('rack')") chunks), ${SECS:-40} s per run, the command started 10 s in"
    stall_run "baseline (nothing else runs)"
    stall_run "index recommend (no HypoPG)" "$ESSOPS" --config "$cfg" index recommend --min-calls 1
    stall_run "index create (per chunk)" "$ESSOPS" --config "$cfg" index create rack RACK_ID TIMESTAMP
    grep -ho "built chunk by chunk.*" "$dir/stall-cmd.out" | head -1 | sed 's/^/      create said: /' || true
    dbpsql local bench_stall "SET client_min_messages = warning; DROP INDEX IF EXISTS rack_rack_id_timestamp_idx"
    stall_run "index create --one-transaction" "$ESSOPS" --config "$cfg" index create --one-transaction rack RACK_ID TIMESTAMP
    dbpsql local bench_stall "SET client_min_messages = warning; DROP INDEX IF EXISTS rack_rack_id_timestamp_idx"
    echo "  reproduce: scripts/bench.sh index-stall   (SECS=${SECS:-40})"
}

# psql against the ingest bench database on one server (local|gcp)
# The rack rows of database $2 on server $1, binary-COPYed out and into a fresh
# rack hypertable (with its unique key): "N rows in T ms = R rows/s".
raw_copy_rate() {
    local srv="$1" db="$2" file="$ROOT/.services/bench/$2.copy" n t0 t1
    dbpsql "$srv" "$db" "\\copy (SELECT * FROM rack) TO '$file' (FORMAT binary)"
    n="$(dbpsql "$srv" "$db" "SELECT count(*) FROM rack")"
    dbpsql "$srv" "$db" "SET client_min_messages = warning; DROP TABLE IF EXISTS copy_probe; CREATE TABLE copy_probe (LIKE rack INCLUDING ALL); SELECT create_hypertable('copy_probe', by_range('TIMESTAMP', INTERVAL '1 day'))" >/dev/null
    t0=$(date +%s%N)
    dbpsql "$srv" "$db" "\\copy copy_probe FROM '$file' (FORMAT binary)"
    t1=$(date +%s%N)
    dbpsql "$srv" "$db" "DROP TABLE copy_probe"
    rm -f "$file"
    echo "$n rows in $(( (t1 - t0) / 1000000 )) ms = $(( n * 1000000000 / (t1 - t0) )) rows/s"
}

# psql against database $2 on dev server $1 (local|gcp), running $3
dbpsql() {
    local port=25432 srv="$1"
    [ "$srv" = gcp ] && port=25433
    PGPASSWORD="$(cat ".services/secrets/$srv.password")" psql -X -q -t -A -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U essops -d "$2" -c "$3"
}
ipsql() { dbpsql "$1" bench_ingest "$2"; }
fpsql() { dbpsql "$1" bench_field "$2"; }
rpl_psql() { dbpsql "$1" bench_replay "$2"; }

case "${1:-all}" in
    loss) bench_loss ;;
    kpi) bench_kpi ;;
    reconcile) bench_reconcile ;;
    ingest) bench_ingest ;;
    field) bench_field ;;
    replay) bench_replay ;;
    replay-link) bench_replay_link ;;
    cache) bench_cache; bench_cache_month ;;
    cache-month) bench_cache_month ;;
    index) bench_index ;;
    index-stall) bench_index_stall ;;
    lifecycle) bench_lifecycle ;;
    scale) bench_scale ;;
    all) bench_loss; bench_kpi; bench_lifecycle; bench_reconcile; bench_ingest; bench_field; bench_replay; bench_cache; bench_cache_month; bench_index; bench_index_stall ;;
    *) echo "usage: $0 [all|loss|kpi|lifecycle|reconcile|ingest|scale|field|replay|replay-link|cache|cache-month|index|index-stall]" >&2; exit 2 ;;
esac
