//! What the cache reads from the database: per-minute aggregates, the latest
//! row per device, and hourly row counts. Identifiers are quoted by the one
//! helper; times and ids are bound parameters.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use tokio_postgres::Client;

use super::series::{Bucket, Devices};
use crate::db::quote_ident;
use crate::schema::{DeviceId, TIME_COLUMN, TableSpec};

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

/// Per device and minute in `[from, to)`: row count, avg, min, max of each measure.
pub async fn minute_aggregates(
    client: &Client,
    spec: &TableSpec,
    measures: &[String],
    from: i64,
    to: i64,
) -> Result<Devices, tokio_postgres::Error> {
    let ids = device_ids_sql(spec);
    let aggs: Vec<String> = measures
        .iter()
        .map(|m| {
            let q = quote_ident(m);
            format!("avg({q})::float8, min({q})::float8, max({q})::float8")
        })
        .collect();
    let mut select = ids.clone();
    select.push(format!(
        "extract(epoch FROM time_bucket('1 minute', {}))::int8 AS minute",
        quote_ident(TIME_COLUMN)
    ));
    select.push("count(*)".into());
    select.extend(aggs);
    let group: Vec<String> = (1..=ids.len() + 1).map(|i| i.to_string()).collect();
    let sql = format!(
        "SELECT {} FROM {} WHERE {t} >= $1 AND {t} < $2 GROUP BY {g} ORDER BY {g}",
        select.join(", "),
        quote_ident(spec.name),
        t = quote_ident(TIME_COLUMN),
        g = group.join(", "),
    );
    let rows = client.query(&sql, &[&time(from), &time(to)]).await?;
    let k = ids.len();
    let mut out = Devices::new();
    for r in rows {
        let device: DeviceId = (0..k).map(|i| r.get::<_, i32>(i) as i16).collect();
        let mut b = Bucket::empty(r.get(k), measures.len());
        b.n = r.get::<_, i64>(k + 1) as u64;
        for m in 0..measures.len() {
            let at = k + 2 + 3 * m;
            b.avg[m] = r.get::<_, Option<f64>>(at).unwrap_or(f64::NAN);
            b.min[m] = r.get::<_, Option<f64>>(at + 1).unwrap_or(f64::NAN);
            b.max[m] = r.get::<_, Option<f64>>(at + 2).unwrap_or(f64::NAN);
        }
        out.entry(device_key(&device)).or_default().push(b);
    }
    Ok(out)
}

/// The newest row of each device, as JSON objects keyed by column.
pub async fn latest(
    client: &Client,
    spec: &TableSpec,
    devices: &[DeviceId],
) -> Result<BTreeMap<String, serde_json::Value>, tokio_postgres::Error> {
    let t = quote_ident(TIME_COLUMN);
    let table = quote_ident(spec.name);
    let mut out = BTreeMap::new();
    if spec.device_columns.is_empty() {
        let sql =
            format!("SELECT to_jsonb(x) FROM (SELECT * FROM {table} ORDER BY {t} DESC LIMIT 1) x");
        if let Some(r) = client.query_opt(&sql, &[]).await? {
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
           (SELECT * FROM {table} t WHERE {} ORDER BY t.{t} DESC LIMIT 1) x",
        names
            .iter()
            .map(|n| format!("d.{n}"))
            .collect::<Vec<_>>()
            .join(", "),
        params.join(", "),
        names.join(", "),
        on.join(" AND "),
    );
    let columns: Vec<Vec<i32>> = (0..k)
        .map(|i| devices.iter().map(|d| i32::from(d[i])).collect())
        .collect();
    let bind: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> =
        columns.iter().map(|c| c as _).collect();
    for r in client.query(&sql, &bind).await? {
        let ids: DeviceId = (0..k).map(|i| r.get::<_, i32>(i) as i16).collect();
        out.insert(device_key(&ids), r.get(k));
    }
    Ok(out)
}

/// Samples per local hour (Unix seconds of its start; hours counted from
/// `origin`, a local midnight) in `[from, to)`, as `essops loss` counts them:
/// distinct (device, time) of the configured `devices` only, so a doubled
/// row or a device the config does not list adds nothing.
pub async fn hourly_counts(
    client: &Client,
    spec: &TableSpec,
    devices: &[DeviceId],
    (from, to): (i64, i64),
    origin: i64,
) -> Result<BTreeMap<i64, u64>, tokio_postgres::Error> {
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
    let sql = format!(
        "SELECT extract(epoch FROM time_bucket('1 hour', {t}, $3::timestamptz))::int8, count(DISTINCT {key})
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
