//! `essops simulate`: a Modbus TCP server that behaves like a site's BMS and
//! PCS under the site's register map, for tests, demos and commissioning.
//!
//! Values come from [`model::Model`] (deterministic for a seed); faults from
//! [`faults::Faults`]. Each configured endpoint address gets one listener
//! (endpoints that share an address share its register space).

pub mod faults;
pub mod model;
pub mod space;
pub mod sunspec;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio_modbus::prelude::{ExceptionCode, Request, Response, SlaveRequest};

use self::faults::{Expiring, Fate, Faults, Gateway, Slot};
use self::model::Model;
use self::space::Space;
use crate::config::Site;
use crate::context::Context;
use crate::exit::{Outcome, code as exit};
use crate::modbus::map::RegisterKind;
use crate::output::{Report, Verbosity};
use crate::schema::DeviceRange;
use crate::window::parse_std_duration;

/// Serve a site's BMS and PCS registers over Modbus TCP with plausible, seeded values.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// The site to behave like (its devices, register map and endpoints).
    #[arg(long)]
    pub site: String,
    /// Serve every endpoint of the site on this one address instead of the configured ones.
    #[arg(long, value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Values and faults are a function of the seed and the second.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Share of requests left unanswered (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub drop_rate: f64,
    /// Share of requests answered with a "device busy" exception (0 to 1).
    #[arg(long, default_value_t = 0.0, value_parser = rate)]
    pub exception_rate: f64,
    /// Close every connection this long after it opens (e.g. 30s).
    #[arg(long, value_parser = parse_std_duration, value_name = "DURATION")]
    pub disconnect_every: Option<Duration>,
    /// Delay every answer by this much (e.g. 20ms).
    #[arg(long, value_parser = parse_std_duration, default_value = "0ms", value_name = "DURATION")]
    pub latency: Duration,
    /// Stop after this long (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_parser = parse_std_duration, value_name = "DURATION")]
    pub duration: Option<Duration>,
    /// Devices that never answer (repeatable), e.g. rack:1.1-1.5, bank:2, pcs:1.
    #[arg(long, value_parser = DeviceRange::parse, value_name = "DEVICES")]
    pub dead: Vec<DeviceRange>,
    /// Devices whose registers stay as they were at start (repeatable), as --dead.
    #[arg(long, value_parser = DeviceRange::parse, value_name = "DEVICES")]
    pub frozen: Vec<DeviceRange>,
    /// Behave like a Modbus TCP gateway: one serial bus shared by all
    /// connections, --bus-time per request, --gateway-timeout then exception
    /// 0x0B for a device that does not answer (dead or dropped).
    #[arg(long)]
    pub gateway: bool,
    /// With --gateway: TCP connections accepted at once.
    #[arg(long, default_value_t = 2, requires = "gateway")]
    pub gateway_connections: usize,
    /// With --gateway: how long one request holds the bus.
    #[arg(long, value_parser = parse_std_duration, default_value = "3ms", value_name = "DURATION", requires = "gateway")]
    pub bus_time: Duration,
    /// With --gateway: how long the gateway waits for a device before answering 0x0B.
    #[arg(long, value_parser = parse_std_duration, default_value = "100ms", value_name = "DURATION", requires = "gateway")]
    pub gateway_timeout: Duration,
    /// SunSpec site: where these devices' "SunS" marker is (repeatable),
    /// e.g. bank:2=0 (40000, 0 or 50000; default 40000).
    #[arg(long, value_parser = sunspec::parse_base, value_name = "DEVICES=ADDR")]
    pub sunspec_base: Vec<(DeviceRange, u16)>,
    /// SunSpec site: how these devices' chains end (repeatable), e.g.
    /// pcs:1=exception: end (0xFFFF, the default), zero, or exception.
    #[arg(long, value_parser = sunspec::parse_end, value_name = "DEVICES=END")]
    pub sunspec_end: Vec<(DeviceRange, sunspec::ChainEnd)>,
    /// SunSpec site: batteries that give their strings only in 803's
    /// string group, with no 804 model (repeatable), e.g. bank:2.
    #[arg(long, value_parser = DeviceRange::parse, value_name = "DEVICES")]
    pub sunspec_strings_in_803: Vec<DeviceRange>,
    /// SunSpec site: switch the scale factors of -1 to -2 and back this often (e.g. 3s).
    #[arg(long, value_parser = parse_std_duration, value_name = "DURATION")]
    pub sunspec_sf_period: Option<Duration>,
}

