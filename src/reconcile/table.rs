//! One table's reconcile, as named steps: open both snapshots, check the
//! roles' privileges, agree on the columns, find what differs (by the
//! cheapest route), move it in batches, and verify what the batches did.

use std::collections::BTreeMap;
use std::time::Instant;

use tokio_postgres::Client;

use super::diff::{self, Range};
use super::route::{self, Found, Readers, RouteError};
use super::stream::unpack;
use super::transfer::{End, Mover, Tally};
use super::{
    Compare, Counts, DeviceRow, Direction, FailureRow, Mode, Options, ReconcileRow,
    ReconcileTarget, TableRow, Verify, log_row,
};
use crate::catalog::{Column, TableError};
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
    /// Exported when rows may be copied, so the copy reads what the diff saw.
    snapshot: Option<String>,
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

/// Reconciles one table; a failure becomes the table's row.
pub(super) async fn reconcile(
    config: &Config,
    t: &ReconcileTarget,
    options: &Options,
) -> Vec<ReconcileRow> {
    let started = Instant::now();
    let (rows, readers) = match reconcile_steps(config, t, options, started).await {
        Ok((rows, readers)) => (rows, Some(readers)),
        Err(f) => (
            vec![ReconcileRow::Failure(FailureRow {
                site: t.site.name.clone(),
                table: t.table.name.into(),
                error: f.to_string(),
                privilege: f.privilege(),
            })],
            None,
        ),
    };
    for row in &rows {
        log_row(row);
    }
    if let Some(run) = history_run(t, options.mode, &rows, started) {
        let [a, b] = readers.map_or([None, None], |[a, b]| [Some(a), Some(b)]);
        tokio::join!(
            record_on(config, t, &run, &t.a, a),
            record_on(config, t, &run, &t.b, b)
        );
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
        direction: match t.direction {
            Direction::Both => "both".into(),
            Direction::ToA => format!("to-{}", t.a),
            Direction::ToB => format!("to-{}", t.b),
        },
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

/// A reconcile run is written to both servers of the pair, on the
/// connection that read it when there is one.
async fn record_on(
    config: &Config,
    t: &ReconcileTarget,
    run: &ReconcileRun,
    name: &str,
    client: Option<Client>,
) {
    let Ok(server) = config.server(name) else {
        return;
    };
    let target = Target {
        server,
        database: &t.site.database,
    };
    let written = async {
        let client = match client {
            Some(client) => client,
            None => history::connect(config, target).await?,
        };
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

async fn reconcile_steps(
    config: &Config,
    t: &ReconcileTarget,
    options: &Options,
    started: Instant,
) -> Result<(Vec<ReconcileRow>, [Client; 2]), Failure> {
    let apply = options.mode == Mode::Apply;
    let (database, spec) = (t.site.database.as_str(), &t.table);
    let (a, b) = open_pair(config, t, apply).await?;
    let updated = updated_side(t, options);
    // Both catalog reads at once, on both sides (a round trip each, and a
    // fresh backend's catalog lookups); a missing privilege is told first.
    let privileges = async {
        match apply {
            true => check_privileges(t, &a, &b, updated).await,
            false => Ok(()),
        }
    };
    let (privileges, shared) = tokio::join!(privileges, shared_columns(&a, &b, database, spec));
    privileges?;
    let shared = shared?;
    let devices = diff::DeviceTypes::of(spec, &shared);
    let columns: Vec<String> = shared.into_iter().map(|c| c.name).collect();
    let key = spec.key_columns();
    let values: Vec<String> = columns
        .iter()
        .filter(|c| !key.contains(&c.as_str()))
        .cloned()
        .collect();
    let compared = (options.compare == Compare::Values).then_some(values.as_slice());
    let fills = [t.direction.fills_a(), t.direction.fills_b()].map(|f| apply && f);
    let updates = [0, 1].map(|i| apply && updated == Some(i));
    let mut mover = Mover::new(
        config,
        database,
        spec,
        &columns,
        ends(&a, &b, fills, updates),
    );
    let readers = Readers {
        a: &a.reader,
        b: &b.reader,
        devices: &devices,
    };
    let found = route::find(readers, spec, t.window, compared, &mut mover)
        .await
        .map_err(|e| route_failure(e, [&a, &b], database, spec))?;
    tracing::debug!(site = %t.site.name, table = spec.name, route = ?found.route, why = %found.why, "reconcile route");
    mover.flush().await?;
    let columns_differing = match found.value_sample.is_empty() {
        true => Vec::new(),
        false => super::values::columns_differing(
            [&a.reader, &b.reader],
            spec,
            &values,
            &found.value_sample,
        )
        .await
        .map_err(|(i, e)| [&a, &b][i].error(database, spec, "comparing the values", &e))?,
    };
    end_snapshots(&a, &b).await;
    let tally = std::mem::take(&mut mover.tally);
    drop(mover);
    let verified = match apply {
        true => verify(config, t, options, &tally, compared, &devices).await?,
        false => None,
    };
    let (mut rows, total) = device_rows(t, &tally);
    let tz = t.site.timezone;
    let label = |(device, ts): &(u64, i64)| {
        format!(
            "{} at {}",
            schema::device_label(spec, &unpack(*device, spec.device_columns.len())),
            diff::micros_to_time(*ts).with_timezone(&tz).to_rfc3339()
        )
    };
    rows.push(ReconcileRow::Table(TableRow {
        site: t.site.name.clone(),
        table: spec.name.into(),
        server_a: t.a.clone(),
        server_b: t.b.clone(),
        window_start: t.window.start.with_timezone(&tz).to_rfc3339(),
        window_end: t.window.end.with_timezone(&tz).to_rfc3339(),
        dry_run: !apply,
        compared: options.compare,
        route: found.route,
        route_reason: found.why,
        rows_without_device: found.without_device,
        buckets_compared: found.buckets_compared,
        buckets_differing: found.buckets_differing,
        keys_by_one_hash: found.keys_by_one_hash,
        counts: total,
        values_differing: found.values_differing,
        values_sample: found.value_sample.iter().take(10).map(label).collect(),
        columns_differing,
        values_repaired: tally.repaired.iter().sum(),
        bytes_read_a: found.bytes_read[0],
        bytes_read_b: found.bytes_read[1],
        bytes_moved: tally.bytes_moved,
        verify: options.verify,
        unconfirmed: tally.unconfirmed.len() as u64,
        verified,
        duration_ms: started.elapsed().as_millis() as u64,
    }));
    Ok((rows, [a.reader, b.reader]))
}

/// The two directions: into a (from b's snapshot), into b (from a's).
fn ends<'a>(a: &Side<'a>, b: &Side<'a>, fills: [bool; 2], updates: [bool; 2]) -> [End<'a>; 2] {
    [
        End::new(b.server, a.server, b.snapshot.clone(), fills[0], updates[0]),
        End::new(a.server, b.server, a.snapshot.clone(), fills[1], updates[1]),
    ]
}

/// With `--prefer SERVER`, the other side (0: a, 1: b) takes its values.
fn updated_side(t: &ReconcileTarget, options: &Options) -> Option<usize> {
    match options.prefer.as_deref() {
        Some(p) if p == t.a => Some(1),
        Some(p) if p == t.b => Some(0),
        _ => None,
    }
}

fn route_failure(
    e: RouteError,
    sides: [&Side<'_>; 2],
    database: &str,
    spec: &TableSpec,
) -> Failure {
    use super::stream::StreamError;
    match e {
        RouteError::Move(e) => e.into(),
        RouteError::Side(route::SideError(i, e)) => {
            let side = sides[i];
            match e {
                StreamError::Db(e) => side.error(database, spec, "reading the keys", &e),
                StreamError::Id(e) => DbError::bad_value(
                    &side.server.name,
                    database,
                    format!("reading the keys of table `{}`", spec.name),
                    e,
                ),
                StreamError::Format(m) => DbError::bad_value(
                    &side.server.name,
                    database,
                    format!("reading the keys of table `{}`", spec.name),
                    m,
                ),
            }
            .into()
        }
    }
}

/// Both sides of the pair, each in its own fresh snapshot.
async fn open_pair<'a>(
    config: &'a Config,
    t: &ReconcileTarget,
    export: bool,
) -> Result<(Side<'a>, Side<'a>), DbError> {
    let database = t.site.database.as_str();
    let (a, b) = tokio::join!(
        open_side(config, &t.a, database, export),
        open_side(config, &t.b, database, export)
    );
    Ok((a?, b?))
}

async fn open_side<'a>(
    config: &'a Config,
    name: &str,
    database: &str,
    export: bool,
) -> Result<Side<'a>, DbError> {
    let server = config.server(name).expect("planned servers exist");
    let reader = db::connect(config, Target { server, database }).await?;
    let failed =
        |e: tokio_postgres::Error| DbError::query(name, database, "starting a snapshot", &e);
    // One snapshot per server for every source read (summaries, keys, rows),
    // begun and exported in one round trip.
    let export = async {
        match export {
            true => reader
                .simple_query("SELECT pg_export_snapshot()")
                .await
                .map(|m| {
                    m.iter().find_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(String::from),
                        _ => None,
                    })
                }),
            false => Ok(None),
        }
    };
    let begin = super::begin_read(None);
    let (begun, snapshot) = tokio::join!(reader.batch_execute(&begin), export);
    begun.map_err(failed)?;
    let snapshot = snapshot.map_err(failed)?;
    Ok(Side {
        server,
        reader,
        snapshot,
    })
}

