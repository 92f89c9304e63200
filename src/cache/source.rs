//! What the cache reads from the database: per-bucket aggregates (from the
//! rollups up to their mark, raw rows after it), the latest row per device,
//! and hourly row counts. Identifiers are quoted by the one
//! helper; times and ids are bound parameters.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use tokio_postgres::Client;

use super::series::{Bucket, Devices};
use crate::db::quote_ident;
use crate::schema::{
    BUCKET_COLUMN, DeviceId, ROLLUPS, SAMPLES_COLUMN, TIME_COLUMN, TableSpec, measure_column,
    rollup_name,
};

/// `1/2` for bank 1 rack 2, `1` for a bank or PCS, `site` for the etc table.
pub fn device_key(ids: &[i16]) -> String {
    match ids.is_empty() {
        true => "site".into(),
        false => ids.iter().map(i16::to_string).collect::<Vec<_>>().join("/"),
    }
}

fn time(t: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(t, 0).single().unwrap_or_default()
}

fn device_ids_sql(spec: &TableSpec) -> Vec<String> {
    spec.device_columns
        .iter()
        .map(|c| format!("{}::int4", quote_ident(c)))
        .collect()
}

/// How far a table's rollups (`rack_1m`, `rack_1h`, …) can stand in for
/// its raw rows.
#[derive(Debug, Clone, PartialEq)]
pub enum Rollups {
    /// Both rollups hold every bucket before this (Unix seconds).
    Until(i64),
    /// Raw rows only, and why.
    Raw(String),
}

impl Rollups {
    /// The coarsest rollup whose UTC-aligned buckets tile the cache buckets
    /// starting at `bounds` (so no rollup bucket straddles two), with the
    /// raw tail's start; `None` when the rollups hold nothing of them.
    pub fn pick(&self, spec: &TableSpec, bounds: &[i64]) -> Option<(String, i64)> {
        let Rollups::Until(until) = *self else {
            return None;
        };
        if until <= bounds[0] {
            return None;
        }
        ROLLUPS
            .iter()
            .rev()
            .find(|(_, width)| bounds.iter().all(|b| b % rollup_secs(width) == 0))
            .map(|(suffix, _)| (rollup_name(spec, suffix), until))
    }
}

fn rollup_secs(width: &str) -> i64 {
    match width {
        "1 hour" => 3600,
        _ => 60,
    }
}

/// Whether this server's rollups of `spec` hold the cache's `measures`, and
/// up to when.
pub async fn rollups(
    client: &Client,
    spec: &TableSpec,
    measures: &[String],
) -> Result<Rollups, tokio_postgres::Error> {
    let until = match crate::rollup::rolled_until(client, spec).await {
        Ok(Some(until)) => until.timestamp(),
        Ok(None) => return Ok(Rollups::Raw("`essops rollup` has not run".into())),
        Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "42P01") => {
            return Ok(Rollups::Raw(
                "no rollups on this server (`essops migrate` adds them)".into(),
            ));
        }
        Err(e) => return Err(e),
    };
    let mut wanted: Vec<String> = vec![BUCKET_COLUMN.into(), SAMPLES_COLUMN.into()];
    wanted.extend(spec.device_columns.iter().map(|c| c.to_string()));
    for m in measures {
        wanted.extend(["AVG", "MIN", "MAX"].map(|agg| measure_column(m, agg)));
    }
    let tables: Vec<String> = ROLLUPS.iter().map(|(s, _)| rollup_name(spec, s)).collect();
    let found: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
              WHERE c.relnamespace = 'public'::regnamespace AND c.relname = ANY($1)
                AND a.attname = ANY($2) AND a.attnum > 0 AND NOT a.attisdropped",
            &[&tables, &wanted],
        )
        .await?
        .get(0);
    match found == (tables.len() * wanted.len()) as i64 {
        true => Ok(Rollups::Until(until)),
        false => Ok(Rollups::Raw(format!(
            "{} lack columns of the cache's measures (`essops migrate`)",
            tables.join(" or ")
        ))),
    }
}

