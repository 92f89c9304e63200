//! Building one site's cache entries: incremental by default (each run
//! re-reads only the last `recheck` of data, and the windows `essops rollup`
//! re-rolled since the last run, and reuses older buckets from the cache it
//! wrote before), whole with `--full` or when nothing reusable is there.
//!
//! A period's buckets come from a finer period built in the same run when
//! one covers them; otherwise the database aggregates them to the period's
//! own buckets, from the rollups up to their mark and raw rows after it
//! (raw rows only with `--raw`, or where the rollups cannot serve).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::keys::Keys;
use super::outliers::{self, Outlier};
use super::series::{
    self, Bucket, BucketsJson, Devices, bucket_from_json, bucket_start, bucket_starts, rebucket,
    tiles,
};
use super::source::{self, Rollups};
use crate::config::{CachePeriod, CacheSettings, Config, ConfigError, Site};
use crate::db::{self, DbError, Target};
use crate::schema::TableSpec;

/// One key to write: its value and TTL (seconds; 0 = none).
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub ttl: i64,
}

/// Re-rolls recorded this long before the last warm's look are read again:
/// a re-roll's transaction may commit a moment after it took its time.
const REROLL_MARGIN: i64 = 60;

/// How a warm reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mode {
    /// Every period's whole window, not only what changed.
    pub full: bool,
    /// Raw rows only, not the rollups.
    pub raw: bool,
}

/// What the previous warm left, as read from Redis.
#[derive(Debug, Default)]
pub struct Previous {
    pub warmed_at: Option<i64>,
    /// The source server's clock when it last looked for re-rolled windows.
    pub rerolls_seen: Option<i64>,
    /// The keys its meta listed.
    pub keys: Vec<String>,
    /// Raw JSON by key (period aggregates and loss).
    pub values: BTreeMap<String, Value>,
}

#[derive(Debug, Default)]
pub struct SiteCache {
    pub entries: Vec<Entry>,
    pub outliers: Vec<Outlier>,
    pub incremental: bool,
    /// Servers whose loss summary could not be measured.
    pub loss_failures: Vec<String>,
    /// Per table: what each period was read from (for the meta key).
    pub sources: serde_json::Map<String, Value>,
    /// The source server's clock when this warm looked for re-rolls.
    pub rerolls_seen: Option<i64>,
}

/// One period's series of one table after this warm.
struct Built {
    period: CachePeriod,
    /// First bucket start of the period's window.
    window: i64,
    devices: Devices,
}

/// Why a site could not be warmed from its source server (its previous
/// cache stays).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
}

/// What every table of one site's warm shares.
struct Warm<'a> {
    client: tokio_postgres::Client,
    settings: &'a CacheSettings,
    site: &'a Site,
    /// Finest first.
    periods: Vec<CachePeriod>,
    prev: &'a Previous,
    keys: Keys,
    /// Where rebuilding starts; `None` rebuilds everything.
    recheck_from: Option<i64>,
    /// Per table, the earliest window re-rolled since the last warm.
    rerolled: BTreeMap<String, i64>,
    raw: bool,
    now: i64,
}

impl Warm<'_> {
    fn query_error(&self, what: String, e: &tokio_postgres::Error) -> DbError {
        DbError::query(&self.settings.source, &self.site.database, what, e)
    }

    fn finest_ttl(&self) -> i64 {
        self.periods.first().map_or(600, |p| p.ttl_secs)
    }
}

