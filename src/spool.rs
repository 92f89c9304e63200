//! `essops spool list|replay|discard`: what ingest set aside for a server,
//! per site and server: pending batches (the server could not take them
//! yet) and rejected ones (the server refused them for good).
//!
//! `replay` drains the pending batches without polling, under the site's
//! ingest lock, through the same replayer ingest uses. `discard` deletes
//! rejected batches, or pending ones older than a time; it shows what it
//! would delete with `--dry-run` and asks on a terminal unless `--yes`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

use crate::context::Context;
use crate::exit::{Outcome, code as exit};
use crate::ingest::spool::{self, REJECTED_DIR, Spool, SpoolFile};
use crate::ingest::{self, IngestArgs, IngestError};
use crate::lock::LockKey;
use crate::output::Report;

/// Pending and rejected batches ingest set aside.
#[derive(Debug, clap::Args)]
pub struct SpoolArgs {
    #[command(subcommand)]
    pub command: SpoolCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum SpoolCommand {
    /// Per site and server: files, rows, oldest and newest sample, bytes, rejected batches.
    List(SpoolSelect),
    /// Replay the pending batches now, without polling (under the site's ingest lock).
    Replay(SpoolSelect),
    /// Delete rejected batches, or pending ones older than a time.
    Discard(DiscardArgs),
    /// Move rejected batches back to pending once their cause is fixed (a
    /// constraint dropped, a column widened); the next ingest or `spool
    /// replay` writes them. Takes the site's ingest lock.
    Requeue(RequeueArgs),
}

#[derive(Debug, clap::Args)]
pub struct RequeueArgs {
    #[command(flatten)]
    pub select: SpoolSelect,
    /// Only list what would be moved.
    #[arg(long)]
    pub dry_run: bool,
}

/// Which spools.
pub type SpoolSelect = crate::select::Selection;

#[derive(Debug, clap::Args)]
pub struct DiscardArgs {
    #[command(flatten)]
    pub select: SpoolSelect,
    /// Delete the rejected batches.
    #[arg(long, required_unless_present = "before", conflicts_with = "before")]
    pub rejected: bool,
    /// Delete pending batches whose newest sample is older than this (RFC 3339 or `YYYY-MM-DD HH:MM:SS` in the site's zone).
    #[arg(long, value_name = "TIME")]
    pub before: Option<String>,
    /// Only list what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not ask for confirmation.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolCmdError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("--before: {0}")]
    Time(String),
    #[error(
        "refusing to delete without confirmation: not on a terminal; add --yes (or --dry-run to see what would go)"
    )]
    NeedsYes,
    #[error("cannot delete {path}: {source}")]
    Delete {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot move {path} back to pending: {source}")]
    Requeue {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl SpoolCmdError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SpoolCmdError::Ingest(e) => e.exit_code(),
            SpoolCmdError::Time(_) | SpoolCmdError::NeedsYes => exit::USAGE,
            SpoolCmdError::Config(_) => exit::CONFIG,
            SpoolCmdError::Spool(_)
            | SpoolCmdError::Delete { .. }
            | SpoolCmdError::Requeue { .. } => exit::INTERNAL,
        }
    }
}

crate::into_error!(SpoolCmdError);

