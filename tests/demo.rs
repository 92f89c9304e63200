//! `essops demo` end to end on the shipped configuration (its own databases
//! and folders), and the run locks that keep cron jobs from overlapping.

use std::path::Path;

use serde::Deserialize;

use crate::support::{Cmd, REPO, Scratch, TestDb};

#[derive(Debug, Deserialize)]
struct Row {
    site: String,
    server: String,
    expected: i64,
    missing_before: i64,
    repaired: u64,
    missing_after: i64,
}

/// The shipped sites.toml, pointed at this test's databases and folders.
fn shipped_config(scratch: &Scratch, db: &TestDb) -> std::path::PathBuf {
    let mut text = std::fs::read_to_string(Path::new(REPO).join("sites.toml"))
        .unwrap()
        .replace(
            "\".services/",
            &format!("\"{}/", Path::new(REPO).join(".services").display()),
        )
        .replace(
            "log_dir = \"logs\"",
            &format!("log_dir = \"{}\"", scratch.path.join("logs").display()),
        )
        .replace(
            "spool_dir = \"spool\"",
            &format!("spool_dir = \"{}\"", scratch.path.join("spool").display()),
        );
    for (i, name) in db.databases.iter().enumerate() {
        let site = format!("name = \"ESS_Operating_Site{}\"\n", i + 1);
        text = text.replace(&site, &format!("{site}database = \"{name}\"\n"));
    }
    scratch.write("sites.toml", &text)
}

#[test]
fn demo_finds_holes_repairs_them_and_the_servers_agree() {
    let db = TestDb::new("demo", 4);
    let scratch = Scratch::new("demo");
    let config = shipped_config(&scratch, &db);
    let run = Cmd::new(Some(&config))
        .args(["--json", "demo", "--duration", "12s"])
        .run()
        .expect_code(0);
    let rows: Vec<Row> = run.json();
    assert_eq!(rows.len(), 8, "4 sites x 2 servers: {rows:?}");
    for site in [
        "ESS_Operating_Site1",
        "ESS_Operating_Site2",
        "ESS_Operating_Site3",
        "ESS_Operating_Site4",
    ] {
        let get = |server: &str| {
            rows.iter()
                .find(|r| r.site == site && r.server == server)
                .unwrap()
        };
        let (local, gcp) = (get("local"), get("gcp"));
        assert!(
            local.expected > 0 && local.expected == gcp.expected,
            "{local:?} {gcp:?}"
        );
        assert!(
            gcp.repaired > 0,
            "the outage left nothing to repair on gcp: {gcp:?}"
        );
        for r in [local, gcp] {
            assert_eq!(
                r.missing_before - r.missing_after,
                r.repaired as i64,
                "holes found = holes repaired: {r:?}"
            );
        }
        assert_eq!(
            local.missing_after, gcp.missing_after,
            "the servers agree afterwards"
        );
    }
    let mut con = redis::Client::open("redis://127.0.0.1:26379/0")
        .unwrap()
        .get_connection()
        .unwrap();
    for key in ["meta", "agg:hour:rack", "latest:pcs", "loss", "outliers"] {
        let exists: bool = redis::cmd("EXISTS")
            .arg(format!("essops:v1:{{ESS_Operating_Site2}}:{key}"))
            .query(&mut con)
            .unwrap();
        assert!(exists, "cache key {key} missing after the demo");
    }
    // It ends with a report page of its window, every site on it.
    let page = std::fs::read_to_string(scratch.path.join("logs/report.html"))
        .expect("the demo writes logs/report.html");
    for site in ["ESS_Operating_Site1", "ESS_Operating_Site4"] {
        assert!(
            page.contains(&format!("<h2>{site} ")),
            "{site} not on the page"
        );
    }
    assert!(
        page.contains("Measured on the spot"),
        "the demo's part of a day"
    );
    // The batteries' KPIs of that part of a day, measured on the spot too.
    for shown in [
        "KPIs measured on the spot",
        "Cell voltage spread p95 per rack and day",
        "SoH per day, the racks nearest their end of life",
    ] {
        assert!(page.contains(shown), "`{shown}` is not on the demo's page");
    }
    let logs: Vec<_> = std::fs::read_dir(scratch.path.join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        logs.iter()
            .any(|f| f.to_string_lossy().starts_with("ESS_Operating_Site1.")),
        "{logs:?}"
    );
}