pub async fn warm_site(
    config: &Config,
    settings: &CacheSettings,
    site: &Site,
    periods: &[CachePeriod],
    prev: &Previous,
    mode: Mode,
    now: i64,
) -> Result<SiteCache, SourceError> {
    let server = config.server(&settings.source)?;
    let target = Target {
        server,
        database: &site.database,
    };
    let client = db::connect(config, target).await?;
    // Full builds group days of rows; keep their sorts in memory.
    db::set_grouping_memory(&client)
        .await
        .map_err(|e| DbError::query(&server.name, &site.database, "setting work_mem", &e))?;
    let mut sorted: Vec<CachePeriod> = periods.to_vec();
    sorted.sort_by_key(|p| (p.bucket_secs, p.span_secs));
    let recheck_from = match (mode.full, prev.warmed_at) {
        (false, Some(at)) => Some(bucket_start(
            at.min(now) - settings.recheck_secs,
            60,
            site.timezone,
        )),
        _ => None,
    };
    let since = prev.rerolls_seen.or(prev.warmed_at).unwrap_or(0) - REROLL_MARGIN;
    let (rerolled, rerolls_seen) = source::rerolled_since(&client, since).await.map_err(|e| {
        DbError::query(
            &server.name,
            &site.database,
            "reading re-rolled windows",
            &e,
        )
    })?;
    let warm = Warm {
        client,
        settings,
        site,
        periods: sorted,
        prev,
        keys: Keys::new(&site.name),
        recheck_from,
        rerolled,
        raw: mode.raw,
        now,
    };
    let mut cache = SiteCache {
        incremental: recheck_from.is_some(),
        rerolls_seen,
        ..SiteCache::default()
    };
    for spec in warm.site.tables() {
        warm_table(&warm, &spec, &mut cache).await?;
    }
    let (loss, loss_failures) = loss_summary(config, &warm).await;
    cache.loss_failures = loss_failures;
    cache.entries.push(Entry {
        key: warm.keys.loss(),
        value: loss.to_string(),
        ttl: 3600,
    });
    cache.entries.push(Entry {
        key: warm.keys.outliers(),
        value: json!({ "warmed_at": now, "factor": settings.outlier_factor, "outliers": cache.outliers })
            .to_string(),
        ttl: warm.finest_ttl(),
    });
    Ok(cache)
}

/// One table's entries (every period's aggregates and its latest rows),
/// outliers and sources; a table the server does not have is skipped.
async fn warm_table(
    warm: &Warm<'_>,
    spec: &TableSpec,
    cache: &mut SiteCache,
) -> Result<(), DbError> {
    let (settings, keys) = (warm.settings, &warm.keys);
    let columns = crate::catalog::columns(
        &warm.client,
        &settings.source,
        &warm.site.database,
        spec.name,
    )
    .await?;
    if columns.is_empty() {
        return Ok(());
    }
    let measures = source::measures(spec, &columns);
    let rollups = match warm.raw {
        true => Rollups::Raw("--raw".into()),
        false => source::rollups(&warm.client, spec, &measures)
            .await
            .map_err(|e| warm.query_error(format!("reading `{}`'s rollup mark", spec.name), &e))?,
    };
    let (built, read) = build_periods(warm, spec, &measures, &rollups)
        .await
        .map_err(|e| warm.query_error(format!("aggregating `{}`", spec.name), &e))?;
    cache.sources.insert(spec.name.into(), read);
    let (entries, found) = (&mut cache.entries, &mut cache.outliers);
    for b in &built {
        entries.push(Entry {
            key: keys.agg(&b.period.name, spec.name),
            value: period_json(b, &measures, warm.now),
            ttl: b.period.ttl_secs,
        });
    }
    if let Some(finest) = built.first() {
        if spec.table.has_bank_peers() {
            found.extend(outliers::bank_outliers(
                &finest.devices,
                &measures,
                settings.outlier_factor,
            ));
        }
        found.extend(outliers::limit_outliers(
            spec.name,
            &finest.devices,
            &measures,
            &settings.limits,
        ));
    }
    let recent = warm.now - 3600;
    let latest = source::latest(&warm.client, spec, &spec.devices(warm.site), recent)
        .await
        .map_err(|e| warm.query_error(format!("reading the latest `{}` rows", spec.name), &e))?;
    entries.push(Entry {
        key: keys.latest(spec.name),
        value: serde_json::to_string(&latest).unwrap_or_default(),
        ttl: warm.finest_ttl(),
    });
    Ok(())
}

