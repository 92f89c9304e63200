//! The KPI rollup: per device and 15 minutes, what `essops kpi` needs of
//! the raw rows, so a day's KPIs read 96 small rows per device instead of
//! 86,400 raw ones. Percentiles cannot be averaged, so the spreads and SoH
//! are kept as histograms (each distinct value and its sample count), which
//! merge exactly: a day's percentile from them equals `percentile_cont`
//! over the day's raw rows. 15 minutes, because every zone's local midnight
//! falls on a quarter hour (hourly buckets would not fit India or Nepal).
//!
//! The same SELECT fills the rollup and computes, at KPI time, the buckets
//! the rollup does not hold (yet): one definition of a bucket.

use crate::schema::{BUCKET_COLUMN, SAMPLES_COLUMN, TIME_COLUMN, Table, TableSpec, measure_column};
use crate::sql::quote_ident;

/// The bucket width, as SQL interval text and in seconds.
pub const BUCKET: &str = "15 minutes";
pub const BUCKET_SECS: i64 = 900;

/// The tables that have KPIs and a KPI rollup (etc, the site's sensors, has none).
pub const TABLES: [TableSpec; 3] = [crate::schema::RACK, crate::schema::BANK, crate::schema::PCS];

/// Per bank and 15 minutes: the histogram of its racks' SOC spread, one
/// value per second (kept from the rack table).
pub const SPREAD_TABLE: &str = "rack_bank_kpi";

pub const ALARM_SAMPLES: &str = "ALARM_SAMPLES";
pub const FAULT_SAMPLES: &str = "FAULT_SAMPLES";

/// The histograms of a bucket row: column (values; the counts are in
/// `<column>_N`) and what it holds.
pub const HISTOGRAMS: [(&str, Histogram); 3] = [
    ("CELL_SPREAD", Histogram::Cell),
    ("TEMP_SPREAD", Histogram::Temp),
    ("SOH", Histogram::Soh),
];
pub const SOC_SPREAD: &str = "SOC_SPREAD";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Histogram {
    /// MAX_CELL_VOLTAGE − MIN_CELL_VOLTAGE (V).
    Cell,
    /// MAX_CELL_TEMP − MIN_CELL_TEMP (°C).
    Temp,
    Soh,
}

/// `rack_kpi`.
pub fn table(spec: &TableSpec) -> String {
    format!("{}_kpi", spec.name)
}

/// That the KPI rollup of `spec` exists (schema version 8).
pub async fn require(
    client: &tokio_postgres::Client,
    server: &str,
    database: &str,
    spec: &TableSpec,
) -> Result<(), crate::catalog::TableError> {
    let table = self::table(spec);
    match crate::catalog::columns(client, server, database, &table)
        .await?
        .is_empty()
    {
        false => Ok(()),
        true => Err(crate::catalog::TableError::MissingKpiRollup {
            server: server.to_string(),
            database: database.to_string(),
            table,
        }),
    }
}

/// `"CELL_SPREAD_N"`: the counts beside a histogram's values.
pub fn counts_column(values: &str) -> String {
    format!("{values}_N")
}

/// What one table offers: its columns as the catalog has them. A column it
/// lacks gives NULL, never an error.
pub struct TableColumns {
    names: Vec<String>,
}

impl TableColumns {
    pub fn new(columns: &[crate::catalog::Column]) -> TableColumns {
        TableColumns {
            names: columns.iter().map(|c| c.name.clone()).collect(),
        }
    }

    /// The columns of `public.<table>`.
    pub async fn read(
        client: &impl tokio_postgres::GenericClient,
        table: &str,
    ) -> Result<TableColumns, tokio_postgres::Error> {
        Ok(TableColumns::new(
            &crate::catalog::read_columns(client, table).await?,
        ))
    }

    pub fn has(&self, name: &str) -> bool {
        self.names.iter().any(|n| n == name)
    }

    /// `"A"::float8`, or NULL when the table lacks it.
    pub fn float(&self, name: &str) -> String {
        match self.has(name) {
            true => format!("{}::float8", quote_ident(name)),
            false => "NULL::float8".into(),
        }
    }

    pub fn word(&self, name: &str) -> String {
        match self.has(name) {
            true => format!("{}::int8", quote_ident(name)),
            false => "NULL::int8".into(),
        }
    }

