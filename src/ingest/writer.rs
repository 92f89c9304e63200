//! Two tasks per server, sharing one [`Sink`]:
//! - the live writer COPYs each new batch in as it comes; when the server
//!   cannot take it the batch goes to the spool;
//! - the replayer drains the spool, oldest first, many files per COPY and
//!   transaction, while live rows keep flowing on the other connection.
//!
//! Every failure is split once ([`db::classify`]): transient ones keep the
//! rows (spool, retry with backoff); permanent ones (a value out of range, a
//! missing column or privilege, a constraint) set that batch aside in
//! `rejected/` with its error, and the other tables and later batches go on.
//! A server that was down at start passes the same [`preflight`] before its
//! first write; if it fails, the server is set aside: its rows are spooled,
//! an error is logged every minute, and the run ends with the failure's code.

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

/// A statement that takes longer than this is treated as a failed server.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const UNIQUE_VIOLATION: &str = "23505";
/// Rows merged into one replay transaction.
const REPLAY_ROWS: u64 = 100_000;
/// After the stop signal ingest's replayer drains for at most this long; the
/// rest waits in the spool for the next run.
pub const DRAIN_AFTER_STOP: Duration = Duration::from_secs(10);
const SET_ASIDE_LOG_EVERY: Duration = Duration::from_secs(60);

/// A failed write.
#[derive(Debug)]
struct WriteError {
    failure: Failure,
    message: String,
}

impl WriteError {
    fn permanent(message: String) -> WriteError {
        WriteError {
            failure: Failure::Permanent,
            message,
        }
    }
    fn transient(message: String) -> WriteError {
        WriteError {
            failure: Failure::Transient,
            message,
        }
    }
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

    fn publish_spool(&self, spool: &Spool) {
        let s = &self.stats.servers[self.index];
        s.spool_depth.store(spool.rows(), Relaxed);
        s.spool_bytes.store(spool.bytes(), Relaxed);
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

    /// A usable connection whose server passed preflight, opening one when the backoff allows.
    async fn connected(&mut self, sink: &Sink) -> Option<&mut Client> {
        if sink.set_aside() {
            self.log_set_aside(sink);
            return None;
        }
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
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
        // The first connection reads the whole catalog (preflight); a later
        // one only what may have changed while the server was away.
        let first = lock(&sink.catalog).is_none();
        if !first && let Err(e) = refresh_unique_keys(&client, sink).await {
            self.fail(sink, &e.to_string());
            return None;
        }
        if first {
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
                    tracing::error!(site = %sink.stats.site, server = %sink.name(), error = %e,
                        "server set aside: its rows are spooled until the problem is fixed and ingest restarted");
                    *lock(&sink.stats.servers[sink.index].set_aside) =
                        Some((e.exit_code(), e.to_string()));
                    self.last_set_aside_log = Some(Instant::now());
                    return None;
                }
            }
        }
        if self.retry_at.is_some() && self.speaks {
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
        if self.retry_at.is_none() && self.speaks {
            tracing::warn!(
                site = %sink.stats.site, server = %sink.name(), error,
                "cannot write; spooling rows until the server is back"
            );
        }
        self.client = None;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }
}

