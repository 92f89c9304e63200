//! Finding the samples one server has and the other lacks, cheaply.
//!
//! Level 1: per device and hour, the count and a sum of key hashes, on
//! both servers at once; equal buckets are skipped. Level 2: for runs of
//! differing buckets, each server's timestamps (one binary array per run,
//! straight off the natural-key index) and an exact merge of the two sorted
//! sets. No row is read whole here.

use std::collections::BTreeMap;

use tokio_postgres::Client;
use tokio_postgres::types::ToSql;

use crate::db::{CopyType, UnixMicrosArray, quote_ident};
use crate::schema::{DeviceId, TIME_COLUMN, TableSpec};
use crate::window::Window;

/// Width of a summary bucket. An hour keeps level 1 small (24 rows per
/// device-day) while an outage still narrows level 2 to a few hours.
pub const BUCKET_SECS: i64 = 3600;
pub const BUCKET_MICROS: i64 = BUCKET_SECS * 1_000_000;

/// (device, bucket start in Unix micros) -> (count, sum of timestamp hashes)
pub type Summary = BTreeMap<(DeviceId, i64), (i64, i64)>;

/// A run of consecutive differing buckets of one device: `[start, end)` in Unix micros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    pub device: DeviceId,
    pub start: i64,
    pub end: i64,
}

/// Sample timestamps (Unix micros) of one device present on one side only.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceDiff {
    pub only_a: Vec<i64>,
    pub only_b: Vec<i64>,
}

fn device_select(spec: &TableSpec) -> String {
    spec.device_columns
        .iter()
        .map(|c| format!("{}::int4, ", quote_ident(c)))
        .collect()
}

pub fn summary_sql(spec: &TableSpec) -> String {
    let ts = quote_ident(TIME_COLUMN);
    let devs: Vec<String> = spec.device_columns.iter().map(|c| quote_ident(c)).collect();
    let group: String = devs.iter().map(|d| format!("{d}, ")).collect();
    // Integer microseconds (TimescaleDB's own conversion) make both the
    // bucket and the hash plain int8 arithmetic: no time zone work per row.
    // Ids are grouped as stored and cast once per bucket.
    let micros = format!("_timescaledb_functions.to_unix_microseconds({ts})");
    format!(
        "SELECT {sel}{micros} / $3::int8 AS b, count(*), sum(hashint8({micros}))
           FROM {table} WHERE {ts} >= $1 AND {ts} < $2 GROUP BY {group}b",
        sel = device_select(spec),
        table = quote_ident(spec.name),
    )
}

/// A whole stretch on one side in one row: rows with a device, the sum of
/// their key hashes (device folded into each hash), rows without a device.
#[derive(Debug)]
pub struct Totals {
    pub rows: i64,
    pub hash: String,
    pub without_device: i64,
}

impl Totals {
    /// The same keys, by count and hash.
    pub fn same_keys(&self, other: &Totals) -> bool {
        self.rows == other.rows && self.hash == other.hash
    }
}

/// The device columns as both servers store them (the types agree, or the
/// run stopped earlier): what the whole-stretch hash needs to know.
#[derive(Debug, Clone)]
pub struct DeviceTypes {
    /// Per device column, the hash function of its own type and the cast
    /// it needs (none for the usual integer columns: no call per row).
    hashes: Vec<(&'static str, &'static str)>,
    /// Whether any device column may hold NULL on either side.
    nullable: bool,
}

impl DeviceTypes {
    /// From the shared columns; a device column not among them (or of an
    /// unexpected type) is hashed as int8 and taken as nullable.
    pub fn of(spec: &TableSpec, columns: &[crate::catalog::Column]) -> DeviceTypes {
        let found = |d: &str| columns.iter().find(|c| c.name == d);
        DeviceTypes {
            hashes: spec
                .device_columns
                .iter()
                .map(
                    |d| match found(d).and_then(|c| CopyType::from_catalog(&c.data_type)) {
                        Some(CopyType::Int2) => ("hashint2extended", ""),
                        Some(CopyType::Int4) => ("hashint4extended", ""),
                        Some(CopyType::Int8) => ("hashint8extended", ""),
                        _ => ("hashint8extended", "::int8"),
                    },
                )
                .collect(),
            nullable: spec
                .device_columns
                .iter()
                .any(|d| found(d).is_none_or(|c| c.nullable)),
        }
    }
}

