//! `essops reconcile`: make two servers' copies of a site whole again, by
//! copying the samples each lacks from the other. It only ever inserts.
//!
//! It never updates or deletes unless `--prefer` is given.
//!
//! Per site and table: both servers are read in REPEATABLE READ snapshots;
//! `route` finds the missing keys per device by the cheaper route (hour
//! hashes first, or every key streamed once per side); `transfer` moves
//! those rows whole by binary COPY in batches and checks each batch by the
//! keys its insert returns. `--dry-run` stops after the diff.

mod diff;
mod route;
mod stream;
mod table;
mod transfer;
mod values;

use std::sync::Arc;

use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;

use crate::config::Site;
use crate::context::Context;
use crate::exit::{Outcome, code as exit};
use crate::output::{Progress, Report};
use crate::schema::{self, TableSpec};
use crate::tasks;
use crate::window::{self, Window, WindowArgs, WindowError};

/// Copy the samples one server lacks from the other, per site, table and device.
///
/// Exit code 0 when the run did its job (the servers agreed, or what one
/// lacked was copied); with --exit-code, 10 when rows were found (and,
/// unless --dry-run, copied); 4 when something could not be reconciled.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    /// `--server` twice names the two servers to reconcile (default: the site's two).
    #[command(flatten)]
    pub select: crate::select::Selection,
    #[command(flatten)]
    pub tables: crate::select::Tables,
    #[command(flatten)]
    pub window: WindowArgs,
    /// `both`, or `to-NAME` to fill only server NAME.
    #[arg(long, value_name = "DIRECTION", default_value = "both")]
    pub direction: String,
    /// Ignore rows younger than this (so live ingest is not chased): 90s, 5m, 1h.
    #[arg(long, value_name = "DURATION", default_value = "5m")]
    pub min_age: String,
    /// Find and report what is missing; copy nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// `keys`: which samples each side has. `values`: also whether rows with
    /// the same key hold the same values (a hash of every shared column).
    #[arg(long, value_enum, default_value = "keys")]
    pub compare: Compare,
    /// With `--compare values`: overwrite the other server's differing rows
    /// with this server's (one transaction per batch; needs UPDATE there).
    #[arg(long, value_name = "SERVER", requires = "compare")]
    pub prefer: Option<String>,
    /// `inserts`: check each batch by the keys its insert returns, and diff
    /// afresh only the buckets of keys it did not add. `full`: diff the
    /// whole window afresh after copying.
    #[arg(long, value_enum, default_value = "inserts")]
    pub verify: Verify,
    /// Exit 10 when samples were missing or values differed (copied, or
    /// with --dry-run only found), as `git diff --exit-code` does; without
    /// it a run that did its job exits 0.
    #[arg(long)]
    pub exit_code: bool,
}

/// What two rows must share to count as the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Compare {
    Keys,
    Values,
}

impl Compare {
    fn agree(self) -> &'static str {
        match self {
            Compare::Keys => "keys agree",
            Compare::Values => "values agree",
        }
    }
}

/// How copying is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    Inserts,
    Full,
}

/// How the whole run compares, copies and checks.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub compare: Compare,
    pub verify: Verify,
    /// The server whose values win where rows differ (`--prefer`).
    pub prefer: Option<String>,
    /// Differences found make the exit code 10 (`--exit-code`).
    pub exit_code: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    UnknownTable(#[from] schema::UnknownTable),
    #[error(transparent)]
    Window(#[from] WindowError),
    #[error("--min-age: {0}")]
    MinAge(crate::window::DurationError),
    #[error("--direction `{0}`: use `both` or `to-SERVER` with one of the two servers ({1})")]
    Direction(String, String),
    #[error(
        "site `{site}`: reconcile needs exactly two servers, it has {count}; name them with --server A --server B"
    )]
    Pair { site: String, count: usize },
    #[error("--prefer `{prefer}`: {why}")]
    Prefer { prefer: String, why: String },
}

impl ReconcileError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ReconcileError::Pair { .. } => exit::CONFIG,
            _ => exit::USAGE,
        }
    }
}

crate::into_error!(ReconcileError);

/// Which server(s) receive rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Both,
    ToA,
    ToB,
}

impl Direction {
    fn fills_a(self) -> bool {
        matches!(self, Direction::Both | Direction::ToA)
    }
    fn fills_b(self) -> bool {
        matches!(self, Direction::Both | Direction::ToB)
    }
}

/// One site and table to reconcile between servers `a` and `b`.
#[derive(Debug, Clone)]
pub struct ReconcileTarget {
    pub site: Site,
    pub table: TableSpec,
    pub a: String,
    pub b: String,
    pub direction: Direction,
    pub window: Window,
}

#[derive(Debug)]
pub struct ReconcilePlan {
    pub targets: Vec<ReconcileTarget>,
    pub options: Options,
}

