//! `essops ingest`: poll a site's Modbus devices every sample interval and
//! write the rows to every configured server, losing nothing when a server
//! goes away (per-server spool, replayed in order) and storing nothing twice.
//!
//! Shape: pollers ([`poll`]) → one collector that cuts batches every
//! [`FLUSH_EVERY`] → one writer per server ([`writer`]), each with its own
//! spool ([`spool`]). Counters and health lines live in [`stats`].

pub mod batch;
pub mod poll;
pub mod spool;
pub mod stats;
pub mod writer;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use self::batch::{Batch, Row};
use self::poll::{PollDevice, Worker};
use self::spool::{Spool, SpoolError};
use self::stats::Stats;
use self::writer::Writer;
use crate::config::{ConfigError, Site};
use crate::context::Context;
use crate::error::{Outcome, exit};
use crate::output::Report;
use crate::schema::device_label;
use crate::window::parse_std_duration;

/// Rows are cut into batches this often: short enough that a row is
/// committed well within a second of its poll.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
const HEALTH_EVERY: Duration = Duration::from_secs(60);

/// Poll a site's BMS and PCS over Modbus TCP and write every sample to every server.
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    /// The site to poll.
    #[arg(long)]
    pub site: String,
    /// Write only to these servers (repeatable; default: all of the site's).
    #[arg(long = "server", value_name = "NAME")]
    pub servers: Vec<String>,
    /// Stop after this long (e.g. 90s, 1h); default: until Ctrl-C or SIGTERM.
    #[arg(long, value_parser = parse_std_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "site `{0}` has no Modbus endpoints; add `modbus = {{ bms = \"HOST:PORT\", pcs = \"HOST:PORT\" }}` to its [[sites]] entry"
    )]
    NoEndpoints(String),
    #[error(transparent)]
    Locked(#[from] crate::lock::LockError),
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("{0}")]
    Privilege(String),
}

impl IngestError {
    pub fn exit_code(&self) -> u8 {
        match self {
            IngestError::Locked(e) => e.exit_code(),
            IngestError::Spool(_) => exit::INTERNAL,
            IngestError::Privilege(_) => exit::PRIVILEGE,
            _ => exit::CONFIG,
        }
    }
}

/// What will be polled and where it goes.
pub struct Plan {
    pub site: Site,
    pub servers: Vec<crate::config::Server>,
    pub devices: Vec<PollDevice>,
    pub spool_root: PathBuf,
}

pub fn plan(args: &IngestArgs, ctx: &Context) -> Result<Plan, IngestError> {
    let site = ctx.config.site(&args.site)?.clone();
    if site.endpoints.is_empty() {
        return Err(IngestError::NoEndpoints(site.name));
    }
    let servers = ctx
        .config
        .select_servers(&args.servers)?
        .into_iter()
        .filter(|s| args.servers.contains(&s.name) || site.servers.contains(&s.name))
        .cloned()
        .collect();
    let mut devices = Vec::new();
    for (table_index, t) in site.register_map.tables.iter().enumerate() {
        let table = Arc::new(t.clone());
        for device in t.spec.devices(&site) {
            devices.push(PollDevice {
                index: devices.len(),
                table_index,
                table: table.clone(),
                unit: t.unit_of(&device).unwrap_or(0),
                block_start: t.block_start(&device) as u16,
                requests: t.requests(&device),
                device,
            });
        }
    }
    let spool_root = ctx
        .config
        .base_dir()
        .join(&ctx.config.spool_dir)
        .join(&site.name);
    Ok(Plan {
        site,
        servers,
        devices,
        spool_root,
    })
}

/// Devices split over connections: per endpoint address, round-robin.
fn workers(
    plan: &Plan,
    ctx: &Context,
    rows: &mpsc::UnboundedSender<(usize, Row)>,
    stats: &Arc<Stats>,
) -> Vec<Worker> {
    let mut by_addr: BTreeMap<String, Vec<PollDevice>> = BTreeMap::new();
    for d in &plan.devices {
        let addr = plan
            .site
            .endpoint(&d.table.endpoint)
            .map(|e| e.addr.clone())
            .unwrap_or_default();
        by_addr.entry(addr).or_default().push(d.clone());
    }
    let mut out = Vec::new();
    for (addr, devices) in by_addr {
        let n = ctx.config.modbus.connections.min(devices.len());
        let mut shares: Vec<Vec<PollDevice>> = vec![Vec::new(); n];
        for (i, d) in devices.into_iter().enumerate() {
            shares[i % n].push(d);
        }
        out.extend(shares.into_iter().map(|devices| Worker {
            addr: addr.clone(),
            devices,
            timeout: ctx.config.modbus.timeout,
            interval_secs: plan.site.sample_interval_secs.into(),
            rows: rows.clone(),
            stats: stats.clone(),
        }));
    }
    out
}

