//! A day's figures from the KPI rollup's 15-minute buckets ([`crate::rollup::kpi`]):
//! where the rollup holds a bucket and the raw table has no more samples
//! in it than the bucket counted, the bucket is read; every other bucket
//! (not rolled up yet, rows that came later, the edges of a window that is
//! not whole quarter hours) is computed from the raw rows by the same
//! SELECT the rollup uses. The histograms are then merged per device and
//! the percentiles taken from them, in the server, exactly as
//! `percentile_cont` takes them from raw rows.
//!
//! Whether a bucket is current costs one count of the day's raw rows per
//! device (the natural-key index); the buckets of a device whose count
//! differs are then compared one by one.

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use tokio_postgres::types::ToSql;

use super::measure::{DailyFigures, Lane, Scope, SocSpread};
use crate::db::DbError;
use crate::rollup::kpi::{
    self as rolled, ALARM_SAMPLES, BUCKET, BUCKET_SECS, FAULT_SAMPLES, HISTOGRAMS, SOC_SPREAD,
    TableColumns, counts_column,
};
use crate::schema::{BUCKET_COLUMN, SAMPLES_COLUMN, TIME_COLUMN, TableSpec, measure_column};
use crate::sql::{devices_not_null, quote_ident, same_columns};
use crate::window::Window;

/// Values bound to one statement, numbered from `$1` in the order bound.
#[derive(Default)]
pub struct Binds {
    values: Vec<Box<dyn ToSql + Sync + Send>>,
}

impl Binds {
    /// Binds `value`; its placeholder with `cast` (`$4::int2[]`).
    pub fn bind<T: ToSql + Sync + Send + 'static>(&mut self, value: T, cast: &str) -> String {
        self.values.push(Box::new(value));
        format!("${}::{cast}", self.values.len())
    }

    pub fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.values
            .iter()
            .map(|v| &**v as &(dyn ToSql + Sync))
            .collect()
    }
}

/// How a lane's window is read: `[rolled.0, rolled.1)` from the rollup
/// (whole buckets, up to its mark), except the stale buckets; the rest of
/// the window from the raw rows.
#[derive(Debug, Clone)]
pub struct Reading {
    rolled: (DateTime<Utc>, DateTime<Utc>),
    stale: Stale,
}

/// Buckets to compute from the raw rows: per device column the ids, and
/// the bucket starts (one entry per bucket).
#[derive(Debug, Clone, Default)]
struct Stale {
    ids: Vec<Vec<i16>>,
    at: Vec<DateTime<Utc>>,
}

impl Stale {
    fn push(&mut self, ids: &[i16], at: DateTime<Utc>) {
        self.ids.resize(ids.len(), Vec::new());
        for (column, id) in self.ids.iter_mut().zip(ids) {
            column.push(*id);
        }
        self.at.push(at);
    }

    /// The same buckets keyed by the first device column alone (a bank).
    fn by_first_column(&self) -> Stale {
        let mut seen = std::collections::BTreeSet::new();
        let mut out = Stale::default();
        for (i, at) in self.at.iter().enumerate() {
            let id = self.ids[0][i];
            if seen.insert((id, *at)) {
                out.push(&[id], *at);
            }
        }
        out
    }
}

fn bucket_width() -> TimeDelta {
    TimeDelta::seconds(BUCKET_SECS)
}

fn floor(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(bucket_width()).unwrap_or(t)
}

fn ceil(t: DateTime<Utc>) -> DateTime<Utc> {
    match floor(t) {
        f if f < t => f + bucket_width(),
        f => f,
    }
}

/// `ARRAY["BANK_ID", …]::int2[]` of `alias`'s device columns (no alias: bare).
pub(super) fn ids_array(columns: &[&str], alias: &str) -> String {
    let ids = match alias {
        "" => crate::sql::quote_list(columns),
        a => crate::sql::prefixed_list(a, columns),
    };
    format!("ARRAY[{ids}]::int2[]")
}

