//! Polling: each endpoint gets a few TCP connections ("lanes"); each lane
//! polls its share of the devices once per sample interval, on the interval
//! grid (a poll at 12:00:00.137 is the 12:00:00 sample).
//!
//! A fault costs only the device it touches:
//! - several requests are in flight per lane ([`crate::modbus::client`]), so
//!   a silent device holds one slot for its timeout, not the whole lane;
//! - each round has a deadline (the next grid second); a device whose turn
//!   did not come is counted `late`, and the next round serves it first, so
//!   under overload the loss is spread instead of always hitting the tail;
//! - devices that failed recently go last, and after a few failures in a
//!   row a device's [`Breaker`] opens: it is only probed, at growing
//!   intervals, until it answers again.
//!
//! Every grid second ends in one counter per device: answered, or missed with
//! its [`Miss`] reason. A lane whose rounds keep running out of time warns
//! once, with the numbers and what would fit.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, watch};

use super::batch::Row;
use super::breaker::{Breaker, Change};
use super::stats::{Miss, Stats};
use crate::modbus::client::{Connection, ReadError};
use crate::modbus::map::{ReadRequest, TableMap};
use crate::modbus::sunspec::mapping::{self, Role, SunPlan};
use crate::modbus::value::Value;
use crate::schema::DeviceId;

const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Rounds looked back on for the overrun warning, and how many of them must have run late.
const OVERRUN_WINDOW: u32 = 5;
const OVERRUN_ROUNDS: u32 = 3;

/// One device as the poller sees it.
#[derive(Debug, Clone)]
pub struct PollDevice {
    pub index: usize,
    /// Index of its table in the plan's tables.
    pub table_index: usize,
    pub table: Arc<TableMap>,
    pub device: DeviceId,
    /// The site's endpoint it answers on.
    pub endpoint: String,
    pub unit: u8,
    pub block_start: u16,
    pub requests: Vec<ReadRequest>,
    /// A SunSpec device: its registers are found on it (`requests` is empty).
    pub sunspec: Option<Role>,
}

impl PollDevice {
    /// Reads and registers one poll takes. A SunSpec device's are known only
    /// after discovery: it counts as the one read its models usually take
    /// (an 804, or 802 with 803's fixed block beside it).
    pub fn planned(&self) -> (usize, u64) {
        match self.sunspec {
            Some(_) => mapping::USUAL_READ,
            None => (
                self.reads(),
                self.requests.iter().map(|r| u64::from(r.count)).sum(),
            ),
        }
    }

    /// Reads one poll takes (as [`planned`](Self::planned), without summing registers: it is
    /// counted on every poll).
    pub fn reads(&self) -> usize {
        match self.sunspec {
            Some(_) => mapping::USUAL_READ.0,
            None => self.requests.len(),
        }
    }
}

/// How a lane polls (from `[modbus]`).
#[derive(Debug, Clone, Copy)]
pub struct LaneSettings {
    pub timeout: Duration,
    pub interval_secs: u64,
    /// Requests in flight per connection (1: one at a time).
    pub pipeline: usize,
    pub breaker_after: u32,
    pub stale_after: Duration,
}

/// The next grid second after now, and how long until it.
fn next_tick(interval: u64) -> (i64, Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let next = (now.as_secs() / interval + 1) * interval;
    (next as i64, Duration::from_secs(next) - now)
}

/// Per-device state a lane keeps between rounds.
#[derive(Debug, Clone, Default)]
struct DeviceState {
    breaker: Breaker,
    /// Its turn did not come last round: it goes first this round.
    late: bool,
    /// A poll of it is in flight (at most one at a time).
    busy: bool,
    /// Hash of the measured values and when it last changed.
    values: Option<(u64, Instant)>,
    stale: bool,
    /// A SunSpec device's reads, once its models were found on the
    /// connection of this generation (a new connection finds them again).
    sunspec: Option<(Arc<SunPlan>, u64)>,
    /// Its last poll found SunSpec models that do not match the config.
    mismatch: bool,
}

