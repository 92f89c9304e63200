//! `essops kpi` on planted days whose answers are known exactly: a spread
//! spike, a 180 s fault, counters with a reset, a month of falling SoH, DST
//! days and a rack that sent nothing. Each figure is checked in `--json`
//! and in the history (`essops.kpi_daily`, `essops.alarm_intervals`).

use std::path::PathBuf;

use serde_json::Value;

use crate::support::{Cmd, Scratch, TestDb, servers_toml};

const DAY: &str = "2026-03-10";

struct Setup {
    db: TestDb,
    scratch: Scratch,
    config: PathBuf,
}

/// One site per (name, zone), each in its own database, migrated on both servers.
fn setup(test: &str, sites: &[(&str, &str)], extra: &str) -> Setup {
    let db = TestDb::new(test, sites.len());
    let scratch = Scratch::new(test);
    let mut text = format!(
        "log_dir = \"{}\"\n{}",
        scratch.path.join("logs").display(),
        servers_toml()
    );
    for (i, (name, tz)) in sites.iter().enumerate() {
        text.push_str(&format!(
            "[[sites]]\nname = \"{name}\"\ndatabase = \"{}\"\ntimezone = \"{tz}\"\nbanks = [{{ id = 1, racks = 3 }}]\npcs = [1]\nrated_kwh = 1000\n",
            db.databases[i]
        ));
    }
    text.push_str(extra);
    let config = scratch.write("sites.toml", &text);
    Cmd::new(Some(&config))
        .args(["migrate", "--create-database"])
        .run()
        .expect_code(0);
    Setup {
        db,
        scratch,
        config,
    }
}

fn rows_of<'a>(rows: &'a [Value], kind: &str) -> Vec<&'a Value> {
    rows.iter().filter(|r| r["kind"] == kind).collect()
}

fn one<'a>(rows: &'a [Value], kind: &str, server: &str, device: &str, day: &str) -> &'a Value {
    rows.iter()
        .find(|r| {
            r["kind"] == kind && r["server"] == server && r["day"] == day && {
                r.get("device").is_none_or(|d| d == device)
            }
        })
        .unwrap_or_else(|| panic!("no {kind} row for {device} on {server} {day}: {rows:#?}"))
}

/// The planted day in Asia/Seoul (every second), on one server.
fn plant_day(db: &TestDb, server: &str) {
    let day = |t: &str| format!("'{DAY} {t}+09'");
    let series = format!(
        "generate_series({}::timestamptz, {}::timestamptz, '1 second') AS t",
        day("00:00:00"),
        day("23:59:59")
    );
    db.execute(
        server,
        &format!(
            // Rack 1.1: 30 mV all day, 120 mV from 10:00 to 11:00; FAULT = 4 for 180 s at noon.
            r#"INSERT INTO rack ("TIMESTAMP", "BANK_ID", "RACK_ID", "SOC", "SOH", "MAX_CELL_VOLTAGE", "MIN_CELL_VOLTAGE",
                                "MAX_CELL_TEMP", "MIN_CELL_TEMP", "ALARM", "FAULT")
               SELECT t, 1, 1, 50, 92.1,
                      CASE WHEN t >= {ten} AND t < {eleven} THEN 3.45 ELSE 3.36 END, 3.33, 30, 27, 0,
                      CASE WHEN t >= {noon} AND t < {noon3} THEN 4 ELSE 0 END
                 FROM {series};
               -- Rack 1.2: 30 mV, SOC 5 points above rack 1.1.
               INSERT INTO rack ("TIMESTAMP", "BANK_ID", "RACK_ID", "SOC", "SOH", "MAX_CELL_VOLTAGE", "MIN_CELL_VOLTAGE", "ALARM", "FAULT")
               SELECT t, 1, 2, 55, 92.1, 3.36, 3.33, 0, 0 FROM {series};
               -- Rack 1.3 sends nothing. The bank answers all day.
               INSERT INTO bank ("TIMESTAMP", "BANK_ID", "SOC", "FAULT") SELECT t, 1, 52.5, 0 FROM {series};
               -- PCS 1: CHARGED rises 500, is reset to 0 at noon and rises 500 again;
               -- DISCHARGED rises 900; it discharges 100 kW from 18:00 to 20:00
               -- and 50 kW from 21:00 to 22:00.
               INSERT INTO pcs ("TIMESTAMP", "PCS_ID", "CHARGED_ENERGY", "DISCHARGED_ENERGY", "AC_ACTIVE_POWER", "FAULT")
               SELECT t, 1,
                      CASE WHEN s < 43200 THEN 5000 + 500.0 * s / 43199 ELSE 500.0 * (s - 43200) / 43199 END,
                      2000 + 900.0 * s / 86399,
                      CASE WHEN t >= {six} AND t < {eight} THEN 100
                           WHEN t >= {nine} AND t < {ten_pm} THEN 50
                           ELSE 0 END,
                      0
                 FROM (SELECT t, extract(epoch FROM t - {midnight})::int AS s FROM {series}) x;"#,
            ten = day("10:00:00"),
            eleven = day("11:00:00"),
            noon = day("12:00:00"),
            noon3 = day("12:03:00"),
            six = day("18:00:00"),
            eight = day("20:00:00"),
            nine = day("21:00:00"),
            ten_pm = day("22:00:00"),
            midnight = day("00:00:00"),
        ),
    );
    // The 29 days before: rack 1.2's SoH once an hour, falling 0.1 % a day
    // from 95 % (the planted day is the 30th: 92.1 %).
    db.execute(
        server,
        r#"INSERT INTO rack ("TIMESTAMP", "BANK_ID", "RACK_ID", "SOH")
               SELECT '2026-02-09 00:00:00+09'::timestamptz + make_interval(days => k, hours => h), 1, 2, 95 - 0.1 * k
                 FROM generate_series(0, 28) AS k, generate_series(0, 23) AS h"#,
    );
}

