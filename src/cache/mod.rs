//! `essops cache warm`: precompute what dashboards read most and store it in
//! Redis per site: the latest row per device, per-period aggregates, today's
//! loss per server and table, and outliers. See [`keys`] for the key schema.

pub mod keys;
pub mod outliers;
pub mod publish;
pub mod series;
pub mod source;
pub mod warm;

use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use self::keys::Keys;
use crate::config::{CachePeriod, ConfigError, Site};
use crate::context::Context;
use crate::exit::{Outcome, code as exit};
use crate::output::Report;
use crate::schema::TABLES;

#[derive(Debug, clap::Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    pub command: CacheCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum CacheCommand {
    /// Precompute dashboard data (latest values, period aggregates, loss, outliers) into Redis.
    Warm(WarmArgs),
}

#[derive(Debug, clap::Args)]
pub struct WarmArgs {
    /// Only these sites (repeatable; default: all).
    #[arg(long = "site", value_name = "NAME")]
    pub sites: Vec<String>,
    /// Only these periods (repeatable; default: all configured).
    #[arg(long = "period", value_name = "NAME")]
    pub periods: Vec<String>,
    /// Re-read every period whole instead of only the recent data (after a
    /// reconcile filled old holes, say).
    #[arg(long)]
    pub full: bool,
    /// Read raw rows only, not the rollups up to their mark (to compare the
    /// two, or while the rollups are suspect).
    #[arg(long)]
    pub raw: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}; nothing was written")]
    Connect(#[from] crate::redis_client::RedisError),
    #[error("unknown period `{name}` (configured: {known})")]
    UnknownPeriod { name: String, known: String },
    #[error("Redis at {addr} is unavailable: {reason}; nothing was written")]
    Redis { addr: String, reason: String },
}

impl CacheError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CacheError::Redis { .. }
            | CacheError::Connect(crate::redis_client::RedisError::Unavailable { .. }) => {
                exit::UNAVAILABLE
            }
            _ => exit::CONFIG,
        }
    }
}

crate::into_error!(CacheError);

pub type WarmReport = crate::output::Rows<SiteRow>;

#[derive(Debug, Clone, Serialize)]
pub struct SiteRow {
    pub site: String,
    /// `incremental`, `full`, or `kept` (the database failed; the previous cache stays).
    pub mode: String,
    /// Keys written (the meta key included), and their bytes.
    pub keys: usize,
    pub bytes: u64,
    /// Devices flagged as outliers in the finest period.
    pub outliers: usize,
    pub millis: u64,
    /// Why the previous cache was kept, or what could not be measured.
    pub error: Option<String>,
}

