//! One table's reconcile, as named steps: open both snapshots, check the
//! roles' privileges, agree on the columns, diff (summaries, then keys where
//! they differ), copy what each side lacks, and verify with a fresh diff.

use std::collections::BTreeMap;
use std::time::Instant;

use tokio_postgres::Client;

use super::diff::{self, DeviceDiff, Range};
use super::transfer;
use super::{
    Counts, DeviceRow, FailureRow, Mode, ReconcileRow, ReconcileTarget, TableRow, log_row,
};
use crate::catalog::TableError;
use crate::config::{Config, Server};
use crate::db::{self, DbError, Target};
use crate::exit::code as exit;
use crate::history::{self, ReconcileRun};
use crate::privilege::PrivilegeError;
use crate::schema::{self, DeviceId, TableSpec};

/// Why a table could not be reconciled.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Privilege(#[from] PrivilegeError),
    #[error(
        "table `{table}`, column `{column}`: type `{type_a}` on server `{a}` but `{type_b}` on server `{b}`; make them equal before reconciling"
    )]
    TypeMismatch {
        table: &'static str,
        column: String,
        a: String,
        type_a: String,
        b: String,
        type_b: String,
    },
}

impl Failure {
    /// The role lacks a privilege reconcile needs (exit code 6).
    fn privilege(&self) -> bool {
        match self {
            Failure::Privilege(e) => matches!(e, PrivilegeError::Lacks { .. }),
            Failure::Db(e) => e.exit_code() == exit::PRIVILEGE,
            _ => false,
        }
    }
}

/// One side of the pair: its server and its snapshot connection.
struct Side<'a> {
    server: &'a Server,
    reader: Client,
    bytes_read: u64,
}

impl Side<'_> {
    /// A query error on this side, naming the server, database and table.
    fn error(
        &self,
        database: &str,
        spec: &TableSpec,
        what: &str,
        e: &tokio_postgres::Error,
    ) -> DbError {
        DbError::query(
            &self.server.name,
            database,
            format!("{what} of table `{}`", spec.name),
            e,
        )
    }
}

/// What the diff of one table found.
struct Found {
    /// Rows on either side with a NULL device id (not compared).
    without_device: u64,
    buckets_compared: usize,
    buckets_differing: usize,
    ranges: Vec<Range>,
    diffs: Vec<(DeviceId, DeviceDiff)>,
}

/// What copying moved, and whether the fresh diff agreed afterwards.
#[derive(Default)]
struct Repaired {
    bytes_moved: u64,
    verified: Option<bool>,
}

/// Reconciles one table; a failure becomes the table's row.
pub(super) async fn reconcile(
    config: &Config,
    t: &ReconcileTarget,
    mode: Mode,
) -> Vec<ReconcileRow> {
    let started = Instant::now();
    let rows = match reconcile_steps(config, t, mode, started).await {
        Ok(rows) => rows,
        Err(f) => vec![ReconcileRow::Failure(FailureRow {
            site: t.site.name.clone(),
            table: t.table.name.into(),
            error: f.to_string(),
            privilege: f.privilege(),
        })],
    };
    for row in &rows {
        log_row(row);
    }
    if let Some(run) = history_run(t, mode, &rows, started) {
        record_on_both(config, t, &run).await;
    }
    rows
}

/// The history row of this table's run (devices are not recorded).
fn history_run(
    t: &ReconcileTarget,
    mode: Mode,
    rows: &[ReconcileRow],
    started: Instant,
) -> Option<ReconcileRun> {
    let mut run = ReconcileRun {
        site: t.site.name.clone(),
        table: t.table.name.into(),
        window_start: t.window.start,
        window_end: t.window.end,
        server_a: t.a.clone(),
        server_b: t.b.clone(),
        dry_run: mode == Mode::DryRun,
        compared: 0,
        differing: 0,
        copied_to_a: 0,
        copied_to_b: 0,
        seconds: started.elapsed().as_secs_f64(),
        error: None,
    };
    match rows.last()? {
        ReconcileRow::Table(r) => {
            run.compared = r.buckets_compared as i64;
            run.differing = r.buckets_differing as i64;
            run.copied_to_a = r.counts.copied_to_a as i64;
            run.copied_to_b = r.counts.copied_to_b as i64;
            if r.verified == Some(false) {
                run.error = Some("copied rows, but a fresh diff still differs".into());
            }
        }
        ReconcileRow::Failure(f) => run.error = Some(f.error.clone()),
        ReconcileRow::Device(_) => return None,
    }
    Some(run)
}

/// A reconcile run is written to both servers of the pair.
async fn record_on_both(config: &Config, t: &ReconcileTarget, run: &ReconcileRun) {
    for name in [&t.a, &t.b] {
        let Ok(server) = config.server(name) else {
            continue;
        };
        let target = Target {
            server,
            database: &t.site.database,
        };
        let written = async {
            let client = history::connect(config, target).await?;
            history::record_reconcile(&client, target, run).await?;
            if let Some(days) = config.history.keep_days {
                history::prune(&client, target, days).await?;
            }
            Ok::<_, history::HistoryError>(())
        }
        .await;
        if let Err(e) = written {
            history::warn_unrecorded(
                &format!(
                    "reconcile of `{}` table `{}` on server `{name}`",
                    run.site, run.table
                ),
                &e,
            );
        }
    }
}

