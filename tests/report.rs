//! `essops report`: a week of history for two sites, one rack with a planted
//! bad night, one server-day the history lacks (measured on the spot), the
//! page opened in headless Chromium with the network shut.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::pg::block_on;
use crate::support::{Cmd, Scratch, TestDb, servers_toml};

const FIRST_DAY: &str = "2026-03-02";
const LAST_DAY: &str = "2026-03-08";
const BAD_DAY: &str = "2026-03-05";
const BAD_RACK: &str = "bank 1 / rack 2";

struct Setup {
    db: TestDb,
    config: PathBuf,
    scratch: Scratch,
}

/// Two sites (Seoul) with one bank of three racks and a PCS each.
fn setup(test: &str) -> Setup {
    let db = TestDb::new(test, 2);
    let scratch = Scratch::new(test);
    let site = |name: &str, database: &str| {
        format!(
            "name = \"{name}\"\ndatabase = \"{database}\"\ntimezone = \"Asia/Seoul\"\nbanks = [{{ id = 1, racks = 3 }}]\npcs = [1]\n"
        )
    };
    let sites = format!(
        "{}\n[[sites]]\n{}",
        site("Alpha", &db.databases[0]),
        site("Beta", &db.databases[1])
    );
    let config = scratch.site_config("", &servers_toml(), &sites);
    Setup {
        db,
        config,
        scratch,
    }
}

impl Setup {
    fn sql(&self, server: &str, database: usize, sql: &str) {
        block_on(async {
            self.db
                .client(server, &self.db.databases[database])
                .await
                .batch_execute(sql)
                .await
                .unwrap()
        });
    }

