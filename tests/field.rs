//! Ingest in the field, against real Modbus TCP and real TimescaleDB: a
//! dead rack costs only its own samples, a field its column cannot hold is
//! refused before polling, a batch a server refuses for good is set aside
//! while the rest keeps flowing, committed rows replayed again are counted
//! as duplicates (never stored twice), a stalled server's queue spills to
//! disk, frozen values are flagged, and the spool commands.

use std::collections::{BTreeMap, BTreeSet};
use std::thread::sleep;
use std::time::Duration;

use serde::Deserialize;

use crate::ingest::{report, setup};
use crate::support::Cmd;

/// Per (table, device): the grid seconds stored.
fn seconds_by_device(
    keys: &BTreeSet<(String, String, i64)>,
) -> BTreeMap<(String, String), BTreeSet<i64>> {
    let mut out: BTreeMap<(String, String), BTreeSet<i64>> = BTreeMap::new();
    for (t, d, s) in keys {
        out.entry((t.clone(), d.clone())).or_default().insert(*s);
    }
    out
}

#[test]
fn ingest_dead_rack_costs_only_its_own_samples() {
    // One connection for every BMS device: the dead rack shares it with all of them.
    let s = setup(
        "field_dead",
        &[("local", "local")],
        "timeout_ms = 500\nconnections = 1",
    );
    let _sim = s.simulate(&["--dead", "rack:1.2"]);
    let run = s.ingest(&["--duration", "8s"]).run().expect_code(0);
    let rows = report(&run);
    let stored = seconds_by_device(&s.keys("local"));
    assert!(
        !stored.contains_key(&("rack".into(), "1/2".into())),
        "the dead rack has rows"
    );
    let all: BTreeSet<i64> = stored.values().flatten().copied().collect();
    assert!(all.len() >= 6, "only {} seconds stored", all.len());
    for (device, secs) in &stored {
        assert_eq!(secs, &all, "{device:?} misses seconds its neighbours have");
    }
    assert_eq!(
        stored.len(),
        5 + 2 + 2 + 1 - 1,
        "every other device has rows"
    );
    let r = &rows[0];
    assert_eq!((r.breaker_openings, r.breakers_open), (1, 1), "{r:?}");
    assert!(
        r.missed.breaker > 0 && r.missed.timeout >= 3 && r.missed.late == 0,
        "{r:?}"
    );
    // Every due second of every device is counted: answered or missed with a reason.
    assert_eq!(
        r.polls_ok,
        stored.values().map(|v| v.len() as u64).sum::<u64>(),
        "{r:?}"
    );
    // Health: one site line, and a device line only for the device that failed.
    let lines: Vec<serde_json::Value> = std::fs::read_dir(s.scratch.path.join("logs"))
        .unwrap()
        .flatten()
        .flat_map(|e| {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            text.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect::<Vec<serde_json::Value>>()
        })
        .collect();
    let message = |v: &serde_json::Value| v["message"].as_str().unwrap_or_default().to_string();
    let site: Vec<_> = lines
        .iter()
        .filter(|v| message(v) == "site health")
        .collect();
    assert_eq!(site.len(), 1, "{site:?}");
    assert_eq!(
        (
            site[0]["devices"].as_u64(),
            site[0]["devices_failing"].as_u64()
        ),
        (Some(10), Some(1)),
        "{}",
        site[0]
    );
    let devices: Vec<String> = lines
        .iter()
        .filter(|v| message(v) == "device health")
        .map(|v| v["device"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(devices, ["bank 1 / rack 2"], "device health lines");
}

#[test]
fn ingest_through_a_gateway_serves_every_live_rack() {
    let s = setup(
        "field_gateway",
        &[("local", "local")],
        "timeout_ms = 500\nconnections = 2",
    );
    let _sim = s.simulate(&[
        "--gateway",
        "--gateway-connections",
        "2",
        "--bus-time",
        "20ms",
        "--gateway-timeout",
        "200ms",
        "--dead",
        "rack:2.1",
    ]);
    let run = s.ingest(&["--duration", "10s"]).run().expect_code(0);
    let rows = report(&run);
    let stored = seconds_by_device(&s.keys("local"));
    let racks: Vec<_> = stored
        .iter()
        .filter(|((t, d), _)| t == "rack" && d != "2/1")
        .collect();
    assert_eq!(racks.len(), 4, "{stored:?}");
    let all: BTreeSet<i64> = stored.values().flatten().copied().collect();
    for (device, secs) in racks {
        // The dead rack costs the bus 200 ms until its breaker opens (3 tries).
        assert!(
            secs.len() + 3 >= all.len(),
            "{device:?}: {} of {} seconds",
            secs.len(),
            all.len()
        );
    }
    assert!(
        rows[0].breaker_openings >= 1 && rows[0].missed.exception >= 3,
        "{:?}",
        rows[0]
    );
}

#[test]
fn ingest_preflight_refuses_a_field_its_column_cannot_hold() {
    let map = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/maps/default.toml"))
        .unwrap()
        .replacen(
            "{ column = \"ALARM\",                   at = 18, type = \"i32\" }",
            "{ column = \"ALARM\",                   at = 18, type = \"u32\" }",
            1,
        );
    assert!(
        map.contains("type = \"u32\""),
        "the map fixture did not change"
    );
    let dir = crate::support::Scratch::new("field_preflight_map");
    let path = dir.write("map.toml", &map);
    let s = setup(
        "field_preflight",
        &[("local", "local")],
        &format!("register_map = \"{}\"", path.display()),
    );
    let run = s.ingest(&["--duration", "5s"]).run().expect_code(3);
    let err = run.stderr();
    for word in [
        "site `Site1`",
        "server `local`",
        "table `bank`",
        "`ALARM` (u32)",
        "integer",
        "nothing polled",
    ] {
        assert!(err.contains(word), "missing {word:?} in: {err}");
    }
    assert!(s.keys("local").is_empty(), "rows were written");
}

/// A two-server site whose local pcs table refuses every row (a constraint
/// other than the natural key), its simulator running.
fn poisoned_pcs(test: &str) -> (crate::ingest::Setup, crate::support::Background) {
    let s = setup(
        test,
        &[("local", "local"), ("gcp", "gcp")],
        "timeout_ms = 500",
    );
    s.query(
        "local",
        "ALTER TABLE pcs ADD CONSTRAINT essops_test_no_pcs CHECK (\"PCS_ID\" < 0)",
    );
    let sim = s.simulate(&[]);
    (s, sim)
}

#[test]
fn ingest_sets_a_refused_batch_aside_and_keeps_the_other_tables_going() {
    let (s, _sim) = poisoned_pcs("field_poison");
    let run = s.ingest(&["--duration", "4s"]).run().expect_code(11);
    let rows = report(&run);
    let local = rows.iter().find(|r| r.server == "local").unwrap();
    assert!(
        local.rows_rejected > 0 && local.rows_written > 0,
        "{local:?}"
    );
    assert!(
        local
            .rejections
            .iter()
            .all(|j| j.table == "pcs" && j.error.contains("23514")),
        "{local:?}"
    );
    assert_eq!(
        local.rejections.iter().map(|j| j.rows).sum::<u64>(),
        local.rows_rejected
    );
    let tables =
        |server: &str| -> BTreeSet<String> { s.keys(server).into_iter().map(|k| k.0).collect() };
    assert_eq!(
        tables("local"),
        ["bank", "etc", "rack"].map(String::from).into()
    );
    assert_eq!(
        tables("gcp"),
        ["bank", "etc", "pcs", "rack"].map(String::from).into()
    );
    let rejected = s.scratch.path.join("spool/Site1/local/rejected");
    let files: Vec<_> = std::fs::read_dir(&rejected)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    let errors: Vec<_> = files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "error"))
        .collect();
    assert!(
        !errors.is_empty() && errors.len() * 2 == files.len(),
        "{files:?}"
    );
    assert!(
        std::fs::read_to_string(errors[0])
            .unwrap()
            .contains("essops_test_no_pcs")
    );

    // spool list sees them; discard without --yes off a terminal is refused; with --yes they go.
    let list = Cmd::new(Some(&s.config))
        .args(["--json", "spool", "list"])
        .run()
        .expect_code(0);
    let listed: Vec<SpoolRow> = list.json();
    let rej = listed
        .iter()
        .find(|r| r.server == "local" && r.kind == "rejected")
        .unwrap();
    assert_eq!(rej.rows, local.rows_rejected, "{listed:?}");
    Cmd::new(Some(&s.config))
        .args(["spool", "discard", "--rejected", "--server", "local"])
        .run()
        .expect_code(2);
    let dry = Cmd::new(Some(&s.config))
        .args(["--json", "spool", "discard", "--rejected", "--dry-run"])
        .run()
        .expect_code(0);
    assert!(dry.json::<SpoolRow>().iter().any(|r| r.files > 0));
    assert!(
        rejected.read_dir().unwrap().count() > 0,
        "--dry-run deleted files"
    );
    Cmd::new(Some(&s.config))
        .args(["spool", "discard", "--rejected", "--yes"])
        .run()
        .expect_code(0);
    assert_eq!(rejected.read_dir().unwrap().count(), 0);
}