/// Cuts the polled rows into per-table batches and hands each to every writer.
async fn collect(
    mut rows: mpsc::UnboundedReceiver<(usize, Row)>,
    tables: Vec<(crate::schema::TableSpec, Arc<Vec<String>>)>,
    writers: Vec<mpsc::UnboundedSender<Arc<Batch>>>,
) {
    let mut pending: Vec<Vec<Row>> = vec![Vec::new(); tables.len()];
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let flush = |pending: &mut Vec<Vec<Row>>| {
        for (i, rows) in pending.iter_mut().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let batch = Arc::new(Batch {
                spec: tables[i].0,
                columns: tables[i].1.clone(),
                rows: std::mem::take(rows),
            });
            for w in &writers {
                let _ = w.send(batch.clone());
            }
        }
    };
    loop {
        tokio::select! {
            row = rows.recv() => match row {
                Some((table, row)) => pending[table].push(row),
                None => break,
            },
            _ = tick.tick() => flush(&mut pending),
        }
    }
    flush(&mut pending);
}

/// Refuses to start when a reachable server's role cannot insert (or stage
/// replays): better one clear message now than a spool that never drains.
/// Servers that are down now are checked by their writer when they return.
async fn check_privileges(plan: &Plan, ctx: &Context) -> Result<(), IngestError> {
    let checks = plan.servers.iter().map(|server| async move {
        let target = crate::db::Target {
            server,
            database: &plan.site.database,
        };
        let Ok(client) = crate::db::connect(&ctx.config, target).await else {
            return Ok(());
        };
        for t in &plan.site.register_map.tables {
            crate::privilege::require(
                &client,
                &server.name,
                &plan.site.database,
                "ingest",
                t.spec.name,
                &["SELECT", "INSERT"],
                true,
            )
            .await
            .map_err(IngestError::Privilege)?;
        }
        Ok(())
    });
    futures_util::future::try_join_all(checks).await.map(|_| ())
}

pub async fn execute(
    plan: Plan,
    ctx: &Context,
    shutdown: impl std::future::Future<Output = ()>,
    duration: Option<Duration>,
) -> Result<IngestReport, IngestError> {
    let _lock = crate::lock::acquire(&ctx.lock_dir(), "ingest", &plan.site.name)?;
    check_privileges(&plan, ctx).await?;
    let server_names: Vec<String> = plan.servers.iter().map(|s| s.name.clone()).collect();
    let stats = Arc::new(Stats::new(
        &plan.site.name,
        plan.devices
            .iter()
            .map(|d| (d.table.spec.name, device_label(&d.table.spec, &d.device)))
            .collect(),
        &server_names,
    ));
    let device_index: Arc<HashMap<_, _>> = Arc::new(
        plan.devices
            .iter()
            .map(|d| ((d.table.spec.name, d.device.clone()), d.index))
            .collect(),
    );
    let mut writer_txs = Vec::new();
    let mut writer_tasks = tokio::task::JoinSet::new();
    for (i, server) in plan.servers.iter().enumerate() {
        let spool = Spool::open(&plan.spool_root.join(&server.name))?;
        let (tx, rx) = mpsc::unbounded_channel();
        writer_txs.push(tx);
        let w = Writer::new(
            i,
            server.clone(),
            plan.site.database.clone(),
            ctx.config.clone(),
            plan.site.register_map.clone(),
            spool,
            stats.clone(),
            device_index.clone(),
        );
        writer_tasks.spawn(w.run(rx));
    }
    let (row_tx, row_rx) = mpsc::unbounded_channel();
    let tables = plan
        .site
        .register_map
        .tables
        .iter()
        .map(|t| (t.spec, Arc::new(t.value_columns())))
        .collect();
    let collector = tokio::spawn(collect(row_rx, tables, writer_txs));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut pollers = tokio::task::JoinSet::new();
    for w in workers(&plan, ctx, &row_tx, &stats) {
        pollers.spawn(w.run(stop_rx.clone()));
    }
    drop(row_tx);
    tracing::info!(site = %plan.site.name, devices = plan.devices.len(), servers = %server_names.join(","), "ingest started");
    let started = std::time::Instant::now();
    let health = {
        let stats = stats.clone();
        tokio::spawn(async move {
            let mut last = Vec::new();
            let mut tick =
                tokio::time::interval_at(tokio::time::Instant::now() + HEALTH_EVERY, HEALTH_EVERY);
            loop {
                tick.tick().await;
                stats.log_health(&mut last);
            }
        })
    };
    let until = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown => tracing::info!(site = %plan.site.name, "stopping on signal: flushing"),
        _ = until => {}
    }
    let _ = stop_tx.send(true);
    while pollers.join_next().await.is_some() {}
    let _ = collector.await;
    while writer_tasks.join_next().await.is_some() {}
    health.abort();
    stats.log_health(&mut Vec::new());
    Ok(IngestReport::new(&plan, &stats, started.elapsed()))
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerRow {
    pub site: String,
    pub server: String,
    pub devices: usize,
    pub seconds: f64,
    pub polls_ok: u64,
    pub polls_failed: u64,
    pub rows_written: u64,
    pub rows_replayed: u64,
    pub rows_spooled: u64,
    /// Rows still in the spool at the end (replayed by the next run).
    pub spool_pending: u64,
    pub rows_lost: u64,
    pub delay_p50_ms: Option<u64>,
    pub delay_p99_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    pub rows: Vec<ServerRow>,
}