/// Which part of the window the rollup of `spec` serves, and which of its
/// buckets have fewer samples than the raw rows now hold.
pub async fn reading(scope: &Scope<'_>, spec: &TableSpec, lane: Lane) -> Result<Reading, DbError> {
    let what = format!("the KPI rollup of table `{}`", spec.name);
    let mark = crate::rollup::rolled_until(scope.client, spec)
        .await
        .map_err(|e| DbError::query(scope.server, scope.database, what.as_str(), &e))?;
    let w = scope.window;
    let (a, z) = (ceil(w.start), mark.map_or(w.start, |m| floor(w.end.min(m))));
    let raw_only = Reading {
        rolled: (w.start, w.start),
        stale: Stale::default(),
    };
    // A span the mark passed before the KPI rollup existed (an upgrade)
    // has no bucket: one raw range, not every bucket found stale.
    if a >= z || !holds_buckets(scope, spec, (a, z)).await? {
        return Ok(raw_only);
    }
    let rolled = (a, z);
    let unsettled = unsettled(scope, spec, lane, rolled).await?;
    let stale = match unsettled.is_empty() {
        true => Stale::default(),
        false => stale_buckets(scope, spec, rolled, &unsettled).await?,
    };
    Ok(Reading { rolled, stale })
}

/// Whether the KPI rollup of `spec` has any bucket in `[a, z)`.
async fn holds_buckets(
    scope: &Scope<'_>,
    spec: &TableSpec,
    (a, z): (DateTime<Utc>, DateTime<Utc>),
) -> Result<bool, DbError> {
    let mut b = Binds::default();
    let (a, z) = (b.bind(a, "timestamptz"), b.bind(z, "timestamptz"));
    let bucket = quote_ident(BUCKET_COLUMN);
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM {kpi} WHERE {bucket} >= {a} AND {bucket} < {z})",
        kpi = quote_ident(&rolled::table(spec)),
    );
    let what = format!("the KPI rollup of table `{}`", spec.name);
    let rows = scope.run(&what, &sql, &b).await?;
    Ok(rows.first().is_some_and(|r| r.get(0)))
}

/// The devices whose raw rows in `rolled` number other than the rollup's
/// samples there.
async fn unsettled(
    scope: &Scope<'_>,
    spec: &TableSpec,
    lane: Lane,
    (a, z): (DateTime<Utc>, DateTime<Utc>),
) -> Result<Vec<Vec<i16>>, DbError> {
    let mut b = Binds::default();
    let (a, z) = (b.bind(a, "timestamptz"), b.bind(z, "timestamptz"));
    let only = lane.filter(spec, &mut b);
    let (ts, bucket) = (quote_ident(TIME_COLUMN), quote_ident(BUCKET_COLUMN));
    // Per device, so each count is an index-only scan of the natural key.
    let sql = format!(
        "WITH RECURSIVE {devices}
         SELECT {ids}
           FROM d
          CROSS JOIN LATERAL (SELECT count(*) AS n FROM {raw} r
                               WHERE {same_r} AND r.{ts} >= {a} AND r.{ts} < {z}) c
          CROSS JOIN LATERAL (SELECT sum(k.{samples}) AS n FROM {kpi} k
                               WHERE {same_k} AND k.{bucket} >= {a} AND k.{bucket} < {z}) k
          WHERE c.n <> coalesce(k.n, 0){only}",
        devices = crate::sql::devices_cte(spec),
        ids = ids_array(spec.device_columns, "d"),
        raw = quote_ident(spec.name),
        kpi = quote_ident(&rolled::table(spec)),
        same_r = same_columns(spec.device_columns, "r", "d"),
        same_k = same_columns(spec.device_columns, "k", "d"),
        samples = quote_ident(SAMPLES_COLUMN),
    );
    let rows = scope
        .run(
            &format!("the rolled-up samples of table `{}`", spec.name),
            &sql,
            &b,
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Of `devices`, the buckets in `rolled` where the raw table holds more
/// samples than the rollup counted (or the rollup has no bucket).
async fn stale_buckets(
    scope: &Scope<'_>,
    spec: &TableSpec,
    (a, z): (DateTime<Utc>, DateTime<Utc>),
    devices: &[Vec<i16>],
) -> Result<Stale, DbError> {
    let mut b = Binds::default();
    let (a, z) = (b.bind(a, "timestamptz"), b.bind(z, "timestamptz"));
    let columns = spec.device_columns;
    let by_column: Vec<Vec<i16>> = (0..columns.len())
        .map(|i| devices.iter().map(|d| d[i]).collect())
        .collect();
    let (ts, bucket) = (quote_ident(TIME_COLUMN), quote_ident(BUCKET_COLUMN));
    let sql = format!(
        "SELECT {ids}, c.b
           FROM {devices}
          CROSS JOIN LATERAL (
                SELECT time_bucket(INTERVAL '{BUCKET}', r.{ts}) AS b, count(*) AS n FROM {raw} r
                 WHERE {on_raw} AND r.{ts} >= {a} AND r.{ts} < {z} GROUP BY 1) c
           LEFT JOIN {kpi} k ON {on_kpi} AND k.{bucket} = c.b
          WHERE k.{samples} IS NULL OR c.n > k.{samples}",
        ids = ids_array(columns, "d"),
        devices = unnest_ids(&mut b, columns, &by_column, None, "d"),
        raw = quote_ident(spec.name),
        kpi = quote_ident(&rolled::table(spec)),
        on_raw = same_columns(columns, "r", "d"),
        on_kpi = same_columns(columns, "k", "d"),
        samples = quote_ident(SAMPLES_COLUMN),
    );
    let rows = scope
        .run(
            &format!("the stale KPI buckets of table `{}`", spec.name),
            &sql,
            &b,
        )
        .await?;
    let mut stale = Stale::default();
    for r in rows {
        let ids: Vec<i16> = r.get(0);
        stale.push(&ids, r.get(1));
    }
    Ok(stale)
}

/// Where bucket rows come from: a rollup table keyed by `keys` and the
/// bucket, and the SELECT that makes them from raw rows of `raw`.
struct Source<'a> {
    rollup: String,
    keys: &'a [&'a str],
    columns: Vec<String>,
    raw: &'a TableSpec,
    select: &'a (dyn Fn(&str) -> String + Sync),
}