/// Rejected batches go back to pending once their cause is gone, and the
/// next replay writes them: the servers then hold the same rows.
#[test]
fn ingest_requeued_batches_land_once_their_cause_is_fixed() {
    let (s, _sim) = poisoned_pcs("field_requeue");
    let rejected_rows = report(&s.ingest(&["--duration", "3s"]).run().expect_code(11))
        .iter()
        .find(|r| r.server == "local")
        .unwrap()
        .rows_rejected;
    assert!(rejected_rows > 0);
    let rejected = s.scratch.path.join("spool/Site1/local/rejected");
    let count = || rejected.read_dir().unwrap().count();
    let before = count();
    let dry: Vec<SpoolRow> = Cmd::new(Some(&s.config))
        .args(["--json", "spool", "requeue", "--dry-run"])
        .run()
        .expect_code(0)
        .json();
    assert!(dry.iter().any(|r| r.rows == rejected_rows), "{dry:?}");
    assert_eq!(count(), before, "--dry-run moved files");
    s.query(
        "local",
        "ALTER TABLE pcs DROP CONSTRAINT essops_test_no_pcs",
    );
    requeue_and_replay(&s, || {
        assert_eq!(count(), 0, "rejected batches (and their error files) left")
    });
}

/// `spool requeue`, `then`, `spool replay`: the servers then hold the same rows.
fn requeue_and_replay(s: &crate::ingest::Setup, then: impl FnOnce()) {
    Cmd::new(Some(&s.config))
        .args(["spool", "requeue"])
        .run()
        .expect_code(0);
    then();
    Cmd::new(Some(&s.config))
        .args(["spool", "replay"])
        .run()
        .expect_code(0);
    assert_eq!(s.keys("local"), s.keys("gcp"));
}

