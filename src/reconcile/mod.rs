//! `essops reconcile`: make two servers' copies of a site whole again, by
//! copying the samples each lacks from the other. It only ever inserts.
//!
//! Per site and table: both servers are read in REPEATABLE READ snapshots;
//! `diff` finds the missing timestamps per device (hour summaries first, then
//! exact key sets only where they differ); `transfer` moves those rows whole
//! by binary COPY; the differing ranges are then diffed again, fresh, to
//! verify. `--dry-run` stops after the diff.

mod diff;
mod transfer;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use clap::Args;
use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{Config, Server, Site};
use crate::context::Context;
use crate::db::{self, DbError, Target};
use crate::exit::{Outcome, code as exit};
use crate::output::{Progress, Report};
use crate::schema::{self, DeviceId, TableSpec};
use crate::tasks;
use crate::window::{self, Window, WindowArgs, WindowError};

use diff::{DeviceDiff, Range};

/// Copy the samples one server lacks from the other, per site, table and device.
///
/// Exit code 0 when both servers already agree, 10 when rows were found
/// (and, unless --dry-run, copied), 4 when something could not be reconciled.
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
    pub mode: Mode,
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
    Ok(ReconcilePlan { targets, mode })
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
    pub buckets_compared: usize,
    pub buckets_differing: usize,
    #[serde(flatten)]
    pub counts: Counts,
    pub bytes_read_a: u64,
    pub bytes_read_b: u64,
    pub bytes_moved: u64,
    /// After copying, a fresh diff of the differing ranges found nothing left
    /// (null on a dry run or when nothing differed).
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

/// Why a table could not be reconciled.
struct Failure {
    message: String,
    privilege: bool,
}

impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure {
            message,
            privilege: false,
        }
    }
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
}

/// Whether rows are copied after the diff.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Apply,
    DryRun,
}

// ----------------------------------------------------------------- execute

/// Tables reconciled at once; each holds four connections.
const PARALLEL_TABLES: usize = 4;

pub async fn execute(plan: ReconcilePlan, ctx: &Context, mode: Mode) -> ReconcileReport {
    let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL_TABLES));
    let mut progress = Progress::new(plan.targets.len(), "tables reconciled", ctx.verbosity);
    let results = tasks::run_in_order(
        plan.targets,
        |target| {
            let (config, permits) = (Arc::clone(&ctx.config), Arc::clone(&permits));
            async move {
                let _permit = permits.acquire().await.expect("semaphore is never closed");
                reconcile_table(&config, &target, mode).await
            }
        },
        || progress.tick(),
    )
    .await;
    ReconcileReport {
        rows: results.into_iter().flatten().collect(),
    }
}

/// One side of the pair: its server and its snapshot connection.
struct Side<'a> {
    server: &'a Server,
    reader: Client,
    bytes_read: u64,
}

async fn reconcile_table(config: &Config, t: &ReconcileTarget, mode: Mode) -> Vec<ReconcileRow> {
    let started = Instant::now();
    let result = reconcile_table_inner(config, t, mode, started).await;
    let rows = match result {
        Ok(rows) => rows,
        Err(f) => vec![ReconcileRow::Failure(FailureRow {
            site: t.site.name.clone(),
            table: t.table.name.into(),
            error: f.message,
            privilege: f.privilege,
        })],
    };
    for row in &rows {
        log_row(row);
    }
    rows
}

impl Side<'_> {
    /// A query error on this side, as the report's message.
    fn error(
        &self,
        database: &str,
        spec: &TableSpec,
        what: &str,
        e: &tokio_postgres::Error,
    ) -> String {
        DbError::query(
            &self.server.name,
            database,
            format!("{what} of table `{}`", spec.name),
            e,
        )
        .to_string()
    }
}

/// Both sides of the pair, each in its own fresh snapshot.
async fn open_pair<'a>(
    config: &'a Config,
    t: &ReconcileTarget,
) -> Result<(Side<'a>, Side<'a>), String> {
    let database = t.site.database.as_str();
    let (a, b) = tokio::join!(
        open_side(config, &t.a, database),
        open_side(config, &t.b, database)
    );
    Ok((a.map_err(|e| e.to_string())?, b.map_err(|e| e.to_string())?))
}

