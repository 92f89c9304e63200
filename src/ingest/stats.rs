//! Counters the pollers and writers share, the per-minute health lines, and
//! the poll-to-commit delay histogram. Every grid second a device was due
//! ends in exactly one counter: answered, or missed for one [`Miss`] reason.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus::{Histogram, HistogramOpts, HistogramVec};
use serde::Serialize;

use crate::logging::REPORT_TARGET;
pub use crate::tasks::lock;

/// Why a device has no sample for a grid second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    /// Asked, and no answer came within the timeout.
    Timeout,
    /// Answered with a Modbus exception.
    Exception,
    /// The connection could not be opened or was lost mid-request.
    Connection,
    /// An answer that did not fit its request (length, function, unit).
    BadAnswer,
    /// The round ran out of time before this device's turn.
    Late,
    /// The device's breaker is open and no probe was due.
    Breaker,
    /// A SunSpec device whose models do not match the config (or not yet discovered).
    SunSpec,
}

impl Miss {
    pub const ALL: [Miss; 7] = [
        Miss::Timeout,
        Miss::Exception,
        Miss::Connection,
        Miss::BadAnswer,
        Miss::Late,
        Miss::Breaker,
        Miss::SunSpec,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Miss::Timeout => "timeout",
            Miss::Exception => "exception",
            Miss::Connection => "connection",
            Miss::BadAnswer => "bad_answer",
            Miss::Late => "late",
            Miss::Breaker => "breaker",
            Miss::SunSpec => "sunspec",
        }
    }
}

/// Missed polls by reason (field names are the reasons).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Misses {
    pub timeout: u64,
    pub exception: u64,
    pub connection: u64,
    pub bad_answer: u64,
    pub late: u64,
    pub breaker: u64,
    pub sunspec: u64,
}

impl Misses {
    pub fn total(&self) -> u64 {
        Miss::ALL.iter().map(|m| self.get(*m)).sum()
    }

    fn add(&mut self, miss: Miss, n: u64) {
        *match miss {
            Miss::Timeout => &mut self.timeout,
            Miss::Exception => &mut self.exception,
            Miss::Connection => &mut self.connection,
            Miss::BadAnswer => &mut self.bad_answer,
            Miss::Late => &mut self.late,
            Miss::Breaker => &mut self.breaker,
            Miss::SunSpec => &mut self.sunspec,
        } += n;
    }

    pub fn plus(&self, other: &Misses) -> Misses {
        sum(*self, *other)
    }

    pub fn since(&self, earlier: &Misses) -> Misses {
        let mut out = Misses::default();
        for m in Miss::ALL {
            out.add(m, self.get(m) - earlier.get(m));
        }
        out
    }

    fn get(&self, miss: Miss) -> u64 {
        match miss {
            Miss::Timeout => self.timeout,
            Miss::Exception => self.exception,
            Miss::Connection => self.connection,
            Miss::BadAnswer => self.bad_answer,
            Miss::Late => self.late,
            Miss::Breaker => self.breaker,
            Miss::SunSpec => self.sunspec,
        }
    }
}

#[derive(Debug)]
pub struct DeviceStats {
    pub table: &'static str,
    pub label: String,
    pub polls_ok: AtomicU64,
    missed: [AtomicU64; Miss::ALL.len()],
    /// Rows committed, per server (plan order).
    pub written: Vec<AtomicU64>,
    pub last_error: Mutex<String>,
    pub breaker_open: AtomicBool,
    pub breaker_openings: AtomicU64,
    /// Measured values unchanged for `stale_after`.
    pub stale: AtomicBool,
    /// The last answer had an alarm or fault word set, or a value outside `cache.limits`.
    pub alarm: AtomicBool,
    /// Answer times of this device's table (shared by the table's devices).
    pub latency: Histogram,
}