/// A share on the command line that is not between 0 and 1.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a share between 0 and 1")]
pub struct RateError(String);

fn rate(s: &str) -> Result<f64, RateError> {
    match s.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        _ => Err(RateError(s.to_string())),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SimulateError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(
        "site `{0}` has no Modbus endpoints; add `modbus = {{ bms = \"HOST:PORT\", pcs = \"HOST:PORT\" }}` to its [[sites]] entry"
    )]
    NoEndpoints(String),
    #[error("cannot listen on {addr} for {endpoints}: {source}")]
    Bind {
        addr: String,
        endpoints: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the endpoints share {addr} but their register blocks collide: {source}")]
    Overlap {
        addr: String,
        source: crate::modbus::map::PlacementError,
    },
}

impl SimulateError {
    pub fn exit_code(&self) -> u8 {
        match self {
            SimulateError::Bind { .. } => exit::UNAVAILABLE,
            _ => exit::CONFIG,
        }
    }
}

crate::into_error!(SimulateError);

/// One listener: an address and the endpoints it serves.
#[derive(Debug, Clone)]
pub struct Listener {
    pub addr: String,
    pub endpoints: Vec<String>,
}

/// The listeners for a site: its configured endpoints grouped by address,
/// or all on `listen`.
pub fn listeners(site: &Site, listen: Option<&str>) -> Result<Vec<Listener>, SimulateError> {
    if site.endpoints.is_empty() {
        return Err(SimulateError::NoEndpoints(site.name.clone()));
    }
    let mut by_addr: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in &site.endpoints {
        let addr = listen.unwrap_or(&e.addr).to_string();
        by_addr.entry(addr).or_default().push(e.name.clone());
    }
    if let Some(addr) = listen {
        crate::modbus::map::check_devices(
            &site.register_map,
            |s| site.placed_devices(s),
            |_| Some(addr.to_string()),
        )
        .map_err(|source| SimulateError::Overlap {
            addr: addr.to_string(),
            source,
        })?;
    }
    Ok(by_addr
        .into_iter()
        .map(|(addr, endpoints)| Listener { addr, endpoints })
        .collect())
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    answered: AtomicU64,
    dropped: AtomicU64,
    exceptions: AtomicU64,
    /// Microseconds a gateway's bus was held.
    bus_busy_us: AtomicU64,
}

#[derive(Clone)]
struct SimService {
    space: Arc<Space>,
    model: Arc<Model>,
    faults: Arc<Faults>,
    interval: i64,
    /// The second the simulator started: what frozen devices keep serving.
    started: i64,
    counters: Arc<Counters>,
    /// The gateway's serial bus (one per listener).
    bus: Arc<tokio::sync::Mutex<()>>,
}

type Answer = Result<Option<Response>, ExceptionCode>;

