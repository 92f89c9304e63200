//! The shipped crontab and systemd units: their commands run and succeed
//! against the real services, with a test config in place of /etc/essops.

use std::path::Path;

use crate::support::{Cmd, Scratch, TestDb, eventually, free_port, servers_toml, wait_for_port};

/// A two-rack site with simulator ports.
fn setup(test: &str) -> (TestDb, Scratch, std::path::PathBuf, u16) {
    let db = TestDb::new(test, 1);
    let scratch = Scratch::new(test);
    let (bms, pcs) = (free_port(), free_port());
    let config = scratch.site_config(
        &format!("spool_dir = \"{}\"\n[redis]\nurl = \"redis://127.0.0.1:26379/0\"\n[retention]\nraw_days = 30\n", scratch.path.join("spool").display()),
        &servers_toml(),
        &format!(
            "name = \"Examples_{test}\"\ndatabase = \"{}\"\nbanks = [{{ id = 1, racks = 2 }}]\nmodbus = {{ bms = \"127.0.0.1:{bms}\", pcs = \"127.0.0.1:{pcs}\" }}\n",
            db.databases[0]
        ),
    );
    (db, scratch, config, bms)
}

/// Yesterday and today (Asia/Seoul) complete on both servers: the nightly
/// commands judge "yesterday", and if midnight passes while the test runs,
/// the new yesterday is complete too.
fn fill_yesterday_and_today(db: &TestDb) {
    let midnight = "date_trunc('day', now() AT TIME ZONE 'Asia/Seoul') AT TIME ZONE 'Asia/Seoul'";
    let days = format!(
        "generate_series({midnight} - interval '1 day', {midnight} + interval '1 day' - interval '1 second', interval '1 second') t"
    );
    for server in ["local", "gcp"] {
        db.execute(
            server,
            &format!(
                "INSERT INTO rack (\"TIMESTAMP\", \"BANK_ID\", \"RACK_ID\", \"SOC\") SELECT t, 1, r, 50 FROM {days}, generate_series(1, 2) r;
                 INSERT INTO bank (\"TIMESTAMP\", \"BANK_ID\", \"SOC\") SELECT t, 1, 50 FROM {days};
                 INSERT INTO pcs (\"TIMESTAMP\", \"PCS_ID\", \"AC_ACTIVE_POWER\") SELECT t, 1, 10 FROM {days};
                 INSERT INTO etc (\"TIMESTAMP\", \"AMBIENT_TEMP\") SELECT t, 20 FROM {days};"
            ),
        );
    }
}

/// `essops …` split into arguments after the program name.
/// The arguments of an essops command line; a `--config FILE` in it gives
/// way to the test's config (which `Cmd` passes).
fn essops_args(command: &str) -> Vec<String> {
    let mut words = command.trim_start_matches('-').split_whitespace();
    let program = words.next().unwrap();
    assert!(
        program.ends_with("essops"),
        "not an essops command: {command}"
    );
    let mut args = Vec::new();
    while let Some(w) = words.next() {
        match w {
            "--config" => {
                words.next();
            }
            _ => args.push(w.to_string()),
        }
    }
    args
}

/// The `KEY=` values of a unit file in `packaging/systemd/`.
fn unit_values(file: &str, key: &str) -> Vec<String> {
    let path = Path::new(crate::support::REPO)
        .join("packaging/systemd")
        .join(file);
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(String::from)
        .collect()
}

/// Per timer of the package: the command its unit runs (the template's `%i`
/// filled in) and the exit codes systemd counts as success.
fn timer_commands() -> Vec<(String, String, Vec<i32>)> {
    let dir = Path::new(crate::support::REPO).join("packaging/systemd");
    let mut timers: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".timer"))
        .collect();
    timers.sort();
    timers
        .into_iter()
        .map(|timer| {
            let unit = unit_values(&timer, "Unit")
                .pop()
                .unwrap_or_else(|| timer.replace(".timer", ".service"));
            let (file, instance) = match unit.split_once('@') {
                Some((name, rest)) => (format!("{name}@.service"), rest.replace(".service", "")),
                None => (unit.clone(), String::new()),
            };
            let command = unit_values(&file, "ExecStart")
                .remove(0)
                .replace("%i", &instance);
            let mut success = vec![0];
            for codes in unit_values(&file, "SuccessExitStatus") {
                success.extend(codes.split_whitespace().map(|c| c.parse::<i32>().unwrap()));
            }
            (timer, command, success)
        })
        .collect()
}

/// An essops command line without its global flags (--config, --quiet, --wait).
fn subcommand(command: &str) -> String {
    let mut out = Vec::new();
    let mut args = essops_args(command).into_iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quiet" => {}
            "--wait" => {
                args.next();
            }
            _ => out.push(a),
        }
    }
    out.join(" ")
}

