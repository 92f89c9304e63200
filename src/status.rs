//! `essops status`: one screen for the fleet. Per site: is ingest alive (its
//! heartbeat in the history), how old is the newest sample per server and
//! table, the spool and open breakers, yesterday's loss, the last reconcile,
//! and the age of the Redis cache. Each line is ok, warning, critical or
//! unknown (a source that cannot be read), against `[status]`'s limits.
//!
//! Exit code: the worst line, in the README's table (0, 10, 11; 4 when a
//! source cannot be read and nothing is critical). `--nagios` gives a
//! monitoring plugin's codes instead (0 ok, 1 warning, 2 critical, 3 unknown).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{AgeLimits, Config, Site};
use crate::context::Context;
use crate::db::{self, Target};
use crate::exit::Outcome;
use crate::history::read::{self, Heartbeat};
use crate::loss::gaps::{Grade, loss_pct};
use crate::output::{Report, human_bytes};
use crate::schema::TIME_COLUMN;
use crate::sql::quote_ident;

/// The fleet at a glance: ingest alive, newest samples, spool, breakers,
/// yesterday's loss, last reconcile, cache age, per site.
///
/// Exit code: the worst state: 0 ok, 10 warning, 11 critical, 4 when a
/// source cannot be read (and nothing is critical). --nagios: 0/1/2/3.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Only this site (repeatable; default: all).
    #[arg(long = "site", value_name = "NAME")]
    pub sites: Vec<String>,
    /// Exit as a monitoring plugin does: 0 ok, 1 warning, 2 critical, 3 unknown.
    #[arg(long)]
    pub nagios: bool,
    /// Redraw every DURATION (e.g. 10s) until Ctrl-C.
    #[arg(long, value_name = "DURATION", value_parser = crate::window::parse_std_duration)]
    pub watch: Option<Duration>,
    /// Also write the figures to FILE for node_exporter's textfile
    /// collector (written beside it, then renamed).
    #[arg(long, value_name = "FILE")]
    pub prometheus: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ok,
    Warning,
    Unknown,
    Critical,
}

impl State {
    /// Worst first: critical, unknown, warning, ok.
    fn rank(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Unknown => 2,
            State::Critical => 3,
        }
    }

    fn of_age(age: Duration, limits: AgeLimits) -> State {
        if age >= limits.critical {
            State::Critical
        } else if age >= limits.warning {
            State::Warning
        } else {
            State::Ok
        }
    }

    fn of_grade(g: Grade) -> State {
        match g {
            Grade::Info => State::Ok,
            Grade::Warning => State::Warning,
            Grade::Critical => State::Critical,
        }
    }

    fn nagios(self) -> u8 {
        match self {
            State::Ok => 0,
            State::Warning => 1,
            State::Critical => 2,
            State::Unknown => 3,
        }
    }

    fn label(self) -> &'static str {
        match self {
            State::Ok => "ok",
            State::Warning => "WARNING",
            State::Unknown => "UNKNOWN",
            State::Critical => "CRITICAL",
        }
    }
}

/// The checks, in the order a site's lines are shown.
const CHECKS: [&str; 10] = [
    "server",
    "ingest",
    "spool",
    "breakers",
    "sample",
    "loss",
    "kpi",
    "reconcile",
    "cache",
    "size",
];

#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    pub site: String,
    /// ingest, sample, spool, breakers, loss, kpi, reconcile, cache or server.
    pub check: &'static str,
    /// What the line is about: a server, a table on a server, a host's device group.
    pub target: String,
    pub state: State,
    /// The figure the state was judged on, for scripts and Prometheus.
    pub value: Option<f64>,
    pub detail: String,
}

/// A judged figure: its state, the number it was judged on, and the words.
type Judged = (State, Option<f64>, String);

