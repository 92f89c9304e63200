//! The fleet view: `essops status` judged from the history, the live
//! `/metrics` of an ingest (promtool-clean, scraped by a real Prometheus),
//! the heartbeat minutes ingest writes, and the example alert rules.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use serde_json::Value;

use crate::ingest::setup as ingest_setup;
use crate::support::{Cmd, REPO, Scratch, TestDb, eventually, free_port, servers_toml};

// ------------------------------------------------------------------ status

struct Fleet {
    db: TestDb,
    scratch: Scratch,
    config: PathBuf,
}

/// A site that is healthy by every measure `status` takes (Redis is not
/// configured, so the cache is not judged): fresh samples on both servers,
/// yesterday's loss recorded at 0 and its KPIs at info, a reconcile just
/// now, ingest's minute just written.
fn healthy(test: &str) -> Fleet {
    let db = TestDb::new(test, 1);
    let scratch = Scratch::new(test);
    let config = scratch.site_config(
        "",
        &servers_toml(),
        &format!(
            "name = \"Mon\"\ndatabase = \"{}\"\ntimezone = \"UTC\"\nbanks = [{{ id = 1, racks = 1 }}]\npcs = [1]\nmodbus = {{ bms = \"127.0.0.1:1\", pcs = \"127.0.0.1:1\" }}\n",
            db.databases[0]
        ),
    );
    for server in ["local", "gcp"] {
        db.execute(
            server,
            "INSERT INTO bank (\"TIMESTAMP\", \"BANK_ID\") VALUES (now(), 1);
             INSERT INTO rack (\"TIMESTAMP\", \"BANK_ID\", \"RACK_ID\") VALUES (now(), 1, 1);
             INSERT INTO pcs (\"TIMESTAMP\", \"PCS_ID\") VALUES (now(), 1);
             INSERT INTO etc (\"TIMESTAMP\") VALUES (now());",
        );
        db.execute(
            server,
            &format!(
                "INSERT INTO essops.loss_daily (site, server, table_name, device, device_ids, day, configured, expected, observed, missing, gaps, longest_gap_s, loss_pct, grade)
                 SELECT 'Mon', '{server}', t, t || ' 1', '{{1}}', current_date - 1, true, 86400, 86400, 0, 0, 0, 0, 'info'
                   FROM unnest(ARRAY['bank', 'rack', 'pcs', 'etc']) t;
                 INSERT INTO essops.kpi_daily (site, server, table_name, device, device_ids, day, grade, samples, cell_spread_max_mv, cell_spread_p95_mv, figures)
                 VALUES ('Mon', '{server}', 'rack', 'bank 1 / rack 1', '{{1,1}}', current_date - 1, 'info', 86400, 31, 30,
                         '{{\"cell_spread_p95_mv\": 30, \"availability_pct\": 100, \"reasons\": []}}');
                 INSERT INTO essops.reconcile_runs (site, table_name, window_start, window_end, server_a, server_b, dry_run, compared, differing, copied_to_a, copied_to_b, seconds, outcome)
                 VALUES ('Mon', 'rack', now() - interval '1 day', now(), 'local', 'gcp', false, 24, 0, 0, 0, 1.5, 'ok');"
            ),
        );
    }
    let fleet = Fleet {
        db,
        scratch,
        config,
    };
    fleet.minute(1, 0);
    fleet
}

impl Fleet {
    /// An ingest minute `ago` minutes back, with `spool` rows for gcp.
    fn minute(&self, ago: i32, spool: i64) {
        self.db.execute(
            "local",
            &format!(
                "INSERT INTO essops.ingest_minutes (site, devices, host, server, minute, polls_ok, polls_failed, failed_by_reason, rows_written, rows_spooled, rows_replayed, spool_rows, spool_bytes, breakers_open)
                 VALUES ('Mon', 'all', 'host1', 'gcp', date_trunc('minute', now()) - make_interval(mins => {ago} + 1), 240, 0, '{{}}', 0, {spool}, 0, {spool}, {spool} * 100, 0)"
            ),
        );
    }

    fn status(&self, args: &[&str]) -> (i32, Vec<Value>) {
        let run = Cmd::new(Some(&self.config))
            .args(["--json", "status"])
            .args(args)
            .run();
        let rows = run.json();
        (run.code(), rows)
    }
}

fn line<'a>(rows: &'a [Value], check: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["check"] == check)
        .unwrap_or_else(|| panic!("no {check} line in {rows:?}"))
}

#[test]
fn status_exit_code_is_the_worst_state() {
    let f = healthy("status_codes");
    let (code, rows) = f.status(&[]);
    assert_eq!(code, 0, "{rows:#?}");
    assert_eq!(line(&rows, "ingest")["state"], "ok");
    // The ESS tables' size per server, as `essops size` counts it.
    let size = line(&rows, "size");
    assert!(
        size["value"].as_f64().unwrap() > 0.0 && size["detail"].as_str().unwrap().contains("/day"),
        "{size}"
    );

    // The spool grew over the last 10 minutes: a warning.
    f.minute(12, 100);
    f.db.execute(
        "local",
        "UPDATE essops.ingest_minutes SET spool_rows = 500, spool_bytes = 50000 WHERE minute = (SELECT max(minute) FROM essops.ingest_minutes)",
    );
    let (code, rows) = f.status(&[]);
    let spool = line(&rows, "spool");
    assert_eq!(
        (code, spool["state"].as_str()),
        (10, Some("warning")),
        "{rows:#?}"
    );
    assert!(
        spool["detail"].as_str().unwrap().contains("growing"),
        "{spool}"
    );

    // Ingest stopped 20 minutes ago: critical; --nagios says 2.
    f.db.execute("local", "DELETE FROM essops.ingest_minutes");
    f.minute(20, 0);
    let (code, rows) = f.status(&[]);
    assert_eq!(
        (code, line(&rows, "ingest")["state"].as_str()),
        (11, Some("critical"))
    );
    assert_eq!(f.status(&["--nagios"]).0, 2);

    // A critical loss day on one server is critical too.
    f.db.execute("local", "DELETE FROM essops.ingest_minutes");
    f.minute(1, 0);
    f.db.execute(
        "gcp",
        "UPDATE essops.loss_daily SET observed = 43200, missing = 43200, loss_pct = 50, grade = 'critical' WHERE table_name = 'rack'",
    );
    let (code, rows) = f.status(&[]);
    let gcp_loss = rows
        .iter()
        .find(|r| r["check"] == "loss" && r["target"] == "gcp")
        .unwrap();
    assert_eq!(
        (code, gcp_loss["state"].as_str()),
        (11, Some("critical")),
        "{rows:#?}"
    );
    assert!(
        gcp_loss["detail"]
            .as_str()
            .unwrap()
            .contains("rack is critical")
    );

    // A critical KPI day is critical too, and the line names the rack.
    f.db.execute(
        "gcp",
        "UPDATE essops.loss_daily SET observed = 86400, missing = 0, loss_pct = 0, grade = 'info';
         UPDATE essops.kpi_daily SET grade = 'critical', cell_spread_max_mv = 140,
                figures = '{\"cell_spread_p95_mv\": 120, \"reasons\": [\"cell spread p95 120 mV ≥ 100 (critical)\"]}'",
    );
    let (code, rows) = f.status(&[]);
    let kpi = rows
        .iter()
        .find(|r| r["check"] == "kpi" && r["target"] == "gcp")
        .unwrap();
    assert_eq!(
        (code, kpi["state"].as_str()),
        (11, Some("critical")),
        "{rows:#?}"
    );
    assert_eq!(kpi["value"], 0.14, "in volts, as the gauge");
    let detail = kpi["detail"].as_str().unwrap();
    assert!(
        detail.contains("140 mV (bank 1 / rack 1)") && detail.contains("cell spread p95 120 mV"),
        "{detail}"
    );
}

#[test]
fn status_says_unknown_when_a_server_cannot_be_read_and_writes_a_textfile() {
    let f = healthy("status_unknown");
    // The same site, with a third server nothing listens on.
    let down = format!(
        "[servers.down]\nurl = \"postgres://essops@127.0.0.1:{}\"\npassword_file = \"{}\"\nsslmode = \"disable\"\n\n",
        free_port(),
        Path::new(REPO)
            .join(".services/secrets/local.password")
            .display()
    );
    let text = std::fs::read_to_string(&f.config).unwrap().replace(
        "[[sites]]",
        &format!("{down}[[sites]]\nservers = [\"local\", \"gcp\", \"down\"]"),
    );
    let config = f.scratch.write("down.toml", &text);
    let textfile = f.scratch.path.join("essops.prom");
    let run = Cmd::new(Some(&config))
        .args(["--json", "status", "--prometheus"])
        .args([textfile.to_str().unwrap()])
        .run();
    let rows: Vec<Value> = run.json();
    assert_eq!(run.code(), 4, "{rows:#?}");
    assert_eq!(line(&rows, "server")["state"], "unknown");
    assert_eq!(
        Cmd::new(Some(&config))
            .args(["status", "--nagios"])
            .run()
            .code(),
        3
    );
    let text = std::fs::read_to_string(&textfile).unwrap();
    assert!(
        text.contains("essops_status_state{check=\"server\",site=\"Mon\",target=\"down\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("essops_status_reconcile_age_seconds{site=\"Mon\""),
        "{text}"
    );
    assert!(
        text.contains("essops_kpi_cell_spread_p95_volts{device=\"bank 1 / rack 1\",server=\"gcp\",site=\"Mon\",table=\"rack\"} 0.03")
            && text.contains("essops_kpi_grade{device=\"bank 1 / rack 1\",server=\"local\",site=\"Mon\",table=\"rack\"} 0"),
        "{text}"
    );
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&textfile).unwrap())
        .output()
        .expect("promtool (scripts/services.sh installs prometheus)");
    assert!(
        promtool.status.success(),
        "{}{}",
        String::from_utf8_lossy(&promtool.stdout),
        String::from_utf8_lossy(&promtool.stderr)
    );
}

