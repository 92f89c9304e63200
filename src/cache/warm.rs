//! Building one site's cache entries: incremental by default (each run
//! re-reads only the last `recheck` of data and reuses older buckets from the
//! cache it wrote before), whole with `--full` or when nothing reusable is there.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::keys::Keys;
use super::outliers::{self, Outlier};
use super::series::{
    self, Bucket, Devices, bucket_from_json, bucket_json, bucket_start, rebucket, tiles,
};
use super::source;
use crate::config::{CachePeriod, CacheSettings, Config, Site};
use crate::db::{self, Target};
use crate::schema::{TABLES, TableSpec};

/// One key to write: its value and TTL (seconds; 0 = none).
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub value: String,
    pub ttl: i64,
}

/// What the previous warm left, as read from Redis.
#[derive(Debug, Default)]
pub struct Previous {
    pub warmed_at: Option<i64>,
    /// The keys its meta listed.
    pub keys: Vec<String>,
    /// Raw JSON by key (period aggregates and loss).
    pub values: BTreeMap<String, Value>,
}

#[derive(Debug)]
pub struct SiteCache {
    pub entries: Vec<Entry>,
    pub outliers: Vec<Outlier>,
    pub incremental: bool,
    /// Servers whose loss summary could not be measured.
    pub loss_failures: Vec<String>,
}

/// One period's series of one table after this warm.
struct Built {
    period: CachePeriod,
    /// First bucket start of the period's window.
    window: i64,
    devices: Devices,
}