/// Per device and cache bucket (`bounds` are their starts, the first one the
/// window's; the last is open up to `to`): row count and avg, min, max of
/// each measure, aggregated in the database. With a rollup, its buckets
/// before its mark stand in for the raw rows, and only the tail after the
/// mark is read raw; averages are weighted by samples.
pub async fn period_aggregates(
    client: &Client,
    spec: &TableSpec,
    measures: &[String],
    (bounds, to): (&[i64], i64),
    rollup: Option<&(String, i64)>,
) -> Result<Devices, tokio_postgres::Error> {
    let ids = device_ids_sql(spec);
    let k = ids.len();
    let group: Vec<String> = (1..=k + 1).map(|i| i.to_string()).collect();
    let t = quote_ident(TIME_COLUMN);
    let mut raw = ids.clone();
    raw.push(format!("width_bucket({t}, $1::timestamptz[])"));
    raw.push("count(*)::int8".into());
    for m in measures {
        let q = quote_ident(m);
        raw.push(format!(
            "avg({q})::float8, min({q})::float8, max({q})::float8"
        ));
    }
    let mut pieces = format!(
        "SELECT {} FROM {} WHERE {t} >= $2 AND {t} < $3 GROUP BY {}",
        raw.join(", "),
        quote_ident(spec.name),
        group.join(", ")
    );
    if let Some((table, _)) = rollup {
        let b = quote_ident(BUCKET_COLUMN);
        let mut rolled = ids.clone();
        rolled.push(format!("width_bucket({b}, $1::timestamptz[])"));
        rolled.push(format!("{}::int8", quote_ident(SAMPLES_COLUMN)));
        for m in measures {
            rolled.extend(["AVG", "MIN", "MAX"].map(|agg| quote_ident(&measure_column(m, agg))));
        }
        pieces = format!(
            "SELECT {} FROM {} WHERE {b} >= $4 AND {b} < $2 UNION ALL {pieces}",
            rolled.join(", "),
            quote_ident(table),
        );
    }
    let mut names: Vec<String> = (0..k).map(|i| format!("c{i}")).collect();
    names.extend(["i".into(), "n".into()]);
    let mut outer: Vec<String> = names[..k].to_vec();
    outer.extend(["i".into(), "sum(n)::int8".into()]);
    for j in 0..measures.len() {
        names.extend([format!("a{j}"), format!("lo{j}"), format!("hi{j}")]);
        outer.push(format!(
            "sum(a{j} * n) / sum(n) FILTER (WHERE a{j} IS NOT NULL), min(lo{j}), max(hi{j})"
        ));
    }
    let sql = format!(
        "SELECT {} FROM ({pieces}) AS p({}) GROUP BY {g} ORDER BY {g}",
        outer.join(", "),
        names.join(", "),
        g = group.join(", "),
    );
    let starts: Vec<DateTime<Utc>> = bounds.iter().map(|b| time(*b)).collect();
    let from = time(bounds[0]);
    let raw_from = time(rollup.map_or(bounds[0], |(_, until)| bounds[0].max(*until)));
    let to = time(to);
    let mut bind: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&starts, &raw_from, &to];
    if rollup.is_some() {
        bind.push(&from);
    }
    let rows = client.query(&sql, &bind).await?;
    let mut out = Devices::new();
    for r in rows {
        let device: DeviceId = (0..k).map(|i| r.get::<_, i32>(i) as i16).collect();
        let at = r.get::<_, i32>(k) as usize;
        let value = |i: usize| r.get::<_, Option<f64>>(i).unwrap_or(f64::NAN);
        let column = |of: usize| {
            (0..measures.len())
                .map(|m| value(k + 2 + 3 * m + of))
                .collect()
        };
        let b = Bucket::new(
            bounds[at.saturating_sub(1)],
            r.get::<_, i64>(k + 1) as u64,
            column(0),
            column(1),
            column(2),
        );
        out.entry(device_key(&device)).or_default().push(b);
    }
    Ok(out)
}

/// The earliest start of the windows re-rolled per table since `since`
/// (Unix seconds), and the server's clock now; nothing when the server has
/// no record of re-rolls (schema before version 4).
pub async fn rerolled_since(
    client: &Client,
    since: i64,
) -> Result<(BTreeMap<String, i64>, Option<i64>), tokio_postgres::Error> {
    let sql = format!(
        "SELECT table_name, extract(epoch FROM min(span_start))::int8 FROM {}
          WHERE at > $1 GROUP BY 1",
        crate::history::table(crate::history::REROLLS_TABLE)
    );
    let now: i64 = client
        .query_one("SELECT extract(epoch FROM now())::int8", &[])
        .await?
        .get(0);
    match client.query(&sql, &[&time(since)]).await {
        Ok(rows) => Ok((
            rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
            Some(now),
        )),
        Err(e) if e.as_db_error().is_some_and(|d| d.code().code() == "42P01") => {
            Ok((BTreeMap::new(), None))
        }
        Err(e) => Err(e),
    }
}

/// The newest row of each device, as JSON objects keyed by column: looked
/// for after `recent` first (only the newest chunks), then, for the devices
/// with nothing there, in the whole table.
pub async fn latest(
    client: &Client,
    spec: &TableSpec,
    devices: &[DeviceId],
    recent: i64,
) -> Result<BTreeMap<String, serde_json::Value>, tokio_postgres::Error> {
    let mut out = latest_after(client, spec, devices, time(recent)).await?;
    let missing: Vec<DeviceId> = devices
        .iter()
        .filter(|d| !out.contains_key(&device_key(d)))
        .cloned()
        .collect();
    if !missing.is_empty() {
        out.extend(latest_after(client, spec, &missing, DateTime::UNIX_EPOCH).await?);
    }
    Ok(out)
}