pub struct Lane {
    pub addr: String,
    /// Which of the endpoint's lanes this is (for messages).
    pub number: usize,
    pub devices: Vec<PollDevice>,
    pub settings: LaneSettings,
    pub rows: mpsc::Sender<(usize, Row)>,
    pub stats: Arc<Stats>,
}

/// One device's poll in flight.
type Poll<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Polled> + Send + 'a>>;

/// What one poll gave.
struct Polled {
    slot: usize,
    /// The grid second it samples.
    t: i64,
    started: Instant,
    result: Result<Vec<Option<Value>>, ReadError>,
    /// A SunSpec device's plan, as found or kept by this poll.
    plan: Option<Arc<SunPlan>>,
}

/// The lane's connection and how deep it may pipeline.
struct Link {
    conn: Option<Arc<Connection>>,
    depth: usize,
    retry_at: Instant,
    backoff: Duration,
    last_error: String,
    /// Connections opened so far: SunSpec plans are found again on a new one.
    generation: u64,
    /// The pipelining probe went unanswered: one request at a time until one is.
    probe_pending: bool,
}

/// The grid second being polled and the devices whose turn has not come.
/// Requests keep their whole timeout even past the next second (their
/// rows keep their own second); only turns that never came are late.
#[derive(Default)]
struct Round {
    number: usize,
    t: i64,
    queue: std::collections::VecDeque<usize>,
    /// Devices skipped as late because their previous poll was still waiting.
    late: u64,
}

impl Round {
    fn begin(&mut self, t: i64, order: Vec<usize>) {
        self.number += 1;
        self.t = t;
        self.queue = order.into();
        self.late = 0;
    }
}

/// How the lane's rounds went lately, for the overrun warning.
#[derive(Default)]
struct Load {
    rounds: u32,
    late_rounds: u32,
    /// Polls due and polls late in the window.
    due: u64,
    late: u64,
    requests: u64,
    answer_time: Duration,
    answers: u64,
    warned: bool,
}