#[test]
fn examples_crontab_commands_run_and_succeed() {
    let (db, scratch, config, _) = setup("examples_cron");
    fill_yesterday_and_today(&db);
    let crontab =
        std::fs::read_to_string(Path::new(crate::support::REPO).join("examples/crontab")).unwrap();
    let commands: Vec<String> = crontab
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.contains('='))
        .map(|l| l.split_whitespace().skip(5).collect::<Vec<_>>().join(" "))
        .collect();
    assert_eq!(commands.len(), 7, "{commands:?}");
    // The timers run the crontab's commands, and the status for Prometheus.
    let timers = timer_commands();
    assert_eq!(timers.len(), 8, "{timers:?}");
    for (timer, command, _) in &timers {
        assert!(
            timer.contains("status")
                || commands
                    .iter()
                    .any(|c| subcommand(c) == subcommand(command)),
            "{timer}: `{command}` is in no crontab line"
        );
    }
    for command in &commands {
        let run = Cmd::new(Some(&config)).args(essops_args(command)).run();
        assert_eq!(
            run.code(),
            0,
            "`{command}` failed:\n{}{}",
            run.stdout(),
            run.stderr()
        );
    }
    // Each timer's unit, judged as systemd judges its exit code.
    // (essops makes the metrics folder itself.)
    let metrics = scratch.path.join("metrics");
    for (timer, command, success) in &timers {
        let command = command.replace("/var/lib/essops/metrics", &metrics.display().to_string());
        let run = Cmd::new(Some(&config)).args(essops_args(&command)).run();
        assert!(
            success.contains(&run.code()),
            "{timer}: `{command}` exited {}, which fails the unit:\n{}{}",
            run.code(),
            run.stdout(),
            run.stderr()
        );
    }
    assert!(
        metrics.join("essops.prom").exists(),
        "the status unit wrote no metrics"
    );
}

#[test]
fn examples_systemd_unit_runs_ingest_and_stops_cleanly_on_sigterm() {
    let (db, _scratch, config, bms) = setup("examples_unit");
    let unit = std::fs::read_to_string(
        Path::new(crate::support::REPO).join("packaging/systemd/essops-ingest@.service"),
    )
    .unwrap();
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .unwrap();
    assert_eq!(
        unit.lines().find_map(|l| l.strip_prefix("KillSignal=")),
        Some("SIGTERM")
    );
    let site = "Examples_examples_unit";
    let sim = Cmd::new(Some(&config))
        .args(["simulate", "--site", site, "--duration", "60s"])
        .spawn();
    wait_for_port(bms);
    let args: Vec<String> = essops_args(&exec.replace("%i", site));
    let ingest = Cmd::new(Some(&config)).args(args).spawn();
    eventually("ingest writes rack rows to both servers", 60, || {
        ["local", "gcp"]
            .iter()
            .all(|s| db.scalar(s, "SELECT count(*) FROM rack") > 0)
    });
    let run = ingest.signal("TERM");
    assert_eq!(run.code(), 0, "{}", run.stderr());
    assert!(
        run.stdout().contains("local") && run.stdout().contains("gcp"),
        "{}",
        run.stdout()
    );
    drop(sim);
}
