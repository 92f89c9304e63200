//! `essops migrate` against the real dev servers: the catalog is checked, not just exit codes.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::support::pg::block_on;
use crate::support::{Cmd, Scratch, TestDb, servers_toml};

#[derive(Debug, Deserialize)]
struct Row {
    server: String,
    site: String,
    database: String,
    status: String,
    database_created: bool,
    applied: Vec<i64>,
    error: Option<String>,
}

/// A config with `n` sites whose databases are the test's own.
fn config_for(scratch: &Scratch, db: &TestDb, extra_servers: &str) -> std::path::PathBuf {
    let mut text = format!(
        "log_dir = \"{}\"\n{}{extra_servers}",
        scratch.path.join("logs").display(),
        servers_toml()
    );
    for (i, name) in db.databases.iter().enumerate() {
        text.push_str(&format!(
            "[[sites]]\nname = \"Site{}\"\ndatabase = \"{name}\"\nbanks = [{{ id = 1, racks = 3 }}]\n",
            i + 1
        ));
    }
    scratch.write("sites.toml", &text)
}

#[derive(Debug, PartialEq, Eq)]
struct Hypertable {
    table: String,
    interval: String,
    unique_key: Vec<String>,
}

/// What the catalog says about the ESS tables in `database` on `server`.
fn catalog(db: &TestDb, server: &str, database: &str) -> Vec<Hypertable> {
    block_on(async {
        let c = db.client(server, database).await;
        let rows = c
            .query(
                "SELECT d.hypertable_name::text, d.time_interval::text,
                        (SELECT array_agg(a.attname::text ORDER BY k.ord)
                           FROM pg_index i
                           JOIN pg_class ic ON ic.oid = i.indexrelid
                           CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
                           JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                          WHERE i.indrelid = format('public.%I', d.hypertable_name)::regclass
                            AND i.indisunique AND ic.relname = d.hypertable_name || '_natural_key')
                   FROM timescaledb_information.dimensions d
                  WHERE d.column_name = 'TIMESTAMP'
                  ORDER BY 1",
                &[],
            )
            .await
            .unwrap();
        rows.iter()
            .map(|r| Hypertable {
                table: r.get(0),
                interval: r.get(1),
                unique_key: r.get::<_, Option<Vec<String>>>(2).unwrap_or_default(),
            })
            .collect()
    })
}

fn key(cols: &[&str]) -> Vec<String> {
    cols.iter().map(|c| c.to_string()).collect()
}

#[test]
fn migrate_creates_hypertables_with_unique_natural_keys_and_rerun_changes_nothing() {
    let db = TestDb::new("migrate_creates", 2);
    let scratch = Scratch::new("migrate_creates");
    let config = config_for(&scratch, &db, "");

    let rows: Vec<Row> = Cmd::new(Some(&config))
        .args(["migrate", "--create-database", "--json"])
        .run()
        .expect_code(0)
        .json();
    assert_eq!(rows.len(), 4, "2 sites x 2 servers");
    for r in &rows {
        assert_eq!(
            (r.status.as_str(), r.database_created, r.applied.as_slice()),
            ("migrated", true, &[1, 2, 3, 4, 5, 6, 7, 8][..]),
            "{r:?}"
        );
    }

    let day = "1 day".to_string();
    let expected = vec![
        Hypertable {
            table: "bank".into(),
            interval: day.clone(),
            unique_key: key(&["BANK_ID", "TIMESTAMP"]),
        },
        Hypertable {
            table: "etc".into(),
            interval: day.clone(),
            unique_key: key(&["TIMESTAMP"]),
        },
        Hypertable {
            table: "pcs".into(),
            interval: day.clone(),
            unique_key: key(&["PCS_ID", "TIMESTAMP"]),
        },
        Hypertable {
            table: "rack".into(),
            interval: day,
            unique_key: key(&["BANK_ID", "RACK_ID", "TIMESTAMP"]),
        },
    ];
    for server in ["local", "gcp"] {
        for database in &db.databases {
            assert_eq!(
                catalog(&db, server, database),
                expected,
                "{server}/{database}"
            );
        }
    }

    let again = Cmd::new(Some(&config))
        .args(["migrate", "--json"])
        .run()
        .expect_code(0);
    let again: Vec<Row> = again.json();
    assert!(
        again
            .iter()
            .all(|r| r.status == "up_to_date" && r.applied.is_empty() && !r.database_created),
        "{again:?}"
    );
    let table = Cmd::new(Some(&config))
        .args(["migrate"])
        .run()
        .expect_code(0);
    assert!(
        table
            .stdout()
            .ends_with("no change: all 4 database(s) are up to date\n"),
        "{}",
        table.stdout()
    );
}

#[test]
fn migrate_rejects_a_second_copy_of_a_sample() {
    let db = TestDb::new("migrate_unique", 1);
    let scratch = Scratch::new("migrate_unique");
    let config = config_for(&scratch, &db, "");
    Cmd::new(Some(&config))
        .args(["migrate", "--create-database", "--server", "local"])
        .run()
        .expect_code(0);
    block_on(async {
        let c = db.client("local", &db.databases[0]).await;
        let insert = r#"INSERT INTO rack ("TIMESTAMP", "BANK_ID", "RACK_ID", "SOC") VALUES ('2026-01-01 00:00:00+09', 1, 2, 50)"#;
        c.batch_execute(insert).await.unwrap();
        let err = c.batch_execute(insert).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
        );
    });
}