    /// The column in its own type (a spread is then taken in that type,
    /// as the sensor reported it), or NULL.
    fn raw(&self, name: &str) -> String {
        match self.has(name) {
            true => quote_ident(name),
            false => "NULL::real".into(),
        }
    }

    /// The value a histogram counts, as float8.
    fn histogram_value(&self, h: Histogram) -> String {
        let spread = |hi: &str, lo: &str| format!("({} - {})::float8", self.raw(hi), self.raw(lo));
        match h {
            Histogram::Cell => spread("MAX_CELL_VOLTAGE", "MIN_CELL_VOLTAGE"),
            Histogram::Temp => spread("MAX_CELL_TEMP", "MIN_CELL_TEMP"),
            Histogram::Soh => format!("{}::float8", self.raw("SOH")),
        }
    }

    fn has_histograms(&self) -> bool {
        ["MAX_CELL_VOLTAGE", "MAX_CELL_TEMP", "SOH"]
            .iter()
            .any(|c| self.has(c))
    }
}

/// The bucket columns of a table's KPI rollup, in the order
/// [`bucket_select`] gives them.
pub fn bucket_columns(spec: &TableSpec) -> Vec<String> {
    let mut columns = vec![BUCKET_COLUMN.to_string()];
    columns.extend(spec.device_columns.iter().map(|c| c.to_string()));
    columns.extend([SAMPLES_COLUMN, ALARM_SAMPLES, FAULT_SAMPLES].map(String::from));
    for (h, _) in HISTOGRAMS {
        columns.push(h.to_string());
        columns.push(counts_column(h));
    }
    for m in spec.table.measures() {
        columns.push(measure_column(m, "MIN"));
        columns.push(measure_column(m, "MAX"));
    }
    columns
}

fn time_bucket() -> String {
    format!(
        "time_bucket(INTERVAL '{BUCKET}', {})",
        quote_ident(TIME_COLUMN)
    )
}

/// `array_agg(v ORDER BY v) FILTER (…) AS "H", array_agg(n …) … AS "H_N"`:
/// histogram `name`'s values and counts, NULL values left out.
fn histogram_arrays(v: &str, n: &str, only: &str, name: &str) -> String {
    let filter = format!("FILTER (WHERE {only}{v} IS NOT NULL)");
    format!(
        "array_agg({v} ORDER BY {v}) {filter} AS {}, (array_agg({n} ORDER BY {v}) {filter})::int4[] AS {}",
        quote_ident(name),
        quote_ident(&counts_column(name))
    )
}

/// Bucket rows (columns as [`bucket_columns`]) of the raw rows `raw`
/// selects (`"rack" WHERE …`, which may refer to a lateral row): counts and
/// extremes in one grouping, the histograms in a second (grouping sets, one
/// per histogram), joined on the bucket and device.
pub fn bucket_select(spec: &TableSpec, cols: &TableColumns, raw: &str) -> String {
    let ids = crate::sql::quote_list(spec.device_columns);
    let key = crate::sql::quote_list(&key_columns(spec));
    let mut extremes = Vec::new();
    for m in spec.table.measures() {
        let v = cols.float(m);
        extremes.push(format!(
            "min({v}) AS {}",
            quote_ident(&measure_column(m, "MIN"))
        ));
        extremes.push(format!(
            "max({v}) AS {}",
            quote_ident(&measure_column(m, "MAX"))
        ));
    }
    let counted = format!(
        "SELECT {tb} AS {b}, {ids}, count(*)::int4 AS {s},
                (count(*) FILTER (WHERE {alarm} <> 0))::int4 AS {a},
                (count(*) FILTER (WHERE {fault} <> 0))::int4 AS {f},
                {extremes}
           FROM {raw} GROUP BY {key}",
        tb = time_bucket(),
        b = quote_ident(BUCKET_COLUMN),
        s = quote_ident(SAMPLES_COLUMN),
        a = quote_ident(ALARM_SAMPLES),
        f = quote_ident(FAULT_SAMPLES),
        alarm = cols.word("ALARM"),
        fault = cols.word("FAULT"),
        extremes = extremes.join(", "),
    );
    // A table without the histograms' columns (pcs) gets NULL arrays.
    let (hist, join) = match cols.has_histograms() {
        true => (
            histogram_columns(|name, _| format!("h.{}", quote_ident(name))),
            format!(
                " JOIN ({}) h USING ({key})",
                histogram_select(spec, cols, raw, &key)
            ),
        ),
        false => (
            histogram_columns(|name, ty| format!("NULL::{ty} AS {}", quote_ident(name))),
            String::new(),
        ),
    };
    format!(
        "SELECT {columns}, c.{s}, c.{a}, c.{f}, {hist}, {ext} FROM ({counted}) c{join}",
        columns = crate::sql::prefixed_list("c", &key_columns(spec)),
        s = quote_ident(SAMPLES_COLUMN),
        a = quote_ident(ALARM_SAMPLES),
        f = quote_ident(FAULT_SAMPLES),
        hist = hist.join(", "),
        ext = extreme_columns(spec, "c"),
    )
}

