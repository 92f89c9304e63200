//! Counters the pollers and writers share, the per-minute health lines, and
//! the poll-to-commit delay histogram.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::logging::REPORT_TARGET;

#[derive(Debug)]
pub struct DeviceStats {
    pub table: &'static str,
    pub label: String,
    pub polls_ok: AtomicU64,
    pub polls_failed: AtomicU64,
    /// Rows committed, per server (plan order).
    pub written: Vec<AtomicU64>,
    pub last_error: Mutex<String>,
}

#[derive(Debug)]
pub struct ServerStats {
    pub name: String,
    pub written: AtomicU64,
    pub replayed: AtomicU64,
    pub spooled: AtomicU64,
    /// Rows waiting in the spool now.
    pub spool_depth: AtomicU64,
    /// Rows that could be neither written nor spooled (disk full).
    pub lost: AtomicU64,
    /// Newest committed sample's age at commit, in ms.
    pub lag_ms: AtomicU64,
    /// Poll-to-commit delay of directly written rows, 1 ms buckets.
    pub delays: Mutex<Vec<u64>>,
}

#[derive(Debug)]
pub struct Stats {
    pub site: String,
    pub devices: Vec<DeviceStats>,
    pub servers: Vec<ServerStats>,
}

const DELAY_BUCKETS: usize = 60_000;

impl Stats {
    pub fn new(site: &str, devices: Vec<(&'static str, String)>, servers: &[String]) -> Stats {
        let counters = || servers.iter().map(|_| AtomicU64::new(0)).collect();
        Stats {
            site: site.to_string(),
            devices: devices
                .into_iter()
                .map(|(table, label)| DeviceStats {
                    table,
                    label,
                    polls_ok: AtomicU64::new(0),
                    polls_failed: AtomicU64::new(0),
                    written: counters(),
                    last_error: Mutex::new(String::new()),
                })
                .collect(),
            servers: servers
                .iter()
                .map(|name| ServerStats {
                    name: name.clone(),
                    written: AtomicU64::new(0),
                    replayed: AtomicU64::new(0),
                    spooled: AtomicU64::new(0),
                    spool_depth: AtomicU64::new(0),
                    lost: AtomicU64::new(0),
                    lag_ms: AtomicU64::new(0),
                    delays: Mutex::new(vec![0; DELAY_BUCKETS]),
                })
                .collect(),
        }
    }

    pub fn poll_failed(&self, device: usize, why: &str) {
        let d = &self.devices[device];
        d.polls_failed.fetch_add(1, Relaxed);
        let mut last = d.last_error.lock().unwrap_or_else(|p| p.into_inner());
        if *last != why {
            *last = why.to_string();
        }
    }

    pub fn record_delay(&self, server: usize, delay: Duration) {
        let ms = (delay.as_millis() as usize).min(DELAY_BUCKETS - 1);
        self.servers[server]
            .delays
            .lock()
            .unwrap_or_else(|p| p.into_inner())[ms] += 1;
    }

    /// The `q` quantile of a server's poll-to-commit delay, in ms.
    pub fn delay_quantile_ms(&self, server: usize, q: f64) -> Option<u64> {
        let h = self.servers[server]
            .delays
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let total: u64 = h.iter().sum();
        if total == 0 {
            return None;
        }
        let want = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        h.iter().enumerate().find_map(|(ms, n)| {
            seen += n;
            (seen >= want).then_some(ms as u64)
        })
    }

    /// One JSON log line per device: counts since the last line, spool depth and lag per server.
    pub fn log_health(&self, last: &mut Vec<(u64, u64)>) {
        last.resize(self.devices.len(), (0, 0));
        for (d, prev) in self.devices.iter().zip(last.iter_mut()) {
            let (ok, failed) = (d.polls_ok.load(Relaxed), d.polls_failed.load(Relaxed));
            let written: Vec<String> = self
                .servers
                .iter()
                .zip(&d.written)
                .map(|(s, w)| format!("{}={}", s.name, w.load(Relaxed)))
                .collect();
            let spool: Vec<String> = self
                .servers
                .iter()
                .map(|s| format!("{}={}", s.name, s.spool_depth.load(Relaxed)))
                .collect();
            let lag: Vec<String> = self
                .servers
                .iter()
                .map(|s| format!("{}={}", s.name, s.lag_ms.load(Relaxed)))
                .collect();
            let level = if failed > prev.1 { "warning" } else { "info" };
            tracing::info!(
                target: REPORT_TARGET,
                level,
                site = %self.site,
                table = d.table,
                device = %d.label,
                polls_ok = ok - prev.0,
                polls_failed = failed - prev.1,
                rows_written = %written.join(" "),
                spool_rows = %spool.join(" "),
                lag_ms = %lag.join(" "),
                last_error = %d.last_error.lock().unwrap_or_else(|p| p.into_inner()),
                "device health"
            );
            *prev = (ok, failed);
        }
    }
}
