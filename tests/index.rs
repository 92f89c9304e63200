//! `essops index` on real TimescaleDB: every chunk indexed and un-indexed,
//! hostile names, a recommendation from a recorded workload whose gain is
//! real, and the wizard in a real pseudo-terminal (including cancel).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::pg::block_on;
use crate::support::{Cmd, Scratch, TestDb, server_toml};

struct Setup {
    db: TestDb,
    _scratch: Scratch,
    config: PathBuf,
    site: String,
}

/// A site with 6 hours of 1 Hz rack rows for 2 banks x 10 racks, in 1-hour chunks.
fn setup(test: &str) -> Setup {
    let db = TestDb::on(test, 1, &server_toml("local", "local"));
    let scratch = Scratch::new(test);
    let site = format!("Idx_{test}");
    let config = scratch.site_config(
        "",
        &server_toml("local", "local"),
        &format!("name = \"{site}\"\ndatabase = \"{}\"\nbanks = [{{ id = 1, racks = 10 }}, {{ id = 2, racks = 10 }}]\n", db.databases[0]),
    );
    let s = Setup {
        db,
        _scratch: scratch,
        config,
        site,
    };
    s.db.execute("local", 
        "SELECT set_chunk_time_interval('rack', INTERVAL '1 hour');
         INSERT INTO rack (\"TIMESTAMP\", \"BANK_ID\", \"RACK_ID\", \"SOC\", \"MAX_CELL_TEMP\")
         SELECT t, b, r, 50 + r, 30 FROM generate_series(date_trunc('hour', now()) - interval '6 hours', date_trunc('hour', now()) - interval '1 second', interval '1 second') t,
                generate_series(1, 2) b, generate_series(1, 10) r;
         ANALYZE rack;",
    );
    s
}

impl Setup {
    fn scalar(&self, sql: &str) -> i64 {
        self.db.scalar("local", sql)
    }

    fn index(&self, args: &[&str]) -> crate::support::cmd::Run {
        Cmd::new(Some(&self.config))
            .args(["--json", "index"])
            .args(args)
            .args(["--site", &self.site])
            .run()
    }

    fn chunk_indexes(&self, name: &str) -> i64 {
        self.scalar(&format!(
            "SELECT count(*) FROM _timescaledb_catalog.chunk_index WHERE hypertable_index_name = '{}'",
            name.replace('\'', "''")
        ))
    }
}

const DASHBOARD_QUERY: &str = "SELECT \"TIMESTAMP\", \"SOC\" FROM rack WHERE \"RACK_ID\" = $1 AND \"TIMESTAMP\" >= $2 AND \"TIMESTAMP\" < $3";

#[test]
fn index_create_and_drop_reach_every_chunk_and_hostile_names_stay_names() {
    let s = setup("idx_chunks");
    let chunks = s.scalar(
        "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'rack'",
    );
    assert!(chunks >= 6, "{chunks} chunks");
    let run = s.index(&["create", "rack", "RACK_ID", "TIMESTAMP"]);
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(run.json::<Value>()[0]["status"], "created");
    assert_eq!(s.chunk_indexes("rack_rack_id_timestamp_idx"), chunks);
    // Again: the same columns exist, nothing is done.
    let again = s.index(&["create", "rack", "RACK_ID", "TIMESTAMP"]);
    assert_eq!(again.json::<Value>()[0]["status"], "exists");
    let listed: Vec<Value> = s.index(&["list", "--table", "rack"]).json();
    let ours = listed
        .iter()
        .find(|r| r["index"] == "rack_rack_id_timestamp_idx")
        .unwrap();
    assert_eq!(
        (ours["chunks"].as_i64(), ours["columns"].clone()),
        (Some(chunks), serde_json::json!(["RACK_ID", "TIMESTAMP"]))
    );
    assert!(
        ours["index_size_bytes"].as_i64().unwrap() > 0,
        "chunk index sizes are summed"
    );
    s.index(&["drop", "rack_rack_id_timestamp_idx"]);
    assert_eq!(s.chunk_indexes("rack_rack_id_timestamp_idx"), 0);

    for name in [
        "a\"b; DROP TABLE rack; --",
        "MixedCase_Idx",
        "'); SELECT pg_sleep(5); --",
    ] {
        let run = s.index(&["create", "rack", "SOC", "--name", name]);
        assert_eq!(run.code(), 0, "{name}: {}", run.stderr());
        let stored = s.scalar(&format!(
            "SELECT count(*) FROM pg_class WHERE relname = '{}'",
            name.replace('\'', "''")
        ));
        assert_eq!(stored, 1, "index {name:?} not stored under its exact name");
        s.index(&["drop", name]);
    }
    assert_eq!(
        s.scalar("SELECT count(*) FROM rack"),
        6 * 3600 * 20,
        "rack survived"
    );
    let long = "x".repeat(64);
    let run = s.index(&["create", "rack", "SOC", "--name", &long]);
    assert_eq!(run.code(), 2);
    assert!(
        run.stderr().contains("is 64 bytes; PostgreSQL allows 63"),
        "{}",
        run.stderr()
    );
    let run = s.index(&["create", "rack", "SOC\"; DROP TABLE rack; --"]);
    assert_eq!(run.code(), 2);
    assert!(
        run.stderr()
            .contains("table `rack` has no column `SOC\"; DROP TABLE rack; --`"),
        "{}",
        run.stderr()
    );
    let refused = s.index(&["drop", "rack_natural_key"]);
    assert_eq!(refused.code(), 4);
    assert!(s.scalar("SELECT count(*) FROM pg_class WHERE relname = 'rack_natural_key'") == 1);
}

/// Rows the dashboard query's plan looks at (returned or filtered out, in
/// every node): the work an index saves, which unlike the query's time does
/// not change with the machine's load.
fn explain_rows(s: &Setup) -> f64 {
    block_on(async {
        let c = s.db.client("local", &s.db.databases[0]).await;
        let to: chrono::DateTime<chrono::Utc> = c
            .query_one("SELECT max(\"TIMESTAMP\") FROM rack", &[])
            .await
            .unwrap()
            .get(0);
        let from = to - chrono::Duration::hours(1);
        let rows = c
            .query(
                &format!("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {DASHBOARD_QUERY}"),
                &[&7i16, &from, &to],
            )
            .await
            .unwrap();
        let plan: Value = rows[0].get(0);
        fn examined(node: &Value) -> f64 {
            let own: f64 = [
                "Actual Rows",
                "Rows Removed by Filter",
                "Rows Removed by Index Recheck",
            ]
            .iter()
            .filter_map(|k| node[k].as_f64())
            .sum();
            let loops = node["Actual Loops"].as_f64().unwrap_or(1.0);
            own * loops
                + node["Plans"]
                    .as_array()
                    .map_or(0.0, |c| c.iter().map(examined).sum())
        }
        examined(&plan[0]["Plan"])
    })
}

#[test]
fn index_recommend_finds_the_dashboard_index_and_its_gain_is_real() {
    let s = setup("idx_recommend");
    // HypoPG is installed by the operator (essops installs nothing itself).
    s.db.execute("local", "CREATE EXTENSION IF NOT EXISTS hypopg");
    // The recorded workload: one dashboard query, 40 times, through pg_stat_statements.
    block_on(async {
        let c = s.db.client("local", &s.db.databases[0]).await;
        let to: chrono::DateTime<chrono::Utc> = c
            .query_one("SELECT max(\"TIMESTAMP\") FROM rack", &[])
            .await
            .unwrap()
            .get(0);
        for i in 0..40 {
            let from = to - chrono::Duration::minutes(30 + i);
            c.query(DASHBOARD_QUERY, &[&((i % 10 + 1) as i16), &from, &to])
                .await
                .unwrap();
        }
    });
    let before = explain_rows(&s);
    let run = s.index(&["recommend", "--min-calls", "20"]);
    assert_eq!(
        run.code(),
        10,
        "recommendations found: exit 10\n{}{}",
        run.stdout(),
        run.stderr()
    );
    let rows: Vec<Value> = run.json();
    let create: Vec<&Value> = rows.iter().filter(|r| r["kind"] == "create").collect();
    assert_eq!(create.len(), 1, "{rows:?}");
    assert_eq!(
        create[0]["columns"],
        serde_json::json!(["RACK_ID", "TIMESTAMP"])
    );
    assert!(create[0]["calls"].as_i64().unwrap() >= 40);
    assert!(
        create[0]["cost_after"].as_f64().unwrap()
            < 0.7 * create[0]["cost_before"].as_f64().unwrap(),
        "{:?}",
        create[0]
    );
    assert!(
        create[0]["note"]
            .as_str()
            .unwrap()
            .contains("reference tool would build (TIMESTAMP")
    );

    let applied = s.index(&["recommend", "--min-calls", "20", "--apply"]);
    assert_eq!(applied.code(), 0, "{}", applied.stderr());
    assert_eq!(
        s.chunk_indexes("rack_rack_id_timestamp_idx"),
        s.scalar(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'rack'"
        )
    );
    s.db.execute("local", "ANALYZE rack");
    let after = explain_rows(&s);
    assert!(
        after * 1.5 < before,
        "EXPLAIN ANALYZE: {before} rows examined before, {after} after"
    );
    // Once built, it is covered: nothing more to recommend.
    let again: Vec<Value> = s.index(&["recommend", "--min-calls", "20"]).json();
    assert!(again.iter().all(|r| r["kind"] != "create"), "{again:?}");
}

/// Runs the wizard in a pseudo-terminal (util-linux `script`), answering
/// each prompt as it appears; `answers` pairs a prompt with the keys to send.
fn wizard(s: &Setup, answers: &[(&str, &str)]) -> (i32, String) {
    let command = format!("{} index wizard", env!("CARGO_BIN_EXE_essops"));
    let mut child = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("ESSOPS_CONFIG", &s.config)
        .env("TERM", "dumb")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script(1)");
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut screen = String::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = 0;
    for (prompt, keys) in answers {
        while !screen[seen..].contains(prompt) {
            assert!(
                Instant::now() < deadline,
                "no prompt {prompt:?}; screen so far:\n{screen}"
            );
            if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
                screen.push_str(&String::from_utf8_lossy(&chunk));
            }
        }
        seen = screen.rfind(prompt).unwrap() + prompt.len();
        stdin.write_all(keys.as_bytes()).unwrap();
        stdin.flush().unwrap();
    }
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "the wizard did not finish; screen:\n{screen}"
        );
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            screen.push_str(&String::from_utf8_lossy(&chunk));
        }
    };
    while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
        screen.push_str(&String::from_utf8_lossy(&chunk));
    }
    drop(stdin);
    (status.code().unwrap_or(-1), screen)
}