/// Each histogram's values and counts column, as `column(name, type)` puts it.
fn histogram_columns(column: impl Fn(&str, &str) -> String) -> Vec<String> {
    HISTOGRAMS
        .iter()
        .flat_map(|(h, _)| [column(h, "float8[]"), column(&counts_column(h), "int4[]")])
        .collect()
}

/// A bucket row's key: `"BUCKET", "BANK_ID", …`.
fn key_columns(spec: &TableSpec) -> Vec<&'static str> {
    std::iter::once(BUCKET_COLUMN)
        .chain(spec.device_columns.iter().copied())
        .collect()
}

fn extreme_columns(spec: &TableSpec, alias: &str) -> String {
    spec.table
        .measures()
        .iter()
        .flat_map(|m| {
            ["MIN", "MAX"].map(|agg| format!("{alias}.{}", quote_ident(&measure_column(m, agg))))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per bucket and device, the three histograms: one grouping set per
/// histogram (a hash each), then each set's groups folded into arrays.
fn histogram_select(spec: &TableSpec, cols: &TableColumns, raw: &str, key: &str) -> String {
    let values: Vec<String> = HISTOGRAMS
        .iter()
        .enumerate()
        .map(|(i, (_, h))| format!("{} AS v{i}", cols.histogram_value(*h)))
        .collect();
    let sets: Vec<String> = (0..HISTOGRAMS.len())
        .map(|i| format!("({key}, v{i})"))
        .collect();
    let all: Vec<String> = (0..HISTOGRAMS.len()).map(|i| format!("v{i}")).collect();
    let arrays: Vec<String> = HISTOGRAMS
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            // GROUPING(v0, v1, v2) has a bit set for each value NOT grouped by.
            let only = format!("g = {} AND ", grouping_of(i));
            histogram_arrays(&format!("v{i}"), "n", &only, h)
        })
        .collect();
    format!(
        "SELECT {key}, {arrays}
           FROM (SELECT {key}, {all}, GROUPING({all}) AS g, count(*) AS n
                   FROM (SELECT {tb} AS {b}, {ids}, {values} FROM {raw}) r
                  GROUP BY GROUPING SETS ({sets})) s
          GROUP BY {key}",
        arrays = arrays.join(", "),
        all = all.join(", "),
        tb = time_bucket(),
        b = quote_ident(BUCKET_COLUMN),
        ids = crate::sql::quote_list(spec.device_columns),
        values = values.join(", "),
        sets = sets.join(", "),
    )
}

/// GROUPING()'s value for the grouping set of histogram `i` of three.
fn grouping_of(i: usize) -> usize {
    let n = HISTOGRAMS.len();
    ((1 << n) - 1) & !(1 << (n - 1 - i))
}

/// The SOC spread of each bank per second (across its racks that have a
/// SOC; at least two), as histogram rows per bank and bucket:
/// `"BUCKET", "BANK_ID", "SOC_SPREAD", "SOC_SPREAD_N"`. `raw` selects rack
/// rows.
pub fn spread_select(cols: &TableColumns, raw: &str) -> String {
    let (ts, bank) = (quote_ident(TIME_COLUMN), quote_ident("BANK_ID"));
    let soc = cols.raw("SOC");
    format!(
        "SELECT {b}, {bank}, {arrays}
           FROM (SELECT {b}, {bank}, spread, count(*) AS n
                   FROM (SELECT {tb} AS {b}, {bank},
                                CASE WHEN count({soc}) > 1 THEN max({soc})::float8 - min({soc})::float8 END AS spread
                           FROM {raw} GROUP BY {bank}, {ts}) s
                  GROUP BY 1, 2, 3) h
          GROUP BY 1, 2",
        b = quote_ident(BUCKET_COLUMN),
        tb = time_bucket(),
        arrays = histogram_arrays("spread", "n", "", SOC_SPREAD),
    )
}

/// `"rack" WHERE "TIMESTAMP" >= $1 AND "TIMESTAMP" < $2 AND <ids> IS NOT NULL`:
/// the raw rows of one window the rollup reads.
pub fn raw_window(spec: &TableSpec) -> String {
    let ts = quote_ident(TIME_COLUMN);
    format!(
        "{} WHERE {ts} >= $1 AND {ts} < $2{}",
        quote_ident(spec.name),
        crate::sql::devices_not_null(spec)
    )
}

/// The KPI rollups kept from one raw table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KpiRollup {
    /// Per device: `rack_kpi`, `bank_kpi`, `pcs_kpi`.
    Devices,
    /// Per bank, from the rack table: `rack_bank_kpi`.
    BankSpread,
}

