//! `essops ingest`: poll a site's Modbus devices every sample interval and
//! write the rows to every configured server, losing nothing when a server
//! goes away (per-server spool, replayed in order) and storing nothing twice.
//!
//! Shape: [`preflight`] (every map field against every reachable server's
//! catalog) → lanes ([`poll`], a few pipelined connections per endpoint) →
//! one collector that cuts batches every [`FLUSH_EVERY`] → per server a live
//! writer and a replayer ([`writer`]) sharing its [`spool`]. The queue to
//! each live writer is bounded: when a writer falls behind, batches go to
//! its spool on disk, not to RAM. Counters and health lines live in
//! [`stats`]; `--plan` ([`plan_check`]) says whether the polls fit.

mod alarm;
pub mod batch;
pub mod breaker;
pub mod group;
mod heartbeat;
pub mod plan_check;
pub mod poll;
pub mod preflight;
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
use self::poll::{Lane, LaneSettings, PollDevice};
use self::preflight::{Catalog, PreflightError};
use self::spool::{Spool, SpoolError};
use self::stats::{Misses, Stats, lock};
use self::writer::Sink;
use crate::config::{ConfigError, Site};
use crate::context::Context;
use crate::exit::{Outcome, code as exit};
use crate::lock::LockKey;
use crate::output::Report;
use crate::schema::device_label;
use crate::window::parse_std_duration;

/// Rows are cut into batches this often: short enough that a row is
/// committed well within a second of its poll.
const FLUSH_EVERY: Duration = Duration::from_millis(250);
const HEALTH_EVERY: Duration = Duration::from_secs(60);
/// Batches queued per live writer before new ones go to its spool (4 s of data).
const WRITER_QUEUE: usize = 16;

/// Poll a site's BMS and PCS over Modbus TCP and write every sample to every server.
#[derive(Debug, Clone, clap::Args)]
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
    /// Poll only part of the site, so one site can be split across hosts:
    /// `bank:1-5,pcs,etc` (banks with their racks, PCS, the site's etc).
    /// Each group has its own lock and spool; a device is never polled twice.
    #[arg(long, value_name = "GROUP")]
    pub devices: Option<String>,
    /// Do not poll: say per endpoint and connection whether the polls fit the interval.
    #[arg(long)]
    pub plan: bool,
    /// With --plan: measure the devices' answer times for this long (e.g. 10s) instead of assuming timeout_ms.
    #[arg(long, value_parser = parse_std_duration, value_name = "DURATION", requires = "plan")]
    pub probe: Option<Duration>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464);
    /// overrides the site's `metrics_listen`.
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
    /// With --metrics-listen: also a poll series per device (many series on a big site).
    #[arg(long, requires = "metrics_listen")]
    pub metrics_per_device: bool,
}

