//! Prometheus metrics: what a running ingest serves at `/metrics`
//! (`--metrics-listen`), and the small HTTP server that answers scrapes.
//! The `prometheus` crate builds and encodes the exposition (the text format
//! that Prometheus and promtool read); nothing here writes it by hand.
//! `status --prometheus` writes a textfile the same way ([`write_textfile`]).
//!
//! Labels stay bounded: site, table, server and reason. Per-device series
//! come only with `--metrics-per-device`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::ingest::stats::{DeviceStats, Misses, Stats};

/// A counter family with these labels (names are constants: valid by construction).
pub fn counters(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("a valid metric name and labels")
}

pub fn gauges(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid metric name and labels")
}

/// A running ingest's counters, read at each scrape.
#[derive(Debug)]
pub struct IngestCollector {
    pub stats: Arc<Stats>,
    pub per_device: bool,
}

impl Collector for IngestCollector {
    /// Described by what it collects (an unchecked collector).
    fn desc(&self) -> Vec<&Desc> {
        Vec::new()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = self.polls();
        out.extend(self.servers());
        out.extend(self.device_gauges());
        out.extend(self.stats.poll_latency.collect());
        out.extend(self.stats.commit_delay.collect());
        out
    }
}

impl IngestCollector {
    /// Polls per table by result (ok, or the reason a poll was missed).
    fn polls(&self) -> Vec<MetricFamily> {
        let s = &self.stats;
        let polls = counters(
            "essops_polls_total",
            "Polls of the site's devices by table and result: ok, or why the poll was missed.",
            &["site", "table", "result"],
        );
        let per_device = counters(
            "essops_device_polls_total",
            "Polls per device and result (--metrics-per-device).",
            &["site", "table", "device", "result"],
        );
        let mut per_table: BTreeMap<&str, (u64, Misses)> = BTreeMap::new();
        for d in &s.devices {
            let (ok, missed) = (d.polls_ok.load(Relaxed), d.misses());
            let e = per_table.entry(d.table).or_default();
            e.0 += ok;
            e.1 = e.1.plus(&missed);
            if self.per_device {
                for (result, n) in results(ok, &missed) {
                    per_device
                        .with_label_values(&[s.site.as_str(), d.table, &d.label, result])
                        .inc_by(n);
                }
            }
        }
        for (table, (ok, missed)) in &per_table {
            for (result, n) in results(*ok, missed) {
                polls
                    .with_label_values(&[s.site.as_str(), table, result])
                    .inc_by(n);
            }
        }
        let mut out = polls.collect();
        if self.per_device {
            out.extend(per_device.collect());
        }
        out
    }

    /// Rows and spool per server.
    fn servers(&self) -> Vec<MetricFamily> {
        let s = &self.stats;
        let labels = ["site", "server"];
        let mut out = Vec::new();
        type Read = fn(&crate::ingest::stats::ServerStats) -> u64;
        let rows: [(&str, &str, Read); 5] = [
            (
                "essops_rows_written_total",
                "Rows committed to the server by live writes.",
                |v| v.written.load(Relaxed),
            ),
            (
                "essops_rows_spooled_total",
                "Rows put in the server's spool (it was down, slow or set aside).",
                |v| v.spooled.load(Relaxed),
            ),
            (
                "essops_rows_replayed_total",
                "Rows replayed from the spool into the server.",
                |v| v.replayed.load(Relaxed),
            ),
            (
                "essops_rows_rejected_total",
                "Rows the server refused for good, set aside in the spool's rejected/.",
                |v| v.rejected.load(Relaxed),
            ),
            (
                "essops_rows_lost_total",
                "Rows neither written nor spooled (spool cap or disk full).",
                |v| v.lost.load(Relaxed),
            ),
        ];
        for (name, help, read) in rows {
            let c = counters(name, help, &labels);
            for v in &s.servers {
                c.with_label_values(&[s.site.as_str(), &v.name])
                    .inc_by(read(v));
            }
            out.extend(c.collect());
        }
        let depth = gauges(
            "essops_spool_rows",
            "Rows waiting in the server's spool.",
            &labels,
        );
        let bytes = gauges(
            "essops_spool_bytes",
            "Bytes of the server's spool on disk.",
            &labels,
        );
        let oldest = gauges(
            "essops_spool_oldest_age_seconds",
            "Age of the oldest batch in the server's spool (0: empty).",
            &labels,
        );
        for v in &s.servers {
            let at = [s.site.as_str(), v.name.as_str()];
            depth
                .with_label_values(&at)
                .set(v.spool_depth.load(Relaxed) as i64);
            bytes
                .with_label_values(&at)
                .set(v.spool_bytes.load(Relaxed) as i64);
            let age = match v.spool_oldest_t.load(Relaxed) {
                0 => 0,
                t => (chrono::Utc::now().timestamp() - t).max(0),
            };
            oldest.with_label_values(&at).set(age);
        }
        for g in [depth, bytes, oldest] {
            out.extend(g.collect());
        }
        out
    }