#[test]
fn locks_refuse_an_overlapping_run_and_free_when_the_holder_goes() {
    let db = TestDb::new("locks", 1);
    let scratch = Scratch::new("locks");
    let config = scratch.site_config(
        "[redis]\nurl = \"redis://127.0.0.1:26379/0\"\n",
        &crate::support::servers_toml(),
        &format!(
            "name = \"Locks\"\ndatabase = \"{}\"\nbanks = [{{ id = 1, racks = 1 }}]\n",
            db.databases[0]
        ),
    );
    let locks = scratch.path.join("logs/locks");
    for (command, args) in [
        ("loss", vec!["loss", "--site", "Locks"]),
        ("reconcile", vec!["reconcile", "--site", "Locks"]),
        ("cache-warm", vec!["cache", "warm", "--site", "Locks"]),
    ] {
        let held = essops::lock::acquire_file(&locks, command, "Locks").unwrap();
        let run = Cmd::new(Some(&config)).args(&args).run().expect_code(5);
        let word = command.replace('-', " ");
        assert!(
            run.stderr()
                .contains(&format!("another essops {word} of site `Locks` is running"))
                || run.stderr().contains(&format!(
                    "another essops {command} of site `Locks` is running"
                )),
            "{}",
            run.stderr()
        );
        drop(held);
        let code = Cmd::new(Some(&config)).args(&args).run().code();
        assert_ne!(code, 5, "`{args:?}` still locked after the holder let go");
    }
    // --wait: a held lock is waited for, up to the time given.
    let loss = ["loss", "--site", "Locks"];
    let held = essops::lock::acquire_file(&locks, "loss", "Locks").unwrap();
    let run = Cmd::new(Some(&config))
        .args(["--wait", "1s"])
        .args(loss)
        .run()
        .expect_code(5);
    assert!(
        run.stderr().contains("(waited 1s for it"),
        "{}",
        run.stderr()
    );
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(1500));
        drop(held);
    });
    let waited = Cmd::new(Some(&config))
        .args(["--wait", "60s"])
        .args(loss)
        .run();
    release.join().unwrap();
    assert_ne!(waited.code(), 5, "{}", waited.stderr());
}

#[test]
fn locks_hold_across_hosts_and_name_the_holder() {
    use std::time::Duration;
    let db = TestDb::new("xhost", 1);
    let (bms, pcs) = (crate::support::free_port(), crate::support::free_port());
    let site = format!(
        "name = \"XHost\"\ndatabase = \"{}\"\nmodbus = {{ bms = \"127.0.0.1:{bms}\", pcs = \"127.0.0.1:{pcs}\" }}\nbanks = [{{ id = 1, racks = 1 }}]\npcs = [1]\n",
        db.databases[0]
    );
    // Two "hosts": separate configs, so separate lock directories.
    let (host_a, host_b) = (Scratch::new("xhost_a"), Scratch::new("xhost_b"));
    let servers = crate::support::servers_toml();
    let config_a = host_a.site_config("", &servers, &site);
    let config_b = host_b.site_config("", &servers, &site);

    // Another host's reconcile holds the site's lock: a session named as
    // essops names its own.
    essops::db::set_application_name("reconcile");
    let (k1, k2) = essops::lock::advisory_key("reconcile", "XHost", &db.databases[0]);
    let reconcile = ["reconcile", "--site", "XHost"];
    crate::support::pg::block_on(async {
        let holder = db.client("local", "postgres").await;
        let taken: bool = holder
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&k1, &k2])
            .await
            .unwrap()
            .get(0);
        assert!(taken);
        let run = Cmd::new(Some(&config_b))
            .args(reconcile)
            .run()
            .expect_code(5);
        let pid = std::process::id().to_string();
        assert!(
            run.stderr().contains("holds its lock on server `local`")
                && run.stderr().contains("essops reconcile")
                && run.stderr().contains(&pid),
            "{}",
            run.stderr()
        );
    });
    // The holder's session ended: the lock is free.
    let code = Cmd::new(Some(&config_b)).args(reconcile).run().code();
    assert_ne!(
        code, 5,
        "reconcile still locked after the holder's session ended"
    );

    // Two ingest processes of one site on two "hosts": the second is refused.
    let ingest = |config: &Path, secs: &str| {
        Cmd::new(Some(config)).args(["ingest", "--site", "XHost", "--duration", secs])
    };
    let first = ingest(&config_a, "8s").spawn();
    std::thread::sleep(Duration::from_secs(3));
    let second = ingest(&config_b, "1s").run().expect_code(5);
    assert!(
        second
            .stderr()
            .contains("another essops ingest of site `XHost` is running")
            && second.stderr().contains("essops ingest"),
        "{}",
        second.stderr()
    );
    first.finish();
}