impl Report for WarmReport {
    type Row = SiteRow;
    const KIND: &'static str = "site";
    const HEADER: &'static str = "SITE|MODE|KEYS|BYTES|OUTLIERS|MS";
    fn cells(r: &SiteRow) -> Vec<String> {
        vec![
            r.site.clone(),
            r.mode.clone(),
            r.keys.to_string(),
            crate::output::human_bytes(r.bytes),
            r.outliers.to_string(),
            r.millis.to_string(),
        ]
    }
    fn problem(r: &SiteRow) -> Option<String> {
        r.error.clone()
    }
    fn summary(&self) -> String {
        let keys: usize = self.rows.iter().map(|r| r.keys).sum();
        let kept = self.rows.iter().filter(|r| r.mode == "kept").count();
        match kept {
            0 => format!("{keys} keys written for {} sites", self.rows.len()),
            n => format!(
                "{keys} keys written; {n} sites kept their previous cache (database unavailable)"
            ),
        }
    }
    fn outcome(&self) -> Outcome {
        match self.rows.iter().any(|r| r.error.is_some()) {
            true => Outcome::Partial,
            false => Outcome::Clean,
        }
    }
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

fn select_periods(ctx: &Context, names: &[String]) -> Result<Vec<CachePeriod>, CacheError> {
    let all = &ctx.config.cache.periods;
    names
        .iter()
        .map(|n| {
            all.iter()
                .find(|p| &p.name == n)
                .cloned()
                .ok_or_else(|| CacheError::UnknownPeriod {
                    name: n.clone(),
                    known: all
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(|v| if v.is_empty() { all.clone() } else { v })
}

pub async fn warm(args: &WarmArgs, ctx: &Context) -> Result<WarmReport, CacheError> {
    let sites: Vec<Site> = ctx
        .config
        .select_sites(&args.sites)?
        .into_iter()
        .cloned()
        .collect();
    let periods = select_periods(ctx, &args.periods)?;
    let con = crate::redis_client::connect(&ctx.config).await?;
    let addr = crate::redis_client::addr(&ctx.config);
    let redis_err = |reason: String| CacheError::Redis {
        addr: addr.clone(),
        reason,
    };
    let now = chrono::Utc::now().timestamp();
    let run = format!("{now}-{}", std::process::id());
    let results = crate::tasks::run_in_order(
        sites,
        |site| {
            let (ctx, periods, mut con, run) =
                (ctx.clone(), periods.clone(), con.clone(), run.clone());
            let mode = warm::Mode {
                full: args.full,
                raw: args.raw,
            };
            async move { warm_one(&ctx, &site, &periods, &mut con, &run, mode, now).await }
        },
        || {},
    )
    .await;
    let rows = results
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| redis_err(e.to_string()))?;
    Ok(WarmReport { rows })
}

/// The aggregate keys of `periods` for every table.
fn agg_keys<'a>(keys: &Keys, periods: impl Iterator<Item = &'a CachePeriod>) -> Vec<String> {
    periods
        .flat_map(|p| TABLES.iter().map(|t| keys.agg(&p.name, t.name)))
        .collect()
}

/// Warms one site; a database failure keeps its previous cache (and is
/// reported in the row), a Redis failure is the caller's error.
async fn warm_one(
    ctx: &Context,
    site: &Site,
    periods: &[CachePeriod],
    con: &mut crate::redis_client::Connection,
    run: &str,
    mode: warm::Mode,
    now: i64,
) -> redis::RedisResult<SiteRow> {
    let started = Instant::now();
    let keys = Keys::new(&site.name);
    let settings = &ctx.config.cache;
    let mut wanted = agg_keys(&keys, periods.iter());
    wanted.push(keys.loss());
    let prev = publish::read_previous(con, &keys, &wanted).await?;
    let mut row = SiteRow {
        site: site.name.clone(),
        mode: String::new(),
        keys: 0,
        bytes: 0,
        outliers: 0,
        millis: 0,
        error: None,
    };
    match warm::warm_site(&ctx.config, settings, site, periods, &prev, mode, now).await {
        Err(e) => {
            tracing::warn!(site = %site.name, server = %settings.source, error = %e, "cache warm skipped: the previous cache is kept");
            row.mode = "kept".into();
            row.error = Some(format!("database unavailable, previous cache kept: {e}"));
        }
        Ok(cache) => {
            row.bytes = publish_site(ctx, site, periods, &prev, con, &cache, (run, now)).await?;
            row.mode = match cache.incremental {
                true => "incremental",
                false => "full",
            }
            .into();
            row.keys = cache.entries.len() + 1;
            row.outliers = cache.outliers.len();
            if !cache.loss_failures.is_empty() {
                row.error = Some(format!(
                    "loss not measured on: {}",
                    cache.loss_failures.join(", ")
                ));
            }
            for o in &cache.outliers {
                tracing::warn!(target: crate::logging::REPORT_TARGET, level = "warning", site = %site.name, table = %o.table, device = %o.device,
                    measure = %o.measure, kind = o.kind, at = o.at, value = o.value, reference = o.reference, by = o.by, "outlier");
            }
        }
    }
    row.millis = started.elapsed().as_millis() as u64;
    Ok(row)
}

/// Publishes one site's new entries with its meta key; the keys of periods
/// not warmed this run are kept. Returns the bytes written.
async fn publish_site(
    ctx: &Context,
    site: &Site,
    periods: &[CachePeriod],
    prev: &warm::Previous,
    con: &mut crate::redis_client::Connection,
    cache: &warm::SiteCache,
    (run, now): (&str, i64),
) -> redis::RedisResult<u64> {
    let settings = &ctx.config.cache;
    let keys = Keys::new(&site.name);
    let kept_periods = agg_keys(
        &keys,
        settings.periods.iter().filter(|p| !periods.contains(p)),
    );
    let keep: Vec<String> = prev
        .keys
        .iter()
        .filter(|k| kept_periods.contains(k))
        .cloned()
        .collect();
    let meta = json!({
        "version": keys::VERSION,
        "site": site.name,
        "warmed_at": now,
        "source": settings.source,
        "periods": periods.iter().map(|p| json!({"name": p.name, "span_secs": p.span_secs, "bucket_secs": p.bucket_secs, "ttl_secs": p.ttl_secs})).collect::<Vec<_>>(),
        "sources": cache.sources,
        "rerolls_seen": cache.rerolls_seen,
    });
    publish::publish(con, &keys, run, &cache.entries, &prev.keys, &keep, meta).await
}

/// `cache warm`'s plan: its arguments and the sites it locks.
pub struct WarmPlan {
    args: WarmArgs,
    sites: Vec<String>,
}

impl crate::command::Plan for WarmPlan {
    fn locks(&self) -> Vec<crate::lock::LockKey> {
        crate::command::site_locks("cache-warm", &self.sites)
    }
}

impl crate::command::Command for WarmArgs {
    type Plan = WarmPlan;
    type Report = WarmReport;
    async fn plan(self, ctx: &Context) -> Result<WarmPlan, crate::error::Error> {
        let sites = ctx.config.select_sites(&self.sites)?;
        let sites = sites.iter().map(|s| s.name.clone()).collect();
        Ok(WarmPlan { args: self, sites })
    }
    async fn execute(plan: WarmPlan, ctx: &Context) -> Result<WarmReport, crate::error::Error> {
        Ok(warm(&plan.args, ctx).await?)
    }
}

/// `essops cache …`: each subcommand through the one command shape.
pub async fn run(
    args: CacheArgs,
    ctx: &Context,
) -> Result<crate::exit::Outcome, crate::error::Error> {
    match args.command {
        CacheCommand::Warm(w) => crate::command::run(w, ctx).await,
    }
}
