//! The KPI queries: every figure is computed by the server, one statement
//! per kind of figure, table and local day (the day's own bounds in the
//! site's zone, so DST days have 23 or 25 hours), grouped by the device
//! columns themselves so the natural-key index hands the rows over in
//! device order and no sort of the day is needed. Nothing reads rows one by
//! one into essops.
//!
//! A column a deployment's table lacks gives NULL (or 0 seconds), never an
//! error: the KPI that needs it is simply absent from the row.

use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Row};

use super::buckets::Binds;
use crate::db::DbError;
use crate::schema::{TIME_COLUMN, TableSpec};
use crate::sql::quote_ident;
use crate::window::Window;

/// Readies a connection for the KPI statements (once, not per statement):
/// the per-second bank spread groups a day of every rack of a bank.
pub async fn prepare(client: &Client, server: &str, database: &str) -> Result<(), DbError> {
    crate::db::set_grouping_memory(client)
        .await
        .map_err(|e| DbError::query(server, database, "setting work_mem", &e))
}

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

pub use crate::rollup::kpi::TableColumns;

/// How one measurement reads: the server, its client, one local day.
pub struct Scope<'a> {
    pub server: &'a str,
    pub database: &'a str,
    pub client: &'a Client,
    /// The day's bounds (or the part of it measured).
    pub window: Window,
    pub day: NaiveDate,
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
            vec![&self.window.start, &self.window.end, &self.day];
        params.extend_from_slice(extra);
        self.execute(what, sql, &params).await
    }

    /// Runs a statement whose values are all in `binds`.
    pub async fn run(&self, what: &str, sql: &str, binds: &Binds) -> Result<Vec<Row>, DbError> {
        self.execute(what, sql, &binds.refs()).await
    }

    async fn execute(
        &self,
        what: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError> {
        self.client
            .query(sql, params)
            .await
            .map_err(|e| DbError::query(self.server, self.database, what, &e))
    }
}

/// `ARRAY["BANK_ID", "RACK_ID"]::int2[]`, the device columns to group by,
/// the local day, and the filters every KPI statement shares: `$1`..`$2` is
/// the day's window, `$3` its date.
struct Common {
    ids: String,
    group: String,
    day: String,
    table: String,
    filter: String,
    /// `table WHERE filter`.
    from: String,
}

fn common(spec: &TableSpec) -> Common {
    let ts = quote_ident(TIME_COLUMN);
    let table = quote_ident(spec.name);
    let filter = format!(
        "{ts} >= $1 AND {ts} < $2{}",
        crate::sql::devices_not_null(spec)
    );
    Common {
        ids: super::buckets::ids_array(spec.device_columns, ""),
        group: crate::sql::quote_list(spec.device_columns),
        day: "$3::date".into(),
        from: format!("{table} WHERE {filter}"),
        table,
        filter,
    }
}

/// A share of a table's devices: those whose first device id lies in
/// `[from, to]` (an open end: every id past it, so devices the config
/// lacks are measured too).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lane {
    pub from: Option<i16>,
    pub to: Option<i16>,
}

impl Lane {
    /// ` AND "BANK_ID" >= $N::int2 …`, its values bound in `binds`.
    pub fn filter(self, spec: &TableSpec, binds: &mut Binds) -> String {
        let Some(column) = spec.device_columns.first() else {
            return String::new();
        };
        let mut sql = String::new();
        for (bound, op) in [(self.from, ">="), (self.to, "<=")] {
            if let Some(v) = bound {
                sql.push_str(&format!(
                    " AND {} {op} {}",
                    quote_ident(column),
                    binds.bind(v, "int2")
                ));
            }
        }
        sql
    }
}

/// ` AND ("BANK_ID", "RACK_ID") IN (SELECT * FROM unnest($N::int2[], …))`:
/// only `devices`, one int2[] per device column bound from `$first` on
/// (the arrays are returned for binding); empty for a table without device
/// columns.
fn only_devices(spec: &TableSpec, devices: &[Vec<i16>], first: usize) -> (String, Vec<Vec<i16>>) {
    let arrays: Vec<Vec<i16>> = (0..spec.device_columns.len())
        .map(|i| devices.iter().map(|d| d[i]).collect())
        .collect();
    if arrays.is_empty() {
        return (String::new(), arrays);
    }
    let unnest: Vec<String> = (0..arrays.len())
        .map(|i| format!("${}::int2[]", first + i))
        .collect();
    let sql = format!(
        " AND ({}) IN (SELECT * FROM unnest({}))",
        common(spec).group,
        unnest.join(", ")
    );
    (sql, arrays)
}

/// Per device of the lane and day: counts, spreads, SoH and time outside
/// the limits, from the KPI rollup and the raw rows it lacks. A limit on a
/// measure is judged on the day's min and max first; only a device whose
/// extremes cross one has its seconds outside counted, over its rows
/// alone. A limit on any other column is counted over the day's rows.
pub async fn daily(
    scope: &Scope<'_>,
    spec: &TableSpec,
    cols: &TableColumns,
    limits: &[(String, (f64, f64))],
    lane: Lane,
    reading: &super::buckets::Reading,
) -> Result<Vec<DailyFigures>, DbError> {
    let limits: Vec<&(String, (f64, f64))> = limits.iter().filter(|(n, _)| cols.has(n)).collect();
    let (measured, other): (Vec<_>, Vec<_>) = limits
        .into_iter()
        .partition(|(n, _)| spec.table.measures().contains(&n.as_str()));
    let names: Vec<&str> = measured.iter().map(|(n, _)| n.as_str()).collect();
    let rows = super::buckets::daily(scope, spec, cols, &names, lane, reading).await?;
    let counted = outside_counted(scope, spec, &other, lane).await?;
    let mut out = Vec::new();
    for (mut figures, ext) in rows {
        for (i, (name, (lo, hi))) in measured.iter().enumerate() {
            let (min, max) = (ext[2 * i], ext[2 * i + 1]);
            let crossed = min.is_some_and(|m| m < *lo) || max.is_some_and(|m| m > *hi);
            let n = match crossed {
                true => outside_count(scope, spec, name, (*lo, *hi), &figures.ids).await?,
                false => 0,
            };
            figures.outside.push((name.to_string(), n));
        }
        for (j, (name, _)) in other.iter().enumerate() {
            let n = counted.get(&figures.ids).map_or(0, |c| c[j]);
            figures.outside.push((name.clone(), n));
        }
        out.push(figures);
    }
    Ok(out)
}

