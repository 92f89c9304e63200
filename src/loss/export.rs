//! `--output FILE.csv|FILE.parquet`: the device and table rows as a polars
//! frame, for spreadsheets and notebooks. Times are UTC datetimes.

use std::path::{Path, PathBuf};

use polars::prelude::*;

use super::{LossError, LossReport, LossRow};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Csv,
    Parquet,
}

#[derive(Debug, Clone)]
pub struct ExportPath {
    path: PathBuf,
    kind: Kind,
}

impl ExportPath {
    pub fn new(path: &Path) -> Result<ExportPath, LossError> {
        let kind = match path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("csv") => Kind::Csv,
            Some("parquet") => Kind::Parquet,
            _ => return Err(LossError::OutputKind(path.to_path_buf())),
        };
        Ok(ExportPath {
            path: path.to_path_buf(),
            kind,
        })
    }

    /// Writes through a temporary file and a rename, so a reader never sees half a file.
    pub fn write(&self, report: &LossReport) -> Result<(), LossError> {
        let err = |reason: String| LossError::Export {
            path: self.path.clone(),
            reason,
        };
        let mut df = frame(report).map_err(|e| err(e.to_string()))?;
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

/// One row per device and per table (kind = "device" | "table").
fn frame(report: &LossReport) -> PolarsResult<DataFrame> {
    let mut kind = Vec::new();
    let (mut server, mut site, mut table, mut device) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut start, mut end) = (Vec::new(), Vec::new());
    let (mut expected, mut observed, mut loss, mut gaps, mut longest, mut level) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    let mut size = Vec::new();
    for row in &report.rows {
        match row {
            LossRow::Device(d) => {
                kind.push("device");
                server.push(d.server.clone());
                site.push(d.site.clone());
                table.push(d.table.clone());
                device.push(Some(d.device.clone()));
                start.push(d.window.start.timestamp_millis());
                end.push(d.window.end.timestamp_millis());
                expected.push(d.expected);
                observed.push(d.observed);
                loss.push(d.loss_pct);
                gaps.push(Some(d.gap_count as i64));
                longest.push(d.longest_gaps.first().map(|g| g.length_secs));
                level.push(d.level.as_str());
                size.push(None);
            }
            LossRow::Table(t) => {
                kind.push("table");
                server.push(t.server.clone());
                site.push(t.site.clone());
                table.push(t.table.clone());
                device.push(None);
                start.push(t.window.start.timestamp_millis());
                end.push(t.window.end.timestamp_millis());
                expected.push(t.expected);
                observed.push(t.observed);
                loss.push(t.loss_pct);
                gaps.push(None);
                longest.push(None);
                level.push(t.level.as_str());
                size.push(Some(t.size_bytes));
            }
            LossRow::Failure(_) => {}
        }
    }
    let utc_ms = DataType::Datetime(TimeUnit::Milliseconds, None);
    DataFrame::new_infer_height(vec![
        Column::new("kind".into(), kind),
        Column::new("server".into(), server),
        Column::new("site".into(), site),
        Column::new("table".into(), table),
        Column::new("device".into(), device),
        Column::new("window_start".into(), start).cast(&utc_ms)?,
        Column::new("window_end".into(), end).cast(&utc_ms)?,
        Column::new("expected".into(), expected),
        Column::new("observed".into(), observed),
        Column::new("loss_pct".into(), loss),
        Column::new("gap_count".into(), gaps),
        Column::new("longest_gap_secs".into(), longest),
        Column::new("size_bytes".into(), size),
        Column::new("level".into(), level),
    ])
}
