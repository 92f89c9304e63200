//! `essops retention`: drops raw chunks older than `[retention] raw_days`
//! whole days before today, and rollup chunks older than their own setting,
//! with `drop_chunks()` (the Apache edition has no retention policies).
//!
//! A raw chunk is dropped only when all of these hold, checked on its
//! server: its rollups are rolled past it and count exactly its raw rows
//! (re-rolled first when they lag); every other server of the site holds as
//! many rows of its range and a clean recorded reconcile run covers the
//! range; and the loss of every local day it touches is recorded. Otherwise
//! it is kept, and the report says why. Rollup chunks are the last copy:
//! they go when their own setting says so.

use std::sync::Arc;

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use clap::Args;
use serde::Serialize;
use tokio_postgres::Client;

use crate::catalog::{self, Chunk};
use crate::config::RetentionSettings;
use crate::config::{Config, Site};
use crate::context::Context;
use crate::db;
use crate::exit::{Outcome, code as exit};
use crate::history::read;
use crate::output::{Failure, Report, human_bytes};
use crate::rollup::{self, Span};
use crate::schema::{self, ROLLUPS, TIME_COLUMN, TableSpec};
use crate::sql::quote_ident;

/// Drop raw chunks older than [retention] raw_days (only once their rollups,
/// the other server's copy and their loss history are in place), and rollup
/// chunks older than rollup_1m_days / rollup_1h_days (the KPI rollups as
/// the hour rollups).
///
/// Exit code 0 when [retention] raw_days is not set (nothing to drop: it says
/// so), 4 when a server could not be read; a kept chunk is not an error (its
/// reason is listed).
#[derive(Debug, Args)]
pub struct RetentionArgs {
    #[command(flatten)]
    pub select: crate::select::Selection,
    #[command(flatten)]
    pub tables: crate::select::Tables,
    /// List the chunks, their sizes and the verdict for each; drop nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    UnknownTable(#[from] schema::UnknownTable),
}

impl RetentionError {
    pub fn exit_code(&self) -> u8 {
        match self {
            RetentionError::UnknownTable(_) => exit::USAGE,
        }
    }
}

crate::into_error!(RetentionError);

#[derive(Debug)]
pub struct RetentionPlan {
    targets: Vec<(String, Site)>,
    tables: Vec<TableSpec>,
    dry_run: bool,
    /// `[retention] raw_days` is not set in this config file: nothing to do.
    unset_in: Option<String>,
}

