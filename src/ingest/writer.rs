//! Two tasks per server, sharing one [`Sink`]:
//! - the live writer COPYs each new batch in as it comes; when the server
//!   cannot take it the batch goes to the spool;
//! - the replayer drains the spool, oldest first, many files per COPY and
//!   transaction, while live rows keep flowing on the other connection.
//!
//! Every failure is split once ([`db::classify`]): only the rows' own faults
//! (a value out of range, a constraint: SQLSTATE classes 22 and 23) set that
//! batch aside in `rejected/`, and the other tables and later batches go on.
//! Everything else keeps the rows in the spool. A lost connection is retried
//! with backoff. A refusal about the server or its schema
//! ([`db::is_server_state`]: read-only, a privilege, a table or column) sets
//! the server aside, as does a failed [`preflight`] and three batches in a
//! row refused with one SQLSTATE. A set-aside server's rows are spooled; it
//! is checked again with backoff (preflight, and whether it takes writes) and
//! written to again once it passes. Each episode is logged once when it
//! starts and once when it ends, and kept for the report and `ingest_events`.

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, pin_mut};
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;

use super::batch::Batch;
use super::preflight::{self, Catalog, PreflightError};
use super::stats::{Stats, lock};
use crate::config::{Config, Server};
use crate::db::{self, Failure, Target, quote_ident, quote_list};
use crate::ingest::spool::{self, Spool, SpoolFile};
use crate::modbus::map::RegisterMap;
use crate::schema::DeviceId;
use crate::sql::{device_ids_returning, insert_absent_sql};

/// A write that takes longer than this, or than its bytes take at
/// [`SLOWEST_LINK`], is treated as a failed server.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes a second of the slowest uplink a write must still fit through
/// (128 kbit/s): a 1 MB COPY gets 64 s.
const SLOWEST_LINK: f64 = 16.0 * 1024.0;
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const UNIQUE_VIOLATION: &str = "23505";
/// Rows merged into one replay transaction: it starts small and doubles
/// while COPYs finish well inside their timeout, halving after one that
/// does not, so a replay fits the link it has (a 1 Mbit/s uplink as well as
/// loopback).
const REPLAY_ROWS: (u64, u64, u64) = (100, 1_000, 100_000);
/// After the stop signal ingest's replayer drains for at most this long; the
/// rest waits in the spool for the next run.
pub const DRAIN_AFTER_STOP: Duration = Duration::from_secs(10);
const SET_ASIDE_LOG_EVERY: Duration = Duration::from_secs(60);
/// A set-aside server is checked again after 1 s, then twice as long, up to this.
const MAX_RECHECK: Duration = Duration::from_secs(15);
/// Batches refused in a row with one SQLSTATE that make it the server's state.
const REFUSAL_STREAK: u32 = 3;

/// A failed write.
#[derive(Debug)]
struct WriteError {
    failure: Failure,
    message: String,
    /// The server's SQLSTATE, when it answered.
    code: Option<String>,
    /// No answer within the write's timeout.
    timed_out: bool,
}

impl WriteError {
    fn permanent(message: String) -> WriteError {
        WriteError {
            failure: Failure::Permanent,
            message,
            code: None,
            timed_out: false,
        }
    }
    fn transient(message: String) -> WriteError {
        WriteError {
            failure: Failure::Transient,
            message,
            code: None,
            timed_out: false,
        }
    }
}

/// How long a write of `bytes` may take: [`WRITE_TIMEOUT`], or longer when
/// the bytes need it at [`SLOWEST_LINK`].
fn timeout_for(bytes: usize) -> Duration {
    WRITE_TIMEOUT.max(Duration::from_secs_f64(bytes as f64 / SLOWEST_LINK))
}

/// What to do with rows a write did not take.
enum Verdict {
    /// Keep them (spool, or leave the file); retry when the link allows.
    Retry,
    /// Keep them; the server is set aside until it passes a recheck.
    SetAside,
    /// Set them aside in `rejected/`.
    Reject,
}

/// Where a sink writes.
pub struct Destination {
    pub server: Server,
    pub database: String,
    pub config: Arc<Config>,
    pub map: Arc<RegisterMap>,
}