impl KpiRollup {
    /// The KPI rollups of `spec`'s raw rows (none for etc).
    pub fn of(spec: &TableSpec) -> &'static [KpiRollup] {
        match spec.table {
            Table::Rack => &[KpiRollup::Devices, KpiRollup::BankSpread],
            Table::Bank | Table::Pcs => &[KpiRollup::Devices],
            Table::Etc => &[],
        }
    }

    pub fn table(self, spec: &TableSpec) -> String {
        match self {
            KpiRollup::Devices => table(spec),
            KpiRollup::BankSpread => SPREAD_TABLE.to_string(),
        }
    }

    /// `INSERT INTO "rack_kpi" (…) SELECT …` of the raw rows in `[$1, $2)`.
    pub fn insert_sql(self, spec: &TableSpec, cols: &TableColumns) -> String {
        let (columns, select) = match self {
            KpiRollup::Devices => (
                bucket_columns(spec),
                bucket_select(spec, cols, &raw_window(spec)),
            ),
            KpiRollup::BankSpread => (spread_columns(), spread_select(cols, &raw_window(spec))),
        };
        format!(
            "INSERT INTO {} ({}) {select}",
            quote_ident(&self.table(spec)),
            crate::sql::quote_list(&columns),
        )
    }
}

/// Every KPI rollup table kept from `spec`'s raw rows.
pub fn tables_of(spec: &TableSpec) -> Vec<String> {
    KpiRollup::of(spec).iter().map(|r| r.table(spec)).collect()
}

/// The columns of [`spread_select`]'s rows.
pub fn spread_columns() -> Vec<String> {
    [
        BUCKET_COLUMN,
        "BANK_ID",
        SOC_SPREAD,
        &counts_column(SOC_SPREAD),
    ]
    .map(String::from)
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grouping_values_name_the_set_of_each_histogram() {
        // GROUPING(v0, v1, v2): v0's set leaves out v1 and v2 (0b011).
        assert_eq!(grouping_of(0), 0b011);
        assert_eq!(grouping_of(1), 0b101);
        assert_eq!(grouping_of(2), 0b110);
    }

    #[test]
    fn bucket_columns_follow_the_select() {
        let cols = TableColumns { names: vec![] };
        let sql = bucket_select(&crate::schema::PCS, &cols, "\"pcs\"");
        // No histogram column: NULL arrays, no grouping sets.
        assert!(sql.contains("NULL::float8[] AS \"CELL_SPREAD\""));
        assert!(!sql.contains("GROUPING SETS"));
        let columns = bucket_columns(&crate::schema::RACK);
        assert_eq!(
            &columns[..6],
            [
                "BUCKET",
                "BANK_ID",
                "RACK_ID",
                "SAMPLES",
                "ALARM_SAMPLES",
                "FAULT_SAMPLES"
            ]
        );
        assert_eq!(
            columns.len(),
            6 + 6 + 2 * crate::schema::Table::Rack.measures().len()
        );
    }
}