#[test]
fn kpi_reports_the_planted_day_exactly_and_keeps_it_once() {
    let s = setup("kpi_planted", &[("Seoul", "Asia/Seoul")], "");
    for server in ["local", "gcp"] {
        plant_day(&s.db, server);
    }
    // The month first (the trend is fitted on the kept medians), then the day alone.
    Cmd::new(Some(&s.config))
        .args([
            "kpi",
            "--from",
            "2026-02-09",
            "--to",
            "2026-03-11",
            "--json",
        ])
        .run();
    let run = Cmd::new(Some(&s.config))
        .args(["kpi", "--site", "Seoul", "--date", DAY, "--json"])
        .run()
        .expect_code(11);
    let rows: Vec<Value> = run.json();

    for server in ["local", "gcp"] {
        let r11 = one(&rows, "rack", server, "bank 1 / rack 1", DAY);
        assert_eq!(r11["cell_spread_max_mv"], 120.0, "{r11}");
        assert_eq!(r11["cell_spread_p50_mv"], 30.0, "{r11}");
        // One hour of 24 is under 5 %: the p95 is still 30 mV, so the day grades on it.
        assert_eq!(r11["cell_spread_p95_mv"], 30.0, "{r11}");
        assert_eq!(r11["temp_spread_max_c"], 3.0, "{r11}");
        assert_eq!(r11["fault_secs"], 180, "{r11}");
        assert_eq!(r11["fault_intervals"], 1, "{r11}");
        assert_eq!(r11["longest_fault_secs"], 180, "{r11}");
        assert_eq!(r11["samples"], 86_400, "{r11}");
        // 86,220 fault-free seconds of 86,400.
        assert_eq!(r11["availability_pct"], 99.79, "{r11}");
        assert_eq!(r11["outside_limits_secs"]["MAX_CELL_VOLTAGE"], 0, "{r11}");

        let r12 = one(&rows, "rack", server, "bank 1 / rack 2", DAY);
        assert_eq!(r12["soh_trend_days"], 30, "{r12}");
        let slope = r12["soh_slope_pct_per_day"].as_f64().unwrap();
        assert!((slope + 0.1).abs() < 0.001, "{r12}");
        // 95 % on 2026-02-09 falling 0.1 % a day reaches 80 % 150 days later.
        let eol: chrono::NaiveDate = r12["soh_eol_date"].as_str().unwrap().parse().unwrap();
        let exact: chrono::NaiveDate = "2026-07-09".parse().unwrap();
        assert!((eol - exact).num_days().abs() <= 1, "{eol} vs {exact}");

        let r13 = one(&rows, "rack", server, "bank 1 / rack 3", DAY);
        assert_eq!(r13["samples"], 0, "{r13}");
        assert_eq!(r13["availability_pct"], 0.0, "{r13}");
        assert!(r13.get("cell_spread_max_mv").is_none(), "{r13}");
        assert_eq!(
            r13["level"], "critical",
            "a rack that sent nothing is not available"
        );

        let bank = one(&rows, "bank", server, "bank 1", DAY);
        assert_eq!(bank["soc_spread_max_pct"], 5.0, "{bank}");
        assert_eq!(bank["worst_rack"], "bank 1 / rack 1", "{bank}");
        assert_eq!(bank["worst_rack_spread_mv"], 120.0, "{bank}");

        let pcs = one(&rows, "pcs", server, "pcs 1", DAY);
        assert_eq!(pcs["charged_kwh"], 1000.0, "{pcs}");
        assert_eq!(pcs["discharged_kwh"], 900.0, "{pcs}");
        assert_eq!(pcs["charged_method"], "counter", "{pcs}");
        assert_eq!(pcs["rte_day_pct"], 90.0, "{pcs}");
        assert_eq!(pcs["rte_30d_pct"], 90.0, "{pcs}");
        assert_eq!(pcs["demonstrated_kwh"], 200.0, "{pcs}");

        let site = one(&rows, "site", server, "site", DAY);
        assert_eq!(site["equivalent_full_cycles"], 0.9, "{site}");
        assert_eq!(site["capacity_ratio"], 0.2, "{site}");
        assert_eq!(site["rte_30d_pct"], 90.0, "{site}");
    }
    let faults: Vec<&Value> = rows_of(&rows, "alarm_interval")
        .into_iter()
        .filter(|i| i["server"] == "local" && i["device"] == "bank 1 / rack 1")
        .collect();
    let word = faults.iter().find(|i| i["bit"].is_null()).unwrap();
    assert_eq!(
        (&word["word"], &word["duration_secs"], &word["start"]),
        (
            &Value::from("fault"),
            &Value::from(180),
            &Value::from("2026-03-10T12:00:00+09:00")
        )
    );
    let bit = faults
        .iter()
        .find(|i| i["bit"] == 2)
        .expect("FAULT = 4 is bit 2");
    assert_eq!(bit["duration_secs"], 180);
    assert_eq!(faults.len(), 2, "the word and its one bit: {faults:#?}");

    // The history holds the day once per server, and a re-run replaces it.
    let count = |table: &str| {
        s.db.scalar(
            "local",
            &format!("SELECT count(*) FROM essops.{table} WHERE day = '{DAY}'"),
        )
    };
    let before = (count("kpi_daily"), count("alarm_intervals"));
    assert_eq!(
        before.0,
        3 + 1 + 1 + 1,
        "3 racks, a bank, a PCS and the site"
    );
    Cmd::new(Some(&s.config))
        .args(["kpi", "--date", DAY, "--quiet"])
        .run()
        .expect_code(11);
    assert_eq!((count("kpi_daily"), count("alarm_intervals")), before);
    let kept = s.db.rows(
        "gcp",
        &format!(
            "SELECT cell_spread_max_mv, fault_secs, (figures->>'soh_eol_date') IS NOT NULL
               FROM essops.kpi_daily WHERE day = '{DAY}' AND table_name = 'rack' ORDER BY device_ids"
        ),
    );
    assert_eq!(kept[0].get::<_, Option<f64>>(0), Some(120.0));
    assert_eq!(kept[0].get::<_, Option<i64>>(1), Some(180));
    assert!(kept[1].get::<_, bool>(2), "rack 1.2's projection is kept");
    let interval = s.db.rows(
        "gcp",
        &format!(
            "SELECT duration_s, word FROM essops.alarm_intervals WHERE day = '{DAY}' AND bit IS NULL"
        ),
    );
    assert_eq!(
        (
            interval[0].get::<_, i64>(0),
            interval[0].get::<_, String>(1)
        ),
        (180, "fault".to_string())
    );

    // The report shows them, in a real browser.
    let page = s.scratch.path.join("kpi.html");
    Cmd::new(Some(&s.config))
        .args([
            "report",
            "--from",
            "2026-03-04",
            "--to",
            "2026-03-11",
            "--output",
        ])
        .args([page.to_str().unwrap()])
        .run()
        .expect_code(0);
    let dom = crate::report::chromium(&s.scratch, &page, &["--dump-dom".into()]);
    assert!(
        dom.status.success(),
        "{}",
        String::from_utf8_lossy(&dom.stderr)
    );
    let text = String::from_utf8_lossy(&dom.stdout);
    for shown in [
        "Cell voltage spread p95 per rack and day",
        &format!("<title>bank 1 / rack 1, {DAY}: cell spread p95 30 mV, max 120 mV</title>"),
        "SoH per day, the racks nearest their end of life",
        "bank 1 / rack 2 (EoL 2026-07-",
        "Energy per day (site)",
        "Round-trip efficiency, 30 days to each day (site)",
        "Alarms and faults: bank 1",
        "fault 2026-03-10 12:00:00 to 2026-03-10 12:03:00 (180 s)",
    ] {
        assert!(text.contains(shown), "`{shown}` is not on the page");
    }
}

