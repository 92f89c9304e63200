//! `essops rollup`: per-minute and per-hour rollups (`rack_1m`, `rack_1h`, …)
//! of every ESS table, kept on each server from its own raw rows: the sample
//! count and avg/min/max of the measures the cache aggregates.
//!
//! Incremental: `essops.rollup_marks` holds per raw table how far it is
//! rolled up; a run rolls from there to the last whole hour before now
//! (minus a settling margin), a day per transaction, and re-rolls the
//! windows reconcile has since copied rows into on this server (read from
//! `essops.reconcile_runs`), so nothing is rescanned that did not change.
//! With a window flag it re-rolls exactly that window. Rolling a window is
//! delete-and-insert of its buckets in one transaction: a re-run writes the
//! same rows again, never twice.
//!
//! The tables with KPIs also get their KPI rollup ([`kpi`]) in the same
//! transaction, so `essops kpi` reads 15-minute histograms, not raw rows.

pub mod kpi;

use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use clap::Args;
use serde::Serialize;
use tokio_postgres::{Client, GenericClient};

use crate::config::{Config, Site};
use crate::context::Context;
use crate::db;
use crate::exit::{Outcome, code as exit};
use crate::history::{REROLLS_TABLE, table as qualified};
use crate::output::Failure;
use crate::schema::{
    self, BUCKET_COLUMN, ROLLUPS, SAMPLES_COLUMN, TIME_COLUMN, TableSpec, measure_column,
    rollup_name,
};
use crate::sql::quote_ident;
use crate::window::{Window, WindowArgs, WindowError};

/// Rows younger than this may still arrive; the rollup stops before them.
const SETTLE: TimeDelta = TimeDelta::minutes(5);
/// One transaction rolls at most this much.
const STEP: TimeDelta = TimeDelta::days(1);
pub const MARKS_TABLE: &str = "rollup_marks";

/// Keep the rollups: roll each table forward to the last settled hour, and
/// re-roll the windows reconcile has copied rows into since the last run;
/// with a window flag, re-roll exactly that window.
///
/// Exit code 4 when a server or table could not be rolled up.
#[derive(Debug, Args)]
pub struct RollupArgs {
    #[command(flatten)]
    pub select: crate::select::Selection,
    #[command(flatten)]
    pub tables: crate::select::Tables,
    /// Re-roll this window (whole hours) instead of rolling forward.
    #[command(flatten)]
    pub window: WindowArgs,
}

