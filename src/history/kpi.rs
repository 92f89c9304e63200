//! Battery KPIs in the history (migration 0006): `essops.kpi_daily` per
//! device or site and local day, `essops.alarm_intervals` per stretch.
//! `kpi` replaces a day's rows; its trends, `status` and `report` read them.

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use tokio_postgres::Client;

use super::{HistoryError, table, written};
use crate::db::Target;

pub const KPI_TABLE: &str = "kpi_daily";
pub const INTERVALS_TABLE: &str = "alarm_intervals";

/// One device's (or the site's) KPIs on one whole local day.
#[derive(Debug, Clone, Serialize)]
pub struct KpiDay {
    pub table_name: &'static str,
    pub device: String,
    pub device_ids: Vec<i16>,
    pub day: NaiveDate,
    pub grade: &'static str,
    pub samples: i64,
    pub cell_spread_max_mv: Option<f64>,
    pub cell_spread_p95_mv: Option<f64>,
    pub soh_median: Option<f64>,
    pub fault_secs: Option<i64>,
    pub availability_pct: Option<f64>,
    pub charged_kwh: Option<f64>,
    pub discharged_kwh: Option<f64>,
    /// The whole row, as `essops kpi --json` prints it.
    pub figures: serde_json::Value,
}

/// One alarm or fault interval of a whole local day.
#[derive(Debug, Clone, Serialize)]
pub struct IntervalDay {
    pub table_name: &'static str,
    pub device: String,
    pub device_ids: Vec<i16>,
    pub day: NaiveDate,
    pub word: &'static str,
    pub bit: Option<i16>,
    pub bit_name: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub duration_s: i64,
    pub samples: i64,
    pub open: bool,
}

/// Replaces the KPIs and intervals of `site` on this server for `tables`
/// (rack, bank, pcs, site) and `days`, in one transaction: a re-run never
/// adds a second set.
pub async fn record(
    client: &mut Client,
    target: Target<'_>,
    site: &str,
    (tables, days): (&[String], &[NaiveDate]),
    rows: &[KpiDay],
    intervals: &[IntervalDay],
) -> Result<(), HistoryError> {
    let (kpi, iv) = (table(KPI_TABLE), table(INTERVALS_TABLE));
    let server = target.server.name.as_str();
    let rows_json = serde_json::to_value(rows).unwrap_or_default();
    let intervals_json = serde_json::to_value(intervals).unwrap_or_default();
    let result = async {
        let tx = client.transaction().await?;
        for t in [&kpi, &iv] {
            tx.execute(
                &format!(
                    "DELETE FROM {t} WHERE site = $1 AND server = $2 AND table_name = ANY($3) AND day = ANY($4)"
                ),
                &[&site, &server, &tables, &days],
            )
            .await?;
        }
        tx.execute(
            &format!(
                "INSERT INTO {kpi} (site, server, table_name, device, device_ids, day, grade, samples,
                        cell_spread_max_mv, cell_spread_p95_mv, soh_median, fault_secs, availability_pct,
                        charged_kwh, discharged_kwh, figures)
                 SELECT $1, $2, r.table_name, r.device, r.device_ids, r.day, r.grade, r.samples,
                        r.cell_spread_max_mv, r.cell_spread_p95_mv, r.soh_median, r.fault_secs, r.availability_pct,
                        r.charged_kwh, r.discharged_kwh, r.figures
                   FROM jsonb_to_recordset($3::jsonb) AS r(table_name text, device text, device_ids int2[],
                        day date, grade text, samples int8, cell_spread_max_mv float8, cell_spread_p95_mv float8,
                        soh_median float8, fault_secs int8, availability_pct float8, charged_kwh float8,
                        discharged_kwh float8, figures jsonb)"
            ),
            &[&site, &server, &rows_json],
        )
        .await?;
        tx.execute(
            &format!(
                "INSERT INTO {iv} (site, server, table_name, device, device_ids, day, word, bit, bit_name,
                        started_at, ended_at, duration_s, samples, open)
                 SELECT $1, $2, r.table_name, r.device, r.device_ids, r.day, r.word, r.bit, r.bit_name,
                        r.started_at, r.ended_at, r.duration_s, r.samples, r.open
                   FROM jsonb_to_recordset($3::jsonb) AS r(table_name text, device text, device_ids int2[],
                        day date, word text, bit int2, bit_name text, started_at timestamptz,
                        ended_at timestamptz, duration_s int8, samples int8, open bool)"
            ),
            &[&site, &server, &intervals_json],
        )
        .await?;
        tx.commit().await
    }
    .await;
    written(client, target, KPI_TABLE, "INSERT, DELETE", result).await
}