/// What a server's two tasks share.
pub struct Sink {
    pub index: usize,
    pub server: Server,
    pub database: String,
    pub config: Arc<Config>,
    pub map: Arc<RegisterMap>,
    pub spool: Mutex<Spool>,
    pub stats: Arc<Stats>,
    /// Device index by (table, ids), for counting replayed rows.
    pub devices: Arc<HashMap<(&'static str, DeviceId), usize>>,
    /// The server's catalog once preflight passed on it (this run).
    catalog: Mutex<Option<Catalog>>,
    /// The SQLSTATE of the last permanent refusal and how many batches in a
    /// row got it (reset by a write that goes in).
    refusals: Mutex<(Option<String>, u32)>,
    /// Rows the next replay transaction takes (see [`REPLAY_ROWS`]).
    replay_rows: std::sync::atomic::AtomicU64,
    /// Live batches queued for the live writer: while there are any, the
    /// replayer waits (live rows have priority on a narrow link).
    pub live_queued: std::sync::atomic::AtomicUsize,
}

impl Sink {
    /// `catalog` is the server's, when preflight already read it.
    pub fn new(
        index: usize,
        to: Destination,
        spool: Spool,
        stats: Arc<Stats>,
        devices: Arc<HashMap<(&'static str, DeviceId), usize>>,
        catalog: Option<Catalog>,
    ) -> Sink {
        let sink = Sink {
            index,
            server: to.server,
            database: to.database,
            config: to.config,
            map: to.map,
            spool: Mutex::new(spool),
            stats,
            devices,
            catalog: Mutex::new(catalog),
            refusals: Mutex::new((None, 0)),
            replay_rows: std::sync::atomic::AtomicU64::new(REPLAY_ROWS.1),
            live_queued: std::sync::atomic::AtomicUsize::new(0),
        };
        sink.publish_spool(&lock(&sink.spool));
        sink
    }

    fn name(&self) -> &str {
        &self.server.name
    }

    fn set_aside(&self) -> bool {
        lock(&self.stats.servers[self.index].set_aside).is_some()
    }

    /// Sets the server aside (once per episode): its rows spool until a
    /// recheck passes.
    fn set_server_aside(&self, code: u8, reason: String) {
        let s = &self.stats.servers[self.index];
        let mut aside = lock(&s.set_aside);
        if aside.is_some() {
            return;
        }
        tracing::error!(site = %self.stats.site, server = %self.name(), error = %reason,
            "server set aside: its rows are spooled; it is checked again with backoff and written to once it passes");
        lock(&s.episodes).push(super::stats::Episode {
            started: chrono::Utc::now(),
            ended: None,
            reason: reason.clone(),
            start_recorded: false,
            end_recorded: false,
        });
        *aside = Some((code, reason));
    }

    /// Ends a set-aside episode: the server passed its recheck.
    fn resume(&self) {
        let s = &self.stats.servers[self.index];
        if lock(&s.set_aside).take().is_none() {
            return;
        }
        let since = lock(&s.episodes).last_mut().map(|e| {
            e.ended = Some(chrono::Utc::now());
            e.started
        });
        tracing::info!(site = %self.stats.site, server = %self.name(),
            since = %since.map(|t| t.to_rfc3339()).unwrap_or_default(),
            "server no longer set aside: writing again, its spool replays");
    }

    /// What a failed write means for its rows, judging the server's state.
    fn verdict(&self, e: &WriteError) -> Verdict {
        match e.failure {
            Failure::Transient if db::is_server_state(e.code.as_deref()) => {
                self.set_server_aside(crate::exit::code::UNAVAILABLE, e.message.clone());
                Verdict::SetAside
            }
            Failure::Transient => Verdict::Retry,
            Failure::Permanent => {
                let mut streak = lock(&self.refusals);
                match streak.0 == e.code && e.code.is_some() {
                    true => streak.1 += 1,
                    false => *streak = (e.code.clone(), 1),
                }
                if streak.1 < REFUSAL_STREAK {
                    return Verdict::Reject;
                }
                drop(streak);
                self.set_server_aside(
                    crate::exit::code::UNAVAILABLE,
                    format!(
                        "{REFUSAL_STREAK} batches in a row refused with SQLSTATE {}: taken as the server's state, not the rows' ({})",
                        e.code.as_deref().unwrap_or("?"),
                        e.message
                    ),
                );
                Verdict::SetAside
            }
        }
    }

    /// A write went in: refusals are no longer in a row.
    fn wrote(&self) {
        *lock(&self.refusals) = (None, 0);
    }

    fn publish_spool(&self, spool: &Spool) {
        let s = &self.stats.servers[self.index];
        s.spool_depth.store(spool.rows(), Relaxed);
        s.spool_bytes.store(spool.bytes(), Relaxed);
        s.spool_oldest_t
            .store(spool.oldest_t().unwrap_or(0), Relaxed);
    }

    /// Spools a batch off the async threads (the spool fsyncs).
    pub async fn spool_batch(self: &Arc<Self>, batch: Arc<Batch>) {
        let sink = self.clone();
        let rows = batch.rows.len() as u64;
        let pushed = tokio::task::spawn_blocking(move || {
            let mut spool = lock(&sink.spool);
            let r = spool.push(&batch);
            sink.publish_spool(&spool);
            r
        })
        .await;
        let s = &self.stats.servers[self.index];
        match pushed {
            Ok(Ok(())) => {
                s.spooled.fetch_add(rows, Relaxed);
            }
            Ok(Err(e)) => {
                s.lost.fetch_add(rows, Relaxed);
                tracing::error!(site = %self.stats.site, server = %self.name(), error = %e, rows, "rows lost: cannot spool");
            }
            Err(e) => {
                s.lost.fetch_add(rows, Relaxed);
                tracing::error!(site = %self.stats.site, server = %self.name(), error = %e, rows, "rows lost: spool task failed");
            }
        }
    }

    /// Sets a batch (or spool file) aside for good, and says so once.
    async fn reject(self: &Arc<Self>, what: Rejected, table: &str, rows: u64, error: &str) {
        let sink = self.clone();
        let error_text = error.to_string();
        let moved = tokio::task::spawn_blocking(move || {
            let mut spool = lock(&sink.spool);
            let r = match &what {
                Rejected::Batch(b) => spool.reject_batch(b, &error_text),
                Rejected::File(f) => spool.reject(f, &error_text),
            };
            sink.publish_spool(&spool);
            r
        })
        .await;
        let s = &self.stats.servers[self.index];
        match moved {
            Ok(Ok(path)) => {
                s.rejected.fetch_add(rows, Relaxed);
                lock(&s.rejections).push((table.to_string(), error.to_string(), rows));
                tracing::error!(
                    site = %self.stats.site, server = %self.name(), table, rows, error,
                    path = %path.display(),
                    "batch refused for good; set aside in rejected/ (essops spool list shows it)"
                );
            }
            Ok(Err(e)) => {
                s.lost.fetch_add(rows, Relaxed);
                tracing::error!(site = %self.stats.site, server = %self.name(), table, rows, error = %e, "rows lost: cannot set a refused batch aside");
            }
            Err(e) => {
                s.lost.fetch_add(rows, Relaxed);
                tracing::error!(site = %self.stats.site, server = %self.name(), error = %e, "rows lost: spool task failed");
            }
        }
    }

    fn count_written(&self, batch: &Batch, written: Written) {
        let s = &self.stats.servers[self.index];
        let rows = batch.rows.len() as u64;
        let inserted = match &written {
            Written::All => rows,
            Written::Some(devices) => devices.len() as u64,
        };
        s.written.fetch_add(inserted, Relaxed);
        s.duplicates.fetch_add(rows - inserted, Relaxed);
        let now = Instant::now();
        let mut newest = i64::MIN;
        let device_of = |ids: &DeviceId, direct: Option<usize>| {
            direct.or_else(|| self.devices.get(&(batch.spec.name, ids.clone())).copied())
        };
        match written {
            Written::All => {
                for row in &batch.rows {
                    newest = newest.max(row.t);
                    let direct = row.polled.map(|_| row.device_index);
                    if let Some(d) = device_of(&row.device, direct) {
                        self.stats.devices[d].written[self.index].fetch_add(1, Relaxed);
                    }
                    if let Some(polled) = row.polled {
                        self.stats.record_delay(self.index, now - polled);
                    }
                }
            }
            Written::Some(devices) => {
                newest = batch.rows.iter().map(|r| r.t).max().unwrap_or(i64::MIN);
                for ids in devices {
                    if let Some(d) = device_of(&ids, None) {
                        self.stats.devices[d].written[self.index].fetch_add(1, Relaxed);
                    }
                }
            }
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        s.lag_ms.store(
            (now_ms - newest.saturating_mul(1000)).max(0) as u64,
            Relaxed,
        );
    }
}

enum Rejected {
    Batch(Arc<Batch>),
    File(SpoolFile),
}

/// Which rows a write added.
enum Written {
    /// Every row of the batch (a direct COPY).
    All,
    /// Only these devices' rows (one entry per row added); the rest were already there.
    Some(Vec<DeviceId>),
}

/// One connection to a server, with backoff and the preflight that gates it.
struct Link {
    /// The live writer says when its server goes away and comes back; the
    /// replayer's link says nothing (one line per cause).
    speaks: bool,
    client: Option<Client>,
    retry_at: Option<Instant>,
    backoff: Duration,
    last_set_aside_log: Option<Instant>,
}

impl Link {
    fn new(speaks: bool) -> Link {
        Link {
            speaks,
            client: None,
            retry_at: None,
            backoff: Duration::from_secs(1),
            last_set_aside_log: None,
        }
    }

    /// A usable connection whose server passed preflight, opening one when
    /// the backoff allows. A set-aside server gets a new connection and its
    /// checks each time its backoff ends.
    async fn connected(&mut self, sink: &Sink) -> Option<&mut Client> {
        let aside = sink.set_aside();
        if aside {
            self.log_set_aside(sink);
            self.client = None;
        }
        if !aside && self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return self.client.as_mut();
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return None;
        }
        let target = Target {
            server: &sink.server,
            database: &sink.database,
        };
        let client = match db::connect(&sink.config, target).await {
            Ok(c) => c,
            Err(e) => {
                self.fail(sink, &e.to_string());
                return None;
            }
        };
        // Every new connection passes preflight again: while the server was
        // away or set aside, a table, a column, a privilege or the natural
        // key (which picks plain COPY or insert-only-absent) may have changed.
        match preflight::check_server(
            &client,
            &sink.server.name,
            &sink.database,
            &sink.stats.site,
            &sink.map,
        )
        .await
        {
            Ok(catalog) => *lock(&sink.catalog) = Some(catalog),
            Err(PreflightError::Unreachable(e)) => {
                self.fail(sink, &e);
                return None;
            }
            Err(e) => {
                sink.set_server_aside(e.exit_code(), e.to_string());
                self.recheck_later();
                return None;
            }
        }
        if let Some(why) = read_only(&client, sink).await {
            sink.set_server_aside(crate::exit::code::UNAVAILABLE, why);
            self.recheck_later();
            return None;
        }
        sink.resume();
        if self.retry_at.is_some() && !aside && self.speaks {
            tracing::info!(site = %sink.stats.site, server = %sink.name(), "server is back; writing again");
        }
        self.client = Some(client);
        self.retry_at = None;
        self.backoff = Duration::from_secs(1);
        self.client.as_mut()
    }

    fn log_set_aside(&mut self, sink: &Sink) {
        if !self.speaks
            || self
                .last_set_aside_log
                .is_some_and(|at| at.elapsed() < SET_ASIDE_LOG_EVERY)
        {
            return;
        }
        self.last_set_aside_log = Some(Instant::now());
        if let Some((_, why)) = lock(&sink.stats.servers[sink.index].set_aside).as_ref() {
            tracing::error!(site = %sink.stats.site, server = %sink.name(), error = %why, "server still set aside; its rows are spooled");
        }
    }

    fn fail(&mut self, sink: &Sink, error: &str) {
        if self.retry_at.is_none() && self.speaks && !sink.set_aside() {
            tracing::warn!(
                site = %sink.stats.site, server = %sink.name(), error,
                "cannot write; spooling rows until the server is back"
            );
        }
        self.client = None;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    /// The server was set aside: drop the connection, check again after backoff.
    fn recheck_later(&mut self) {
        self.client = None;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_RECHECK);
    }

    /// What a failed write leaves the link: retry later, or recheck later.
    fn after(&mut self, sink: &Sink, e: &WriteError, verdict: &Verdict) {
        match verdict {
            Verdict::Retry => self.fail(sink, &e.message),
            Verdict::SetAside => {
                self.backoff = Duration::from_secs(1);
                self.recheck_later();
            }
            Verdict::Reject => {}
        }
    }
}

/// Why the server does not take writes now (a standby, a read-only
/// database or session default), if it does not.
async fn read_only(client: &Client, sink: &Sink) -> Option<String> {
    let row = client
        .query_one(
            "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'",
            &[],
        )
        .await
        .ok()?;
    let (standby, read_only): (bool, bool) = (row.get(0), row.get(1));
    (standby || read_only).then(|| {
        format!(
            "server `{}`, database `{}`: {} (SQLSTATE 25006 on writes): a failover, or a disk near full",
            sink.server.name,
            sink.database,
            if standby { "a standby in recovery" } else { "read-only" }
        )
    })
}

/// The live writer: each batch goes in directly, or to the spool.
pub async fn run_live(sink: Arc<Sink>, mut rx: mpsc::Receiver<Arc<Batch>>) {
    let mut link = Link::new(true);
    while let Some(batch) = rx.recv().await {
        sink.live_queued.fetch_sub(1, Relaxed);
        let Some(client) = link.connected(&sink).await else {
            sink.spool_batch(batch).await;
            continue;
        };
        match write(client, &sink, &batch).await {
            Ok(written) => {
                sink.wrote();
                sink.count_written(&batch, written)
            }
            Err(e) => {
                let verdict = sink.verdict(&e);
                link.after(&sink, &e, &verdict);
                match verdict {
                    Verdict::Retry | Verdict::SetAside => sink.spool_batch(batch).await,
                    Verdict::Reject => {
                        let (table, rows) = (batch.spec.name, batch.rows.len() as u64);
                        sink.reject(Rejected::Batch(batch), table, rows, &e.message)
                            .await;
                    }
                }
            }
        }
    }
}

/// The replayer: drains the spool whenever the server takes writes, until
/// `stop`; then for at most `drain` more (ingest passes
/// [`DRAIN_AFTER_STOP`]; `essops spool replay` drains until empty or failed).
pub async fn run_replay(sink: Arc<Sink>, mut stop: watch::Receiver<bool>, drain: Option<Duration>) {
    let mut link = Link::new(drain.is_none());
    let mut stopped_at: Option<Instant> = None;
    loop {
        if stopped_at.is_none() && *stop.borrow() {
            stopped_at = Some(Instant::now());
            link.retry_at = None; // one more attempt now, whatever the backoff said
        }
        let empty = lock(&sink.spool).is_empty();
        if let Some(at) = stopped_at
            && (empty || drain.is_some_and(|d| at.elapsed() > d))
        {
            break;
        }
        // Live rows first: the replayer waits while live batches queue
        // (until the stop, when only the spool is left).
        let live_waiting = stopped_at.is_none() && sink.live_queued.load(Relaxed) > 0;
        if !empty
            && !live_waiting
            && let Some(client) = link.connected(&sink).await
        {
            match replay_some(client, &sink).await {
                Ok(()) => continue,
                Err((e, verdict)) => link.after(&sink, &e, &verdict),
            }
        }
        if stopped_at.is_some() {
            if empty || link.client.is_none() {
                break;
            }
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => {}
        }
    }
    let (rows, empty) = {
        let s = lock(&sink.spool);
        (s.rows(), s.is_empty())
    };
    if !empty {
        tracing::warn!(
            site = %sink.stats.site, server = %sink.name(), spool_rows = rows,
            "rows stay in the spool; the next essops ingest (or essops spool replay) replays them"
        );
    }
}

/// Replays the oldest spool files, merged per table into one COPY and one
/// transaction. `Err`: the files stay (retry, or the server was set aside).
async fn replay_some(client: &mut Client, sink: &Arc<Sink>) -> Result<(), (WriteError, Verdict)> {
    let files = lock(&sink.spool).front(sink.replay_rows.load(Relaxed));
    let (readable, unreadable) = read_files(files).await;
    for (file, reason) in unreadable {
        if !file.path.exists() {
            // `essops spool discard` deleted it while it was queued here.
            lock(&sink.spool).forget(&file.path);
            tracing::warn!(site = %sink.stats.site, server = %sink.name(), file = %file.path.display(), "spool file discarded by an operator; its rows are not replayed");
            continue;
        }
        let e = lock(&sink.spool).quarantine_unreadable(&file, reason);
        tracing::error!(site = %sink.stats.site, server = %sink.name(), error = %e, "spool file skipped");
    }
    for group in group_by_table(readable) {
        let merged = merge(&group);
        let started = Instant::now();
        // A plain COPY first: after an outage the rows are new; a batch
        // committed before a crash fails on the key and goes in row by row.
        let written = write(client, sink, &merged).await;
        let took = started.elapsed();
        sink.stats.servers[sink.index]
            .replay_us
            .fetch_add(took.as_micros() as u64, Relaxed);
        sink.fit_replay(&written, took, merged.rows.len() as u64);
        match written {
            Ok(written) => {
                sink.wrote();
                sink.finish_replay(&group, &merged, written).await
            }
            Err(e) if e.failure == Failure::Transient => {
                let verdict = sink.verdict(&e);
                return Err((e, verdict));
            }
            // Which file is bad? Try them one by one.
            Err(_) if group.len() > 1 => {
                for (file, batch) in group {
                    let one = [(file, batch)];
                    match write(client, sink, &one[0].1).await {
                        Ok(written) => {
                            sink.wrote();
                            sink.finish_replay(&one, &one[0].1, written).await
                        }
                        Err(e) => match sink.verdict(&e) {
                            Verdict::Reject => {
                                let [(file, batch)] = one;
                                sink.reject_file(file, &batch, &e.message).await;
                            }
                            verdict => return Err((e, verdict)),
                        },
                    }
                }
            }
            Err(e) => match sink.verdict(&e) {
                Verdict::Reject => {
                    let (file, batch) = group.into_iter().next().expect("a group has a file");
                    sink.reject_file(file, &batch, &e.message).await;
                }
                verdict => return Err((e, verdict)),
            },
        }
    }
    Ok(())
}

impl Sink {
    /// Sizes the next replay transaction by how this one went: double after
    /// one that took under a quarter of its timeout, halve after a timeout.
    fn fit_replay(&self, written: &Result<Written, WriteError>, took: Duration, rows: u64) {
        let (min, _, max) = REPLAY_ROWS;
        let now = self.replay_rows.load(Relaxed);
        let next = match written {
            Err(e) if e.timed_out => (rows.min(now) / 2).max(min),
            Ok(_) if rows >= now && took * 4 < WRITE_TIMEOUT => (now * 2).min(max),
            _ => now,
        };
        if next != now {
            tracing::debug!(site = %self.stats.site, server = %self.name(), rows = next, "replay transaction size");
            self.replay_rows.store(next, Relaxed);
        }
    }

