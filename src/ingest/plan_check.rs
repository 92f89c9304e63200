//! `essops ingest --plan [--probe DUR]`: per endpoint and connection, the
//! requests and registers per second, the time they need against the
//! sample interval, and what to change when they do not fit.
//!
//! Without `--probe` the need is the worst case: every request takes the
//! whole `timeout_ms`, divided by the requests in flight. With `--probe`
//! each connection polls its devices for real (nothing is stored) and the
//! need is the slowest round seen (p99), with the answer times behind it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;

use super::poll::{LaneSettings, PollDevice, probe_pipelining, read_device};
use super::{IngestError, Plan, lane_settings, shares};
use crate::context::Context;
use crate::exit::Outcome;
use crate::modbus::client::Connection;
use crate::output::Report;

/// A round may use this share of the interval; the rest absorbs jitter.
const USABLE: f64 = 0.8;

#[derive(Debug, Clone, Serialize)]
pub struct PlanRow {
    pub site: String,
    pub endpoint: String,
    pub connection: usize,
    pub devices: usize,
    pub requests_per_sec: f64,
    pub registers_per_sec: f64,
    pub in_flight: usize,
    /// "timeout_ms" (worst case) or "probe" (measured).
    pub basis: &'static str,
    pub answer_p50_ms: Option<f64>,
    pub answer_p99_ms: Option<f64>,
    /// Failed requests while probing.
    pub failed: u64,
    /// What one round needs, and what it may use (80 % of the interval).
    pub round_ms: f64,
    pub budget_ms: f64,
    pub fits: bool,
    pub advice: String,
}

pub type PlanReport = crate::output::Rows<PlanRow>;

pub async fn check(
    plan: &Plan,
    ctx: &Context,
    probe: Option<Duration>,
) -> Result<PlanReport, IngestError> {
    let settings = lane_settings(plan, ctx);
    let mut rows = Vec::new();
    for (addr, lanes) in shares(plan, ctx) {
        let lane_count = lanes.len();
        let measured = futures_util::future::join_all(
            lanes
                .iter()
                .map(|devices| async { measure(&addr, devices, settings, probe).await }),
        )
        .await;
        for (number, (devices, m)) in lanes.iter().zip(measured).enumerate() {
            rows.push(row(plan, &addr, number, lane_count, devices, settings, m));
        }
    }
    Ok(PlanReport { rows })
}

/// What a probe saw on one connection.
#[derive(Debug, Default)]
struct Measured {
    in_flight: Option<usize>,
    answers_ms: Vec<f64>,
    rounds_ms: Vec<f64>,
    failed: u64,
    error: Option<String>,
}

async fn measure(
    addr: &str,
    devices: &[PollDevice],
    s: LaneSettings,
    probe: Option<Duration>,
) -> Option<Measured> {
    let probe = probe?;
    let mut m = Measured::default();
    let conn = match Connection::open(addr, s.timeout.max(Duration::from_secs(1))).await {
        Ok(c) => Arc::new(c),
        Err(e) => {
            m.error = Some(e.to_string());
            return Some(m);
        }
    };
    let mut depth = s.pipeline.max(1);
    if depth > 1
        && let Some(dev) = devices.first()
        && probe_pipelining(&conn, dev, s.timeout).await == Some(false)
    {
        depth = 1;
    }
    m.in_flight = Some(depth);
    let interval = Duration::from_secs(s.interval_secs);
    let until = Instant::now() + probe;
    while Instant::now() < until && !conn.is_closed() {
        let round = Instant::now();
        let results: Vec<(Duration, bool)> = futures_util::stream::iter(devices)
            .map(|d| {
                let conn = conn.clone();
                async move {
                    let t = Instant::now();
                    let ok = read_device(&conn, d, s.timeout).await.is_ok();
                    (t.elapsed(), ok)
                }
            })
            .buffer_unordered(depth)
            .collect()
            .await;
        m.rounds_ms.push(ms(round.elapsed()));
        for (took, ok) in results {
            match ok {
                true => m.answers_ms.push(ms(took)),
                false => m.failed += 1,
            }
        }
        tokio::time::sleep(interval.saturating_sub(round.elapsed())).await;
    }
    if conn.is_closed() {
        m.error = Some(format!("{addr} closed the connection while probing"));
    }
    Some(m)
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 10_000.0).round() / 10.0
}

fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64 * q).ceil() as usize).checked_sub(1)?;
    v.get(i.min(v.len() - 1)).copied()
}

/// What one round needs, and on what basis.
struct Need {
    basis: &'static str,
    in_flight: usize,
    p50: Option<f64>,
    p99: Option<f64>,
    round_ms: f64,
    failed: u64,
    error: Option<String>,
}