/// Per device of the lane: samples outside each of `limits`, counted over
/// the day's raw rows (limits on columns the rollup has no extremes of).
async fn outside_counted(
    scope: &Scope<'_>,
    spec: &TableSpec,
    limits: &[&(String, (f64, f64))],
    lane: Lane,
) -> Result<std::collections::HashMap<Vec<i16>, Vec<i64>>, DbError> {
    if limits.is_empty() {
        return Ok(Default::default());
    }
    let c = common(spec);
    let mut b = Binds::default();
    let (start, end) = (
        b.bind(scope.window.start, "timestamptz"),
        b.bind(scope.window.end, "timestamptz"),
    );
    let counts: Vec<String> = limits
        .iter()
        .map(|(name, (lo, hi))| {
            let v = format!("{}::float8", quote_ident(name));
            let (lo, hi) = (b.bind(*lo, "float8"), b.bind(*hi, "float8"));
            format!("count(*) FILTER (WHERE {v} < {lo} OR {v} > {hi})")
        })
        .collect();
    let ts = quote_ident(TIME_COLUMN);
    let sql = format!(
        "SELECT {ids}, ARRAY[{counts}]::int8[] FROM {table}
          WHERE {ts} >= {start} AND {ts} < {end}{not_null}{only} GROUP BY {group}",
        ids = c.ids,
        counts = counts.join(", "),
        table = c.table,
        not_null = crate::sql::devices_not_null(spec),
        only = lane.filter(spec, &mut b),
        group = c.group,
    );
    let rows = scope
        .run(
            &format!("time outside the limits in table `{}`", spec.name),
            &sql,
            &b,
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Samples of one device on the day with `column` outside `[lo, hi]`.
async fn outside_count(
    scope: &Scope<'_>,
    spec: &TableSpec,
    column: &str,
    (lo, hi): (f64, f64),
    device: &[i16],
) -> Result<i64, DbError> {
    let c = common(spec);
    let v = format!("{}::float8", quote_ident(column));
    let sql = format!(
        "SELECT count(*), {day} FROM {from}{filter} AND ({v} < $4 OR {v} > $5)",
        day = c.day,
        from = c.from,
        filter = crate::sql::device_filter(spec, 6),
    );
    let ids: Vec<i32> = device.iter().map(|i| i32::from(*i)).collect();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&lo, &hi];
    params.extend(ids.iter().map(|i| i as &(dyn ToSql + Sync)));
    let rows = scope
        .query(
            &format!("time outside the limits of `{column}`"),
            &sql,
            &params,
        )
        .await?;
    Ok(rows[0].get(0))
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
                            {v} - lag({v}) OVER (PARTITION BY {group} ORDER BY {ts}) AS rise
                       FROM {from} AND {v} IS NOT NULL) s
              GROUP BY 1, 2",
            ids = c.ids,
            day = c.day,
            from = c.from,
            group = c.group,
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

/// Every stretch of non-zero ALARM or FAULT of `devices` (those whose day
/// had any, from [`daily`]) on the day, as a word and per bit. Only their
/// rows are read, off the natural-key index; a stretch breaks where
/// consecutive non-zero samples are more than 1.5 sample intervals apart
/// (a zero or a missing sample between them).
pub async fn intervals(
    scope: &Scope<'_>,
    spec: &TableSpec,
    cols: &TableColumns,
    devices: &[Vec<i16>],
) -> Result<Vec<RawInterval>, DbError> {
    let words: Vec<(&'static str, String)> = [("alarm", "ALARM"), ("fault", "FAULT")]
        .into_iter()
        .filter(|(_, c)| cols.has(c))
        .map(|(w, c)| (w, cols.word(c)))
        .collect();
    if words.is_empty() || devices.is_empty() {
        return Ok(Vec::new());
    }
    let (only, id_arrays) = only_devices(spec, devices, 6);
    let c = common(spec);
    let ts = quote_ident(TIME_COLUMN);
    let values: Vec<String> = words.iter().map(|(w, v)| format!("('{w}', {v})")).collect();
    let any_set: Vec<String> = words.iter().map(|(_, v)| format!("{v} <> 0")).collect();
    let interval = f64::from(scope.interval_secs);
    let sql = format!(
        "WITH nz AS (
             SELECT {ids} AS ids, {day} AS day, {ts} AS t, w.word, w.v
               FROM {table} CROSS JOIN LATERAL (VALUES {values}) AS w(word, v)
              WHERE {filter}{only} AND ({any}) AND w.v <> 0),
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
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&gap, &interval];
    params.extend(id_arrays.iter().map(|a| a as &(dyn ToSql + Sync)));
    let rows = scope
        .query(
            &format!("the alarm intervals of table `{}`", spec.name),
            &sql,
            &params,
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
