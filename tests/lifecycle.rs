//! Keeping data: rollups equal a direct aggregate of the raw rows, a
//! reconcile into a rolled-up day re-rolls exactly that day, and retention
//! drops the oldest raw chunks only once their rollups, the other server's
//! copy and their loss history are in place.

use std::path::PathBuf;

use chrono::{NaiveDate, TimeDelta, Utc};
use serde_json::Value;

use crate::support::{Cmd, Scratch, TestDb, servers_toml};

struct Setup {
    db: TestDb,
    config: PathBuf,
    _scratch: Scratch,
    /// Today (UTC, the site's zone) when the test began.
    today: NaiveDate,
}

/// A site in UTC (its local days are the chunks' days) with one rack, on
/// both servers, keeping 7 days of raw rows.
fn setup(test: &str) -> Setup {
    // A day boundary mid-test would move "the 3 oldest days": start after it.
    let left = Utc::now()
        .date_naive()
        .succ_opt()
        .unwrap()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        - Utc::now().naive_utc();
    if left < TimeDelta::minutes(5) {
        std::thread::sleep((left + TimeDelta::seconds(5)).to_std().unwrap());
    }
    let db = TestDb::new(test, 1);
    let scratch = Scratch::new(test);
    let config = scratch.site_config(
        "[retention]\nraw_days = 7\n",
        &servers_toml(),
        &format!(
            "name = \"Keep\"\ndatabase = \"{}\"\ntimezone = \"UTC\"\nbanks = [{{ id = 1, racks = 1 }}]\npcs = [1]\n",
            db.databases[0]
        ),
    );
    Setup {
        db,
        config,
        _scratch: scratch,
        today: Utc::now().date_naive(),
    }
}

impl Setup {
    fn essops(&self, args: &[&str]) -> crate::support::cmd::Run {
        Cmd::new(Some(&self.config)).args(args).run()
    }

    fn day(&self, ago: i64) -> String {
        (self.today - TimeDelta::days(ago)).to_string()
    }

    /// Rack 1 of bank 1 at 1 Hz on `server`, days `from_ago` back to yesterday.
    fn rack_rows(&self, server: &str, from_ago: i64) {
        self.db.execute(
            server,
            &format!(
                r#"INSERT INTO rack ("TIMESTAMP", "BANK_ID", "RACK_ID", "SOC", "DC_VOLTAGE")
                   SELECT t, 1, 1, (extract(epoch FROM t)::int8 % 97)::real, 700 + (extract(epoch FROM t)::int8 % 13)::real
                     FROM generate_series('{}T00:00:00Z'::timestamptz, '{}T00:00:00Z'::timestamptz - interval '1 second', interval '1 second') t"#,
                self.day(from_ago),
                self.day(0)
            ),
        );
    }

    /// Deletes one hour (10:00-11:00) of day `ago` on `server`.
    fn hole(&self, server: &str, ago: i64) {
        let day = self.day(ago);
        self.db.execute(
            server,
            &format!(
                r#"DELETE FROM rack WHERE "TIMESTAMP" >= '{day}T10:00:00Z' AND "TIMESTAMP" < '{day}T11:00:00Z'"#
            ),
        );
    }

    /// The raw chunks' start days on `server`.
    fn chunk_days(&self, server: &str) -> Vec<String> {
        self.db
            .rows(
                server,
                "SELECT (range_start AT TIME ZONE 'UTC')::date::text FROM timescaledb_information.chunks
                  WHERE hypertable_name = 'rack' ORDER BY range_start",
            )
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// Every rollup bucket against a direct aggregate of the raw rows up to
    /// the rollup's mark (the last hour is rolled only 5 minutes after it
    /// ends, so a run just past midnight leaves yesterday's last hour):
    /// (direct buckets, rollup buckets, buckets that agree in count, avg, min, max).
    fn compare(&self, server: &str, bucket: &str, rollup: &str) -> (i64, i64, i64) {
        let row = &self.db.rows(
            server,
            &format!(
                r#"WITH d AS (SELECT time_bucket(INTERVAL '{bucket}', "TIMESTAMP") b, count(*) n,
                                    avg("SOC") sa, min("SOC") sl, max("SOC") sh,
                                    avg("DC_VOLTAGE") va, min("DC_VOLTAGE") vl, max("DC_VOLTAGE") vh
                               FROM rack
                              WHERE "TIMESTAMP" < (SELECT rolled_until FROM essops.rollup_marks WHERE table_name = 'rack')
                              GROUP BY 1)
                   SELECT (SELECT count(*) FROM d), (SELECT count(*) FROM {rollup}),
                          (SELECT count(*) FROM d JOIN {rollup} r ON r."BUCKET" = d.b AND r."BANK_ID" = 1 AND r."RACK_ID" = 1
                            WHERE r."SAMPLES" = d.n AND abs(r."SOC_AVG" - d.sa) < 1e-9 AND r."SOC_MIN" = d.sl AND r."SOC_MAX" = d.sh
                              AND abs(r."DC_VOLTAGE_AVG" - d.va) < 1e-9 AND r."DC_VOLTAGE_MIN" = d.vl AND r."DC_VOLTAGE_MAX" = d.vh
                              AND r."DC_CURRENT_AVG" IS NULL)"#
            ),
        )[0];
        (row.get(0), row.get(1), row.get(2))
    }