async fn latest_after(
    client: &Client,
    spec: &TableSpec,
    devices: &[DeviceId],
    after: DateTime<Utc>,
) -> Result<BTreeMap<String, serde_json::Value>, tokio_postgres::Error> {
    let t = quote_ident(TIME_COLUMN);
    let table = quote_ident(spec.name);
    let mut out = BTreeMap::new();
    if spec.device_columns.is_empty() {
        let sql = format!(
            "SELECT to_jsonb(x) FROM (SELECT * FROM {table} WHERE {t} >= $1 ORDER BY {t} DESC LIMIT 1) x"
        );
        if let Some(r) = client.query_opt(&sql, &[&after]).await? {
            out.insert(device_key(&[]), r.get(0));
        }
        return Ok(out);
    }
    let k = spec.device_columns.len();
    let params: Vec<String> = (1..=k).map(|i| format!("${i}::int4[]")).collect();
    let names: Vec<String> = (0..k).map(|i| format!("c{i}")).collect();
    let on: Vec<String> = spec
        .device_columns
        .iter()
        .zip(&names)
        .map(|(col, n)| format!("t.{} = d.{n}", quote_ident(col)))
        .collect();
    let sql = format!(
        "SELECT {}, to_jsonb(x) FROM unnest({}) AS d({}) CROSS JOIN LATERAL
           (SELECT * FROM {table} t WHERE {} AND t.{t} >= ${} ORDER BY t.{t} DESC LIMIT 1) x",
        names
            .iter()
            .map(|n| format!("d.{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        params.join(", "),
        names.join(", "),
        on.join(" AND "),
        k + 1,
    );
    let columns: Vec<Vec<i32>> = (0..k)
        .map(|i| devices.iter().map(|d| i32::from(d[i])).collect())
        .collect();
    let mut bind: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        columns.iter().map(|c| c as _).collect();
    bind.push(&after);
    for r in client.query(&sql, &bind).await? {
        let ids: DeviceId = (0..k).map(|i| r.get::<_, i32>(i) as i16).collect();
        out.insert(device_key(&ids), r.get(k));
    }
    Ok(out)
}

/// Samples per local hour (Unix seconds of its start; hours counted from
/// `origin`, a local midnight) in `[from, to)`, as `essops loss` counts them:
/// distinct (device, time) of the configured `devices` only, so a doubled
/// row or a device the config does not list adds nothing. A table with its
/// unique natural key holds no doubled rows: its rows are counted as they are.
pub async fn hourly_counts(
    client: &Client,
    spec: &TableSpec,
    devices: &[DeviceId],
    (from, to): (i64, i64),
    origin: i64,
) -> Result<BTreeMap<i64, u64>, tokio_postgres::Error> {
    let unique = crate::catalog::has_unique_key(client, spec).await?;
    let t = quote_ident(TIME_COLUMN);
    let cols: Vec<String> = spec.device_columns.iter().map(|c| quote_ident(c)).collect();
    let k = cols.len();
    let (key, filter) = match k {
        0 => (t.clone(), String::new()),
        _ => {
            let arrays: Vec<String> = (0..k).map(|i| format!("${}::int4[]", i + 4)).collect();
            let tuple = format!("({})", cols.join(", "));
            (
                format!("({}, {t})", cols.join(", ")),
                format!(
                    " AND {tuple} IN (SELECT * FROM unnest({}))",
                    arrays.join(", ")
                ),
            )
        }
    };
    let count = match unique {
        true => "count(*)".to_string(),
        false => format!("count(DISTINCT {key})"),
    };
    let sql = format!(
        "SELECT extract(epoch FROM time_bucket('1 hour', {t}, $3::timestamptz))::int8, {count}
           FROM {} WHERE {t} >= $1 AND {t} < $2{filter} GROUP BY 1",
        quote_ident(spec.name)
    );
    let ids: Vec<Vec<i32>> = (0..k)
        .map(|i| devices.iter().map(|d| i32::from(d[i])).collect())
        .collect();
    let (from, to, origin) = (time(from), time(to), time(origin));
    let mut bind: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&from, &to, &origin];
    bind.extend(
        ids.iter()
            .map(|c| c as &(dyn tokio_postgres::types::ToSql + Sync)),
    );
    let rows = client.query(&sql, &bind).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, i64>(1) as u64))
        .collect())
}

/// Measures of `spec` that exist with a numeric type in `columns`.
pub fn measures(spec: &TableSpec, columns: &[crate::catalog::Column]) -> Vec<String> {
    let numeric = [
        "real",
        "double precision",
        "smallint",
        "integer",
        "bigint",
        "numeric",
    ];
    spec.table
        .measures()
        .iter()
        .filter(|m| {
            columns
                .iter()
                .any(|c| c.name == **m && numeric.iter().any(|n| c.data_type.starts_with(n)))
        })
        .map(|m| m.to_string())
        .collect()
}