/// One spool (site, server, pending or rejected) as listed, or what a command did to it.
#[derive(Debug, Clone, Serialize)]
pub struct SpoolRow {
    pub site: String,
    /// The ingest device group (`--devices`) whose spool this is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    pub server: String,
    /// `pending` or `rejected`.
    pub kind: &'static str,
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    pub bytes_per_row: Option<f64>,
    pub oldest: Option<DateTime<Utc>>,
    pub newest: Option<DateTime<Utc>>,
    /// replay: rows written, already there, refused; discard: files deleted;
    /// requeue: files moved back to pending.
    pub replayed: Option<u64>,
    pub duplicate: Option<u64>,
    pub rejected: Option<u64>,
    pub deleted: Option<usize>,
    pub requeued: Option<usize>,
    pub dir: PathBuf,
    /// Why a replay stopped short (server down, set aside).
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SpoolReport {
    pub action: &'static str,
    pub rows: Vec<SpoolRow>,
}

/// One spool folder: its site, device group, server and path.
struct Place {
    site: String,
    group: Option<String>,
    server: String,
    dir: PathBuf,
}

/// The site's device groups that have spools (`@GROUP` folders), after the
/// whole site (`None`): ingest processes that split a site each keep one.
fn groups(ctx: &Context, site: &str) -> Vec<Option<String>> {
    let mut out = vec![None];
    let Ok(entries) = std::fs::read_dir(ingest::spool_root(ctx, site)) else {
        return out;
    };
    let mut found: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|name| {
            let group = name.strip_prefix(ingest::GROUP_FOLDER_PREFIX)?;
            Some(group.to_string())
        })
        .collect();
    found.sort();
    out.extend(found.into_iter().map(Some));
    out
}

/// Every selected spool folder.
fn spools(select: &SpoolSelect, ctx: &Context) -> Result<Vec<Place>, SpoolCmdError> {
    let mut out = Vec::new();
    let servers = ctx.config.select_servers(&select.servers)?;
    for site in ctx.config.select_sites(&select.sites)? {
        for group in groups(ctx, &site.name) {
            let root = ingest::group_spool_root(ctx, &site.name, group.as_deref());
            for server in servers.iter().filter(|s| site.servers.contains(&s.name)) {
                out.push(Place {
                    site: site.name.clone(),
                    group: group.clone(),
                    server: server.name.clone(),
                    dir: root.join(&server.name),
                });
            }
        }
    }
    Ok(out)
}

fn row(place: &Place, kind: &'static str, dir: PathBuf, files: &[SpoolFile]) -> SpoolRow {
    let rows: u64 = files.iter().map(|f| f.rows).sum();
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let time = |t: Option<i64>| t.and_then(|t| DateTime::from_timestamp(t, 0));
    SpoolRow {
        site: place.site.clone(),
        group: place.group.clone(),
        server: place.server.clone(),
        kind,
        files: files.len(),
        rows,
        bytes,
        bytes_per_row: (rows > 0).then(|| (bytes as f64 / rows as f64 * 10.0).round() / 10.0),
        oldest: time(files.iter().map(|f| f.first_t).filter(|t| *t > 0).min()),
        newest: time(files.iter().map(|f| f.last_t).max()),
        replayed: None,
        duplicate: None,
        rejected: None,
        deleted: None,
        requeued: None,
        dir,
        error: None,
    }
}

pub fn list(select: &SpoolSelect, ctx: &Context) -> Result<SpoolReport, SpoolCmdError> {
    let mut rows = Vec::new();
    for place in spools(select, ctx)? {
        let rejected_dir = place.dir.join(REJECTED_DIR);
        let pending = spool::list(&place.dir)?;
        rows.push(row(&place, "pending", place.dir.clone(), &pending));
        let rejected = spool::list(&rejected_dir)?;
        rows.push(row(&place, "rejected", rejected_dir, &rejected));
    }
    Ok(SpoolReport {
        action: "list",
        rows,
    })
}

/// Replays every selected pending spool (the site's and each device
/// group's), one at a time under its ingest lock.
pub async fn replay(select: &SpoolSelect, ctx: &Context) -> Result<SpoolReport, SpoolCmdError> {
    let mut rows = Vec::new();
    for site in ctx.config.select_sites(&select.sites)? {
        for group in groups(ctx, &site.name) {
            rows.extend(replay_one(select, ctx, &site.name, group).await?);
        }
    }
    Ok(SpoolReport {
        action: "replay",
        rows,
    })
}