/// The snapshots only read (and held temp tables): end them. A failed
/// ROLLBACK loses nothing.
async fn end_snapshots(a: &Side<'_>, b: &Side<'_>) {
    let _ = tokio::join!(
        a.reader.batch_execute("ROLLBACK"),
        b.reader.batch_execute("ROLLBACK")
    );
}

/// Before anything is written: each side's role may read, insert where the
/// direction fills it, and update where `--prefer` repairs it.
async fn check_privileges(
    t: &ReconcileTarget,
    a: &Side<'_>,
    b: &Side<'_>,
    updated: Option<usize>,
) -> Result<(), Failure> {
    let wanted = |i: usize, fills: bool| {
        let mut privileges = vec!["SELECT"];
        if fills {
            privileges.push("INSERT");
        }
        if updated == Some(i) {
            privileges.push("UPDATE");
        }
        privileges
    };
    let (ra, rb) = tokio::join!(
        require_on(t, a, wanted(0, t.direction.fills_a())),
        require_on(t, b, wanted(1, t.direction.fills_b()))
    );
    ra?;
    rb?;
    Ok(())
}

async fn require_on(
    t: &ReconcileTarget,
    side: &Side<'_>,
    privileges: Vec<&str>,
) -> Result<(), Failure> {
    crate::privilege::require(
        &side.reader,
        &side.server.name,
        &t.site.database,
        "reconcile",
        t.table.name,
        &privileges,
        true,
    )
    .await?;
    Ok(())
}