/// Every table of one server refuses every row with one SQLSTATE (23514):
/// the third batch in a row refused so is the server's state, not the
/// rows'. The server is set aside, its rows wait in the spool instead of
/// piling up in rejected/, and once the cause is gone nothing is missing.
#[test]
fn ingest_three_refusals_in_a_row_set_the_server_aside_instead_of_rejecting_more() {
    let s = setup(
        "field_streak",
        &[("local", "local"), ("gcp", "gcp")],
        "timeout_ms = 500",
    );
    let checks = [
        ("bank", "\"BANK_ID\" < 0"),
        ("rack", "\"RACK_ID\" < 0"),
        ("pcs", "\"PCS_ID\" < 0"),
        ("etc", "\"TIMESTAMP\" < '2000-01-01'"),
    ];
    for (table, check) in checks {
        s.query(
            "gcp",
            &format!("ALTER TABLE {table} ADD CONSTRAINT essops_test_refuse CHECK ({check})"),
        );
    }
    let _sim = s.simulate(&[]);
    let run = s.ingest(&["--duration", "4s"]).run();
    let rows = report(&run);
    let gcp = rows.iter().find(|r| r.server == "gcp").unwrap();
    assert_eq!(
        gcp.rejections.len(),
        2,
        "two batches rejected, then set aside: {gcp:?}"
    );
    assert!(gcp.rows_spooled > gcp.rows_rejected, "{gcp:?}");
    let episode = gcp.set_aside_episodes.first().expect("an episode");
    assert!(
        episode["reason"]
            .as_str()
            .unwrap()
            .contains("3 batches in a row refused with SQLSTATE 23514"),
        "{episode}"
    );
    assert_eq!(
        (gcp.rows_lost, run.code()),
        (0, 11),
        "rejected rows are critical"
    );

    for (table, _) in checks {
        s.query(
            "gcp",
            &format!("ALTER TABLE {table} DROP CONSTRAINT essops_test_refuse"),
        );
    }
    requeue_and_replay(&s, || {});
}