/// Replays one site's (or one device group's) spools into each server.
async fn replay_one(
    select: &SpoolSelect,
    ctx: &Context,
    site: &str,
    group: Option<String>,
) -> Result<Vec<SpoolRow>, SpoolCmdError> {
    let mut rows = Vec::new();
    {
        let args = IngestArgs {
            servers: select.servers.clone(),
            devices: group.clone(),
            ..IngestArgs::for_site(site, None)
        };
        let plan = ingest::plan(&args, ctx)?;
        let (stats, devices) = ingest::counters(&plan);
        let (_stop_tx, stop) = watch::channel(true);
        let mut tasks = Vec::new();
        for (i, server) in plan.servers.iter().enumerate() {
            let dir = plan.spool_root.join(&server.name);
            let spool = Spool::open(&dir, ctx.config.spool_limits)?;
            let sink = Arc::new(ingest::writer::Sink::new(
                i,
                ingest::destination(&plan, ctx, server),
                spool,
                stats.clone(),
                devices.clone(),
                None,
            ));
            tasks.push((
                dir,
                tokio::spawn(ingest::writer::run_replay(sink, stop.clone(), None)),
            ));
        }
        for (i, (dir, task)) in tasks.into_iter().enumerate() {
            let _ = task.await;
            let s = &stats.servers[i];
            let load =
                |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
            let place = Place {
                site: site.to_string(),
                group: group.clone(),
                server: s.name.clone(),
                dir: dir.clone(),
            };
            let mut r = row(&place, "pending", dir.clone(), &spool::list(&dir)?);
            r.replayed = Some(load(&s.written));
            r.duplicate = Some(load(&s.duplicates));
            r.rejected = Some(load(&s.rejected));
            r.error = ingest::stats::lock(&s.set_aside)
                .as_ref()
                .map(|(_, m)| m.clone())
                .or_else(|| {
                    (r.files > 0).then(|| {
                        "the server did not take every batch; see the log lines above".to_string()
                    })
                });
            rows.push(r);
        }
    }
    Ok(rows)
}

/// Moves every rejected batch of the selected spools back to pending (its
/// error file goes: the next refusal writes a new one).
pub fn requeue(args: &RequeueArgs, ctx: &Context) -> Result<SpoolReport, SpoolCmdError> {
    let mut rows = Vec::new();
    for place in spools(&args.select, ctx)? {
        let rejected_dir = place.dir.join(REJECTED_DIR);
        let files = spool::list(&rejected_dir)?;
        let mut r = row(&place, "rejected", rejected_dir, &files);
        if !args.dry_run {
            for f in &files {
                let Some(name) = f.path.file_name() else {
                    continue;
                };
                std::fs::rename(&f.path, place.dir.join(name)).map_err(|source| {
                    SpoolCmdError::Requeue {
                        path: f.path.clone(),
                        source,
                    }
                })?;
                delete_error_file(&f.path)?;
            }
            r.requeued = Some(files.len());
        }
        rows.push(r);
    }
    Ok(SpoolReport {
        action: if args.dry_run {
            "requeue (dry run)"
        } else {
            "requeue"
        },
        rows,
    })
}

pub fn discard(args: &DiscardArgs, ctx: &Context) -> Result<SpoolReport, SpoolCmdError> {
    let mut chosen: Vec<(SpoolRow, Vec<SpoolFile>)> = Vec::new();
    for place in spools(&args.select, ctx)? {
        let dir = place.dir.clone();
        let (kind, dir, files) = match &args.before {
            Some(t) => {
                let tz = ctx.config.site(&place.site)?.timezone;
                let before = crate::window::parse_time(t, tz)
                    .map_err(|e| SpoolCmdError::Time(e.to_string()))?
                    .timestamp();
                let files: Vec<SpoolFile> = spool::list(&dir)?
                    .into_iter()
                    .filter(|f| f.last_t < before)
                    .collect();
                ("pending", dir, files)
            }
            None => {
                let dir = dir.join(REJECTED_DIR);
                let files = spool::list(&dir)?;
                ("rejected", dir, files)
            }
        };
        chosen.push((row(&place, kind, dir, &files), files));
    }
    let total: usize = chosen.iter().map(|(_, f)| f.len()).sum();
    if !args.dry_run && total > 0 && !args.yes && !confirm(&chosen)? {
        return Ok(SpoolReport {
            action: "discard (cancelled)",
            rows: chosen.into_iter().map(|(r, _)| r).collect(),
        });
    }
    let mut rows = Vec::new();
    for (mut r, files) in chosen {
        if !args.dry_run {
            // The spool folder's lock: a running ingest's writer holds it
            // around each file it writes, moves or removes.
            let _lock = files
                .first()
                .and_then(|f| spool_dir_of(&f.path))
                .map(spool::dir_lock)
                .transpose()?;
            for f in &files {
                delete(&f.path)?;
                delete_error_file(&f.path)?;
            }
            r.deleted = Some(files.len());
        }
        rows.push(r);
    }
    Ok(SpoolReport {
        action: if args.dry_run {
            "discard (dry run)"
        } else {
            "discard"
        },
        rows,
    })
}