/// One plain aggregate over the stretch: no grouping, so it costs about
/// what counting the rows costs (a grouped summary costs twice that).
/// Each key's hash is seeded by its timestamp, then by each device id in
/// turn (PostgreSQL's integer hashes agree across widths, and are strict,
/// so a row without a device adds nothing to the sum). The NULL count is
/// left out when the catalog says no device column can be NULL.
pub fn totals_sql(spec: &TableSpec, devices: &DeviceTypes) -> String {
    let ts = quote_ident(TIME_COLUMN);
    let hash = spec.device_columns.iter().zip(&devices.hashes).fold(
        format!("_timescaledb_functions.to_unix_microseconds({ts})"),
        |seed, (d, (f, cast))| format!("{f}({}{cast}, {seed})", quote_ident(d)),
    );
    let hash = match spec.device_columns.is_empty() {
        true => format!("hashint8extended({hash}, 0)"),
        false => hash,
    };
    let nulls = crate::sql::device_is_null(spec)
        .filter(|_| devices.nullable)
        .map_or("0::int8".into(), |null| {
            format!("count(*) FILTER (WHERE {null})")
        });
    format!(
        "SELECT count(*), coalesce(sum({hash})::text, ''), {nulls}
           FROM {table} WHERE {ts} >= $1 AND {ts} < $2",
        table = quote_ident(spec.name),
    )
}

pub async fn totals(
    client: &Client,
    sql: &str,
    window: Window,
) -> Result<Totals, tokio_postgres::Error> {
    let row = client.query_one(sql, &[&window.start, &window.end]).await?;
    let (all, without_device): (i64, i64) = (row.get(0), row.get(2));
    Ok(Totals {
        rows: all - without_device,
        hash: row.get(1),
        without_device,
    })
}

/// Why a side's summary could not be read.
#[derive(Debug)]
pub enum ReadError {
    Db(tokio_postgres::Error),
    Id(crate::db::IdOutOfRange),
}

/// A side's hour summaries, their wire size, and how many rows had a NULL
/// device id (they cannot be keyed to a device, so they are not compared).
pub struct Summaries {
    pub summary: Summary,
    pub bytes: u64,
    pub without_device: u64,
}

pub async fn summary(
    client: &Client,
    spec: &TableSpec,
    window: Window,
) -> Result<Summaries, ReadError> {
    let rows = client
        .query(
            &summary_sql(spec),
            &[&window.start, &window.end, &BUCKET_MICROS],
        )
        .await
        .map_err(ReadError::Db)?;
    let n = spec.device_columns.len();
    let mut out = Summary::new();
    let mut without_device = 0;
    for row in &rows {
        let Some(device) = crate::db::device_id(row, n).map_err(ReadError::Id)? else {
            without_device += row.get::<_, i64>(n + 1) as u64;
            continue;
        };
        let bucket: i64 = row.get(n);
        out.insert(
            (device, bucket.saturating_mul(BUCKET_MICROS)),
            (row.get(n + 1), row.get(n + 2)),
        );
    }
    // Wire size: ids, a timestamp and two int8 per row, plus framing.
    let bytes = rows.len() as u64 * (4 * n as u64 + 8 + 8 + 8 + 20);
    Ok(Summaries {
        summary: out,
        bytes,
        without_device,
    })
}

/// Adds the summary of another stretch: a bucket both cover (the estimate's
/// stretch may end inside one) sums its counts and hashes.
pub fn add(to: &mut Summary, more: Summary) {
    for (bucket, (count, hash)) in more {
        let sum = to.entry(bucket).or_insert((0, 0));
        *sum = (sum.0 + count, sum.1.wrapping_add(hash));
    }
}

