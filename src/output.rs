//! Rendering reports: a readable table for people, JSON lines for scripts.
//!
//! The only place that prints reports. Commands return a value implementing
//! [`Report`]; the binary's `run` hands it here with the chosen [`Format`].

use std::io::{self, Write};

use serde::Serialize;

use crate::exit::Outcome;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns and a summary line.
    Table,
    /// One JSON object per row, one per line.
    Json,
}

/// What a command hands back for printing.
pub trait Report {
    type Row: Serialize;
    /// Column titles for the table form.
    const HEADER: &'static [&'static str];
    fn rows(&self) -> &[Self::Row];
    /// One table line for `row`, in `HEADER` order.
    fn cells(row: &Self::Row) -> Vec<String>;
    /// A sentence a person reads after the table.
    fn summary(&self) -> String;
    /// How the run went, for the exit code.
    fn outcome(&self) -> Outcome;
}

/// Whether people (not scripts) get the table and summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verbosity {
    Normal,
    Quiet,
}

pub fn render<R: Report>(
    report: &R,
    format: Format,
    verbosity: Verbosity,
    out: &mut dyn Write,
) -> io::Result<()> {
    match format {
        Format::Json => {
            for row in report.rows() {
                serde_json::to_writer(&mut *out, row)?;
                out.write_all(b"\n")?;
            }
        }
        Format::Table if verbosity == Verbosity::Quiet => {}
        Format::Table => {
            let rows: Vec<Vec<String>> = report.rows().iter().map(R::cells).collect();
            write_table(R::HEADER, &rows, out)?;
            writeln!(out, "{}", report.summary())?;
        }
    }
    out.flush()
}

fn write_table(header: &[&str], rows: &[Vec<String>], out: &mut dyn Write) -> io::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| -> String {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    writeln!(out, "{}", line(&mut header.iter().copied()))?;
    for row in rows {
        writeln!(out, "{}", line(&mut row.iter().map(String::as_str)))?;
    }
    Ok(())
}

/// A one-line progress bar on stderr, drawn only when stderr is a terminal
/// (never in cron mail or a script's capture).
pub struct Progress {
    total: usize,
    done: usize,
    label: &'static str,
    visible: bool,
}

impl Progress {
    pub fn new(total: usize, label: &'static str, verbosity: Verbosity) -> Progress {
        let visible = verbosity == Verbosity::Normal
            && std::io::IsTerminal::is_terminal(&std::io::stderr())
            && total > 0;
        Progress {
            total,
            done: 0,
            label,
            visible,
        }
    }

    pub fn tick(&mut self) {
        self.done += 1;
        if !self.visible {
            return;
        }
        const WIDTH: usize = 30;
        let filled = WIDTH * self.done / self.total;
        let bar = format!("{}{}", "=".repeat(filled), " ".repeat(WIDTH - filled));
        let end = if self.done == self.total { "\n" } else { "" };
        eprint!("\r[{bar}] {}/{} {}{end}", self.done, self.total, self.label);
    }
}

/// Bytes in human units (binary prefixes), as `12.3 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{value:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_table_aligns_columns() {
        let mut out = Vec::new();
        let rows = vec![
            vec!["local".to_string(), "1".to_string()],
            vec!["gcp".into(), "22".into()],
        ];
        write_table(&["SERVER", "N"], &rows, &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "SERVER  N\nlocal   1\ngcp     22\n"
        );
    }

    #[test]
    fn output_human_bytes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