impl Lane {
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut state = vec![DeviceState::default(); self.devices.len()];
        let mut link = Link {
            conn: None,
            depth: self.settings.pipeline.max(1),
            retry_at: Instant::now(),
            backoff: Duration::from_secs(1),
            last_error: String::new(),
            generation: 0,
            probe_pending: false,
        };
        let mut load = Load::default();
        let mut round = Round::default();
        let mut inflight: FuturesUnordered<Poll<'_>> = FuturesUnordered::new();
        let mut stopping = false;
        loop {
            let (t, wait) = next_tick(self.settings.interval_secs);
            tokio::select! {
                _ = tokio::time::sleep(wait), if !stopping => {
                    self.close_round(&mut round, &mut state, &mut load);
                    self.count_skipped(&round, t, &mut load);
                    round.begin(t, self.order(&state, round.number));
                    self.check_overrun(&mut load, &link);
                }
                Some(polled) = inflight.next(), if !inflight.is_empty() => {
                    let polled: Polled = polled;
                    state[polled.slot].busy = false;
                    if !self.settle(polled, &mut state, &mut link, &mut load).await {
                        return;
                    }
                }
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    // The run ends within this second: turns that had not come are not due.
                    let polled = self.devices.len() - round.queue.len();
                    if round.number > 0 {
                        self.stats.due.fetch_add(polled as u64, Relaxed);
                    }
                    round.queue.clear();
                }
            }
            if stopping && inflight.is_empty() {
                return;
            }
            while inflight.len() < link.depth
                && let Some(slot) = round.queue.pop_front()
            {
                if let Some(poll) = self
                    .start(slot, &mut round, &mut state, &mut link, &mut load)
                    .await
                {
                    inflight.push(poll);
                }
            }
        }
    }

    /// Starts one device's poll for the round's second, or books why it
    /// cannot be polled now (its last poll still waits, its breaker is open,
    /// no connection).
    async fn start<'a>(
        &'a self,
        slot: usize,
        round: &mut Round,
        state: &mut [DeviceState],
        link: &mut Link,
        load: &mut Load,
    ) -> Option<Poll<'a>> {
        let dev = &self.devices[slot];
        let s = &mut state[slot];
        s.late = false;
        if s.busy {
            s.late = true;
            round.late += 1;
            let why = "its previous poll is still waiting for an answer";
            self.stats.poll_missed(dev.index, Miss::Late, why);
            return None;
        }
        if s.breaker.skips(Instant::now()) {
            // A SunSpec device that is not what the config says keeps its
            // reason while discovery backs off.
            let (miss, why) = match s.mismatch {
                true => (
                    Miss::SunSpec,
                    "SunSpec models do not match the config: finding them again with backoff",
                ),
                false => (Miss::Breaker, "breaker open: probing only"),
            };
            self.stats.poll_missed(dev.index, miss, why);
            return None;
        }
        let answers = s.values.is_some() && s.breaker.failures() == 0;
        let Some(conn) = self.connected(link, dev, answers).await else {
            let why = format!("cannot connect to {}: {}", self.addr, link.last_error);
            self.stats.poll_missed(dev.index, Miss::Connection, &why);
            return None;
        };
        state[slot].busy = true;
        load.requests += dev.reads() as u64;
        let plan = state[slot]
            .sunspec
            .as_ref()
            .filter(|(_, generation)| *generation == link.generation)
            .map(|(p, _)| p.clone());
        let (t, timeout) = (round.t, self.settings.timeout);
        Some(Box::pin(async move {
            let started = Instant::now();
            let (result, plan) = poll_device(&conn, dev, plan, timeout).await;
            Polled {
                slot,
                t,
                started,
                result,
                plan,
            }
        }))
    }

    /// Devices whose turn did not come before the next grid second are late;
    /// they go first in the next round.
    fn close_round(&self, round: &mut Round, state: &mut [DeviceState], load: &mut Load) {
        if round.number == 0 {
            return;
        }
        let late = !round.queue.is_empty() || round.late > 0;
        load.due += self.devices.len() as u64;
        self.stats.due.fetch_add(self.devices.len() as u64, Relaxed);
        load.late += round.late + round.queue.len() as u64;
        for slot in round.queue.drain(..) {
            state[slot].late = true;
            self.stats.poll_missed(
                self.devices[slot].index,
                Miss::Late,
                "not polled in time: the round ran out of its interval",
            );
        }
        load.rounds += 1;
        load.late_rounds += u32::from(late);
    }

    /// Grid seconds between the last round and the one beginning at `t`
    /// that never had a round (the lane did not run: a stalled writer held
    /// its rows, or the CPU was taken): every device missed them, late.
    fn count_skipped(&self, round: &Round, t: i64, load: &mut Load) {
        let interval = self.settings.interval_secs as i64;
        if round.number == 0 || t <= round.t + interval {
            return;
        }
        let skipped = ((t - round.t) / interval - 1) as u64;
        let why = format!("no round began for {skipped} grid second(s): the poller was stalled");
        for dev in &self.devices {
            self.stats
                .polls_missed(dev.index, Miss::Late, &why, skipped);
        }
        let n = skipped * self.devices.len() as u64;
        self.stats.due.fetch_add(n, Relaxed);
        load.due += n;
        load.late += n;
        load.rounds += skipped as u32;
        load.late_rounds += skipped as u32;
    }

    /// This round's order: devices that were late last round first, then the
    /// healthy ones from a rotating start, then those failing lately.
    fn order(&self, state: &[DeviceState], round_no: usize) -> Vec<usize> {
        let n = self.devices.len();
        let mut order: Vec<usize> = (0..n).collect();
        let start = round_no.wrapping_mul(7) % n.max(1);
        order.sort_by_key(|&i| {
            let s = &state[i];
            let class = match (s.late, s.breaker.failures() > 0) {
                (true, _) => 0,
                (false, false) => 1,
                (false, true) => 2,
            };
            (class, (i + n - start) % n.max(1))
        });
        order
    }

    /// Books one poll's result.
    async fn settle(
        &self,
        p: Polled,
        state: &mut [DeviceState],
        link: &mut Link,
        load: &mut Load,
    ) -> bool {
        let dev = &self.devices[p.slot];
        let s = &mut state[p.slot];
        let now = Instant::now();
        if let Some(plan) = p.plan {
            if s.sunspec
                .as_ref()
                .is_none_or(|(old, _)| !Arc::ptr_eq(old, &plan))
            {
                tracing::info!(
                    site = %self.stats.site, table = dev.table.spec.name, device = %self.stats.devices[dev.index].label,
                    models = %plan.models, "SunSpec device found"
                );
            }
            s.sunspec = Some((plan, link.generation));
        }
        let change = match p.result {
            Ok(values) => {
                s.mismatch = false;
                load.answers += 1;
                load.answer_time += now - p.started;
                let d = &self.stats.devices[dev.index];
                d.polls_ok.fetch_add(1, Relaxed);
                d.latency.observe((now - p.started).as_secs_f64());
                self.track_stale(dev, s, &values, now);
                let row = Row {
                    device: dev.device.clone(),
                    t: p.t,
                    values,
                    device_index: dev.index,
                    polled: Some(p.started),
                };
                if self.rows.send((dev.table_index, row)).await.is_err() {
                    return false;
                }
                s.breaker.answered(now)
            }
            Err(e) => {
                let (miss, counts) = classify(&e);
                s.mismatch = miss == Miss::SunSpec;
                self.stats.poll_missed(dev.index, miss, &e.to_string());
                if miss == Miss::Connection {
                    link.last_error = e.to_string();
                    link.conn = None;
                }
                match counts {
                    true => s.breaker.failed(now, self.settings.breaker_after),
                    false => None,
                }
            }
        };
        if let Some(change) = change {
            self.log_breaker(dev, change, &mut state[p.slot]);
        }
        true
    }

    fn log_breaker(&self, dev: &PollDevice, change: Change, s: &mut DeviceState) {
        if let Change::Closed { .. } = change {
            // It may have been replaced or reconfigured while silent.
            s.sunspec = None;
        }
        let d = &self.stats.devices[dev.index];
        d.breaker_open.store(s.breaker.is_open(), Relaxed);
        let reason = super::stats::lock(&d.last_error).clone();
        match change {
            Change::Opened { failures } => {
                d.breaker_openings.fetch_add(1, Relaxed);
                tracing::warn!(
                    site = %self.stats.site, table = d.table, device = %d.label, failures, reason = %reason,
                    "device breaker opened: probing it at growing intervals (up to 5 min) until it answers"
                );
            }
            Change::Closed { open_for } => tracing::warn!(
                site = %self.stats.site, table = d.table, device = %d.label, open_secs = open_for.as_secs(),
                "device breaker closed: it answers again"
            ),
        }
    }

    /// Flags a device whose measured values have not changed for `stale_after`
    /// (a gateway serving cached registers of a dead device).
    fn track_stale(
        &self,
        dev: &PollDevice,
        s: &mut DeviceState,
        values: &[Option<Value>],
        now: Instant,
    ) {
        let hash = measured_hash(&dev.table, values);
        let since = match s.values {
            Some((h, since)) if h == hash => since,
            _ => now,
        };
        s.values = Some((hash, since));
        let stale = now - since >= self.settings.stale_after;
        if stale != s.stale {
            s.stale = stale;
            let d = &self.stats.devices[dev.index];
            d.stale.store(stale, Relaxed);
            match stale {
                true => tracing::warn!(
                    site = %self.stats.site, table = d.table, device = %d.label,
                    unchanged_secs = (now - since).as_secs(),
                    "device values frozen: the gateway may be serving a dead device's last registers"
                ),
                false => tracing::warn!(
                    site = %self.stats.site, table = d.table, device = %d.label,
                    "device values change again"
                ),
            }
        }
    }

    /// The lane's connection, opening it (and probing for pipelining) when
    /// the backoff allows. `answers`: the device answered its last poll, so
    /// a probe through it says something about the endpoint.
    async fn connected(
        &self,
        link: &mut Link,
        dev: &PollDevice,
        answers: bool,
    ) -> Option<Arc<Connection>> {
        if let Some(c) = link.conn.clone()
            && !c.is_closed()
        {
            if link.probe_pending && answers {
                self.probe(link, &c, dev).await;
            }
            return Some(c);
        }
        link.conn = None;
        if Instant::now() < link.retry_at {
            return None;
        }
        let opened = Connection::open(
            &self.addr,
            self.settings.timeout.max(Duration::from_secs(1)),
        )
        .await;
        match opened {
            Ok(c) => {
                let c = Arc::new(c);
                link.backoff = Duration::from_secs(1);
                link.generation += 1;
                self.probe(link, &c, dev).await;
                if c.is_closed() {
                    return None;
                }
                link.conn = Some(c.clone());
                Some(c)
            }
            Err(e) => {
                tracing::debug!(addr = %self.addr, error = %e, "cannot connect");
                link.last_error = e.to_string();
                link.retry_at = Instant::now() + link.backoff;
                link.backoff = (link.backoff * 2).min(MAX_BACKOFF);
                None
            }
        }
    }

    /// Sets how deep the lane pipelines. An unanswered probe fails closed:
    /// one request at a time, probing again through the next device that
    /// answers, until a probe says the endpoint queues requests.
    async fn probe(&self, link: &mut Link, c: &Connection, dev: &PollDevice) {
        if self.settings.pipeline <= 1 {
            return;
        }
        let probed = probe_pipelining(c, dev, self.settings.timeout).await;
        link.probe_pending = probed.is_none();
        link.depth = match probed {
            Some(true) => self.settings.pipeline,
            Some(false) => {
                tracing::info!(addr = %self.addr, "the endpoint answers one request at a time; polling without pipelining");
                1
            }
            None => 1,
        };
    }

    /// Warns once when rounds keep running out of time, with what would fit.
    fn check_overrun(&self, load: &mut Load, link: &Link) {
        if load.rounds < OVERRUN_WINDOW {
            return;
        }
        if load.late_rounds >= OVERRUN_ROUNDS && !load.warned {
            load.warned = true;
            let per_round = load.requests as f64 / f64::from(load.rounds);
            let mean = load.answer_time.as_secs_f64() / load.answers.max(1) as f64;
            let interval = self.settings.interval_secs as f64;
            let late_share = load.late as f64 / load.due.max(1) as f64;
            // Time the round needs against 80 % of the interval, judged both
            // from the answers' times and from the share that did not fit.
            let need =
                (per_round * mean / link.depth as f64).max(interval / (1.0 - late_share).max(0.05));
            let factor = need / (interval * 0.8);
            tracing::warn!(
                site = %self.stats.site, addr = %self.addr, lane = self.number,
                requests_per_round = per_round.round() as u64,
                mean_answer_ms = (mean * 1000.0).round() as u64,
                in_flight = link.depth,
                late_pct = (late_share * 1000.0).round() / 10.0,
                "polls do not fit the {interval} s interval on this connection: {:.0} % of its polls came too late \
                 ({:.0} requests a round, {:.0} ms a mean answer, {} in flight); what would fit: about {:.1} × the connections \
                 (modbus.connections), a sample interval of {} s, or fewer or merged reads (see essops ingest --plan --probe)",
                late_share * 100.0, per_round, mean * 1000.0, link.depth, factor.max(1.1),
                (interval * factor).ceil().max(interval + 1.0),
            );
        }
        *load = Load {
            warned: load.warned,
            ..Load::default()
        };
    }
}

