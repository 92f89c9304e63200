//! Samples as polled, and batches of them as written to every server.

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::db::{BinaryCopyWriter, CopyType};
use crate::modbus::value::Value;
use crate::schema::{DeviceId, TableSpec};

/// One device's values at one grid second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    #[serde(rename = "d")]
    pub device: DeviceId,
    /// Unix seconds, on the sample grid.
    #[serde(rename = "t")]
    pub t: i64,
    /// In the batch's column order; `None` is NULL.
    #[serde(rename = "v")]
    pub values: Vec<Option<Value>>,
    /// Index into the plan's devices (for per-device counters); not spooled.
    #[serde(skip)]
    pub device_index: usize,
    /// When the poll started, for the poll-to-commit delay; not spooled.
    #[serde(skip)]
    pub polled: Option<Instant>,
}

/// Rows of one table with the same value columns: what one COPY writes.
#[derive(Debug, Clone)]
pub struct Batch {
    pub spec: TableSpec,
    pub columns: Arc<Vec<String>>,
    pub rows: Vec<Row>,
}

impl Batch {
    /// Every column the COPY names: device ids, the time, then the values.
    pub fn all_columns(&self) -> Vec<String> {
        self.spec
            .key_columns()
            .into_iter()
            .map(String::from)
            .chain(self.columns.iter().cloned())
            .collect()
    }

    /// The rows as a binary COPY stream, typed as the target's catalog says
    /// (`types` follows [`all_columns`](Self::all_columns)).
    pub fn encode(&self, types: &[CopyType]) -> bytes::Bytes {
        let keys = self.spec.device_columns.len();
        let mut w = BinaryCopyWriter::new();
        for row in &self.rows {
            w.begin_row(types.len());
            for (id, ty) in row.device.iter().zip(types) {
                w.int(*ty, (*id).into());
            }
            w.timestamptz(row.t * 1_000_000);
            for (v, ty) in row.values.iter().zip(&types[keys + 1..]) {
                match v {
                    None => w.null(),
                    Some(Value::Int(i)) => w.int(*ty, *i),
                    Some(Value::Float(f)) => w.float(*ty, *f),
                }
            }
        }
        w.finish()
    }
}