/// Buckets whose summaries differ, merged into runs per device.
pub fn differing_ranges(a: &Summary, b: &Summary) -> Vec<Range> {
    let mut keys: Vec<&(DeviceId, i64)> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut ranges: Vec<Range> = Vec::new();
    for key in keys {
        if a.get(key) == b.get(key) {
            continue;
        }
        let (device, start) = key;
        match ranges.last_mut() {
            Some(r) if &r.device == device && r.end == *start => r.end = start + BUCKET_MICROS,
            _ => ranges.push(Range {
                device: device.clone(),
                start: *start,
                end: start + BUCKET_MICROS,
            }),
        }
    }
    ranges
}

pub fn keys_sql(spec: &TableSpec) -> String {
    let ts = quote_ident(TIME_COLUMN);
    let filter = crate::sql::device_filter(spec, 3);
    format!(
        "SELECT coalesce(array_agg(t), '{{}}') FROM (SELECT DISTINCT {ts} AS t FROM {} WHERE {ts} >= $1 AND {ts} < $2{filter} ORDER BY 1) s",
        quote_ident(spec.name)
    )
}

/// The timestamps of `range` on one server, sorted and distinct.
pub async fn keys(
    client: &Client,
    statement: &tokio_postgres::Statement,
    range: &Range,
    window: Window,
) -> Result<(Vec<i64>, u64), tokio_postgres::Error> {
    let from = micros_to_time(range.start.max(window.start.timestamp_micros()));
    let to = micros_to_time(range.end.min(window.end.timestamp_micros()));
    let ids: Vec<i32> = range.device.iter().map(|&x| i32::from(x)).collect();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&from, &to];
    params.extend(ids.iter().map(|x| x as &(dyn ToSql + Sync)));
    let keys: UnixMicrosArray = client.query_one(statement, &params).await?.get(0);
    let bytes = keys.0.len() as u64 * 12 + 20;
    Ok((keys.0, bytes))
}