/// A spool of tens of thousands of rows (2,000 racks spooled for gcp
/// while it was unreachable) drains over a 1 Mbit/s link, while a small
/// live ingest goes on: replay transactions start small and grow while they
/// finish well inside their timeout, and the timeout follows the bytes.
#[test]
fn ingest_spool_drains_over_a_1_mbit_link_while_live_rows_go_on() {
    let s = setup(
        "field_slow_link",
        &[("local", "local"), ("gcp", "gcp")],
        "timeout_ms = 1000\nconnections = 4",
    );
    let relay_port = crate::support::free_port();
    let small = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("localhost:25433", &format!("localhost:{relay_port}"));
    std::fs::write(&s.config, &small).unwrap();
    // The outage: 2,000 racks polled for 20 s, gcp unreachable (no relay yet).
    let big = s.scratch.write(
        "big.toml",
        &small.replace("pcs = [1, 2]\n", "").replace(
            "banks = [{ id = 1, racks = 3 }, { id = 2, racks = 2 }]",
            // Each bank its own Modbus unit (the bench's map), so 2,000 racks fit.
            &format!(
                "banks = [{}]\nregister_map = \"{}\"",
                (1..=8)
                    .map(|b| format!("{{ id = {b}, racks = 250 }}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                std::path::Path::new(crate::support::REPO)
                    .join("bench/ingest-map.toml")
                    .display()
            ),
        ),
    );
    {
        let _sim = Cmd::new(Some(&big))
            .args(["simulate", "--site", "Site1", "--duration", "40s"])
            .spawn();
        crate::support::wait_for_port(s.bms);
        let filled = Cmd::new(Some(&big))
            .args(["--json", "ingest", "--site", "Site1", "--duration", "20s"])
            .run();
        let rows = report(&filled);
        let gcp = rows.iter().find(|r| r.server == "gcp").unwrap();
        assert!(gcp.spool_pending >= 25_000, "{rows:?}");
    }
    // The link comes back at 1 Mbit/s; the site's 10 devices ingest meanwhile.
    let _relay = Cmd::new(None)
        .args([
            "relay",
            "--port",
            &relay_port.to_string(),
            "--to",
            "127.0.0.1:25433",
        ])
        .args(["--delay", "5ms", "--kbit-per-sec", "1000"])
        .spawn();
    crate::support::wait_for_port(relay_port);
    let _sim = s.simulate(&[]);
    let run = s.ingest(&["--duration", "75s"]).run();
    let rows = report(&run);
    let gcp = rows.iter().find(|r| r.server == "gcp").unwrap();
    let local = rows.iter().find(|r| r.server == "local").unwrap();
    assert_eq!(
        (gcp.spool_pending, gcp.rows_lost, gcp.rows_rejected),
        (0, 0, 0),
        "the spool did not drain: {rows:?}\n{}",
        run.stderr()
    );
    assert!(gcp.rows_replayed >= 25_000, "{rows:?}");
    assert!(
        gcp.rows_written + gcp.rows_replayed >= local.rows_written,
        "live rows stalled behind the replay: {rows:?}"
    );
    assert_eq!(s.keys("local"), s.keys("gcp"));
}

#[derive(Debug, Deserialize)]
struct SpoolRow {
    server: String,
    kind: String,
    files: usize,
    rows: u64,
    replayed: Option<u64>,
    duplicate: Option<u64>,
}

#[test]
fn spool_replay_of_committed_rows_counts_duplicates_and_stores_nothing_twice() {
    let s = setup("field_replay", &[("local", "local")], "timeout_ms = 500");
    let _sim = s.simulate(&[]);
    s.ingest(&["--duration", "3s"]).run().expect_code(0);
    let before = s.keys("local");
    // The committed rack rows again, plus one second nobody stored yet.
    let mut keys = rack_keys(&s);
    assert!(!keys.is_empty());
    let newest = keys.iter().map(|k| k.1).max().unwrap();
    let committed = keys.len() as u64;
    keys.push(("1/1".into(), newest + 3600));
    let r = spool_and_replay(&s, &keys);
    assert_eq!(
        (r.replayed, r.duplicate, r.files),
        (Some(1), Some(committed), 0),
        "{r:?}"
    );
    assert_eq!(s.keys("local").len(), before.len() + 1);
    let dup = s.query(
        "local",
        "SELECT count(*) - count(DISTINCT (\"BANK_ID\", \"RACK_ID\", \"TIMESTAMP\")) FROM rack",
    );
    assert_eq!(dup[0].get::<_, i64>(0), 0);
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn ingest_spills_a_stalled_servers_queue_to_disk_and_memory_stays_flat() {
    let s = setup(
        "field_stall",
        &[("local", "local"), ("gcp", "gcp")],
        "timeout_ms = 500",
    );
    let _sim = s.simulate(&[]);
    let ingest = s.ingest(&[]).spawn();
    sleep(Duration::from_secs(2));
    // A lock that makes every write to rack on gcp wait: the server is up but stalled.
    let mut rss = Vec::new();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            crate::support::pg::block_on(async {
                let client = s.db.client("gcp", &s.db.databases[0]).await;
                client
                    .batch_execute("BEGIN; LOCK TABLE rack IN ACCESS EXCLUSIVE MODE")
                    .await
                    .unwrap();
                tokio::time::sleep(Duration::from_secs(12)).await;
                client.batch_execute("COMMIT").await.unwrap();
            })
        });
        for _ in 0..12 {
            sleep(Duration::from_secs(1));
            rss.push(rss_kib(ingest.child.id()));
        }
    });
    sleep(Duration::from_secs(4));
    let run = ingest.signal("TERM").expect_code(0);
    let rows = report(&run);
    let gcp = rows.iter().find(|r| r.server == "gcp").unwrap();
    assert!(
        gcp.rows_spooled > 0,
        "a stalled server's batches did not spill to its spool: {gcp:?}"
    );
    assert_eq!(gcp.spool_pending, 0, "{gcp:?}");
    let local = rows.iter().find(|r| r.server == "local").unwrap();
    assert!(
        local.delay_p99_ms.unwrap() < 1000,
        "the stalled server held the other one up: {local:?}"
    );
    assert_eq!(
        s.keys("local"),
        s.keys("gcp"),
        "gcp caught up after the stall"
    );
    let (lo, hi) = (*rss.iter().min().unwrap(), *rss.iter().max().unwrap());
    assert!(
        hi - lo < 20 * 1024,
        "memory grew from {lo} to {hi} KiB while a server stalled"
    );
}