/// A kept daily figure for the trends: (table, device ids, day) and its
/// SoH median and energies.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub table_name: String,
    pub device_ids: Vec<i16>,
    pub day: NaiveDate,
    pub soh_median: Option<f64>,
    pub charged_kwh: Option<f64>,
    pub discharged_kwh: Option<f64>,
}

/// The kept daily figures of `site` on `server` from `from` to `to`
/// (inclusive): what the 90-day SoH trend and the 30-day RTE read.
pub async fn kept(
    client: &Client,
    site: &str,
    server: &str,
    (from, to): (NaiveDate, NaiveDate),
) -> Result<Vec<Kept>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT table_name, device_ids, day, soh_median, charged_kwh, discharged_kwh
           FROM {} WHERE site = $1 AND server = $2 AND day BETWEEN $3 AND $4
            AND (soh_median IS NOT NULL OR charged_kwh IS NOT NULL OR discharged_kwh IS NOT NULL)",
        table(KPI_TABLE)
    );
    let rows = client.query(&sql, &[&site, &server, &from, &to]).await?;
    Ok(rows
        .iter()
        .map(|r| Kept {
            table_name: r.get(0),
            device_ids: r.get(1),
            day: r.get(2),
            soh_median: r.get(3),
            charged_kwh: r.get(4),
            discharged_kwh: r.get(5),
        })
        .collect())
}

/// A recorded KPI row, as status and the report read it.
#[derive(Debug, Clone)]
pub struct KpiRecord {
    pub table_name: String,
    pub device: String,
    pub device_ids: Vec<i16>,
    pub day: NaiveDate,
    pub grade: String,
    pub cell_spread_max_mv: Option<f64>,
    pub soh_median: Option<f64>,
    pub charged_kwh: Option<f64>,
    pub discharged_kwh: Option<f64>,
    pub figures: serde_json::Value,
}

/// The KPI rows of `site` on `server` from `from` to `to` (inclusive).
pub async fn days(
    client: &Client,
    site: &str,
    server: &str,
    (from, to): (NaiveDate, NaiveDate),
) -> Result<Vec<KpiRecord>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT table_name, device, device_ids, day, grade, cell_spread_max_mv, soh_median,
                charged_kwh, discharged_kwh, figures
           FROM {} WHERE site = $1 AND server = $2 AND day BETWEEN $3 AND $4
          ORDER BY day, table_name, device_ids",
        table(KPI_TABLE)
    );
    let rows = client.query(&sql, &[&site, &server, &from, &to]).await?;
    Ok(rows
        .iter()
        .map(|r| KpiRecord {
            table_name: r.get(0),
            device: r.get(1),
            device_ids: r.get(2),
            day: r.get(3),
            grade: r.get(4),
            cell_spread_max_mv: r.get(5),
            soh_median: r.get(6),
            charged_kwh: r.get(7),
            discharged_kwh: r.get(8),
            figures: r.get(9),
        })
        .collect())
}

/// A recorded interval (whole words only), as status and the report read it.
#[derive(Debug, Clone)]
pub struct IntervalRecord {
    pub table_name: String,
    pub device: String,
    pub device_ids: Vec<i16>,
    pub word: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub open: bool,
}

/// The whole-word intervals of `site` on `server` from `from` to `to`.
pub async fn intervals(
    client: &Client,
    site: &str,
    server: &str,
    (from, to): (NaiveDate, NaiveDate),
) -> Result<Vec<IntervalRecord>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT table_name, device, device_ids, word, started_at, ended_at, open
           FROM {} WHERE site = $1 AND server = $2 AND day BETWEEN $3 AND $4 AND bit IS NULL
          ORDER BY started_at",
        table(INTERVALS_TABLE)
    );
    let rows = client.query(&sql, &[&site, &server, &from, &to]).await?;
    Ok(rows
        .iter()
        .map(|r| IntervalRecord {
            table_name: r.get(0),
            device: r.get(1),
            device_ids: r.get(2),
            word: r.get(3),
            started_at: r.get(4),
            ended_at: r.get(5),
            open: r.get(6),
        })
        .collect())
}