async fn open_side<'a>(
    config: &'a Config,
    name: &str,
    database: &str,
) -> Result<Side<'a>, DbError> {
    let server = config.server(name).expect("planned servers exist");
    let reader = db::connect(config, Target { server, database }).await?;
    // One snapshot per server for every source read (summaries, keys, rows).
    reader
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        .await
        .map_err(|e| DbError::query(name, database, "starting a snapshot", &e))?;
    Ok(Side {
        server,
        reader,
        bytes_read: 0,
    })
}

/// Before anything is copied: each side's role may read, and insert where
/// the direction fills it (and make the staging temp table).
async fn check_privileges(t: &ReconcileTarget, a: &Side<'_>, b: &Side<'_>) -> Result<(), Failure> {
    for (side, fills) in [(a, t.direction.fills_a()), (b, t.direction.fills_b())] {
        let privileges: &[&str] = match fills {
            true => &["SELECT", "INSERT"],
            false => &["SELECT"],
        };
        crate::privilege::require(
            &side.reader,
            &side.server.name,
            &t.site.database,
            "reconcile",
            t.table.name,
            privileges,
            true,
        )
        .await
        .map_err(|e| Failure {
            privilege: matches!(e, crate::privilege::PrivilegeError::Lacks { .. }),
            message: e.to_string(),
        })?;
    }
    Ok(())
}

/// One row per device with a difference, and their totals.
fn device_rows(
    t: &ReconcileTarget,
    per_device: BTreeMap<DeviceId, Counts>,
) -> (Vec<ReconcileRow>, Counts) {
    let mut rows = Vec::new();
    let mut total = Counts::default();
    for (device, c) in per_device {
        total.missing_on_a += c.missing_on_a;
        total.missing_on_b += c.missing_on_b;
        total.copied_to_a += c.copied_to_a;
        total.copied_to_b += c.copied_to_b;
        rows.push(ReconcileRow::Device(DeviceRow {
            site: t.site.name.clone(),
            table: t.table.name.into(),
            device: schema::device_label(&t.table, &device),
            server_a: t.a.clone(),
            server_b: t.b.clone(),
            counts: c,
        }));
    }
    (rows, total)
}

async fn reconcile_table_inner(
    config: &Config,
    t: &ReconcileTarget,
    mode: Mode,
    started: Instant,
) -> Result<Vec<ReconcileRow>, Failure> {
    let database = t.site.database.as_str();
    let spec = &t.table;
    let (mut a, mut b) = open_pair(config, t).await?;
    if mode == Mode::Apply {
        check_privileges(t, &a, &b).await?;
    }
    let columns = shared_columns(&a, &b, database, spec).await?;
    let q =
        |side: &Side, what: &str, e: tokio_postgres::Error| side.error(database, spec, what, &e);

    let ((sum_a, bytes_a), (sum_b, bytes_b)) = match tokio::join!(
        diff::summary(&a.reader, spec, t.window),
        diff::summary(&b.reader, spec, t.window)
    ) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) => return Err(q(&a, "summarising", e).into()),
        (_, Err(e)) => return Err(q(&b, "summarising", e).into()),
    };
    a.bytes_read += bytes_a;
    b.bytes_read += bytes_b;
    let buckets_compared = sum_a.len().max(sum_b.len());
    let ranges = diff::differing_ranges(&sum_a, &sum_b);
    let buckets_differing = ranges
        .iter()
        .map(|r| ((r.end - r.start) / (diff::BUCKET_SECS * 1_000_000)) as usize)
        .sum();
    let diffs = diff_ranges(&mut a, &mut b, spec, &ranges, t.window)
        .await
        .map_err(|(side, e)| q(if side { &a } else { &b }, "reading the keys", e))?;

    let mut per_device: BTreeMap<DeviceId, Counts> = BTreeMap::new();
    for (device, d) in &diffs {
        let c = per_device.entry(device.clone()).or_default();
        c.missing_on_b += d.only_a.len() as u64;
        c.missing_on_a += d.only_b.len() as u64;
    }
    let mut bytes_moved = 0;
    let mut verified = None;
    if mode == Mode::Apply
        && per_device
            .values()
            .any(|c| c.missing_on_a + c.missing_on_b > 0)
    {
        let keys = |pick: fn(&DeviceDiff) -> &Vec<i64>, wanted: bool| -> Vec<(DeviceId, i64)> {
            match wanted {
                true => diffs
                    .iter()
                    .flat_map(|(d, x)| pick(x).iter().map(move |m| (d.clone(), *m)))
                    .collect(),
                false => Vec::new(),
            }
        };
        let (to_b, to_a) = (
            keys(|x| &x.only_a, t.direction.fills_b()),
            keys(|x| &x.only_b, t.direction.fills_a()),
        );
        // The two directions use disjoint connections (a's snapshot and b's
        // writer, b's snapshot and a's writer), so they run at once.
        let (into_b, into_a) = tokio::join!(
            copy_to(config, &a, &b, database, spec, &columns, &to_b),
            copy_to(config, &b, &a, database, spec, &columns, &to_a)
        );
        let ((moved_b, devices_b), (moved_a, devices_a)) = (into_b?, into_a?);
        bytes_moved += moved_a + moved_b;
        devices_b
            .into_iter()
            .for_each(|d| per_device.entry(d).or_default().copied_to_b += 1);
        devices_a
            .into_iter()
            .for_each(|d| per_device.entry(d).or_default().copied_to_a += 1);
        verified = Some(verify(config, t, &ranges).await?);
    }
    // The snapshots only read (and held temp tables); end them.
    let _ = tokio::join!(
        a.reader.batch_execute("ROLLBACK"),
        b.reader.batch_execute("ROLLBACK")
    );

    let (mut rows, total) = device_rows(t, per_device);
    let tz = t.site.timezone;
    rows.push(ReconcileRow::Table(TableRow {
        site: t.site.name.clone(),
        table: spec.name.into(),
        server_a: t.a.clone(),
        server_b: t.b.clone(),
        window_start: t.window.start.with_timezone(&tz).to_rfc3339(),
        window_end: t.window.end.with_timezone(&tz).to_rfc3339(),
        dry_run: mode == Mode::DryRun,
        buckets_compared,
        buckets_differing,
        counts: total,
        bytes_read_a: a.bytes_read,
        bytes_read_b: b.bytes_read,
        bytes_moved,
        verified,
        duration_ms: started.elapsed().as_millis() as u64,
    }));
    Ok(rows)
}

