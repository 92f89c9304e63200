//! `essops simulate` + `essops ingest` over real Modbus TCP on loopback into
//! real TimescaleDB: decoding, unanswered requests, a server outage, a
//! killed ingest, and the per-site lock.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Mutex;

use essops::config::{Config, Site};
use essops::simulate::faults::{Fate, Faults};
use essops::simulate::model::Model;
use serde::Deserialize;

use crate::support::pg::block_on;
use crate::support::{
    Background, Cmd, Scratch, TestDb, eventually, free_port, server_toml, services_script,
    wait_for_port,
};

/// The `outage` cluster is stopped and started by tests; one at a time.
pub(crate) static OUTAGE: Mutex<()> = Mutex::new(());

#[derive(Debug, Deserialize)]
pub(crate) struct ServerRow {
    pub server: String,
    pub polls_due: u64,
    pub polls_ok: u64,
    pub polls_failed: u64,
    pub missed: Missed,
    pub breaker_openings: u64,
    pub breakers_open: u64,
    pub stale_devices: u64,
    pub rows_written: u64,
    pub rows_replayed: u64,
    pub rows_spooled: u64,
    pub rows_duplicate: u64,
    pub rows_rejected: u64,
    pub spool_pending: u64,
    pub rows_lost: u64,
    pub delay_p99_ms: Option<u64>,
    pub rejections: Vec<Rejection>,
    #[serde(default)]
    pub set_aside: Option<String>,
    #[serde(default)]
    pub set_aside_episodes: Vec<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Missed {
    pub timeout: u64,
    pub exception: u64,
    pub late: u64,
    pub breaker: u64,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Rejection {
    pub table: String,
    pub error: String,
    pub rows: u64,
}

pub(crate) struct Setup {
    pub db: TestDb,
    pub scratch: Scratch,
    pub config: PathBuf,
    pub site: Site,
    pub bms: u16,
    pub pcs: u16,
    pub servers: Vec<String>,
}

/// A site with 2 banks (3 + 2 racks) and 2 PCS on fresh simulator ports,
/// migrated on `servers` (name → dev cluster).
pub(crate) fn setup(test: &str, servers: &[(&str, &str)], modbus: &str) -> Setup {
    let servers_toml: String = servers.iter().map(|(n, c)| server_toml(n, c)).collect();
    let db = TestDb::on(test, 1, &servers_toml);
    let scratch = Scratch::new(test);
    let (bms, pcs) = (free_port(), free_port());
    let config = scratch.site_config(
        &format!("spool_dir = \"{}\"\n[modbus]\n{modbus}\n", scratch.path.join("spool").display()),
        &servers_toml,
        &format!(
            "name = \"Site1\"\ndatabase = \"{}\"\nbanks = [{{ id = 1, racks = 3 }}, {{ id = 2, racks = 2 }}]\npcs = [1, 2]\nmodbus = {{ bms = \"127.0.0.1:{bms}\", pcs = \"127.0.0.1:{pcs}\" }}\n",
            db.databases[0]
        ),
    );
    let site = Config::load(Some(&config))
        .unwrap()
        .site("Site1")
        .unwrap()
        .clone();
    Setup {
        db,
        scratch,
        config,
        site,
        bms,
        pcs,
        servers: servers.iter().map(|(n, _)| n.to_string()).collect(),
    }
}

impl Setup {
    pub fn simulate(&self, args: &[&str]) -> Background {
        let sim = Cmd::new(Some(&self.config))
            .args(["simulate", "--site", "Site1", "--duration", "120s"])
            .args(args)
            .spawn();
        wait_for_port(self.bms);
        wait_for_port(self.pcs);
        sim
    }

    pub fn ingest(&self, args: &[&str]) -> Cmd {
        Cmd::new(Some(&self.config))
            .args(["--json", "ingest", "--site", "Site1"])
            .args(args)
    }

    /// (table, device label, unix second) of every stored row on `server`.
    pub fn keys(&self, server: &str) -> BTreeSet<(String, String, i64)> {
        let mut out = BTreeSet::new();
        for (table, ids) in [
            ("bank", "\"BANK_ID\"::text"),
            ("rack", "\"BANK_ID\" || '/' || \"RACK_ID\""),
            ("pcs", "\"PCS_ID\"::text"),
            ("etc", "''"),
        ] {
            let sql = format!("SELECT {ids}, extract(epoch FROM \"TIMESTAMP\")::int8 FROM {table}");
            for r in self.query(server, &sql) {
                out.insert((table.to_string(), r.get::<_, String>(0), r.get::<_, i64>(1)));
            }
        }
        out
    }

    pub fn rack_rows(&self, server: &str) -> i64 {
        self.db.scalar(server, "SELECT count(*) FROM rack")
    }

    /// The files in this site's spool folder for `server` (none: 0).
    pub fn spool_files(&self, server: &str) -> usize {
        std::fs::read_dir(self.scratch.path.join("spool/Site1").join(server))
            .map_or(0, |d| d.flatten().filter(|e| e.path().is_file()).count())
    }

    pub fn query(&self, server: &str, sql: &str) -> Vec<tokio_postgres::Row> {
        block_on(async {
            self.db
                .client(server, &self.db.databases[0])
                .await
                .query(sql, &[])
                .await
                .unwrap()
        })
    }
}

/// The run's summary rows; every due poll ends answered or missed.
pub(crate) fn report(run: &crate::support::cmd::Run) -> Vec<ServerRow> {
    let rows = run.json::<ServerRow>();
    for r in &rows {
        assert!(r.polls_due > 0, "{r:?}");
        assert_eq!(r.polls_ok + r.polls_failed, r.polls_due, "{r:?}");
    }
    rows
}

#[test]
fn ingest_spool_list_in_a_loop_beside_a_spooling_ingest_loses_nothing() {
    let s = setup(
        "ingest_spool_list",
        &[("local", "local")],
        "timeout_ms = 500",
    );
    // A second server that is down for the whole run: every batch spools.
    let text = std::fs::read_to_string(&s.config).unwrap();
    let gone = format!(
        "[servers.gone]\nurl = \"postgres://essops@127.0.0.1:{}\"\nsslmode = \"disable\"\n",
        free_port()
    );
    std::fs::write(
        &s.config,
        text.replacen("[[sites]]", &format!("{gone}[[sites]]"), 1),
    )
    .unwrap();
    let _sim = s.simulate(&["--seed", "4"]);
    let ingest = s
        .ingest(&["--duration", "8s"])
        .env("PGPASSWORD", "x")
        .spawn();
    let started = std::time::Instant::now();
    let mut lists = 0;
    while started.elapsed() < std::time::Duration::from_secs(8) {
        Cmd::new(Some(&s.config))
            .args(["--json", "spool", "list"])
            .env("PGPASSWORD", "x")
            .run();
        lists += 1;
    }
    let run = ingest.finish();
    let rows = report(&run);
    let local = rows.iter().find(|r| r.server == "local").unwrap();
    let gone = rows.iter().find(|r| r.server == "gone").unwrap();
    assert!(lists > 5, "only {lists} spool lists ran");
    assert_eq!(gone.rows_lost, 0, "{rows:?}\n{}", run.stderr());
    assert_eq!(gone.spool_pending, local.rows_written, "{rows:?}");
}

/// Spool files that cannot be read (a header that lies about its rows, a
/// header that is not one) go to rejected/ with the reason beside them:
/// the replay neither crashes nor spins on them, and `spool list` counts them.
#[test]
fn ingest_corrupt_spool_files_go_to_rejected_with_their_reason() {
    let s = setup(
        "ingest_corrupt_spool",
        &[("local", "local"), ("gcp", "gcp")],
        "",
    );
    let dir = s.scratch.path.join("spool/Site1/gcp");
    std::fs::create_dir_all(&dir).unwrap();
    let mut lying =
        br#"{"table":"rack","columns":["SOC"],"rows":1000000000000,"first_t":0,"last_t":0}"#
            .to_vec();
    lying.push(b'\n');
    lying.extend([0xFF; 64]);
    std::fs::write(dir.join("0000000000000000001-1.spool"), lying).unwrap();
    std::fs::write(
        dir.join("0000000000000000002-1.spool"),
        b"not a header\n\x01\x02",
    )
    .unwrap();
    let replay = Cmd::new(Some(&s.config))
        .args(["spool", "replay", "--site", "Site1"])
        .run();
    assert!(
        !replay.stderr().contains("panicked") && replay.code() < 100,
        "{}",
        replay.stderr()
    );
    let rejected = dir.join("rejected");
    let mut names: Vec<String> = std::fs::read_dir(&rejected)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 4, "two files and their reasons: {names:?}");
    let reason = std::fs::read_to_string(rejected.join("0000000000000000001-1.error")).unwrap();
    assert!(reason.contains("unreadable spool file"), "{reason}");
    assert!(
        !std::fs::read_dir(&dir).unwrap().any(|e| e
            .unwrap()
            .path()
            .extension()
            .is_some_and(|x| x == "spool")),
        "a corrupt file stayed pending"
    );
    let listed: Vec<serde_json::Value> = Cmd::new(Some(&s.config))
        .args(["--json", "spool", "list"])
        .run()
        .json();
    let row = listed
        .iter()
        .find(|r| r["server"] == "gcp" && r["kind"] == "rejected")
        .unwrap_or_else(|| panic!("{listed:?}"));
    assert_eq!(row["files"], 2, "{row}");
}

/// A 10 s ingest into both servers during which gcp refuses writes for
/// its own reasons for 4 s (`break_sql`, then `mend_sql`): gcp is set aside
/// and checked again until it takes writes; nothing is rejected or lost, the
/// rows wait in the spool, both servers end equal without a reconcile, the
/// run exits 0, and the episode is in the report and `ingest_events`.
fn server_state_drill(test: &str, seed: &str, break_sql: &str, mend_sql: &str) {
    let s = setup(
        test,
        &[("local", "local"), ("gcp", "gcp")],
        "timeout_ms = 500",
    );
    drill(
        &s,
        s.ingest(&["--duration", "10s"]),
        seed,
        (break_sql, mend_sql),
    );
}

/// The drill itself, with `ingest` (its command line, config and login).
fn drill(s: &Setup, ingest: Cmd, seed: &str, (break_sql, mend_sql): (&str, &str)) {
    let _sim = s.simulate(&["--seed", seed]);
    let ingest = ingest.spawn();
    std::thread::sleep(std::time::Duration::from_secs(2));
    s.db.execute("gcp", &break_sql.replace("{db}", &s.db.databases[0]));
    std::thread::sleep(std::time::Duration::from_secs(4));
    s.db.execute("gcp", &mend_sql.replace("{db}", &s.db.databases[0]));
    let run = ingest.finish();
    let rows = report(&run);
    let gcp = rows.iter().find(|r| r.server == "gcp").unwrap();
    assert_eq!((gcp.rows_rejected, gcp.rows_lost), (0, 0), "{rows:?}");
    assert!(
        gcp.rows_spooled > 0,
        "the refusing period was not hit: {rows:?}"
    );
    assert_eq!(s.keys("local"), s.keys("gcp"));
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert_eq!(gcp.set_aside, None, "gcp is writable again: {rows:?}");
    let episode = gcp
        .set_aside_episodes
        .first()
        .unwrap_or_else(|| panic!("no set-aside episode: {rows:?}"));
    assert!(episode["ended"].is_string(), "{episode}");
    let events: Vec<String> =
        s.db.rows(
            "local",
            "SELECT event FROM essops.ingest_events WHERE server = 'gcp' ORDER BY at",
        )
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        events.first().map(String::as_str) == Some("server_set_aside")
            && events.contains(&"server_resumed".to_string()),
        "{events:?}"
    );
}

