//! One writer per server: batches go in by binary COPY, or to the server's
//! spool when it cannot take them; the spool is replayed, oldest first,
//! as soon as the server is back. Servers never wait on each other.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, pin_mut};
use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::batch::Batch;
use super::spool::Spool;
use super::stats::Stats;
use crate::config::{Config, Server};
use crate::db::{self, CopyType, Target, quote_ident, quote_list};
use crate::modbus::map::RegisterMap;
use crate::schema::{DeviceId, insert_absent_sql};

/// A statement that takes longer than this is treated as a failed server.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const UNIQUE_VIOLATION: &str = "23505";

pub struct Writer {
    pub index: usize,
    pub server: Server,
    pub database: String,
    pub config: Arc<Config>,
    pub map: Arc<RegisterMap>,
    pub spool: Spool,
    pub stats: Arc<Stats>,
    /// Device index by (table, ids), for counting replayed rows.
    pub devices: Arc<HashMap<(&'static str, DeviceId), usize>>,
    client: Option<Client>,
    /// Column types by (table, columns), for the current connection.
    types: HashMap<(&'static str, Vec<String>), Vec<CopyType>>,
    retry_at: Option<Instant>,
    backoff: Duration,
}

impl Writer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        index: usize,
        server: Server,
        database: String,
        config: Arc<Config>,
        map: Arc<RegisterMap>,
        spool: Spool,
        stats: Arc<Stats>,
        devices: Arc<HashMap<(&'static str, DeviceId), usize>>,
    ) -> Writer {
        stats.servers[index]
            .spool_depth
            .store(spool.rows(), Relaxed);
        Writer {
            index,
            server,
            database,
            config,
            map,
            spool,
            stats,
            devices,
            client: None,
            types: HashMap::new(),
            retry_at: None,
            backoff: Duration::from_secs(1),
        }
    }

    /// Writes every batch that arrives until the channel closes, then makes
    /// one last attempt to empty the spool.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Arc<Batch>>) {
        if !self.spool.is_empty() && self.connected().await {
            self.replay().await;
        }
        while let Some(batch) = rx.recv().await {
            self.handle(&batch).await;
        }
        if !self.spool.is_empty() {
            self.retry_at = None;
            if self.connected().await {
                self.replay().await;
            }
        }
        if !self.spool.is_empty() {
            tracing::warn!(
                site = %self.stats.site, server = %self.server.name,
                spool_rows = self.spool.rows(),
                "rows stay in the spool; the next essops ingest replays them"
            );
        }
    }

    async fn handle(&mut self, batch: &Batch) {
        if self.connected().await {
            if !self.spool.is_empty() {
                self.replay().await;
            }
            if self.spool.is_empty() {
                match self.write(batch, false).await {
                    Ok(_) => {
                        self.count_written(batch, true);
                        return;
                    }
                    Err(e) => self.fail(&e),
                }
            }
        }
        self.spool_batch(batch);
    }

    /// Whether there is a usable connection, opening one when the backoff allows.
    async fn connected(&mut self) -> bool {
        if self.client.as_ref().is_some_and(|c| !c.is_closed()) {
            return true;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return false;
        }
        let target = Target {
            server: &self.server,
            database: &self.database,
        };
        match db::connect(&self.config, target).await {
            Ok(c) => {
                if self.retry_at.is_some() {
                    tracing::info!(site = %self.stats.site, server = %self.server.name, "server is back; writing again");
                }
                self.client = Some(c);
                self.types.clear();
                self.retry_at = None;
                self.backoff = Duration::from_secs(1);
                true
            }
            Err(e) => {
                self.fail(&e.to_string());
                false
            }
        }
    }

    fn fail(&mut self, error: &str) {
        if self.retry_at.is_none() {
            tracing::warn!(
                site = %self.stats.site, server = %self.server.name, error,
                "cannot write; spooling rows until the server is back"
            );
        }
        self.client = None;
        self.retry_at = Some(Instant::now() + self.backoff);
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
    }

    fn spool_batch(&mut self, batch: &Batch) {
        let s = &self.stats.servers[self.index];
        match self.spool.push(batch) {
            Ok(()) => {
                s.spooled.fetch_add(batch.rows.len() as u64, Relaxed);
            }
            Err(e) => {
                s.lost.fetch_add(batch.rows.len() as u64, Relaxed);
                tracing::error!(site = %self.stats.site, server = %self.server.name, error = %e, rows = batch.rows.len(), "rows lost: cannot spool");
            }
        }
        s.spool_depth.store(self.spool.rows(), Relaxed);
    }