/// Columns both tables have, by name, in `a`'s order; a type that differs is an error.
async fn shared_columns(
    a: &Side<'_>,
    b: &Side<'_>,
    database: &str,
    spec: &TableSpec,
) -> Result<Vec<String>, String> {
    let (ca, cb) = tokio::join!(
        crate::catalog::require_table(&a.reader, &a.server.name, database, spec),
        crate::catalog::require_table(&b.reader, &b.server.name, database, spec)
    );
    let (ca, cb) = (ca?, cb?);
    let mut shared = Vec::new();
    for col in &ca {
        if let Some(other) = cb.iter().find(|c| c.name == col.name) {
            if other.data_type != col.data_type {
                return Err(format!(
                    "table `{}`, column `{}`: type `{}` on server `{}` but `{}` on server `{}`; make them equal before reconciling",
                    spec.name,
                    col.name,
                    col.data_type,
                    a.server.name,
                    other.data_type,
                    b.server.name
                ));
            }
            shared.push(col.name.clone());
        }
    }
    Ok(shared)
}

/// Level 2 of the diff over every differing range; the error says which side (true = a) failed.
async fn diff_ranges(
    a: &mut Side<'_>,
    b: &mut Side<'_>,
    spec: &TableSpec,
    ranges: &[Range],
    window: Window,
) -> Result<Vec<(DeviceId, DeviceDiff)>, (bool, tokio_postgres::Error)> {
    let sql = diff::keys_sql(spec);
    let (sa, sb) = tokio::join!(a.reader.prepare(&sql), b.reader.prepare(&sql));
    let (sa, sb) = (sa.map_err(|e| (true, e))?, sb.map_err(|e| (false, e))?);
    let mut out = Vec::new();
    for range in ranges {
        let (ka, kb) = tokio::join!(
            diff::keys(&a.reader, &sa, range, window),
            diff::keys(&b.reader, &sb, range, window)
        );
        let ((ka, bytes_a), (kb, bytes_b)) =
            (ka.map_err(|e| (true, e))?, kb.map_err(|e| (false, e))?);
        a.bytes_read += bytes_a;
        b.bytes_read += bytes_b;
        out.push((range.device.clone(), diff::merge(&ka, &kb)));
    }
    Ok(out)
}