impl IngestArgs {
    /// Polls `site` into its servers for `duration`.
    pub fn for_site(site: &str, duration: Option<Duration>) -> IngestArgs {
        IngestArgs {
            site: site.to_string(),
            servers: vec![],
            duration,
            devices: None,
            plan: false,
            probe: None,
            metrics_listen: None,
            metrics_per_device: false,
        }
    }
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
    Spool(#[from] SpoolError),
    #[error(transparent)]
    Group(#[from] group::GroupError),
    #[error("nothing polled: {0}")]
    Preflight(#[from] PreflightError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
}

impl IngestError {
    pub fn exit_code(&self) -> u8 {
        match self {
            IngestError::Spool(_) => exit::INTERNAL,
            IngestError::Preflight(e) => e.exit_code(),
            IngestError::Config(_) | IngestError::NoEndpoints(_) => exit::CONFIG,
            IngestError::Group(_) | IngestError::Metrics(_) => exit::USAGE,
        }
    }
}

crate::into_error!(IngestError);

/// What will be polled and where it goes.
pub struct Plan {
    pub site: Site,
    /// Stop after this long (default: at Ctrl-C or SIGTERM).
    pub duration: Option<Duration>,
    pub servers: Vec<crate::config::Server>,
    pub devices: Vec<PollDevice>,
    /// Part of the site only (`--devices`); `None`: all of it.
    pub group: Option<group::Group>,
    pub spool_root: PathBuf,
    /// `--metrics-listen`, and whether per-device series are served.
    pub metrics: Option<(String, bool)>,
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
    let group = args
        .devices
        .as_deref()
        .map(group::Group::parse)
        .transpose()?;
    if let Some(g) = &group {
        g.check(&site)?;
    }
    let mut devices = Vec::new();
    for (table_index, t) in site.register_map.tables.iter().enumerate() {
        let table = Arc::new(t.clone());
        let devices_of_table = t.spec.devices(&site).into_iter();
        for device in
            devices_of_table.filter(|d| group.as_ref().is_none_or(|g| g.includes(t.spec.table, d)))
        {
            // check_devices placed every device when the config was loaded.
            let Ok(at) = site.address(t, &device) else {
                continue;
            };
            devices.push(PollDevice {
                index: devices.len(),
                table_index,
                table: table.clone(),
                endpoint: at.endpoint,
                unit: at.unit,
                block_start: at.start as u16,
                requests: match site.register_map.sunspec {
                    true => Vec::new(),
                    false => t.requests(at.start),
                },
                sunspec: site
                    .register_map
                    .sunspec
                    .then(|| crate::modbus::sunspec::role(t.spec.table, &device))
                    .flatten(),
                device,
            });
        }
    }
    let spool_root = match &group {
        Some(g) => group_spool_root(ctx, &site.name, Some(&g.label)),
        None => spool_root(ctx, &site.name),
    };
    let metrics = args
        .metrics_listen
        .clone()
        .or_else(|| site.metrics_listen.clone())
        .map(|addr| (addr, args.metrics_per_device));
    Ok(Plan {
        site,
        duration: args.duration,
        servers,
        devices,
        group,
        spool_root,
        metrics,
    })
}

/// Where a site's spools live: `<spool_dir>/<site>/<server>/`, and a device
/// group's under `<spool_dir>/<site>/@<group>/<server>/`.
pub fn spool_root(ctx: &Context, site: &str) -> PathBuf {
    ctx.config.base_dir().join(&ctx.config.spool_dir).join(site)
}

/// A device group's folder under its site's spool root is `@GROUP`.
pub const GROUP_FOLDER_PREFIX: char = '@';

/// Where a device group's spools live (the site's own for `None`).
pub fn group_spool_root(ctx: &Context, site: &str, group: Option<&str>) -> PathBuf {
    match group {
        Some(g) => spool_root(ctx, site).join(format!("{GROUP_FOLDER_PREFIX}{g}")),
        None => spool_root(ctx, site),
    }
}

pub fn lane_settings(plan: &Plan, ctx: &Context) -> LaneSettings {
    let m = &ctx.config.modbus;
    LaneSettings {
        timeout: m.timeout,
        interval_secs: plan.site.sample_interval_secs.into(),
        pipeline: m.pipeline,
        breaker_after: m.breaker_after,
        stale_after: m.stale_after,
    }
}

pub fn destination(
    plan: &Plan,
    ctx: &Context,
    server: &crate::config::Server,
) -> writer::Destination {
    writer::Destination {
        server: server.clone(),
        database: plan.site.database.clone(),
        config: ctx.config.clone(),
        map: plan.site.register_map.clone(),
    }
}

/// Devices split over connections: per endpoint address, round-robin.
/// Returns (address, that address's shares).
pub fn shares(plan: &Plan, ctx: &Context) -> Vec<(String, Vec<Vec<PollDevice>>)> {
    let mut by_addr: BTreeMap<String, Vec<PollDevice>> = BTreeMap::new();
    for d in &plan.devices {
        let addr = plan
            .site
            .endpoint(&d.endpoint)
            .map(|e| e.addr.clone())
            .unwrap_or_default();
        by_addr.entry(addr).or_default().push(d.clone());
    }
    by_addr
        .into_iter()
        .map(|(addr, devices)| {
            let n = ctx.config.modbus.connections.min(devices.len()).max(1);
            let mut shares: Vec<Vec<PollDevice>> = vec![Vec::new(); n];
            for (i, d) in devices.into_iter().enumerate() {
                shares[i % n].push(d);
            }
            (addr, shares)
        })
        .collect()
}

/// Spool writes of overflowing batches in flight at most (each fsyncs).
const MAX_SPOOLING: usize = 64;

/// Cuts the polled rows into per-table batches and hands each to every
/// server's live writer; a writer whose queue is full gets it in its spool.
async fn collect(
    mut rows: mpsc::Receiver<(usize, Row)>,
    tables: Vec<(crate::schema::TableSpec, Arc<Vec<String>>)>,
    writers: Vec<(mpsc::Sender<Arc<Batch>>, Arc<Sink>)>,
    (stats, alarms): (Arc<Stats>, alarm::AlarmRules),
) {
    let mut pending: Vec<Vec<Row>> = vec![Vec::new(); tables.len()];
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    let mut spooling = tokio::task::JoinSet::new();
    let flush = |pending: &mut Vec<Vec<Row>>, spooling: &mut tokio::task::JoinSet<()>| {
        for (i, rows) in pending.iter_mut().enumerate() {
            if rows.is_empty() {
                continue;
            }
            let batch = Arc::new(Batch {
                spec: tables[i].0,
                columns: tables[i].1.clone(),
                rows: std::mem::take(rows),
            });
            for (w, sink) in &writers {
                // Counted before it is sent: the live writer counts it off on receipt.
                sink.live_queued.fetch_add(1, Relaxed);
                match w.try_send(batch.clone()) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(b)) => {
                        sink.live_queued.fetch_sub(1, Relaxed);
                        let sink = sink.clone();
                        spooling.spawn(async move { sink.spool_batch(b).await });
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        sink.live_queued.fetch_sub(1, Relaxed);
                    }
                }
            }
        }
    };
    loop {
        tokio::select! {
            row = rows.recv() => match row {
                Some((table, row)) => {
                    let in_alarm = alarms.in_alarm(table, &row.values);
                    stats.devices[row.device_index].alarm.store(in_alarm, Relaxed);
                    pending[table].push(row)
                }
                None => break,
            },
            _ = tick.tick() => {
                flush(&mut pending, &mut spooling);
                // Spool writes in flight are bounded: past the bound, the
                // batcher waits for the disk (the rows wait in its channel).
                while spooling.len() > MAX_SPOOLING {
                    spooling.join_next().await;
                }
            }
            Some(_) = spooling.join_next(), if !spooling.is_empty() => {}
        }
    }
    flush(&mut pending, &mut spooling);
    while spooling.join_next().await.is_some() {}
}

/// The run's counters, and each device's index by (table, ids).
pub fn counters(plan: &Plan) -> (Arc<Stats>, Arc<DeviceIndex>) {
    let names: Vec<String> = plan.servers.iter().map(|s| s.name.clone()).collect();
    let stats = Stats::new(
        &plan.site.name,
        plan.devices
            .iter()
            .map(|d| (d.table.spec.name, device_label(&d.table.spec, &d.device)))
            .collect(),
        &names,
    );
    let index = plan
        .devices
        .iter()
        .map(|d| ((d.table.spec.name, d.device.clone()), d.index))
        .collect();
    (Arc::new(stats), Arc::new(index))
}

pub type DeviceIndex = HashMap<(&'static str, crate::schema::DeviceId), usize>;

/// Preflight on every server reachable now (a refusal stops the run before
/// anything is polled); a server that is down is checked by its writer
/// when it comes back.
async fn preflight_all(plan: &Plan, ctx: &Context) -> Result<Vec<Option<Catalog>>, PreflightError> {
    let checks = plan.servers.iter().map(|server| async move {
        let target = crate::db::Target {
            server,
            database: &plan.site.database,
        };
        let client = match crate::db::connect(&ctx.config, target).await {
            Ok(c) => c,
            Err(e) if e.exit_code() == exit::UNAVAILABLE => return Ok(None),
            Err(e) => return Err(PreflightError::Schema(e.to_string())),
        };
        match preflight::check_server(
            &client,
            &server.name,
            &plan.site.database,
            &plan.site.name,
            &plan.site.register_map,
        )
        .await
        {
            Ok(c) => Ok(Some(c)),
            Err(PreflightError::Unreachable(_)) => Ok(None),
            Err(e) => Err(e),
        }
    });
    futures_util::future::try_join_all(checks).await
}

/// Each server's live writer and replayer, sharing its sink.
struct Writers {
    queues: Vec<(mpsc::Sender<Arc<Batch>>, Arc<Sink>)>,
    live: tokio::task::JoinSet<()>,
    replay: tokio::task::JoinSet<()>,
    stop_replay: watch::Sender<bool>,
}

fn start_writers(
    plan: &Plan,
    ctx: &Context,
    catalogs: Vec<Option<Catalog>>,
    stats: &Arc<Stats>,
    device_index: &Arc<DeviceIndex>,
) -> Result<Writers, IngestError> {
    let (stop_replay, stop_rx) = watch::channel(false);
    let mut w = Writers {
        queues: Vec::new(),
        live: tokio::task::JoinSet::new(),
        replay: tokio::task::JoinSet::new(),
        stop_replay,
    };
    for ((i, server), catalog) in plan.servers.iter().enumerate().zip(catalogs) {
        let spool = Spool::open(&plan.spool_root.join(&server.name), ctx.config.spool_limits)?;
        let to = destination(plan, ctx, server);
        let sink = Arc::new(Sink::new(
            i,
            to,
            spool,
            stats.clone(),
            device_index.clone(),
            catalog,
        ));
        let (tx, rx) = mpsc::channel(WRITER_QUEUE);
        w.queues.push((tx, sink.clone()));
        w.live.spawn(writer::run_live(sink.clone(), rx));
        let drain = Some(writer::DRAIN_AFTER_STOP);
        w.replay
            .spawn(writer::run_replay(sink, stop_rx.clone(), drain));
    }
    Ok(w)
}

/// One lane per connection of every endpoint, sending rows to `rows`.
fn start_lanes(
    plan: &Plan,
    ctx: &Context,
    rows: &mpsc::Sender<(usize, Row)>,
    stats: &Arc<Stats>,
    stop: &watch::Receiver<bool>,
) -> tokio::task::JoinSet<()> {
    let mut pollers = tokio::task::JoinSet::new();
    let settings = lane_settings(plan, ctx);
    for (addr, shares) in shares(plan, ctx) {
        for (number, devices) in shares.into_iter().enumerate() {
            let lane = Lane {
                addr: addr.clone(),
                number,
                devices,
                settings,
                rows: rows.clone(),
                stats: stats.clone(),
            };
            pollers.spawn(lane.run(stop.clone()));
        }
    }
    pollers
}

/// The per-device health lines, once a minute until aborted.
fn start_health(stats: &Arc<Stats>) -> tokio::task::JoinHandle<()> {
    let stats = stats.clone();
    tokio::spawn(async move {
        let mut last = Vec::new();
        let first = tokio::time::Instant::now() + HEALTH_EVERY;
        let mut tick = tokio::time::interval_at(first, HEALTH_EVERY);
        loop {
            tick.tick().await;
            stats.log_health(&mut last);
        }
    })
}

/// Starts the `/metrics` server when `--metrics-listen` asks for one.
async fn serve_metrics(
    plan: &Plan,
    stats: &Arc<Stats>,
) -> Result<Option<tokio::task::JoinHandle<()>>, IngestError> {
    let Some((addr, per_device)) = &plan.metrics else {
        return Ok(None);
    };
    let listener = crate::metrics::bind(addr).await?;
    let registry = prometheus::Registry::new();
    let collector = Box::new(crate::metrics::IngestCollector {
        stats: Arc::clone(stats),
        per_device: *per_device,
    });
    registry
        .register(collector)
        .expect("the only collector of a fresh registry");
    tracing::info!(site = %plan.site.name, addr = %addr, "serving Prometheus metrics at /metrics");
    Ok(Some(tokio::spawn(crate::metrics::serve(
        listener,
        Arc::new(registry),
    ))))
}

/// Polls and writes until `shutdown` or `duration`, then stops in order:
/// lanes (requests in flight finish), collector (last batches), live
/// writers, replayers (a last drain).
pub async fn execute(
    plan: Plan,
    ctx: &Context,
    shutdown: impl std::future::Future<Output = ()>,
    duration: Option<Duration>,
) -> Result<IngestReport, IngestError> {
    let catalogs = preflight_all(&plan, ctx).await?;
    let (stats, device_index) = counters(&plan);
    let mut writers = start_writers(&plan, ctx, catalogs, &stats, &device_index)?;
    let (row_tx, row_rx) = mpsc::channel(plan.devices.len().max(1024) * 2);
    let tables: Vec<(crate::schema::TableSpec, Arc<Vec<String>>)> = plan
        .site
        .register_map
        .tables
        .iter()
        .map(|t| (t.spec, Arc::new(t.value_columns())))
        .collect();
    let columns: Vec<&[String]> = tables.iter().map(|(_, c)| c.as_slice()).collect();
    let alarms = alarm::AlarmRules::new(&columns, &ctx.config.cache.limits);
    let metrics = serve_metrics(&plan, &stats).await?;
    let collector = tokio::spawn(collect(
        row_rx,
        tables,
        std::mem::take(&mut writers.queues),
        (stats.clone(), alarms),
    ));
    let (poll_stop_tx, poll_stop_rx) = watch::channel(false);
    let mut pollers = start_lanes(&plan, ctx, &row_tx, &stats, &poll_stop_rx);
    drop(row_tx);
    let servers: Vec<&str> = plan.servers.iter().map(|s| s.name.as_str()).collect();
    tracing::info!(site = %plan.site.name, devices = plan.devices.len(), servers = %servers.join(","), "ingest started");
    let started = std::time::Instant::now();
    let health = start_health(&stats);
    let heartbeat = heartbeat::Heartbeat::start(&plan, &ctx.config, &stats);
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
    let _ = poll_stop_tx.send(true);
    while pollers.join_next().await.is_some() {}
    let _ = collector.await;
    while writers.live.join_next().await.is_some() {}
    let _ = writers.stop_replay.send(true);
    while writers.replay.join_next().await.is_some() {}
    health.abort();
    stats.log_health(&mut Vec::new());
    heartbeat.finish().await;
    if let Some(server) = metrics {
        server.abort();
    }
    Ok(IngestReport::new(&plan, &stats, started.elapsed()))
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerRow {
    pub site: String,
    pub server: String,
    pub devices: usize,
    pub seconds: f64,
    /// Site-wide: polls due (every device, every grid second polled), and
    /// of them answered and missed (the sum of `missed`).
    pub polls_due: u64,
    pub polls_ok: u64,
    pub polls_failed: u64,
    /// Site-wide missed polls by reason.
    pub missed: Misses,
    /// Devices whose breaker is open at the end, and how often breakers opened.
    pub breakers_open: usize,
    pub breaker_openings: u64,
    /// Devices whose measured values stopped changing (`modbus.stale_after`).
    pub stale_devices: usize,
    pub rows_written: u64,
    pub rows_replayed: u64,
    /// Replayed rows per second of replay transactions.
    pub replay_rows_per_sec: Option<u64>,
    pub rows_spooled: u64,
    /// Rows the server already held (a clock stepped back, a replay of committed rows).
    pub rows_duplicate: u64,
    /// Rows set aside in the spool's `rejected/` because the server refused them for good.
    pub rows_rejected: u64,
    /// Rows still in the spool at the end (replayed by the next run), and their bytes.
    pub spool_pending: u64,
    pub spool_bytes: u64,
    pub rows_lost: u64,
    pub delay_p50_ms: Option<u64>,
    pub delay_p99_ms: Option<u64>,
    /// The longest poll-to-commit delay: how long writes stalled at worst.
    pub delay_max_ms: Option<u64>,
    /// Why the server is still set aside at the end (its rows only spooled), if it is.
    pub set_aside: Option<String>,
    /// Every stretch the server was set aside during the run.
    pub set_aside_episodes: Vec<EpisodeRow>,
    /// Refused batches: table, error, rows.
    pub rejections: Vec<Rejection>,
    #[serde(skip)]
    set_aside_code: Option<u8>,
}

/// A stretch during which a server was set aside.
#[derive(Debug, Clone, Serialize)]
pub struct EpisodeRow {
    pub started: String,
    /// None: still set aside at the end.
    pub ended: Option<String>,
    pub seconds: f64,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub table: String,
    pub error: String,
    pub rows: u64,
}

pub type IngestReport = crate::output::Rows<ServerRow>;

impl IngestReport {
    fn new(plan: &Plan, stats: &Stats, elapsed: Duration) -> IngestReport {
        let missed = stats.misses();
        let rows = stats
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let set_aside = lock(&s.set_aside).clone();
                ServerRow {
                    site: plan.site.name.clone(),
                    server: s.name.clone(),
                    devices: plan.devices.len(),
                    seconds: (elapsed.as_secs_f64() * 10.0).round() / 10.0,
                    polls_due: stats.due.load(Relaxed),
                    polls_ok: stats.polls_ok(),
                    polls_failed: missed.total(),
                    missed,
                    breakers_open: stats.count_devices(|d| d.breaker_open.load(Relaxed)),
                    breaker_openings: stats
                        .devices
                        .iter()
                        .map(|d| d.breaker_openings.load(Relaxed))
                        .sum(),
                    stale_devices: stats.count_devices(|d| d.stale.load(Relaxed)),
                    rows_written: s.written.load(Relaxed),
                    rows_replayed: s.replayed.load(Relaxed),
                    replay_rows_per_sec: match s.replay_us.load(Relaxed) {
                        0 => None,
                        us => Some(s.replayed.load(Relaxed) * 1_000_000 / us),
                    },
                    rows_spooled: s.spooled.load(Relaxed),
                    rows_duplicate: s.duplicates.load(Relaxed),
                    rows_rejected: s.rejected.load(Relaxed),
                    spool_pending: s.spool_depth.load(Relaxed),
                    spool_bytes: s.spool_bytes.load(Relaxed),
                    rows_lost: s.lost.load(Relaxed),
                    delay_p50_ms: stats.delay_quantile_ms(i, 0.50),
                    delay_p99_ms: stats.delay_quantile_ms(i, 0.99),
                    delay_max_ms: stats.delay_quantile_ms(i, 1.0),
                    set_aside_code: set_aside.as_ref().map(|(c, _)| *c),
                    set_aside: set_aside.map(|(_, m)| m),
                    set_aside_episodes: lock(&s.episodes)
                        .iter()
                        .map(|e| {
                            let until = e.ended.unwrap_or_else(chrono::Utc::now);
                            EpisodeRow {
                                started: e.started.to_rfc3339(),
                                ended: e.ended.map(|t| t.to_rfc3339()),
                                seconds: ((until - e.started).num_milliseconds() as f64 / 100.0)
                                    .round()
                                    / 10.0,
                                reason: e.reason.clone(),
                            }
                        })
                        .collect(),
                    rejections: lock(&s.rejections)
                        .iter()
                        .map(|(table, error, rows)| Rejection {
                            table: table.clone(),
                            error: error.clone(),
                            rows: *rows,
                        })
                        .collect(),
                }
            })
            .collect();
        IngestReport { rows }
    }
}

impl Report for IngestReport {
    type Row = ServerRow;
    const KIND: &'static str = "ingest";
    const HEADER: &'static str =
        "SITE|SERVER|WRITTEN|REPLAYED|SPOOLED|DUPLICATE|REJECTED|PENDING|LOST|P50 MS|P99 MS";
    fn cells(r: &ServerRow) -> Vec<String> {
        let ms = |v: Option<u64>| v.map_or("-".into(), |v| v.to_string());
        let counts = [
            r.rows_written,
            r.rows_replayed,
            r.rows_spooled,
            r.rows_duplicate,
            r.rows_rejected,
            r.spool_pending,
            r.rows_lost,
        ];
        let mut cells = vec![r.site.clone(), r.server.clone()];
        cells.extend(counts.map(|n| n.to_string()));
        cells.extend([ms(r.delay_p50_ms), ms(r.delay_p99_ms)]);
        cells
    }
    fn summary(&self) -> String {
        let Some(r) = self.rows.first() else {
            return "no server to write to".into();
        };
        let total = r.polls_due;
        let pct = if total == 0 {
            0.0
        } else {
            100.0 * r.polls_ok as f64 / total as f64
        };
        let m = &r.missed;
        let mut out = format!(
            "{}: {} devices for {:.1} s; {} of {} due polls answered ({pct:.2} %); missed: {} timeout, {} exception, {} connection, {} bad answer, {} late, {} breaker, {} sunspec; \
             {} breaker openings, {} open now; {} stale devices",
            r.site,
            r.devices,
            r.seconds,
            r.polls_ok,
            total,
            m.timeout,
            m.exception,
            m.connection,
            m.bad_answer,
            m.late,
            m.breaker,
            m.sunspec,
            r.breaker_openings,
            r.breakers_open,
            r.stale_devices,
        );
        let booked = r.polls_ok + r.polls_failed;
        if booked != total {
            out.push_str(&format!(
                "; {booked} polls booked for {total} due (a bug: please report it)"
            ));
        }
        for s in &self.rows {
            for e in s.set_aside_episodes.iter().filter(|e| e.ended.is_some()) {
                out.push_str(&format!(
                    "\nserver `{}` was set aside for {} s from {} (its rows waited in the spool): {}",
                    s.server, e.seconds, e.started, e.reason
                ));
            }
            if let Some(why) = &s.set_aside {
                out.push_str(&format!(
                    "\nserver `{}` is still set aside (its rows are in its spool): {why}",
                    s.server
                ));
            }
            for j in &s.rejections {
                out.push_str(&format!(
                    "\nserver `{}`: {} rows of `{}` refused and set aside in rejected/: {}",
                    s.server, j.rows, j.table, j.error
                ));
            }
        }
        out
    }
    fn outcome(&self) -> Outcome {
        let set_aside = match self.rows.iter().filter_map(|r| r.set_aside_code).max() {
            Some(exit::PRIVILEGE) => Outcome::Privilege,
            Some(exit::CONFIG) => Outcome::BadConfig,
            Some(_) => Outcome::Partial,
            None => Outcome::Clean,
        };
        let lost = match self
            .rows
            .iter()
            .any(|r| r.rows_lost > 0 || r.rows_rejected > 0)
        {
            true => Outcome::Critical,
            false => Outcome::Clean,
        };
        set_aside.max(lost)
    }
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

impl crate::command::Plan for Plan {
    /// The site's (or the group's) lock, which guards its spool, and one per
    /// bank, PCS and etc device polled, which no other process may poll.
    fn locks(&self) -> Vec<crate::lock::LockKey> {
        let site = &self.site.name;
        let (own, devices) = match &self.group {
            Some(g) => (
                LockKey::part("ingest", site, &g.label),
                g.device_locks(&self.site),
            ),
            None => (
                LockKey::site("ingest", site),
                group::device_locks(&self.site, |_, _| true),
            ),
        };
        let devices = devices
            .iter()
            .map(|d| LockKey::part("ingest-devices", site, d));
        std::iter::once(own).chain(devices).collect()
    }
}

impl crate::command::Command for IngestArgs {
    type Plan = Plan;
    type Report = IngestReport;
    async fn plan(self, ctx: &Context) -> Result<Plan, crate::error::Error> {
        Ok(plan(&self, ctx)?)
    }
    async fn execute(plan: Plan, ctx: &Context) -> Result<IngestReport, crate::error::Error> {
        let duration = plan.duration;
        Ok(execute(plan, ctx, crate::command::shutdown_signal(), duration).await?)
    }
}

/// `essops ingest --plan`: the same arguments, checked instead of polled.
pub struct PlanCheck(pub IngestArgs);

/// What `--plan` checks, and how long it probes.
pub struct CheckPlan {
    plan: Plan,
    probe: Option<Duration>,
}

impl crate::command::Plan for CheckPlan {}

impl crate::command::Command for PlanCheck {
    type Plan = CheckPlan;
    type Report = plan_check::PlanReport;
    async fn plan(self, ctx: &Context) -> Result<CheckPlan, crate::error::Error> {
        Ok(CheckPlan {
            plan: plan(&self.0, ctx)?,
            probe: self.0.probe,
        })
    }
    async fn execute(
        p: CheckPlan,
        ctx: &Context,
    ) -> Result<plan_check::PlanReport, crate::error::Error> {
        Ok(plan_check::check(&p.plan, ctx, p.probe).await?)
    }
}

/// `essops ingest`: polls, or with `--plan` checks whether the polls fit.
pub async fn run(args: IngestArgs, ctx: &Context) -> Result<Outcome, crate::error::Error> {
    match args.plan {
        true => crate::command::run(PlanCheck(args), ctx).await,
        false => crate::command::run(args, ctx).await,
    }
}