// -------------------------------------------------------------- prometheus

/// A GET over plain HTTP/1.0: (status line, body).
fn http_get(port: u16, path: &str) -> Option<(String, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.to_string()))
}

/// Pipes `text` to `promtool check metrics`.
fn promtool_metrics(text: &str) -> std::process::Output {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (scripts/services.sh installs prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A private Prometheus on loopback, stopped when dropped.
struct Prometheus {
    child: Child,
    port: u16,
}

impl Prometheus {
    fn scraping(dir: &Path, target: u16) -> Prometheus {
        let port = free_port();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: essops\n    static_configs:\n      - targets: ['127.0.0.1:{target}']\n"
            ),
        )
        .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (scripts/services.sh installs it)");
        Prometheus { child, port }
    }

    /// The first value of an instant query, if it has one.
    fn value(&self, query: &str) -> Option<f64> {
        let (_, body) = http_get(self.port, &format!("/api/v1/query?query={query}"))?;
        let v: Value = serde_json::from_str(&body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn monitoring_prometheus_scrapes_a_live_ingest_that_writes_its_heartbeat() {
    let s = ingest_setup(
        "mon_scrape",
        &[("local", "local"), ("gcp", "gcp")],
        "timeout_ms = 500",
    );
    let _sim = s.simulate(&[]);
    // The site's `metrics_listen` (the last table of the file is the site),
    // as the ingest unit serves it: no flag.
    let metrics = free_port();
    let mut config = std::fs::read_to_string(&s.config).unwrap();
    config.push_str(&format!("metrics_listen = \"127.0.0.1:{metrics}\"\n"));
    std::fs::write(&s.config, config).unwrap();
    let ingest = s.ingest(&[]).spawn();
    crate::support::wait_for_port(metrics);
    let mut exposition = String::new();
    eventually("the poll counter counts", 60, || {
        exposition = http_get(metrics, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default();
        exposition.contains("essops_polls_total{result=\"ok\",site=\"Site1\",table=\"rack\"}")
    });
    for name in [
        "essops_rows_written_total",
        "essops_spool_rows",
        "essops_spool_oldest_age_seconds",
        "essops_breakers_open",
        "essops_devices_alarm",
        "essops_poll_latency_seconds_bucket",
        "essops_poll_to_commit_seconds_bucket",
    ] {
        assert!(exposition.contains(name), "{name} missing:\n{exposition}");
    }
    let lint = promtool_metrics(&exposition);
    assert!(
        lint.status.success(),
        "{}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );
    assert!(http_get(metrics, "/nothing").unwrap().0.contains("404"));

    let prom = Prometheus::scraping(&s.scratch.path, metrics);
    let polls = "essops_polls_total%7Bresult%3D%22ok%22%2Ctable%3D%22rack%22%7D";
    let mut first = 0.0;
    eventually("Prometheus scrapes the poll counter", 90, || {
        first = prom.value(polls).unwrap_or(0.0);
        first > 0.0
    });
    eventually("Prometheus sees the poll counter rise", 60, || {
        prom.value(polls).is_some_and(|v| v > first)
    });
    assert_eq!(prom.value("up%7Bjob%3D%22essops%22%7D"), Some(1.0));
    assert_eq!(
        prom.value("essops_spool_rows%7Bserver%3D%22gcp%22%7D"),
        Some(0.0)
    );

    let run = ingest.signal("TERM");
    assert_eq!(run.code(), 0, "{}", run.stderr());
    // Its last minute went to each server's history, as the heartbeat.
    for server in ["local", "gcp"] {
        let polls: i64 = s.db.scalar(
            server,
            &format!("SELECT coalesce(sum(polls_ok), 0)::int8 FROM essops.ingest_minutes WHERE site = 'Site1' AND server = '{server}'"),
        );
        assert!(polls > 0, "no ingest minute on {server}");
    }
}

#[test]
fn monitoring_example_rules_and_scrape_config_pass_promtool() {
    let dir = Path::new(REPO).join("examples/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool (scripts/services.sh installs prometheus)");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    for alert in [
        "EssopsIngestDown",
        "EssopsSpoolGrowing",
        "EssopsBreakerOpen",
        "EssopsLossCritical",
        "EssopsNoReconcile",
    ] {
        assert!(rules.contains(alert), "{alert} missing from alerts.yml");
    }
}
