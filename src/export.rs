//! `--output FILE.csv|FILE.parquet`: a report's rows as a polars frame, for
//! spreadsheets and notebooks, written through a temporary file and a
//! rename so a reader never sees half a file.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use crate::exit::code as exit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Csv,
    Parquet,
}

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("--output {0}: the file name must end in .csv or .parquet")]
    Kind(PathBuf),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl ExportError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ExportError::Kind(_) => exit::USAGE,
            ExportError::Write { .. } => exit::INTERNAL,
        }
    }
}

crate::into_error!(ExportError);

#[derive(Debug, Clone)]
pub struct ExportPath {
    path: PathBuf,
    kind: Kind,
}

impl ExportPath {
    pub fn new(path: &Path) -> Result<ExportPath, ExportError> {
        let kind = match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => Kind::Csv,
            Some("parquet") => Kind::Parquet,
            _ => return Err(ExportError::Kind(path.to_path_buf())),
        };
        Ok(ExportPath {
            path: path.to_path_buf(),
            kind,
        })
    }

    /// Writes the frame `build` makes.
    pub fn write(
        &self,
        build: impl FnOnce() -> PolarsResult<DataFrame>,
    ) -> Result<(), ExportError> {
        let err = |reason: String| ExportError::Write {
            path: self.path.clone(),
            reason,
        };
        let mut df = build().map_err(|e| err(e.to_string()))?;
        let tmp = self
            .path
            .with_extension(format!("tmp-{}", std::process::id()));
        let mut file = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        let written = match self.kind {
            Kind::Csv => CsvWriter::new(&mut file).finish(&mut df).map(|_| ()),
            Kind::Parquet => ParquetWriter::new(&mut file).finish(&mut df).map(|_| ()),
        };
        written.map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| err(e.to_string()))
    }
}

/// A frame of JSON objects: one column per key (`first` first, then the
/// others in order of first appearance), typed integer, float, boolean or
/// text by its values; nested values are kept as JSON text; a row without
/// the key is null.
pub fn frame_of_json(rows: &[serde_json::Value], first: &[&str]) -> PolarsResult<DataFrame> {
    let mut keys: Vec<&str> = first.to_vec();
    for row in rows {
        for k in row.as_object().into_iter().flat_map(|o| o.keys()) {
            if !keys.contains(&k.as_str()) {
                keys.push(k);
            }
        }
    }
    let columns = keys
        .iter()
        .map(|key| json_column(key, rows.iter().map(|r| r.get(*key))))
        .collect();
    DataFrame::new_infer_height(columns)
}

fn json_column<'a>(
    name: &str,
    values: impl Iterator<Item = Option<&'a serde_json::Value>> + Clone,
) -> Column {
    use serde_json::Value;
    let present = values.clone().flatten().filter(|v| !v.is_null());
    let all = |f: fn(&Value) -> bool| present.clone().all(f);
    if all(|v| v.is_i64()) {
        Column::new(
            name.into(),
            values
                .map(|v| v.and_then(Value::as_i64))
                .collect::<Vec<_>>(),
        )
    } else if all(|v| v.is_number()) {
        Column::new(
            name.into(),
            values
                .map(|v| v.and_then(Value::as_f64))
                .collect::<Vec<_>>(),
        )
    } else if all(|v| v.is_boolean()) {
        Column::new(
            name.into(),
            values
                .map(|v| v.and_then(Value::as_bool))
                .collect::<Vec<_>>(),
        )
    } else {
        let text = |v: &Value| match v {
            Value::Null => None,
            Value::String(s) => Some(s.clone()),
            other => Some(other.to_string()),
        };
        Column::new(
            name.into(),
            values.map(|v| v.and_then(text)).collect::<Vec<_>>(),
        )
    }
}