/// The window's bucket rows: the rollup's current buckets, the stale ones
/// computed bucket by bucket, and the raw rows outside the rolled span.
fn buckets_sql(
    b: &mut Binds,
    src: &Source,
    reading: &Reading,
    stale: &Stale,
    lane: Lane,
    window: Window,
) -> String {
    let (ts, bucket) = (quote_ident(TIME_COLUMN), quote_ident(BUCKET_COLUMN));
    let raw = quote_ident(src.raw.name);
    let not_null = devices_not_null(src.raw);
    let only = lane.filter(src.raw, b);
    let mut parts = Vec::new();
    let (a, z) = reading.rolled;
    if a < z {
        let (a, z) = (b.bind(a, "timestamptz"), b.bind(z, "timestamptz"));
        let columns = crate::sql::prefixed_list("k", &src.columns);
        let rollup = quote_ident(&src.rollup);
        let current = format!("k.{bucket} >= {a} AND k.{bucket} < {z}{only}");
        match stale.at.is_empty() {
            true => parts.push(format!("SELECT {columns} FROM {rollup} k WHERE {current}")),
            false => {
                let unnest = unnest_ids(b, src.keys, &stale.ids, Some(&stale.at), "s");
                parts.push(format!(
                    "SELECT {columns} FROM {rollup} k
                      WHERE {current} AND NOT EXISTS (SELECT 1 FROM {unnest} WHERE {same} AND s.b = k.{bucket})",
                    same = same_columns(src.keys, "s", "k"),
                ));
                let rows = format!(
                    "{raw} WHERE {same} AND {ts} >= s.b AND {ts} < s.b + INTERVAL '{BUCKET}'{not_null}",
                    same = same_columns(src.keys, &raw, "s"),
                );
                parts.push(format!(
                    "SELECT x.* FROM {unnest} CROSS JOIN LATERAL ({}) x",
                    (src.select)(&rows)
                ));
            }
        }
    }
    for (from, to) in [(window.start, a), (z, window.end)] {
        if from < to {
            let (from, to) = (b.bind(from, "timestamptz"), b.bind(to, "timestamptz"));
            let rows = format!("{raw} WHERE {ts} >= {from} AND {ts} < {to}{not_null}{only}");
            parts.push((src.select)(&rows));
        }
    }
    match parts.is_empty() {
        true => format!(
            "SELECT {} FROM {} WHERE false",
            crate::sql::quote_list(&src.columns),
            quote_ident(&src.rollup)
        ),
        false => parts.join("\n UNION ALL\n"),
    }
}