#[derive(Debug, thiserror::Error)]
pub enum RollupError {
    #[error(transparent)]
    UnknownTable(#[from] schema::UnknownTable),
    #[error(transparent)]
    Window(#[from] WindowError),
}

impl RollupError {
    pub fn exit_code(&self) -> u8 {
        exit::USAGE
    }
}

crate::into_error!(RollupError);

#[derive(Debug)]
pub struct RollupPlan {
    targets: Vec<(String, Site, Option<Window>)>,
    tables: Vec<TableSpec>,
}

impl crate::command::Plan for RollupPlan {
    fn locks(&self) -> Vec<crate::lock::LockKey> {
        crate::command::site_locks("rollup", self.targets.iter().map(|(_, s, _)| &s.name))
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RollupRow {
    Table(TableRollup),
    Failure(Failure),
}

#[derive(Debug, Clone, Serialize)]
pub struct TableRollup {
    pub server: String,
    pub site: String,
    pub table: String,
    /// `timescaledb.license`: `apache` (no policies, no continuous
    /// aggregates: essops's rollups) or `timescale` (Community).
    pub edition: String,
    /// Where the rollup stood before and stands now (None: no rows yet).
    pub rolled_from: Option<DateTime<Utc>>,
    pub rolled_until: Option<DateTime<Utc>>,
    /// Windows rolled again: reconcile copied into them, or asked for.
    pub rerolled: Vec<Span>,
    /// Buckets written, per rollup (KPI: 15-minute buckets).
    pub minutes: u64,
    pub hours: u64,
    pub kpi_buckets: u64,
    pub seconds: f64,
}

impl TableRollup {
    /// Adds buckets written (minute, hour, KPI).
    fn count(&mut self, [minutes, hours, kpi]: Written) {
        self.minutes += minutes;
        self.hours += hours;
        self.kpi_buckets += kpi;
    }
}

/// Buckets written: minute, hour, KPI.
pub type Written = [u64; 3];

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Span {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

pub type RollupReport = crate::output::Rows<RollupRow>;

impl crate::command::Command for RollupArgs {
    type Plan = RollupPlan;
    type Report = RollupReport;

    async fn plan(self, ctx: &Context) -> crate::error::Result<RollupPlan> {
        let tables = schema::select_tables(&self.tables.tables).map_err(RollupError::from)?;
        let given = self.window.given();
        let now = Utc::now();
        let mut targets = Vec::new();
        for (server, site) in self.select.targets(&ctx.config)? {
            let window = match &given {
                Some(spec) => Some(
                    spec.resolve(site.timezone, now)
                        .map_err(RollupError::from)?,
                ),
                None => None,
            };
            targets.push((server, site, window));
        }
        Ok(RollupPlan { targets, tables })
    }

    async fn execute(plan: RollupPlan, ctx: &Context) -> crate::error::Result<RollupReport> {
        let now = Utc::now();
        let tables = plan.tables.clone();
        let per_target = crate::tasks::run_in_order(
            plan.targets,
            |(server, site, window)| {
                let config = Arc::clone(&ctx.config);
                let tables = tables.clone();
                async move { target_rows(&config, &server, &site, window, &tables, now).await }
            },
            || {},
        )
        .await;
        Ok(RollupReport {
            rows: per_target.into_iter().flatten().collect(),
        })
    }
}

async fn target_rows(
    config: &Config,
    server: &str,
    site: &Site,
    window: Option<Window>,
    tables: &[TableSpec],
    now: DateTime<Utc>,
) -> Vec<RollupRow> {
    let fail = |table: Option<&str>, error: String| {
        RollupRow::Failure(Failure::new(server, &site.name, table, error))
    };
    let mut client = match db::connect_named(config, server, &site.database).await {
        Ok(c) => c,
        Err(e) => return vec![fail(None, e.to_string())],
    };
    let edition = match crate::catalog::timescale_edition(&client).await {
        Ok(e) => e,
        Err(e) => return vec![fail(None, db::describe(&e))],
    };
    let mut rows = Vec::new();
    for spec in tables.iter().filter(|t| site.has_table(t.table)) {
        if !kpi::KpiRollup::of(spec).is_empty() {
            let ready = kpi::require(&client, server, &site.database, spec);
            if let Err(e) = ready.await {
                rows.push(fail(Some(spec.name), e.to_string()));
                continue;
            }
        }
        let started = Instant::now();
        let mut t = TableRollup {
            server: server.to_string(),
            site: site.name.clone(),
            table: spec.name.to_string(),
            edition: edition.clone(),
            rolled_from: None,
            rolled_until: None,
            rerolled: Vec::new(),
            minutes: 0,
            hours: 0,
            kpi_buckets: 0,
            seconds: 0.0,
        };
        let result = match window {
            Some(w) => {
                let span = hours(w.start, w.end);
                reroll(&mut client, spec, span).await.map(|written| {
                    t.count(written);
                    t.rerolled.push(span);
                })
            }
            None => roll_forward(&mut client, spec, server, site, now, &mut t).await,
        };
        t.seconds = started.elapsed().as_secs_f64();
        match result {
            Ok(()) => rows.push(RollupRow::Table(t)),
            Err(e) => rows.push(fail(Some(spec.name), db::describe(&e))),
        }
    }
    rows
}

fn floor_hour(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::hours(1)).unwrap_or(t)
}

/// `[start, end)` widened to whole hours (the hourly rollup's buckets).
pub fn hours(start: DateTime<Utc>, end: DateTime<Utc>) -> Span {
    let end_floor = floor_hour(end);
    Span {
        start: floor_hour(start),
        end: match end_floor < end {
            true => end_floor + TimeDelta::hours(1),
            false => end_floor,
        },
    }
}

/// Where a table's rollup stands.
#[derive(Debug, Clone, Copy)]
struct Mark {
    rolled_until: DateTime<Utc>,
    reconciles_seen: DateTime<Utc>,
}

async fn read_mark(
    client: &Client,
    spec: &TableSpec,
) -> Result<Option<Mark>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT rolled_until, reconciles_seen FROM {} WHERE table_name = $1",
        qualified(MARKS_TABLE)
    );
    Ok(client.query_opt(&sql, &[&spec.name]).await?.map(|r| Mark {
        rolled_until: r.get(0),
        reconciles_seen: r.get(1),
    }))
}

/// Replaces the mark, in the caller's transaction.
async fn write_mark(
    tx: &impl GenericClient,
    spec: &TableSpec,
    mark: Mark,
) -> Result<(), tokio_postgres::Error> {
    let t = qualified(MARKS_TABLE);
    tx.execute(
        &format!("DELETE FROM {t} WHERE table_name = $1"),
        &[&spec.name],
    )
    .await?;
    tx.execute(
        &format!("INSERT INTO {t} (table_name, rolled_until, reconciles_seen) VALUES ($1, $2, $3)"),
        &[&spec.name, &mark.rolled_until, &mark.reconciles_seen],
    )
    .await?;
    Ok(())
}

/// From the mark (or the table's first hour) to the last settled hour, a
/// day per transaction; first the windows reconcile copied into below the mark.
async fn roll_forward(
    client: &mut Client,
    spec: &TableSpec,
    server: &str,
    site: &Site,
    now: DateTime<Utc>,
    t: &mut TableRollup,
) -> Result<(), tokio_postgres::Error> {
    let upper = floor_hour(now - SETTLE);
    let mark = match read_mark(client, spec).await? {
        Some(m) => m,
        None => match first_hour(client, spec).await? {
            Some(first) => Mark {
                rolled_until: first,
                reconciles_seen: DateTime::UNIX_EPOCH,
            },
            None => return Ok(()),
        },
    };
    t.rolled_from = Some(mark.rolled_until);
    let (changed, seen) =
        reconciled_since(client, spec, server, site, mark.reconciles_seen).await?;
    for span in changed {
        let span = Span {
            start: span.start,
            end: span.end.min(mark.rolled_until),
        };
        if span.start < span.end {
            t.count(reroll(client, spec, span).await?);
            t.rerolled.push(span);
        }
    }
    let mut mark = Mark {
        reconciles_seen: seen.max(mark.reconciles_seen),
        ..mark
    };
    if mark.rolled_until >= upper {
        let tx = client.transaction().await?;
        write_mark(&tx, spec, mark).await?;
        tx.commit().await?;
    }
    while mark.rolled_until < upper {
        let span = Span {
            start: mark.rolled_until,
            end: (mark.rolled_until + STEP).min(upper),
        };
        mark.rolled_until = span.end;
        t.count(roll_span(client, spec, span, Some(mark)).await?);
    }
    t.rolled_until = Some(mark.rolled_until);
    Ok(())
}

/// The first whole hour of the raw table, or None when it is empty.
async fn first_hour(
    client: &Client,
    spec: &TableSpec,
) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT min({}) FROM {}",
        quote_ident(TIME_COLUMN),
        quote_ident(spec.name)
    );
    let first: Option<DateTime<Utc>> = client.query_one(&sql, &[]).await?.get(0);
    Ok(first.map(floor_hour))
}