#[test]
fn migrate_reports_a_down_server_by_name_and_migrates_the_others() {
    let db = TestDb::new("migrate_down", 1);
    let scratch = Scratch::new("migrate_down");
    // Port 1 on loopback: nothing listens there, so the connection is refused.
    let down = "[servers.offsite]\nurl = \"postgres://essops@127.0.0.1:1\"\npassword_env = \"ESSOPS_IT_OFFSITE_PW\"\n";
    let config = config_for(&scratch, &db, down);
    let run = Cmd::new(Some(&config))
        .env("ESSOPS_IT_OFFSITE_PW", "unused")
        .args(["migrate", "--create-database", "--json"])
        .run()
        .expect_code(4);
    let by_server: BTreeMap<String, Row> = run
        .json::<Row>()
        .into_iter()
        .map(|r| (r.server.clone(), r))
        .collect();
    assert_eq!(by_server["local"].status, "migrated");
    assert_eq!(by_server["gcp"].status, "migrated");
    let offsite = &by_server["offsite"];
    assert_eq!(offsite.status, "failed");
    let error = offsite.error.as_deref().unwrap();
    assert!(
        error.starts_with("server `offsite` (127.0.0.1:1) is unreachable: "),
        "{error}"
    );
    assert!(
        run.stderr()
            .contains("server `offsite` (127.0.0.1:1) is unreachable"),
        "{}",
        run.stderr()
    );
}

#[test]
fn migrate_without_create_database_names_the_missing_database() {
    let db = TestDb::new("migrate_missing_db", 1);
    let scratch = Scratch::new("migrate_missing_db");
    let config = config_for(&scratch, &db, "");
    let run = Cmd::new(Some(&config))
        .args(["migrate", "--server", "gcp", "--json"])
        .run()
        .expect_code(4);
    let rows: Vec<Row> = run.json();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0].error.as_deref(),
        Some(format!("server `gcp`: database `{}` does not exist; run `essops migrate --create-database` or create it", db.databases[0]).as_str())
    );
    assert!(!db.exists("gcp", &db.databases[0]));
}

#[test]
fn migrate_dry_run_changes_nothing() {
    let db = TestDb::new("migrate_dry_run", 1);
    let scratch = Scratch::new("migrate_dry_run");
    let config = config_for(&scratch, &db, "");
    let rows: Vec<Row> = Cmd::new(Some(&config))
        .args(["migrate", "--create-database", "--dry-run", "--json"])
        .run()
        .expect_code(0)
        .json();
    assert_eq!(
        rows.iter().map(|r| r.status.as_str()).collect::<Vec<_>>(),
        ["planned", "planned"]
    );
    assert_eq!(rows[0].site, "Site1");
    assert_eq!(rows[0].database, db.databases[0]);
    assert!(!db.exists("local", &db.databases[0]) && !db.exists("gcp", &db.databases[0]));
}

#[test]
fn migrate_concurrent_runs_both_succeed_and_apply_once() {
    let db = TestDb::new("migrate_concurrent", 1);
    let scratch = Scratch::new("migrate_concurrent");
    let config = config_for(&scratch, &db, "");
    // Create the databases first so only the migrations race.
    block_on(async {
        for server in ["local", "gcp"] {
            let c = db.client(server, "postgres").await;
            c.batch_execute(&format!(
                "CREATE DATABASE {}",
                essops::db::quote_ident(&db.databases[0])
            ))
            .await
            .unwrap();
        }
    });
    let spawn = || {
        let config = config.clone();
        std::thread::spawn(move || {
            Cmd::new(Some(&config))
                .args(["migrate", "--json"])
                .run()
                .expect_code(0)
                .json::<Row>()
        })
    };
    let (a, b) = (spawn(), spawn());
    let mut applied: Vec<i64> = a
        .join()
        .unwrap()
        .into_iter()
        .chain(b.join().unwrap())
        .flat_map(|r| r.applied)
        .collect();
    applied.sort();
    assert_eq!(
        applied,
        [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8],
        "each server applies each version exactly once across both runs"
    );
}

#[test]
fn migrate_writes_json_log_lines_to_the_site_file() {
    let db = TestDb::new("migrate_logs", 1);
    let scratch = Scratch::new("migrate_logs");
    let config = config_for(&scratch, &db, "");
    Cmd::new(Some(&config))
        .args(["migrate", "--create-database", "--quiet"])
        .run()
        .expect_code(0);
    let logs = scratch.path.join("logs");
    let file = std::fs::read_dir(&logs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("Site1.")
        })
        .expect("a Site1 log file");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut servers: Vec<&str> = lines
        .iter()
        .filter(|l| l["message"] == "migrated")
        .map(|l| {
            assert_eq!(
                (l["level"].as_str(), l["site"].as_str()),
                (Some("info"), Some("Site1"))
            );
            l["server"].as_str().unwrap()
        })
        .collect();
    servers.sort();
    assert_eq!(servers, ["gcp", "local"]);
}