#[test]
fn kpi_counts_dst_days_by_their_own_length() {
    let s = setup("kpi_dst", &[("NewYork", "America/New_York")], "");
    // A rack and a PCS answering every second of the 23-hour and the 25-hour day.
    for (day, next) in [("2026-03-08", "2026-03-09"), ("2026-11-01", "2026-11-02")] {
        s.db.execute(
            "local",
            &format!(
                r#"INSERT INTO rack ("TIMESTAMP", "BANK_ID", "RACK_ID", "MAX_CELL_VOLTAGE", "MIN_CELL_VOLTAGE", "FAULT")
                   SELECT t, 1, 1, 3.36, 3.33, 0
                     FROM generate_series(('{day}'::timestamp AT TIME ZONE 'America/New_York'),
                                          ('{next}'::timestamp AT TIME ZONE 'America/New_York') - interval '1 second',
                                          '1 second') AS t"#
            ),
        );
    }
    let rows: Vec<Value> = Cmd::new(Some(&s.config))
        .args(["kpi", "--server", "local", "--date", "2026-03-08", "--json"])
        .run()
        .json();
    let short = one(&rows, "rack", "local", "bank 1 / rack 1", "2026-03-08");
    assert_eq!(
        (&short["samples"], &short["availability_pct"]),
        (&Value::from(82_800), &Value::from(100.0))
    );
    let rows: Vec<Value> = Cmd::new(Some(&s.config))
        .args(["kpi", "--server", "local", "--date", "2026-11-01", "--json"])
        .run()
        .json();
    let long = one(&rows, "rack", "local", "bank 1 / rack 1", "2026-11-01");
    assert_eq!(
        (&long["samples"], &long["availability_pct"]),
        (&Value::from(90_000), &Value::from(100.0))
    );
    // A PCS with no rows: no energy, no method, no RTE, and the site says so.
    let pcs = one(&rows, "pcs", "local", "pcs 1", "2026-11-01");
    assert_eq!(
        (
            &pcs["charged_kwh"],
            &pcs["charged_method"],
            &pcs["rte_day_pct"]
        ),
        (&Value::Null, &Value::from("none"), &Value::Null)
    );

    // --output: the device and site rows, a column per field.
    let csv = s.scratch.path.join("kpi.csv");
    Cmd::new(Some(&s.config))
        .args([
            "kpi",
            "--server",
            "local",
            "--date",
            "2026-11-01",
            "--quiet",
            "--output",
        ])
        .args([csv.to_str().unwrap()])
        .run();
    let text = std::fs::read_to_string(&csv).unwrap();
    let header: Vec<&str> = text.lines().next().unwrap().split(',').collect();
    for column in [
        "kind",
        "device",
        "samples",
        "availability_pct",
        "cell_spread_max_mv",
        "level",
    ] {
        assert!(header.contains(&column), "{column} not in {header:?}");
    }
    let line = text
        .lines()
        .find(|l| l.starts_with("rack,local,NewYork,2026-11-01,bank 1 / rack 1,info,"))
        .unwrap_or_else(|| panic!("no rack line in\n{text}"));
    assert!(line.contains(",90000,"), "{line}");
    assert!(
        !text.lines().any(|l| l.starts_with("alarm_interval")),
        "intervals are not device rows"
    );
    let refused = Cmd::new(Some(&s.config))
        .args(["kpi", "--output", "kpi.xlsx"])
        .run()
        .expect_code(2);
    assert!(
        refused.stderr().contains("must end in .csv or .parquet"),
        "{}",
        refused.stderr()
    );
}