/// The windows (whole hours) that reconcile copied rows of `spec` into on
/// this server after `since`, and the newest such run's time.
async fn reconciled_since(
    client: &Client,
    spec: &TableSpec,
    server: &str,
    site: &Site,
    since: DateTime<Utc>,
) -> Result<(Vec<Span>, DateTime<Utc>), tokio_postgres::Error> {
    let runs =
        crate::history::read::copied_into(client, &site.name, spec.name, server, since).await?;
    let seen = runs.iter().map(|r| r.2).max().unwrap_or(since);
    Ok((
        runs.into_iter().map(|(a, b, _)| hours(a, b)).collect(),
        seen,
    ))
}

/// Re-rolls a window a day per transaction, without moving the mark; the
/// buckets written per rollup.
pub async fn reroll(
    client: &mut Client,
    spec: &TableSpec,
    span: Span,
) -> Result<Written, tokio_postgres::Error> {
    let mut written = [0; 3];
    let mut from = span.start;
    while from < span.end {
        let step = Span {
            start: from,
            end: (from + STEP).min(span.end),
        };
        let w = roll_span(client, spec, step, None).await?;
        written = std::array::from_fn(|i| written[i] + w[i]);
        from = step.end;
    }
    Ok(written)
}

/// Replaces the rollups' buckets of `span` from the raw rows, and moves the
/// mark when given (rolling forward) or records the span as re-rolled (for
/// the cache's next warm), in one transaction.
async fn roll_span(
    client: &mut Client,
    spec: &TableSpec,
    span: Span,
    mark: Option<Mark>,
) -> Result<Written, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    db::set_grouping_memory(&tx).await?;
    let mut written = [0; 3];
    for (i, (suffix, bucket)) in ROLLUPS.iter().enumerate() {
        written[i] = replace(
            &tx,
            &rollup_name(spec, suffix),
            &insert_sql(spec, suffix, bucket),
            span,
        )
        .await?;
    }
    let kpis = kpi::KpiRollup::of(spec);
    if !kpis.is_empty() {
        let cols = kpi::TableColumns::read(&tx, spec.name).await?;
        for rollup in kpis {
            let n = replace(
                &tx,
                &rollup.table(spec),
                &rollup.insert_sql(spec, &cols),
                span,
            )
            .await?;
            if *rollup == kpi::KpiRollup::Devices {
                written[2] = n;
            }
        }
    }
    match mark {
        Some(mark) => write_mark(&tx, spec, mark).await?,
        None => record_reroll(&tx, spec, span).await?,
    }
    tx.commit().await?;
    Ok(written)
}