    fn assert_rollups_match(&self, when: &str) {
        for server in ["local", "gcp"] {
            for (bucket, rollup) in [("1 minute", "rack_1m"), ("1 hour", "rack_1h")] {
                let (direct, rolled, agree) = self.compare(server, bucket, rollup);
                assert!(
                    direct > 0 && direct == rolled && rolled == agree,
                    "{when}: {server} {rollup}: {direct} direct buckets, {rolled} rolled, {agree} agree"
                );
            }
        }
    }

    fn retention(&self, extra: &[&str]) -> Vec<Value> {
        let mut args = vec!["--json", "retention", "--table", "rack"];
        args.extend(extra);
        let run = self.essops(&args);
        assert_eq!(run.code(), 0, "{}", run.stderr());
        run.json()
    }
}

/// (server, first day, verdict, reasons) of each judged rack chunk.
fn verdicts(rows: &[Value]) -> Vec<(String, String, String, String)> {
    rows.iter()
        .filter(|r| r["kind"] == "chunk" && r["table"] == "rack")
        .map(|r| {
            (
                r["server"].as_str().unwrap().to_string(),
                r["range_start"].as_str().unwrap()[..10].to_string(),
                r["verdict"].as_str().unwrap().to_string(),
                r["reasons"].to_string(),
            )
        })
        .collect()
}