/// Rack figures as PostgreSQL's own `percentile_cont` gives them over the
/// raw rows of `[from, to)`, rounded as `--json` rounds them, per rack; and
/// the bank's SOC spread p95 and max.
fn exact_figures(db: &TestDb, from: &str, to: &str) -> (Vec<[f64; 7]>, [f64; 2]) {
    let window = format!(r#""TIMESTAMP" >= '{from}' AND "TIMESTAMP" < '{to}'"#);
    let racks = db.rows(
        "local",
        &format!(
            r#"SELECT count(*)::float8,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY "MAX_CELL_VOLTAGE" - "MIN_CELL_VOLTAGE"),
                      percentile_cont(0.95) WITHIN GROUP (ORDER BY "MAX_CELL_VOLTAGE" - "MIN_CELL_VOLTAGE"),
                      max("MAX_CELL_VOLTAGE" - "MIN_CELL_VOLTAGE")::float8,
                      percentile_cont(0.95) WITHIN GROUP (ORDER BY "MAX_CELL_TEMP" - "MIN_CELL_TEMP"),
                      max("MAX_CELL_TEMP" - "MIN_CELL_TEMP")::float8,
                      percentile_cont(0.5) WITHIN GROUP (ORDER BY "SOH")
                 FROM rack WHERE {window} GROUP BY "RACK_ID" ORDER BY "RACK_ID""#
        ),
    );
    let (r1, r2) = (
        |v: f64| (v * 10.0).round() / 10.0,
        |v: f64| (v * 100.0).round() / 100.0,
    );
    let racks = racks
        .iter()
        .map(|r| {
            let f = |i: usize| r.get::<_, f64>(i);
            [
                f(0),
                r1(f(1) * 1000.0),
                r1(f(2) * 1000.0),
                r1(f(3) * 1000.0),
                r2(f(4)),
                r2(f(5)),
                r2(f(6)),
            ]
        })
        .collect();
    let bank = db.rows(
        "local",
        &format!(
            r#"SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY spread), max(spread)
                 FROM (SELECT max("SOC")::float8 - min("SOC")::float8 AS spread FROM rack
                        WHERE {window} GROUP BY "TIMESTAMP" HAVING count("SOC") > 1) s"#
        ),
    );
    (racks, [r2(bank[0].get(0)), r2(bank[0].get(1))])
}

/// The same figures from `essops kpi --json` of `args`.
fn kpi_figures(s: &Setup, args: &[&str]) -> (Vec<[f64; 7]>, [f64; 2]) {
    let rows: Vec<Value> = Cmd::new(Some(&s.config))
        .args(["kpi", "--server", "local", "--json"])
        .args(args)
        .run()
        .json();
    let racks = rows_of(&rows, "rack")
        .iter()
        .filter(|r| r["samples"].as_i64() > Some(0))
        .map(|r| {
            let f = |k: &str| r[k].as_f64().unwrap_or_else(|| panic!("{k} in {r}"));
            [
                f("samples"),
                f("cell_spread_p50_mv"),
                f("cell_spread_p95_mv"),
                f("cell_spread_max_mv"),
                f("temp_spread_p95_c"),
                f("temp_spread_max_c"),
                f("soh_median"),
            ]
        })
        .collect();
    let bank = rows_of(&rows, "bank")[0];
    (
        racks,
        [
            bank["soc_spread_p95_pct"].as_f64().unwrap(),
            bank["soc_spread_max_pct"].as_f64().unwrap(),
        ],
    )
}

/// The KPI rollup changes where the figures are read from, never what they
/// are: before any rollup (raw rows), after it (15-minute histograms), after
/// late rows land in rolled buckets (those buckets from raw again), and for
/// a window that is not whole quarter hours, each figure equals PostgreSQL's
/// `percentile_cont` over the raw rows. In a zone 5:30 from UTC, so the
/// local day is not whole UTC hours.
#[test]
fn kpi_figures_are_the_same_from_the_rollup_and_from_raw_rows() {
    let s = setup("kpi_rollup", &[("Pune", "Asia/Kolkata")], "");
    let (from, to) = ("2026-03-10 00:00:00+05:30", "2026-03-11 00:00:00+05:30");
    let racks = |gaps: &str, volt: &str| {
        format!(
            r#"INSERT INTO rack ("TIMESTAMP", "BANK_ID", "RACK_ID", "SOC", "SOH",
                                 "MAX_CELL_VOLTAGE", "MIN_CELL_VOLTAGE", "MAX_CELL_TEMP", "MIN_CELL_TEMP")
               SELECT t, 1, r, 50 + ((s * 3 + r * 5) % 17) / 2.0, 90 + ((s / 3600 + r) % 5) / 10.0,
                      {volt}, 3.30, 25 + ((s * 17 + r) % 23) / 10.0, 25
                 FROM (SELECT t, extract(epoch FROM t - '{from}')::int AS s
                         FROM generate_series('{from}'::timestamptz, '{to}'::timestamptz - interval '1 second', '1 second') t) x,
                      generate_series(1, 3) r
                WHERE {gaps}"#
        )
    };
    // Every second but one in 50 per rack; spreads of 0 to 40 mV.
    let gap = "(s * 7 + r) % 50 = 0";
    s.db.execute(
        "local",
        &racks(
            &format!("NOT ({gap})"),
            "3.30 + ((s * 37 + r * 11) % 41) / 1000.0",
        ),
    );
    let day = ["--date", "2026-03-10"];
    let exact = exact_figures(&s.db, from, to);
    assert_eq!(exact.0.len(), 3);
    assert_eq!(kpi_figures(&s, &day), exact, "from raw rows");

    Cmd::new(Some(&s.config))
        .args(["rollup", "--server", "local", "--quiet"])
        .run()
        .expect_code(0);
    let buckets = s.db.scalar(
        "local",
        &format!(
            r#"SELECT count(*) FROM rack_kpi WHERE "BUCKET" >= '{from}' AND "BUCKET" < '{to}'"#
        ),
    );
    assert_eq!(buckets, 3 * 96, "a bucket per rack and quarter hour");
    assert_eq!(kpi_figures(&s, &day), exact, "from the rollup");

    // The missing seconds arrive late, with 200 mV spreads: the rollup has not
    // seen them, the KPIs must.
    s.db.execute("local", &racks(gap, "3.50"));
    let late = exact_figures(&s.db, from, to);
    assert_ne!(late, exact);
    assert_eq!(late.0[0][3], 200.0);
    assert_eq!(kpi_figures(&s, &day), late, "the rollup and the late rows");

    let (a, b) = ("2026-03-10 05:07:30+05:30", "2026-03-10 20:52:10+05:30");
    assert_eq!(
        kpi_figures(
            &s,
            &[
                "--from",
                "2026-03-10 05:07:30",
                "--to",
                "2026-03-10 20:52:10"
            ]
        ),
        exact_figures(&s.db, a, b),
        "a window that is not whole quarter hours"
    );

    // A day the mark passed before the KPI rollup existed (an upgrade to
    // schema version 8): no bucket at all, so it is read as raw rows.
    s.db.execute(
        "local",
        &format!(
            r#"DELETE FROM rack_kpi WHERE "BUCKET" >= '{from}' AND "BUCKET" < '{to}';
               DELETE FROM rack_bank_kpi WHERE "BUCKET" >= '{from}' AND "BUCKET" < '{to}'"#
        ),
    );
    assert_eq!(
        kpi_figures(&s, &day),
        late,
        "a rolled day without KPI buckets"
    );
}