#[test]
fn ingest_flags_frozen_values_as_stale() {
    let s = setup(
        "field_frozen",
        &[("local", "local")],
        "timeout_ms = 500\nstale_after = \"3s\"",
    );
    let _sim = s.simulate(&["--frozen", "rack:2.2"]);
    let run = s.ingest(&["--duration", "6s"]).run().expect_code(0);
    assert_eq!(report(&run)[0].stale_devices, 1);
    let logs = std::fs::read_dir(s.scratch.path.join("logs")).unwrap();
    let text: String = logs
        .flatten()
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(
        text.contains("device values frozen") && text.contains("bank 2 / rack 2"),
        "{text}"
    );
}

#[test]
fn ingest_plan_says_whether_the_polls_fit() {
    let s = setup(
        "field_plan",
        &[("local", "local")],
        "timeout_ms = 500\nconnections = 1\npipeline = 1",
    );
    // Worst case on one connection without pipelining: 8 devices × 500 ms do not fit 1 s.
    let run = Cmd::new(Some(&s.config))
        .args(["--json", "ingest", "--site", "Site1", "--plan"])
        .run()
        .expect_code(10);
    let rows: Vec<PlanRow> = run.json();
    let bms = rows
        .iter()
        .find(|r| r.endpoint.ends_with(&s.bms.to_string()))
        .unwrap();
    assert!(
        !bms.fits && bms.advice.contains("modbus.connections"),
        "{rows:?}"
    );
    // Measured against the simulator, the same plan fits.
    let _sim = s.simulate(&[]);
    let run = Cmd::new(Some(&s.config))
        .args([
            "--json", "ingest", "--site", "Site1", "--plan", "--probe", "2s",
        ])
        .run()
        .expect_code(0);
    let rows: Vec<PlanRow> = run.json();
    assert!(
        rows.iter()
            .all(|r| r.fits && r.basis == "probe" && r.answer_p99_ms.is_some()),
        "{rows:?}"
    );
}

#[derive(Debug, Deserialize)]
struct PlanRow {
    endpoint: String,
    fits: bool,
    basis: String,
    answer_p99_ms: Option<f64>,
    advice: String,
}

#[test]
fn services_script_starts_and_names_clusters() {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let status = |args: &[&str]| {
        std::process::Command::new("bash")
            .arg(script)
            .args(args)
            .status()
            .unwrap()
    };
    // `local` is the first of three clusters: start (already running) must succeed.
    assert!(status(&["start", "local"]).success());
    assert_eq!(status(&["start", "nosuch"]).code(), Some(2));
}

