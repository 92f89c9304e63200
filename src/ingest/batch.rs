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

/// A value its column cannot hold (the server would refuse the batch for good).
#[derive(Debug, thiserror::Error)]
#[error("value {value} of `{table}.{column}` does not fit its column type {}", .ty.name())]
pub struct EncodeError {
    pub value: String,
    pub table: &'static str,
    pub column: String,
    pub ty: CopyType,
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
    /// (`types` follows [`all_columns`](Self::all_columns)). A value its
    /// column cannot hold is an error naming both: the server would refuse
    /// it for good, so the batch is set aside rather than retried.
    pub fn encode(&self, types: &[CopyType]) -> Result<bytes::Bytes, EncodeError> {
        let keys = self.spec.device_columns.len();
        let mut w = BinaryCopyWriter::new();
        for row in &self.rows {
            w.begin_row(types.len());
            for (id, ty) in row.device.iter().zip(types) {
                w.int(*ty, (*id).into());
            }
            w.timestamptz(row.t * 1_000_000);
            for (i, (v, ty)) in row.values.iter().zip(&types[keys + 1..]).enumerate() {
                match v {
                    None => w.null(),
                    Some(Value::Int(x)) => {
                        if let Some((lo, hi)) = ty.int_range()
                            && !(lo..=hi).contains(&i128::from(*x))
                        {
                            return Err(self.unfit(i, &x.to_string(), *ty));
                        }
                        w.int(*ty, *x)
                    }
                    Some(Value::Float(f)) => {
                        if let Some((lo, hi)) = ty.int_range()
                            && !(f.is_finite() && (lo as f64..=hi as f64).contains(&f.round()))
                        {
                            return Err(self.unfit(i, &f.to_string(), *ty));
                        }
                        w.float(*ty, *f)
                    }
                }
            }
        }
        Ok(w.finish())
    }

    fn unfit(&self, column: usize, value: &str, ty: CopyType) -> EncodeError {
        EncodeError {
            value: value.to_string(),
            table: self.spec.name,
            column: self.columns[column].clone(),
            ty,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_value_that_does_not_fit_names_the_postgres_type() {
        let e = EncodeError {
            value: "70000".into(),
            table: "rack",
            column: "STATUS".into(),
            ty: CopyType::Int2,
        };
        assert_eq!(
            e.to_string(),
            "value 70000 of `rack.STATUS` does not fit its column type smallint"
        );
        for (name, t) in CopyType::NAMES {
            assert_eq!((CopyType::from_catalog(name), t.name()), (Some(t), name));
        }
    }
}