/// A privilege revoked from the writers' role for a while (a DBA's mistake,
/// a role being reworked), then granted back, under an ingest that logs in
/// as a least-privilege member of `essops_writer`: gcp is set aside until
/// preflight finds the privilege again; nothing is rejected or lost.
#[test]
fn ingest_privilege_revoked_and_granted_back_loses_nothing() {
    let s = setup(
        "ingest_privilege",
        &[("local", "local"), ("gcp", "gcp")],
        "timeout_ms = 500",
    );
    Cmd::new(Some(&s.config))
        .args(["migrate", "--create-database", "--create-roles"])
        .run()
        .expect_code(0);
    let (role, password) = ("it_writer_privilege", "it-writer-pw-51c2e0");
    for server in ["local", "gcp"] {
        s.db.execute(
            server,
            &format!(
                "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD '{password}' IN ROLE essops_writer"
            ),
        );
    }
    let text = std::fs::read_to_string(&s.config).unwrap();
    let mut as_writer = text.replace("postgres://essops@", &format!("postgres://{role}@"));
    for cluster in ["local", "gcp"] {
        let file = std::path::Path::new(crate::support::REPO)
            .join(format!(".services/secrets/{cluster}.password"));
        as_writer = as_writer.replace(
            &format!("password_file = \"{}\"", file.display()),
            "password_env = \"IT_WRITER_PW\"",
        );
    }
    let config = s.scratch.write("writer.toml", &as_writer);
    let ingest = Cmd::new(Some(&config))
        .args(["--json", "ingest", "--site", "Site1", "--duration", "10s"])
        .env("IT_WRITER_PW", password);
    drill(
        &s,
        ingest,
        "13",
        (
            "REVOKE INSERT ON rack FROM essops_writer",
            "GRANT INSERT ON rack TO essops_writer",
        ),
    );
}