#[test]
fn ingest_counts_seconds_a_server_already_holds_as_duplicates() {
    let s = setup("field_clock", &[("local", "local")], "timeout_ms = 500");
    // No unique key to lean on (a schema essops did not create): only
    // essops's own insert path can keep a second from being stored twice.
    s.query("local", "DROP INDEX rack_natural_key");
    // As if the clock had been ahead earlier: rack 1/1 already holds the next minute.
    s.query(
        "local",
        "INSERT INTO rack (\"BANK_ID\", \"RACK_ID\", \"TIMESTAMP\")
         SELECT 1, 1, t FROM generate_series(date_trunc('second', now()), date_trunc('second', now()) + interval '60 s', interval '1 s') t",
    );
    let _sim = s.simulate(&[]);
    let run = s.ingest(&["--duration", "4s"]).run().expect_code(0);
    let r = &report(&run)[0];
    assert!(r.rows_duplicate >= 3, "{r:?}");
    assert_eq!(r.rows_written + r.rows_duplicate, r.polls_ok, "{r:?}");
    let dup = s.query(
        "local",
        "SELECT count(*) - count(DISTINCT (\"BANK_ID\", \"RACK_ID\", \"TIMESTAMP\")) FROM rack",
    );
    assert_eq!(dup[0].get::<_, i64>(0), 0);
}

#[test]
fn ingest_sets_aside_a_server_that_fails_preflight_when_it_comes_back() {
    let _one = crate::ingest::OUTAGE
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let s = setup(
        "field_set_aside",
        &[("local", "local"), ("gcp", "outage")],
        "timeout_ms = 500",
    );
    // The returning server lacks a column the register map fills.
    s.query("gcp", "ALTER TABLE bank DROP COLUMN \"ALARM\"");
    let _sim = s.simulate(&[]);
    crate::support::services_script(&["stop", "outage"]);
    let ingest = s.ingest(&["--duration", "9s"]).spawn();
    sleep(Duration::from_secs(3));
    crate::support::services_script(&["start", "outage"]);
    let run = ingest.finish().expect_code(3);
    let rows = report(&run);
    let gcp = rows.iter().find(|r| r.server == "gcp").unwrap();
    let local = rows.iter().find(|r| r.server == "local").unwrap();
    assert!(
        gcp.rows_written == 0 && gcp.spool_pending > 0 && gcp.rows_lost == 0,
        "{gcp:?}"
    );
    assert!(
        local.rows_written > 0 && local.spool_pending == 0,
        "{local:?}"
    );
    assert!(
        run.stderr().contains("server set aside") && run.stderr().contains("ALARM"),
        "{}",
        run.stderr()
    );
    assert!(
        run.stdout()
            .contains("\"set_aside\":\"site `Site1`, server `gcp`, table `bank`"),
        "{}",
        run.stdout()
    );
}

#[test]
fn ingest_warns_once_when_the_polls_do_not_fit_the_interval() {
    // 8 BMS devices on one connection through a gateway whose bus takes
    // 200 ms a request: 1.6 s of bus per 1 s round.
    let s = setup(
        "field_overrun",
        &[("local", "local")],
        "timeout_ms = 2000\nconnections = 1",
    );
    let _sim = s.simulate(&[
        "--gateway",
        "--gateway-connections",
        "1",
        "--bus-time",
        "200ms",
    ]);
    let run = s.ingest(&["--duration", "8s"]).run().expect_code(0);
    let r = &report(&run)[0];
    assert!(r.missed.late > 0, "{r:?}");
    let warnings = run.stderr().matches("polls do not fit").count();
    assert_eq!(warnings, 1, "{}", run.stderr());
    assert!(
        run.stderr().contains("modbus.connections"),
        "{}",
        run.stderr()
    );
    // Late seconds are spread: every BMS device still got samples.
    let stored = seconds_by_device(&s.keys("local"));
    assert_eq!(stored.len(), 10, "{stored:?}");
}

