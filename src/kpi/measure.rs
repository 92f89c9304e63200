//! The KPI queries: every figure is computed by the server, one statement
//! per kind of figure over the whole window, grouped by device and local
//! day (`"TIMESTAMP" AT TIME ZONE` the site's zone, so DST days have 23 or
//! 25 hours). Nothing reads rows one by one into essops.
//!
//! A column a deployment's table lacks gives NULL (or 0 seconds), never an
//! error: the KPI that needs it is simply absent from the row.

use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use crate::db::DbError;
use crate::schema::{TIME_COLUMN, TableSpec};
use crate::sql::quote_ident;
use crate::window::Window;

/// Work memory for the statements' sorts and hashes, per transaction: the
/// per-second bank spread groups a day of every rack of a bank.
const WORK_MEM: &str = "64MB";

/// Figures of one device and local day, from one pass over its rows.
#[derive(Debug, Clone, Default)]
pub struct DailyFigures {
    pub ids: Vec<i16>,
    pub day: NaiveDate,
    pub samples: i64,
    /// Samples whose FAULT is 0 or NULL.
    pub fault_free: i64,
    pub alarm_samples: i64,
    pub fault_samples: i64,
    /// Cell voltage spread (mV): p50, p95, max.
    pub cell_spread_mv: Option<(f64, f64, f64)>,
    /// Cell temperature spread (°C): p95, max.
    pub temp_spread_c: Option<(f64, f64)>,
    pub soh_median: Option<f64>,
    /// Per `[cache.limits]` column the table has: samples outside it.
    pub outside: Vec<(String, i64)>,
}

/// A bank's SOC spread across its racks, per second, over one local day.
#[derive(Debug, Clone)]
pub struct SocSpread {
    pub bank: i16,
    pub day: NaiveDate,
    pub p95: f64,
    pub max: f64,
}

/// One PCS and local day: its counters' rise and its power's integral.
#[derive(Debug, Clone, Default)]
pub struct PcsEnergy {
    pub id: i16,
    pub day: NaiveDate,
    /// From the lifetime counters (None: fewer than two values that day).
    pub charged_counter_kwh: Option<f64>,
    pub discharged_counter_kwh: Option<f64>,
    /// From AC_ACTIVE_POWER × the sample interval (None: no power values).
    pub charged_power_kwh: Option<f64>,
    pub discharged_power_kwh: Option<f64>,
    /// The day's largest continuous discharge (kWh).
    pub largest_discharge_kwh: Option<f64>,
}

/// A stretch of non-zero ALARM or FAULT (`bit` None: the word; else that
/// bit) within one local day.
#[derive(Debug, Clone, PartialEq)]
pub struct RawInterval {
    pub ids: Vec<i16>,
    pub day: NaiveDate,
    pub word: &'static str,
    pub bit: Option<i16>,
    pub start: DateTime<Utc>,
    /// One sample interval after the last non-zero sample.
    pub end: DateTime<Utc>,
    pub samples: i64,
}

/// What one table offers the KPIs: its columns as the catalog has them.
pub struct TableColumns {
    names: Vec<String>,
}

impl TableColumns {
    pub fn new(columns: &[crate::catalog::Column]) -> TableColumns {
        TableColumns {
            names: columns.iter().map(|c| c.name.clone()).collect(),
        }
    }

    pub fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// `"A"::float8`, or NULL when the table lacks it.
    fn float(&self, name: &str) -> String {
        match self.has(name) {
            true => format!("{}::float8", quote_ident(name)),
            false => "NULL::float8".into(),
        }
    }

    /// `"A" - "B"` as float8 (× `scale`), or NULL.
    fn spread(&self, max: &str, min: &str, scale: f64) -> String {
        match self.has(max) && self.has(min) {
            true => format!("(({} - {}) * {scale})", self.float(max), self.float(min)),
            false => "NULL::float8".into(),
        }
    }

    fn word(&self, name: &str) -> String {
        match self.has(name) {
            true => format!("{}::int8", quote_ident(name)),
            false => "NULL::int8".into(),
        }
    }
}

/// How one measurement reads: the server, its client, the window, the zone.
pub struct Scope<'a> {
    pub server: &'a str,
    pub database: &'a str,
    pub client: &'a Client,
    pub window: Window,
    pub timezone: &'a str,
    pub interval_secs: u32,
}

