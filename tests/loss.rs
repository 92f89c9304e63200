//! `essops loss` on real TimescaleDB with known holes: exact rates and gaps.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::support::pg::block_on;
use crate::support::{Cmd, Scratch, TestDb, servers_toml};

#[derive(Debug, Deserialize)]
struct Gap {
    start: String,
    end: String,
    missing_samples: i64,
    length_secs: i64,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Row {
    Device {
        server: String,
        table: String,
        device: String,
        configured: bool,
        expected: i64,
        observed: i64,
        loss_pct: f64,
        gap_count: usize,
        longest_gaps: Vec<Gap>,
        level: String,
    },
    Table {
        table: String,
        devices: usize,
        expected: i64,
        observed: i64,
        loss_pct: f64,
        size_bytes: i64,
        level: String,
    },
    Failure {
        server: String,
        table: Option<String>,
        error: String,
    },
}

/// A migrated one-site setup (1 bank x 3 racks, 1 PCS) in the test's own databases.
struct Setup {
    db: TestDb,
    scratch: Scratch,
    config: PathBuf,
}

fn setup(test: &str, timezone: &str, extra_servers: &str) -> Setup {
    let db = TestDb::new(test, 1);
    let scratch = Scratch::new(test);
    let text = format!(
        "log_dir = \"{}\"\n{}{extra_servers}[[sites]]\nname = \"Site1\"\ndatabase = \"{}\"\ntimezone = \"{timezone}\"\nbanks = [{{ id = 1, racks = 3 }}]\npcs = [1]\n",
        scratch.path.join("logs").display(),
        servers_toml(),
        db.databases[0]
    );
    let config = scratch.write("sites.toml", &text);
    Cmd::new(Some(&config))
        .args([
            "migrate",
            "--create-database",
            "--server",
            "local",
            "--server",
            "gcp",
        ])
        .run()
        .expect_code(0);
    Setup {
        db,
        scratch,
        config,
    }
}

impl Setup {
    /// Runs SQL in the site database on `server`.
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

    /// One sample per second for (bank, rack) over [from, to) local-zone literals, except [hole_from, hole_to).
    fn racks(&self, server: &str, racks: &str, from: &str, to: &str, holes: &[(&str, &str)]) {
        let not_in_holes: String = holes
            .iter()
            .map(|(a, b)| format!(" AND NOT (t >= '{a}' AND t < '{b}')"))
            .collect();
        self.sql(
            server,
            &format!(
                r#"INSERT INTO rack ("TIMESTAMP", "BANK_ID", "RACK_ID", "SOC")
                   SELECT t, 1, r, 50 FROM generate_series('{from}'::timestamptz, '{to}'::timestamptz - interval '1 second', interval '1 second') t,
                   unnest(ARRAY[{racks}]) r WHERE true{not_in_holes}"#
            ),
        );
    }