#[test]
fn spool_replay_into_a_table_without_a_unique_key_stores_nothing_twice() {
    let s = setup(
        "field_replay_nokey",
        &[("local", "local")],
        "timeout_ms = 500",
    );
    // A deployment whose rack table has no unique natural key: a plain COPY
    // of rows already there would double them.
    s.query("local", "DROP INDEX rack_natural_key");
    let _sim = s.simulate(&[]);
    s.ingest(&["--duration", "3s"]).run().expect_code(0);
    let keys = rack_keys(&s);
    let r = spool_and_replay(&s, &keys);
    assert_eq!(
        (r.replayed, r.duplicate),
        (Some(0), Some(keys.len() as u64)),
        "{r:?}"
    );
    let rows = s.query("local", "SELECT count(*) FROM rack");
    assert_eq!(
        rows[0].get::<_, i64>(0) as usize,
        keys.len(),
        "rows were doubled"
    );
}

/// Spools rack rows for `keys` (device label, second) on local, replays them
/// with `essops spool replay`, and returns its report row.
fn spool_and_replay(s: &crate::ingest::Setup, keys: &[(String, i64)]) -> SpoolRow {
    use essops::ingest::batch::{Batch, Row};
    use essops::ingest::spool::{Spool, SpoolLimits};
    let rows = keys
        .iter()
        .map(|(device, t)| Row {
            device: device.split('/').map(|x| x.parse().unwrap()).collect(),
            t: *t,
            values: vec![None],
            device_index: 0,
            polled: None,
        })
        .collect();
    let batch = Batch {
        spec: essops::schema::RACK,
        columns: std::sync::Arc::new(vec!["SOC".into()]),
        rows,
    };
    let dir = s.scratch.path.join("spool/Site1/local");
    Spool::open(&dir, SpoolLimits::default())
        .unwrap()
        .push(&batch)
        .unwrap();
    let run = Cmd::new(Some(&s.config))
        .args(["--json", "spool", "replay", "--site", "Site1"])
        .run()
        .expect_code(0);
    run.json::<SpoolRow>().remove(0)
}

/// The (device, second) of every stored rack row on local.
fn rack_keys(s: &crate::ingest::Setup) -> Vec<(String, i64)> {
    s.keys("local")
        .into_iter()
        .filter(|k| k.0 == "rack")
        .map(|k| (k.1, k.2))
        .collect()
}

