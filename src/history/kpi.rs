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

/// Replaces the KPIs and intervals of `site` on this server for `tables`
/// (rack, bank, pcs, site) and `days`, in one transaction: a re-run never
/// adds a second set.
pub async fn record(
    client: &mut Client,
    target: Target<'_>,
    site: &str,
    (tables, days): (&[String], &[NaiveDate]),
    rows: &[KpiRecord],
    intervals: &[IntervalRecord],
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
                // The typed columns come from the row itself (`figures`).
                "INSERT INTO {kpi} (site, server, table_name, device, device_ids, day, grade, samples,
                        cell_spread_max_mv, cell_spread_p95_mv, soh_median, fault_secs, availability_pct,
                        charged_kwh, discharged_kwh, figures)
                 SELECT $1, $2, r.table_name, r.device, r.device_ids, r.day, r.grade,
                        coalesce((r.figures->>'samples')::int8, 0),
                        (r.figures->>'cell_spread_max_mv')::float8, (r.figures->>'cell_spread_p95_mv')::float8,
                        (r.figures->>'soh_median')::float8, (r.figures->>'fault_secs')::int8,
                        (r.figures->>'availability_pct')::float8, (r.figures->>'charged_kwh')::float8,
                        (r.figures->>'discharged_kwh')::float8, r.figures
                   FROM jsonb_to_recordset($3::jsonb) AS r(table_name text, device text, device_ids int2[],
                        day date, grade text, figures jsonb)"
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

/// A KPI row of one device (or the site) and day, as recorded and read back.
#[derive(Debug, Clone, Serialize)]
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

/// An alarm or fault interval of one day, as recorded and read back.
#[derive(Debug, Clone, Serialize)]
pub struct IntervalRecord {
    pub table_name: String,
    pub device: String,
    pub device_ids: Vec<i16>,
    pub day: NaiveDate,
    pub word: String,
    /// None: the whole word.
    pub bit: Option<i16>,
    pub bit_name: Option<String>,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub duration_s: i64,
    pub samples: i64,
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
        "SELECT table_name, device, device_ids, day, word, bit, bit_name, started_at, ended_at,
                duration_s, samples, open
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
            day: r.get(3),
            word: r.get(4),
            bit: r.get(5),
            bit_name: r.get(6),
            started_at: r.get(7),
            ended_at: r.get(8),
            duration_s: r.get(9),
            samples: r.get(10),
            open: r.get(11),
        })
        .collect())
}