/// The server's spool folder a pending or rejected file lies in.
fn spool_dir_of(file: &std::path::Path) -> Option<&std::path::Path> {
    let dir = file.parent()?;
    match dir.file_name().and_then(|n| n.to_str()) {
        Some(REJECTED_DIR) => dir.parent(),
        _ => Some(dir),
    }
}

/// A rejected batch's error file, beside it, when it has one.
fn delete_error_file(batch: &std::path::Path) -> Result<(), SpoolCmdError> {
    let error = batch.with_extension("error");
    match error.exists() {
        true => delete(&error),
        false => Ok(()),
    }
}

fn delete(path: &std::path::Path) -> Result<(), SpoolCmdError> {
    std::fs::remove_file(path).map_err(|source| SpoolCmdError::Delete {
        path: path.to_path_buf(),
        source,
    })
}

/// Asks on the terminal; refuses when there is none.
fn confirm(chosen: &[(SpoolRow, Vec<SpoolFile>)]) -> Result<bool, SpoolCmdError> {
    if !std::io::stdin().is_terminal() {
        return Err(SpoolCmdError::NeedsYes);
    }
    let (files, rows): (usize, u64) = chosen
        .iter()
        .fold((0, 0), |(f, r), (row, _)| (f + row.files, r + row.rows));
    eprint!("delete {files} spool files ({rows} rows) for good? [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

impl Report for SpoolReport {
    type Row = SpoolRow;
    const KIND: &'static str = "spool";
    const HEADER: &'static str = "SITE|SERVER|KIND|FILES|ROWS|BYTES|B/ROW|OLDEST|NEWEST|DONE";
    fn cells(r: &SpoolRow) -> Vec<String> {
        let time = |t: Option<DateTime<Utc>>| {
            t.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        };
        let done = match (r.replayed, r.deleted) {
            (Some(n), _) => format!(
                "{n} written, {} already there, {} refused",
                r.duplicate.unwrap_or(0),
                r.rejected.unwrap_or(0)
            ),
            (None, Some(n)) => format!("{n} files deleted"),
            _ => match r.requeued {
                Some(n) => format!("{n} files back to pending"),
                None => "-".into(),
            },
        };
        vec![
            match &r.group {
                Some(g) => format!("{}@{g}", r.site),
                None => r.site.clone(),
            },
            r.server.clone(),
            r.kind.into(),
            r.files.to_string(),
            r.rows.to_string(),
            crate::output::human_bytes(r.bytes),
            r.bytes_per_row.map_or("-".into(), |b| format!("{b:.0}")),
            time(r.oldest),
            time(r.newest),
            done,
        ]
    }
    fn summary(&self) -> String {
        let rows: u64 = self.rows.iter().map(|r| r.rows).sum();
        format!(
            "spool {}: {rows} rows in {} spools",
            self.action,
            self.rows.len()
        )
    }
    fn problem(r: &SpoolRow) -> Option<String> {
        r.error.clone()
    }
    fn outcome(&self) -> Outcome {
        let pending_left = self.action == "replay" && self.rows.iter().any(|r| r.files > 0);
        let refused = self.rows.iter().any(|r| r.rejected.unwrap_or(0) > 0);
        if refused {
            Outcome::Critical
        } else if pending_left {
            Outcome::Partial
        } else {
            Outcome::Clean
        }
    }
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

/// A spool command's plan: its arguments and, where it touches pending
/// batches, the ingest lock of each site (an ingest replays them itself).
pub struct SpoolPlan<A> {
    args: A,
    locks: Vec<LockKey>,
}

impl<A> crate::command::Plan for SpoolPlan<A> {
    fn locks(&self) -> Vec<LockKey> {
        self.locks.clone()
    }
}

/// The ingest locks of the selected sites and of their device groups with
/// spools: what a running ingest of any of them would hold.
fn ingest_locks(ctx: &Context, names: &[String]) -> Result<Vec<LockKey>, crate::error::Error> {
    let mut out = Vec::new();
    for site in ctx.config.select_sites(names)? {
        for group in groups(ctx, &site.name) {
            out.push(match group {
                Some(g) => LockKey::part("ingest", &site.name, &g),
                None => LockKey::site("ingest", &site.name),
            });
        }
    }
    Ok(out)
}

/// `spool list`.
pub struct ListSpools(pub SpoolSelect);
/// `spool replay`.
pub struct ReplaySpools(pub SpoolSelect);

impl crate::command::Command for ListSpools {
    type Plan = SpoolPlan<SpoolSelect>;
    type Report = SpoolReport;
    async fn plan(self, _ctx: &Context) -> Result<Self::Plan, crate::error::Error> {
        Ok(SpoolPlan {
            args: self.0,
            locks: vec![],
        })
    }
    async fn execute(plan: Self::Plan, ctx: &Context) -> Result<SpoolReport, crate::error::Error> {
        Ok(list(&plan.args, ctx)?)
    }
}

impl crate::command::Command for ReplaySpools {
    type Plan = SpoolPlan<SpoolSelect>;
    type Report = SpoolReport;
    async fn plan(self, ctx: &Context) -> Result<Self::Plan, crate::error::Error> {
        let locks = ingest_locks(ctx, &self.0.sites)?;
        Ok(SpoolPlan {
            args: self.0,
            locks,
        })
    }
    async fn execute(plan: Self::Plan, ctx: &Context) -> Result<SpoolReport, crate::error::Error> {
        Ok(replay(&plan.args, ctx).await?)
    }
}

impl crate::command::Command for DiscardArgs {
    type Plan = SpoolPlan<DiscardArgs>;
    type Report = SpoolReport;
    async fn plan(self, ctx: &Context) -> Result<Self::Plan, crate::error::Error> {
        let locks = match self.before.is_some() && !self.dry_run {
            true => ingest_locks(ctx, &self.select.sites)?,
            false => vec![],
        };
        Ok(SpoolPlan { args: self, locks })
    }
    async fn execute(plan: Self::Plan, ctx: &Context) -> Result<SpoolReport, crate::error::Error> {
        Ok(discard(&plan.args, ctx)?)
    }
}

impl crate::command::Command for RequeueArgs {
    type Plan = SpoolPlan<RequeueArgs>;
    type Report = SpoolReport;
    async fn plan(self, ctx: &Context) -> Result<Self::Plan, crate::error::Error> {
        // A running ingest keeps its list of pending files in memory and
        // would not see requeued ones: refused while it runs (or --wait).
        let locks = match self.dry_run {
            true => vec![],
            false => ingest_locks(ctx, &self.select.sites)?,
        };
        Ok(SpoolPlan { args: self, locks })
    }
    async fn execute(plan: Self::Plan, ctx: &Context) -> Result<SpoolReport, crate::error::Error> {
        Ok(requeue(&plan.args, ctx)?)
    }
}

/// `essops spool …`: each subcommand through the one command shape.
pub async fn run(args: SpoolArgs, ctx: &Context) -> Result<Outcome, crate::error::Error> {
    use crate::command::run;
    match args.command {
        SpoolCommand::List(a) => run(ListSpools(a), ctx).await,
        SpoolCommand::Replay(a) => run(ReplaySpools(a), ctx).await,
        SpoolCommand::Discard(a) => run(a, ctx).await,
        SpoolCommand::Requeue(a) => run(a, ctx).await,
    }
}