impl ReconcilePlan {
    /// Each site once, in plan order (for run locks).
    pub fn site_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.targets.iter().map(|t| t.site.name.as_str()).collect();
        names.dedup();
        names
    }
}

pub fn plan(
    args: &ReconcileArgs,
    ctx: &Context,
    now: DateTime<Utc>,
) -> crate::error::Result<ReconcilePlan> {
    let config = &ctx.config;
    let tables = schema::select_tables(&args.tables.tables).map_err(ReconcileError::from)?;
    let spec = args.window.spec();
    let min_age = window::parse_duration(&args.min_age).map_err(ReconcileError::MinAge)?;
    if args.prefer.is_some() && args.compare != Compare::Values {
        return Err(ReconcileError::Prefer {
            prefer: args.prefer.clone().unwrap_or_default(),
            why: "rows differ in value only with --compare values".into(),
        }
        .into());
    }
    config.select_servers(&args.select.servers)?;
    let mut targets = Vec::new();
    for site in config.select_sites(&args.select.sites)? {
        let (a, b) = pair(site, &args.select.servers)?;
        let direction = match args.direction.as_str() {
            "both" => Direction::Both,
            d if d == format!("to-{a}") => Direction::ToA,
            d if d == format!("to-{b}") => Direction::ToB,
            d => return Err(ReconcileError::Direction(d.to_string(), format!("{a}, {b}")).into()),
        };
        let asked = spec
            .resolve(site.timezone, now)
            .map_err(ReconcileError::from)?;
        check_prefer(args, &a, &b, direction)?;
        let window = asked.until(now - min_age);
        for table in &tables {
            targets.push(ReconcileTarget {
                site: site.clone(),
                table: *table,
                a: a.clone(),
                b: b.clone(),
                direction,
                window,
            });
        }
    }
    let mode = match args.dry_run {
        true => Mode::DryRun,
        false => Mode::Apply,
    };
    let options = Options {
        mode,
        compare: args.compare,
        verify: args.verify,
        prefer: args.prefer.clone(),
        exit_code: args.exit_code,
    };
    Ok(ReconcilePlan { targets, options })
}

/// `--prefer` names one of the pair, and the direction fills the other.
fn check_prefer(
    args: &ReconcileArgs,
    a: &str,
    b: &str,
    direction: Direction,
) -> Result<(), ReconcileError> {
    let Some(prefer) = &args.prefer else {
        return Ok(());
    };
    let why = match prefer.as_str() {
        p if p == a && !direction.fills_b() => format!("--direction to-{a} never writes to `{b}`"),
        p if p == b && !direction.fills_a() => format!("--direction to-{b} never writes to `{a}`"),
        p if p == a || p == b => return Ok(()),
        _ => format!("name one of the two servers ({a}, {b})"),
    };
    Err(ReconcileError::Prefer {
        prefer: prefer.clone(),
        why,
    })
}

fn pair(site: &Site, chosen: &[String]) -> Result<(String, String), ReconcileError> {
    let servers: Vec<&String> = match chosen.is_empty() {
        true => site.servers.iter().collect(),
        false => chosen.iter().collect(),
    };
    match servers.as_slice() {
        [a, b] if a != b => Ok(((*a).clone(), (*b).clone())),
        _ => Err(ReconcileError::Pair {
            site: site.name.clone(),
            count: servers.len(),
        }),
    }
}