    /// Devices per table whose breaker is open, whose values froze, or that
    /// report an alarm or fault word or a value outside `cache.limits`.
    fn device_gauges(&self) -> Vec<MetricFamily> {
        let s = &self.stats;
        type Flag = fn(&DeviceStats) -> bool;
        let flags: [(&str, &str, Flag); 3] = [
            (
                "essops_breakers_open",
                "Devices whose breaker is open (only probed until they answer).",
                |d| d.breaker_open.load(Relaxed),
            ),
            (
                "essops_devices_stale",
                "Devices whose measured values stopped changing (modbus.stale_after).",
                |d| d.stale.load(Relaxed),
            ),
            (
                "essops_devices_alarm",
                "Devices whose last answer had a non-zero alarm or fault word, or a value outside cache.limits.",
                |d| d.alarm.load(Relaxed),
            ),
        ];
        let mut out = Vec::new();
        for (name, help, flag) in flags {
            let g = gauges(name, help, &["site", "table"]);
            for d in &s.devices {
                g.with_label_values(&[s.site.as_str(), d.table])
                    .add(i64::from(flag(d)));
            }
            out.extend(g.collect());
        }
        out
    }
}

/// (result label, count): "ok" and every reason a poll is missed.
fn results(ok: u64, m: &Misses) -> [(&'static str, u64); 8] {
    [
        ("ok", ok),
        ("timeout", m.timeout),
        ("exception", m.exception),
        ("connection", m.connection),
        ("bad_answer", m.bad_answer),
        ("late", m.late),
        ("breaker", m.breaker),
        ("sunspec", m.sunspec),
    ]
}

/// The registry's exposition, as a scrape gets it.
pub fn encode(registry: &Registry) -> String {
    prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_else(|e| format!("# essops: the metrics could not be encoded: {e}\n"))
}

/// Writes the registry's exposition to `path` for node_exporter's textfile
/// collector: to a temporary file beside it, then renamed, so a scrape never
/// sees half a file.
pub fn write_textfile(path: &std::path::Path, registry: &Registry) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("prom.tmp");
    std::fs::write(&tmp, encode(registry))?;
    std::fs::rename(&tmp, path)
}

/// Binds the metrics address; a clear error names it.
pub async fn bind(addr: &str) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| MetricsError::Bind {
            addr: addr.to_string(),
            reason: e.to_string(),
        })
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("--metrics-listen {addr}: cannot listen there: {reason}")]
    Bind { addr: String, reason: String },
}

/// Answers scrapes until the task is aborted: `GET /metrics` gets the
/// exposition, anything else 404. One request per connection.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), answer(socket, &registry)).await;
        });
    }
}

const CONTENT_TYPE: &str = prometheus::TEXT_FORMAT;

async fn answer(mut socket: TcpStream, registry: &Registry) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, content_type, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => ("200 OK", CONTENT_TYPE, encode(registry)),
        ("GET", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "essops ingest: metrics at /metrics\n".into(),
        ),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found; metrics are at /metrics\n".into(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}