/// `unnest($k::int2[], …[, $b::timestamptz[]]) AS alias("BANK_ID", …[, b])`:
/// device ids given per column (and bucket starts, for stale buckets), bound
/// once however often the text is used.
fn unnest_ids(
    b: &mut Binds,
    keys: &[&str],
    ids: &[Vec<i16>],
    at: Option<&[DateTime<Utc>]>,
    alias: &str,
) -> String {
    let mut arrays: Vec<String> = (0..keys.len())
        .map(|i| b.bind(ids.get(i).cloned().unwrap_or_default(), "int2[]"))
        .collect();
    let mut names: Vec<String> = keys.iter().map(|k| quote_ident(k)).collect();
    if let Some(at) = at {
        arrays.push(b.bind(at.to_vec(), "timestamptz[]"));
        names.push("b".into());
    }
    format!(
        "unnest({}) AS {alias}({})",
        arrays.join(", "),
        names.join(", ")
    )
}

/// `ranked` and `pct` over `hist (ids, m, v, n)`: per device and histogram
/// the max (`mx`) and `percentile_cont` of each fraction (`p0`, `p1`, …),
/// computed as PostgreSQL computes it: the values at the floor and ceiling
/// of fraction × (count − 1), interpolated.
fn percentiles_sql(fractions: &[&str]) -> String {
    let ps: Vec<String> = fractions
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let at = |round: &str| {
                format!("min(v) FILTER (WHERE upto > {round}({f}::float8 * (total - 1)))")
            };
            let pos = format!("({f}::float8 * (max(total) - 1))");
            let (lo, hi) = (at("floor"), at("ceil"));
            format!("{lo} + ({pos} - floor({pos})) * ({hi} - {lo}) AS p{i}")
        })
        .collect();
    format!(
        "ranked AS (
             SELECT ids, m, v, sum(n) OVER (PARTITION BY ids, m ORDER BY v) AS upto,
                    sum(n) OVER (PARTITION BY ids, m) AS total
               FROM hist),
         pct AS (SELECT ids, m, max(v) AS mx, {} FROM ranked GROUP BY ids, m)",
        ps.join(", ")
    )
}

/// Per device of the lane: counts, the spreads' and SoH's percentiles, and
/// the extremes of `limited` (measures; the rollup keeps their min and max).
pub async fn daily(
    scope: &Scope<'_>,
    spec: &TableSpec,
    cols: &TableColumns,
    limited: &[&str],
    lane: Lane,
    reading: &Reading,
) -> Result<Vec<(DailyFigures, Vec<Option<f64>>)>, DbError> {
    let mut b = Binds::default();
    let select = |rows: &str| rolled::bucket_select(spec, cols, rows);
    let src = Source {
        rollup: rolled::table(spec),
        keys: spec.device_columns,
        columns: rolled::bucket_columns(spec),
        raw: spec,
        select: &select,
    };
    let buckets = buckets_sql(&mut b, &src, reading, &reading.stale, lane, scope.window);
    let day = b.bind(scope.day, "date");
    let ids = ids_array(spec.device_columns, "");
    let group = crate::sql::quote_list(spec.device_columns);
    let extremes: Vec<String> = limited
        .iter()
        .map(|m| {
            format!(
                "min({}), max({})",
                quote_ident(&measure_column(m, "MIN")),
                quote_ident(&measure_column(m, "MAX"))
            )
        })
        .collect();
    let unnests: Vec<String> = HISTOGRAMS
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            format!(
                "SELECT {i} AS m, u.v, u.n FROM unnest(buckets.{}, buckets.{}) AS u(v, n)",
                quote_ident(h),
                quote_ident(&counts_column(h))
            )
        })
        .collect();
    let sql = format!(
        "WITH buckets AS ({buckets}),
         dev AS (
             SELECT {ids} AS ids, sum({s})::int8 AS n, sum({a})::int8 AS na, sum({f})::int8 AS nf,
                    ARRAY[{extremes}]::float8[] AS ext
               FROM buckets GROUP BY {group}),
         hist AS (
             SELECT {ids} AS ids, u.m, u.v, sum(u.n)::float8 AS n
               FROM buckets CROSS JOIN LATERAL ({unnests}) u
              GROUP BY 1, 2, 3),
         {pct}
         SELECT dev.ids, {day}, dev.n, dev.na, dev.nf, c.p0, c.p1, c.mx, t.p1, t.mx, h.p0, dev.ext
           FROM dev
           LEFT JOIN pct c ON c.ids = dev.ids AND c.m = 0
           LEFT JOIN pct t ON t.ids = dev.ids AND t.m = 1
           LEFT JOIN pct h ON h.ids = dev.ids AND h.m = 2
          ORDER BY dev.ids",
        s = quote_ident(SAMPLES_COLUMN),
        a = quote_ident(ALARM_SAMPLES),
        f = quote_ident(FAULT_SAMPLES),
        extremes = extremes.join(", "),
        unnests = unnests.join(" UNION ALL "),
        pct = percentiles_sql(&["0.5", "0.95"]),
    );
    let rows = scope
        .run(&format!("KPIs of table `{}`", spec.name), &sql, &b)
        .await?;
    let mv = |v: f64| v * 1000.0;
    Ok(rows
        .iter()
        .map(|r| {
            let samples: i64 = r.get(2);
            let fault_samples: i64 = r.get(4);
            let cell: (Option<f64>, Option<f64>, Option<f64>) = (r.get(5), r.get(6), r.get(7));
            let temp: (Option<f64>, Option<f64>) = (r.get(8), r.get(9));
            let figures = DailyFigures {
                ids: r.get(0),
                day: r.get(1),
                samples,
                fault_free: samples - fault_samples,
                alarm_samples: r.get(3),
                fault_samples,
                cell_spread_mv: match cell {
                    (Some(p50), Some(p95), Some(max)) => Some((mv(p50), mv(p95), mv(max))),
                    _ => None,
                },
                temp_spread_c: temp.0.zip(temp.1),
                soh_median: r.get(10),
                outside: Vec::new(),
            };
            (figures, r.get::<_, Vec<Option<f64>>>(11))
        })
        .collect())
}