/// The worst case from `timeout_ms`, or the slowest probed round (p99).
fn need(requests: usize, s: LaneSettings, m: Option<Measured>) -> Need {
    let depth = s.pipeline.max(1);
    match m {
        None => Need {
            basis: "timeout_ms",
            in_flight: depth,
            p50: None,
            p99: None,
            round_ms: requests as f64 * s.timeout.as_secs_f64() * 1000.0 / depth as f64,
            failed: 0,
            error: None,
        },
        Some(m) => Need {
            basis: "probe",
            in_flight: m.in_flight.unwrap_or(depth),
            p50: quantile(&m.answers_ms, 0.5),
            p99: quantile(&m.answers_ms, 0.99),
            round_ms: quantile(&m.rounds_ms, 0.99).unwrap_or(f64::INFINITY),
            failed: m.failed,
            error: m.error,
        },
    }
}

/// What would make a connection that does not fit fit.
fn advice(n: &Need, interval: f64, budget_ms: f64, lanes: usize, reads_per_device: f64) -> String {
    let round_ms = n.round_ms;
    if let Some(e) = &n.error {
        return format!("could not probe: {e}");
    }
    if round_ms <= budget_ms {
        return format!(
            "fits: {:.0} % of the interval",
            100.0 * round_ms / (interval * 1000.0)
        );
    }
    let factor = round_ms / budget_ms;
    let mut a = format!(
        "does not fit ({round_ms:.0} ms needed, {budget_ms:.0} ms usable): modbus.connections = {} (now {lanes} for this endpoint), \
         or sample_interval_secs = {}",
        ((lanes as f64) * factor).ceil() as usize,
        (interval * factor).ceil() as u64,
    );
    if reads_per_device > 1.0 {
        a.push_str(&format!(
            ", or merged reads ({reads_per_device:.1} requests per device: raise max_gap in the register map)"
        ));
    }
    if n.basis == "timeout_ms" {
        a.push_str("; this assumes every request takes timeout_ms: measure with --probe 10s");
    }
    a
}

fn row(
    plan: &Plan,
    addr: &str,
    number: usize,
    lanes: usize,
    devices: &[PollDevice],
    s: LaneSettings,
    m: Option<Measured>,
) -> PlanRow {
    let interval = s.interval_secs as f64;
    let requests: usize = devices.iter().map(|d| d.planned().0).sum();
    let registers: u64 = devices.iter().map(|d| d.planned().1).sum();
    let budget_ms = interval * 1000.0 * USABLE;
    let n = need(requests, s, m);
    let reads = requests as f64 / devices.len().max(1) as f64;
    PlanRow {
        site: plan.site.name.clone(),
        endpoint: addr.to_string(),
        connection: number,
        devices: devices.len(),
        requests_per_sec: requests as f64 / interval,
        registers_per_sec: registers as f64 / interval,
        in_flight: n.in_flight,
        basis: n.basis,
        answer_p50_ms: n.p50,
        answer_p99_ms: n.p99,
        failed: n.failed,
        round_ms: (n.round_ms * 10.0).round() / 10.0,
        budget_ms,
        fits: n.error.is_none() && n.round_ms <= budget_ms,
        advice: advice(&n, interval, budget_ms, lanes, reads),
    }
}

impl Report for PlanReport {
    type Row = PlanRow;
    const KIND: &'static str = "connection";
    const HEADER: &'static str =
        "ENDPOINT|CONN|DEVICES|REQ/S|REG/S|IN FLIGHT|P50 MS|P99 MS|ROUND MS|BUDGET MS|VERDICT";
    fn cells(r: &PlanRow) -> Vec<String> {
        let opt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
        vec![
            r.endpoint.clone(),
            r.connection.to_string(),
            r.devices.to_string(),
            format!("{:.0}", r.requests_per_sec),
            format!("{:.0}", r.registers_per_sec),
            r.in_flight.to_string(),
            opt(r.answer_p50_ms),
            opt(r.answer_p99_ms),
            format!("{:.0}", r.round_ms),
            format!("{:.0}", r.budget_ms),
            if r.fits {
                "fits".into()
            } else {
                "DOES NOT FIT".into()
            },
        ]
    }
    fn summary(&self) -> String {
        let bad: Vec<&PlanRow> = self.rows.iter().filter(|r| !r.fits).collect();
        let basis = self.rows.first().map_or("", |r| match r.basis {
            "probe" => "measured by probing the devices",
            _ => "worst case: every request takes timeout_ms",
        });
        let mut out = match bad.len() {
            0 => format!(
                "the plan fits on all {} connections ({basis})",
                self.rows.len()
            ),
            n => format!(
                "{n} of {} connections do not fit ({basis}):",
                self.rows.len()
            ),
        };
        for r in bad {
            out.push_str(&format!(
                "\n  {} connection {}: {}",
                r.endpoint, r.connection, r.advice
            ));
        }
        out
    }
    fn outcome(&self) -> Outcome {
        match self.rows.iter().all(|r| r.fits) {
            true => Outcome::Clean,
            false => Outcome::Warning,
        }
    }
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}
