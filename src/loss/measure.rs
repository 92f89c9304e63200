//! Reading one table's samples per device, and the holes between them.
//!
//! The devices are the configured ones plus any the table holds that the
//! config lacks (found by a loose index scan over the natural key: one index
//! descent per device, not a scan of the rows). For each device, its sample
//! timestamps in the window come in time order straight off the natural-key
//! index (no sort on the server) as one array, and the count, first, last and hole edges
//! are computed here as they arrive. Devices are shared out over
//! [`LANES`] connections. Measured on this machine, that is ~2.5x cheaper
//! than a server-side `lag()` window over the same rows, and the cost grows
//! with the rows in the window, nothing else.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tokio_postgres::types::ToSql;

use crate::config::Config;
use crate::db::{self, DbError, Target, UnixMicrosArray, quote_ident};
use crate::loss::gaps::DeviceSamples;
use crate::schema::{DeviceId, TIME_COLUMN, TableSpec};
use crate::window::Window;

/// Connections reading devices in parallel: one per core of the 2-core
/// machine this was tuned on; more only queue on the server.
const LANES: usize = 2;

/// One table on one server: samples per device and the table's size.
#[derive(Debug, Clone)]
pub struct TableSamples {
    pub devices: BTreeMap<DeviceId, DeviceSamples>,
    pub size_bytes: i64,
    /// Rows in the window with a NULL device id: no device's, so not counted.
    pub without_device: i64,
}

/// Rows in the window (`$1`, `$2`) whose device id is NULL (`None` when the
/// table has no device columns).
fn without_device_sql(spec: &TableSpec) -> Option<String> {
    let ts = quote_ident(TIME_COLUMN);
    crate::sql::device_is_null(spec).map(|null| {
        format!(
            "SELECT count(*) FROM {} WHERE {ts} >= $1 AND {ts} < $2 AND ({null})",
            quote_ident(spec.name)
        )
    })
}

/// All devices the table has ever held, by a loose index scan.
fn devices_sql(spec: &TableSpec) -> String {
    let cast: Vec<String> = spec
        .device_columns
        .iter()
        .map(|c| format!("{}::int4", quote_ident(c)))
        .collect();
    format!(
        "WITH RECURSIVE {} SELECT {} FROM d",
        crate::sql::devices_cte(spec),
        cast.join(", ")
    )
}

/// One device's sample timestamps in the window, in time order, as one
/// array: one row of binary array data decodes ~50x cheaper here than one row
/// per sample. The inner ORDER BY is satisfied by the natural-key index
/// (no sort). Device ids are bound from `$3` on.
fn samples_sql(spec: &TableSpec) -> String {
    let ts = quote_ident(TIME_COLUMN);
    let device_filter = crate::sql::device_filter(spec, 3);
    format!(
        "SELECT coalesce(array_agg(t), '{{}}') FROM (SELECT {ts} AS t FROM {} WHERE {ts} >= $1 AND {ts} < $2{device_filter} ORDER BY {ts}) s",
        quote_ident(spec.name)
    )
}

/// The configured devices, then every other device the table holds. A NULL
/// id is no device (`without_device_sql` counts those rows); an id outside
/// smallint is refused.
async fn list_devices(
    target: Target<'_>,
    client: &tokio_postgres::Client,
    spec: &TableSpec,
    configured: &[DeviceId],
) -> Result<Vec<DeviceId>, DbError> {
    let mut devices: Vec<DeviceId> = configured.to_vec();
    if spec.device_columns.is_empty() {
        return Ok(devices);
    }
    let context = format!("listing the devices of table `{}`", spec.name);
    let (server, database) = (&target.server.name, target.database);
    let rows = client
        .query(&devices_sql(spec), &[])
        .await
        .map_err(|e| DbError::query(server, database, context.as_str(), &e))?;
    for row in rows {
        let listed = crate::db::device_id(&row, spec.device_columns.len())
            .map_err(|e| DbError::bad_value(server, database, context.as_str(), e))?;
        match listed {
            Some(id) if !devices.contains(&id) => devices.push(id),
            _ => {}
        }
    }
    Ok(devices)
}