impl crate::command::Plan for RetentionPlan {
    fn locks(&self) -> Vec<crate::lock::LockKey> {
        let sites = || self.targets.iter().map(|(_, s)| &s.name);
        // Not beside a rollup of the same site: it could be re-rolling a chunk being dropped.
        let mut locks = crate::command::site_locks("retention", sites());
        locks.extend(crate::command::site_locks("rollup", sites()));
        locks
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// --dry-run: would be dropped.
    Drop,
    Dropped,
    Keep,
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RetentionRow {
    Chunk(ChunkVerdict),
    Failure(Failure),
    /// `[retention] raw_days` is not set: no chunk was looked at.
    NotConfigured {
        config: String,
        note: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct ChunkVerdict {
    pub server: String,
    pub site: String,
    /// The raw table, or a rollup (`rack_1m`).
    pub table: String,
    pub chunk: String,
    pub range_start: DateTime<Utc>,
    pub range_end: DateTime<Utc>,
    pub bytes: i64,
    pub verdict: Verdict,
    /// Why it is kept; or what was done first (re-rolled).
    pub reasons: Vec<String>,
}

pub type RetentionReport = crate::output::Rows<RetentionRow>;

impl crate::command::Command for RetentionArgs {
    type Plan = RetentionPlan;
    type Report = RetentionReport;

    async fn plan(self, ctx: &Context) -> crate::error::Result<RetentionPlan> {
        let tables = schema::select_tables(&self.tables.tables).map_err(RetentionError::from)?;
        let unset_in = match ctx.config.retention.raw_days {
            Some(_) => None,
            None => Some(ctx.config.source.to_string()),
        };
        let targets = match unset_in {
            Some(_) => Vec::new(),
            None => self.select.targets(&ctx.config)?,
        };
        Ok(RetentionPlan {
            targets,
            tables,
            dry_run: self.dry_run,
            unset_in,
        })
    }

    async fn execute(plan: RetentionPlan, ctx: &Context) -> crate::error::Result<RetentionReport> {
        if let Some(config) = plan.unset_in {
            let note = "[retention] raw_days is not set, so no raw chunk is old enough to drop; nothing was dropped (set it, e.g. raw_days = 30, to keep raw rows that long)".to_string();
            tracing::warn!(config = %config, "{note}");
            return Ok(RetentionReport {
                rows: vec![RetentionRow::NotConfigured { config, note }],
            });
        }
        let now = Utc::now();
        let (tables, dry_run) = (plan.tables.clone(), plan.dry_run);
        let per_target = crate::tasks::run_in_order(
            plan.targets,
            |(server, site)| {
                let config = Arc::clone(&ctx.config);
                let tables = tables.clone();
                async move { target_rows(&config, &server, &site, &tables, dry_run, now).await }
            },
            || {},
        )
        .await;
        Ok(RetentionReport {
            rows: per_target.into_iter().flatten().collect(),
        })
    }
}

/// The start of the local day `days` whole days before today's.
fn cutoff(site: &Site, days: u32, now: DateTime<Utc>) -> DateTime<Utc> {
    let today = now.with_timezone(&site.timezone).date_naive();
    let first_kept = today - TimeDelta::days(i64::from(days));
    crate::window::local_day(first_kept, site.timezone).start
}

/// One server and site: the chunks of each table, judged and (unless a dry
/// run) dropped.
async fn target_rows(
    config: &Config,
    server: &str,
    site: &Site,
    tables: &[TableSpec],
    dry_run: bool,
    now: DateTime<Utc>,
) -> Vec<RetentionRow> {
    let fail = |table: Option<&str>, error: String| {
        RetentionRow::Failure(Failure::new(server, &site.name, table, error))
    };
    // Dropping chunks needs the tables' owner: the administration login.
    let admin = match config.server(server) {
        Ok(s) => s.for_admin(),
        Err(e) => return vec![fail(None, e.to_string())],
    };
    let target = db::Target {
        server: &admin,
        database: &site.database,
    };
    let mut client = match db::connect(config, target).await {
        Ok(c) => c,
        Err(e) => return vec![fail(None, e.to_string())],
    };
    let settings = config.retention;
    let raw_days = settings.raw_days.expect("planned with raw_days");
    let judge = Judge {
        config,
        server,
        site,
        dry_run,
        peers: tokio::sync::OnceCell::new(),
    };
    let mut rows = Vec::new();
    for spec in tables {
        match judge
            .raw_chunks(&mut client, spec, cutoff(site, raw_days, now))
            .await
        {
            Ok(r) => rows.extend(r),
            Err(e) => rows.push(fail(Some(spec.name), db::describe(&e))),
        }
        for (table, days) in rollup_tables(spec, &settings) {
            let Some(days) = days else { continue };
            match judge
                .rollup_chunks(&mut client, &table, cutoff(site, days, now))
                .await
            {
                Ok(r) => rows.extend(r),
                Err(e) => rows.push(fail(Some(&table), db::describe(&e))),
            }
        }
    }
    rows
}

/// A table's rollups and the days each keeps; the KPI rollups keep as long
/// as the hour rollups.
fn rollup_tables(spec: &TableSpec, settings: &RetentionSettings) -> Vec<(String, Option<u32>)> {
    let mut tables: Vec<(String, Option<u32>)> = ROLLUPS
        .iter()
        .zip([settings.rollup_1m_days, settings.rollup_1h_days])
        .map(|((suffix, _), days)| (schema::rollup_name(spec, suffix), days))
        .collect();
    let kpis = rollup::kpi::tables_of(spec);
    tables.extend(kpis.into_iter().map(|t| (t, settings.rollup_1h_days)));
    tables
}

/// Why the rows of another server could not be counted.
#[derive(Debug, thiserror::Error)]
enum PeerError {
    /// The connection's failure, as it was first reported.
    #[error("{0}")]
    Unreachable(String),
    #[error("`{0}` is not a server of this site")]
    NotOfSite(String),
    #[error("{}", db::describe(.0))]
    Query(#[from] tokio_postgres::Error),
}

/// What judging a chunk needs to know.
struct Judge<'a> {
    config: &'a Config,
    server: &'a str,
    site: &'a Site,
    dry_run: bool,
    /// The site's other servers, connected once on the first chunk that
    /// needs them (or why not).
    peers: tokio::sync::OnceCell<Vec<(String, Result<Client, db::ConnectError>)>>,
}

impl Judge<'_> {
    fn row(
        &self,
        table: &str,
        chunk: &Chunk,
        verdict: Verdict,
        reasons: Vec<String>,
    ) -> RetentionRow {
        RetentionRow::Chunk(ChunkVerdict {
            server: self.server.to_string(),
            site: self.site.name.clone(),
            table: table.to_string(),
            chunk: chunk.name.clone(),
            range_start: chunk.start,
            range_end: chunk.end,
            bytes: chunk.bytes,
            verdict,
            reasons,
        })
    }

    /// Drops `chunk` unless this is a dry run; the verdict either way. A raw
    /// chunk is locked against inserts and counted again first, in the
    /// transaction that drops it: rows a replay or reconcile added since it
    /// was judged (they are in no rollup yet) keep it, with the reason in
    /// `keep`. Its row count is recorded in the same transaction, for the
    /// other servers' retention to compare against once it is gone.
    async fn drop(
        &self,
        client: &mut Client,
        table: &str,
        chunk: &Chunk,
        raw_rows: Option<i64>,
        keep: &mut Vec<String>,
    ) -> Result<Verdict, tokio_postgres::Error> {
        if self.dry_run {
            return Ok(Verdict::Drop);
        }
        let tx = client.transaction().await?;
        if let Some(judged) = raw_rows {
            let now = catalog::lock_and_count_chunk(&tx, &chunk.name).await?;
            if now != judged {
                keep.push(format!(
                    "{judged} rows when judged, {now} now (rows arrived meanwhile; the next run judges it again)"
                ));
                return Ok(Verdict::Keep);
            }
        }
        let dropped = catalog::drop_chunk(&tx, table, chunk).await?;
        if let Some(rows) = raw_rows {
            crate::history::record_drop(&tx, table, (chunk.start, chunk.end), rows).await?;
        }
        tx.commit().await?;
        tracing::info!(server = self.server, site = %self.site.name, table, chunk = %chunk.name, ?dropped, "chunk dropped");
        Ok(Verdict::Dropped)
    }

    async fn raw_chunks(
        &self,
        client: &mut Client,
        spec: &TableSpec,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<RetentionRow>, tokio_postgres::Error> {
        let mut rows = Vec::new();
        for chunk in catalog::chunks_before(client, spec.name, cutoff).await? {
            let span = Span {
                start: chunk.start,
                end: chunk.end,
            };
            let counts = rollup::counts(client, spec, span).await?;
            let (mut keep, mut done) = self.rollups_hold(client, spec, span, counts).await?;
            let raw = counts[0];
            keep.extend(self.others_hold(client, spec, span, raw).await?);
            keep.extend(self.loss_recorded(client, spec, span).await?);
            let verdict = match keep.is_empty() {
                true => {
                    self.drop(client, spec.name, &chunk, Some(raw), &mut keep)
                        .await?
                }
                false => Verdict::Keep,
            };
            if verdict == Verdict::Keep {
                done.clear();
            }
            keep.extend(done);
            rows.push(self.row(spec.name, &chunk, verdict, keep));
        }
        Ok(rows)
    }

    /// Reasons to keep for the rollups, and what was done to them first.
    async fn rollups_hold(
        &self,
        client: &mut Client,
        spec: &TableSpec,
        span: Span,
        [raw, minutes, hours]: [i64; 3],
    ) -> Result<(Vec<String>, Vec<String>), tokio_postgres::Error> {
        match rollup::rolled_until(client, spec).await? {
            Some(until) if until >= span.end => {}
            _ => {
                return Ok((
                    vec!["not rolled up yet (run essops rollup first)".into()],
                    Vec::new(),
                ));
            }
        }
        if raw == minutes && raw == hours {
            return Ok((Vec::new(), Vec::new()));
        }
        let lag = format!("its rollups counted {minutes} of its {raw} rows");
        if self.dry_run {
            return Ok((Vec::new(), vec![format!("{lag}: a run re-rolls it first")]));
        }
        rollup::reroll(client, spec, span).await?;
        let [raw, minutes, hours] = rollup::counts(client, spec, span).await?;
        match raw == minutes && raw == hours {
            true => Ok((Vec::new(), vec![format!("{lag}: re-rolled first")])),
            false => Ok((
                vec![format!(
                    "its rollups do not match its {raw} rows even after a re-roll"
                )],
                Vec::new(),
            )),
        }
    }

    /// Reasons to keep for the site's other servers: each must hold as many
    /// rows of the range, after a clean recorded reconcile over it.
    async fn others_hold(
        &self,
        client: &Client,
        spec: &TableSpec,
        span: Span,
        rows_here: i64,
    ) -> Result<Vec<String>, tokio_postgres::Error> {
        let mut keep = Vec::new();
        for other in self.site.servers.iter().filter(|s| *s != self.server) {
            let clean = read::reconciled_over(
                client,
                &self.site.name,
                spec.name,
                (self.server, other),
                (span.start, span.end),
            )
            .await?;
            if !clean {
                keep.push(format!(
                    "no clean reconcile with `{other}` covers it (run essops reconcile)"
                ));
                continue;
            }
            match self.rows_on(other, spec, span).await {
                Ok(n) if n == rows_here => {}
                Ok(n) => keep.push(format!(
                    "`{other}` holds {n} rows of it, this server {rows_here} (run essops reconcile)"
                )),
                Err(e) => keep.push(format!("cannot compare with `{other}`: {e}")),
            }
        }
        Ok(keep)
    }

    /// The rows of the range on `server`: counted, or as its retention
    /// counted them when it dropped the chunk.
    async fn rows_on(&self, server: &str, spec: &TableSpec, span: Span) -> Result<i64, PeerError> {
        let peers = self.peers.get_or_init(|| self.connect_peers()).await;
        let client = match peers.iter().find(|(name, _)| name == server) {
            Some((_, Ok(client))) => client,
            Some((_, Err(e))) => return Err(PeerError::Unreachable(e.to_string())),
            None => return Err(PeerError::NotOfSite(server.to_string())),
        };
        let ts = quote_ident(TIME_COLUMN);
        let sql = format!(
            "SELECT count(*) FROM {} WHERE {ts} >= $1 AND {ts} < $2",
            quote_ident(spec.name)
        );
        let n: i64 = client
            .query_one(&sql, &[&span.start, &span.end])
            .await?
            .get(0);
        match n {
            0 => Ok(
                read::dropped_rows(client, spec.name, (span.start, span.end))
                    .await?
                    .unwrap_or(0),
            ),
            n => Ok(n),
        }
    }

    async fn connect_peers(&self) -> Vec<(String, Result<Client, db::ConnectError>)> {
        let mut peers = Vec::new();
        for name in self.site.servers.iter().filter(|s| *s != self.server) {
            let client = db::connect_named(self.config, name, &self.site.database).await;
            peers.push((name.clone(), client));
        }
        peers
    }

    /// Reasons to keep for the loss history: every local day the chunk
    /// touches must have its loss recorded for this server.
    async fn loss_recorded(
        &self,
        client: &Client,
        spec: &TableSpec,
        span: Span,
    ) -> Result<Vec<String>, tokio_postgres::Error> {
        let tz = self.site.timezone;
        let window = crate::window::Window {
            start: span.start,
            end: span.end,
        };
        let days: Vec<NaiveDate> = window
            .local_days(tz)
            .into_iter()
            .map(|(d, _, _)| d)
            .collect();
        let missing =
            read::loss_unrecorded(client, &self.site.name, self.server, spec.name, &days).await?;
        Ok(missing
            .into_iter()
            .map(|d| format!("loss of {d} not recorded (run essops loss --date {d})"))
            .collect())
    }

    /// Rollup chunks are the last copy: their age alone decides.
    async fn rollup_chunks(
        &self,
        client: &mut Client,
        table: &str,
        cutoff: DateTime<Utc>,
    ) -> Result<Vec<RetentionRow>, tokio_postgres::Error> {
        let mut rows = Vec::new();
        for chunk in catalog::chunks_before(client, table, cutoff).await? {
            let verdict = self
                .drop(client, table, &chunk, None, &mut Vec::new())
                .await?;
            rows.push(self.row(table, &chunk, verdict, Vec::new()));
        }
        Ok(rows)
    }
}

impl Report for RetentionReport {
    type Row = RetentionRow;
    const KIND: &'static str = "chunk";
    const HEADER: &'static str = "SERVER|SITE|TABLE|CHUNK RANGE (UTC)|SIZE|VERDICT|WHY";
    fn rows(&self) -> &[RetentionRow] {
        &self.rows
    }
    fn cells(row: &RetentionRow) -> Vec<String> {
        match row {
            RetentionRow::Chunk(c) => vec![
                c.server.clone(),
                c.site.clone(),
                c.table.clone(),
                format!(
                    "{} .. {}",
                    c.range_start.format("%Y-%m-%d %H:%M"),
                    c.range_end.format("%Y-%m-%d %H:%M")
                ),
                human_bytes(c.bytes.max(0) as u64),
                match c.verdict {
                    Verdict::Drop => "would drop",
                    Verdict::Dropped => "dropped",
                    Verdict::Keep => "KEEP",
                }
                .into(),
                c.reasons.join("; "),
            ],
            RetentionRow::Failure(f) => f.cells(),
            RetentionRow::NotConfigured { note, .. } => {
                vec![
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                    "-".into(),
                    note.clone(),
                ]
            }
        }
    }
    fn problem(row: &RetentionRow) -> Option<String> {
        match row {
            RetentionRow::Failure(f) => Some(f.error.clone()),
            _ => None,
        }
    }
    fn summary(&self) -> String {
        let (mut gone, mut bytes, mut kept) = (0, 0i64, 0);
        for r in &self.rows {
            if let RetentionRow::Chunk(c) = r {
                match c.verdict {
                    Verdict::Keep => kept += 1,
                    _ => {
                        gone += 1;
                        bytes += c.bytes;
                    }
                }
            }
        }
        let verb = match self
            .rows
            .iter()
            .any(|r| matches!(r, RetentionRow::Chunk(c) if c.verdict == Verdict::Drop))
        {
            true => "would drop",
            false => "dropped",
        };
        format!(
            "retention: {verb} {gone} chunks ({}), kept {kept} (see why)",
            human_bytes(bytes.max(0) as u64)
        )
    }
    fn outcome(&self) -> Outcome {
        match self
            .rows
            .iter()
            .any(|r| matches!(r, RetentionRow::Failure(_)))
        {
            true => Outcome::Partial,
            false => Outcome::Clean,
        }
    }
}