#[test]
fn lifecycle_rollups_reroll_reconciled_days_and_retention_keeps_what_is_unsafe_to_drop() {
    let s = setup("lifecycle");
    for server in ["local", "gcp"] {
        s.rack_rows(server, 10);
    }
    // local lacks an hour of day -5 until reconcile copies it in, after the rollup.
    s.hole("local", 5);
    let (ten_ago, today) = (s.day(10), s.day(0));
    let window = ["--from", ten_ago.as_str(), "--to", today.as_str()];
    let loss = s.essops(&[&["loss", "--table", "rack"][..], &window].concat());
    assert!([0, 10, 11].contains(&loss.code()), "{}", loss.stderr());
    let reconciled = s.essops(&[
        "reconcile",
        "--table",
        "rack",
        "--from",
        &ten_ago,
        "--to",
        &s.day(6),
    ]);
    assert_eq!(reconciled.code(), 0, "{}", reconciled.stderr());

    let run = s.essops(&["--json", "rollup", "--table", "rack"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let rows: Vec<Value> = run.json();
    assert!(
        rows.iter().all(|r| r["edition"] == "apache"),
        "on the Apache edition essops keeps its own rollups: {rows:?}"
    );
    s.assert_rollups_match("first rollup");

    // Reconcile copies local's missing hour of day -5 in; the next rollup
    // re-rolls exactly that day on local, and nothing on gcp.
    let five = s.essops(&["reconcile", "--table", "rack", "--date", &s.day(5)]);
    assert_eq!(five.code(), 0, "rows copied: {}", five.stderr());
    let rows: Vec<Value> = s.essops(&["--json", "rollup", "--table", "rack"]).json();
    let rerolled = |server: &str| {
        rows.iter()
            .find(|r| r["server"] == server)
            .map(|r| r["rerolled"].clone())
            .unwrap()
    };
    let day5 = format!("{}T00:00:00Z", s.day(5));
    let day4 = format!("{}T00:00:00Z", s.day(4));
    assert_eq!(
        rerolled("local"),
        serde_json::json!([{ "start": day5, "end": day4 }]),
        "{rows:?}"
    );
    assert_eq!(rerolled("gcp"), serde_json::json!([]), "{rows:?}");
    s.assert_rollups_match("after the reconcile");

    // gcp loses an hour of day -9 after the reconcile: that chunk must stay.
    s.hole("gcp", 9);
    let before = (s.chunk_days("local"), s.chunk_days("gcp"));
    let dry = verdicts(&s.retention(&["--dry-run"]));
    assert_eq!(
        (s.chunk_days("local"), s.chunk_days("gcp")),
        before,
        "--dry-run changed the chunks"
    );
    let oldest: Vec<String> = [10, 9, 8].iter().map(|d| s.day(*d)).collect();
    for (server, day, verdict, reasons) in &dry {
        assert!(
            oldest.contains(day),
            "a chunk not old enough was judged: {dry:?}"
        );
        let want = match day == &s.day(9) {
            true => "keep",
            false => "drop",
        };
        assert_eq!(verdict, want, "{server} {day}: {reasons}");
    }
    assert_eq!(dry.len(), 6, "3 chunks on each server: {dry:?}");

    let done = verdicts(&s.retention(&[]));
    let kept: Vec<_> = done.iter().filter(|v| v.2 == "keep").collect();
    assert_eq!(kept.len(), 2, "day -9 kept on both servers: {done:?}");
    assert!(
        kept.iter().any(|v| v.0 == "local"
            && v.3
                .contains("`gcp` holds 82800 rows of it, this server 86400")),
        "local's reason names gcp's missing rows: {kept:?}"
    );
    // gcp's rollups counted the hour it then lost: re-rolled before judging.
    assert!(
        kept.iter().any(|v| v.0 == "gcp"
            && v.3
                .contains("`local` holds 86400 rows of it, this server 82800")),
        "{kept:?}"
    );
    for server in ["local", "gcp"] {
        assert_eq!(
            s.chunk_days(server)[0],
            s.day(9),
            "{server}: {:?}",
            s.chunk_days(server)
        );
        assert_eq!(
            s.chunk_days(server).len(),
            8,
            "{server}: 10 days less 2 dropped"
        );
    }

    // Reconciled again, day -9 goes too: exactly the 3 oldest days are gone,
    // and gcp's rollups of it are re-rolled first.
    let nine = s.essops(&["reconcile", "--table", "rack", "--date", &s.day(9)]);
    assert_eq!(nine.code(), 0, "rows copied: {}", nine.stderr());
    let last = verdicts(&s.retention(&[]));
    assert_eq!(last.len(), 2, "{last:?}");
    assert!(
        last.iter().all(|v| v.1 == s.day(9) && v.2 == "dropped"),
        "{last:?}"
    );
    assert!(
        last.iter()
            .any(|v| v.0 == "gcp" && v.3.contains("re-rolled first")),
        "{last:?}"
    );
    for server in ["local", "gcp"] {
        assert_eq!(s.chunk_days(server)[0], s.day(7), "{server}");
        assert_eq!(s.chunk_days(server).len(), 7, "{server}");
    }
}

#[test]
fn lifecycle_retention_without_raw_days_drops_nothing_and_says_so() {
    let db = TestDb::new("lifecycle_unset", 1);
    let scratch = Scratch::new("lifecycle_unset");
    let config = scratch.site_config(
        "",
        &servers_toml(),
        &format!(
            "name = \"Keep\"\ndatabase = \"{}\"\nbanks = [{{ id = 1, racks = 1 }}]\n",
            db.databases[0]
        ),
    );
    let run = Cmd::new(Some(&config)).args(["--quiet", "retention"]).run();
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(
        run.stderr().contains("raw_days is not set"),
        "{}",
        run.stderr()
    );
    let json: Vec<serde_json::Value> = Cmd::new(Some(&config))
        .args(["--json", "retention"])
        .run()
        .expect_code(0)
        .json();
    assert_eq!(json.len(), 1, "{json:?}");
    assert_eq!(json[0]["kind"], "not_configured");
    assert!(
        json[0]["note"]
            .as_str()
            .unwrap()
            .contains("nothing was dropped")
    );
}

#[test]
fn lifecycle_native_policies_are_refused_on_the_apache_edition() {
    let db = TestDb::new("lifecycle_edition", 1);
    let scratch = Scratch::new("lifecycle_edition");
    let config = scratch.site_config(
        "[retention]\nraw_days = 30\n",
        &servers_toml(),
        &format!(
            "name = \"Keep\"\ndatabase = \"{}\"\nbanks = [{{ id = 1, racks = 1 }}]\n",
            db.databases[0]
        ),
    );
    let run = Cmd::new(Some(&config))
        .args(["migrate", "--timescale-policies"])
        .run();
    assert_eq!(run.code(), 4, "{}{}", run.stdout(), run.stderr());
    assert!(
        run.stdout().contains("Apache edition") || run.stdout().contains("apache edition"),
        "{}",
        run.stdout()
    );
    let policies = db.scalar("local", "SELECT count(*) FROM timescaledb_information.jobs WHERE proc_name IN ('policy_retention', 'policy_compression')");
    assert_eq!(policies, 0);
}

/// Retention where the sites are: raw chunks are UTC days, nightly runs
/// local days. In Asia/Seoul and America/New_York no single local-day
/// reconcile covers a chunk; the runs of consecutive days together do, and
/// the chunks past `raw_days` go on both servers.
#[test]
fn lifecycle_retention_drops_utc_chunks_reconciled_as_local_days_in_two_zones() {
    use chrono_tz::Tz;
    let zones: [Tz; 2] = [chrono_tz::Asia::Seoul, chrono_tz::America::New_York];
    // A local midnight mid-test would move every window: start after it.
    for tz in zones {
        let now = Utc::now().with_timezone(&tz);
        let next = (now.date_naive() + TimeDelta::days(1))
            .and_hms_opt(0, 0, 0)
            .unwrap();
        let left = next - now.naive_local();
        if left < TimeDelta::minutes(3) {
            std::thread::sleep((left + TimeDelta::seconds(5)).to_std().unwrap());
        }
    }
    let db = TestDb::new("lifecycle_zones", 2);
    let scratch = Scratch::new("lifecycle_zones");
    let site = |n: usize, tz: Tz| {
        format!(
            "name = \"Zone{n}\"\ndatabase = \"{}\"\ntimezone = \"{}\"\nsample_interval_secs = 10\nbanks = [{{ id = 1, racks = 1 }}]\n",
            db.databases[n],
            tz.name()
        )
    };
    let config = scratch.site_config(
        "[retention]\nraw_days = 2\n",
        &servers_toml(),
        &format!("{}[[sites]]\n{}", site(0, zones[0]), site(1, zones[1])),
    );
    let essops = |args: &[&str]| Cmd::new(Some(&config)).args(args).run();
    for (n, tz) in zones.iter().enumerate() {
        let today = Utc::now().with_timezone(tz).date_naive();
        let days: Vec<NaiveDate> = (1..=6)
            .rev()
            .map(|ago| today - TimeDelta::days(ago))
            .collect();
        // Six whole local days at 10 s, the same on both servers.
        for server in ["local", "gcp"] {
            db.execute_in(
                server,
                n,
                &format!(
                    r#"INSERT INTO rack ("TIMESTAMP", "BANK_ID", "RACK_ID", "SOC")
                       SELECT t, 1, 1, 50 FROM generate_series(
                         ('{}'::timestamp AT TIME ZONE '{tz}'), ('{today}'::timestamp AT TIME ZONE '{tz}') - interval '10 seconds', interval '10 seconds') t"#,
                    days[0],
                    tz = tz.name()
                ),
            );
        }
        let site = format!("Zone{n}");
        for day in &days {
            let day = day.to_string();
            for command in ["reconcile", "loss"] {
                let run = essops(&[command, "--site", &site, "--table", "rack", "--date", &day]);
                assert_eq!(
                    run.code(),
                    0,
                    "{command} {day}: {}{}",
                    run.stdout(),
                    run.stderr()
                );
            }
        }
        let rolled = essops(&["rollup", "--site", &site, "--table", "rack"]);
        assert_eq!(rolled.code(), 0, "{}", rolled.stderr());
        let rows: Vec<Value> = essops(&["--json", "retention", "--site", &site, "--table", "rack"])
            .expect_code(0)
            .json();
        // Chunks that end by the cutoff (local midnight two days back) and
        // lie inside the reconciled local days are dropped; the first,
        // partly before the first local day, stays.
        let midnight = |day: NaiveDate| {
            day.and_hms_opt(0, 0, 0)
                .unwrap()
                .and_local_timezone(*tz)
                .earliest()
                .unwrap()
                .with_timezone(&Utc)
        };
        let (cutoff, first) = (midnight(today - TimeDelta::days(2)), midnight(days[0]));
        for server in ["local", "gcp"] {
            let mine: Vec<&Value> = rows
                .iter()
                .filter(|r| r["kind"] == "chunk" && r["server"] == server)
                .collect();
            let mut dropped = 0;
            for r in &mine {
                let start: chrono::DateTime<Utc> =
                    r["range_start"].as_str().unwrap().parse().unwrap();
                let end: chrono::DateTime<Utc> = r["range_end"].as_str().unwrap().parse().unwrap();
                let want = if start >= first && end <= cutoff {
                    "dropped"
                } else {
                    "keep"
                };
                assert_eq!(r["verdict"], want, "{} {server}: {r}", tz.name());
                dropped += usize::from(want == "dropped");
            }
            assert!(
                dropped >= 3,
                "{} {server}: {dropped} chunks dropped: {mine:?}",
                tz.name()
            );
        }
    }
}

/// Rows that arrive between retention's judging of a chunk and its drop (a
/// late replay, a reconcile) keep the chunk: it is locked against inserts
/// and counted again in the transaction that would drop it. Here an insert
/// is held open on gcp until retention waits on its lock, then committed.
#[test]
fn lifecycle_retention_keeps_a_chunk_that_gained_rows_between_count_and_drop() {
    let db = TestDb::new("lifecycle_race", 1);
    let scratch = Scratch::new("lifecycle_race");
    let config = scratch.site_config(
        "[retention]\nraw_days = 2\n",
        &servers_toml(),
        &format!(
            "name = \"Race\"\ndatabase = \"{}\"\ntimezone = \"UTC\"\nsample_interval_secs = 10\nbanks = [{{ id = 1, racks = 1 }}]\n",
            db.databases[0]
        ),
    );
    let essops = |args: &[&str]| Cmd::new(Some(&config)).args(args).run();
    let today = Utc::now().date_naive();
    let first = today - TimeDelta::days(6);
    for server in ["local", "gcp"] {
        db.execute(
            server,
            &format!(
                r#"INSERT INTO rack ("TIMESTAMP", "BANK_ID", "RACK_ID", "SOC")
                   SELECT t, 1, 1, 50 FROM generate_series('{first} 00:00:00+00'::timestamptz, '{today} 00:00:00+00'::timestamptz - interval '10 seconds', interval '10 seconds') t"#
            ),
        );
    }
    for ago in (1..=6).rev() {
        let day = (today - TimeDelta::days(ago)).to_string();
        for command in ["reconcile", "loss"] {
            essops(&[command, "--table", "rack", "--date", &day]).expect_code(0);
        }
    }
    essops(&["rollup", "--table", "rack"]).expect_code(0);

    let rows: Vec<Value> = crate::support::pg::block_on(async {
        // A late row in the first day's chunk, its transaction held open.
        let late = db.client("gcp", &db.databases[0]).await;
        late.batch_execute(&format!(
            r#"BEGIN; INSERT INTO rack ("TIMESTAMP", "BANK_ID", "RACK_ID", "SOC") VALUES ('{first} 12:00:05+00', 1, 1, 51)"#
        ))
        .await
        .unwrap();
        let retention = Cmd::new(Some(&config))
            .args(["--json", "retention", "--table", "rack", "--server", "gcp"])
            .spawn();
        let watch = db.client("gcp", &db.databases[0]).await;
        let started = std::time::Instant::now();
        loop {
            let waiting: i64 = watch
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if waiting > 0 {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(60),
                "retention never waited on the chunk's lock"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        late.batch_execute("COMMIT").await.unwrap();
        retention.finish().json()
    });
    let chunk = |server: &str, start: NaiveDate| {
        rows.iter()
            .find(|r| {
                r["kind"] == "chunk"
                    && r["server"] == server
                    && r["range_start"]
                        .as_str()
                        .is_some_and(|s| s.starts_with(&start.to_string()))
            })
            .unwrap_or_else(|| panic!("no {server} chunk from {start}: {rows:#?}"))
    };
    let raced = chunk("gcp", first);
    assert_eq!(raced["verdict"], "keep", "{raced}");
    assert!(
        raced.to_string().contains("rows arrived meanwhile"),
        "{raced}"
    );
    assert_eq!(
        chunk("gcp", first + TimeDelta::days(1))["verdict"],
        "dropped"
    );
    // Judged again, neither copy of the first day is dropped while gcp holds
    // a row local lacks.
    let again = essops(&[
        "--json",
        "retention",
        "--table",
        "rack",
        "--server",
        "local",
    ]);
    let local = again
        .json::<Value>()
        .into_iter()
        .find(|r| {
            r["kind"] == "chunk"
                && r["range_start"]
                    .as_str()
                    .is_some_and(|s| s.starts_with(&first.to_string()))
        })
        .unwrap_or_else(|| panic!("no local chunk from {first}"));
    assert_eq!(local["verdict"], "keep", "{local}");
    assert!(local.to_string().contains("`gcp` holds"), "{local}");
    // The late row is still there, in the chunk kept.
    assert_eq!(
        db.scalar(
            "gcp",
            &format!(r#"SELECT count(*) FROM rack WHERE "TIMESTAMP" = '{first} 12:00:05+00'"#)
        ),
        1
    );
}