pub async fn warm_site(
    config: &Config,
    settings: &CacheSettings,
    site: &Site,
    periods: &[CachePeriod],
    prev: &Previous,
    full: bool,
    now: i64,
) -> Result<SiteCache, String> {
    let keys = Keys::new(&site.name);
    let source_server = config.server(&settings.source).map_err(|e| e.to_string())?;
    let client = db::connect(
        config,
        Target {
            server: source_server,
            database: &site.database,
        },
    )
    .await
    .map_err(|e| e.to_string())?;
    // Full builds group days of rows; keep their sorts in memory.
    client
        .batch_execute("SET work_mem = '64MB'")
        .await
        .map_err(|e| db::describe(&e))?;
    let recheck_from = match (full, prev.warmed_at) {
        (false, Some(at)) => Some(bucket_start(
            at.min(now) - settings.recheck_secs,
            60,
            site.timezone,
        )),
        _ => None,
    };
    let mut sorted: Vec<CachePeriod> = periods.to_vec();
    sorted.sort_by_key(|p| (p.bucket_secs, p.span_secs));
    let finest_ttl = sorted.first().map_or(600, |p| p.ttl_secs);
    let mut entries = Vec::new();
    let mut found = Vec::new();
    let fail = |what: &str, e: tokio_postgres::Error| {
        format!(
            "{what} on server `{}`: {}",
            settings.source,
            db::describe(&e)
        )
    };
    for spec in TABLES {
        let columns = crate::catalog::columns(&client, &settings.source, &site.database, spec.name)
            .await
            .map_err(|e| e.to_string())?;
        if columns.is_empty() {
            continue;
        }
        let measures = source::measures(&spec, &columns);
        let built = build_periods(
            &client,
            site,
            &spec,
            &measures,
            &sorted,
            prev,
            &keys,
            recheck_from,
            now,
        )
        .await
        .map_err(|e| fail(&format!("aggregating `{}`", spec.name), e))?;
        for b in &built {
            entries.push(Entry {
                key: keys.agg(&b.period.name, spec.name),
                value: period_json(b, &measures, now).to_string(),
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
        let latest = source::latest(&client, &spec, &spec.devices(site))
            .await
            .map_err(|e| fail(&format!("reading the latest `{}` rows", spec.name), e))?;
        entries.push(Entry {
            key: keys.latest(spec.name),
            value: serde_json::to_string(&latest).unwrap_or_default(),
            ttl: finest_ttl,
        });
    }
    let source = (settings.source.as_str(), &client);
    let (loss, loss_failures) =
        loss_summary(config, site, source, prev, &keys, recheck_from, now).await;
    entries.push(Entry {
        key: keys.loss(),
        value: loss.to_string(),
        ttl: 3600,
    });
    entries.push(Entry {
        key: keys.outliers(),
        value: json!({ "warmed_at": now, "factor": settings.outlier_factor, "outliers": found })
            .to_string(),
        ttl: finest_ttl,
    });
    Ok(SiteCache {
        entries,
        outliers: found,
        incremental: recheck_from.is_some(),
        loss_failures,
    })
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

/// Every period of one table: reused buckets before the recheck point, and
/// buckets from there on rebuilt from the finest source that covers them
/// (minute aggregates read now, or an already rebuilt finer period).
#[allow(
    clippy::too_many_arguments,
    reason = "the period builder needs the site, table, measures, periods and the previous warm together; bundling them would only rename them"
)]
async fn build_periods(
    client: &tokio_postgres::Client,
    site: &Site,
    spec: &TableSpec,
    measures: &[String],
    periods: &[CachePeriod],
    prev: &Previous,
    keys: &Keys,
    recheck_from: Option<i64>,
    now: i64,
) -> Result<Vec<Built>, tokio_postgres::Error> {
    let tz = site.timezone;
    // Per period: window start, rebuild start, reusable buckets.
    let plans: Vec<(i64, i64, Option<Devices>)> = periods
        .iter()
        .map(|p| {
            let window = bucket_start(now - p.span_secs + 1, p.bucket_secs, tz);
            let reuse = recheck_from
                .and_then(|_| reusable(prev, &keys.agg(&p.name, spec.name), p, measures));
            let rebuild = match (&reuse, recheck_from) {
                (Some(_), Some(r)) => bucket_start(r.max(window), p.bucket_secs, tz),
                _ => window,
            };
            (window, rebuild, reuse)
        })
        .collect();
    // Minute aggregates are read from the earliest point no finer period covers.
    let mut minutes_from = now;
    for (i, p) in periods.iter().enumerate() {
        let (_, rebuild, _) = plans[i];
        let covered = (0..i).any(|j| {
            plans[j].0 <= rebuild && tiles(periods[j].bucket_secs, p.bucket_secs, tz, rebuild)
        });
        if !covered {
            minutes_from = minutes_from.min(rebuild);
        }
    }
    let minutes = source::minute_aggregates(client, spec, measures, minutes_from, now + 1).await?;
    let mut built: Vec<Built> = Vec::new();
    for (i, p) in periods.iter().enumerate() {
        let (window, rebuild, reuse) = &plans[i];
        let src = built
            .iter()
            .find(|b| {
                b.window <= *rebuild && tiles(b.period.bucket_secs, p.bucket_secs, tz, *rebuild)
            })
            .map_or(&minutes, |b| &b.devices);
        let fresh = rebucket(src, p.bucket_secs, tz, *rebuild, i64::MAX);
        let mut devices: Devices = reuse
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(d, bs)| {
                        (
                            d.clone(),
                            bs.iter()
                                .filter(|b| b.start >= *window && b.start < *rebuild)
                                .cloned()
                                .collect(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (d, bs) in fresh {
            devices.entry(d).or_default().extend(bs);
        }
        devices.retain(|_, bs| !bs.is_empty());
        built.push(Built {
            period: p.clone(),
            window: *window,
            devices,
        });
    }
    Ok(built)
}

fn period_json(b: &Built, measures: &[String], now: i64) -> Value {
    let devices: serde_json::Map<String, Value> = b
        .devices
        .iter()
        .map(|(d, bs)| {
            (
                d.clone(),
                Value::Array(bs.iter().map(bucket_json).collect()),
            )
        })
        .collect();
    json!({
        "period": b.period.name,
        "bucket_secs": b.period.bucket_secs,
        "from": b.window,
        "to": now,
        "columns": measures,
        "bucket": ["start", "rows", "avg", "min", "max"],
        "devices": devices,
    })
}

/// Today's (local day, up to the last whole minute) loss per server and
/// table, from hourly row counts; hours before the recheck point are reused.
async fn loss_summary(
    config: &Config,
    site: &Site,
    source: (&str, &tokio_postgres::Client),
    prev: &Previous,
    keys: &Keys,
    recheck_from: Option<i64>,
    now: i64,
) -> (Value, Vec<String>) {
    let end = (now - 10) - (now - 10).rem_euclid(60);
    let day_start = bucket_start(end, series::DAY, site.timezone);
    let before = prev.values.get(&keys.loss());
    let mut out = serde_json::Map::new();
    let mut failures = Vec::new();
    for name in &site.servers {
        let Ok(server) = config.server(name) else {
            continue;
        };
        // The source server's connection is already open.
        let opened = match name == source.0 {
            true => None,
            false => match db::connect(
                config,
                Target {
                    server,
                    database: &site.database,
                },
            )
            .await
            {
                Ok(c) => Some(c),
                Err(e) => {
                    out.insert(name.clone(), json!({ "error": e.to_string() }));
                    failures.push(name.clone());
                    continue;
                }
            },
        };
        let client = opened.as_ref().unwrap_or(source.1);
        let mut tables = serde_json::Map::new();
        for spec in TABLES {
            let old_hours = before
                .filter(|v| v["day_start"].as_i64() == Some(day_start))
                .and_then(|v| v[name.as_str()][spec.name]["hours"].as_object());
            let from = match (recheck_from, old_hours) {
                (Some(r), Some(_)) => bucket_start(r.max(day_start), 3600, site.timezone),
                _ => day_start,
            };
            let mut hours: BTreeMap<i64, u64> = old_hours
                .into_iter()
                .flatten()
                .filter_map(|(h, n)| Some((h.parse::<i64>().ok()?, n.as_u64()?)))
                .filter(|(h, _)| *h + 3600 <= from)
                .collect();
            match source::hourly_counts(client, &spec, from, end).await {
                Ok(fresh) => hours.extend(fresh),
                Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "42P01") => continue,
                Err(e) => {
                    tables.insert(spec.name.into(), json!({ "error": db::describe(&e) }));
                    continue;
                }
            }
            let observed: u64 = hours.values().sum();
            let devices = spec.devices(site).len() as u64;
            let expected =
                devices * ((end - day_start).max(0) as u64 / u64::from(site.sample_interval_secs));
            let loss_pct = match expected {
                0 => 0.0,
                e => (100.0 * (1.0 - observed as f64 / e as f64)).max(0.0),
            };
            tables.insert(
                spec.name.into(),
                json!({
                    "expected": expected,
                    "observed": observed,
                    "loss_pct": (loss_pct * 1000.0).round() / 1000.0,
                    "hours": hours.iter().map(|(h, n)| (h.to_string(), json!(n))).collect::<serde_json::Map<_, _>>(),
                }),
            );
        }
        out.insert(name.clone(), Value::Object(tables));
    }
    let mut v = json!({ "day_start": day_start, "window_end": end });
    if let Value::Object(m) = &mut v {
        m.extend(out);
    }
    (v, failures)
}
