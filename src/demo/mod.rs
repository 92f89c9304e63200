//! `essops demo`: the whole loop on this machine, on the shipped config.
//! Simulators for every site, migrate, ingest into every server while the
//! link to the second server is cut for the last stretch and a share of
//! Modbus requests go unanswered, then loss (the holes per server),
//! reconcile (repairing them), loss again (the servers agree on keys), cache warm,
//! and a report page of it all.

pub mod proxy;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{SecondsFormat, TimeZone, Utc};
use serde::Serialize;

use crate::cache;
use crate::context::Context;
use crate::error::{Error, Outcome};
use crate::ingest;
use crate::loss::{self, LossRow};
use crate::migrate;
use crate::output::{Report, Verbosity};
use crate::reconcile::{self, ReconcileRow};
use crate::report;
use crate::simulate::{self, faults::Faults};
use crate::window::{WindowArgs, parse_std_duration};

/// Share of Modbus requests the demo's simulators leave unanswered.
const DROP_RATE: f64 = 0.01;
/// The link to the second server is cut for this last part of the ingest.
const OUTAGE_SHARE: f64 = 0.4;

/// Run the whole loop here: simulators, migrate, ingest with faults, loss, reconcile, loss, cache warm.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// How long to ingest (e.g. 30s, 2m).
    #[arg(long, value_parser = parse_std_duration, default_value = "60s", value_name = "DURATION")]
    pub duration: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoRow {
    pub site: String,
    pub server: String,
    pub expected: i64,
    pub missing_before: i64,
    pub repaired: u64,
    pub missing_after: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    pub rows: Vec<DemoRow>,
    pub seconds: u64,
    pub outage_server: Option<String>,
    pub outage_secs: u64,
    pub polls_ok: u64,
    pub polls_failed: u64,
    pub spooled: u64,
    pub cache_keys: usize,
    pub log_dir: String,
    /// The page `essops report` wrote for the demo's window.
    pub report: String,
}

