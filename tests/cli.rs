//! The command line itself: help, usage errors, exit codes.

use crate::support::Cmd;

#[test]
fn cli_help_lists_only_working_commands() {
    let run = Cmd::new(None).args(["--help"]).run().expect_code(0);
    let commands: Vec<String> = run
        .stdout()
        .split("Commands:")
        .nth(1)
        .unwrap()
        .split("Options:")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect();
    assert_eq!(
        commands,
        [
            "migrate",
            "loss",
            "kpi",
            "reconcile",
            "simulate",
            "ingest",
            "cache",
            "index",
            "demo",
            "spool",
            "check",
            "status",
            "report",
            "rollup",
            "retention",
            "size",
            "read",
            "sunspec",
            "config",
            "completions",
            "man",
            "help"
        ]
    );
}

#[test]
fn cli_unknown_flag_is_a_usage_error() {
    let run = Cmd::new(None)
        .args(["migrate", "--no-such-flag"])
        .run()
        .expect_code(2);
    assert!(run.stderr().contains("--no-such-flag"), "{}", run.stderr());
}

#[test]
fn cli_unknown_site_is_a_config_error() {
    let run = Cmd::new(None)
        .args(["migrate", "--dry-run", "--site", "Nowhere"])
        .run()
        .expect_code(3);
    assert_eq!(
        run.stderr().trim(),
        "essops: error: unknown site `Nowhere` (configured: ESS_Operating_Site1, ESS_Operating_Site2, ESS_Operating_Site3, ESS_Operating_Site4)"
    );
}

#[test]
fn cli_unknown_server_is_a_config_error() {
    let run = Cmd::new(None)
        .args(["migrate", "--dry-run", "--server", "aws"])
        .run()
        .expect_code(3);
    assert_eq!(
        run.stderr().trim(),
        "essops: error: unknown server `aws` (configured: local, gcp)"
    );
}

#[test]
fn cli_quiet_is_not_silent_about_a_failure_and_old_logs_go() {
    let scratch = crate::support::Scratch::new("cli_quiet");
    let logs = scratch.path.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    for day in 1..=20 {
        std::fs::write(logs.join(format!("S.2026-10-{day:02}.log")), "{}\n").unwrap();
    }
    // A server nobody listens on: loss cannot read it (exit 4).
    let port = crate::support::free_port();
    let config = scratch.write(
        "sites.toml",
        &format!(
            "log_dir = \"{}\"\nlog_keep_days = 3\n[servers.down]\nurl = \"postgres://essops@127.0.0.1:{port}\"\nsslmode = \"disable\"\n[[sites]]\nname = \"S\"\nbanks = [{{ id = 1, racks = 1 }}]\n",
            scratch.path.join("logs").display()
        ),
    );
    let run = Cmd::new(Some(&config))
        .args(["--quiet", "loss"])
        .env("PGPASSWORD", "x")
        .run()
        .expect_code(4);
    assert!(run.stdout().is_empty(), "{}", run.stdout());
    assert!(
        run.stderr().contains(&format!("127.0.0.1:{port}")),
        "{}",
        run.stderr()
    );
    // log_keep_days = 3: the site keeps its 3 newest daily files, today's among
    // them (newest by creation: the 20 planted ones were created together, so
    // which two of them stay is not fixed).
    let mut kept: Vec<String> = std::fs::read_dir(&logs)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("S."))
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 3, "{kept:?}");
    let today = format!("S.{}.log", chrono::Utc::now().format("%Y-%m-%d"));
    assert!(kept.contains(&today), "{kept:?}");
}