/// Deletes the buckets of `span` from `table` and inserts them again with
/// `insert` (bound to the span's bounds); the buckets written.
async fn replace(
    tx: &impl GenericClient,
    table: &str,
    insert: &str,
    span: Span,
) -> Result<u64, tokio_postgres::Error> {
    let b = quote_ident(BUCKET_COLUMN);
    tx.execute(
        &format!(
            "DELETE FROM {} WHERE {b} >= $1 AND {b} < $2",
            quote_ident(table)
        ),
        &[&span.start, &span.end],
    )
    .await?;
    tx.execute(insert, &[&span.start, &span.end]).await
}

async fn record_reroll(
    tx: &impl GenericClient,
    spec: &TableSpec,
    span: Span,
) -> Result<(), tokio_postgres::Error> {
    let sql = format!(
        "INSERT INTO {} (table_name, span_start, span_end) VALUES ($1, $2, $3)",
        qualified(REROLLS_TABLE)
    );
    tx.execute(&sql, &[&spec.name, &span.start, &span.end])
        .await
        .map(drop)
}

/// `INSERT INTO "rack_1m" (…) SELECT time_bucket(…), ids, count(*), avg/min/max …
/// FROM "rack" WHERE "TIMESTAMP" in [$1, $2) GROUP BY bucket and ids`.
/// `bucket` is one of [`ROLLUPS`]'s constants, never input.
pub fn insert_sql(spec: &TableSpec, suffix: &str, bucket: &str) -> String {
    let ids: Vec<String> = spec.device_columns.iter().map(|c| quote_ident(c)).collect();
    let mut columns = vec![quote_ident(BUCKET_COLUMN)];
    columns.extend(ids.iter().cloned());
    columns.push(quote_ident(SAMPLES_COLUMN));
    let ts = quote_ident(TIME_COLUMN);
    let mut select = vec![format!("time_bucket(INTERVAL '{bucket}', {ts})")];
    select.extend(ids.iter().cloned());
    select.push("count(*)".into());
    for m in spec.table.measures() {
        let q = quote_ident(m);
        for (agg, f) in [("AVG", "avg"), ("MIN", "min"), ("MAX", "max")] {
            columns.push(quote_ident(&measure_column(m, agg)));
            select.push(format!("{f}({q})::float8"));
        }
    }
    let group: Vec<String> = (1..=ids.len() + 1).map(|i| i.to_string()).collect();
    format!(
        "INSERT INTO {} ({}) SELECT {} FROM {} WHERE {ts} >= $1 AND {ts} < $2 GROUP BY {}",
        quote_ident(&rollup_name(spec, suffix)),
        columns.join(", "),
        select.join(", "),
        quote_ident(spec.name),
        group.join(", ")
    )
}