impl Scope<'_> {
    async fn query(
        &self,
        what: &str,
        sql: &str,
        extra: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError> {
        let mut params: Vec<&(dyn ToSql + Sync)> =
            vec![&self.window.start, &self.window.end, &self.timezone];
        params.extend_from_slice(extra);
        let fail = |e: &tokio_postgres::Error| DbError::query(self.server, self.database, what, e);
        self.client
            .batch_execute(&format!("SET work_mem = '{WORK_MEM}'"))
            .await
            .map_err(|e| fail(&e))?;
        self.client.query(sql, &params).await.map_err(|e| fail(&e))
    }
}

/// `ARRAY["BANK_ID", "RACK_ID"]::int2[]`, the local day, and the filters
/// every KPI statement shares: `$1`..`$2` is the window, `$3` the zone.
struct Common {
    ids: String,
    day: String,
    table: String,
    filter: String,
    /// `table WHERE filter`.
    from: String,
}

fn common(spec: &TableSpec) -> Common {
    let ts = quote_ident(TIME_COLUMN);
    let ids: Vec<String> = spec.device_columns.iter().map(|c| quote_ident(c)).collect();
    let not_null: String = ids
        .iter()
        .map(|c| format!(" AND {c} IS NOT NULL"))
        .collect();
    let table = quote_ident(spec.name);
    let filter = format!("{ts} >= $1 AND {ts} < $2{not_null}");
    Common {
        ids: format!("ARRAY[{}]::int2[]", ids.join(", ")),
        day: format!("({ts} AT TIME ZONE $3::text)::date"),
        from: format!("{table} WHERE {filter}"),
        table,
        filter,
    }
}

/// Per device and day: counts, spreads, SoH and time outside the limits.
pub async fn daily(
    scope: &Scope<'_>,
    spec: &TableSpec,
    cols: &TableColumns,
    limits: &[(String, (f64, f64))],
) -> Result<Vec<DailyFigures>, DbError> {
    let c = common(spec);
    let limits: Vec<&(String, (f64, f64))> = limits.iter().filter(|(n, _)| cols.has(n)).collect();
    let bounds: Vec<f64> = limits.iter().flat_map(|(_, (lo, hi))| [*lo, *hi]).collect();
    let outside: Vec<String> = limits
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let v = cols.float(name);
            format!(
                "count(*) FILTER (WHERE {v} < ${} OR {v} > ${})",
                4 + 2 * i,
                5 + 2 * i
            )
        })
        .collect();
    let outside = match outside.is_empty() {
        true => "ARRAY[]::int8[]".to_string(),
        false => format!("ARRAY[{}]::int8[]", outside.join(", ")),
    };
    let (fault, alarm) = (cols.word("FAULT"), cols.word("ALARM"));
    let volt = cols.spread("MAX_CELL_VOLTAGE", "MIN_CELL_VOLTAGE", 1000.0);
    let temp = cols.spread("MAX_CELL_TEMP", "MIN_CELL_TEMP", 1.0);
    let sql = format!(
        "SELECT {ids}, {day}, count(*),
                count(*) FILTER (WHERE {fault} IS NULL OR {fault} = 0),
                count(*) FILTER (WHERE {alarm} <> 0),
                count(*) FILTER (WHERE {fault} <> 0),
                percentile_cont(ARRAY[0.5, 0.95]::float8[]) WITHIN GROUP (ORDER BY {volt}),
                max({volt}),
                percentile_cont(0.95) WITHIN GROUP (ORDER BY {temp}),
                max({temp}),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY {soh}),
                {outside}
           FROM {from}
          GROUP BY 1, 2",
        ids = c.ids,
        day = c.day,
        from = c.from,
        soh = cols.float("SOH"),
    );
    let params: Vec<&(dyn ToSql + Sync)> =
        bounds.iter().map(|b| b as &(dyn ToSql + Sync)).collect();
    let rows = scope
        .query(&format!("KPIs of table `{}`", spec.name), &sql, &params)
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let volt: Option<Vec<Option<f64>>> = r.get(6);
            let volt_max: Option<f64> = r.get(7);
            let (temp_p95, temp_max): (Option<f64>, Option<f64>) = (r.get(8), r.get(9));
            let counts: Vec<i64> = r.get(11);
            DailyFigures {
                ids: r.get(0),
                day: r.get(1),
                samples: r.get(2),
                fault_free: r.get(3),
                alarm_samples: r.get(4),
                fault_samples: r.get(5),
                cell_spread_mv: match (volt.as_deref(), volt_max) {
                    (Some([Some(p50), Some(p95)]), Some(max)) => Some((*p50, *p95, max)),
                    _ => None,
                },
                temp_spread_c: temp_p95.zip(temp_max),
                soh_median: r.get(10),
                outside: limits
                    .iter()
                    .zip(counts)
                    .map(|((name, _), n)| (name.clone(), n))
                    .collect(),
            }
        })
        .collect())
}