impl SimService {
    fn answer(&self, req: &SlaveRequest<'_>) -> Answer {
        let (kind, addr, count) = match req.request {
            Request::ReadHoldingRegisters(a, n) => (RegisterKind::Holding, a, n),
            Request::ReadInputRegisters(a, n) => (RegisterKind::Input, a, n),
            Request::ReadCoils(a, n) => (RegisterKind::Coil, a, n),
            Request::ReadDiscreteInputs(a, n) => (RegisterKind::Discrete, a, n),
            _ => return Err(ExceptionCode::IllegalFunction),
        };
        if count == 0 || count > kind.max_read() {
            return Err(ExceptionCode::IllegalDataValue);
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let t = now - now.rem_euclid(self.interval);
        match self.faults.fate(req.slave, kind, addr, t) {
            Fate::Drop => return Ok(None),
            Fate::Exception => return Err(ExceptionCode::ServerDeviceBusy),
            Fate::Answer => {}
        }
        if let Some(sun) = &self.space.sun {
            if kind != RegisterKind::Holding {
                return Err(ExceptionCode::IllegalFunction);
            }
            let words = sun
                .read(&self.model, req.slave, addr, count, t)
                .ok_or(ExceptionCode::IllegalDataAddress)?;
            return Ok(Some(Response::ReadHoldingRegisters(words)));
        }
        let block = self
            .space
            .find(req.slave, kind, addr, count)
            .ok_or(ExceptionCode::IllegalDataAddress)?;
        if self.faults.is_dead(&block.table.spec, &block.device) {
            return Ok(None);
        }
        let t = match self.faults.is_frozen(&block.table.spec, &block.device) {
            true => self.started - self.started.rem_euclid(self.interval),
            false => t,
        };
        let words = block.words(&self.model, kind, t);
        let from = usize::from(addr - block.start);
        let words = words[from..from + usize::from(count)].to_vec();
        Ok(Some(match kind {
            RegisterKind::Holding => Response::ReadHoldingRegisters(words),
            RegisterKind::Input => Response::ReadInputRegisters(words),
            RegisterKind::Coil => Response::ReadCoils(bits(&words)),
            RegisterKind::Discrete => Response::ReadDiscreteInputs(bits(&words)),
        }))
    }
}

/// A bit space's words (one per bit, 0 or 1) as the bits tokio-modbus packs.
fn bits(words: &[u16]) -> Vec<bool> {
    words.iter().map(|w| *w & 1 == 1).collect()
}

impl tokio_modbus::server::Service for SimService {
    type Request = SlaveRequest<'static>;
    type Response = Option<Response>;
    type Exception = ExceptionCode;
    type Future = Pin<Box<dyn Future<Output = Answer> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        self.counters.requests.fetch_add(1, Relaxed);
        let answer = self.answer(&req);
        let counter = match &answer {
            Ok(Some(_)) => &self.counters.answered,
            Ok(None) => &self.counters.dropped,
            Err(_) => &self.counters.exceptions,
        };
        counter.fetch_add(1, Relaxed);
        let latency = self.faults.latency;
        let gateway = self.faults.gateway.map(|g| (g, self.bus.clone()));
        let counters = self.counters.clone();
        Box::pin(async move {
            let answer = match gateway {
                Some((g, bus)) => on_the_bus(g, &bus, answer, &counters).await,
                None => answer,
            };
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            answer
        })
    }
}

/// A gateway's turn on its serial bus: a request holds the bus for the bus
/// time, one the device leaves unanswered for the gateway's timeout, which
/// then answers 0x0B. Sleeps off the async threads: the bus times are a few
/// ms, below tokio's timer resolution.
async fn on_the_bus(
    g: Gateway,
    bus: &tokio::sync::Mutex<()>,
    answer: Answer,
    counters: &Counters,
) -> Answer {
    let _turn = bus.lock().await;
    let held = std::time::Instant::now();
    let (hold, answer) = match answer {
        Ok(None) => (g.timeout, Err(ExceptionCode::GatewayTargetDevice)),
        other => (g.bus_time, other),
    };
    let _ = tokio::task::spawn_blocking(move || std::thread::sleep(hold)).await;
    counters
        .bus_busy_us
        .fetch_add(held.elapsed().as_micros() as u64, Relaxed);
    answer
}