/// The live writer: each batch goes in directly, or to the spool.
pub async fn run_live(sink: Arc<Sink>, mut rx: mpsc::Receiver<Arc<Batch>>) {
    let mut link = Link::new(true);
    while let Some(batch) = rx.recv().await {
        let Some(client) = link.connected(&sink).await else {
            sink.spool_batch(batch).await;
            continue;
        };
        match write(client, &sink, &batch).await {
            Ok(written) => sink.count_written(&batch, written),
            Err(e) if e.failure == Failure::Transient => {
                link.fail(&sink, &e.message);
                sink.spool_batch(batch).await;
            }
            Err(e) => {
                let (table, rows) = (batch.spec.name, batch.rows.len() as u64);
                sink.reject(Rejected::Batch(batch), table, rows, &e.message)
                    .await;
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
        if !empty && let Some(client) = link.connected(&sink).await {
            match replay_some(client, &sink).await {
                Ok(()) => continue,
                Err(e) => link.fail(&sink, &e.message),
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
/// transaction. `Err` is a transient failure (the files stay).
async fn replay_some(client: &mut Client, sink: &Arc<Sink>) -> Result<(), WriteError> {
    let files = lock(&sink.spool).front(REPLAY_ROWS);
    let (readable, unreadable) = read_files(files).await;
    for (file, reason) in unreadable {
        let e = lock(&sink.spool).quarantine_unreadable(&file, reason);
        tracing::error!(site = %sink.stats.site, server = %sink.name(), error = %e, "spool file skipped");
    }
    for group in group_by_table(readable) {
        let merged = merge(&group);
        let started = Instant::now();
        // A plain COPY first: after an outage the rows are new; a batch
        // committed before a crash fails on the key and goes in row by row.
        let written = write(client, sink, &merged).await;
        sink.stats.servers[sink.index]
            .replay_us
            .fetch_add(started.elapsed().as_micros() as u64, Relaxed);
        match written {
            Ok(written) => sink.finish_replay(&group, &merged, written),
            Err(e) if e.failure == Failure::Transient => return Err(e),
            // Which file is bad? Try them one by one.
            Err(_) if group.len() > 1 => {
                for (file, batch) in group {
                    let one = [(file, batch)];
                    match write(client, sink, &one[0].1).await {
                        Ok(written) => sink.finish_replay(&one, &one[0].1, written),
                        Err(e) if e.failure == Failure::Transient => return Err(e),
                        Err(e) => {
                            let [(file, batch)] = one;
                            sink.reject_file(file, &batch, &e.message).await;
                        }
                    }
                }
            }
            Err(e) => {
                let (file, batch) = group.into_iter().next().expect("a group has a file");
                sink.reject_file(file, &batch, &e.message).await;
            }
        }
    }
    Ok(())
}

impl Sink {
    async fn reject_file(self: &Arc<Self>, file: SpoolFile, batch: &Batch, error: &str) {
        let rows = batch.rows.len() as u64;
        self.reject(Rejected::File(file), batch.spec.name, rows, error)
            .await;
    }

    fn finish_replay(&self, group: &[(SpoolFile, Batch)], merged: &Batch, written: Written) {
        let files: Vec<SpoolFile> = group.iter().map(|(f, _)| f.clone()).collect();
        let mut spool = lock(&self.spool);
        if let Err(e) = spool.remove(&files) {
            tracing::error!(site = %self.stats.site, server = %self.name(), error = %e, "cannot remove a replayed spool file");
        }
        self.publish_spool(&spool);
        drop(spool);
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

/// Reads each table's unique-key flag again on a new connection: while the
/// server was away a DBA may have added or dropped the natural key, and the
/// flag decides between a plain COPY and the insert-only-absent path.
async fn refresh_unique_keys(client: &Client, sink: &Sink) -> Result<(), db::DbError> {
    let tables: Vec<&'static str> = match lock(&sink.catalog).as_ref() {
        Some(c) => c.keys().copied().collect(),
        None => return Ok(()),
    };
    for name in tables {
        let Some(spec) = crate::schema::TableSpec::by_name(name) else {
            continue;
        };
        let unique = crate::catalog::has_unique_key(client, &spec)
            .await
            .map_err(|e| {
                db::DbError::query(&sink.server.name, &sink.database, "reading indexes", &e)
            })?;
        if let Some(t) = lock(&sink.catalog).as_mut().and_then(|c| c.get_mut(name)) {
            t.unique_key = unique;
        }
    }
    Ok(())
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
    match tokio::time::timeout(WRITE_TIMEOUT, attempt).await {
        Ok(Ok(w)) => Ok(w),
        Ok(Err(e)) => Err(WriteError {
            failure: db::classify(e.code().map(|c| c.code())),
            message: format!(
                "{place}: {}{}",
                db::describe(&e),
                e.code()
                    .map_or(String::new(), |c| format!(" (SQLSTATE {})", c.code()))
            ),
        }),
        Err(_) => Err(WriteError::transient(format!(
            "{place}: no answer in {} s",
            WRITE_TIMEOUT.as_secs()
        ))),
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