/// Ends every other session on the test's database, so the next ones see a
/// database setting.
const KICK: &str = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()";

#[test]
fn ingest_read_only_server_spools_its_rows_instead_of_rejecting_them() {
    // A failover: the server answers every write with 25006 for a while.
    server_state_drill(
        "ingest_read_only",
        "9",
        &format!("ALTER DATABASE \"{{db}}\" SET default_transaction_read_only = on; {KICK}"),
        &format!(
            "BEGIN READ WRITE; ALTER DATABASE \"{{db}}\" RESET default_transaction_read_only; COMMIT; {KICK}"
        ),
    );
}

/// A mapped column renamed under a running ingest (a migration on the
/// server), then renamed back: the server's state, not the rows', so its
/// rows wait in the spool and land once the column is back.
#[test]
fn ingest_column_renamed_mid_run_spools_its_rows_instead_of_rejecting_them() {
    server_state_drill(
        "ingest_renamed",
        "11",
        r#"ALTER TABLE rack RENAME COLUMN "SOC" TO "SOC_RENAMED""#,
        r#"ALTER TABLE rack RENAME COLUMN "SOC_RENAMED" TO "SOC""#,
    );
}

/// A stall of the whole process (a paused VM, a starved CPU) skips grid
/// seconds: each skipped second is counted, as missed late, for every
/// device, so the due polls cover every second the run spans.
#[test]
fn ingest_counts_the_seconds_a_stalled_poller_never_began() {
    let s = setup("ingest_stall", &[("local", "local")], "timeout_ms = 500");
    let _sim = s.simulate(&[]);
    let ingest = s.ingest(&["--duration", "8s"]).spawn();
    let pid = ingest.child.id().to_string();
    eventually("the first rows", 20, || !s.keys("local").is_empty());
    let kill = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "kill {sig}");
    };
    kill("-STOP");
    std::thread::sleep(std::time::Duration::from_millis(3500));
    kill("-CONT");
    let run = ingest.finish().expect_code(0);
    let rows = report(&run);
    let devices = 5 + 2 + 2 + 1;
    let r = &rows[0];
    assert!(
        r.missed.late >= 2 * devices,
        "at least two skipped seconds: {r:?}"
    );
    let keys = s.keys("local");
    assert_eq!(keys.len() as u64, r.polls_ok, "{r:?}");
    // Every second from the first stored one to the last is due for every
    // device (the stop may cut the last one short).
    let seconds: BTreeSet<i64> = keys.iter().map(|k| k.2).collect();
    let span = (seconds.last().unwrap() - seconds.first().unwrap() + 1) as u64;
    assert!(
        r.polls_due >= (span - 1) * devices && r.polls_due <= (span + 1) * devices,
        "{} due polls for {span} seconds of {devices} devices: {r:?}",
        r.polls_due
    );
    assert!(
        span > seconds.len() as u64,
        "the stall left seconds unpolled"
    );
}

