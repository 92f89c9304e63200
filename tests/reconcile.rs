//! `essops reconcile` on the two real dev servers: after it, both hold
//! identical rows (compared whole, not by counts), and a re-run has nothing to do.

use std::path::PathBuf;

use serde::Deserialize;

use crate::support::pg::block_on;
use crate::support::{Cmd, Scratch, TestDb, servers_toml};

#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
struct Counts {
    missing_on_a: u64,
    missing_on_b: u64,
    copied_to_a: u64,
    copied_to_b: u64,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Row {
    Device {
        table: String,
        device: String,
        #[serde(flatten)]
        counts: Counts,
    },
    Table {
        table: String,
        server_a: String,
        dry_run: bool,
        #[serde(default)]
        values_differing: u64,
        #[serde(default)]
        columns_differing: Vec<String>,
        #[serde(default)]
        values_repaired: u64,
        #[serde(default)]
        route: Option<String>,
        #[serde(default)]
        buckets_differing: u64,
        #[serde(default)]
        keys_by_one_hash: u64,
        verified: Option<bool>,
        bytes_moved: u64,
        #[serde(flatten)]
        counts: Counts,
    },
    Failure {
        table: String,
        error: String,
    },
}

struct Setup {
    db: TestDb,
    _scratch: Scratch,
    config: PathBuf,
}

fn setup(test: &str, timezone: &str) -> Setup {
    let db = TestDb::new(test, 1);
    let scratch = Scratch::new(test);
    let config = scratch.site_config(
        "",
        &servers_toml(),
        &format!(
            "name = \"Site1\"\ndatabase = \"{}\"\ntimezone = \"{timezone}\"\nservers = [\"local\", \"gcp\"]\nbanks = [{{ id = 1, racks = 3 }}]\n",
            db.databases[0]
        ),
    );
    Setup {
        db,
        _scratch: scratch,
        config,
    }
}

impl Setup {
    fn sql(&self, server: &str, sql: &str) {
        block_on(async {
            self.db
                .client(server, &self.db.databases[0])
                .await
                .batch_execute(sql)
                .await
                .unwrap()
        });
    }

    fn scalar(&self, server: &str, sql: &str) -> i64 {
        block_on(async {
            self.db
                .client(server, &self.db.databases[0])
                .await
                .query_one(sql, &[])
                .await
                .unwrap()
                .get(0)
        })
    }

