//! `loss --output`: the device and table rows as a polars frame. Times are
//! UTC datetimes.

use polars::prelude::*;

use super::{LossReport, LossRow};
use crate::export::{ExportError, ExportPath};
use crate::window::Window;

/// Writes the device and table rows to `path`.
pub fn write(path: &ExportPath, report: &LossReport) -> Result<(), ExportError> {
    path.write(|| frame(report))
}

/// One exported line: a device's or a table's loss.
struct Line<'a> {
    kind: &'static str,
    server: &'a str,
    site: &'a str,
    table: &'a str,
    device: Option<&'a str>,
    window: Window,
    expected: i64,
    observed: i64,
    loss_pct: f64,
    gaps: Option<i64>,
    longest: Option<i64>,
    level: &'static str,
    size: Option<i64>,
}

fn line(row: &LossRow) -> Option<Line<'_>> {
    Some(match row {
        LossRow::Device(d) => Line {
            kind: "device",
            server: &d.server,
            site: &d.site,
            table: &d.table,
            device: Some(&d.device),
            window: d.window,
            expected: d.expected,
            observed: d.observed,
            loss_pct: d.loss_pct,
            gaps: Some(d.gap_count as i64),
            longest: d.longest_gaps.first().map(|g| g.length_secs),
            level: d.level.as_str(),
            size: None,
        },
        LossRow::Table(t) => Line {
            kind: "table",
            server: &t.server,
            site: &t.site,
            table: &t.table,
            device: None,
            window: t.window,
            expected: t.expected,
            observed: t.observed,
            loss_pct: t.loss_pct,
            gaps: None,
            longest: None,
            level: t.level.as_str(),
            size: Some(t.size_bytes),
        },
        LossRow::Failure(_) => return None,
    })
}

/// One row per device and per table (kind = "device" | "table").
fn frame(report: &LossReport) -> PolarsResult<DataFrame> {
    let lines: Vec<Line> = report.rows.iter().filter_map(line).collect();
    macro_rules! column {
        ($name:literal, $get:expr) => {
            Column::new($name.into(), lines.iter().map($get).collect::<Vec<_>>())
        };
    }
    let utc_ms = DataType::Datetime(TimeUnit::Milliseconds, None);
    DataFrame::new_infer_height(vec![
        column!("kind", |l| l.kind),
        column!("server", |l| l.server),
        column!("site", |l| l.site),
        column!("table", |l| l.table),
        column!("device", |l| l.device),
        column!("window_start", |l| l.window.start.timestamp_millis()).cast(&utc_ms)?,
        column!("window_end", |l| l.window.end.timestamp_millis()).cast(&utc_ms)?,
        column!("expected", |l| l.expected),
        column!("observed", |l| l.observed),
        column!("loss_pct", |l| l.loss_pct),
        column!("gap_count", |l| l.gaps),
        column!("longest_gap_secs", |l| l.longest),
        column!("size_bytes", |l| l.size),
        column!("level", |l| l.level),
    ])
}