#[test]
fn index_wizard_in_a_terminal_creates_and_ctrl_c_changes_nothing() {
    let s = setup("idx_wizard");
    let steps = [
        ("Choose 1-1", "\r"),  // site
        ("Choose 1-", "1\r"),  // server
        ("Choose 1-4", "2\r"), // table: rack
        ("Columns in index order", "3,1\r"),
        ("Index name", "\r"),
    ];
    // Cancel at the confirmation: Ctrl-C.
    let mut cancel = steps.to_vec();
    cancel.push(("Create it?", "\x03"));
    let (code, screen) = wizard(&s, &cancel);
    assert_eq!(code, 130, "{screen}");
    assert!(screen.contains("SQL: CREATE INDEX \"rack_rack_id_timestamp_idx\" ON \"rack\" (\"RACK_ID\", \"TIMESTAMP\")"), "{screen}");
    assert_eq!(
        s.scalar("SELECT count(*) FROM pg_class WHERE relname = 'rack_rack_id_timestamp_idx'"),
        0,
        "Ctrl-C created an index"
    );

    // Confirm: the index is built on every chunk, and the flag equivalent is shown.
    let mut create = steps.to_vec();
    create.push(("Create it?", "y\r"));
    let (code, screen) = wizard(&s, &create);
    assert_eq!(code, 0, "{screen}");
    assert!(
        screen.contains("The same without the wizard: essops index create rack RACK_ID TIMESTAMP"),
        "{screen}"
    );
    assert_eq!(
        s.chunk_indexes("rack_rack_id_timestamp_idx"),
        s.scalar(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'rack'"
        )
    );
}