    /// Every row of `table`, whole, as text in key order: what "identical" means.
    fn rows(&self, server: &str, table: &str, key: &str) -> Vec<String> {
        block_on(async {
            let c = self.db.client(server, &self.db.databases[0]).await;
            let sql = format!("SELECT t::text FROM {table} t ORDER BY {key}");
            c.query(&sql, &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        })
    }

    /// The same 1 Hz rack and etc rows on both servers over [from, to): NULLs and JSON included.
    fn fill_both(&self, from: &str, to: &str) {
        let sql = format!(
            r#"INSERT INTO rack ("TIMESTAMP", "BANK_ID", "RACK_ID", "SOC", "SOH", "DC_VOLTAGE", "STATUS")
               SELECT t, 1, r, (extract(epoch from t)::int8 % 1000) / 10.0,
                      CASE WHEN extract(epoch from t)::int8 % 7 = 0 THEN NULL ELSE 99.5 END, 800 + r, r
                 FROM generate_series('{from}'::timestamptz, '{to}'::timestamptz - interval '1 second', interval '1 second') t,
                      unnest(ARRAY[1, 2, 3]) r;
               INSERT INTO etc ("TIMESTAMP", "AMBIENT_TEMP", "EXTRA")
               SELECT t, NULL, jsonb_build_object('door', extract(epoch from t)::int8 % 2 = 0, 'note', 'a "quoted" ''text''')
                 FROM generate_series('{from}'::timestamptz, '{to}'::timestamptz - interval '1 second', interval '1 second') t;"#
        );
        self.sql("local", &sql);
        self.sql("gcp", &sql);
    }

    fn reconcile(&self, args: &[&str], code: i32) -> Vec<Row> {
        Cmd::new(Some(&self.config))
            .args(["reconcile", "--json"])
            .args(args)
            .run()
            .expect_code(code)
            .json()
    }

    fn assert_identical(&self) {
        for (table, key) in [
            ("rack", r#""BANK_ID", "RACK_ID", "TIMESTAMP""#),
            ("etc", r#""TIMESTAMP""#),
        ] {
            let (l, g) = (self.rows("local", table, key), self.rows("gcp", table, key));
            assert_eq!(l.len(), g.len(), "{table}: row counts differ");
            assert!(l == g, "{table}: rows differ between local and gcp");
        }
    }
}

fn table_row<'a>(rows: &'a [Row], name: &str) -> (&'a Counts, bool, Option<bool>, u64) {
    rows.iter()
        .find_map(|r| match r {
            Row::Table {
                table,
                counts,
                dry_run,
                verified,
                bytes_moved,
                server_a,
                ..
            } if table == name => {
                assert_eq!(server_a, "local");
                Some((counts, *dry_run, *verified, *bytes_moved))
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no table row for {name}: {rows:?}"))
}

fn device_counts(rows: &[Row], name: &str, dev: &str) -> Option<Counts> {
    rows.iter().find_map(|r| match r {
        Row::Device {
            table,
            device,
            counts,
        } if table == name && device == dev => Some(Counts {
            missing_on_a: counts.missing_on_a,
            missing_on_b: counts.missing_on_b,
            copied_to_a: counts.copied_to_a,
            copied_to_b: counts.copied_to_b,
        }),
        _ => None,
    })
}

const DAY: (&str, &str) = ("2026-03-10 00:00:00+09", "2026-03-11 00:00:00+09");

#[test]
fn reconcile_fills_scattered_and_clustered_gaps_both_ways_then_has_nothing_to_do() {
    let s = setup("reconcile_both_ways", "Asia/Seoul");
    s.fill_both(DAY.0, DAY.1);
    // local: every 97th second of rack 1 lost (scattered); gcp: 01:00-03:00 of rack 2 lost (clustered),
    // every 1000th second of rack 3, and 10 minutes of etc.
    s.sql("local", r#"DELETE FROM rack WHERE "RACK_ID" = 1 AND extract(epoch from "TIMESTAMP")::int8 % 97 = 0"#);
    s.sql("gcp", r#"DELETE FROM rack WHERE "RACK_ID" = 2 AND "TIMESTAMP" >= '2026-03-10 01:00+09' AND "TIMESTAMP" < '2026-03-10 03:00+09'"#);
    s.sql("gcp", r#"DELETE FROM rack WHERE "RACK_ID" = 3 AND extract(epoch from "TIMESTAMP")::int8 % 1000 = 0"#);
    s.sql("gcp", r#"DELETE FROM etc WHERE "TIMESTAMP" >= '2026-03-10 12:00+09' AND "TIMESTAMP" < '2026-03-10 12:10+09'"#);
    let lost_local = s.scalar("gcp", r#"SELECT count(*) FROM rack WHERE "RACK_ID" = 1 AND extract(epoch from "TIMESTAMP")::int8 % 97 = 0"#) as u64;
    let lost_gcp_r3 = s.scalar("local", r#"SELECT count(*) FROM rack WHERE "RACK_ID" = 3 AND extract(epoch from "TIMESTAMP")::int8 % 1000 = 0"#) as u64;

    // --verify full: the whole window diffed afresh after copying.
    let rows = s.reconcile(
        &[
            "--exit-code",
            "--date",
            "2026-03-10",
            "--table",
            "rack",
            "--table",
            "etc",
            "--verify",
            "full",
        ],
        10,
    );
    assert_eq!(table_row(&rows, "rack").2, Some(true), "{rows:?}");
    assert_eq!(
        device_counts(&rows, "rack", "bank 1 / rack 1"),
        Some(Counts {
            missing_on_a: lost_local,
            missing_on_b: 0,
            copied_to_a: lost_local,
            copied_to_b: 0
        })
    );
    assert_eq!(
        device_counts(&rows, "rack", "bank 1 / rack 2"),
        Some(Counts {
            missing_on_a: 0,
            missing_on_b: 7200,
            copied_to_a: 0,
            copied_to_b: 7200
        })
    );
    assert_eq!(
        device_counts(&rows, "rack", "bank 1 / rack 3"),
        Some(Counts {
            missing_on_a: 0,
            missing_on_b: lost_gcp_r3,
            copied_to_a: 0,
            copied_to_b: lost_gcp_r3
        })
    );
    assert_eq!(
        device_counts(&rows, "etc", "site"),
        Some(Counts {
            missing_on_a: 0,
            missing_on_b: 600,
            copied_to_a: 0,
            copied_to_b: 600
        })
    );
    let (rack, dry, verified, moved) = table_row(&rows, "rack");
    assert_eq!(
        (rack.copied_to_a, rack.copied_to_b, dry, verified),
        (lost_local, 7200 + lost_gcp_r3, false, Some(true))
    );
    assert!(moved > 0);
    s.assert_identical();

    let again = s.reconcile(
        &["--date", "2026-03-10", "--table", "rack", "--table", "etc"],
        0,
    );
    let (rack, _, verified, moved) = table_row(&again, "rack");
    assert_eq!((rack, verified, moved), (&Counts::default(), None, 0));
    assert!(again.iter().all(|r| !matches!(r, Row::Device { .. })));
    // The clean re-run: the first quarter hour's buckets hashed, the other
    // 23¾ hours settled by one hash of all their keys (5 racks at 1 Hz here).
    let route = again.iter().find_map(|r| match r {
        Row::Table {
            table,
            route,
            buckets_differing,
            keys_by_one_hash,
            ..
        } if table == "rack" => Some((route.clone(), *buckets_differing, *keys_by_one_hash)),
        _ => None,
    });
    let rack_rows = s.scalar("local", r#"SELECT count(*) FROM rack WHERE "TIMESTAMP" >= '2026-03-10 00:15+09' AND "TIMESTAMP" < '2026-03-11 00:00+09'"#) as u64;
    assert_eq!(route, Some((Some("hashes".into()), 0, rack_rows)));
}

#[test]
fn reconcile_dry_run_reports_and_changes_nothing() {
    let s = setup("reconcile_dry_run", "Asia/Seoul");
    s.fill_both(DAY.0, "2026-03-10 06:00:00+09");
    s.sql(
        "gcp",
        r#"DELETE FROM rack WHERE "RACK_ID" = 2 AND "TIMESTAMP" < '2026-03-10 00:30+09'"#,
    );
    let before = s.scalar("gcp", "SELECT count(*) FROM rack");
    let rows = s.reconcile(
        &[
            "--exit-code",
            "--date",
            "2026-03-10",
            "--table",
            "rack",
            "--dry-run",
        ],
        10,
    );
    let (rack, dry, verified, moved) = table_row(&rows, "rack");
    assert_eq!(
        (rack.missing_on_b, rack.copied_to_b, dry, verified, moved),
        (1800, 0, true, None, 0)
    );
    assert_eq!(s.scalar("gcp", "SELECT count(*) FROM rack"), before);
}

#[test]
fn reconcile_target_without_unique_index_gets_no_duplicates() {
    let s = setup("reconcile_no_unique", "Asia/Seoul");
    s.fill_both(DAY.0, "2026-03-10 01:00:00+09");
    // An older deployment: no natural-key index on gcp, which already holds one row twice.
    s.sql("gcp", "DROP INDEX rack_natural_key");
    s.sql("gcp", r#"INSERT INTO rack SELECT * FROM rack WHERE "RACK_ID" = 1 AND "TIMESTAMP" = '2026-03-10 00:00:10+09'"#);
    s.sql("gcp", r#"DELETE FROM rack WHERE "RACK_ID" = 1 AND "TIMESTAMP" > '2026-03-10 00:00:10+09' AND "TIMESTAMP" < '2026-03-10 00:01:00+09'"#);
    let rows = s.reconcile(
        &[
            "--exit-code",
            "--date",
            "2026-03-10",
            "--table",
            "rack",
            "--direction",
            "to-gcp",
        ],
        10,
    );
    assert_eq!(table_row(&rows, "rack").0.copied_to_b, 49);
    let dups = s.scalar(
        "gcp",
        r#"SELECT count(*) - count(DISTINCT ("BANK_ID", "RACK_ID", "TIMESTAMP")) FROM rack"#,
    );
    assert_eq!(dups, 1, "only the duplicate that was already there");
    s.reconcile(&["--date", "2026-03-10", "--table", "rack"], 0);
    // The other way, gcp is a source without a unique index: the sample it
    // holds twice reaches local once.
    let twice = r#""RACK_ID" = 1 AND "TIMESTAMP" = '2026-03-10 00:00:10+09'"#;
    s.sql("local", &format!("DELETE FROM rack WHERE {twice}"));
    let rows = s.reconcile(
        &["--exit-code", "--date", "2026-03-10", "--table", "rack"],
        10,
    );
    assert_eq!(table_row(&rows, "rack").0.copied_to_a, 1);
    assert_eq!(
        s.scalar("local", &format!("SELECT count(*) FROM rack WHERE {twice}")),
        1
    );
}

#[test]
fn reconcile_dst_day_covers_25_hours() {
    let s = setup("reconcile_dst", "America/New_York");
    s.fill_both("2026-11-01 00:00:00-04", "2026-11-02 00:00:00-05");
    // The repeated 01:00-02:00 hour, second pass (EST), lost on local.
    s.sql("local", r#"DELETE FROM rack WHERE "RACK_ID" = 3 AND "TIMESTAMP" >= '2026-11-01 01:00:00-05' AND "TIMESTAMP" < '2026-11-01 02:00:00-05'"#);
    let rows = s.reconcile(
        &["--exit-code", "--date", "2026-11-01", "--table", "rack"],
        10,
    );
    assert_eq!(table_row(&rows, "rack").0.copied_to_a, 3600);
    assert_eq!(
        s.scalar("local", r#"SELECT count(*) FROM rack WHERE "RACK_ID" = 3"#),
        25 * 3600
    );
    s.assert_identical();
}

#[test]
fn reconcile_ignores_rows_younger_than_min_age() {
    let s = setup("reconcile_min_age", "UTC");
    let now = chrono::Utc::now();
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let (from, to) = (
        fmt(now - chrono::Duration::minutes(30)),
        fmt(now - chrono::Duration::seconds(1)),
    );
    s.sql("local", &format!(r#"INSERT INTO rack ("TIMESTAMP", "BANK_ID", "RACK_ID") SELECT t, 1, 1 FROM generate_series('{from}'::timestamptz, '{to}'::timestamptz, interval '1 second') t"#));
    let before = chrono::Utc::now();
    let rows = s.reconcile(
        &[
            "--exit-code",
            "--from",
            &from,
            "--to",
            &fmt(now + chrono::Duration::hours(1)),
            "--table",
            "rack",
            "--min-age",
            "10m",
        ],
        10,
    );
    let after = chrono::Utc::now();
    // The cut is 10 minutes before the moment reconcile started, which lies
    // between `before` and `after` however slow the machine is.
    let older_than = |t: chrono::DateTime<chrono::Utc>| {
        s.scalar(
            "local",
            &format!(
                r#"SELECT count(*) FROM rack WHERE "TIMESTAMP" < '{}'::timestamptz - interval '10 minutes'"#,
                fmt(t)
            ),
        )
    };
    let copied = table_row(&rows, "rack").0.copied_to_b as i64;
    let (least, most) = (older_than(before), older_than(after) + 1);
    assert!(least >= 1190, "the window had too few old rows: {least}");
    assert!(
        (least..=most).contains(&copied),
        "copied {copied}, expected {least}..={most}"
    );
    assert_eq!(s.scalar("gcp", "SELECT count(*) FROM rack"), copied);
}

#[test]
fn reconcile_column_type_mismatch_names_both_types() {
    let s = setup("reconcile_type_mismatch", "Asia/Seoul");
    s.sql(
        "gcp",
        r#"ALTER TABLE pcs ALTER COLUMN "AC_FREQUENCY" TYPE double precision"#,
    );
    let rows = s.reconcile(
        &["--date", "2026-03-10", "--table", "pcs", "--table", "bank"],
        4,
    );
    let error = rows.iter().find_map(|r| match r {
        Row::Failure { table, error } if table == "pcs" => Some(error.clone()),
        _ => None,
    });
    assert_eq!(
        error.as_deref(),
        Some(
            "table `pcs`, column `AC_FREQUENCY`: type `real` on server `local` but `double precision` on server `gcp`; make them equal before reconciling"
        )
    );
    assert_eq!(
        table_row(&rows, "bank").0,
        &Counts::default(),
        "the other table is still reconciled"
    );
}

#[test]
fn reconcile_rejects_bad_arguments() {
    let run = Cmd::new(None)
        .args(["reconcile", "--direction", "to-aws"])
        .run()
        .expect_code(2);
    assert!(
        run.stderr()
            .contains("--direction `to-aws`: use `both` or `to-SERVER`"),
        "{}",
        run.stderr()
    );
    let run = Cmd::new(None)
        .args(["reconcile", "--min-age", "5 minutes"])
        .run()
        .expect_code(2);
    assert!(
        run.stderr()
            .contains("--min-age: `5 minutes` has an unknown unit"),
        "{}",
        run.stderr()
    );
}

#[test]
fn reconcile_and_loss_survive_null_and_oversized_device_ids() {
    // A schema essops did not create: nullable int4 ids, no unique key.
    let s = setup("reconcile_odd_ids", "Asia/Seoul");
    for server in ["local", "gcp"] {
        s.sql(
            server,
            r#"DROP TABLE pcs;
               CREATE TABLE pcs ("TIMESTAMP" timestamptz NOT NULL, "PCS_ID" integer, "AC_FREQUENCY" real);
               INSERT INTO pcs SELECT t, 1, 60 FROM generate_series('2026-03-10 00:00:00+09'::timestamptz, '2026-03-10 00:09:59+09', interval '1 second') t;
               INSERT INTO pcs SELECT t, NULL, 60 FROM generate_series('2026-03-10 01:00:00+09'::timestamptz, '2026-03-10 01:00:09+09', interval '1 second') t;"#,
        );
    }
    s.sql(
        "gcp",
        r#"DELETE FROM pcs WHERE "TIMESTAMP" < '2026-03-10 00:00:05+09'"#,
    );
    // NULL ids: counted, neither compared nor copied; the rest is repaired.
    let rows = s.reconcile(
        &["--exit-code", "--date", "2026-03-10", "--table", "pcs"],
        10,
    );
    let (counts, ..) = table_row(&rows, "pcs");
    assert_eq!(counts.copied_to_b, 5, "{rows:?}");
    let run = Cmd::new(Some(&s.config))
        .args([
            "--json",
            "loss",
            "--date",
            "2026-03-10",
            "--table",
            "pcs",
            "--server",
            "local",
        ])
        .run();
    assert!(
        run.stderr().contains("NULL device id")
            && run.stdout().contains("\"rows_without_device\":10"),
        "{}\n{}",
        run.stdout(),
        run.stderr()
    );
    // An id outside smallint is refused by name, not wrapped.
    s.sql(
        "local",
        r#"INSERT INTO pcs VALUES ('2026-03-10 02:00:00+09', 40000, 60)"#,
    );
    let rows = s.reconcile(&["--date", "2026-03-10", "--table", "pcs"], 4);
    let error = rows.iter().find_map(|r| match r {
        Row::Failure { error, .. } => Some(error.clone()),
        _ => None,
    });
    assert!(
        error
            .as_deref()
            .is_some_and(|e| e.contains("device id 40000 is outside")),
        "{rows:?}"
    );
}

#[test]
fn reconcile_values_finds_the_planted_rows_and_prefer_repairs_exactly_those() {
    let s = setup("reconcile_values", "Asia/Seoul");
    s.fill_both(DAY.0, "2026-03-10 01:00:00+09");
    // 50 rows whose SOC differs on gcp, and 7 rows gcp lacks.
    s.sql(
        "gcp",
        r#"UPDATE rack SET "SOC" = "SOC" + 1 WHERE "RACK_ID" = 2 AND extract(epoch from "TIMESTAMP")::int8 % 72 = 0;
           DELETE FROM rack WHERE "RACK_ID" = 3 AND "TIMESTAMP" < '2026-03-10 00:00:07+09'"#,
    );
    let planted = s.scalar(
        "gcp",
        r#"SELECT count(*) FROM rack WHERE "RACK_ID" = 2 AND extract(epoch from "TIMESTAMP")::int8 % 72 = 0"#,
    );
    assert_eq!(planted, 50);
    let args = [
        "--exit-code",
        "--date",
        "2026-03-10",
        "--table",
        "rack",
        "--compare",
        "values",
    ];
    let differing = |rows: &[Row]| -> (u64, Vec<String>, u64) {
        rows.iter()
            .find_map(|r| match r {
                Row::Table {
                    values_differing,
                    columns_differing,
                    values_repaired,
                    ..
                } => Some((
                    *values_differing,
                    columns_differing.clone(),
                    *values_repaired,
                )),
                _ => None,
            })
            .unwrap()
    };
    // Found and reported, never overwritten without --prefer.
    let rows = s.reconcile(&args, 10);
    assert_eq!(differing(&rows), (50, vec!["SOC".to_string()], 0));
    assert_eq!(table_row(&rows, "rack").0.copied_to_b, 7);
    assert_eq!(
        s.scalar("gcp", r#"SELECT count(*) FROM rack WHERE "RACK_ID" = 2 AND extract(epoch from "TIMESTAMP")::int8 % 72 = 0 AND abs("SOC" - ((extract(epoch from "TIMESTAMP")::int8 % 1000) / 10.0 + 1)) < 0.01"#),
        50
    );
    // --prefer local repairs exactly those 50, then the values agree.
    let mut prefer = args.to_vec();
    prefer.extend(["--prefer", "local"]);
    let rows = s.reconcile(&prefer, 10);
    assert_eq!(differing(&rows), (50, vec!["SOC".to_string()], 50));
    s.assert_identical();
    let run = Cmd::new(Some(&s.config))
        .args(["reconcile"])
        .args(args)
        .run()
        .expect_code(0);
    assert!(run.stdout().contains("values agree"), "{}", run.stdout());
    // --prefer needs --compare values, and one of the pair.
    Cmd::new(Some(&s.config))
        .args(["reconcile", "--date", "2026-03-10", "--prefer", "local"])
        .run()
        .expect_code(2);
    let run = Cmd::new(Some(&s.config))
        .args([
            "reconcile",
            "--date",
            "2026-03-10",
            "--compare",
            "values",
            "--prefer",
            "nowhere",
        ])
        .run()
        .expect_code(2);
    assert!(
        run.stderr().contains("--prefer `nowhere`"),
        "{}",
        run.stderr()
    );
}

#[test]
fn reconcile_over_a_slow_link_fills_both_sides() {
    // gcp behind a relay that adds 15 ms each way: a 30 ms round trip.
    let s = setup("reconcile_slow_link", "Asia/Seoul");
    s.fill_both(DAY.0, "2026-03-10 02:00:00+09");
    s.sql(
        "local",
        r#"DELETE FROM rack WHERE extract(epoch from "TIMESTAMP")::int8 % 50 = 0"#,
    );
    s.sql(
        "gcp",
        r#"DELETE FROM rack WHERE extract(epoch from "TIMESTAMP")::int8 % 50 = 25"#,
    );
    let port = crate::support::free_port();
    let _relay = Cmd::new(None)
        .args([
            "relay",
            "--port",
            &port.to_string(),
            "--to",
            "127.0.0.1:25433",
            "--delay",
            "15ms",
        ])
        .spawn();
    crate::support::wait_for_port(port);
    let slow = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("localhost:25433", &format!("localhost:{port}"));
    let slow_config = s.config.with_file_name("slow.toml");
    std::fs::write(&slow_config, slow).unwrap();
    let rows: Vec<Row> = Cmd::new(Some(&slow_config))
        .args([
            "reconcile",
            "--json",
            "--date",
            "2026-03-10",
            "--table",
            "rack",
        ])
        .run()
        // Copied what each side lacked: the job done (10 only with --exit-code).
        .expect_code(0)
        .json();
    let (counts, _, verified, _) = table_row(&rows, "rack");
    assert_eq!(
        (counts.copied_to_a, counts.copied_to_b),
        (432, 432),
        "{rows:?}"
    );
    assert_eq!(verified, Some(true));
    s.assert_identical();
}