/// Samples per device (configured or found in the table) and the table's size.
pub async fn measure(
    config: &Config,
    target: Target<'_>,
    client: &tokio_postgres::Client,
    spec: &TableSpec,
    configured: &[DeviceId],
    window: Window,
    interval_secs: u32,
) -> Result<TableSamples, DbError> {
    let query_err = |what: &str, e: &tokio_postgres::Error| {
        DbError::query(
            &target.server.name,
            target.database,
            format!("{what} of table `{}`", spec.name),
            e,
        )
    };
    let devices = list_devices(target, client, spec, configured).await?;
    let mut extra = Vec::new();
    for _ in 1..LANES.min(devices.len()) {
        extra.push(db::connect(config, target).await?);
    }
    let clients: Vec<&tokio_postgres::Client> =
        std::iter::once(client).chain(extra.iter()).collect();
    let sql = samples_sql(spec);
    let lanes = clients.iter().enumerate().map(|(lane, c)| {
        let mine: Vec<&DeviceId> = devices.iter().skip(lane).step_by(clients.len()).collect();
        read_lane(c, &sql, mine, window, interval_secs)
    });
    let mut measured = BTreeMap::new();
    for lane in futures_util::future::join_all(lanes).await {
        measured.extend(lane.map_err(|e| query_err("reading the samples", &e))?);
    }
    let size_bytes: i64 = client
        .query_one(
            "SELECT coalesce(hypertable_size(r), pg_total_relation_size(r))::int8 FROM (SELECT to_regclass($1) AS r) x",
            &[&format!("public.{}", quote_ident(spec.name))],
        )
        .await
        .map_err(|e| query_err("reading the size", &e))?
        .get(0);
    let without_device: i64 = match without_device_sql(spec) {
        None => 0,
        Some(sql) => client
            .query_one(&sql, &[&window.start, &window.end])
            .await
            .map_err(|e| query_err("counting rows without a device id", &e))?
            .get(0),
    };
    Ok(TableSamples {
        without_device,
        devices: measured,
        size_bytes,
    })
}

/// Reads the devices of one lane, one after the other, on one connection.
async fn read_lane(
    client: &tokio_postgres::Client,
    sql: &str,
    devices: Vec<&DeviceId>,
    window: Window,
    interval_secs: u32,
) -> Result<Vec<(DeviceId, DeviceSamples)>, tokio_postgres::Error> {
    let statement = client.prepare(sql).await?;
    let mut out = Vec::with_capacity(devices.len());
    for id in devices {
        let ids: Vec<i32> = id.iter().map(|&x| i32::from(x)).collect();
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&window.start, &window.end];
        params.extend(ids.iter().map(|x| x as &(dyn ToSql + Sync)));
        let times: UnixMicrosArray = client.query_one(&statement, &params).await?.get(0);
        let mut acc = SampleAccumulator::new(interval_secs);
        times.0.into_iter().for_each(|t| acc.push(t));
        out.push((id.clone(), acc.finish()));
    }
    Ok(out)
}

/// Builds [`DeviceSamples`] from timestamps in time order. Timestamps are put
/// on the sample grid first, so duplicates and off-grid legacy rows count once.
struct SampleAccumulator {
    interval_micros: i64,
    samples: DeviceSamples,
    last_slot: Option<i64>,
}

impl SampleAccumulator {
    fn new(interval_secs: u32) -> SampleAccumulator {
        SampleAccumulator {
            interval_micros: i64::from(interval_secs) * 1_000_000,
            samples: DeviceSamples::default(),
            last_slot: None,
        }
    }

    fn push(&mut self, unix_micros: i64) {
        let slot = unix_micros.div_euclid(self.interval_micros);
        match self.last_slot {
            Some(last) if slot == last => return,
            Some(last) if slot > last + 1 => {
                self.samples.holes.push((self.at(last), self.at(slot)));
            }
            Some(_) => {}
            None => self.samples.first = Some(self.at(slot)),
        }
        self.last_slot = Some(slot);
        self.samples.observed += 1;
    }

    fn at(&self, slot: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(slot * self.interval_micros).unwrap_or_default()
    }

    fn finish(mut self) -> DeviceSamples {
        self.samples.last = self.last_slot.map(|s| self.at(s));
        self.samples
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{ETC, RACK};

    #[test]
    fn loss_sql_quotes_every_identifier_and_binds_every_value() {
        assert_eq!(
            samples_sql(&RACK),
            r#"SELECT coalesce(array_agg(t), '{}') FROM (SELECT "TIMESTAMP" AS t FROM "rack" WHERE "TIMESTAMP" >= $1 AND "TIMESTAMP" < $2 AND "BANK_ID" = $3::int4 AND "RACK_ID" = $4::int4 ORDER BY "TIMESTAMP") s"#
        );
        assert!(
            samples_sql(&ETC)
                .contains(r#"FROM "etc" WHERE "TIMESTAMP" >= $1 AND "TIMESTAMP" < $2 ORDER BY"#)
        );
        assert!(
            devices_sql(&RACK)
                .contains(r#"WHERE (t."BANK_ID", t."RACK_ID") > (d."BANK_ID", d."RACK_ID")"#)
        );
    }

    #[test]
    fn loss_accumulator_finds_holes_and_folds_duplicates() {
        let t = |ms: i64| DateTime::from_timestamp_millis(1_767_225_600_000 + ms).unwrap();
        let mut acc = SampleAccumulator::new(1);
        for ms in [0, 1_000, 1_400, 2_000, 5_137, 6_000] {
            acc.push(t(ms).timestamp_micros());
        }
        let s = acc.finish();
        assert_eq!(s.observed, 5, "1.4 s folds into the 1 s slot");
        assert_eq!((s.first, s.last), (Some(t(0)), Some(t(6_000))));
        assert_eq!(s.holes, vec![(t(2_000), t(5_000))]);
    }
}