    async fn reject_file(self: &Arc<Self>, file: SpoolFile, batch: &Batch, error: &str) {
        let rows = batch.rows.len() as u64;
        self.reject(Rejected::File(file), batch.spec.name, rows, error)
            .await;
    }

    /// Counts a replayed group and removes its files, off the async threads
    /// (thousands of unlinks after an outage).
    async fn finish_replay(
        self: &Arc<Self>,
        group: &[(SpoolFile, Batch)],
        merged: &Batch,
        written: Written,
    ) {
        let files: Vec<SpoolFile> = group.iter().map(|(f, _)| f.clone()).collect();
        let sink = self.clone();
        let removed = tokio::task::spawn_blocking(move || {
            let mut spool = lock(&sink.spool);
            let r = spool.remove(&files);
            sink.publish_spool(&spool);
            r
        })
        .await;
        if let Ok(Err(e)) = removed {
            tracing::error!(site = %self.stats.site, server = %self.name(), error = %e, "cannot remove a replayed spool file");
        }
        self.stats.servers[self.index]
            .replayed
            .fetch_add(merged.rows.len() as u64, Relaxed);
        self.count_written(merged, written);
    }
}

async fn read_files(files: Vec<SpoolFile>) -> (Vec<(SpoolFile, Batch)>, Vec<(SpoolFile, String)>) {
    tokio::task::spawn_blocking(move || {
        let (mut ok, mut bad) = (Vec::new(), Vec::new());
        for f in files {
            match spool::read_batch(&f.path) {
                Ok(b) => ok.push((f, b)),
                Err(e) => bad.push((f, e.to_string())),
            }
        }
        (ok, bad)
    })
    .await
    .unwrap_or_default()
}

/// Consecutive files of the same table and columns, in spool order.
fn group_by_table(files: Vec<(SpoolFile, Batch)>) -> Vec<Vec<(SpoolFile, Batch)>> {
    let mut groups: Vec<Vec<(SpoolFile, Batch)>> = Vec::new();
    for (f, b) in files {
        match groups.iter_mut().find(|g| {
            let first = &g[0].1;
            first.spec == b.spec && first.columns == b.columns
        }) {
            Some(g) => g.push((f, b)),
            None => groups.push(vec![(f, b)]),
        }
    }
    groups
}

fn merge(group: &[(SpoolFile, Batch)]) -> Batch {
    let first = &group[0].1;
    Batch {
        spec: first.spec,
        columns: first.columns.clone(),
        rows: group
            .iter()
            .flat_map(|(_, b)| b.rows.iter().cloned())
            .collect(),
    }
}

/// Writes one batch, typed by the server's catalog: a plain COPY where the
/// table has a unique natural key (it fails whole if a row is already
/// there), else, or then, through a staging table that inserts only the
/// rows the table lacks.
async fn write(client: &mut Client, sink: &Sink, batch: &Batch) -> Result<Written, WriteError> {
    let place = format!(
        "server `{}`, database `{}`, table `{}`",
        sink.server.name, sink.database, batch.spec.name
    );
    let (types, unique_key) = {
        let catalog = lock(&sink.catalog);
        let table = catalog
            .as_ref()
            .and_then(|c| c.get(batch.spec.name))
            .ok_or_else(|| WriteError::transient(format!("{place}: catalog not read yet")))?;
        let types = preflight::copy_types(&sink.map, batch, &table.columns)
            .map_err(|m| WriteError::permanent(format!("{place}: {m}")))?;
        (types, table.unique_key)
    };
    let data = batch
        .encode(&types)
        .map_err(|m| WriteError::permanent(format!("{place}: {m}")))?;
    let columns = batch.all_columns();
    let timeout = timeout_for(data.len());
    let attempt = async {
        // Without a unique natural key a plain COPY could store a row twice.
        if unique_key {
            match copy_direct(client, batch, &columns, data.clone()).await {
                Err(e) if e.code().is_some_and(|c| c.code() == UNIQUE_VIOLATION) => {}
                other => return other.map(|_| Written::All),
            }
        }
        copy_absent(client, batch, &columns, data, unique_key)
            .await
            .map(Written::Some)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(w)) => Ok(w),
        Ok(Err(e)) => Err(WriteError {
            failure: db::classify(e.code().map(|c| c.code())),
            code: e.code().map(|c| c.code().to_string()),
            timed_out: false,
            message: format!(
                "{place}: {}{}",
                db::describe(&e),
                e.code()
                    .map_or(String::new(), |c| format!(" (SQLSTATE {})", c.code()))
            ),
        }),
        Err(_) => Err(WriteError {
            timed_out: true,
            ..WriteError::transient(format!("{place}: no answer in {} s", timeout.as_secs()))
        }),
    }
}

async fn copy_direct(
    client: &Client,
    batch: &Batch,
    columns: &[String],
    data: bytes::Bytes,
) -> Result<(), tokio_postgres::Error> {
    let sql = format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        quote_ident(batch.spec.name),
        quote_list(columns)
    );
    let sink = client.copy_in(&sql).await?;
    pin_mut!(sink);
    sink.send(data).await?;
    sink.finish().await.map(|_| ())
}

/// Inserts the rows the table lacks; returns the device of each row added.
async fn copy_absent(
    client: &mut Client,
    batch: &Batch,
    columns: &[String],
    data: bytes::Bytes,
    unique_key: bool,
) -> Result<Vec<DeviceId>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    if !unique_key {
        crate::lock::absent_insert(&tx, batch.spec.name).await?;
    }
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE essops_ingest_stage ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA",
        quote_list(columns),
        quote_ident(batch.spec.name)
    ))
    .await?;
    let sink = tx
        .copy_in(&format!(
            "COPY essops_ingest_stage ({}) FROM STDIN (FORMAT binary)",
            quote_list(columns)
        ))
        .await?;
    pin_mut!(sink);
    sink.send(data).await?;
    sink.finish().await?;
    let returning = device_ids_returning(&batch.spec);
    let added = tx
        .query(
            &insert_absent_sql(
                &batch.spec,
                columns,
                "essops_ingest_stage",
                &returning,
                unique_key,
            ),
            &[],
        )
        .await?;
    tx.commit().await?;
    let ids = batch.spec.device_columns.len();
    Ok(added
        .iter()
        .map(|r| (0..ids).map(|i| r.get::<_, i32>(i) as i16).collect())
        .collect())
}