// ------------------------------------------------------------------ report

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub missing_on_a: u64,
    pub missing_on_b: u64,
    pub copied_to_a: u64,
    pub copied_to_b: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeviceRow {
    pub site: String,
    pub table: String,
    pub device: String,
    pub server_a: String,
    pub server_b: String,
    #[serde(flatten)]
    pub counts: Counts,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableRow {
    pub site: String,
    pub table: String,
    pub server_a: String,
    pub server_b: String,
    pub window_start: String,
    pub window_end: String,
    pub dry_run: bool,
    /// What was compared: `keys`, or `values` too.
    pub compared: Compare,
    /// How the differences were found (`hashes` or `keys`; null when the
    /// window was empty), and why that route.
    pub route: Option<route::Route>,
    pub route_reason: String,
    /// Rows with a NULL device id, on both sides: they cannot be keyed, so
    /// they are neither compared nor copied (a warning names each side).
    pub rows_without_device: u64,
    pub buckets_compared: u64,
    pub buckets_differing: u64,
    /// Keys per side past the first stretch that one hash of the whole
    /// stretch showed equal (0 when buckets were hashed there instead).
    pub keys_by_one_hash: u64,
    #[serde(flatten)]
    pub counts: Counts,
    /// With `--compare values`: rows on both sides whose values differ, a
    /// sample of their keys, the columns that differ, and how many rows
    /// `--prefer` overwrote.
    pub values_differing: u64,
    pub values_sample: Vec<String>,
    pub columns_differing: Vec<String>,
    pub values_repaired: u64,
    pub bytes_read_a: u64,
    pub bytes_read_b: u64,
    pub bytes_moved: u64,
    /// How copying was checked (`inserts` or `full`).
    pub verify: Verify,
    /// Keys sent that their insert did not add (their buckets were diffed afresh).
    pub unconfirmed: u64,
    /// The check found nothing left to copy (null on a dry run, or when
    /// nothing was written and no full check was asked for).
    pub verified: Option<bool>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FailureRow {
    pub site: String,
    pub table: String,
    pub error: String,
    /// The role lacks a privilege reconcile needs (exit code 6).
    pub privilege: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ReconcileRow {
    Device(DeviceRow),
    Table(TableRow),
    Failure(FailureRow),
}

#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    pub rows: Vec<ReconcileRow>,
    /// Differences found make the outcome a warning (`--exit-code`).
    #[serde(skip)]
    pub exit_code: bool,
}

/// Whether rows are copied after the diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    DryRun,
}

// ----------------------------------------------------------------- execute

/// Tables reconciled at once; each holds up to six connections (a reader
/// per server, and a fetcher and a writer per direction that copies).
const PARALLEL_TABLES: usize = 4;

pub async fn execute(plan: ReconcilePlan, ctx: &Context) -> ReconcileReport {
    let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL_TABLES));
    let options = Arc::new(plan.options);
    let mut progress = Progress::new(plan.targets.len(), "tables reconciled", ctx.verbosity);
    let results = tasks::run_in_order(
        plan.targets,
        |target| {
            let (config, permits) = (Arc::clone(&ctx.config), Arc::clone(&permits));
            let options = Arc::clone(&options);
            async move {
                let _permit = permits.acquire().await.expect("semaphore is never closed");
                table::reconcile(&config, &target, &options).await
            }
        },
        || progress.tick(),
    )
    .await;
    ReconcileReport {
        rows: results.into_iter().flatten().collect(),
        exit_code: options.exit_code,
    }
}

fn log_row(row: &ReconcileRow) {
    use crate::logging::REPORT_TARGET;
    match row {
        ReconcileRow::Device(_) => {}
        ReconcileRow::Table(r) => tracing::info!(
            target: REPORT_TARGET,
            site = %r.site, table = %r.table, window_start = %r.window_start, window_end = %r.window_end,
            server_a = %r.server_a, server_b = %r.server_b,
            missing_on_a = r.counts.missing_on_a, missing_on_b = r.counts.missing_on_b,
            copied_to_a = r.counts.copied_to_a, copied_to_b = r.counts.copied_to_b,
            bytes_moved = r.bytes_moved, dry_run = r.dry_run, duration_ms = r.duration_ms,
            "reconciled"),
        ReconcileRow::Failure(f) => tracing::error!(
            target: REPORT_TARGET, site = %f.site, table = %f.table, error = %f.error, "reconcile failed"),
    }
}

impl Report for ReconcileReport {
    type Row = ReconcileRow;
    const KIND: &'static str = "table";
    const HEADER: &'static str =
        "SITE|TABLE|DEVICE|SERVERS A/B|MISSING ON A|MISSING ON B|COPIED TO A|COPIED TO B|NOTE";

    fn cells(row: &ReconcileRow) -> Vec<String> {
        let counts = |c: &Counts| {
            [c.missing_on_a, c.missing_on_b, c.copied_to_a, c.copied_to_b].map(|n| n.to_string())
        };
        match row {
            ReconcileRow::Device(d) => {
                let [ma, mb, ca, cb] = counts(&d.counts);
                vec![
                    d.site.clone(),
                    d.table.clone(),
                    d.device.clone(),
                    format!("{}/{}", d.server_a, d.server_b),
                    ma,
                    mb,
                    ca,
                    cb,
                    String::new(),
                ]
            }
            ReconcileRow::Table(t) => {
                let [ma, mb, ca, cb] = counts(&t.counts);
                let note = table_note(t);
                vec![
                    t.site.clone(),
                    t.table.clone(),
                    "= table".into(),
                    format!("{}/{}", t.server_a, t.server_b),
                    ma,
                    mb,
                    ca,
                    cb,
                    note,
                ]
            }
            ReconcileRow::Failure(f) => vec![f.site.clone(), f.table.clone(), "FAILED".into()],
        }
    }