    /// Loss rows for every device of `site` and day `from..=to` on `server`,
    /// clean except the planted bad rack-night of Alpha on local.
    fn loss_history(&self, site: &str, database: usize, server: &str, to: &str) {
        let bad = match (site, server) {
            ("Alpha", "local") => format!("d.dev = '{BAD_RACK}' AND day = '{BAD_DAY}'"),
            _ => "false".into(),
        };
        self.sql(
            server,
            database,
            &format!(
                "INSERT INTO essops.loss_daily (site, server, table_name, device, device_ids, day, configured,
                                               expected, observed, missing, gaps, longest_gap_s, loss_pct, grade)
                 SELECT '{site}', '{server}', d.t, d.dev, d.ids, day::date, true, 86400, 86400 - m, m,
                        (m > 0)::int, m, round(m / 864.0, 2), CASE WHEN m > 0 THEN 'critical' ELSE 'info' END
                   FROM (VALUES ('bank', 'bank 1', '{{1}}'::int2[]), ('rack', 'bank 1 / rack 1', '{{1,1}}'),
                                ('rack', 'bank 1 / rack 2', '{{1,2}}'), ('rack', 'bank 1 / rack 3', '{{1,3}}'),
                                ('pcs', 'pcs 1', '{{1}}'), ('etc', 'site', '{{}}')) d(t, dev, ids),
                        generate_series('{FIRST_DAY}'::date, '{to}'::date, interval '1 day') day,
                        LATERAL (SELECT CASE WHEN {bad} THEN 21600 ELSE 0 END AS m) x"
            ),
        );
    }

    /// Raw 1 Hz rows of every Beta device on its last day on gcp, rack 3
    /// silent for an hour: what the report measures on the spot.
    fn beta_last_day_raw(&self) {
        let series = format!(
            "generate_series('{LAST_DAY} 00:00:00+09'::timestamptz, '{LAST_DAY} 23:59:59+09', interval '1 second') t"
        );
        self.sql(
            "gcp",
            1,
            &format!(
                r#"INSERT INTO bank ("TIMESTAMP", "BANK_ID") SELECT t, 1 FROM {series};
                   INSERT INTO pcs ("TIMESTAMP", "PCS_ID") SELECT t, 1 FROM {series};
                   INSERT INTO etc ("TIMESTAMP") SELECT t FROM {series};
                   INSERT INTO rack ("TIMESTAMP", "BANK_ID", "RACK_ID") SELECT t, 1, r FROM {series}, generate_series(1, 3) r
                    WHERE NOT (r = 3 AND t >= '{LAST_DAY} 10:00:00+09' AND t < '{LAST_DAY} 11:00:00+09');"#
            ),
        );
    }

    /// A reconcile run, a few ingest minutes with failed polls, a breaker episode.
    fn activity(&self) {
        for server in ["local", "gcp"] {
            self.sql(
                server,
                0,
                &format!(
                    "INSERT INTO essops.reconcile_runs (site, table_name, window_start, window_end, server_a, server_b, dry_run,
                                                       compared, differing, copied_to_a, copied_to_b, seconds, outcome, at)
                     VALUES ('Alpha', 'rack', '{BAD_DAY} 00:00+09', '{BAD_DAY} 00:00+09'::timestamptz + interval '1 day',
                             'local', 'gcp', false, 96, 3, 0, 21600, 4.2, 'ok', '{BAD_DAY} 00:00+09'::timestamptz + interval '25 hours');
                     INSERT INTO essops.ingest_minutes (site, devices, host, server, minute, polls_ok, polls_failed, failed_by_reason,
                                                       rows_written, rows_spooled, rows_replayed, spool_rows, spool_bytes, breakers_open)
                     SELECT 'Alpha', 'all', 'edge1', '{server}', m, 300, f, jsonb_build_object('timeout', f, 'refused', 0),
                            300, 0, 0, CASE WHEN f > 0 THEN 600 ELSE 0 END, 0, (f > 0)::int
                       FROM generate_series('{BAD_DAY} 02:00+09'::timestamptz, '{BAD_DAY} 07:59+09', interval '1 minute') m,
                            LATERAL (SELECT CASE WHEN m < '{BAD_DAY} 06:00+09' THEN 60 ELSE 0 END AS f) x;
                     INSERT INTO essops.ingest_events (site, devices, host, server, at, event, device, detail)
                     VALUES ('Alpha', 'all', 'edge1', NULL, '{BAD_DAY} 02:00+09', 'breaker_opened', '{BAD_RACK}', 'timeouts'),
                            ('Alpha', 'all', 'edge1', NULL, '{BAD_DAY} 06:00+09', 'breaker_closed', '{BAD_RACK}', 'answered');"
                ),
            );
        }
    }

    fn report(&self, out: &Path) -> crate::support::cmd::Run {
        Cmd::new(Some(&self.config))
            .args([
                "report",
                "--from",
                FIRST_DAY,
                "--to",
                "2026-03-09",
                "--output",
            ])
            .args([out.to_str().unwrap()])
            .run()
    }
}

/// Headless Chromium with no network and no profile left behind.
pub(crate) fn chromium(scratch: &Scratch, page: &Path, extra: &[String]) -> std::process::Output {
    Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--hide-scrollbars",
            "--proxy-server=127.0.0.1:9",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
            "--window-size=1200,2200",
        ])
        .arg(format!(
            "--user-data-dir={}",
            scratch.path.join("chromium").display()
        ))
        .args(extra)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("run chromium (scripts/services.sh up installs it)")
}

/// Mean and variance of the screenshot's grey levels.
fn grey_variance(png_file: &Path) -> f64 {
    let decoder = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(png_file).unwrap(),
    ));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    let greys: Vec<f64> = buf[..info.buffer_size()]
        .chunks(channels)
        .map(|px| px.iter().take(3).map(|c| f64::from(*c)).sum::<f64>() / 3.0)
        .collect();
    let mean = greys.iter().sum::<f64>() / greys.len() as f64;
    greys.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / greys.len() as f64
}