    async fn replay(&mut self) {
        while let Some(next) = self.spool.front() {
            let batch = match next {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(site = %self.stats.site, server = %self.server.name, error = %e, "spool file skipped");
                    continue;
                }
            };
            if let Err(e) = self.write(&batch, true).await {
                self.fail(&e);
                return;
            }
            if let Err(e) = self.spool.pop_front() {
                tracing::error!(site = %self.stats.site, server = %self.server.name, error = %e, "cannot remove a replayed spool file");
                return;
            }
            self.stats.servers[self.index]
                .replayed
                .fetch_add(batch.rows.len() as u64, Relaxed);
            self.stats.servers[self.index]
                .spool_depth
                .store(self.spool.rows(), Relaxed);
            self.count_written(&batch, false);
        }
    }

    fn count_written(&self, batch: &Batch, direct: bool) {
        let s = &self.stats.servers[self.index];
        s.written.fetch_add(batch.rows.len() as u64, Relaxed);
        let now = Instant::now();
        let mut newest = i64::MIN;
        for row in &batch.rows {
            newest = newest.max(row.t);
            let device = match row.polled {
                Some(_) => Some(row.device_index),
                None => self
                    .devices
                    .get(&(batch.spec.name, row.device.clone()))
                    .copied(),
            };
            if let Some(d) = device {
                self.stats.devices[d].written[self.index].fetch_add(1, Relaxed);
            }
            if let (true, Some(polled)) = (direct, row.polled) {
                self.stats.record_delay(self.index, now - polled);
            }
        }
        let now_ms = chrono::Utc::now().timestamp_millis();
        s.lag_ms
            .store((now_ms - newest * 1000).max(0) as u64, Relaxed);
    }

    /// COPYs a batch in. `replay` (or a direct COPY that hit rows already
    /// stored) goes through a staging table and inserts only absent rows.
    async fn write(&mut self, batch: &Batch, replay: bool) -> Result<(), String> {
        let types = self.types(batch).await?;
        let data = batch.encode(&types);
        let columns = batch.all_columns();
        let client = self.client.as_mut().ok_or("not connected")?;
        let place = format!(
            "server `{}`, database `{}`, table `{}`",
            self.server.name, self.database, batch.spec.name
        );
        let attempt = async {
            if !replay {
                match copy_direct(client, batch, &columns, data.clone()).await {
                    Err(e) if e.code().is_some_and(|c| c.code() == UNIQUE_VIOLATION) => {}
                    other => return other,
                }
            }
            copy_absent(client, batch, &columns, data).await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, attempt).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("{place}: {}", db::describe(&e))),
            Err(_) => Err(format!(
                "{place}: no answer in {} s",
                WRITE_TIMEOUT.as_secs()
            )),
        }
    }

    /// The catalog types of the batch's columns on this server, checked
    /// against the register map once per connection.
    async fn types(&mut self, batch: &Batch) -> Result<Vec<CopyType>, String> {
        let key = (batch.spec.name, batch.columns.to_vec());
        if let Some(t) = self.types.get(&key) {
            return Ok(t.clone());
        }
        let client = self.client.as_ref().ok_or("not connected")?;
        let catalog =
            crate::schema::require_table(client, &self.server.name, &self.database, &batch.spec)
                .await?;
        let types = check_columns(&self.map, batch, &catalog).map_err(|m| {
            format!(
                "server `{}`, database `{}`: {m}",
                self.server.name, self.database
            )
        })?;
        self.types.insert(key, types.clone());
        Ok(types)
    }
}

/// Column types for a batch, refusing columns the table lacks, types essops
/// cannot write, and map fields whose values the column cannot hold.
pub fn check_columns(
    map: &RegisterMap,
    batch: &Batch,
    catalog: &[crate::schema::Column],
) -> Result<Vec<CopyType>, String> {
    let table = batch.spec.name;
    let fields = map
        .table(table)
        .map(|t| t.fields.as_slice())
        .unwrap_or_default();
    batch
        .all_columns()
        .iter()
        .map(|name| {
            let col = catalog.iter().find(|c| &c.name == name).ok_or_else(|| {
                format!(
                    "table `{table}` has no column `{name}` (register map or migration out of date)"
                )
            })?;
            let ty = CopyType::from_catalog(&col.data_type).ok_or_else(|| {
                format!(
                    "column `{table}.{name}` is {}, which ingest cannot fill from registers",
                    col.data_type
                )
            })?;
            if let (Some((lo, hi)), Some(f)) =
                (ty.int_range(), fields.iter().find(|f| &f.column == name))
            {
                let fits = !f.dtype.is_float()
                    && !f.is_scaled()
                    && f.dtype.int_range().is_some_and(|(a, b)| a >= lo && b <= hi);
                if !fits {
                    return Err(format!(
                        "register map field `{table}.{name}` ({}{}) does not fit column type {}",
                        f.dtype,
                        if f.is_scaled() { ", scaled" } else { "" },
                        col.data_type
                    ));
                }
            }
            Ok(ty)
        })
        .collect()
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

async fn copy_absent(
    client: &mut Client,
    batch: &Batch,
    columns: &[String],
    data: bytes::Bytes,
) -> Result<(), tokio_postgres::Error> {
    let tx = client.transaction().await?;
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
    tx.execute(
        &insert_absent_sql(&batch.spec, columns, "essops_ingest_stage", "1"),
        &[],
    )
    .await?;
    tx.commit().await
}
