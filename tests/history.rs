//! The run history in the `essops` schema: loss per device and whole local
//! day (replaced on a re-run, nothing for a partial window), reconcile runs on
//! both servers, and an upgrade of a database migrated before it existed.

use std::path::PathBuf;

use serde_json::Value;

use crate::support::{Cmd, Scratch, TestDb, servers_toml};

struct Setup {
    db: TestDb,
    config: PathBuf,
    _scratch: Scratch,
}

/// A migrated site (Asia/Seoul) with one bank of two racks, on both servers.
fn setup(test: &str) -> Setup {
    let db = TestDb::new(test, 1);
    let scratch = Scratch::new(test);
    let config = scratch.site_config(
        "[history]\nkeep_days = 30\n",
        &servers_toml(),
        &format!(
            "name = \"Hist\"\ndatabase = \"{}\"\ntimezone = \"Asia/Seoul\"\nbanks = [{{ id = 1, racks = 2 }}]\npcs = [1]\n",
            db.databases[0]
        ),
    );
    Setup {
        db,
        config,
        _scratch: scratch,
    }
}

impl Setup {
    fn essops(&self, args: &[&str]) -> crate::support::cmd::Run {
        Cmd::new(Some(&self.config)).args(args).run()
    }

    /// Rack `r` of bank 1 at 1 Hz over `[from, to)` (Seoul times), on `server`.
    fn racks(&self, server: &str, rack: i16, from: &str, to: &str) {
        self.db.execute(
            server,
            &format!(
                r#"INSERT INTO rack ("TIMESTAMP", "BANK_ID", "RACK_ID", "SOC")
                   SELECT t, 1, {rack}, 50 FROM generate_series('{from}+09'::timestamptz, '{to}+09'::timestamptz - interval '1 second', interval '1 second') t"#
            ),
        );
    }

    /// (device, day, configured, expected, observed, grade) of the rack history on `server`.
    fn loss_days(&self, server: &str) -> Vec<(String, String, bool, i64, i64, String)> {
        self.db
            .rows(
                server,
                "SELECT device, day::text, configured, expected, observed, grade FROM essops.loss_daily
                  WHERE table_name = 'rack' ORDER BY device, day",
            )
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
            .collect()
    }

    fn newest_measure(&self, server: &str) -> String {
        self.db.rows(
            server,
            "SELECT coalesce(max(measured_at)::text, '') FROM essops.loss_daily",
        )[0]
        .get(0)
    }
}

#[test]
fn history_loss_records_whole_local_days_and_a_rerun_replaces_them() {
    let s = setup("hist_loss");
    // Rack 1: both days whole. Rack 2: the first day only. Rack 9, which the
    // config does not list: one hour of the first day.
    s.racks("local", 1, "2026-03-09 00:00:00", "2026-03-11 00:00:00");
    s.racks("local", 2, "2026-03-09 00:00:00", "2026-03-10 00:00:00");
    s.racks("local", 9, "2026-03-09 10:00:00", "2026-03-09 11:00:00");
    let window = [
        "--json",
        "loss",
        "--server",
        "local",
        "--table",
        "rack",
        "--from",
        "2026-03-09T00:00:00",
        "--to",
        "2026-03-11T00:00:00",
    ];
    let run = s.essops(&window);
    assert_eq!(run.code(), 11, "{}", run.stderr());
    let rows: Vec<Value> = run.json();
    let rack9 = rows
        .iter()
        .find(|r| r["device"] == "bank 1 / rack 9")
        .expect("the unlisted rack is reported");
    // Counted over its one day with samples, not the whole window.
    assert_eq!(
        (
            rack9["configured"].as_bool(),
            rack9["expected"].as_i64(),
            rack9["observed"].as_i64()
        ),
        (Some(false), Some(86_400), Some(3_600)),
        "{rack9}"
    );
    let days = s.loss_days("local");
    let want = |d: &str, day: &str, conf: bool, obs: i64, grade: &str| {
        (
            d.to_string(),
            day.to_string(),
            conf,
            86_400,
            obs,
            grade.to_string(),
        )
    };
    assert_eq!(
        days,
        [
            want("bank 1 / rack 1", "2026-03-09", true, 86_400, "info"),
            want("bank 1 / rack 1", "2026-03-10", true, 86_400, "info"),
            want("bank 1 / rack 2", "2026-03-09", true, 86_400, "info"),
            want("bank 1 / rack 2", "2026-03-10", true, 0, "critical"),
            want("bank 1 / rack 9", "2026-03-09", false, 3_600, "critical"),
        ]
    );
    assert!(
        s.db.rows("gcp", "SELECT 1 FROM essops.loss_daily")
            .is_empty(),
        "loss of local was written to gcp"
    );
    let first = s.newest_measure("local");

    // A re-run replaces the days; it never adds a second set.
    s.essops(&window);
    assert_eq!(s.loss_days("local"), days);
    let second = s.newest_measure("local");
    assert!(second > first, "{first} then {second}");

    // A window of no whole local day records nothing.
    s.essops(&[
        "loss",
        "--server",
        "local",
        "--table",
        "rack",
        "--from",
        "2026-03-09T12:00:00",
        "--to",
        "2026-03-10T12:00:00",
    ]);
    assert_eq!(s.loss_days("local"), days);
    assert_eq!(s.newest_measure("local"), second);

    // The per-table view sums the devices of a day.
    let view = s.db.rows(
        "local",
        "SELECT devices, expected, missing FROM essops.loss_daily_tables WHERE table_name = 'rack' AND day = '2026-03-10'",
    );
    assert_eq!(
        (
            view[0].get::<_, i64>(0),
            view[0].get::<_, i64>(1),
            view[0].get::<_, i64>(2)
        ),
        (2, 172_800, 86_400)
    );
}