/// The miss reason, and whether the failure says something about the device
/// (and so counts toward its breaker): a request that timed out while
/// waiting in a gateway's queue says nothing about its device.
fn classify(e: &ReadError) -> (Miss, bool) {
    match e {
        ReadError::Timeout { device_silent } => (Miss::Timeout, *device_silent),
        // Busy and acknowledge mean "ask again"; the rest mean the device is not there.
        ReadError::Exception(0x05 | 0x06) => (Miss::Exception, false),
        ReadError::Exception(_) => (Miss::Exception, true),
        ReadError::Closed(_) => (Miss::Connection, false),
        ReadError::BadAnswer(_) => (Miss::BadAnswer, false),
        // Counted toward the breaker, so discovery is retried with backoff.
        ReadError::SunSpec(_) => (Miss::SunSpec, true),
    }
}

/// Sends one device's first read twice at once: `Some(true)` when both are
/// answered (the endpoint queues requests), `Some(false)` when only one is
/// or the endpoint hangs up, `None` when neither says (the device is silent).
pub async fn probe_pipelining(
    conn: &Connection,
    dev: &PollDevice,
    timeout: Duration,
) -> Option<bool> {
    // A SunSpec device's reads are known only after discovery: its marker
    // registers serve (any answer, even an exception, is an answer).
    let marker = ReadRequest {
        kind: crate::modbus::map::RegisterKind::Holding,
        start: crate::modbus::sunspec::scan::BASES[0],
        count: 2,
        fields: Vec::new(),
    };
    let r = match (dev.requests.first(), dev.sunspec) {
        (Some(r), _) => r,
        (None, Some(_)) => &marker,
        (None, None) => return None,
    };
    let read = || conn.read(dev.unit, r.kind, r.start, r.count, timeout);
    let (a, b) = tokio::join!(read(), read());
    let answered =
        |x: &Result<Vec<u16>, ReadError>| matches!(x, Ok(_) | Err(ReadError::Exception(_)));
    match (answered(&a), answered(&b)) {
        (true, true) => Some(true),
        (true, false) | (false, true) => Some(false),
        _ if conn.is_closed() => Some(false),
        _ => None,
    }
}