#[derive(Debug, Default)]
pub struct ServerStats {
    pub name: String,
    pub written: AtomicU64,
    pub replayed: AtomicU64,
    /// Time spent in replay transactions, in µs (for the replay rate).
    pub replay_us: AtomicU64,
    pub spooled: AtomicU64,
    /// Rows the server already held (a clock stepped back, a replay of committed rows).
    pub duplicates: AtomicU64,
    /// Rows set aside in `rejected/` because the server refused them for good.
    pub rejected: AtomicU64,
    /// Rows waiting in the spool now, and their bytes on disk.
    pub spool_depth: AtomicU64,
    pub spool_bytes: AtomicU64,
    /// The oldest pending batch's first sample (unix seconds; 0: empty),
    /// kept by the writer so `/metrics` never scans the spool folder.
    pub spool_oldest_t: std::sync::atomic::AtomicI64,
    /// Rows that could be neither written nor spooled (spool cap, disk full).
    pub lost: AtomicU64,
    /// Newest committed sample's age at commit, in ms.
    pub lag_ms: AtomicU64,
    /// Poll-to-commit delay of directly written rows, 1 ms buckets.
    pub delays: Mutex<Vec<u64>>,
    /// The same for Prometheus (this server's child of `Stats::commit_delay`).
    pub commit_delay: Option<Histogram>,
    /// Why this server is set aside now (its rows only spooled), and the exit code that goes with it.
    pub set_aside: Mutex<Option<(u8, String)>>,
    /// Every stretch this run set the server aside, ended or not.
    pub episodes: Mutex<Vec<Episode>>,
    /// Permanent refusals: (table, error, rows), for the summary.
    pub rejections: Mutex<Vec<(String, String, u64)>>,
}

/// A stretch during which a server was set aside.
#[derive(Debug, Clone)]
pub struct Episode {
    pub started: chrono::DateTime<chrono::Utc>,
    pub ended: Option<chrono::DateTime<chrono::Utc>>,
    pub reason: String,
    /// Whether its start and its end are in `ingest_events` yet.
    pub start_recorded: bool,
    pub end_recorded: bool,
}

#[derive(Debug)]
pub struct Stats {
    pub site: String,
    pub devices: Vec<DeviceStats>,
    pub servers: Vec<ServerStats>,
    /// Answer times per table, and poll-to-commit per server, for Prometheus.
    pub poll_latency: HistogramVec,
    pub commit_delay: HistogramVec,
    /// Polls due: each device once per grid second its lane was running
    /// (answered or missed, each due poll ends in exactly one counter).
    pub due: AtomicU64,
}

const DELAY_BUCKETS: usize = 60_000;

/// A health line's per-device numbers, as of one moment.
#[derive(Debug, Clone, Copy, Default)]
pub struct Snapshot {
    ok: u64,
    missed: Misses,
}