/// The previous value's buckets of one period, when it has the same shape.
fn reusable(
    prev: &Previous,
    key: &str,
    period: &CachePeriod,
    measures: &[String],
) -> Option<Devices> {
    let v = prev.values.get(key)?;
    if v["bucket_secs"].as_i64()? != period.bucket_secs || v["columns"] != json!(measures) {
        return None;
    }
    let devices = v["devices"].as_object()?;
    devices
        .iter()
        .map(|(d, list)| {
            Some((
                d.clone(),
                list.as_array()?
                    .iter()
                    .map(bucket_from_json)
                    .collect::<Option<Vec<Bucket>>>()?,
            ))
        })
        .collect()
}

/// Every period of one table: reused buckets before the point rebuilding
/// starts, and buckets from there on from a finer period of this run that
/// covers them, else aggregated by the database. Also says, per period,
/// what it read.
async fn build_periods(
    warm: &Warm<'_>,
    spec: &TableSpec,
    measures: &[String],
    rollups: &Rollups,
) -> Result<(Vec<Built>, Value), tokio_postgres::Error> {
    let (now, tz) = (warm.now, warm.site.timezone);
    let recheck = warm
        .recheck_from
        .map(|r| warm.rerolled.get(spec.name).map_or(r, |&c| r.min(c)));
    let mut built: Vec<Built> = Vec::new();
    let mut read = serde_json::Map::new();
    for p in &warm.periods {
        let (window, rebuild, reuse) = plan_period(warm, spec, measures, p, recheck);
        let finer = built.iter().find(|b| {
            b.window <= rebuild && tiles(b.period.bucket_secs, p.bucket_secs, tz, rebuild)
        });
        let fresh = match finer {
            Some(b) => {
                read.insert(
                    p.name.clone(),
                    json!({ "from": rebuild, "period": b.period.name }),
                );
                rebucket(&b.devices, p.bucket_secs, tz, rebuild, i64::MAX)
            }
            None => {
                let bounds = bucket_starts(rebuild, now, p.bucket_secs, tz);
                let rollup = rollups.pick(spec, &bounds);
                read.insert(p.name.clone(), match &rollup {
                    Some((table, until)) => json!({ "from": rebuild, "rollup": table, "raw_from": rebuild.max(*until) }),
                    None => json!({ "from": rebuild, "raw_from": rebuild }),
                });
                source::period_aggregates(
                    &warm.client,
                    spec,
                    measures,
                    (&bounds, now + 1),
                    rollup.as_ref(),
                )
                .await?
            }
        };
        let mut devices = kept_buckets(reuse.as_ref(), window, rebuild);
        for (d, bs) in fresh {
            devices.entry(d).or_default().extend(bs);
        }
        devices.retain(|_, bs| !bs.is_empty());
        built.push(Built {
            period: p.clone(),
            window,
            devices,
        });
    }
    let rollup = match rollups {
        Rollups::Until(until) => json!({ "rolled_until": until }),
        Rollups::Raw(why) => json!({ "rolled_until": null, "raw_because": why }),
    };
    Ok((built, json!({ "rollups": rollup, "periods": read })))
}

/// One period's window start, where rebuilding starts, and the buckets the
/// previous warm left that can be reused.
fn plan_period(
    warm: &Warm<'_>,
    spec: &TableSpec,
    measures: &[String],
    p: &CachePeriod,
    recheck: Option<i64>,
) -> (i64, i64, Option<Devices>) {
    let tz = warm.site.timezone;
    let window = bucket_start(warm.now - p.span_secs + 1, p.bucket_secs, tz);
    let key = warm.keys.agg(&p.name, spec.name);
    let reuse = recheck.and_then(|_| reusable(warm.prev, &key, p, measures));
    let rebuild = match (&reuse, recheck) {
        (Some(_), Some(r)) => bucket_start(r.max(window), p.bucket_secs, tz),
        _ => window,
    };
    (window, rebuild, reuse)
}

/// The reused buckets from `window` up to where rebuilding starts.
fn kept_buckets(reuse: Option<&Devices>, window: i64, rebuild: i64) -> Devices {
    let Some(reuse) = reuse else {
        return Devices::default();
    };
    reuse
        .iter()
        .map(|(d, bs)| {
            let kept = bs.iter().filter(|b| b.start >= window && b.start < rebuild);
            (d.clone(), kept.cloned().collect())
        })
        .collect()
}