/// Per bank and day: the spread of SOC across its racks at each second.
pub async fn soc_spread(scope: &Scope<'_>, cols: &TableColumns) -> Result<Vec<SocSpread>, DbError> {
    if !cols.has("SOC") {
        return Ok(Vec::new());
    }
    let c = common(&crate::schema::RACK);
    let (bank, ts, soc) = (
        quote_ident("BANK_ID"),
        quote_ident(TIME_COLUMN),
        quote_ident("SOC"),
    );
    let sql = format!(
        "SELECT bank, day, percentile_cont(0.95) WITHIN GROUP (ORDER BY spread), max(spread)
           FROM (SELECT {bank} AS bank, {day} AS day, max({soc})::float8 - min({soc})::float8 AS spread
                   FROM {from} AND {soc} IS NOT NULL
                  GROUP BY {bank}, {ts}
                 HAVING count({soc}) > 1) s
          GROUP BY 1, 2",
        day = c.day,
        from = c.from,
    );
    let rows = scope.query("the SOC spread of banks", &sql, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| SocSpread {
            bank: r.get(0),
            day: r.get(1),
            p95: r.get(2),
            max: r.get(3),
        })
        .collect())
}

/// Per PCS and day: the counters' rise (a drop is a reset: the counter
/// counts again from its first later value), the power's integral, and the
/// largest run of consecutive discharging samples.
pub async fn pcs_energy(scope: &Scope<'_>, cols: &TableColumns) -> Result<Vec<PcsEnergy>, DbError> {
    let spec = crate::schema::PCS;
    let c = common(&spec);
    let ts = quote_ident(TIME_COLUMN);
    let interval = f64::from(scope.interval_secs);
    // Consecutive: at most 1.5 sample intervals apart.
    let gap = interval * 1.5;
    let mut out: PcsDays = PcsDays::new();
    for (column, charged) in [("CHARGED_ENERGY", true), ("DISCHARGED_ENERGY", false)] {
        if !cols.has(column) {
            continue;
        }
        let v = cols.float(column);
        let sql = format!(
            "SELECT ids, day, sum(rise) FILTER (WHERE rise >= 0), count(*)
               FROM (SELECT {ids} AS ids, {day} AS day,
                            {v} - lag({v}) OVER (PARTITION BY {ids}, {day} ORDER BY {ts}) AS rise
                       FROM {from} AND {v} IS NOT NULL) s
              GROUP BY 1, 2",
            ids = c.ids,
            day = c.day,
            from = c.from,
        );
        for r in scope
            .query(&format!("the PCS counter {column}"), &sql, &[])
            .await?
        {
            let (sum, n): (Option<f64>, i64) = (r.get(2), r.get(3));
            let rise = (n >= 2).then(|| sum.unwrap_or(0.0));
            let e = pcs_day(&mut out, &r);
            match charged {
                true => e.charged_counter_kwh = rise,
                false => e.discharged_counter_kwh = rise,
            }
        }
    }
    if cols.has("AC_ACTIVE_POWER") {
        let p = cols.float("AC_ACTIVE_POWER");
        let sql = format!(
            "WITH s AS (
                 SELECT {ids} AS ids, {day} AS day, {ts} AS t, {p} AS p
                   FROM {from} AND {p} IS NOT NULL),
             runs AS (
                 SELECT ids, day, p,
                        sum(brk) OVER (PARTITION BY ids, day ORDER BY t) AS run
                   FROM (SELECT *, CASE WHEN extract(epoch FROM t - lag(t) OVER (PARTITION BY ids, day ORDER BY t))::float8 <= $4::float8
                                        THEN 0 ELSE 1 END AS brk
                           FROM s WHERE p > 0) d),
             largest AS (
                 SELECT ids, day, max(e) AS e
                   FROM (SELECT ids, day, sum(p) * $5::float8 / 3600 AS e FROM runs GROUP BY ids, day, run) r
                  GROUP BY 1, 2)
             SELECT s.ids, s.day,
                    coalesce(sum(-s.p) FILTER (WHERE s.p < 0), 0) * $5 / 3600,
                    coalesce(sum(s.p) FILTER (WHERE s.p > 0), 0) * $5 / 3600,
                    (SELECT l.e FROM largest l WHERE l.ids = s.ids AND l.day = s.day)
               FROM s GROUP BY 1, 2",
            ids = c.ids,
            day = c.day,
            from = c.from,
        );
        for r in scope
            .query("the PCS power", &sql, &[&gap, &interval])
            .await?
        {
            let e = pcs_day(&mut out, &r);
            e.charged_power_kwh = Some(r.get(2));
            e.discharged_power_kwh = Some(r.get(3));
            e.largest_discharge_kwh = r.get(4);
        }
    }
    Ok(out.into_values().collect())
}

