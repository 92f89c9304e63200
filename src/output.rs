//! Rendering reports: a readable table for people, JSON lines for scripts.
//!
//! The only place that prints reports. Commands return a value implementing
//! [`Report`]; the binary's `run` hands it here with the chosen [`Format`].

use std::io::{self, Write};

use comfy_table::{ContentArrangement, Table};
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
    /// The `kind` of a row under `--json`, for rows that do not name their own.
    const KIND: &'static str;
    /// Column titles for the table form, separated by `|`.
    const HEADER: &'static str;
    fn rows(&self) -> &[Self::Row];
    /// One table line for `row`, in `HEADER` order; missing cells are blank.
    fn cells(row: &Self::Row) -> Vec<String>;
    /// What went wrong with `row`, if anything. The table shows a reference
    /// and the text goes below it, so a long error never stretches a column.
    fn problem(_row: &Self::Row) -> Option<String> {
        None
    }
    /// A sentence a person reads after the table.
    fn summary(&self) -> String;
    /// How the run went, for the exit code.
    fn outcome(&self) -> Outcome;
}

/// A report that is only its rows.
#[derive(Debug, Clone, Serialize)]
pub struct Rows<T> {
    pub rows: Vec<T>,
}

/// A (server, site, maybe table) that could not be done: a report row of
/// its own, with the error printed below the table.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub server: String,
    pub site: String,
    pub table: Option<String>,
    pub error: String,
}

impl Failure {
    pub fn new(server: &str, site: &str, table: Option<&str>, error: String) -> Failure {
        Failure {
            server: server.to_string(),
            site: site.to_string(),
            table: table.map(str::to_string),
            error,
        }
    }

    /// Its first table cells: server, site, table, FAILED.
    pub fn cells(&self) -> Vec<String> {
        vec![
            self.server.clone(),
            self.site.clone(),
            self.table.clone().unwrap_or_default(),
            "FAILED".into(),
        ]
    }
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
                let mut value = serde_json::to_value(row)?;
                if let Some(object) = value.as_object_mut() {
                    object
                        .entry("kind")
                        .or_insert_with(|| serde_json::Value::from(R::KIND));
                }
                serde_json::to_writer(&mut *out, &value)?;
                out.write_all(b"\n")?;
            }
        }
        Format::Table if verbosity == Verbosity::Quiet => quiet_problems(report)?,
        Format::Table => {
            write_table(report, terminal_width(), out)?;
            writeln!(out, "{}", report.summary())?;
        }
    }
    out.flush()
}

/// Quiet is not silent: without the table, each distinct problem and, when
/// the run was not clean, its summary still go to stderr, where cron mail
/// and the journal find them.
fn quiet_problems<R: Report>(report: &R) -> io::Result<()> {
    let mut err = io::stderr().lock();
    let mut seen: Vec<String> = Vec::new();
    for problem in report.rows().iter().filter_map(R::problem) {
        if !seen.contains(&problem) {
            writeln!(err, "essops: {problem}")?;
            seen.push(problem);
        }
    }
    if report.outcome() != Outcome::Clean {
        writeln!(err, "essops: {}", report.summary())?;
    }
    Ok(())
}

/// The width to fit: the terminal's when stdout is one, else unbounded
/// (a pipe or cron mail keeps whole lines for grep).
fn terminal_width() -> Option<u16> {
    console::Term::stdout().size_checked().map(|(_, cols)| cols)
}