fn measured_hash(table: &TableMap, values: &[Option<Value>]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (f, v) in table.fields.iter().zip(values) {
        if f.is_measure() {
            v.map(|v| v.as_f64().to_bits()).hash(&mut h);
        }
    }
    h.finish()
}

/// Decodes one answer into `values`; an answer of the wrong length is refused
/// before any field is read from it.
fn decode_reply(
    dev: &PollDevice,
    r: &ReadRequest,
    words: &[u16],
    values: &mut [Option<Value>],
) -> Result<(), ReadError> {
    if words.len() != usize::from(r.count) {
        return Err(ReadError::BadAnswer(format!(
            "{} registers for a request of {}",
            words.len(),
            r.count
        )));
    }
    for &i in &r.fields {
        let f = &dev.table.fields[i];
        let raw = f
            .words_in(u64::from(dev.block_start), r, words)
            .and_then(|w| f.dtype.decode(w, f.order));
        values[i] = raw.map(|v| f.scaled(v));
    }
    Ok(())
}

/// One poll of a device: its map's reads, or a SunSpec device's (finding
/// its models first when `plan` is none). Returns the plan it used.
async fn poll_device(
    c: &Connection,
    dev: &PollDevice,
    plan: Option<Arc<SunPlan>>,
    timeout: Duration,
) -> (Result<Vec<Option<Value>>, ReadError>, Option<Arc<SunPlan>>) {
    let Some(role) = dev.sunspec else {
        return (read_device(c, dev, timeout).await, None);
    };
    let plan = match plan {
        Some(p) => p,
        None => match mapping::discover(c, dev.unit, role, timeout).await {
            Ok(p) => Arc::new(p),
            Err(e) => return (Err(e), None),
        },
    };
    let values = mapping::read_device(c, dev.unit, &plan, timeout).await;
    (values, Some(plan))
}