type PcsDays = std::collections::BTreeMap<(i16, NaiveDate), PcsEnergy>;

/// The figures of the PCS and day a row (ids, day, …) is about.
fn pcs_day<'a>(out: &'a mut PcsDays, r: &Row) -> &'a mut PcsEnergy {
    let ids: Vec<i16> = r.get(0);
    let id = ids.first().copied().unwrap_or_default();
    let day: NaiveDate = r.get(1);
    out.entry((id, day)).or_insert_with(|| PcsEnergy {
        id,
        day,
        ..PcsEnergy::default()
    })
}

/// Every stretch of non-zero ALARM or FAULT per device and day, as a word
/// and per bit. Only non-zero rows are read past the filter; a stretch
/// breaks where consecutive non-zero samples are more than 1.5 sample
/// intervals apart (a zero or a missing sample between them).
pub async fn intervals(
    scope: &Scope<'_>,
    spec: &TableSpec,
    cols: &TableColumns,
) -> Result<Vec<RawInterval>, DbError> {
    let words: Vec<(&'static str, String)> = [("alarm", "ALARM"), ("fault", "FAULT")]
        .into_iter()
        .filter(|(_, c)| cols.has(c))
        .map(|(w, c)| (w, cols.word(c)))
        .collect();
    if words.is_empty() {
        return Ok(Vec::new());
    }
    let c = common(spec);
    let ts = quote_ident(TIME_COLUMN);
    let values: Vec<String> = words.iter().map(|(w, v)| format!("('{w}', {v})")).collect();
    let any_set: Vec<String> = words.iter().map(|(_, v)| format!("{v} <> 0")).collect();
    let interval = f64::from(scope.interval_secs);
    let sql = format!(
        "WITH nz AS (
             SELECT {ids} AS ids, {day} AS day, {ts} AS t, w.word, w.v
               FROM {table} CROSS JOIN LATERAL (VALUES {values}) AS w(word, v)
              WHERE {filter} AND ({any}) AND w.v <> 0),
         marks AS (
             SELECT ids, day, t, word, NULL::int2 AS bit FROM nz
             UNION ALL
             SELECT ids, day, t, word, b::int2 FROM nz CROSS JOIN generate_series(0, 31) AS b
              WHERE (v >> b) & 1 = 1),
         edges AS (
             SELECT *, CASE WHEN extract(epoch FROM t - lag(t) OVER w)::float8 <= $4::float8 THEN 0 ELSE 1 END AS brk
               FROM marks WINDOW w AS (PARTITION BY ids, day, word, bit ORDER BY t)),
         runs AS (
             SELECT *, sum(brk) OVER (PARTITION BY ids, day, word, bit ORDER BY t) AS run FROM edges)
         SELECT ids, day, word, bit, min(t), max(t) + make_interval(secs => $5::float8), count(*)
           FROM runs GROUP BY ids, day, word, bit, run
          ORDER BY ids, min(t), word, bit NULLS FIRST",
        ids = c.ids,
        day = c.day,
        table = c.table,
        filter = c.filter,
        any = any_set.join(" OR "),
        values = values.join(", "),
    );
    let gap = interval * 1.5;
    let rows = scope
        .query(
            &format!("the alarm intervals of table `{}`", spec.name),
            &sql,
            &[&gap, &interval],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let word: String = r.get(2);
            RawInterval {
                ids: r.get(0),
                day: r.get(1),
                word: if word == "alarm" { "alarm" } else { "fault" },
                bit: r.get(3),
                start: r.get(4),
                end: r.get(5),
                samples: r.get(6),
            }
        })
        .collect())
}
