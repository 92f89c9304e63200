//! The ESS tables: their natural keys, the devices a site has in each, and
//! catalog introspection of what a server really holds.
//!
//! `migrations/` creates the tables; this module only describes them. Commands
//! that read (loss, reconcile, index, cache) ask the catalog for columns
//! instead of hard-coding them, so they also work on older deployments.

/// The hypertables' time column.
pub const TIME_COLUMN: &str = "TIMESTAMP";

/// The ESS tables. This is the one place that knows them: every `match`
/// on a `Table` is exhaustive, so a new table is a compile error wherever it
/// needs handling (its spec here, the devices a site has in it, the measures
/// the cache aggregates, whether racks are compared within their bank, and
/// the simulator's model).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    Bank,
    Rack,
    Pcs,
    Etc,
}

impl Table {
    pub const ALL: [Table; 4] = [Table::Bank, Table::Rack, Table::Pcs, Table::Etc];

    /// Each table's place in `ALL`. A new variant fails to compile here, next
    /// to `ALL`, so it is not forgotten there (an array's length would not
    /// notice); the check below holds `ALL` to these places.
    const fn in_all(self) -> usize {
        match self {
            Table::Bank => 0,
            Table::Rack => 1,
            Table::Pcs => 2,
            Table::Etc => 3,
        }
    }

    pub fn spec(self) -> TableSpec {
        match self {
            Table::Bank => BANK,
            Table::Rack => RACK,
            Table::Pcs => PCS,
            Table::Etc => ETC,
        }
    }

    /// The main measurements dashboards plot (those a deployment's table lacks are skipped).
    pub fn measures(self) -> &'static [&'static str] {
        match self {
            Table::Bank | Table::Rack => &[
                "SOC",
                "DC_VOLTAGE",
                "DC_CURRENT",
                "DC_POWER",
                "MAX_CELL_VOLTAGE",
                "MIN_CELL_VOLTAGE",
                "MAX_CELL_TEMP",
                "MIN_CELL_TEMP",
            ],
            Table::Pcs => &[
                "AC_ACTIVE_POWER",
                "AC_REACTIVE_POWER",
                "AC_FREQUENCY",
                "DC_VOLTAGE",
                "DC_CURRENT",
                "DC_POWER",
                "INTERNAL_TEMP",
            ],
            Table::Etc => &["AMBIENT_TEMP", "AMBIENT_HUMIDITY", "METER_ACTIVE_POWER"],
        }
    }

    /// Whether a device is judged against its bank's other devices (outliers).
    pub fn has_bank_peers(self) -> bool {
        match self {
            Table::Rack => true,
            Table::Bank | Table::Pcs | Table::Etc => false,
        }
    }
}

// Holds `Table::ALL` to `in_all` at compile time.
const _: () = {
    let mut i = 0;
    while i < Table::ALL.len() {
        assert!(
            Table::ALL[i].in_all() == i,
            "Table::ALL is out of step with in_all"
        );
        i += 1;
    }
};

/// One ESS table: its name and the device-id columns that, with
/// [`TIME_COLUMN`], make its natural key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableSpec {
    pub table: Table,
    pub name: &'static str,
    pub device_columns: &'static [&'static str],
}

pub const BANK: TableSpec = TableSpec {
    table: Table::Bank,
    name: "bank",
    device_columns: &["BANK_ID"],
};
pub const RACK: TableSpec = TableSpec {
    table: Table::Rack,
    name: "rack",
    device_columns: &["BANK_ID", "RACK_ID"],
};
pub const PCS: TableSpec = TableSpec {
    table: Table::Pcs,
    name: "pcs",
    device_columns: &["PCS_ID"],
};
pub const ETC: TableSpec = TableSpec {
    table: Table::Etc,
    name: "etc",
    device_columns: &[],
};

pub const TABLES: [TableSpec; 4] = [BANK, RACK, PCS, ETC];

/// The rollups of each table (`essops rollup`): its name's suffix and its bucket.
pub const ROLLUPS: [(&str, &str); 2] = [("1m", "1 minute"), ("1h", "1 hour")];
/// A rollup's time column and its sample count.
pub const BUCKET_COLUMN: &str = "BUCKET";
pub const SAMPLES_COLUMN: &str = "SAMPLES";

/// `rack_1m`.
pub fn rollup_name(spec: &TableSpec, suffix: &str) -> String {
    format!("{}_{suffix}", spec.name)
}

/// The rollup column of a measure and an aggregate: `SOC_AVG`.
pub fn measure_column(measure: &str, agg: &str) -> String {
    format!("{measure}_{agg}")
}

/// A device's ids, in the order of its table's `device_columns`
/// (empty for the site-level `etc` table).
pub type DeviceId = Vec<i16>;