/// Copies the rows `keys` names from `source` (its snapshot) to `target`.
async fn copy_to(
    config: &Config,
    source: &Side<'_>,
    target: &Side<'_>,
    database: &str,
    spec: &TableSpec,
    columns: &[String],
    keys: &[(DeviceId, i64)],
) -> Result<(u64, Vec<DeviceId>), String> {
    if keys.is_empty() {
        return Ok((0, Vec::new()));
    }
    let err =
        |side: &Side, what: &str, e: tokio_postgres::Error| side.error(database, spec, what, &e);
    transfer::load_keys(&source.reader, spec, keys)
        .await
        .map_err(|e| err(source, "sending the missing keys", e))?;
    let mut writer = db::connect(
        config,
        Target {
            server: target.server,
            database,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    transfer::copy_rows(&source.reader, &mut writer, spec, columns)
        .await
        .map_err(|e| {
            let privilege =
                e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE);
            err(
                if privilege { target } else { source },
                "copying the missing rows",
                e,
            )
        })
}

/// A fresh diff of the ranges that differed: true when nothing the
/// direction should have filled is still missing.
async fn verify(config: &Config, t: &ReconcileTarget, ranges: &[Range]) -> Result<bool, String> {
    let (mut a, mut b) = open_pair(config, t).await?;
    let diffs = diff_ranges(&mut a, &mut b, &t.table, ranges, t.window)
        .await
        .map_err(|(_, e)| e.to_string())?;
    let _ = tokio::join!(
        a.reader.batch_execute("ROLLBACK"),
        b.reader.batch_execute("ROLLBACK")
    );
    Ok(diffs.iter().all(|(_, d)| {
        (!t.direction.fills_b() || d.only_a.is_empty())
            && (!t.direction.fills_a() || d.only_b.is_empty())
    }))
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
    const HEADER: &'static [&'static str] = &[
        "SITE",
        "TABLE",
        "DEVICE",
        "SERVERS A/B",
        "MISSING ON A",
        "MISSING ON B",
        "COPIED TO A",
        "COPIED TO B",
        "NOTE",
    ];

    fn rows(&self) -> &[ReconcileRow] {
        &self.rows
    }

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
                let note = match (t.dry_run, t.verified) {
                    (true, _) => "dry run".to_string(),
                    (false, Some(true)) => format!(
                        "verified; {} buckets differed; {} KiB moved; {} ms",
                        t.buckets_differing,
                        t.bytes_moved / 1024,
                        t.duration_ms
                    ),
                    (false, Some(false)) => "NOT VERIFIED: still differs".to_string(),
                    (false, None) => format!(
                        "in agreement ({} buckets); {} ms",
                        t.buckets_compared, t.duration_ms
                    ),
                };
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
            ReconcileRow::Failure(f) => {
                vec![
                    f.site.clone(),
                    f.table.clone(),
                    format!("FAILED: {}", f.error),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ]
            }
        }
    }

    fn summary(&self) -> String {
        let (mut found, mut copied, mut failed, mut tables) = (0, 0, 0, 0);
        for row in &self.rows {
            match row {
                ReconcileRow::Table(t) => {
                    tables += 1;
                    found += t.counts.missing_on_a + t.counts.missing_on_b;
                    copied += t.counts.copied_to_a + t.counts.copied_to_b;
                }
                ReconcileRow::Failure(_) => failed += 1,
                ReconcileRow::Device(_) => {}
            }
        }
        match (found, failed) {
            (0, 0) => format!("nothing to do: {tables} table(s) agree on both servers"),
            _ => format!(
                "{tables} table(s) compared: {found} missing row(s) found, {copied} copied; {failed} table(s) failed"
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
                ReconcileRow::Table(t) if t.counts.missing_on_a + t.counts.missing_on_b > 0 => {
                    Outcome::Warning
                }
                _ => Outcome::Clean,
            };
            outcome = outcome.max(this);
        }
        outcome
    }
}

impl crate::command::Plan for ReconcilePlan {
    fn locks(&self) -> Vec<(&'static str, String)> {
        self.site_names()
            .into_iter()
            .map(|s| ("reconcile", s.to_string()))
            .collect()
    }
}

impl crate::command::Command for ReconcileArgs {
    type Plan = ReconcilePlan;
    type Report = ReconcileReport;
    async fn plan(self, ctx: &Context) -> crate::error::Result<ReconcilePlan> {
        plan(&self, ctx, Utc::now())
    }
    async fn execute(plan: ReconcilePlan, ctx: &Context) -> crate::error::Result<ReconcileReport> {
        let mode = plan.mode;
        Ok(execute(plan, ctx, mode).await)
    }
}