async fn reconcile_steps(
    config: &Config,
    t: &ReconcileTarget,
    mode: Mode,
    started: Instant,
) -> Result<Vec<ReconcileRow>, Failure> {
    let database = t.site.database.as_str();
    let (mut a, mut b) = open_pair(config, t).await?;
    if mode == Mode::Apply {
        check_privileges(t, &a, &b).await?;
    }
    let columns = shared_columns(&a, &b, database, &t.table).await?;
    let found = find_missing(t, &mut a, &mut b).await?;
    let mut per_device: BTreeMap<DeviceId, Counts> = BTreeMap::new();
    for (device, d) in &found.diffs {
        let c = per_device.entry(device.clone()).or_default();
        c.missing_on_b += d.only_a.len() as u64;
        c.missing_on_a += d.only_b.len() as u64;
    }
    let anything_missing = per_device
        .values()
        .any(|c| c.missing_on_a + c.missing_on_b > 0);
    let repaired = match mode == Mode::Apply && anything_missing {
        true => repair(config, t, (&a, &b), &columns, &found, &mut per_device).await?,
        false => Repaired::default(),
    };
    // The snapshots only read (and held temp tables); end them.
    let _ = tokio::join!(
        a.reader.batch_execute("ROLLBACK"),
        b.reader.batch_execute("ROLLBACK")
    );
    let (mut rows, total) = device_rows(t, per_device);
    let tz = t.site.timezone;
    rows.push(ReconcileRow::Table(TableRow {
        site: t.site.name.clone(),
        table: t.table.name.into(),
        server_a: t.a.clone(),
        server_b: t.b.clone(),
        window_start: t.window.start.with_timezone(&tz).to_rfc3339(),
        window_end: t.window.end.with_timezone(&tz).to_rfc3339(),
        dry_run: mode == Mode::DryRun,
        rows_without_device: found.without_device,
        buckets_compared: found.buckets_compared,
        buckets_differing: found.buckets_differing,
        counts: total,
        bytes_read_a: a.bytes_read,
        bytes_read_b: b.bytes_read,
        bytes_moved: repaired.bytes_moved,
        verified: repaired.verified,
        duration_ms: started.elapsed().as_millis() as u64,
    }));
    Ok(rows)
}

/// Both sides of the pair, each in its own fresh snapshot.
async fn open_pair<'a>(
    config: &'a Config,
    t: &ReconcileTarget,
) -> Result<(Side<'a>, Side<'a>), DbError> {
    let database = t.site.database.as_str();
    let (a, b) = tokio::join!(
        open_side(config, &t.a, database),
        open_side(config, &t.b, database)
    );
    Ok((a?, b?))
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
        .await?;
    }
    Ok(())
}

/// Columns both tables have, by name, in `a`'s order; a type that differs is an error.
async fn shared_columns(
    a: &Side<'_>,
    b: &Side<'_>,
    database: &str,
    spec: &TableSpec,
) -> Result<Vec<String>, Failure> {
    let (ca, cb) = tokio::join!(
        crate::catalog::require_table(&a.reader, &a.server.name, database, spec),
        crate::catalog::require_table(&b.reader, &b.server.name, database, spec)
    );
    let (ca, cb) = (ca?, cb?);
    let mut shared = Vec::new();
    for col in &ca {
        if let Some(other) = cb.iter().find(|c| c.name == col.name) {
            if other.data_type != col.data_type {
                return Err(Failure::TypeMismatch {
                    table: spec.name,
                    column: col.name.clone(),
                    a: a.server.name.clone(),
                    type_a: col.data_type.clone(),
                    b: b.server.name.clone(),
                    type_b: other.data_type.clone(),
                });
            }
            shared.push(col.name.clone());
        }
    }
    Ok(shared)
}

