//! `essops loss`: data loss per server, site, table and device over a window,
//! with the gaps that make it up, graded JSON log lines, and an export.
//!
//! Expected samples come from the window (DST-aware, cut at "now") and the
//! site's sample interval; the devices come from the config, so a device that
//! sent nothing still counts. `measure` reads the server; `gaps` does the
//! arithmetic; `export` writes CSV or Parquet.

mod export;
pub mod gaps;
mod measure;

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use clap::Args;
use serde::Serialize;

use crate::config::{Config, Site};
use crate::context::Context;
use crate::db::{self, Target};
use crate::exit::{Outcome, code as exit};
use crate::logging::REPORT_TARGET;
use crate::output::{Report, human_bytes};
use crate::schema::{self, DeviceId, TableSpec};
use crate::tasks;
use crate::window::{Window, WindowArgs};

use crate::history::{self, LossDay};
use gaps::{DeviceSamples, Gap, Grade};
use measure::TableSamples;

/// How many of a device's longest gaps the report lists.
const LONGEST_GAPS: usize = 5;

/// Data loss per server, site, table and device, with gaps and graded log lines.
///
/// Exit code 10 when some loss is above the warning threshold, 11 above the
/// critical one, 4 when a server or table could not be measured.
#[derive(Debug, Args)]
pub struct LossArgs {
    #[command(flatten)]
    pub select: crate::select::Selection,
    #[command(flatten)]
    pub tables: crate::select::Tables,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Also write the device and table rows to FILE.csv or FILE.parquet.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LossError {
    #[error(transparent)]
    UnknownTable(#[from] schema::UnknownTable),
    #[error(transparent)]
    Export(#[from] crate::export::ExportError),
}

impl LossError {
    pub fn exit_code(&self) -> u8 {
        match self {
            LossError::UnknownTable(_) => exit::USAGE,
            LossError::Export(e) => e.exit_code(),
        }
    }
}

crate::into_error!(LossError);

/// One (server, site) to measure.
#[derive(Debug, Clone)]
pub struct LossTarget {
    pub server: String,
    pub site: Site,
    /// The asked window, and the part of it that is not in the future.
    pub window: Window,
    pub counted: Window,
}

#[derive(Debug)]
pub struct LossPlan {
    pub targets: Vec<LossTarget>,
    pub tables: Vec<TableSpec>,
    pub export: Option<crate::export::ExportPath>,
}

impl LossPlan {
    /// Each site once, in plan order (for run locks).
    pub fn site_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.targets.iter().map(|t| t.site.name.as_str()).collect();
        names.dedup();
        names
    }
}

pub fn plan(args: &LossArgs, ctx: &Context, now: DateTime<Utc>) -> crate::error::Result<LossPlan> {
    let config = &ctx.config;
    let tables = schema::select_tables(&args.tables.tables).map_err(LossError::from)?;
    let spec = args.window.spec();
    let export = args
        .output
        .as_deref()
        .map(crate::export::ExportPath::new)
        .transpose()
        .map_err(LossError::from)?;
    let targets = args
        .select
        .windows(config, &spec, now)?
        .into_iter()
        .map(|(site, server, window)| LossTarget {
            server,
            site,
            window,
            counted: window.until(now),
        })
        .collect();
    Ok(LossPlan {
        targets,
        tables,
        export,
    })
}

// ------------------------------------------------------------------ report

#[derive(Debug, Clone, Serialize)]
pub struct DeviceLoss {
    pub server: String,
    pub site: String,
    pub table: String,
    pub device: String,
    pub device_ids: DeviceId,
    /// False for a device found in the data but not in the config.
    pub configured: bool,
    /// The asked window, typed, for the export (JSON has the strings below).
    #[serde(skip)]
    pub window: Window,
    pub window_start: String,
    pub window_end: String,
    pub expected: i64,
    pub observed: i64,
    pub missing: i64,
    pub loss_pct: f64,
    pub collection_pct: f64,
    pub gap_count: usize,
    pub longest_gaps: Vec<LocalGap>,
    pub level: Grade,
}

/// A gap as reported: times in the site's zone.
#[derive(Debug, Clone, Serialize)]
pub struct LocalGap {
    pub start: String,
    pub end: String,
    pub missing_samples: i64,
    pub length_secs: i64,
}

impl LocalGap {
    fn new(g: Gap, tz: Tz) -> LocalGap {
        LocalGap {
            start: local(g.start, tz),
            end: local(g.end, tz),
            missing_samples: g.missing_samples,
            length_secs: g.length_secs,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TableLoss {
    pub server: String,
    pub site: String,
    pub table: String,
    #[serde(skip)]
    pub window: Window,
    pub window_start: String,
    pub window_end: String,
    pub devices: usize,
    pub expected: i64,
    pub observed: i64,
    pub loss_pct: f64,
    pub collection_pct: f64,
    pub size_bytes: i64,
    /// Rows in the window with a NULL device id (no device's, not counted).
    pub rows_without_device: i64,
    pub size: String,
    pub level: Grade,
}

pub type LossFailure = crate::output::Failure;

/// One line of the report; `kind` tells them apart in JSON.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LossRow {
    Device(DeviceLoss),
    Table(TableLoss),
    Failure(LossFailure),
}

pub type LossReport = crate::output::Rows<LossRow>;

// ----------------------------------------------------------------- execute

pub async fn execute(plan: LossPlan, ctx: &Context) -> crate::error::Result<LossReport> {
    let work = plan
        .targets
        .iter()
        .flat_map(|t| plan.tables.iter().map(move |spec| (t.clone(), *spec)));
    let measured = tasks::run_in_order(
        work,
        |(target, spec)| {
            let config = Arc::clone(&ctx.config);
            async move { measure_table(&config, &target, spec).await }
        },
        || {},
    )
    .await;
    let per_target = plan.tables.len().max(1);
    for (t, tables) in plan.targets.iter().zip(measured.chunks(per_target)) {
        record_history(&ctx.config, t, tables).await;
    }
    let rows: Vec<LossRow> = measured.into_iter().flat_map(|m| m.rows).collect();
    rows.iter().for_each(log_row);
    let report = LossReport { rows };
    if let Some(path) = &plan.export {
        export::write(path, &report).map_err(LossError::from)?;
    }
    Ok(report)
}

/// Why [`measure_days`] could not measure a table: its failure row's text.
#[derive(Debug, thiserror::Error)]
#[error("table `{table}`: {reason}")]
pub struct NotMeasured {
    pub table: &'static str,
    pub reason: String,
}

/// The local days of `target`'s counted window (whole, or the part of one
/// it holds), per device, measured now and recorded nowhere (for `essops
/// report`, where the history lacks them).
pub async fn measure_days(
    config: &Config,
    target: &LossTarget,
) -> Result<Vec<LossDay>, NotMeasured> {
    let mut days = Vec::new();
    for spec in schema::TABLES {
        let measured = measure_table(config, target, spec).await;
        match measured.days {
            Some(d) => days.extend(d.into_iter().map(|(day, _)| day)),
            None => {
                let error = measured.rows.into_iter().find_map(|r| match r {
                    LossRow::Failure(f) => Some(f.error),
                    _ => None,
                });
                return Err(NotMeasured {
                    table: spec.name,
                    reason: error.unwrap_or_else(|| "could not be measured".into()),
                });
            }
        }
    }
    Ok(days)
}

/// One table of one (server, site): its report rows, and its local days,
/// each flagged whole or not (None: it could not be measured).
struct Measured {
    table: &'static str,
    rows: Vec<LossRow>,
    days: Option<Vec<(LossDay, bool)>>,
}

/// Replaces the server's loss history for the whole local days of the
/// window, for the tables that were measured. A partial window writes nothing.
async fn record_history(config: &Config, t: &LossTarget, measured: &[Measured]) {
    let days: Vec<chrono::NaiveDate> = t
        .counted
        .local_days(t.site.timezone)
        .into_iter()
        .filter_map(|(date, _, whole)| whole.then_some(date))
        .collect();
    let tables: Vec<String> = measured
        .iter()
        .filter(|m| m.days.is_some())
        .map(|m| m.table.to_string())
        .collect();
    if days.is_empty() || tables.is_empty() {
        return;
    }
    let rows: Vec<LossDay> = measured
        .iter()
        .filter_map(|m| m.days.clone())
        .flatten()
        .filter_map(|(day, whole)| whole.then_some(day))
        .collect();
    let server = config.server(&t.server).expect("planned servers exist");
    let target = Target {
        server,
        database: &t.site.database,
    };
    let result = async {
        let mut client = history::connect(config, target).await?;
        history::record_loss(&mut client, target, &t.site.name, &tables, &days, &rows).await
    }
    .await;
    match result {
        Ok(()) => {
            tracing::info!(site = %t.site.name, server = %t.server, days = days.len(), rows = rows.len(), "loss history recorded")
        }
        Err(e) => history::warn_unrecorded(
            &format!("loss of site `{}` on server `{}`", t.site.name, t.server),
            &e,
        ),
    }
}

/// Measures one table of one (server, site): its device rows and its table
/// row, or a failure row. Never fails the whole run.
async fn measure_table(config: &Config, t: &LossTarget, spec: TableSpec) -> Measured {
    let fail = |error: String| Measured {
        table: spec.name,
        rows: vec![LossRow::Failure(LossFailure {
            server: t.server.clone(),
            site: t.site.name.clone(),
            table: Some(spec.name.to_string()),
            error,
        })],
        days: None,
    };
    if !t.site.has_table(spec.table) {
        // No devices: nothing to grade (recording the table clears stale rows).
        return Measured {
            table: spec.name,
            rows: Vec::new(),
            days: Some(Vec::new()),
        };
    }
    // Loss only reads: a read replica (`read_url`) takes it when there is one.
    let server = &config
        .server(&t.server)
        .expect("planned servers exist")
        .for_reading();
    let database = t.site.database.as_str();
    let client = match db::connect(config, Target { server, database }).await {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    if let Err(problem) = crate::catalog::require_table(&client, &t.server, database, &spec).await {
        return fail(problem.to_string());
    }
    let target = Target { server, database };
    let configured = spec.devices(&t.site);
    match measure::measure(
        config,
        target,
        &client,
        &spec,
        &configured,
        t.counted,
        t.site.sample_interval_secs,
    )
    .await
    {
        Ok(samples) => {
            let (rows, days) = rows_for(t, spec, samples);
            Measured {
                table: spec.name,
                rows,
                days: Some(days),
            }
        }
        Err(e) => fail(e.to_string()),
    }
}

/// The report rows of one table, and its local days (flagged whole or not).
fn rows_for(
    t: &LossTarget,
    spec: TableSpec,
    mut samples: TableSamples,
) -> (Vec<LossRow>, Vec<(LossDay, bool)>) {
    let tz = t.site.timezone;
    let (start, end) = (local(t.window.start, tz), local(t.window.end, tz));
    let configured = spec.devices(&t.site);
    // Configured devices first (in config order), then any the data has that the config lacks.
    let extra: Vec<DeviceId> = samples
        .devices
        .keys()
        .filter(|d| !configured.contains(d))
        .cloned()
        .collect();
    let devices = configured
        .iter()
        .map(|d| (d.clone(), true))
        .chain(extra.into_iter().map(|d| (d, false)));
    let pieces = t.counted.local_days(tz);
    let (mut rows, mut days) = (Vec::new(), Vec::new());
    let (mut sum_expected, mut sum_observed, mut count) = (0, 0, 0);
    for (id, is_configured) in devices {
        let s = samples.devices.remove(&id).unwrap_or_default();
        let measured = DeviceMeasure::new(t, &s, &pieces, is_configured);
        let row = device_row(t, spec, &id, is_configured, &measured, (&start, &end));
        days.extend(measured.days(t, &row));
        sum_expected += row.expected;
        sum_observed += row.observed;
        count += 1;
        rows.push(LossRow::Device(row));
    }
    let loss = gaps::loss_pct(sum_expected, sum_observed);
    if samples.without_device > 0 {
        tracing::warn!(site = %t.site.name, server = %t.server, table = spec.name, rows = samples.without_device,
            "rows with a NULL device id belong to no device; loss does not count them");
    }
    rows.push(LossRow::Table(TableLoss {
        server: t.server.clone(),
        site: t.site.name.clone(),
        table: spec.name.to_string(),
        window: t.window,
        window_start: start,
        window_end: end,
        devices: count,
        expected: sum_expected,
        observed: sum_observed,
        loss_pct: loss,
        collection_pct: collection(loss, sum_expected),
        size_bytes: samples.size_bytes,
        rows_without_device: samples.without_device,
        size: human_bytes(samples.size_bytes.max(0) as u64),
        level: Grade::of(loss, t.site.loss),
    }));
    (rows, days)
}

/// One device over the counted window, cut into local days. A configured
/// device counts every day; one the config no longer lists counts only the
/// days on which it sent something (a decommissioned rack is not lost data).
struct DeviceMeasure {
    expected: i64,
    observed: i64,
    gaps: Vec<Gap>,
    days: Vec<(chrono::NaiveDate, gaps::PieceLoss, bool)>,
}

impl DeviceMeasure {
    fn new(
        t: &LossTarget,
        s: &DeviceSamples,
        pieces: &[(chrono::NaiveDate, Window, bool)],
        configured: bool,
    ) -> DeviceMeasure {
        let interval = t.site.sample_interval_secs;
        let all_gaps = gaps::gaps(t.counted, interval, s);
        let mut days: Vec<_> = pieces
            .iter()
            .map(|(date, piece, whole)| {
                (
                    *date,
                    *piece,
                    gaps::piece_loss(*piece, interval, &all_gaps),
                    *whole,
                )
            })
            .collect();
        if !configured {
            days.retain(|(_, _, loss, _)| loss.has_samples());
        }
        let expected = match configured {
            true => t.counted.grid_points(interval),
            false => days.iter().map(|(_, _, l, _)| l.expected).sum(),
        };
        let gaps = match configured {
            true => all_gaps,
            false => all_gaps
                .into_iter()
                .filter(|g| {
                    days.iter()
                        .any(|(_, p, _, _)| g.start < p.end && p.start < g.end)
                })
                .collect(),
        };
        DeviceMeasure {
            expected,
            observed: s.observed.min(expected),
            gaps,
            days: days.into_iter().map(|(d, _, l, w)| (d, l, w)).collect(),
        }
    }

    /// Per local day (whole, or the part the window holds), its figures and
    /// whether it is whole: the history keeps whole days only.
    fn days(&self, t: &LossTarget, row: &DeviceLoss) -> Vec<(LossDay, bool)> {
        self.days
            .iter()
            .map(|(day, l, whole)| {
                let pct = gaps::loss_pct(l.expected, l.expected - l.missing);
                let day = LossDay {
                    table: row.table.clone(),
                    device: row.device.clone(),
                    device_ids: row.device_ids.clone(),
                    day: *day,
                    configured: row.configured,
                    expected: l.expected,
                    observed: l.expected - l.missing,
                    gaps: l.gaps as i32,
                    longest_gap_s: l.longest_secs,
                    loss_pct: pct,
                    grade: Grade::of(pct, t.site.loss).as_str(),
                };
                (day, *whole)
            })
            .collect()
    }
}

fn device_row(
    t: &LossTarget,
    spec: TableSpec,
    id: &[i16],
    configured: bool,
    m: &DeviceMeasure,
    (start, end): (&str, &str),
) -> DeviceLoss {
    let loss = gaps::loss_pct(m.expected, m.observed);
    DeviceLoss {
        server: t.server.clone(),
        site: t.site.name.clone(),
        table: spec.name.to_string(),
        device: schema::device_label(&spec, id),
        device_ids: id.to_vec(),
        configured,
        window: t.window,
        window_start: start.to_string(),
        window_end: end.to_string(),
        expected: m.expected,
        observed: m.observed,
        missing: m.expected - m.observed,
        loss_pct: loss,
        collection_pct: collection(loss, m.expected),
        gap_count: m.gaps.len(),
        longest_gaps: gaps::longest(m.gaps.clone(), LONGEST_GAPS)
            .into_iter()
            .map(|g| LocalGap::new(g, t.site.timezone))
            .collect(),
        level: Grade::of(loss, t.site.loss),
    }
}

fn collection(loss_pct: f64, expected: i64) -> f64 {
    if expected == 0 {
        100.0
    } else {
        ((100.0 - loss_pct) * 100.0).round() / 100.0
    }
}

fn local(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).to_rfc3339()
}

/// The graded log line for a row, in the site's log file.
fn log_row(row: &LossRow) {
    macro_rules! graded {
        ($grade:expr, $($fields:tt)*) => {
            match $grade {
                Grade::Info => tracing::info!(target: REPORT_TARGET, level = "info", $($fields)*),
                Grade::Warning => tracing::warn!(target: REPORT_TARGET, level = "warning", $($fields)*),
                Grade::Critical => tracing::error!(target: REPORT_TARGET, level = "critical", $($fields)*),
            }
        };
    }
    match row {
        LossRow::Device(d) => graded!(d.level,
            site = %d.site, server = %d.server, table = %d.table, device = %d.device,
            window_start = %d.window_start, window_end = %d.window_end,
            expected = d.expected, observed = d.observed, loss_pct = d.loss_pct, gaps = d.gap_count,
            "device data loss"),
        LossRow::Table(x) => graded!(x.level,
            site = %x.site, server = %x.server, table = %x.table,
            window_start = %x.window_start, window_end = %x.window_end,
            expected = x.expected, observed = x.observed, loss_pct = x.loss_pct, size_bytes = x.size_bytes,
            "table data loss"),
        LossRow::Failure(f) => tracing::error!(
            target: REPORT_TARGET,
            site = %f.site, server = %f.server, table = f.table.as_deref().unwrap_or(""), error = %f.error,
            "loss could not be measured"),
    }
}

impl Report for LossReport {
    type Row = LossRow;
    const KIND: &'static str = "loss";
    const HEADER: &'static str =
        "SERVER|SITE|TABLE|DEVICE|EXPECTED|OBSERVED|LOSS %|GAPS|LONGEST GAP|LEVEL";

    fn cells(row: &LossRow) -> Vec<String> {
        match row {
            LossRow::Device(d) => vec![
                d.server.clone(),
                d.site.clone(),
                d.table.clone(),
                d.device.clone(),
                d.expected.to_string(),
                d.observed.to_string(),
                format!("{:.2}", d.loss_pct),
                d.gap_count.to_string(),
                d.longest_gaps.first().map(describe_gap).unwrap_or_default(),
                d.level.as_str().into(),
            ],
            LossRow::Table(x) => vec![
                x.server.clone(),
                x.site.clone(),
                x.table.clone(),
                format!("= table ({} devices, {})", x.devices, x.size),
                x.expected.to_string(),
                x.observed.to_string(),
                format!("{:.2}", x.loss_pct),
                String::new(),
                String::new(),
                x.level.as_str().into(),
            ],
            LossRow::Failure(f) => vec![
                f.server.clone(),
                f.site.clone(),
                f.table.clone().unwrap_or_default(),
                "FAILED".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                "error".into(),
            ],
        }
    }

    fn problem(row: &LossRow) -> Option<String> {
        match row {
            LossRow::Failure(f) => Some(f.error.to_string()),
            _ => None,
        }
    }

    fn summary(&self) -> String {
        let (mut warn, mut crit, mut fail, mut devices) = (0, 0, 0, 0);
        for row in &self.rows {
            match row {
                LossRow::Device(d) => {
                    devices += 1;
                    warn += usize::from(d.level == Grade::Warning);
                    crit += usize::from(d.level == Grade::Critical);
                }
                LossRow::Failure(_) => fail += 1,
                LossRow::Table(_) => {}
            }
        }
        let window = self.rows.iter().find_map(|r| match r {
            LossRow::Table(t) => Some(format!(" for {} .. {}", t.window_start, t.window_end)),
            _ => None,
        });
        format!(
            "{devices} device(s) measured{}: {crit} critical, {warn} warning; {fail} table(s) could not be measured",
            window.unwrap_or_default()
        )
    }

    fn outcome(&self) -> Outcome {
        let mut outcome = Outcome::Clean;
        for row in &self.rows {
            let this = match row {
                LossRow::Failure(_) => Outcome::Partial,
                LossRow::Device(d) => grade_outcome(d.level),
                LossRow::Table(t) => grade_outcome(t.level),
            };
            outcome = outcome.max(this);
        }
        outcome
    }
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

fn grade_outcome(grade: Grade) -> Outcome {
    match grade {
        Grade::Info => Outcome::Clean,
        Grade::Warning => Outcome::Warning,
        Grade::Critical => Outcome::Critical,
    }
}

fn describe_gap(g: &LocalGap) -> String {
    let secs = g.length_secs;
    let length = match secs {
        s if s >= 3600 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    };
    // `start` is RFC 3339 in the site's zone: show its date and time.
    format!(
        "{length} from {}",
        g.start.get(..19).unwrap_or(&g.start).replace('T', " ")
    )
}

impl crate::command::Plan for LossPlan {
    fn locks(&self) -> Vec<crate::lock::LockKey> {
        crate::command::site_locks("loss", self.site_names())
    }
}

impl crate::command::Command for LossArgs {
    type Plan = LossPlan;
    type Report = LossReport;
    async fn plan(self, ctx: &Context) -> crate::error::Result<LossPlan> {
        plan(&self, ctx, Utc::now())
    }
    async fn execute(plan: LossPlan, ctx: &Context) -> crate::error::Result<LossReport> {
        execute(plan, ctx).await
    }
}