/// Columns both tables have, by name, in `a`'s order, nullable when either
/// side allows NULL; a type that differs is an error.
async fn shared_columns(
    a: &Side<'_>,
    b: &Side<'_>,
    database: &str,
    spec: &TableSpec,
) -> Result<Vec<Column>, Failure> {
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
            shared.push(Column {
                nullable: col.nullable || other.nullable,
                ..col.clone()
            });
        }
    }
    Ok(shared)
}

/// Checks what the batches did. Each insert names the keys it added: when
/// those are every key sent, the batch landed whole. Keys it did not add (a
/// concurrent writer was first, or the source lost the row) have their
/// buckets diffed afresh. `--verify full` diffs the whole window afresh.
/// `None` when nothing was written and no full check was asked for.
async fn verify(
    config: &Config,
    t: &ReconcileTarget,
    options: &Options,
    tally: &Tally,
    compared: Option<&[String]>,
    devices: &diff::DeviceTypes,
) -> Result<Option<bool>, Failure> {
    let wrote = tally.copied.iter().any(|c| !c.is_empty()) || tally.repaired.iter().any(|&n| n > 0);
    let recheck = match options.verify {
        Verify::Full => None,
        Verify::Inserts if tally.unconfirmed.is_empty() => return Ok(wrote.then_some(true)),
        Verify::Inserts => Some(unconfirmed_ranges(t, &tally.unconfirmed)),
    };
    let (database, spec) = (t.site.database.as_str(), &t.table);
    let (a, b) = open_pair(config, t, false).await?;
    let mut fresh = Mover::new(
        config,
        database,
        spec,
        &[],
        ends(&a, &b, [false; 2], [false; 2]),
    );
    let readers = Readers {
        a: &a.reader,
        b: &b.reader,
        devices,
    };
    let found = match &recheck {
        Some(ranges) => {
            let mut found = Found::default();
            route::keys_of_ranges(&readers, spec, t.window, ranges, &mut fresh, &mut found)
                .await
                .map(|_| found)
        }
        None => route::find(readers, spec, t.window, compared, &mut fresh).await,
    }
    .map_err(|e| route_failure(e, [&a, &b], database, spec))?;
    end_snapshots(&a, &b).await;
    let still = |i: usize| fresh.tally.missing[i].values().sum::<u64>();
    let filled_a = !t.direction.fills_a() || still(0) == 0;
    let filled_b = !t.direction.fills_b() || still(1) == 0;
    let values_agree = options.prefer.is_none() || found.values_differing == 0;
    Ok(Some(filled_a && filled_b && values_agree))
}