/// Raw rows of `[start, end)`, and the samples each rollup counts there:
/// equal when the rollups hold the window.
pub async fn counts(
    client: &Client,
    spec: &TableSpec,
    span: Span,
) -> Result<[i64; 3], tokio_postgres::Error> {
    let ts = quote_ident(TIME_COLUMN);
    let b = quote_ident(BUCKET_COLUMN);
    let s = quote_ident(SAMPLES_COLUMN);
    let sql = format!(
        "SELECT (SELECT count(*) FROM {raw} WHERE {ts} >= $1 AND {ts} < $2),
                (SELECT coalesce(sum({s}), 0)::int8 FROM {m} WHERE {b} >= $1 AND {b} < $2),
                (SELECT coalesce(sum({s}), 0)::int8 FROM {h} WHERE {b} >= $1 AND {b} < $2)",
        raw = quote_ident(spec.name),
        m = quote_ident(&rollup_name(spec, ROLLUPS[0].0)),
        h = quote_ident(&rollup_name(spec, ROLLUPS[1].0)),
    );
    let r = client.query_one(&sql, &[&span.start, &span.end]).await?;
    Ok([r.get(0), r.get(1), r.get(2)])
}

/// How far a table is rolled up on this server (None: never).
pub async fn rolled_until(
    client: &Client,
    spec: &TableSpec,
) -> Result<Option<DateTime<Utc>>, tokio_postgres::Error> {
    Ok(read_mark(client, spec).await?.map(|m| m.rolled_until))
}

fn local(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M").to_string()
}

impl crate::output::Report for RollupReport {
    type Row = RollupRow;
    const KIND: &'static str = "table";
    const HEADER: &'static str =
        "SERVER|SITE|TABLE|ROLLED FROM|ROLLED UNTIL (UTC)|RE-ROLLED|MINUTES|HOURS|KPI 15M";
    fn rows(&self) -> &[RollupRow] {
        &self.rows
    }
    fn cells(row: &RollupRow) -> Vec<String> {
        match row {
            RollupRow::Table(t) => vec![
                t.server.clone(),
                t.site.clone(),
                t.table.clone(),
                t.rolled_from.map_or("-".into(), local),
                t.rolled_until.map_or("(no rows)".into(), local),
                t.rerolled
                    .iter()
                    .map(|s| format!("{} .. {}", local(s.start), local(s.end)))
                    .collect::<Vec<_>>()
                    .join(", "),
                t.minutes.to_string(),
                t.hours.to_string(),
                t.kpi_buckets.to_string(),
            ],
            RollupRow::Failure(f) => f.cells(),
        }
    }
    fn problem(row: &RollupRow) -> Option<String> {
        match row {
            RollupRow::Failure(f) => Some(f.error.clone()),
            _ => None,
        }
    }
    fn summary(&self) -> String {
        let (mut tables, mut rerolled, mut failed) = (0, 0, 0);
        let (mut minutes, mut hours, mut kpi) = (0, 0, 0);
        for r in &self.rows {
            match r {
                RollupRow::Table(t) => {
                    tables += 1;
                    minutes += t.minutes;
                    hours += t.hours;
                    kpi += t.kpi_buckets;
                    rerolled += t.rerolled.len();
                }
                RollupRow::Failure(_) => failed += 1,
            }
        }
        format!(
            "rollup: {tables} tables, {minutes} minute, {hours} hour and {kpi} KPI buckets written, {rerolled} windows re-rolled{}",
            match failed {
                0 => String::new(),
                n => format!(", {n} failed"),
            }
        )
    }
    fn outcome(&self) -> Outcome {
        match self.rows.iter().any(|r| matches!(r, RollupRow::Failure(_))) {
            true => Outcome::Partial,
            false => Outcome::Clean,
        }
    }
}