#[test]
fn ingest_splits_a_200_rack_site_across_two_processes() {
    use crate::support::{Scratch, TestDb, free_port, server_toml, wait_for_port};
    let servers = server_toml("local", "local");
    let db = TestDb::on("split", 1, &servers);
    let scratch = Scratch::new("split");
    let (bms, pcs) = (free_port(), free_port());
    let banks: Vec<String> = (1..=10)
        .map(|b| format!("{{ id = {b}, racks = 20 }}"))
        .collect();
    let config = scratch.site_config(
        &format!(
            "spool_dir = \"{}\"\n[modbus]\nconnections = 4\n",
            scratch.path.join("spool").display()
        ),
        &servers,
        &format!(
            "name = \"Split\"\ndatabase = \"{}\"\nbanks = [{}]\npcs = [1]\nmodbus = {{ bms = \"127.0.0.1:{bms}\", pcs = \"127.0.0.1:{pcs}\" }}\n",
            db.databases[0],
            banks.join(", ")
        ),
    );
    let cmd = |args: &[&str]| Cmd::new(Some(&config)).args(args);
    let sim = cmd(&["simulate", "--site", "Split", "--duration", "120s"]).spawn();
    wait_for_port(bms);
    wait_for_port(pcs);
    let ingest = |devices: &str, secs: &str| {
        cmd(&[
            "ingest",
            "--site",
            "Split",
            "--devices",
            devices,
            "--duration",
            secs,
        ])
    };
    let a = ingest("bank:1-5,pcs,etc", "15s").spawn();
    let b = ingest("bank:6-10", "15s").spawn();
    sleep(Duration::from_secs(4));
    // A third process that claims a bank already polled is refused.
    let third = ingest("bank:5-6", "1s").run().expect_code(5);
    assert!(third.stderr().contains("bank-5"), "{}", third.stderr());
    let (a, b) = (a.finish(), b.finish());
    assert_eq!(a.code(), 0, "{}", a.stderr());
    assert_eq!(b.code(), 0, "{}", b.stderr());
    drop(sim);

    // No doubles, and per group every rack holds every second the group ran.
    let rows = db.rows(
        "local",
        "SELECT \"BANK_ID\", \"RACK_ID\", count(*), count(DISTINCT \"TIMESTAMP\"),
                array_agg(extract(epoch FROM \"TIMESTAMP\")::int8)
           FROM rack GROUP BY 1, 2",
    );
    assert_eq!(rows.len(), 200, "racks stored");
    for half in [1..=5, 6..=10] {
        let racks: Vec<_> = rows
            .iter()
            .filter(|r| half.contains(&r.get::<_, i16>(0)))
            .collect();
        let seconds: BTreeSet<i64> = racks.iter().flat_map(|r| r.get::<_, Vec<i64>>(4)).collect();
        let stored: i64 = racks.iter().map(|r| r.get::<_, i64>(2)).sum();
        let distinct: i64 = racks.iter().map(|r| r.get::<_, i64>(3)).sum();
        assert_eq!(
            stored, distinct,
            "banks {half:?}: a rack second stored twice"
        );
        let expected = (racks.len() * seconds.len()) as f64;
        let share = stored as f64 / expected;
        assert!(
            seconds.len() >= 8 && share >= 0.999,
            "banks {half:?}: {stored} of {expected} rack-seconds ({:.3} %) over {} s",
            100.0 * share,
            seconds.len()
        );
    }
    // pcs and etc were polled by the first group only, and stored.
    assert!(db.scalar("local", "SELECT count(*) FROM pcs") > 0);
    assert!(db.scalar("local", "SELECT count(*) FROM etc") > 0);
}

#[test]
fn index_recommend_without_hypopg_never_stalls_ingest_and_never_runs_what_it_collected() {
    let s = setup("recommend_stall", &[("local", "local")], "timeout_ms = 500");
    let _sim = s.simulate(&[]);
    let database = &s.db.databases[0];
    // A collected statement that would advance a sequence if it ever ran.
    // (In a function, so pg_stat_statements keeps the call as written.)
    s.db.execute(
        "local",
        "CREATE SEQUENCE essops_probe_seq;
         CREATE FUNCTION essops_probe() RETURNS int8 VOLATILE LANGUAGE plpgsql AS $$ BEGIN RETURN nextval('essops_probe_seq'); END $$;",
    );
    crate::support::pg::block_on(async {
        let c = s.db.client("local", database).await;
        for i in 0..30 {
            c.query(
                "SELECT essops_probe(), \"SOC\" FROM rack WHERE \"RACK_ID\" = $1 AND \"TIMESTAMP\" > $2",
                &[&((i % 3 + 1) as i16), &(chrono::Utc::now() - chrono::Duration::hours(1))],
            )
            .await
            .unwrap();
        }
    });
    let seq_before =
        s.db.scalar("local", "SELECT last_value FROM essops_probe_seq");
    let indexes_before = s.db.scalar("local", "SELECT count(*) FROM pg_indexes");
    let ingest = s.ingest(&["--duration", "14s"]).spawn();
    sleep(Duration::from_secs(5));
    let recommend = Cmd::new(Some(&s.config))
        .args([
            "--json",
            "index",
            "recommend",
            "--site",
            "Site1",
            "--min-calls",
            "10",
        ])
        .run();
    let rows: Vec<serde_json::Value> = recommend.json();
    let run = ingest.finish();
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let create: Vec<_> = rows.iter().filter(|r| r["kind"] == "create").collect();
    assert!(
        !create.is_empty()
            && create
                .iter()
                .all(|r| r["note"].as_str().unwrap().contains("unmeasured")),
        "{rows:?}\n{}",
        recommend.stderr()
    );
    assert_eq!(
        s.db.scalar("local", "SELECT last_value FROM essops_probe_seq"),
        seq_before,
        "a collected statement was executed"
    );
    assert_eq!(
        s.db.scalar(
            "local",
            "SELECT count(*) FROM pg_extension WHERE extname = 'hypopg'"
        ),
        0,
        "recommend installed HypoPG"
    );
    // Chunks come and go with the live ingest; index count per chunk is what
    // a probe build would change, so compare indexes that are not chunks'.
    assert!(
        s.db.scalar("local", "SELECT count(*) FROM pg_indexes") >= indexes_before,
        "indexes disappeared"
    );
    assert_eq!(
        s.db.scalar(
            "local",
            "SELECT count(*) FROM pg_indexes WHERE indexname LIKE '%probe%'"
        ),
        0
    );
    let delay = report(&run)[0].delay_p99_ms.unwrap_or(0);
    assert!(
        delay < 1000,
        "ingest's p99 poll-to-commit was {delay} ms while recommend ran"
    );
}