impl StatusRow {
    fn new(
        site: &Site,
        check: &'static str,
        target: impl Into<String>,
        judged: Judged,
    ) -> StatusRow {
        let (state, value, detail) = judged;
        StatusRow {
            site: site.name.clone(),
            check,
            target: target.into(),
            state,
            value,
            detail,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub rows: Vec<StatusRow>,
    #[serde(skip)]
    nagios: bool,
    /// Yesterday's graded KPIs per device, for `--prometheus`.
    #[serde(skip)]
    kpis: Vec<KpiGauge>,
}

/// One device's (or site's) graded KPIs of yesterday, as gauges.
#[derive(Debug, Clone)]
struct KpiGauge {
    site: String,
    server: String,
    table: String,
    device: String,
    grade: Grade,
    figures: Vec<(&'static str, f64)>,
}

#[derive(Debug)]
pub struct StatusPlan {
    sites: Vec<Site>,
    nagios: bool,
    prometheus: Option<PathBuf>,
}

impl crate::command::Plan for StatusPlan {}

pub fn plan(args: &StatusArgs, ctx: &Context) -> crate::error::Result<StatusPlan> {
    Ok(StatusPlan {
        sites: ctx
            .config
            .select_sites(&args.sites)?
            .into_iter()
            .cloned()
            .collect(),
        nagios: args.nagios,
        prometheus: args.prometheus.clone(),
    })
}

pub async fn execute(plan: &StatusPlan, ctx: &Context) -> crate::error::Result<StatusReport> {
    let now = Utc::now();
    let sites = crate::tasks::run_in_order(
        plan.sites.clone(),
        |site| {
            let config = std::sync::Arc::clone(&ctx.config);
            async move { site_rows(&config, &site, now).await }
        },
        || {},
    )
    .await;
    let (mut rows, mut kpis) = (Vec::new(), Vec::new());
    for (r, k) in sites {
        rows.extend(r);
        kpis.extend(k);
    }
    rows.extend(cache_rows(&ctx.config, &plan.sites, now).await);
    // Per site (in config order), the checks in a fixed order.
    let site_rank = |name: &str| plan.sites.iter().position(|s| s.name == name);
    rows.sort_by_key(|r| {
        (
            site_rank(&r.site),
            CHECKS.iter().position(|c| *c == r.check),
        )
    });
    let report = StatusReport {
        rows,
        nagios: plan.nagios,
        kpis,
    };
    if let Some(path) = &plan.prometheus {
        write_prometheus(path, &report.rows, &report.kpis).map_err(|e| {
            crate::error::Error::Output(std::io::Error::other(format!(
                "--prometheus {}: {e}",
                path.display()
            )))
        })?;
    }
    Ok(report)
}

/// Everything about one site, from each of its servers, and yesterday's KPIs.
async fn site_rows(
    config: &Config,
    site: &Site,
    now: DateTime<Utc>,
) -> (Vec<StatusRow>, Vec<KpiGauge>) {
    let mut kpis = Vec::new();
    let limits = &config.status;
    let mut rows = Vec::new();
    let row = |check, target: String, state, value: Option<f64>, detail: String| {
        StatusRow::new(site, check, target, (state, value, detail))
    };
    let mut heartbeats: Vec<Heartbeat> = Vec::new();
    let mut reconcile: Option<read::LastReconcile> = None;
    let yesterday = now.with_timezone(&site.timezone).date_naive() - chrono::Duration::days(1);
    for name in &site.servers {
        let Ok(server) = config.server(name) else {
            continue;
        };
        let target = Target {
            server,
            database: &site.database,
        };
        let client = match db::connect(config, target).await {
            Ok(c) => c,
            Err(e) => {
                rows.push(row(
                    "server",
                    name.clone(),
                    State::Unknown,
                    None,
                    e.to_string(),
                ));
                continue;
            }
        };
        rows.extend(sample_rows(&client, site, name, now, limits.sample_age).await);
        match read::heartbeats(&client, &site.name).await {
            Ok(h) => heartbeats.extend(h),
            Err(e) => rows.push(row(
                "ingest",
                name.clone(),
                State::Unknown,
                None,
                history_error(&e),
            )),
        }
        rows.push(loss_row(&client, site, name, yesterday).await);
        let (row, gauges) = kpi_row(&client, site, name, yesterday).await;
        rows.push(row);
        kpis.extend(gauges);
        rows.push(size_row(&client, site, name).await);
        if let Ok(Some(r)) = read::last_reconcile(&client, &site.name).await
            && reconcile.as_ref().is_none_or(|have| have.at < r.at)
        {
            reconcile = Some(r);
        }
    }
    if !site.endpoints.is_empty() {
        // Every server holds every server's minutes: one of each is enough.
        heartbeats.sort_by(|a, b| {
            (&a.devices, &a.host, &a.server, a.minute)
                .cmp(&(&b.devices, &b.host, &b.server, b.minute))
        });
        heartbeats.dedup_by(|a, b| {
            (&a.devices, &a.host, &a.server, a.minute) == (&b.devices, &b.host, &b.server, b.minute)
        });
        rows.extend(ingest_rows(site, &heartbeats, now, config));
    }
    rows.push(reconcile_row(site, reconcile, now, limits.reconcile));
    (rows, kpis)
}

fn history_error(e: &tokio_postgres::Error) -> String {
    match e.code().map(|c| c.code()) {
        Some("3F000" | "42P01") => {
            "no history tables here: run `essops migrate` (schema version 2 adds them)".into()
        }
        _ => db::describe(e),
    }
}

/// The newest sample's age per table on one server.
async fn sample_rows(
    client: &Client,
    site: &Site,
    server: &str,
    now: DateTime<Utc>,
    limits: AgeLimits,
) -> Vec<StatusRow> {
    let mut rows = Vec::new();
    for spec in site.tables() {
        // The last day only: chunk exclusion keeps this to the newest chunk
        // (and TimescaleDB's default time index to a few pages of it).
        let sql = format!(
            "SELECT max({ts}) FROM {} WHERE {ts} > now() - interval '1 day'",
            quote_ident(spec.name),
            ts = quote_ident(TIME_COLUMN)
        );
        let target = format!("{server} {}", spec.name);
        let (state, value, detail) = match client.query_one(&sql, &[]).await {
            Ok(r) => match r.get::<_, Option<DateTime<Utc>>>(0) {
                Some(t) => {
                    let age = (now - t).to_std().unwrap_or_default();
                    (
                        State::of_age(age, limits),
                        Some(age.as_secs_f64()),
                        format!("newest sample {} ago", ago(age)),
                    )
                }
                None => (
                    State::Critical,
                    None,
                    "no sample in the last day".to_string(),
                ),
            },
            Err(e) => (State::Unknown, None, db::describe(&e)),
        };
        rows.push(StatusRow::new(
            site,
            "sample",
            target,
            (state, value, detail),
        ));
    }
    rows
}

/// Yesterday's recorded loss on one server, graded with the site's thresholds.
async fn loss_row(client: &Client, site: &Site, server: &str, day: chrono::NaiveDate) -> StatusRow {
    let (state, value, detail) = match read::loss_on(client, &site.name, server, day).await {
        Ok(tables) if tables.is_empty() => (
            State::Warning,
            None,
            format!("no loss recorded for {day}: run `essops loss` (the nightly unit does)"),
        ),
        Ok(tables) => {
            let (expected, missing) = tables
                .iter()
                .fold((0, 0), |(e, m), t| (e + t.expected, m + t.missing));
            let worst = tables
                .iter()
                .map(|t| {
                    (
                        Grade::of(loss_pct(t.expected, t.expected - t.missing), site.loss),
                        t,
                    )
                })
                .max_by_key(|(g, _)| *g);
            let pct = loss_pct(expected, expected - missing);
            let (grade, table) = worst.map_or((Grade::Info, ""), |(g, t)| (g, t.table.as_str()));
            let detail = match grade {
                Grade::Info => format!("{day}: {pct:.2} % lost"),
                _ => format!(
                    "{day}: {pct:.2} % lost; table {table} is {}",
                    grade.as_str()
                ),
            };
            (State::of_grade(grade), Some(pct), detail)
        }
        Err(e) => (State::Unknown, None, history_error(&e)),
    };
    StatusRow::new(site, "loss", server, (state, value, detail))
}

/// Yesterday's KPIs on one server: the worst grade, the rack with the
/// largest cell spread, the fault intervals still open at midnight; and
/// each device's graded figures for the gauges.
async fn kpi_row(
    client: &Client,
    site: &Site,
    server: &str,
    day: chrono::NaiveDate,
) -> (StatusRow, Vec<KpiGauge>) {
    use crate::history::kpi;
    let read = async {
        let days = kpi::days(client, &site.name, server, (day, day)).await?;
        let intervals = kpi::intervals(client, &site.name, server, (day, day)).await?;
        Ok::<_, tokio_postgres::Error>((days, intervals))
    };
    let (days, intervals) = match read.await {
        Ok(r) => r,
        Err(e) => {
            let judged = (State::Unknown, None, history_error(&e));
            return (StatusRow::new(site, "kpi", server, judged), Vec::new());
        }
    };
    if days.is_empty() {
        let judged = (
            State::Warning,
            None,
            format!("no KPIs recorded for {day}: run `essops kpi` (the nightly unit does)"),
        );
        return (StatusRow::new(site, "kpi", server, judged), Vec::new());
    }
    let grade_of = |g: &str| match g {
        "critical" => Grade::Critical,
        "warning" => Grade::Warning,
        _ => Grade::Info,
    };
    let worst = days
        .iter()
        .map(|d| grade_of(&d.grade))
        .max()
        .unwrap_or(Grade::Info);
    let spread = days
        .iter()
        .filter(|d| d.table_name == "rack")
        .filter_map(|d| d.cell_spread_max_mv.map(|s| (s, d)))
        .max_by(|a, b| a.0.total_cmp(&b.0));
    let open = intervals
        .iter()
        .filter(|i| i.word == "fault" && i.open)
        .count();
    let mut detail = format!("{day}:");
    if let Some((mv, d)) = spread {
        detail += &format!(" largest cell spread {mv} mV ({}),", d.device);
    }
    detail += &format!(" {open} fault interval(s) open at midnight");
    let graded: Vec<&kpi::KpiRecord> = days
        .iter()
        .filter(|d| grade_of(&d.grade) == worst)
        .collect();
    if worst != Grade::Info {
        let first = graded
            .first()
            .and_then(|d| {
                d.figures["reasons"]
                    .as_array()?
                    .first()?
                    .as_str()
                    .map(|r| format!("; {}: {r}", d.device))
            })
            .unwrap_or_default();
        detail += &format!("; {} {}{first}", graded.len(), worst.as_str());
    }
    let gauges = days
        .iter()
        .map(|d| KpiGauge {
            site: site.name.clone(),
            server: server.to_string(),
            table: d.table_name.clone(),
            device: d.device.clone(),
            grade: grade_of(&d.grade),
            figures: kpi_figures(d),
        })
        .collect();
    let judged = (
        State::of_grade(worst),
        spread.map(|(mv, _)| mv / 1000.0),
        detail,
    );
    (StatusRow::new(site, "kpi", server, judged), gauges)
}

/// The graded figures of a kept KPI row, under their gauge names.
fn kpi_figures(d: &crate::history::kpi::KpiRecord) -> Vec<(&'static str, f64)> {
    let f = &d.figures;
    let mut out: Vec<(&'static str, f64)> = [
        ("cell_spread_p95_mv", "essops_kpi_cell_spread_p95_volts"),
        ("temp_spread_p95_c", "essops_kpi_temp_spread_p95_celsius"),
        ("availability_pct", "essops_kpi_availability_percent"),
        ("rte_30d_pct", "essops_kpi_rte_30d_percent"),
        ("fault_secs", "essops_kpi_fault_seconds"),
    ]
    .into_iter()
    .filter_map(|(field, gauge)| {
        let v = f[field].as_f64()?;
        // Prometheus wants base units: the spread in volts.
        Some((
            gauge,
            if field.ends_with("_mv") {
                v / 1000.0
            } else {
                v
            },
        ))
    })
    .collect();
    if let Some(eol) = f["soh_eol_date"]
        .as_str()
        .and_then(|s| s.parse::<chrono::NaiveDate>().ok())
    {
        out.push(("essops_kpi_soh_eol_days", (eol - d.day).num_days() as f64));
    }
    out
}

/// The KPI gauges' names and help, in `kpi_figures`'s names.
const KPI_GAUGES: [(&str, &str); 6] = [
    (
        "essops_kpi_cell_spread_p95_volts",
        "Yesterday's cell voltage spread p95 per device.",
    ),
    (
        "essops_kpi_temp_spread_p95_celsius",
        "Yesterday's cell temperature spread p95 per device.",
    ),
    (
        "essops_kpi_availability_percent",
        "Yesterday's share of the day with data and no fault.",
    ),
    (
        "essops_kpi_rte_30d_percent",
        "Round-trip efficiency over the 30 days to yesterday.",
    ),
    (
        "essops_kpi_fault_seconds",
        "Yesterday's seconds with FAULT not 0.",
    ),
    (
        "essops_kpi_soh_eol_days",
        "Days from yesterday to the projected SoH end of life.",
    ),
];

/// Per ingest (device group and host): heartbeat, spool and breakers. The
/// newest minute any server holds counts: a server that is down cannot
/// take the rows that would show its ingest alive.
fn ingest_rows(
    site: &Site,
    beats: &[Heartbeat],
    now: DateTime<Utc>,
    config: &Config,
) -> Vec<StatusRow> {
    let limits = &config.status;
    if beats.is_empty() {
        let why = "no ingest heartbeat in the history: is `essops ingest` running for this site?";
        return vec![StatusRow::new(
            site,
            "ingest",
            "-",
            (State::Critical, None, why.into()),
        )];
    }
    let mut newest: BTreeMap<(&str, &str), DateTime<Utc>> = BTreeMap::new();
    for b in beats {
        let e = newest.entry((&b.devices, &b.host)).or_insert(b.minute);
        *e = (*e).max(b.minute);
    }
    let mut rows: Vec<StatusRow> = newest
        .iter()
        .map(|((devices, host), minute)| {
            let target = format!("{devices}@{host}");
            StatusRow::new(
                site,
                "ingest",
                target,
                heartbeat(*minute, now, limits.heartbeat),
            )
        })
        .collect();
    // Only the newest minute of each ingest speaks for its spool and breakers now.
    let current: Vec<&Heartbeat> = beats
        .iter()
        .filter(|b| newest.get(&(b.devices.as_str(), b.host.as_str())) == Some(&b.minute))
        .collect();
    for b in &current {
        let target = format!("{} {}@{}", b.server, b.devices, b.host);
        rows.push(StatusRow::new(
            site,
            "spool",
            target,
            spool(b, limits.spool_critical_bytes),
        ));
    }
    // Each ingest's breakers are the same on all its server rows: count one.
    let mut open = 0;
    for (key, minute) in &newest {
        open += current
            .iter()
            .find(|b| (b.devices.as_str(), b.host.as_str()) == *key && b.minute == *minute)
            .map_or(0, |b| i64::from(b.breakers_open));
    }
    let state = if open > 0 { State::Warning } else { State::Ok };
    let detail = format!("{open} device(s) with an open breaker");
    rows.push(StatusRow::new(
        site,
        "breakers",
        "-",
        (state, Some(open as f64), detail),
    ));
    rows
}

/// An ingest's newest minute, judged by its age (a minute is written when it ends).
fn heartbeat(minute: DateTime<Utc>, now: DateTime<Utc>, limits: AgeLimits) -> Judged {
    let age = (now - (minute + chrono::Duration::minutes(1)))
        .to_std()
        .unwrap_or_default();
    let state = State::of_age(age, limits);
    let detail = match state {
        State::Ok => format!("alive: last minute recorded {} ago", ago(age)),
        _ => format!(
            "no minute recorded for {}: ingest is down or cannot reach any server",
            ago(age)
        ),
    };
    (state, Some(age.as_secs_f64()), detail)
}

/// A spool as of an ingest's newest minute: critical past the size limit,
/// a warning while it grows.
fn spool(b: &Heartbeat, critical_bytes: u64) -> Judged {
    let growing = b
        .spool_rows_before
        .is_some_and(|before| b.spool_rows > before);
    let state = match (b.spool_bytes.max(0) as u64 >= critical_bytes, growing) {
        (true, _) => State::Critical,
        (false, true) => State::Warning,
        (false, false) => State::Ok,
    };
    let trend = match (growing, b.spool_rows_before) {
        (true, Some(before)) => format!(", growing (was {before} rows 10 minutes before)"),
        _ => String::new(),
    };
    let size = human_bytes(b.spool_bytes.max(0) as u64);
    (
        state,
        Some(b.spool_rows as f64),
        format!("{} rows, {size}{trend}", b.spool_rows),
    )
}

fn reconcile_row(
    site: &Site,
    last: Option<read::LastReconcile>,
    now: DateTime<Utc>,
    limits: AgeLimits,
) -> StatusRow {
    let (state, value, detail) = match last {
        None => (
            State::Warning,
            None,
            "no reconcile recorded: run `essops reconcile` (the nightly unit does)".to_string(),
        ),
        Some(r) => {
            let age = (now - r.at).to_std().unwrap_or_default();
            let state = match r.failed_tables {
                0 => State::of_age(age, limits),
                _ => State::Critical,
            };
            let outcome = match r.failed_tables {
                0 => format!("{} row(s) copied", r.copied),
                n => format!("{n} table(s) FAILED, {} row(s) copied", r.copied),
            };
            (
                state,
                Some(age.as_secs_f64()),
                format!("{} ago: {outcome}", ago(age)),
            )
        }
    };
    StatusRow::new(
        site,
        "reconcile",
        site.servers.join("/"),
        (state, value, detail),
    )
}

/// The Redis cache's age per site (nothing when Redis is not configured).
async fn cache_rows(config: &Config, sites: &[Site], now: DateTime<Utc>) -> Vec<StatusRow> {
    if config.redis.is_none() {
        return Vec::new();
    }
    let row = |site: &Site, state, value, detail: String| {
        StatusRow::new(site, "cache", "redis", (state, value, detail))
    };
    let mut con = match crate::redis_client::connect(config).await {
        Ok(c) => c,
        Err(e) => {
            return sites
                .iter()
                .map(|s| row(s, State::Unknown, None, e.to_string()))
                .collect();
        }
    };
    let mut rows = Vec::new();
    for site in sites {
        let keys = crate::cache::keys::Keys::new(&site.name);
        let prev = crate::cache::publish::read_previous(&mut con, &keys, &[]).await;
        rows.push(match prev.map(|p| p.warmed_at) {
            Ok(Some(at)) => {
                let age = Duration::from_secs((now.timestamp() - at).max(0) as u64);
                let state = State::of_age(age, config.status.cache_age);
                row(
                    site,
                    state,
                    Some(age.as_secs_f64()),
                    format!("warmed {} ago", ago(age)),
                )
            }
            Ok(None) => row(
                site,
                State::Warning,
                None,
                "never warmed: run `essops cache warm` (cron does)".into(),
            ),
            Err(e) => row(site, State::Unknown, None, e.to_string()),
        });
    }
    rows
}

/// The ESS tables' bytes on a server and their growth per day (`essops
/// size`; its --disk-free judges them, status only shows them).
async fn size_row(client: &Client, site: &Site, server: &str) -> StatusRow {
    let judged = match crate::size::tables(client, server, &site.name).await {
        Ok(tables) => {
            let total: i64 = tables.iter().map(|t| t.total_bytes).sum();
            let growth: i64 = tables.iter().map(|t| t.growth_bytes_per_day).sum();
            (
                State::Ok,
                Some(total as f64),
                format!(
                    "ESS tables {}, growing {}/day",
                    human_bytes(total.max(0) as u64),
                    human_bytes(growth.max(0) as u64)
                ),
            )
        }
        Err(e) => (State::Unknown, None, db::describe(&e)),
    };
    StatusRow::new(site, "size", server, judged)
}

/// Each line's state, and its figure under a name per check, in
/// node_exporter's textfile format.
fn write_prometheus(
    path: &std::path::Path,
    rows: &[StatusRow],
    kpis: &[KpiGauge],
) -> std::io::Result<()> {
    let registry = prometheus::Registry::new();
    let states = crate::metrics::gauges(
        "essops_status_state",
        "Each status line: 0 ok, 1 warning, 2 critical, 3 unknown (as --nagios).",
        &["site", "check", "target"],
    );
    let figures: [(&str, &str, &str); 9] = [
        (
            "ingest",
            "essops_status_heartbeat_age_seconds",
            "Age of the ingest's newest minute in the history.",
        ),
        (
            "sample",
            "essops_status_newest_sample_age_seconds",
            "Age of the newest sample per server and table.",
        ),
        (
            "spool",
            "essops_status_spool_rows",
            "Rows in each ingest's spool for a server, as of its newest minute.",
        ),
        (
            "breakers",
            "essops_status_breakers_open",
            "Devices with an open breaker, as of the newest minutes.",
        ),
        (
            "loss",
            "essops_status_loss_yesterday_percent",
            "Yesterday's loss per server, from the history.",
        ),
        (
            "kpi",
            "essops_status_kpi_cell_spread_max_volts",
            "Yesterday's largest cell voltage spread of a rack per server.",
        ),
        (
            "reconcile",
            "essops_status_reconcile_age_seconds",
            "Age of the last reconcile run.",
        ),
        (
            "cache",
            "essops_status_cache_age_seconds",
            "Age of the Redis cache's last warm.",
        ),
        (
            "size",
            "essops_status_ess_tables_bytes",
            "Bytes of the ESS tables per server (hypertable_size()).",
        ),
    ];
    let gauges: Vec<(&str, prometheus::GaugeVec)> = figures
        .iter()
        .map(|(check, name, help)| {
            let g =
                prometheus::GaugeVec::new(prometheus::Opts::new(*name, *help), &["site", "target"])
                    .expect("a valid metric name and labels");
            (*check, g)
        })
        .collect();
    for r in rows {
        states
            .with_label_values(&[r.site.as_str(), r.check, &r.target])
            .set(i64::from(r.state.nagios()));
        if let (Some(v), Some((_, g))) = (r.value, gauges.iter().find(|(c, _)| *c == r.check)) {
            g.with_label_values(&[r.site.as_str(), &r.target]).set(v);
        }
    }
    let register = |c: Box<dyn prometheus::core::Collector>| {
        registry.register(c).map_err(std::io::Error::other)
    };
    register(Box::new(states))?;
    for (_, g) in gauges {
        register(Box::new(g))?;
    }
    let labels = &["site", "server", "table", "device"];
    let grade = crate::metrics::gauges(
        "essops_kpi_grade",
        "Yesterday's KPI grade per device and site: 0 info, 1 warning, 2 critical.",
        labels,
    );
    let kpi_gauges: Vec<(&str, prometheus::GaugeVec)> = KPI_GAUGES
        .iter()
        .map(|(name, help)| {
            let g = prometheus::GaugeVec::new(prometheus::Opts::new(*name, *help), labels)
                .expect("a valid metric name and labels");
            (*name, g)
        })
        .collect();
    for k in kpis {
        let values = [k.site.as_str(), &k.server, &k.table, &k.device];
        grade.with_label_values(&values).set(k.grade as i64);
        for (name, v) in &k.figures {
            if let Some((_, g)) = kpi_gauges.iter().find(|(n, _)| n == name) {
                g.with_label_values(&values).set(*v);
            }
        }
    }
    register(Box::new(grade))?;
    for (_, g) in kpi_gauges {
        register(Box::new(g))?;
    }
    crate::metrics::write_textfile(path, &registry)
}

/// "3m 20s", "2h 05m", "4d 3h".
fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

impl StatusReport {
    fn worst(&self) -> State {
        self.rows
            .iter()
            .map(|r| r.state)
            .max_by_key(|s| s.rank())
            .unwrap_or(State::Ok)
    }
}

impl Report for StatusReport {
    type Row = StatusRow;
    const KIND: &'static str = "status";
    const HEADER: &'static str = "STATE|SITE|CHECK|TARGET|DETAIL";
    fn rows(&self) -> &[StatusRow] {
        &self.rows
    }
    fn cells(r: &StatusRow) -> Vec<String> {
        vec![
            r.state.label().into(),
            r.site.clone(),
            r.check.into(),
            r.target.clone(),
            r.detail.clone(),
        ]
    }
    fn summary(&self) -> String {
        let count = |s: State| self.rows.iter().filter(|r| r.state == s).count();
        format!(
            "{}: {} critical, {} unknown, {} warning, {} ok",
            self.worst().label(),
            count(State::Critical),
            count(State::Unknown),
            count(State::Warning),
            count(State::Ok)
        )
    }
    fn outcome(&self) -> Outcome {
        let worst = self.worst();
        if self.nagios {
            return Outcome::Plugin(worst.nagios());
        }
        match worst {
            State::Ok => Outcome::Clean,
            State::Warning => Outcome::Warning,
            State::Unknown => Outcome::Partial,
            State::Critical => Outcome::Critical,
        }
    }
}

impl crate::command::Command for StatusArgs {
    type Plan = StatusPlan;
    type Report = StatusReport;
    async fn plan(self, ctx: &Context) -> crate::error::Result<StatusPlan> {
        plan(&self, ctx)
    }
    async fn execute(plan: StatusPlan, ctx: &Context) -> crate::error::Result<StatusReport> {
        execute(&plan, ctx).await
    }
}

/// `status`, once, or every `--watch` until Ctrl-C (the screen redrawn).
pub async fn run(args: StatusArgs, ctx: &Context) -> crate::error::Result<Outcome> {
    let Some(every) = args.watch else {
        return crate::command::run(args, ctx).await;
    };
    let plan = plan(&args, ctx)?;
    loop {
        let report = execute(&plan, ctx).await?;
        if console::Term::stdout().is_term() {
            let _ = console::Term::stdout().clear_screen();
        }
        crate::command::emit(&report, ctx)?;
        tokio::time::sleep(every).await;
    }
}
