//! SunSpec devices: batteries (802, 803, 804) and inverters (101–103, 701)
//! that describe their own registers, so nobody writes a map. [`scan`]
//! finds a device's models, [`mapping`] turns them into the bank, rack and
//! PCS columns, [`model`] reads the vendored model definitions.

pub mod mapping;
pub mod model;
pub mod scan;

use crate::modbus::map::{Field, RegisterKind, RegisterMap, TableMap};
use crate::modbus::value::WordOrder;
use crate::schema::Table;

/// The word a site's `register_map` gives for SunSpec devices.
pub const MAP_NAME: &str = "sunspec";

/// The register map of a SunSpec site: its tables list the columns SunSpec
/// fills (for preflight and the writer); the registers come from discovery.
/// Each bank is a battery at endpoint `bms` with unit id = bank id, its
/// racks are the battery's strings, each PCS an inverter at `pcs` with
/// unit id = PCS id.
pub fn register_map() -> RegisterMap {
    let table = |table: Table, endpoint: &str, stride_of_first: Vec<u32>| TableMap {
        spec: table.spec(),
        endpoint: Some(endpoint.to_string()),
        unit: 1,
        unit_stride: stride_of_first,
        base: 0,
        stride: vec![0; table.spec().device_columns.len()],
        max_gap: 0,
        fields: mapping::columns(table)
            .iter()
            .map(|(column, dtype)| Field {
                column: column.to_string(),
                kind: RegisterKind::Holding,
                at: 0,
                dtype: *dtype,
                order: WordOrder::Big,
                scale: 1.0,
                offset: 0.0,
            })
            .collect(),
    };
    RegisterMap {
        label: MAP_NAME.to_string(),
        sunspec: true,
        tables: vec![
            table(Table::Bank, "bms", vec![1]),
            table(Table::Rack, "bms", vec![1, 0]),
            table(Table::Pcs, "pcs", vec![1]),
        ],
    }
}

/// The role a device of a SunSpec site plays.
pub fn role(table: Table, device: &[i16]) -> Option<mapping::Role> {
    match table {
        Table::Bank => Some(mapping::Role::Bank),
        Table::Rack => Some(mapping::Role::Rack {
            string: *device.get(1)? as u16,
        }),
        Table::Pcs => Some(mapping::Role::Pcs),
        Table::Etc => None,
    }
}