impl Stats {
    pub fn new(site: &str, devices: Vec<(&'static str, String)>, servers: &[String]) -> Stats {
        let counters = || servers.iter().map(|_| AtomicU64::new(0)).collect();
        let (poll_latency, commit_delay) = (poll_latency_histograms(), commit_delay_histograms());
        Stats {
            site: site.to_string(),
            devices: devices
                .into_iter()
                .map(|(table, label)| DeviceStats {
                    latency: poll_latency.with_label_values(&[site, table]),
                    alarm: AtomicBool::new(false),
                    table,
                    label,
                    polls_ok: AtomicU64::new(0),
                    missed: Default::default(),
                    written: counters(),
                    last_error: Mutex::new(String::new()),
                    breaker_open: AtomicBool::new(false),
                    breaker_openings: AtomicU64::new(0),
                    stale: AtomicBool::new(false),
                })
                .collect(),
            servers: servers
                .iter()
                .map(|name| ServerStats {
                    name: name.clone(),
                    delays: Mutex::new(vec![0; DELAY_BUCKETS]),
                    commit_delay: Some(commit_delay.with_label_values(&[site, name.as_str()])),
                    ..ServerStats::default()
                })
                .collect(),
            poll_latency,
            commit_delay,
            due: AtomicU64::new(0),
        }
    }

    pub fn poll_missed(&self, device: usize, miss: Miss, why: &str) {
        self.polls_missed(device, miss, why, 1);
    }

    /// `n` missed polls of one device for one reason (seconds a stalled lane never began).
    pub fn polls_missed(&self, device: usize, miss: Miss, why: &str, n: u64) {
        let d = &self.devices[device];
        d.missed[miss as usize].fetch_add(n, Relaxed);
        let mut last = lock(&d.last_error);
        if *last != why {
            *last = why.to_string();
        }
    }

    pub fn record_delay(&self, server: usize, delay: Duration) {
        let ms = (delay.as_millis() as usize).min(DELAY_BUCKETS - 1);
        lock(&self.servers[server].delays)[ms] += 1;
        if let Some(h) = &self.servers[server].commit_delay {
            h.observe(delay.as_secs_f64());
        }
    }

    /// The `q` quantile of a server's poll-to-commit delay, in ms.
    pub fn delay_quantile_ms(&self, server: usize, q: f64) -> Option<u64> {
        let h = lock(&self.servers[server].delays);
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

    /// Missed polls of every device, by reason.
    pub fn misses(&self) -> Misses {
        let mut out = Misses::default();
        for d in &self.devices {
            out = sum(out, d.misses());
        }
        out
    }

    pub fn polls_ok(&self) -> u64 {
        self.devices.iter().map(|d| d.polls_ok.load(Relaxed)).sum()
    }

    pub fn count_devices(&self, flag: impl Fn(&DeviceStats) -> bool) -> usize {
        self.devices.iter().filter(|d| flag(d)).count()
    }

    /// One JSON log line for the site (counts since the last one, spool depth
    /// and lag per server), and one per device that missed a poll, has its
    /// breaker open or is stale: a site where nothing fails writes one line a
    /// minute, however many devices it has.
    pub fn log_health(&self, last: &mut Vec<Snapshot>) {
        last.resize(self.devices.len(), Snapshot::default());
        let per_server = |f: &dyn Fn(&ServerStats) -> u64| -> String {
            self.servers
                .iter()
                .map(|s| format!("{}={}", s.name, f(s)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let spool = per_server(&|s| s.spool_depth.load(Relaxed));
        let lag = per_server(&|s| s.lag_ms.load(Relaxed));
        let (mut ok, mut failed, mut failing) = (0, 0, 0);
        for (d, prev) in self.devices.iter().zip(last.iter_mut()) {
            let now = Snapshot {
                ok: d.polls_ok.load(Relaxed),
                missed: d.misses(),
            };
            let missed = now.missed.since(&prev.missed);
            let (breaker, stale) = (d.breaker_open.load(Relaxed), d.stale.load(Relaxed));
            ok += now.ok - prev.ok;
            failed += missed.total();
            let healthy = missed.total() == 0 && !breaker && !stale;
            if healthy {
                *prev = now;
                continue;
            }
            failing += 1;
            let written: Vec<String> = self
                .servers
                .iter()
                .zip(&d.written)
                .map(|(s, w)| format!("{}={}", s.name, w.load(Relaxed)))
                .collect();
            tracing::info!(
                target: REPORT_TARGET,
                level = "warning",
                site = %self.site,
                table = d.table,
                device = %d.label,
                polls_ok = now.ok - prev.ok,
                polls_failed = missed.total(),
                missed_timeout = missed.timeout,
                missed_exception = missed.exception,
                missed_connection = missed.connection,
                missed_bad_answer = missed.bad_answer,
                missed_late = missed.late,
                missed_breaker = missed.breaker,
                breaker_open = breaker,
                stale,
                rows_written = %written.join(" "),
                spool_rows = %spool,
                lag_ms = %lag,
                last_error = %lock(&d.last_error),
                "device health"
            );
            *prev = now;
        }
        tracing::info!(
            target: REPORT_TARGET,
            level = if failing > 0 { "warning" } else { "info" },
            site = %self.site,
            devices = self.devices.len(),
            devices_failing = failing,
            polls_ok = ok,
            polls_failed = failed,
            breakers_open = self.count_devices(|d| d.breaker_open.load(Relaxed)),
            stale = self.count_devices(|d| d.stale.load(Relaxed)),
            spool_rows = %spool,
            lag_ms = %lag,
            "site health"
        );
    }
}

impl DeviceStats {
    pub fn misses(&self) -> Misses {
        let mut out = Misses::default();
        for m in Miss::ALL {
            out.add(m, self.missed[m as usize].load(Relaxed));
        }
        out
    }
}

fn sum(a: Misses, b: Misses) -> Misses {
    let mut out = a;
    for m in Miss::ALL {
        out.add(m, b.get(m));
    }
    out
}

/// Poll answer times per site and table: 5 ms to 10 s.
fn poll_latency_histograms() -> HistogramVec {
    histograms(
        "essops_poll_latency_seconds",
        "Time from sending a device's requests to its whole answer.",
        &["site", "table"],
        prometheus::exponential_buckets(0.005, 2.0, 12),
    )
}

/// Poll-to-commit delay per site and server: 50 ms to 100 s.
fn commit_delay_histograms() -> HistogramVec {
    histograms(
        "essops_poll_to_commit_seconds",
        "Time from a poll to the commit of its row on the server (live writes).",
        &["site", "server"],
        prometheus::exponential_buckets(0.05, 2.0, 12),
    )
}

fn histograms(
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: prometheus::Result<Vec<f64>>,
) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(buckets.expect("valid buckets"));
    HistogramVec::new(opts, labels).expect("a valid metric name and labels")
}
