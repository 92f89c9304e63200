//! Once a minute, a running ingest appends what it did to the history of each
//! server it writes (`essops.ingest_minutes`: one row per server, the
//! heartbeat `essops status` reads), with what changed meanwhile
//! (`essops.ingest_events`). Every server gets all the rows, so a server that
//! is down is still described by the others. At the end it writes the last,
//! partial minute. A server that is down misses its rows; the data itself is
//! spooled as always.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use tokio::sync::watch;
use tokio_postgres::Client;

use super::Plan;
use super::stats::{Misses, Stats};
use crate::config::Config;
use crate::db::Target;
use crate::history::{self, IngestEvent, IngestMinute};

/// A history write may not hold up stopping for long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The counters at one moment.
#[derive(Debug, Clone, Default)]
struct Totals {
    polls_ok: u64,
    misses: Misses,
    /// Per server: written, spooled, replayed, rejected.
    servers: Vec<[u64; 4]>,
    breaker_open: Vec<bool>,
}

impl Totals {
    fn zero(stats: &Stats) -> Totals {
        Totals {
            servers: vec![[0; 4]; stats.servers.len()],
            breaker_open: vec![false; stats.devices.len()],
            ..Totals::default()
        }
    }

    fn take(stats: &Stats) -> Totals {
        Totals {
            polls_ok: stats.polls_ok(),
            misses: stats.misses(),
            servers: stats
                .servers
                .iter()
                .map(|s| {
                    [&s.written, &s.spooled, &s.replayed, &s.rejected].map(|c| c.load(Relaxed))
                })
                .collect(),
            breaker_open: stats
                .devices
                .iter()
                .map(|d| d.breaker_open.load(Relaxed))
                .collect(),
        }
    }
}

/// Who is writing: the same on every row of this run.
struct Source {
    site: String,
    devices: String,
    host: String,
}

pub struct Heartbeat {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    pub fn start(plan: &Plan, config: &Arc<Config>, stats: &Arc<Stats>) -> Heartbeat {
        let (stop, mut stopped) = watch::channel(false);
        let source = Source {
            site: plan.site.name.clone(),
            devices: plan
                .group
                .as_ref()
                .map_or("all".to_string(), |g| g.label.clone()),
            host: crate::db::hostname(),
        };
        let servers = plan.servers.clone();
        let database = plan.site.database.clone();
        let (config, stats) = (Arc::clone(config), Arc::clone(stats));
        let task = tokio::spawn(async move {
            let mut writer = Writer {
                config,
                servers,
                database,
                clients: Vec::new(),
                warned: Vec::new(),
            };
            let mut last = Totals::zero(&stats);
            let mut minute = Utc::now()
                .duration_trunc(chrono::Duration::minutes(1))
                .unwrap_or_else(|_| Utc::now());
            loop {
                let next = minute + chrono::Duration::minutes(1);
                let wait = (next - Utc::now()).to_std().unwrap_or_default();
                let stopping = tokio::select! {
                    _ = tokio::time::sleep(wait) => false,
                    _ = stopped.wait_for(|s| *s) => true,
                };
                let now = Totals::take(&stats);
                let span = (&last, &now);
                let minutes = minute_rows(&source, &writer.servers, minute, span, &stats);
                let events = events(&source, &writer.servers, span, &stats);
                writer.write(&minutes, &events).await;
                last = now;
                minute = next;
                if stopping {
                    break;
                }
            }
        });
        Heartbeat { stop, task }
    }

    /// Writes the last, partial minute and ends.
    pub async fn finish(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(WRITE_TIMEOUT * 2, self.task).await;
    }
}

/// One row per server for the minute between `last` and `now`.
fn minute_rows(
    source: &Source,
    servers: &[crate::config::Server],
    minute: DateTime<Utc>,
    (last, now): (&Totals, &Totals),
    stats: &Stats,
) -> Vec<IngestMinute> {
    let misses = now.misses.since(&last.misses);
    let breakers_open = now.breaker_open.iter().filter(|o| **o).count() as i32;
    servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let delta = |k: usize| {
                let before = last.servers.get(i).map_or(0, |c| c[k]);
                now.servers[i][k].saturating_sub(before) as i64
            };
            IngestMinute {
                site: source.site.clone(),
                devices: source.devices.clone(),
                host: source.host.clone(),
                server: s.name.clone(),
                minute,
                polls_ok: now.polls_ok.saturating_sub(last.polls_ok) as i64,
                polls_failed: misses.total() as i64,
                failed_by_reason: serde_json::to_value(misses).unwrap_or_default(),
                rows_written: delta(0),
                rows_spooled: delta(1),
                rows_replayed: delta(2),
                spool_rows: stats.servers[i].spool_depth.load(Relaxed) as i64,
                spool_bytes: stats.servers[i].spool_bytes.load(Relaxed) as i64,
                breakers_open,
            }
        })
        .collect()
}