impl TableSpec {
    pub fn by_name(name: &str) -> Option<TableSpec> {
        TABLES.into_iter().find(|t| t.name == name)
    }

    /// Device columns then the time column: the unique index's column order.
    pub fn key_columns(&self) -> Vec<&'static str> {
        self.device_columns
            .iter()
            .copied()
            .chain([TIME_COLUMN])
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown table `{0}` (known: bank, rack, pcs, etc)")]
pub struct UnknownTable(pub String);

/// The tables named on the command line (all when none are).
pub fn select_tables(names: &[String]) -> Result<Vec<TableSpec>, UnknownTable> {
    match names.is_empty() {
        true => Ok(TABLES.to_vec()),
        false => names
            .iter()
            .map(|t| TableSpec::by_name(t).ok_or_else(|| UnknownTable(t.clone())))
            .collect(),
    }
}

/// A device id as people write it: `bank 2 / rack 5`, `pcs 1`, `site`.
pub fn device_label(table: &TableSpec, device: &[i16]) -> String {
    if device.is_empty() {
        return "site".into();
    }
    table
        .device_columns
        .iter()
        .zip(device)
        .map(|(col, id)| format!("{} {id}", col.trim_end_matches("_ID").to_lowercase()))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// Devices of one table named on a command line: `rack:1.1-1.5` (bank 1,
/// racks 1 to 5), `rack:2.3`, `bank:1-2`, `pcs:1`. A range covers every
/// device between its ends in id order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRange {
    pub table: TableSpec,
    pub from: DeviceId,
    pub to: DeviceId,
}

/// A device range that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceRangeError {
    #[error("`{0}` is not TABLE:IDS[-IDS] (e.g. rack:1.1-1.5, bank:2, pcs:1)")]
    Syntax(String),
    #[error(transparent)]
    Table(#[from] UnknownTable),
    #[error("`{ids}`: a {table} is named by {count} ({columns})")]
    IdCount {
        ids: String,
        table: &'static str,
        count: usize,
        columns: String,
    },
    #[error("`{0}`: the range runs backwards")]
    Backwards(String),
}

impl DeviceRange {
    pub fn parse(s: &str) -> Result<DeviceRange, DeviceRangeError> {
        let syntax = || DeviceRangeError::Syntax(s.to_string());
        let (table, ids) = s.split_once(':').ok_or_else(syntax)?;
        let table = TableSpec::by_name(table).ok_or_else(|| UnknownTable(table.into()))?;
        let parse_ids = |x: &str| -> Result<DeviceId, DeviceRangeError> {
            let ids = x
                .split('.')
                .map(|p| {
                    p.trim()
                        .parse::<i16>()
                        .ok()
                        .filter(|v| *v >= 1)
                        .ok_or_else(syntax)
                })
                .collect::<Result<DeviceId, _>>()?;
            match ids.len() == table.device_columns.len() {
                true => Ok(ids),
                false => Err(DeviceRangeError::IdCount {
                    ids: x.to_string(),
                    table: table.name,
                    count: table.device_columns.len(),
                    columns: table.device_columns.join("."),
                }),
            }
        };
        let (from, to) = match ids.split_once('-') {
            Some((a, b)) => (parse_ids(a)?, parse_ids(b)?),
            None => (parse_ids(ids)?, parse_ids(ids)?),
        };
        if from > to {
            return Err(DeviceRangeError::Backwards(s.to_string()));
        }
        Ok(DeviceRange { table, from, to })
    }

    pub fn contains(&self, table: &TableSpec, device: &[i16]) -> bool {
        self.table == *table && self.from.as_slice() <= device && device <= self.to.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_labels_and_keys() {
        assert_eq!(device_label(&RACK, &[2, 5]), "bank 2 / rack 5");
        assert_eq!(RACK.key_columns(), ["BANK_ID", "RACK_ID", "TIMESTAMP"]);
    }

    #[test]
    fn schema_device_ranges_parse_and_match() {
        let r = DeviceRange::parse("rack:1.2-2.1").unwrap();
        assert!(
            r.contains(&RACK, &[1, 2]) && r.contains(&RACK, &[1, 9]) && r.contains(&RACK, &[2, 1])
        );
        assert!(
            !r.contains(&RACK, &[1, 1]) && !r.contains(&RACK, &[2, 2]) && !r.contains(&BANK, &[1])
        );
        assert!(DeviceRange::parse("bank:2").unwrap().contains(&BANK, &[2]));
        for bad in ["rack:1", "rack", "tank:1", "bank:0", "bank:3-1", "rack:1.x"] {
            assert!(DeviceRange::parse(bad).is_err(), "{bad}");
        }
    }
}