impl IngestReport {
    fn new(plan: &Plan, stats: &Stats, elapsed: Duration) -> IngestReport {
        let ok: u64 = stats.devices.iter().map(|d| d.polls_ok.load(Relaxed)).sum();
        let failed: u64 = stats
            .devices
            .iter()
            .map(|d| d.polls_failed.load(Relaxed))
            .sum();
        let rows = stats
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| ServerRow {
                site: plan.site.name.clone(),
                server: s.name.clone(),
                devices: plan.devices.len(),
                seconds: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
                polls_ok: ok,
                polls_failed: failed,
                rows_written: s.written.load(Relaxed),
                rows_replayed: s.replayed.load(Relaxed),
                rows_spooled: s.spooled.load(Relaxed),
                spool_pending: s.spool_depth.load(Relaxed),
                rows_lost: s.lost.load(Relaxed),
                delay_p50_ms: stats.delay_quantile_ms(i, 0.50),
                delay_p99_ms: stats.delay_quantile_ms(i, 0.99),
            })
            .collect();
        IngestReport { rows }
    }
}

impl Report for IngestReport {
    type Row = ServerRow;
    const HEADER: &'static [&'static str] = &[
        "SITE", "SERVER", "WRITTEN", "REPLAYED", "SPOOLED", "PENDING", "LOST", "P50 MS", "P99 MS",
    ];
    fn rows(&self) -> &[ServerRow] {
        &self.rows
    }
    fn cells(r: &ServerRow) -> Vec<String> {
        let ms = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        vec![
            r.site.clone(),
            r.server.clone(),
            r.rows_written.to_string(),
            r.rows_replayed.to_string(),
            r.rows_spooled.to_string(),
            r.spool_pending.to_string(),
            r.rows_lost.to_string(),
            ms(r.delay_p50_ms),
            ms(r.delay_p99_ms),
        ]
    }
    fn summary(&self) -> String {
        let Some(r) = self.rows.first() else {
            return "no server to write to".into();
        };
        let total = r.polls_ok + r.polls_failed;
        let pct = if total == 0 {
            0.0
        } else {
            100.0 * r.polls_ok as f64 / total as f64
        };
        format!(
            "{}: {} devices for {:.1} s; {} of {} polls answered ({pct:.2} %)",
            r.site, r.devices, r.seconds, r.polls_ok, total
        )
    }
    fn outcome(&self) -> Outcome {
        match self.rows.iter().any(|r| r.rows_lost > 0) {
            true => Outcome::Critical,
            false => Outcome::Clean,
        }
    }
}