/// Reads and decodes every field of one device; all or nothing.
pub async fn read_device(
    c: &Connection,
    dev: &PollDevice,
    timeout: Duration,
) -> Result<Vec<Option<Value>>, ReadError> {
    let answers = c.read_all(dev.unit, &dev.requests, timeout).await?;
    let mut values = vec![None; dev.table.fields.len()];
    for (r, words) in dev.requests.iter().zip(&answers) {
        decode_reply(dev, r, words, &mut values)?;
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modbus::map::RegisterMap;

    fn rack() -> PollDevice {
        let map = RegisterMap::builtin();
        let t = map.table("rack").unwrap().clone();
        let device = vec![2, 3];
        let start = t.block_start(&device);
        PollDevice {
            index: 0,
            table_index: 0,
            endpoint: "bms".into(),
            unit: 1,
            block_start: start as u16,
            requests: t.requests(start),
            sunspec: None,
            table: Arc::new(t),
            device,
        }
    }

    #[test]
    fn ingest_random_replies_are_decoded_or_refused_never_a_panic() {
        let dev = rack();
        let r = &dev.requests[0];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut ok, mut refused) = (0, 0);
        for _ in 0..20_000 {
            let len = match next() % 4 {
                0 => usize::from(r.count),
                _ => (next() % 260) as usize,
            };
            let words: Vec<u16> = (0..len).map(|_| next() as u16).collect();
            let mut values = vec![None; dev.table.fields.len()];
            match decode_reply(&dev, r, &words, &mut values) {
                Ok(()) => {
                    ok += 1;
                    assert!(values.iter().flatten().all(|v| v.as_f64().is_finite()));
                }
                Err(_) => {
                    refused += 1;
                    assert_ne!(words.len(), usize::from(r.count));
                }
            }
        }
        assert!(
            ok > 1000 && refused > 1000,
            "{ok} decoded, {refused} refused"
        );
    }

    /// A "device" that answers every request with random bytes over real TCP.
    #[tokio::test]
    async fn ingest_random_bytes_from_a_device_are_an_error_never_a_panic() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut seed = 0xDEAD_BEEF_u64;
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 260];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let len = (seed >> 33) as usize % 300;
                    let mut reply: Vec<u8> = (0..len).map(|i| (seed >> (i % 57)) as u8).collect();
                    // Half the time, a plausible MBAP header echoing the request.
                    if seed & 1 == 0 && reply.len() >= 8 && n >= 8 {
                        reply[..2].copy_from_slice(&buf[..2]);
                        reply[2..4].fill(0);
                        reply[6..8].copy_from_slice(&buf[6..8]);
                    }
                    if s.write_all(&reply).await.is_err() {
                        break;
                    }
                }
            }
        });
        let dev = rack();
        let mut errors = 0;
        for _ in 0..80 {
            let client = Connection::open(&addr.to_string(), Duration::from_secs(1))
                .await
                .unwrap();
            if read_device(&client, &dev, Duration::from_millis(50))
                .await
                .is_err()
            {
                errors += 1;
            }
        }
        assert!(
            errors > 60,
            "random bytes were accepted as answers {} times",
            80 - errors
        );
    }

    #[test]
    fn ingest_order_serves_late_devices_first_and_failing_ones_last() {
        let dev = rack();
        let (tx, _rx) = mpsc::channel(1);
        let lane = Lane {
            addr: String::new(),
            number: 0,
            devices: vec![dev; 5],
            settings: LaneSettings {
                timeout: Duration::from_millis(100),
                interval_secs: 1,
                pipeline: 1,
                breaker_after: 3,
                stale_after: Duration::from_secs(600),
            },
            rows: tx,
            stats: Arc::new(Stats::new("s", vec![], &[])),
        };
        let mut state = vec![DeviceState::default(); 5];
        state[3].late = true;
        state[1].breaker.failed(Instant::now(), 3);
        assert_eq!(lane.order(&state, 0), vec![3, 0, 2, 4, 1]);
        // Without faults the start rotates, so no device is always last.
        let state = vec![DeviceState::default(); 5];
        let lasts: std::collections::BTreeSet<usize> = (0..5)
            .map(|r| *lane.order(&state, r).last().unwrap())
            .collect();
        assert_eq!(lasts.len(), 5);
    }
}