/// What changed between `last` and `now`: breakers, quarantines, set-asides.
fn events(
    source: &Source,
    servers: &[crate::config::Server],
    (last, now): (&Totals, &Totals),
    stats: &Stats,
) -> Vec<IngestEvent> {
    let at = Utc::now();
    let event = |server: Option<&str>, event, device: Option<&str>, detail: String| IngestEvent {
        site: source.site.clone(),
        devices: source.devices.clone(),
        host: source.host.clone(),
        server: server.map(String::from),
        at,
        event,
        device: device.map(String::from),
        detail,
    };
    let mut out = Vec::new();
    for (i, d) in stats.devices.iter().enumerate() {
        let was = last.breaker_open.get(i).copied().unwrap_or(false);
        match (was, now.breaker_open[i]) {
            (false, true) => {
                let why = crate::tasks::lock(&d.last_error).clone();
                out.push(event(None, "breaker_opened", Some(&d.label), why));
            }
            (true, false) => {
                out.push(event(
                    None,
                    "breaker_closed",
                    Some(&d.label),
                    "answers again".into(),
                ));
            }
            _ => {}
        }
    }
    for (i, s) in servers.iter().enumerate() {
        let rejected = now.servers[i][3].saturating_sub(last.servers.get(i).map_or(0, |c| c[3]));
        if rejected > 0 {
            let detail = format!(
                "{rejected} row(s) the server refused for good were set aside in the spool's rejected/"
            );
            out.push(event(Some(&s.name), "batch_quarantined", None, detail));
        }
        // Each set-aside episode's start and end once, at their own times
        // (an episode may begin and end between two heartbeats).
        for e in crate::tasks::lock(&stats.servers[i].episodes).iter_mut() {
            if !e.start_recorded {
                e.start_recorded = true;
                let mut ev = event(Some(&s.name), "server_set_aside", None, e.reason.clone());
                ev.at = e.started;
                out.push(ev);
            }
            if let (Some(ended), false) = (e.ended, e.end_recorded) {
                e.end_recorded = true;
                let secs = (ended - e.started).num_seconds();
                let mut ev = event(
                    Some(&s.name),
                    "server_resumed",
                    None,
                    format!("writable again after {secs} s set aside; its spool replays"),
                );
                ev.at = ended;
                out.push(ev);
            }
        }
    }
    out
}

/// One connection per server, opened when needed and dropped on an error.
struct Writer {
    config: Arc<Config>,
    servers: Vec<crate::config::Server>,
    database: String,
    clients: Vec<Option<Client>>,
    /// A failure is a warning once per server, then only logged at debug.
    warned: Vec<bool>,
}

impl Writer {
    /// Every server gets every server's row: the row about a server that is
    /// down (its growing spool) must be readable from the others.
    async fn write(&mut self, minutes: &[IngestMinute], events: &[IngestEvent]) {
        self.clients.resize_with(self.servers.len(), || None);
        self.warned.resize(self.servers.len(), false);
        for i in 0..self.servers.len() {
            let server = &self.servers[i];
            let target = Target {
                server,
                database: &self.database,
            };
            let client = self.clients[i].take();
            let written = tokio::time::timeout(WRITE_TIMEOUT, async {
                let client = match client {
                    Some(c) => c,
                    None => history::connect(&self.config, target).await?,
                };
                for m in minutes {
                    history::record_minute(&client, target, m).await?;
                }
                history::record_events(&client, target, events).await?;
                Ok::<_, history::HistoryError>(client)
            })
            .await;
            let failure = match written {
                Ok(Ok(client)) => {
                    self.clients[i] = Some(client);
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "timed out".to_string(),
            };
            match std::mem::replace(&mut self.warned[i], true) {
                false => {
                    tracing::warn!(server = %server.name, "ingest's minute not recorded in the history (status will not see this ingest on this server): {failure}")
                }
                true => {
                    tracing::debug!(server = %server.name, "ingest minute not recorded: {failure}")
                }
            }
        }
    }
}