/// A server migrated before schema version 8 has no KPI rollup: kpi and
/// rollup name the missing table and what to run, and measure the rest.
#[test]
fn kpi_and_rollup_name_a_missing_kpi_rollup() {
    let s = setup("kpi_no_rollup", &[("Seoul", "Asia/Seoul")], "");
    s.db.execute("local", "DROP TABLE rack_kpi");
    let says =
        "the KPI rollup `rack_kpi` does not exist: run essops migrate (schema version 8 adds it)";
    plant_day(&s.db, "local");
    // The rack table is not measured (4); the bank and the PCS are.
    let kpi = Cmd::new(Some(&s.config))
        .args(["kpi", "--server", "local", "--date", DAY, "--json"])
        .run()
        .expect_code(4);
    let rows: Vec<Value> = kpi.json();
    let failure = rows_of(&rows, "failure");
    assert_eq!(failure.len(), 1, "{rows:#?}");
    assert_eq!(failure[0]["table"], "rack");
    assert!(
        failure[0]["error"].as_str().unwrap().contains(says),
        "{}",
        failure[0]
    );
    assert!(
        !rows_of(&rows, "bank").is_empty(),
        "the bank table is still measured"
    );
    let rollup = Cmd::new(Some(&s.config))
        .args(["rollup", "--server", "local"])
        .run()
        .expect_code(4);
    assert!(rollup.stdout().contains(says), "{}", rollup.stdout());
}