/// Per bank of the lane and day: the spread of SOC across its racks at each
/// second, p95 and max.
pub async fn soc_spread(
    scope: &Scope<'_>,
    cols: &TableColumns,
    lane: Lane,
    reading: &Reading,
) -> Result<Vec<SocSpread>, DbError> {
    if !cols.has("SOC") {
        return Ok(Vec::new());
    }
    let rack = crate::schema::RACK;
    let mut b = Binds::default();
    let select = |rows: &str| rolled::spread_select(cols, rows);
    let src = Source {
        rollup: rolled::SPREAD_TABLE.to_string(),
        keys: &["BANK_ID"],
        columns: rolled::spread_columns(),
        raw: &rack,
        select: &select,
    };
    let stale = reading.stale.by_first_column();
    let buckets = buckets_sql(&mut b, &src, reading, &stale, lane, scope.window);
    let day = b.bind(scope.day, "date");
    let sql = format!(
        "WITH buckets AS ({buckets}),
         hist AS (
             SELECT ARRAY[buckets.{bank}]::int2[] AS ids, 0 AS m, u.v, sum(u.n)::float8 AS n
               FROM buckets CROSS JOIN LATERAL unnest(buckets.{v}, buckets.{n}) AS u(v, n)
              GROUP BY 1, 2, 3),
         {pct}
         SELECT ids[1], {day}, p0, mx FROM pct ORDER BY 1",
        bank = quote_ident("BANK_ID"),
        v = quote_ident(SOC_SPREAD),
        n = quote_ident(&counts_column(SOC_SPREAD)),
        pct = percentiles_sql(&["0.95"]),
    );
    let rows = scope.run("the SOC spread of banks", &sql, &b).await?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_widened_and_narrowed_to_whole_buckets() {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(ceil(t("2026-03-04T18:15:00Z")), t("2026-03-04T18:15:00Z"));
        assert_eq!(ceil(t("2026-03-04T18:15:01Z")), t("2026-03-04T18:30:00Z"));
        assert_eq!(floor(t("2026-03-04T18:29:59Z")), t("2026-03-04T18:15:00Z"));
    }

    #[test]
    fn stale_buckets_by_bank_are_distinct() {
        let mut s = Stale::default();
        let at = "2026-03-04T18:15:00Z".parse().unwrap();
        s.push(&[1, 1], at);
        s.push(&[1, 2], at);
        s.push(&[2, 1], at);
        let banks = s.by_first_column();
        assert_eq!(banks.ids, vec![vec![1, 2]]);
        assert_eq!(banks.at.len(), 2);
    }
}