/// The (device, hour) buckets of keys a batch did not confirm.
fn unconfirmed_ranges(t: &ReconcileTarget, keys: &[(u64, i64)]) -> Vec<Range> {
    let hour = diff::BUCKET_MICROS;
    let mut buckets: Vec<(u64, i64)> = keys
        .iter()
        .map(|(d, ts)| (*d, ts.div_euclid(hour) * hour))
        .collect();
    buckets.sort_unstable();
    buckets.dedup();
    buckets
        .into_iter()
        .map(|(device, start)| Range {
            device: unpack(device, t.table.device_columns.len()),
            start,
            end: start + hour,
        })
        .collect()
}

/// One row per device with a difference, and their totals.
fn device_rows(t: &ReconcileTarget, tally: &Tally) -> (Vec<ReconcileRow>, Counts) {
    let mut per_device: BTreeMap<u64, Counts> = BTreeMap::new();
    let mut add = |map: &BTreeMap<u64, u64>, f: fn(&mut Counts) -> &mut u64| {
        for (device, n) in map {
            *f(per_device.entry(*device).or_default()) += n;
        }
    };
    add(&tally.missing[0], |c| &mut c.missing_on_a);
    add(&tally.missing[1], |c| &mut c.missing_on_b);
    add(&tally.copied[0], |c| &mut c.copied_to_a);
    add(&tally.copied[1], |c| &mut c.copied_to_b);
    let mut rows = Vec::new();
    let mut total = Counts::default();
    for (device, c) in per_device {
        total.missing_on_a += c.missing_on_a;
        total.missing_on_b += c.missing_on_b;
        total.copied_to_a += c.copied_to_a;
        total.copied_to_b += c.copied_to_b;
        let device: DeviceId = unpack(device, t.table.device_columns.len());
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