pub fn micros_to_time(micros: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

/// Merges two sorted, distinct timestamp lists into what each lacks.
pub fn merge(a: &[i64], b: &[i64]) -> DeviceDiff {
    let (mut i, mut j) = (0, 0);
    let mut d = DeviceDiff::default();
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                d.only_a.push(*x);
                i += 1;
            }
            (Some(x), None) => {
                d.only_a.push(*x);
                i += 1;
            }
            (_, Some(y)) => {
                d.only_b.push(*y);
                j += 1;
            }
            (None, None) => unreachable!("loop condition"),
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(name: &str, data_type: &str, nullable: bool) -> crate::catalog::Column {
        crate::catalog::Column {
            name: name.into(),
            data_type: data_type.into(),
            nullable,
        }
    }

    #[test]
    fn reconcile_totals_fold_every_device_column_into_the_key_hash() {
        let spec = &crate::schema::RACK;
        let not_null = [
            column("TIMESTAMP", "timestamp with time zone", false),
            column("BANK_ID", "smallint", false),
            column("RACK_ID", "integer", false),
        ];
        let rack = totals_sql(spec, &DeviceTypes::of(spec, &not_null));
        assert!(rack.contains(r#"sum(hashint4extended("RACK_ID", hashint2extended("BANK_ID", _timescaledb_functions.to_unix_microseconds("TIMESTAMP"))))"#), "{rack}");
        assert!(!rack.contains("FILTER"), "{rack}");
        let nullable = [
            column("BANK_ID", "numeric", true),
            column("RACK_ID", "bigint", false),
        ];
        let rack = totals_sql(spec, &DeviceTypes::of(spec, &nullable));
        assert!(
            rack.contains(r#"hashint8extended("RACK_ID", hashint8extended("BANK_ID"::int8, "#),
            "{rack}"
        );
        assert!(
            rack.contains(r#"count(*) FILTER (WHERE "BANK_ID" IS NULL OR "RACK_ID" IS NULL)"#),
            "{rack}"
        );
        let etc = totals_sql(
            &crate::schema::ETC,
            &DeviceTypes::of(&crate::schema::ETC, &[]),
        );
        assert!(
            etc.contains(r#"sum(hashint8extended(_timescaledb_functions.to_unix_microseconds("TIMESTAMP"), 0))"#),
            "{etc}"
        );
        assert!(!etc.contains("FILTER"), "{etc}");
    }

    #[test]
    fn reconcile_summaries_of_two_stretches_add_where_a_bucket_is_cut() {
        let mut first: Summary = [((vec![1], 0), (900, 7))].into();
        add(
            &mut first,
            [
                ((vec![1], 0), (2700, -3)),
                ((vec![1], BUCKET_MICROS), (3600, 5)),
            ]
            .into(),
        );
        assert_eq!(
            first,
            [
                ((vec![1], 0), (3600, 4)),
                ((vec![1], BUCKET_MICROS), (3600, 5))
            ]
            .into()
        );
    }

    #[test]
    fn reconcile_merge_finds_what_each_side_lacks() {
        let d = merge(&[1, 2, 3, 7, 9], &[2, 3, 4, 9, 10]);
        assert_eq!(d.only_a, [1, 7]);
        assert_eq!(d.only_b, [4, 10]);
        assert_eq!(merge(&[], &[5]).only_b, [5]);
        assert_eq!(merge(&[5], &[]).only_a, [5]);
    }

    #[test]
    fn reconcile_differing_buckets_merge_into_runs() {
        let h = BUCKET_MICROS;
        let a: Summary = [
            ((vec![1], 0), (3600, 1)),
            ((vec![1], h), (3600, 2)),
            ((vec![1], 2 * h), (3600, 3)),
            ((vec![2], 0), (10, 1)),
        ]
        .into();
        let b: Summary = [
            ((vec![1], 0), (3599, 9)),
            ((vec![1], h), (3600, 7)),
            ((vec![1], 2 * h), (3600, 3)),
            ((vec![3], 0), (1, 1)),
        ]
        .into();
        assert_eq!(
            differing_ranges(&a, &b),
            vec![
                Range {
                    device: vec![1],
                    start: 0,
                    end: 2 * h
                },
                Range {
                    device: vec![2],
                    start: 0,
                    end: h
                },
                Range {
                    device: vec![3],
                    start: 0,
                    end: h
                },
            ]
        );
        assert!(differing_ranges(&a, &a).is_empty());
    }

    proptest::proptest! {
        /// Reconcile of two random subsets of one key set: copying what each
        /// side lacks gives both sides their union, and nothing else.
        #[test]
        fn reconcile_merge_gives_both_sides_the_union(keys in proptest::collection::btree_set(0i64..10_000, 0..300), mask in proptest::collection::vec(0u8..3, 300)) {
            let keys: Vec<i64> = keys.into_iter().collect();
            let (a, b): (Vec<i64>, Vec<i64>) = {
                let side = |m: u8| keys.iter().zip(&mask).filter(|(_, k)| **k != m).map(|(x, _)| *x).collect::<Vec<_>>();
                (side(1), side(2))
            };
            let d = merge(&a, &b);
            let union: std::collections::BTreeSet<i64> = a.iter().chain(&b).copied().collect();
            let filled_a: std::collections::BTreeSet<i64> = a.iter().chain(&d.only_b).copied().collect();
            let filled_b: std::collections::BTreeSet<i64> = b.iter().chain(&d.only_a).copied().collect();
            proptest::prop_assert_eq!(&filled_a, &union);
            proptest::prop_assert_eq!(&filled_b, &union);
            proptest::prop_assert_eq!(filled_a.len(), a.len() + d.only_b.len(), "a key copied that a held");
            proptest::prop_assert_eq!(filled_b.len(), b.len() + d.only_a.len(), "a key copied that b held");
        }
    }
}