/// One period's cache value.
fn period_json(b: &Built, measures: &[String], now: i64) -> String {
    #[derive(serde::Serialize)]
    struct Period<'a> {
        period: &'a str,
        bucket_secs: i64,
        from: i64,
        to: i64,
        columns: &'a [String],
        bucket: [&'static str; 5],
        devices: BTreeMap<&'a str, BucketsJson<'a>>,
    }
    let period = Period {
        period: &b.period.name,
        bucket_secs: b.period.bucket_secs,
        from: b.window,
        to: now,
        columns: measures,
        bucket: ["start", "rows", "avg", "min", "max"],
        devices: b
            .devices
            .iter()
            .map(|(d, bs)| (d.as_str(), BucketsJson(bs)))
            .collect(),
    };
    serde_json::to_string(&period).unwrap_or_default()
}

/// Today's (local day, up to the last whole minute) loss per server and
/// table, from hourly row counts; hours before the recheck point are reused.
/// Returns the summary and the servers it could not reach.
async fn loss_summary(config: &Config, warm: &Warm<'_>) -> (Value, Vec<String>) {
    let end = (warm.now - 10) - (warm.now - 10).rem_euclid(60);
    let day = (bucket_start(end, series::DAY, warm.site.timezone), end);
    let mut out = json!({ "day_start": day.0, "window_end": end });
    let mut failures = Vec::new();
    for name in &warm.site.servers {
        let Ok(server) = config.server(name) else {
            continue;
        };
        // The source server's connection is already open.
        let opened = match *name == warm.settings.source {
            true => None,
            false => {
                let target = Target {
                    server,
                    database: &warm.site.database,
                };
                match db::connect(config, target).await {
                    Ok(c) => Some(c),
                    Err(e) => {
                        out[name.as_str()] = json!({ "error": e.to_string() });
                        failures.push(name.clone());
                        continue;
                    }
                }
            }
        };
        let client = opened.as_ref().unwrap_or(&warm.client);
        let mut tables = serde_json::Map::new();
        for spec in warm.site.tables() {
            if let Some(v) = table_loss(warm, client, name, &spec, day).await {
                tables.insert(spec.name.into(), v);
            }
        }
        out[name.as_str()] = Value::Object(tables);
    }
    (out, failures)
}

/// One table's loss today on one server; `None` when the server has no such table.
async fn table_loss(
    warm: &Warm<'_>,
    client: &tokio_postgres::Client,
    server: &str,
    spec: &TableSpec,
    (day_start, end): (i64, i64),
) -> Option<Value> {
    let tz = warm.site.timezone;
    let old_hours = warm
        .prev
        .values
        .get(&warm.keys.loss())
        .filter(|v| v["day_start"].as_i64() == Some(day_start))
        .and_then(|v| v[server][spec.name]["hours"].as_object());
    let from = match (warm.recheck_from, old_hours) {
        (Some(r), Some(_)) => bucket_start(r.max(day_start), 3600, tz),
        _ => day_start,
    };
    let mut hours: BTreeMap<i64, u64> = old_hours
        .into_iter()
        .flatten()
        .filter_map(|(h, n)| Some((h.parse::<i64>().ok()?, n.as_u64()?)))
        .filter(|(h, _)| *h + 3600 <= from)
        .collect();
    let devices = spec.devices(warm.site);
    match source::hourly_counts(client, spec, &devices, (from, end), day_start).await {
        Ok(fresh) => hours.extend(fresh),
        Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "42P01") => return None,
        Err(e) => return Some(json!({ "error": db::describe(&e) })),
    }
    let observed: u64 = hours.values().sum();
    let expected = devices.len() as u64
        * ((end - day_start).max(0) as u64 / u64::from(warm.site.sample_interval_secs));
    let loss_pct = match expected {
        0 => 0.0,
        e => (100.0 * (1.0 - observed as f64 / e as f64)).max(0.0),
    };
    Some(json!({
        "expected": expected,
        "observed": observed,
        "loss_pct": (loss_pct * 1000.0).round() / 1000.0,
        "hours": hours.iter().map(|(h, n)| (h.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
    }))
}