/// Binds every listener of the plan; fails before serving anything if one cannot bind.
async fn bind(
    site: &Site,
    listeners: &[Listener],
    sunspec: &sunspec::SunSpecOptions,
) -> Result<Vec<(Listener, tokio::net::TcpListener, Arc<Space>)>, SimulateError> {
    let mut out = Vec::new();
    for l in listeners {
        let socket = tokio::net::TcpListener::bind(&l.addr)
            .await
            .map_err(|source| SimulateError::Bind {
                addr: l.addr.clone(),
                endpoints: l.endpoints.join(", "),
                source,
            })?;
        let names: Vec<&str> = l.endpoints.iter().map(String::as_str).collect();
        out.push((
            l.clone(),
            socket,
            Arc::new(Space::new(site, &names, sunspec)),
        ));
    }
    Ok(out)
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointRow {
    pub site: String,
    pub endpoints: String,
    pub addr: String,
    pub devices: usize,
    pub connections: u64,
    pub requests: u64,
    pub answered: u64,
    pub dropped: u64,
    pub exceptions: u64,
    /// Gateway mode: how long its bus was held, and that as a share of the time served.
    pub bus_busy_ms: Option<u64>,
    pub bus_busy_pct: Option<f64>,
}

pub type SimulateReport = crate::output::Rows<EndpointRow>;

impl Report for SimulateReport {
    type Row = EndpointRow;
    const KIND: &'static str = "simulated";
    const HEADER: &'static str =
        "SITE|ENDPOINT|ADDRESS|DEVICES|CONNECTIONS|REQUESTS|ANSWERED|DROPPED|EXCEPTIONS|BUS BUSY";
    fn cells(r: &EndpointRow) -> Vec<String> {
        let counts = [
            r.devices as u64,
            r.connections,
            r.requests,
            r.answered,
            r.dropped,
            r.exceptions,
        ];
        let mut cells = vec![r.site.clone(), r.endpoints.clone(), r.addr.clone()];
        cells.extend(counts.map(|n| n.to_string()));
        cells.push(r.bus_busy_pct.map_or("-".into(), |p| format!("{p:.1} %")));
        cells
    }
    fn summary(&self) -> String {
        let n: u64 = self.rows.iter().map(|r| r.requests).sum();
        format!("simulator stopped after {n} requests")
    }
    fn outcome(&self) -> Outcome {
        Outcome::Clean
    }
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

/// Simulators serving one site until stopped.
pub struct Running {
    site: String,
    started: std::time::Instant,
    gateway: bool,
    servers: tokio::task::JoinSet<()>,
    stats: Vec<(Listener, usize, Arc<Counters>)>,
}

impl Running {
    /// Stops serving and says what was served.
    pub fn stop(mut self) -> SimulateReport {
        self.servers.abort_all();
        SimulateReport {
            rows: self
                .stats
                .into_iter()
                .map(|(l, devices, c)| EndpointRow {
                    site: self.site.clone(),
                    endpoints: l.endpoints.join("+"),
                    addr: l.addr,
                    devices,
                    connections: c.connections.load(Relaxed),
                    requests: c.requests.load(Relaxed),
                    answered: c.answered.load(Relaxed),
                    dropped: c.dropped.load(Relaxed),
                    exceptions: c.exceptions.load(Relaxed),
                    bus_busy_ms: self.gateway.then(|| c.bus_busy_us.load(Relaxed) / 1000),
                    bus_busy_pct: self.gateway.then(|| {
                        let busy = c.bus_busy_us.load(Relaxed) as f64 / 1e6;
                        (1000.0 * busy / self.started.elapsed().as_secs_f64()).round() / 10.0
                    }),
                })
                .collect(),
        }
    }
}

/// Binds every listener of `site` and starts serving; fails before serving
/// anything if one address cannot be bound.
pub async fn start(
    site: &Site,
    listen: Option<&str>,
    seed: u64,
    faults: Faults,
    announce: bool,
) -> Result<Running, SimulateError> {
    let plan = listeners(site, listen)?;
    let bound = bind(site, &plan, &faults.sunspec).await?;
    let model = Arc::new(Model::new(site, seed));
    let faults = Arc::new(faults);
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut running = Running {
        site: site.name.clone(),
        started: std::time::Instant::now(),
        gateway: faults.gateway.is_some(),
        servers: tokio::task::JoinSet::new(),
        stats: Vec::new(),
    };
    for (l, socket, space) in bound {
        let counters = Arc::new(Counters::default());
        let service = SimService {
            space: space.clone(),
            model: model.clone(),
            faults: faults.clone(),
            interval: i64::from(site.sample_interval_secs),
            started,
            counters: counters.clone(),
            bus: Arc::default(),
        };
        if announce {
            eprintln!(
                "essops simulate: {} {} on {} ({} device blocks, seed {seed})",
                site.name,
                l.endpoints.join("+"),
                socket
                    .local_addr()
                    .map_or(l.addr.clone(), |a| a.to_string()),
                space.device_count(),
            );
        }
        tracing::info!(site = %site.name, endpoint = %l.endpoints.join("+"), addr = %l.addr, "simulator listening");
        running.stats.push((l, space.device_count(), counters));
        running.servers.spawn(serve(socket, service));
    }
    Ok(running)
}

/// Serves until `shutdown` resolves or `args.duration` passes.
pub async fn execute(
    args: &SimulateArgs,
    ctx: &Context,
    shutdown: impl Future<Output = ()>,
) -> Result<SimulateReport, SimulateError> {
    let site = ctx.config.site(&args.site)?.clone();
    let faults = Faults {
        seed: args.seed,
        drop_rate: args.drop_rate,
        exception_rate: args.exception_rate,
        disconnect_every: args.disconnect_every,
        latency: args.latency,
        dead: args.dead.clone(),
        frozen: args.frozen.clone(),
        gateway: args.gateway.then_some(Gateway {
            connections: args.gateway_connections.max(1),
            bus_time: args.bus_time,
            timeout: args.gateway_timeout,
        }),
        sunspec: sunspec::SunSpecOptions {
            base: args.sunspec_base.clone(),
            end: args.sunspec_end.clone(),
            strings_in_803: args.sunspec_strings_in_803.clone(),
            sf_period_secs: args.sunspec_sf_period.map_or(0, |d| d.as_secs() as i64),
        },
    };
    let running = start(
        &site,
        args.listen.as_deref(),
        args.seed,
        faults,
        ctx.verbosity == Verbosity::Normal,
    )
    .await?;
    let stop = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = shutdown => {}
        _ = stop => {}
    }
    Ok(running.stop())
}

async fn serve(socket: tokio::net::TcpListener, service: SimService) {
    let server = tokio_modbus::server::tcp::Server::new(socket);
    let disconnect_every = service.faults.disconnect_every;
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let on_connected = move |stream: tokio::net::TcpStream, _addr| {
        let service = service.clone();
        let slot = service
            .faults
            .gateway
            .map(|g| Slot::take(&open, g.connections));
        let accepted = match slot {
            Some(None) => None, // the gateway is at its connection limit
            slot => {
                service.counters.connections.fetch_add(1, Relaxed);
                let _ = stream.set_nodelay(true);
                Some((
                    service,
                    Expiring::new(stream, disconnect_every, slot.flatten()),
                ))
            }
        };
        async move { Ok(accepted) }
    };
    let on_error = |e: std::io::Error| tracing::debug!(error = %e, "simulator connection ended");
    if let Err(e) = server.serve(&on_connected, on_error).await {
        tracing::error!(error = %e, "simulator stopped accepting connections");
    }
}

impl crate::command::Command for SimulateArgs {
    type Plan = crate::command::Args<SimulateArgs>;
    type Report = SimulateReport;
    async fn plan(self, _ctx: &Context) -> Result<Self::Plan, crate::error::Error> {
        Ok(crate::command::Args(self))
    }
    async fn execute(
        plan: Self::Plan,
        ctx: &Context,
    ) -> Result<SimulateReport, crate::error::Error> {
        Ok(execute(&plan.0, ctx, crate::command::shutdown_signal()).await?)
    }
}