#[test]
fn ingest_stores_exactly_what_the_simulator_served() {
    let s = setup(
        "ingest_values",
        &[("local", "local"), ("gcp", "gcp")],
        "timeout_ms = 500",
    );
    let _sim = s.simulate(&["--seed", "42"]);
    let run = s.ingest(&["--duration", "4s"]).run().expect_code(0);
    let rows = report(&run);
    assert_eq!(rows.len(), 2);
    let devices = 5 + 2 + 2 + 1;
    assert!(
        rows[0].polls_ok >= 3 * devices && rows[0].polls_failed == 0,
        "{rows:?}"
    );
    for r in &rows {
        assert_eq!(
            (r.rows_written, r.rows_spooled, r.rows_lost),
            (r.polls_ok, 0, 0),
            "{r:?}"
        );
    }
    let local = s.keys("local");
    assert_eq!(local.len() as u64, rows[0].polls_ok);
    assert_eq!(local, s.keys("gcp"));
    // Every second is on the grid and every device has every second polled.
    let seconds: BTreeSet<i64> = local.iter().map(|k| k.2).collect();
    assert_eq!(local.len(), seconds.len() * devices as usize);

    // Every value equals the model's for that second, within the register's
    // resolution: this covers each type, word order, scale and bit field of the map.
    let model = Model::new(&s.site, 42);
    let mut checked = 0;
    for t in &s.site.register_map.tables {
        let (name, ids) = (t.spec.name, t.spec.device_columns);
        let cols: Vec<String> = t
            .fields
            .iter()
            .map(|f| format!("\"{}\"::float8", f.column))
            .collect();
        let id_sql: Vec<String> = ids.iter().map(|c| format!("\"{c}\"::int4")).collect();
        let sql = format!(
            "SELECT ARRAY[{}]::int4[], extract(epoch FROM \"TIMESTAMP\")::int8, {} FROM {name}",
            id_sql.join(", "),
            cols.join(", ")
        );
        for row in s.query("local", &sql) {
            let device: Vec<i16> = row
                .get::<_, Vec<i32>>(0)
                .into_iter()
                .map(|x| x as i16)
                .collect();
            let sec: i64 = row.get(1);
            for (i, f) in t.fields.iter().enumerate() {
                let stored: f64 = row.get(2 + i);
                let want = model.value(t.spec.table, &f.column, &device, sec);
                let tolerance = f.scale.abs() / 2.0 + want.abs() * 1e-6 + 1e-9;
                assert!(
                    (stored - want).abs() <= tolerance,
                    "{name} {device:?} at {sec}: {} ({}) stored {stored}, simulator {want}",
                    f.column,
                    f.dtype
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 500, "only {checked} values checked");
}

#[test]
fn ingest_misses_exactly_the_unanswered_and_refused_samples() {
    let s = setup(
        "ingest_faults",
        &[("local", "local"), ("gcp", "gcp")],
        // Breakers would turn a few unlucky runs of drops into skipped
        // seconds; this test is about exactly which samples are missing.
        "timeout_ms = 200\nbreaker_after = 50",
    );
    let faults = Faults {
        seed: 7,
        drop_rate: 0.08,
        exception_rate: 0.04,
        ..Faults::default()
    };
    let _sim = s.simulate(&[
        "--seed",
        "7",
        "--drop-rate",
        "0.08",
        "--exception-rate",
        "0.04",
    ]);
    let run = s.ingest(&["--duration", "8s"]).run().expect_code(0);
    let rows = report(&run);
    let stored = s.keys("local");
    assert_eq!(stored, s.keys("gcp"));
    let seconds: BTreeSet<i64> = stored.iter().map(|k| k.2).collect();
    let (first, last) = (*seconds.first().unwrap(), *seconds.last().unwrap());
    let mut expected = BTreeSet::new();
    let mut refused = 0;
    for t in &s.site.register_map.tables {
        for device in t.spec.devices(&s.site) {
            let label: Vec<String> = device.iter().map(i16::to_string).collect();
            let at = s.site.address(t, &device).unwrap();
            for sec in first..=last {
                let answered = t
                    .requests(at.start)
                    .iter()
                    .all(|r| faults.fate(at.unit, r.kind, r.start, sec) == Fate::Answer);
                match answered {
                    true => {
                        expected.insert((t.spec.name.to_string(), label.join("/"), sec));
                    }
                    false => refused += 1,
                }
            }
        }
    }
    assert!(refused > 0, "the seed and window gave no faults to check");
    let missing: Vec<_> = expected.difference(&stored).collect();
    let extra: Vec<_> = stored.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing {missing:?}\nextra {extra:?}"
    );
    assert_eq!(rows[0].polls_failed as usize, refused, "{rows:?}");
}

#[test]
fn ingest_spools_through_a_server_outage_and_stores_every_sample_once() {
    let _one = OUTAGE.lock().unwrap_or_else(|p| p.into_inner());
    let s = setup(
        "ingest_outage",
        &[("local", "local"), ("gcp", "outage")],
        "timeout_ms = 500",
    );
    let _sim = s.simulate(&["--seed", "3"]);
    let ingest = s.ingest(&[]).spawn();
    eventually("ingest writes to both servers", 60, || {
        s.servers.iter().all(|server| s.rack_rows(server) > 0)
    });
    // A second ingest of the same site is refused while the first runs.
    let second = s.ingest(&["--duration", "1s"]).run().expect_code(5);
    assert!(
        second
            .stderr()
            .contains("another essops ingest of site `Site1` is running"),
        "{}",
        second.stderr()
    );
    services_script(&["stop", "outage"]);
    eventually("batches for the stopped server are spooled", 60, || {
        s.spool_files("gcp") > 0
    });
    services_script(&["start", "outage"]);
    let before = s.rack_rows("gcp");
    eventually(
        "the spool is replayed and writes reach gcp again",
        90,
        || s.spool_files("gcp") == 0 && s.rack_rows("gcp") > before,
    );
    let run = ingest.signal("TERM").expect_code(0);
    let rows = report(&run);
    let gcp = rows.iter().find(|r| r.server == "gcp").unwrap();
    assert!(
        gcp.rows_spooled > 0 && gcp.rows_replayed == gcp.rows_spooled && gcp.spool_pending == 0,
        "{rows:?}"
    );
    let local = s.keys("local");
    assert_eq!(
        local.len() as u64,
        rows[0].polls_ok,
        "every polled sample is on local"
    );
    assert_eq!(
        local,
        s.keys("gcp"),
        "gcp holds the same samples after replay"
    );
    for server in &s.servers {
        let dup = s.query(
            server,
            "SELECT count(*) - count(DISTINCT (\"BANK_ID\", \"RACK_ID\", \"TIMESTAMP\")) FROM rack",
        );
        assert_eq!(dup[0].get::<_, i64>(0), 0, "duplicates on {server}");
    }
}

#[test]
fn ingest_killed_while_spooling_replays_on_the_next_start() {
    let _one = OUTAGE.lock().unwrap_or_else(|p| p.into_inner());
    let s = setup(
        "ingest_kill",
        &[("local", "local"), ("gcp", "outage")],
        "timeout_ms = 500",
    );
    let _sim = s.simulate(&["--seed", "5"]);
    services_script(&["stop", "outage"]);
    let first = s.ingest(&[]).spawn();
    eventually("batches for the stopped server are spooled", 60, || {
        s.spool_files("gcp") > 0 && s.rack_rows("local") > 0
    });
    first.signal("KILL");
    services_script(&["start", "outage"]);
    let run = s.ingest(&["--duration", "2s"]).run().expect_code(0);
    let gcp = report(&run)
        .into_iter()
        .find(|r| r.server == "gcp")
        .unwrap();
    assert!(gcp.rows_replayed > 0 && gcp.spool_pending == 0, "{gcp:?}");
    let (local, remote) = (s.keys("local"), s.keys("gcp"));
    // kill -9 may cost either side the killed run's last flush (250 ms):
    // gcp what was polled but not yet spooled, local what was spooled for
    // gcp but not yet committed (a stress run saw the second; reconcile
    // copies it back). Nothing else may be missing on either side.
    for (side, lacks) in [
        ("gcp", local.difference(&remote)),
        ("local", remote.difference(&local)),
    ] {
        let lacks: Vec<_> = lacks.collect();
        let seconds: BTreeSet<i64> = lacks.iter().map(|k| k.2).collect();
        assert!(seconds.len() <= 1, "{side} lacks {lacks:?}");
    }
}

#[test]
fn reconcile_beside_a_live_ingest_doubles_nothing_and_fails_nothing() {
    let s = setup(
        "reconcile_live_ingest",
        &[("local", "local"), ("gcp", "gcp")],
        "timeout_ms = 500",
    );
    // gcp has no unique natural key: ingest and reconcile both insert only
    // the absent rows there, and must never both add one.
    s.query("gcp", "DROP INDEX rack_natural_key");
    let _sim = s.simulate(&["--seed", "7"]);
    let ingest = s.ingest(&[]).spawn();
    eventually("ingest writes to both servers", 60, || {
        s.servers.iter().all(|server| s.rack_rows(server) > 20)
    });
    let now = chrono::Utc::now();
    let (from, to) = (
        (now - chrono::Duration::minutes(10)).to_rfc3339(),
        (now + chrono::Duration::minutes(10)).to_rfc3339(),
    );
    let reconcile = || {
        Cmd::new(Some(&s.config))
            .args(["--json", "reconcile", "--site", "Site1", "--min-age", "0s"])
            .args(["--from", &from, "--to", &to])
            .run()
    };
    // Holes on gcp in what ingest already wrote, filled while it writes on.
    for round in 0..4 {
        s.query(
            "gcp",
            &format!(
                r#"DELETE FROM rack WHERE extract(epoch FROM "TIMESTAMP")::int8 % 4 = {round}"#
            ),
        );
        let run = reconcile();
        assert!(
            matches!(run.code(), 0 | 10) && !run.stdout().contains("\"kind\":\"failure\""),
            "round {round}: {}\n{}",
            run.stdout(),
            run.stderr()
        );
        std::thread::sleep(std::time::Duration::from_millis(700));
    }
    ingest.signal("TERM").expect_code(0);
    for server in &s.servers {
        let dup = s.query(
            server,
            r#"SELECT count(*) - count(DISTINCT ("BANK_ID", "RACK_ID", "TIMESTAMP")) FROM rack"#,
        );
        assert_eq!(
            dup[0].get::<_, i64>(0),
            0,
            "a sample stored twice on {server}"
        );
    }
    // Once ingest has stopped, one more pass leaves nothing apart.
    let run = reconcile();
    assert!(matches!(run.code(), 0 | 10), "{}", run.stderr());
    assert_eq!(s.keys("local"), s.keys("gcp"));
}