#[test]
fn report_shows_a_planted_bad_night_in_a_real_browser() {
    let s = setup("report_page");
    for server in ["local", "gcp"] {
        s.loss_history("Alpha", 0, server, LAST_DAY);
    }
    s.loss_history("Beta", 1, "local", LAST_DAY);
    s.loss_history("Beta", 1, "gcp", "2026-03-07");
    s.beta_last_day_raw();
    s.activity();

    let page = s.scratch.path.join("r.html");
    let run = s.report(&page);
    assert_eq!(run.code(), 0, "{}{}", run.stdout(), run.stderr());
    assert!(
        run.stdout().contains("report written to"),
        "{}",
        run.stdout()
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(html.contains("Content-Security-Policy"));
    for fetch in ["<script", "src=\"http", "href=\"http", "url("] {
        assert!(!html.contains(fetch), "the page fetches or runs `{fetch}`");
    }
    assert!(!html.contains("password"), "a secret reached the page");
    // The measured-on-the-spot day: Beta's rack 3 lost an hour on gcp.
    assert!(
        html.contains("Measured on the spot") && html.contains("server gcp: 2026-03-08"),
        "the page does not say what it measured now"
    );
    assert!(
        html.contains("gcp: expected 86400, missing 3600"),
        "rack 3's hour"
    );

    let dom = chromium(&s.scratch, &page, &["--dump-dom".into()]);
    let text = String::from_utf8_lossy(&dom.stdout);
    let log = String::from_utf8_lossy(&dom.stderr);
    assert!(dom.status.success(), "chromium failed: {log}");
    for site in ["Alpha", "Beta"] {
        assert!(
            text.contains(&format!("<h2>{site} ")),
            "{site} missing from the DOM"
        );
    }
    let bad_cell = format!(
        "class=\"critical\"><title>{BAD_RACK}, {BAD_DAY}: critical\nlocal: expected 86400, missing 21600"
    );
    assert!(
        text.contains(&bad_cell),
        "no critical cell for the bad night"
    );
    // Each server's table sizes, as `essops size` gives them.
    assert!(text.contains("<table class=\"sizes\">"), "no size table");
    // Its neighbours that night are fine.
    assert!(text.contains(&format!("<title>bank 1 / rack 1, {BAD_DAY}: info")));
    for line in log.lines() {
        assert!(
            !(line.contains("CONSOLE") || line.contains("Refused to") || line.contains("Uncaught")),
            "browser console: {line}"
        );
    }

    let shot = s.scratch.path.join("r.png");
    let out = chromium(
        &s.scratch,
        &page,
        &[format!("--screenshot={}", shot.display())],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let variance = grey_variance(&shot);
    assert!(
        variance > 100.0,
        "the screenshot is blank (grey variance {variance:.1})"
    );
    // How docs/report.png is made: ESSOPS_REPORT_SHOT=docs/report.png.
    if let Ok(keep) = std::env::var("ESSOPS_REPORT_SHOT") {
        std::fs::copy(&shot, Path::new(crate::support::REPO).join(keep)).unwrap();
    }
}

#[test]
fn report_refuses_a_file_that_is_not_html_and_an_unknown_site() {
    let s = setup("report_refuse");
    let run = Cmd::new(Some(&s.config))
        .args(["report", "--days", "7", "--output", "r.pdf"])
        .run();
    assert_eq!(run.code(), 2, "{}", run.stderr());
    assert!(
        run.stderr().contains("r.pdf") && run.stderr().contains(".html"),
        "{}",
        run.stderr()
    );
    let out = s.scratch.path.join("r.html");
    let run = Cmd::new(Some(&s.config))
        .args([
            "report",
            "--site",
            "Gamma",
            "--output",
            out.to_str().unwrap(),
        ])
        .run();
    assert_ne!(run.code(), 0);
    assert!(run.stderr().contains("Gamma"), "{}", run.stderr());
    assert!(!out.exists(), "a page was written for an unknown site");
}