/// Hour summaries of both sides, then the exact keys where they differ.
async fn find_missing(
    t: &ReconcileTarget,
    a: &mut Side<'_>,
    b: &mut Side<'_>,
) -> Result<Found, DbError> {
    let (database, spec) = (t.site.database.as_str(), &t.table);
    let read = |side: &Side, e: diff::ReadError| match e {
        diff::ReadError::Db(e) => side.error(database, spec, "summarising", &e),
        diff::ReadError::Id(e) => DbError::bad_value(
            &side.server.name,
            database,
            format!("summarising table `{}`", spec.name),
            e,
        ),
    };
    let (sa, sb) = match tokio::join!(
        diff::summary(&a.reader, spec, t.window),
        diff::summary(&b.reader, spec, t.window)
    ) {
        (Ok(x), Ok(y)) => (x, y),
        (Err(e), _) => return Err(read(a, e)),
        (_, Err(e)) => return Err(read(b, e)),
    };
    a.bytes_read += sa.bytes;
    b.bytes_read += sb.bytes;
    for (side, s) in [(&*a, &sa), (&*b, &sb)] {
        if s.without_device > 0 {
            tracing::warn!(site = %t.site.name, table = spec.name, server = %side.server.name, rows = s.without_device,
                "rows with a NULL device id cannot be keyed to a device; they are not compared or copied");
        }
    }
    let (sum_a, sum_b) = (sa.summary, sb.summary);
    let ranges = diff::differing_ranges(&sum_a, &sum_b);
    let diffs = diff_ranges(a, b, t, &ranges).await?;
    Ok(Found {
        without_device: sa.without_device + sb.without_device,
        buckets_compared: sum_a.len().max(sum_b.len()),
        buckets_differing: ranges
            .iter()
            .map(|r| ((r.end - r.start) / (diff::BUCKET_SECS * 1_000_000)) as usize)
            .sum(),
        ranges,
        diffs,
    })
}

/// Level 2 of the diff over every differing range.
async fn diff_ranges(
    a: &mut Side<'_>,
    b: &mut Side<'_>,
    t: &ReconcileTarget,
    ranges: &[Range],
) -> Result<Vec<(DeviceId, DeviceDiff)>, DbError> {
    let (database, spec) = (t.site.database.as_str(), &t.table);
    let reading =
        |side: &Side, e: tokio_postgres::Error| side.error(database, spec, "reading the keys", &e);
    let sql = diff::keys_sql(spec);
    let (sa, sb) = tokio::join!(a.reader.prepare(&sql), b.reader.prepare(&sql));
    let (sa, sb) = (
        sa.map_err(|e| reading(a, e))?,
        sb.map_err(|e| reading(b, e))?,
    );
    let mut out = Vec::new();
    for range in ranges {
        let (ka, kb) = tokio::join!(
            diff::keys(&a.reader, &sa, range, t.window),
            diff::keys(&b.reader, &sb, range, t.window)
        );
        let ((ka, bytes_a), (kb, bytes_b)) = (
            ka.map_err(|e| reading(a, e))?,
            kb.map_err(|e| reading(b, e))?,
        );
        a.bytes_read += bytes_a;
        b.bytes_read += bytes_b;
        out.push((range.device.clone(), diff::merge(&ka, &kb)));
    }
    Ok(out)
}

/// Copies what each side lacks (as the direction allows), counts the copied
/// keys per device, and verifies with a fresh diff.
async fn repair(
    config: &Config,
    t: &ReconcileTarget,
    (a, b): (&Side<'_>, &Side<'_>),
    columns: &[String],
    found: &Found,
    per_device: &mut BTreeMap<DeviceId, Counts>,
) -> Result<Repaired, DbError> {
    let (database, spec) = (t.site.database.as_str(), &t.table);
    let keys = |pick: fn(&DeviceDiff) -> &Vec<i64>, wanted: bool| -> Vec<(DeviceId, i64)> {
        match wanted {
            true => found
                .diffs
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
        copy_to(config, a, b, database, spec, columns, &to_b),
        copy_to(config, b, a, database, spec, columns, &to_a)
    );
    let ((moved_b, devices_b), (moved_a, devices_a)) = (into_b?, into_a?);
    devices_b
        .into_iter()
        .for_each(|d| per_device.entry(d).or_default().copied_to_b += 1);
    devices_a
        .into_iter()
        .for_each(|d| per_device.entry(d).or_default().copied_to_a += 1);
    Ok(Repaired {
        bytes_moved: moved_a + moved_b,
        verified: Some(verify(config, t, &found.ranges).await?),
    })
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
) -> Result<(u64, Vec<DeviceId>), DbError> {
    if keys.is_empty() {
        return Ok((0, Vec::new()));
    }
    transfer::load_keys(&source.reader, spec, keys)
        .await
        .map_err(|e| source.error(database, spec, "sending the missing keys", &e))?;
    let server = target.server;
    let mut writer = db::connect(config, Target { server, database }).await?;
    transfer::copy_rows(&source.reader, &mut writer, spec, columns)
        .await
        .map_err(|e| {
            let privilege =
                e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE);
            let side = if privilege { target } else { source };
            side.error(database, spec, "copying the missing rows", &e)
        })
}

/// A fresh diff of the ranges that differed: true when nothing the
/// direction should have filled is still missing.
async fn verify(config: &Config, t: &ReconcileTarget, ranges: &[Range]) -> Result<bool, DbError> {
    let (mut a, mut b) = open_pair(config, t).await?;
    let diffs = diff_ranges(&mut a, &mut b, t, ranges).await?;
    let _ = tokio::join!(
        a.reader.batch_execute("ROLLBACK"),
        b.reader.batch_execute("ROLLBACK")
    );
    Ok(diffs.iter().all(|(_, d)| {
        (!t.direction.fills_b() || d.only_a.is_empty())
            && (!t.direction.fills_a() || d.only_b.is_empty())
    }))
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