impl Report for DemoReport {
    type Row = DemoRow;
    const KIND: &'static str = "site_server";
    const HEADER: &'static str = "SITE|SERVER|EXPECTED|MISSING BEFORE|REPAIRED|MISSING AFTER";
    fn cells(r: &DemoRow) -> Vec<String> {
        vec![
            r.site.clone(),
            r.server.clone(),
            r.expected.to_string(),
            r.missing_before.to_string(),
            r.repaired.to_string(),
            r.missing_after.to_string(),
        ]
    }
    fn summary(&self) -> String {
        let repaired: u64 = self.rows.iter().map(|r| r.repaired).sum();
        let agree = self.servers_agree();
        let outage = match &self.outage_server {
            Some(s) => format!(
                "`{s}` was unreachable for the last {} s ({} rows spooled for it)",
                self.outage_secs, self.spooled
            ),
            None => "one server only: no outage injected".into(),
        };
        format!(
            "demo: {} sites, {} s of 1 Hz polling into every server; {outage}; {} polls answered, {} unanswered (injected).\n\
             reconcile copied {repaired} rows; {}.\n\
             cache: {} keys in Redis.\n\
             logs: {}\n\
             report: {} (open it in a browser)",
            self.rows
                .iter()
                .map(|r| &r.site)
                .collect::<std::collections::BTreeSet<_>>()
                .len(),
            self.seconds,
            self.polls_ok,
            self.polls_failed,
            match agree {
                true =>
                    "the servers now agree on keys (what is still missing on both is what the devices never answered)",
                false => "the servers still differ: see the table",
            },
            self.cache_keys,
            self.log_dir,
            self.report,
        )
    }
    fn outcome(&self) -> Outcome {
        match self.servers_agree() {
            true => Outcome::Clean,
            false => Outcome::Warning,
        }
    }
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

impl DemoReport {
    fn servers_agree(&self) -> bool {
        let mut by_site: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
        for r in &self.rows {
            by_site.entry(&r.site).or_default().push(r.missing_after);
        }
        by_site.values().all(|v| v.windows(2).all(|w| w[0] == w[1]))
    }
}

fn rfc3339(t: i64) -> String {
    Utc.timestamp_opt(t, 0)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn window(from: i64, to: i64) -> WindowArgs {
    WindowArgs {
        date: None,
        days: None,
        from: Some(rfc3339(from)),
        to: Some(rfc3339(to)),
    }
}

/// Missing samples per (site, server) from a loss report's table rows.
/// (expected, missing) samples per (site, server).
type Missing = BTreeMap<(String, String), (i64, i64)>;

fn missing(report: &loss::LossReport) -> Result<Missing, Error> {
    let mut out = Missing::new();
    for row in &report.rows {
        match row {
            LossRow::Table(t) => {
                let e = out.entry((t.site.clone(), t.server.clone())).or_default();
                e.0 += t.expected;
                e.1 += t.expected - t.observed;
            }
            LossRow::Failure(f) => {
                return Err(demo_error(format!(
                    "loss failed on {} / {}: {}",
                    f.site, f.server, f.error
                )));
            }
            LossRow::Device(_) => {}
        }
    }
    Ok(out)
}

/// A step of the demo that could not run (the services are not up, a task failed).
#[derive(Debug, thiserror::Error)]
#[error("demo: {0}")]
pub struct DemoError(String);

impl DemoError {
    pub fn exit_code(&self) -> u8 {
        crate::exit::code::UNAVAILABLE
    }
}

crate::into_error!(DemoError);

fn demo_error(message: String) -> Error {
    DemoError(message).into()
}

/// The second server, reached through a relay the demo can cut: the
/// context to run with (quiet, the relay in place of that server).
async fn with_relay(ctx: &Context) -> Result<(Context, Option<(String, proxy::Relay)>), Error> {
    let mut config = (*ctx.config).clone();
    let relay = match config.servers.get(1) {
        Some(s) => Some((
            s.name.clone(),
            proxy::Relay::start(format!("{}:{}", s.host, s.port))
                .await
                .map_err(|e| demo_error(format!("cannot start the relay: {e}")))?,
        )),
        None => None,
    };
    if let (Some((_, r)), Some(s)) = (&relay, config.servers.get_mut(1)) {
        // The relay listens on loopback; "localhost" keeps a verify-full host check meaningful.
        s.host = "localhost".into();
        s.port = r.port;
    }
    let ctx = Context {
        config: Arc::new(config),
        format: ctx.format,
        verbosity: Verbosity::Quiet,
        lock_wait: std::time::Duration::ZERO,
    };
    Ok((ctx, relay))
}

async fn migrate_all(ctx: &Context) -> Result<(), Error> {
    let args = migrate::MigrateArgs {
        select: Default::default(),
        create_database: true,
        dry_run: false,
        create_roles: false,
        timescale_policies: false,
    };
    let migrated = migrate::execute(migrate::plan(&args, ctx)?, ctx).await?;
    match migrated.outcome() {
        Outcome::Clean => Ok(()),
        _ => Err(demo_error(
            "migrate could not reach every server; run scripts/services.sh up".into(),
        )),
    }
}

/// What the ingest step did: its window (whole seconds) and totals.
struct Ingested {
    t0: i64,
    t1: i64,
    polls_ok: u64,
    polls_failed: u64,
    spooled: u64,
}

/// Simulators for every site, one ingest per site for `duration`, the relay
/// cut for the last part of it.
async fn ingest_with_cut(
    ctx: &Context,
    sites: &[crate::config::Site],
    duration: Duration,
    relay: Option<&proxy::Relay>,
) -> Result<Ingested, Error> {
    let faults = Faults {
        seed: 1,
        drop_rate: DROP_RATE,
        ..Faults::default()
    };
    let mut simulators = Vec::new();
    for site in sites {
        simulators.push(simulate::start(site, None, 1, faults.clone(), false).await?);
    }
    let t0 = Utc::now().timestamp() + 1;
    let mut ingests = tokio::task::JoinSet::new();
    for site in sites {
        let plan = ingest::plan(
            &ingest::IngestArgs::for_site(&site.name, Some(duration)),
            ctx,
        )?;
        let ctx = ctx.clone();
        ingests.spawn(async move {
            ingest::execute(plan, &ctx, std::future::pending(), Some(duration)).await
        });
    }
    if let Some(r) = relay {
        tokio::time::sleep(duration.mul_f64(1.0 - OUTAGE_SHARE)).await;
        r.cut();
    }
    let mut done = Ingested {
        t0,
        t1: 0,
        polls_ok: 0,
        polls_failed: 0,
        spooled: 0,
    };
    while let Some(joined) = ingests.join_next().await {
        let report = joined.map_err(|e| demo_error(format!("ingest task failed: {e}")))??;
        if let Some(first) = report.rows.first() {
            done.polls_ok += first.polls_ok;
            done.polls_failed += first.polls_failed;
        }
        done.spooled += report.rows.iter().map(|r| r.spool_pending).sum::<u64>();
    }
    done.t1 = Utc::now().timestamp();
    for s in simulators {
        s.stop();
    }
    if let Some(r) = relay {
        r.restore();
    }
    Ok(done)
}

/// Missing samples per (site, server) over the window.
async fn measure(ctx: &Context, t0: i64, t1: i64) -> Result<Missing, Error> {
    let args = loss::LossArgs {
        select: Default::default(),
        tables: Default::default(),
        window: window(t0, t1),
        output: None,
    };
    missing(&loss::execute(loss::plan(&args, ctx, Utc::now())?, ctx).await?)
}

/// Reconciles the window; rows copied per (site, server).
async fn repair(ctx: &Context, t0: i64, t1: i64) -> Result<BTreeMap<(String, String), u64>, Error> {
    let args = reconcile::ReconcileArgs {
        select: Default::default(),
        tables: Default::default(),
        window: window(t0, t1),
        direction: "both".into(),
        min_age: "0".into(),
        dry_run: false,
        compare: reconcile::Compare::Keys,
        prefer: None,
        verify: reconcile::Verify::Inserts,
        exit_code: false,
    };
    let plan = reconcile::plan(&args, ctx, Utc::now())?;
    let rec = reconcile::execute(plan, ctx).await;
    let mut repaired: BTreeMap<(String, String), u64> = BTreeMap::new();
    for row in &rec.rows {
        match row {
            ReconcileRow::Table(t) => {
                *repaired
                    .entry((t.site.clone(), t.server_a.clone()))
                    .or_default() += t.counts.copied_to_a;
                *repaired
                    .entry((t.site.clone(), t.server_b.clone()))
                    .or_default() += t.counts.copied_to_b;
            }
            ReconcileRow::Failure(f) => {
                return Err(demo_error(format!(
                    "reconcile failed on {} / {}: {}",
                    f.site, f.table, f.error
                )));
            }
            ReconcileRow::Device(_) => {}
        }
    }
    Ok(repaired)
}

/// One row per (site, server): missing before, repaired, missing after.
fn rows(
    before: &Missing,
    repaired: &BTreeMap<(String, String), u64>,
    after: &Missing,
) -> Vec<DemoRow> {
    before
        .iter()
        .map(|((site, server), (expected, miss))| {
            let key = (site.clone(), server.clone());
            DemoRow {
                site: site.clone(),
                server: server.clone(),
                expected: *expected,
                missing_before: *miss,
                repaired: repaired.get(&key).copied().unwrap_or(0),
                missing_after: after.get(&key).map_or(-1, |a| a.1),
            }
        })
        .collect()
}

/// The whole loop, step by step: relay, migrate, simulate and ingest with a
/// cut link, loss, reconcile, loss again, cache warm.
pub async fn execute(args: &DemoArgs, ctx: &Context) -> Result<DemoReport, Error> {
    let announce = ctx.verbosity == Verbosity::Normal;
    let say = |m: String| {
        if announce {
            eprintln!("essops demo: {m}");
        }
    };
    let (ctx, relay) = with_relay(ctx).await?;
    let sites: Vec<_> = ctx
        .config
        .sites
        .iter()
        .filter(|s| !s.endpoints.is_empty())
        .cloned()
        .collect();
    say("migrating every site database on every server".into());
    migrate_all(&ctx).await?;
    let outage_secs = (args.duration.as_secs_f64() * OUTAGE_SHARE).round() as u64;
    let outage_server = relay.as_ref().map(|(n, _)| n.clone());
    say(format!(
        "simulating {} sites ({} % of requests unanswered), ingesting for {} s; {} will be unreachable for the last {outage_secs} s",
        sites.len(),
        DROP_RATE * 100.0,
        args.duration.as_secs(),
        outage_server
            .as_ref()
            .map_or("no server".into(), |n| format!("`{n}`")),
    ));
    let ingested =
        ingest_with_cut(&ctx, &sites, args.duration, relay.as_ref().map(|(_, r)| r)).await?;
    let (t0, t1) = (ingested.t0, ingested.t1);
    say(format!(
        "measuring loss for {} .. {}",
        rfc3339(t0),
        rfc3339(t1)
    ));
    let before = measure(&ctx, t0, t1).await?;
    say("reconciling the servers".into());
    let repaired = repair(&ctx, t0, t1).await?;
    let after = measure(&ctx, t0, t1).await?;
    say("warming the dashboard cache".into());
    let warm = cache::WarmArgs {
        sites: vec![],
        periods: vec![],
        full: false,
        raw: false,
    };
    let warmed = cache::warm(&warm, &ctx).await?;
    say("writing the report".into());
    let report = write_report(&ctx, t0, t1).await?;
    Ok(DemoReport {
        rows: rows(&before, &repaired, &after),
        seconds: args.duration.as_secs(),
        outage_server,
        outage_secs,
        polls_ok: ingested.polls_ok,
        polls_failed: ingested.polls_failed,
        spooled: ingested.spooled,
        cache_keys: warmed.rows.iter().map(|r| r.keys).sum(),
        log_dir: absolute(ctx.log_dir()),
        report,
    })
}

fn absolute(path: std::path::PathBuf) -> String {
    std::fs::canonicalize(&path)
        .unwrap_or(path)
        .display()
        .to_string()
}

/// `essops report` over the demo's window, to `report.html` in the log folder.
async fn write_report(ctx: &Context, t0: i64, t1: i64) -> Result<String, Error> {
    use crate::command::Command;
    let output = ctx.log_dir().join("report.html");
    let args = report::ReportArgs {
        sites: vec![],
        window: window(t0, t1),
        output: output.clone(),
    };
    let plan = args.plan(ctx).await?;
    report::ReportArgs::execute(plan, ctx).await?;
    Ok(absolute(output))
}

/// The demo's plan: its arguments, and the sites it ingests (each site's
/// ingest lock is held, so no other ingest of them runs meanwhile).
pub struct DemoPlan {
    args: DemoArgs,
    sites: Vec<String>,
}

impl crate::command::Plan for DemoPlan {
    fn locks(&self) -> Vec<crate::lock::LockKey> {
        let mut locks = vec![crate::lock::LockKey::site("demo", "all")];
        locks.extend(crate::command::site_locks("ingest", &self.sites));
        locks
    }
}

impl crate::command::Command for DemoArgs {
    type Plan = DemoPlan;
    type Report = DemoReport;
    async fn plan(self, ctx: &Context) -> Result<DemoPlan, Error> {
        let sites = ctx.config.sites.iter().map(|s| s.name.clone()).collect();
        Ok(DemoPlan { args: self, sites })
    }
    async fn execute(plan: DemoPlan, ctx: &Context) -> Result<DemoReport, Error> {
        execute(&plan.args, ctx).await
    }
}

/// `essops relay`: serve a delayed (and rate-limited) relay until killed.
#[derive(Debug, clap::Args)]
pub struct RelayArgs {
    /// Loopback port to listen on.
    #[arg(long)]
    pub port: u16,
    /// Where to relay to, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    pub to: String,
    /// Added each way (15ms each way is a 30 ms round trip).
    #[arg(long, value_parser = crate::window::parse_std_duration, default_value = "15ms", value_name = "DURATION")]
    pub delay: std::time::Duration,
    /// At most this many kilobits a second each way (1000: a 1 Mbit/s uplink).
    #[arg(long, value_name = "KBIT")]
    pub kbit_per_sec: Option<u64>,
}

pub fn relay(args: &RelayArgs) -> Result<crate::error::Outcome, Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::Output)?;
    runtime.block_on(async {
        let shape = proxy::Shape {
            delay: args.delay,
            rate: args.kbit_per_sec.map(|k| k * 1000 / 8),
        };
        let _relay = proxy::Relay::start_shaped(args.port, args.to.clone(), shape)
            .await
            .map_err(|e| demo_error(format!("relay on 127.0.0.1:{}: {e}", args.port)))?;
        let _ = crate::command::shutdown_signal().await;
        Ok(crate::error::Outcome::Clean)
    })
}