fn write_table<R: Report>(report: &R, width: Option<u16>, out: &mut dyn Write) -> io::Result<()> {
    if report.rows().is_empty() {
        return Ok(());
    }
    let mut header: Vec<&str> = R::HEADER.split('|').collect();
    let columns = header.len();
    let problems: Vec<Option<String>> = report.rows().iter().map(R::problem).collect();
    let any_problem = problems.iter().any(Option::is_some);
    if any_problem {
        header.push("PROBLEM");
    }
    let mut table = Table::new();
    table
        .load_style(comfy_table::presets::NOTHING)
        .set_header(header);
    if let Some(width) = width {
        table
            .set_width(width)
            .set_content_arrangement(ContentArrangement::Dynamic);
    }
    // One cause is printed once: rows with the same problem share its number.
    let mut numbered: Vec<String> = Vec::new();
    for (row, problem) in report.rows().iter().zip(problems) {
        let mut cells = R::cells(row);
        cells.resize(columns, String::new());
        if let Some(text) = problem {
            let n = match numbered.iter().position(|t| *t == text) {
                Some(i) => i + 1,
                None => {
                    numbered.push(text);
                    numbered.len()
                }
            };
            cells.push(format!("[{n}]"));
        } else if any_problem {
            cells.push(String::new());
        }
        table.add_row(cells);
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    for line in table.lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    for (n, text) in numbered.iter().enumerate() {
        for cause in text.lines() {
            writeln!(out, "[{}] {cause}", n + 1)?;
        }
    }
    Ok(())
}

/// A progress bar on stderr. indicatif draws nothing when stderr is not a
/// terminal (cron mail, a script's capture); `--quiet` hides it too.
pub struct Progress(indicatif::ProgressBar);

impl Progress {
    pub fn new(total: usize, label: &'static str, verbosity: Verbosity) -> Progress {
        let bar = match verbosity {
            Verbosity::Normal => indicatif::ProgressBar::new(total as u64),
            Verbosity::Quiet => indicatif::ProgressBar::hidden(),
        };
        let style = indicatif::ProgressStyle::with_template("[{bar:30}] {pos}/{len} {msg}")
            .expect("the template is valid")
            .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(label);
        Progress(bar)
    }

    pub fn tick(&mut self) {
        self.0.inc(1);
        if self.0.position() >= self.0.length().unwrap_or(0) {
            self.0.finish();
        }
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

    struct Sample(Vec<(&'static str, &'static str, Option<&'static str>)>);

    impl Report for Sample {
        type Row = (&'static str, &'static str, Option<&'static str>);
        const KIND: &'static str = "test";
        const HEADER: &'static str = "SERVER|N";
        fn rows(&self) -> &[Self::Row] {
            &self.0
        }
        fn cells(r: &Self::Row) -> Vec<String> {
            vec![r.0.into(), r.1.into()]
        }
        fn problem(r: &Self::Row) -> Option<String> {
            r.2.map(String::from)
        }
        fn summary(&self) -> String {
            String::new()
        }
        fn outcome(&self) -> Outcome {
            Outcome::Clean
        }
    }

    fn table(
        rows: Vec<(&'static str, &'static str, Option<&'static str>)>,
        width: Option<u16>,
    ) -> String {
        let mut out = Vec::new();
        write_table(&Sample(rows), width, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn output_table_aligns_columns() {
        let text = table(vec![("local", "1", None), ("gcp", "22", None)], None);
        assert_eq!(text, "SERVER  N\nlocal   1\ngcp     22\n");
    }

    #[test]
    fn output_problems_go_below_the_table_not_into_a_cell() {
        let long = "connection refused: the server at 127.0.0.1:25433 did not answer in 5 s and the run went on with the other servers";
        let text = table(
            vec![("local", "1", None), ("gcp", "22", Some(long))],
            Some(60),
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "SERVER  N   PROBLEM");
        assert_eq!(lines[2], "gcp     22  [1]");
        assert_eq!(lines.last().unwrap(), &format!("[1] {long}"));
        assert!(
            lines[..lines.len() - 1]
                .iter()
                .all(|l| l.chars().count() <= 60)
        );
    }

    #[test]
    fn output_one_cause_is_printed_once() {
        let cause = Some("server `local`: cannot read password file /x: not found");
        let rows = vec![
            ("a", "1", cause),
            ("b", "2", cause),
            ("c", "3", Some("other")),
        ];
        let text = table(rows, None);
        assert_eq!(
            text.matches("cannot read password file").count(),
            1,
            "{text}"
        );
        assert_eq!(text.matches("[1]").count(), 3, "{text}");
        assert!(text.contains("c       3  [2]"), "{text}");
    }

    #[test]
    fn output_table_wraps_long_cells_to_the_width() {
        let text = table(
            vec![("a-very-long-server-name-that-does-not-fit", "1", None)],
            Some(20),
        );
        assert!(text.lines().all(|l| l.chars().count() <= 20), "{text}");
        assert!(text.lines().count() > 2, "{text}");
    }

    #[test]
    fn output_human_bytes() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