    fn summary(&self) -> String {
        let (mut found, mut copied, mut failed, mut tables) = (0, 0, 0, 0);
        let (mut differ, mut repaired, mut compared) = (0, 0, Compare::Keys);
        for row in &self.rows {
            match row {
                ReconcileRow::Table(t) => {
                    tables += 1;
                    found += t.counts.missing_on_a + t.counts.missing_on_b;
                    copied += t.counts.copied_to_a + t.counts.copied_to_b;
                    differ += t.values_differing;
                    repaired += t.values_repaired;
                    compared = t.compared;
                }
                ReconcileRow::Failure(_) => failed += 1,
                ReconcileRow::Device(_) => {}
            }
        }
        let values = match compared {
            Compare::Values => format!("; {differ} row(s) differ in value, {repaired} overwritten"),
            Compare::Keys => String::new(),
        };
        match (found + differ, failed) {
            (0, 0) => format!(
                "nothing to do: {tables} table(s), {} on both servers",
                compared.agree()
            ),
            _ => format!(
                "{tables} table(s) compared: {found} missing row(s) found, {copied} copied{values}; {failed} table(s) failed"
            ),
        }
    }

    fn outcome(&self) -> Outcome {
        let mut outcome = Outcome::Clean;
        for row in &self.rows {
            let this = match row {
                ReconcileRow::Failure(f) if f.privilege => Outcome::Privilege,
                ReconcileRow::Failure(_) => Outcome::Partial,
                ReconcileRow::Table(t) if t.verified == Some(false) => Outcome::Partial,
                ReconcileRow::Table(t)
                    if self.exit_code
                        && t.counts.missing_on_a + t.counts.missing_on_b + t.values_differing
                            > 0 =>
                {
                    Outcome::Warning
                }
                _ => Outcome::Clean,
            };
            outcome = outcome.max(this);
        }
        outcome
    }
    fn problem(row: &ReconcileRow) -> Option<String> {
        match row {
            ReconcileRow::Failure(f) => Some(f.error.clone()),
            _ => None,
        }
    }
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

/// The table row's NOTE: what was compared, by which route, and the check.
fn table_note(t: &TableRow) -> String {
    let route = match t.route {
        Some(route::Route::Hashes) => "by hashes",
        Some(route::Route::Keys) => "by keys",
        None => "empty window",
    };
    let values = match t.values_differing {
        0 => String::new(),
        n => format!(
            "; {n} row(s) differ in value ({}), {} overwritten",
            t.columns_differing.join(", "),
            t.values_repaired
        ),
    };
    let check = match (t.dry_run, t.verified) {
        (true, _) => "dry run".to_string(),
        (false, Some(true)) => format!("verified; {} KiB moved", t.bytes_moved / 1024),
        (false, Some(false)) => "NOT VERIFIED: still differs".to_string(),
        (false, None) if t.values_differing == 0 => t.compared.agree().to_string(),
        (false, None) => "nothing overwritten".to_string(),
    };
    let rest = match t.keys_by_one_hash {
        0 => String::new(),
        n => format!(", and the other {n} keys by one hash"),
    };
    format!(
        "{check}{values}; {} of {} buckets differed, {route}{rest}; {} ms",
        t.buckets_differing, t.buckets_compared, t.duration_ms
    )
}

impl crate::command::Plan for ReconcilePlan {
    fn locks(&self) -> Vec<crate::lock::LockKey> {
        crate::command::site_locks("reconcile", self.site_names())
    }
}

impl crate::command::Command for ReconcileArgs {
    type Plan = ReconcilePlan;
    type Report = ReconcileReport;
    async fn plan(self, ctx: &Context) -> crate::error::Result<ReconcilePlan> {
        plan(&self, ctx, Utc::now())
    }
    async fn execute(plan: ReconcilePlan, ctx: &Context) -> crate::error::Result<ReconcileReport> {
        Ok(execute(plan, ctx).await)
    }
}

/// How every reconcile read session begins: one REPEATABLE READ snapshot
/// (`joined`: the id of another session's exported snapshot, which the
/// caller has checked), and each query on one core. Reconcile runs beside
/// live ingest and dashboards, and each parallel worker is a fresh backend
/// that loads TimescaleDB again (15-40 ms apiece, for every query), while a
/// day's hash of a table takes a few hundred ms on one core. On the bench,
/// where both servers share two cores, a clean re-run took about 85 ms and
/// 180 core-ms less without workers.
fn begin_read(joined: Option<&str>) -> String {
    let join = joined.map_or(String::new(), |id| {
        format!("SET TRANSACTION SNAPSHOT '{id}'; ")
    });
    format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ; {join}SET LOCAL max_parallel_workers_per_gather = 0"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn reconcile_read_session_joins_a_snapshot_before_anything_else() {
        let own = super::begin_read(None);
        assert_eq!(
            own,
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET LOCAL max_parallel_workers_per_gather = 0"
        );
        let joined = super::begin_read(Some("00000003-0000001B-1"));
        assert!(
            joined.starts_with(
                "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '00000003-0000001B-1'; "
            ),
            "{joined}"
        );
        assert!(
            joined.ends_with("SET LOCAL max_parallel_workers_per_gather = 0"),
            "{joined}"
        );
    }
}