#[test]
fn history_reconcile_run_is_recorded_on_both_servers() {
    let s = setup("hist_reconcile");
    s.racks("local", 1, "2026-03-09 00:00:00", "2026-03-09 02:00:00");
    // History older than keep_days (30) is pruned by reconcile, on both servers.
    for server in ["local", "gcp"] {
        s.db.execute(
            server,
            "INSERT INTO essops.ingest_events (site, devices, host, at, event, detail)
             VALUES ('Hist', 'all', 'h', now() - interval '31 days', 'breaker_opened', 'old'),
                    ('Hist', 'all', 'h', now() - interval '29 days', 'breaker_opened', 'kept')",
        );
    }
    // It copied what one server lacked: the job done, exit 0 (10 only with --exit-code).
    let run = s.essops(&["reconcile", "--date", "2026-03-09", "--table", "rack"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(run.stdout().contains("copied"), "{}", run.stdout());
    for server in ["local", "gcp"] {
        let rows = s.db.rows(
            server,
            "SELECT site, table_name, server_a, server_b, copied_to_a, copied_to_b, outcome, dry_run,
                    window_start = '2026-03-09 00:00:00+09' FROM essops.reconcile_runs",
        );
        assert_eq!(rows.len(), 1, "{server}");
        let r = &rows[0];
        assert_eq!(
            (
                r.get::<_, String>(0),
                r.get::<_, String>(1),
                r.get::<_, String>(2),
                r.get::<_, String>(3),
                r.get::<_, i64>(4),
                r.get::<_, i64>(5),
                r.get::<_, String>(6),
                r.get::<_, bool>(7),
                r.get::<_, bool>(8)
            ),
            (
                "Hist".into(),
                "rack".into(),
                "local".into(),
                "gcp".into(),
                0,
                7_200,
                "ok".into(),
                false,
                true
            ),
            "{server}"
        );
        let details: Vec<String> =
            s.db.rows(server, "SELECT detail FROM essops.ingest_events")
                .iter()
                .map(|r| r.get(0))
                .collect();
        assert_eq!(details, ["kept"], "{server}");
    }
}

#[test]
fn history_migrate_upgrades_a_database_migrated_before_the_history() {
    let s = setup("hist_upgrade");
    // As a database migrated by a version without the history looks.
    s.db.execute(
        "local",
        "DROP SCHEMA essops CASCADE; DELETE FROM _sqlx_migrations WHERE version = 2;",
    );
    s.racks("local", 1, "2026-03-09 00:00:00", "2026-03-09 00:01:00");
    let run = s.essops(&["--json", "migrate", "--server", "local"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let rows: Vec<Value> = run.json();
    assert_eq!(rows[0]["applied"], serde_json::json!([2]), "{rows:?}");
    assert_eq!(
        s.db.scalar("local", "SELECT count(*) FROM rack"),
        60,
        "the data survived"
    );
    assert_eq!(
        s.db.scalar(
            "local",
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'essops'"
        ),
        5,
        "loss_daily, loss_daily_tables, reconcile_runs, ingest_minutes, ingest_events"
    );
    let again: Vec<Value> = s.essops(&["--json", "migrate", "--server", "local"]).json();
    assert_eq!(again[0]["status"], "up_to_date", "{again:?}");
}