    fn loss(&self, args: &[&str], code: i32) -> (Vec<Row>, crate::support::cmd::Run) {
        let run = Cmd::new(Some(&self.config))
            .args(["loss", "--json"])
            .args(args)
            .run()
            .expect_code(code);
        (run.json(), run)
    }
}

fn devices(
    rows: &[Row],
    table: &str,
    server: &str,
) -> BTreeMap<String, (i64, i64, f64, usize, String)> {
    rows.iter()
        .filter_map(|r| match r {
            Row::Device {
                server: s,
                table: t,
                device,
                expected,
                observed,
                loss_pct,
                gap_count,
                level,
                ..
            } if t == table && s == server => Some((
                device.clone(),
                (*expected, *observed, *loss_pct, *gap_count, level.clone()),
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn loss_exact_rates_gaps_and_graded_log_lines() {
    let s = setup("loss_exact", "Asia/Seoul", "");
    let day = ("2026-03-10 00:00:00+09", "2026-03-11 00:00:00+09");
    s.racks("local", "1", day.0, day.1, &[]);
    // rack 2: 50 minutes from 01:00 and one lone second at 12:00:00 missing -> 3001 of 86400 = 3.47 % (warning)
    s.racks(
        "local",
        "2",
        day.0,
        day.1,
        &[
            ("2026-03-10 01:00:00+09", "2026-03-10 01:50:00+09"),
            ("2026-03-10 12:00:00+09", "2026-03-10 12:00:01+09"),
        ],
    );
    // rack 3 sent nothing at all; rows outside the day must not count.
    s.racks("local", "3", "2026-03-09 23:00:00+09", day.0, &[]);
    s.racks("local", "3", day.1, "2026-03-11 01:00:00+09", &[]);

    let (rows, _) = s.loss(
        &[
            "--date",
            "2026-03-10",
            "--server",
            "local",
            "--table",
            "rack",
            "--table",
            "pcs",
        ],
        11,
    );
    let racks = devices(&rows, "rack", "local");
    assert_eq!(
        racks["bank 1 / rack 1"],
        (86_400, 86_400, 0.0, 0, "info".into())
    );
    assert_eq!(
        racks["bank 1 / rack 2"],
        (86_400, 83_399, 3.47, 2, "warning".into())
    );
    assert_eq!(
        racks["bank 1 / rack 3"],
        (86_400, 0, 100.0, 1, "critical".into())
    );
    let rack2_gaps = rows.iter().find_map(|r| match r {
        Row::Device {
            device,
            table,
            longest_gaps,
            ..
        } if device == "bank 1 / rack 2" && table == "rack" => Some(longest_gaps),
        _ => None,
    });
    let g: Vec<(&str, &str, i64, i64)> = rack2_gaps
        .unwrap()
        .iter()
        .map(|g| {
            (
                g.start.as_str(),
                g.end.as_str(),
                g.missing_samples,
                g.length_secs,
            )
        })
        .collect();
    assert_eq!(
        g,
        [
            (
                "2026-03-10T01:00:00+09:00",
                "2026-03-10T01:50:00+09:00",
                3000,
                3000
            ),
            (
                "2026-03-10T12:00:00+09:00",
                "2026-03-10T12:00:01+09:00",
                1,
                1
            ),
        ]
    );

    let table = rows.iter().find_map(|r| match r {
        Row::Table {
            table,
            devices,
            expected,
            observed,
            loss_pct,
            size_bytes,
            level,
            ..
        } if table == "rack" => Some((
            *devices,
            *expected,
            *observed,
            *loss_pct,
            *size_bytes > 0,
            level.as_str(),
        )),
        _ => None,
    });
    // (259200 - 169799) / 259200 = 34.49 %
    assert_eq!(table, Some((3, 259_200, 169_799, 34.49, true, "critical")));
    // An empty table is 100 % loss, not a division error.
    assert_eq!(
        devices(&rows, "pcs", "local")["pcs 1"],
        (86_400, 0, 100.0, 1, "critical".into())
    );

    // Graded JSON lines in the site's own log file.
    let logs = std::fs::read_dir(s.scratch.path.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().path());
    let site_log = logs
        .into_iter()
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("Site1.")
        })
        .unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(site_log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let graded: BTreeMap<String, (String, f64)> = lines
        .iter()
        .filter(|l| l["message"] == "device data loss" && l["table"] == "rack")
        .map(|l| {
            (
                l["device"].as_str().unwrap().to_string(),
                (
                    l["level"].as_str().unwrap().to_string(),
                    l["loss_pct"].as_f64().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(graded["bank 1 / rack 1"], ("info".into(), 0.0));
    assert_eq!(graded["bank 1 / rack 2"], ("warning".into(), 3.47));
    assert_eq!(graded["bank 1 / rack 3"], ("critical".into(), 100.0));
    let line = lines
        .iter()
        .find(|l| l["device"] == "bank 1 / rack 2")
        .unwrap();
    for field in [
        "site",
        "server",
        "table",
        "device",
        "window_start",
        "window_end",
        "level",
        "ts",
    ] {
        assert!(line.get(field).is_some(), "log line lacks {field}: {line}");
    }
    assert_eq!(
        (line["site"].as_str(), line["server"].as_str()),
        (Some("Site1"), Some("local"))
    );
    assert_eq!(line["window_start"], "2026-03-10T00:00:00+09:00");
}

#[test]
fn loss_dst_days_expect_23_and_25_hours() {
    let s = setup("loss_dst", "America/New_York", "");
    s.racks(
        "gcp",
        "1, 2, 3",
        "2026-03-08 00:00:00-05",
        "2026-03-09 00:00:00-04",
        &[],
    );
    s.racks(
        "gcp",
        "1, 2, 3",
        "2026-11-01 00:00:00-04",
        "2026-11-02 00:00:00-05",
        &[("2026-11-01 01:30:00-04", "2026-11-01 01:30:00-05")],
    );
    let (spring, _) = s.loss(
        &["--date", "2026-03-08", "--server", "gcp", "--table", "rack"],
        0,
    );
    assert_eq!(
        devices(&spring, "rack", "gcp")["bank 1 / rack 2"],
        (82_800, 82_800, 0.0, 0, "info".into())
    );
    let (autumn, _) = s.loss(
        &["--date", "2026-11-01", "--server", "gcp", "--table", "rack"],
        10,
    );
    // The repeated 01:00-02:00 hour is two distinct hours of samples; one of them (plus 30 min) is missing.
    assert_eq!(
        devices(&autumn, "rack", "gcp")["bank 1 / rack 2"],
        (90_000, 90_000 - 3_600, 4.0, 1, "warning".into())
    );
}

#[test]
fn loss_multi_day_window_is_not_capped_at_one_day() {
    let s = setup("loss_multi_day", "Asia/Seoul", "");
    s.racks(
        "local",
        "1, 2, 3",
        "2026-03-10 00:00:00+09",
        "2026-03-13 00:00:00+09",
        &[("2026-03-11 10:00:00+09", "2026-03-11 11:00:00+09")],
    );
    let (rows, _) = s.loss(
        &[
            "--from",
            "2026-03-10",
            "--to",
            "2026-03-13",
            "--server",
            "local",
            "--table",
            "rack",
        ],
        0,
    );
    assert_eq!(
        devices(&rows, "rack", "local")["bank 1 / rack 1"],
        (259_200, 255_600, 1.39, 1, "info".into())
    );
}

#[test]
fn loss_window_ending_in_the_future_counts_only_up_to_now() {
    let s = setup("loss_future", "UTC", "");
    let now = chrono::Utc::now();
    let from = (now - chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let to = (now + chrono::Duration::hours(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let upto = (now - chrono::Duration::seconds(1))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    s.racks("local", "1", &from, &upto, &[]);
    let (rows, _) = s.loss(
        &[
            "--from", &from, "--to", &to, "--server", "local", "--table", "rack",
        ],
        11,
    );
    let (expected, observed, loss, _, _) =
        devices(&rows, "rack", "local")["bank 1 / rack 1"].clone();
    assert_eq!(observed, 3_599);
    // Counted up to the moment essops ran: an hour and a few seconds, never two hours.
    assert!((3_600..3_660).contains(&expected), "expected {expected}");
    assert!(loss < 2.0, "loss {loss}");
}

#[test]
fn loss_down_server_is_reported_and_the_others_are_measured() {
    let down = "[servers.offsite]\nurl = \"postgres://essops@127.0.0.1:1\"\npassword_env = \"ESSOPS_IT_OFFSITE_PW\"\n";
    let s = setup("loss_down", "Asia/Seoul", down);
    s.racks(
        "local",
        "1, 2, 3",
        "2026-03-10 00:00:00+09",
        "2026-03-11 00:00:00+09",
        &[],
    );
    let run = Cmd::new(Some(&s.config))
        .env("ESSOPS_IT_OFFSITE_PW", "unused")
        .args(["loss", "--json", "--date", "2026-03-10", "--table", "rack"])
        .run()
        // gcp's day is critical (100 % lost): 11 beats the down server's 4.
        .expect_code(11);
    let rows: Vec<Row> = run.json();
    let failure = rows.iter().find_map(|r| match r {
        Row::Failure {
            server,
            table,
            error,
        } if server == "offsite" => Some((table.clone(), error.clone())),
        _ => None,
    });
    let (table, error) = failure.expect("a failure row for the down server");
    assert_eq!(table.as_deref(), Some("rack"));
    assert!(
        error.starts_with("server `offsite` (127.0.0.1:1) is unreachable"),
        "{error}"
    );
    assert_eq!(
        devices(&rows, "rack", "local")["bank 1 / rack 3"],
        (86_400, 86_400, 0.0, 0, "info".into())
    );
    assert_eq!(devices(&rows, "rack", "gcp")["bank 1 / rack 3"].2, 100.0);
}

#[test]
fn loss_reports_unconfigured_devices_and_missing_tables() {
    let s = setup("loss_extra", "Asia/Seoul", "");
    s.racks(
        "local",
        "1, 2, 3, 7",
        "2026-03-10 00:00:00+09",
        "2026-03-11 00:00:00+09",
        &[],
    );
    s.sql("local", "DROP TABLE pcs");
    let (rows, _) = s.loss(
        &[
            "--date",
            "2026-03-10",
            "--server",
            "local",
            "--table",
            "rack",
            "--table",
            "pcs",
        ],
        4,
    );
    let extra = rows.iter().find_map(|r| match r {
        Row::Device {
            device,
            configured,
            loss_pct,
            ..
        } if device == "bank 1 / rack 7" => Some((*configured, *loss_pct)),
        _ => None,
    });
    assert_eq!(extra, Some((false, 0.0)));
    let missing = rows.iter().find_map(|r| match r {
        Row::Failure {
            table: Some(t),
            error,
            ..
        } if t == "pcs" => Some(error.clone()),
        _ => None,
    });
    assert_eq!(
        missing.unwrap(),
        format!(
            "server `local`, database `{}`: table `pcs` does not exist (run essops migrate)",
            s.db.databases[0]
        )
    );
}

#[test]
fn loss_exports_csv_and_parquet() {
    let s = setup("loss_export", "Asia/Seoul", "");
    s.racks(
        "local",
        "1, 2",
        "2026-03-10 00:00:00+09",
        "2026-03-11 00:00:00+09",
        &[],
    );
    let csv = s.scratch.path.join("loss.csv");
    let parquet = s.scratch.path.join("loss.parquet");
    for out in [&csv, &parquet] {
        Cmd::new(Some(&s.config))
            .args([
                "loss",
                "--quiet",
                "--date",
                "2026-03-10",
                "--server",
                "local",
                "--table",
                "rack",
                "--output",
            ])
            .args([out.to_str().unwrap()])
            .run()
            .expect_code(11);
    }
    let text = std::fs::read_to_string(&csv).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[0],
        "kind,server,site,table,device,window_start,window_end,expected,observed,loss_pct,gap_count,longest_gap_secs,size_bytes,level"
    );
    assert_eq!(lines.len(), 1 + 3 + 1, "header, 3 racks, 1 table row");
    assert!(lines[1].starts_with("device,local,Site1,rack,bank 1 / rack 1,2026-03-09T15:00:00.000,2026-03-10T15:00:00.000,86400,86400,0.0,0,,,info"), "{}", lines[1]);
    let bytes = std::fs::read(&parquet).unwrap();
    assert_eq!(
        (&bytes[..4], &bytes[bytes.len() - 4..]),
        (&b"PAR1"[..], &b"PAR1"[..])
    );
}

#[test]
fn loss_rejects_unknown_tables_and_bad_windows() {
    let run = Cmd::new(None)
        .args(["loss", "--table", "racks"])
        .run()
        .expect_code(2);
    assert_eq!(
        run.stderr().trim(),
        "essops: error: unknown table `racks` (known: bank, rack, pcs, etc)"
    );
    let run = Cmd::new(None)
        .args(["loss", "--from", "2026-03-02", "--to", "2026-03-01"])
        .run()
        .expect_code(2);
    assert_eq!(
        run.stderr().trim(),
        "essops: error: the window is empty: --from 2026-03-02 is not before --to 2026-03-01"
    );
    let run = Cmd::new(None)
        .args(["loss", "--output", "x.xlsx"])
        .run()
        .expect_code(2);
    assert_eq!(
        run.stderr().trim(),
        "essops: error: --output x.xlsx: the file name must end in .csv or .parquet"
    );
}

#[test]
fn loss_reads_from_a_servers_read_replica() {
    // `mirror`'s primary is unreachable; its read replica is the local
    // cluster, which holds the rows. Loss only reads, so it measures there.
    let password =
        std::path::Path::new(crate::support::REPO).join(".services/secrets/local.password");
    let mirror = format!(
        "[servers.mirror]\nurl = \"postgres://essops@127.0.0.1:1\"\nread_url = \"postgres://essops@127.0.0.1:25432\"\npassword_file = \"{}\"\nsslmode = \"disable\"\n",
        password.display()
    );
    let s = setup("loss_replica", "Asia/Seoul", &mirror);
    s.racks(
        "local",
        "1, 2, 3",
        "2026-03-10 00:00:00+09",
        "2026-03-11 00:00:00+09",
        &[],
    );
    let run = Cmd::new(Some(&s.config))
        .args([
            "loss",
            "--json",
            "--date",
            "2026-03-10",
            "--table",
            "rack",
            "--server",
            "mirror",
        ])
        .run();
    let rows: Vec<Row> = run.json();
    assert_eq!(
        devices(&rows, "rack", "mirror")["bank 1 / rack 3"],
        (86_400, 86_400, 0.0, 0, "info".into()),
        "{}",
        run.stderr()
    );
}
