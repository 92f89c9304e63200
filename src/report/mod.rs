//! `essops report`: the fleet's loss and health as one self-contained HTML
//! page (inline CSS and SVG, no script, nothing fetched), from the run
//! history: a loss heatmap per site (device × day, coloured by grade), daily
//! loss per server, reconcile runs, failed polls, spool depth and breaker
//! episodes; and the batteries' KPIs as `essops kpi` kept them (cell-spread
//! heatmap, SoH trend, energy and RTE, alarm timeline per bank). Days the
//! loss history lacks are measured on the spot, and the page says so.
//!
//! `gather` reads, `page` turns what was read into what is shown, `charts`
//! draws the line charts, and `page.html` is the template.

mod battery;
mod charts;
mod gather;
mod page;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use clap::Args;
use serde::Serialize;

use crate::config::Site;
use crate::context::Context;
use crate::exit::{Outcome, code as exit};
use crate::output::{Report, human_bytes};
use crate::window::{Window, WindowArgs, WindowError, WindowSpec};

/// Days a report covers when no window is given.
const DEFAULT_DAYS: u32 = 7;

/// Write the fleet's loss and health as one HTML page: a loss heatmap per
/// site, daily loss per server, reconcile runs, failed polls, spool depth
/// and breaker episodes. Default window: the last 7 whole local days; a
/// part of a day is measured on the spot.
///
/// Exit code 4 when a server or its history could not be read (the page
/// says which); the loss figures themselves do not change the exit code.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Only this site (repeatable; default: all).
    #[arg(long = "site", value_name = "NAME")]
    pub sites: Vec<String>,
    #[command(flatten)]
    pub window: WindowArgs,
    /// The page to write (FILE.html); written beside it, then renamed.
    #[arg(long, value_name = "FILE.html")]
    pub output: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error(transparent)]
    Window(#[from] WindowError),
    #[error("--output {0}: the file name must end in .html or .htm")]
    OutputKind(PathBuf),
    #[error("the window is empty for site `{0}`")]
    EmptyWindow(String),
    #[error("cannot render the report: {0}")]
    Render(String),
    #[error("cannot write {path}: {reason}")]
    Write { path: PathBuf, reason: String },
}

impl ReportError {
    pub fn exit_code(&self) -> u8 {
        match self {
            ReportError::Window(_) | ReportError::OutputKind(_) | ReportError::EmptyWindow(_) => {
                exit::USAGE
            }
            ReportError::Render(_) | ReportError::Write { .. } => exit::INTERNAL,
        }
    }
}

crate::into_error!(ReportError);

/// One site: its window and the local days in it (whole, or the part the
/// window holds).
#[derive(Debug, Clone)]
struct SiteWindow {
    site: Site,
    span: Window,
    days: Vec<gather::Day>,
}

#[derive(Debug)]
pub struct ReportPlan {
    sites: Vec<SiteWindow>,
    output: PathBuf,
    now: DateTime<Utc>,
}

impl crate::command::Plan for ReportPlan {}

/// What the run did, per site, for the terminal and `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct SiteLine {
    pub site: String,
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
    pub devices: usize,
    /// The worst loss grade on the page: info, warning, critical or none.
    pub worst: &'static str,
    /// Server-days measured on the spot (the history lacked them).
    pub measured_now: usize,
    pub problems: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ReportSummary {
    pub output: PathBuf,
    pub bytes: u64,
    pub rows: Vec<SiteLine>,
}

impl crate::command::Command for ReportArgs {
    type Plan = ReportPlan;
    type Report = ReportSummary;

    async fn plan(self, ctx: &Context) -> crate::error::Result<ReportPlan> {
        let output = html_path(&self.output)?;
        let spec = self
            .window
            .given()
            .unwrap_or(WindowSpec::Days(DEFAULT_DAYS));
        let now = Utc::now();
        let mut sites = Vec::new();
        for site in ctx.config.select_sites(&self.sites)? {
            let span = spec
                .resolve(site.timezone, now)
                .map_err(ReportError::from)?
                .until(now);
            let days: Vec<gather::Day> = span
                .local_days(site.timezone)
                .into_iter()
                .map(|(date, piece, whole)| gather::Day { date, piece, whole })
                .collect();
            if days.is_empty() {
                return Err(ReportError::EmptyWindow(site.name.clone()).into());
            }
            sites.push(SiteWindow {
                site: site.clone(),
                span,
                days,
            });
        }
        Ok(ReportPlan { sites, output, now })
    }

    async fn execute(plan: ReportPlan, ctx: &Context) -> crate::error::Result<ReportSummary> {
        let gathered = crate::tasks::run_in_order(
            plan.sites.clone(),
            |w| {
                let config = Arc::clone(&ctx.config);
                async move { gather::site(&config, &w.site, w.span, w.days).await }
            },
            || {},
        )
        .await;
        let views: Vec<page::SiteView> = gathered
            .iter()
            .zip(&plan.sites)
            .map(|(data, w)| page::site_view(data, w.site.timezone, (w.span.start, w.span.end)))
            .collect();
        let rows = gathered
            .iter()
            .zip(&views)
            .map(|(data, view)| site_line(data, view))
            .collect();
        let page = page::Page {
            window: window_label(&plan.sites),
            generated: plan.now.format("%Y-%m-%d %H:%M UTC").to_string(),
            version: env!("CARGO_PKG_VERSION"),
            config: ctx.config.source.to_string(),
            sites: views,
        };
        let html = page::render(&page).map_err(|e| ReportError::Render(format!("{e:#}")))?;
        write(&plan.output, &html)?;
        Ok(ReportSummary {
            output: plan.output,
            bytes: html.len() as u64,
            rows,
        })
    }
}

fn html_path(path: &Path) -> Result<PathBuf, ReportError> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => Ok(path.to_path_buf()),
        _ => Err(ReportError::OutputKind(path.to_path_buf())),
    }
}

/// Through a temporary file and a rename: a reader never sees half a page.
fn write(path: &Path, html: &str) -> Result<(), ReportError> {
    let err = |e: std::io::Error| ReportError::Write {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
    std::fs::write(&tmp, html).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

/// The days of the sites: one span when they agree.
fn window_label(sites: &[SiteWindow]) -> String {
    let first = sites
        .iter()
        .filter_map(|s| s.days.first())
        .map(|d| d.date)
        .min();
    let last = sites
        .iter()
        .filter_map(|s| s.days.last())
        .map(|d| d.date)
        .max();
    match (first, last) {
        (Some(a), Some(b)) => format!("{a} to {b}, local days of each site"),
        _ => "no whole day".into(),
    }
}

fn site_line(data: &gather::SiteData, view: &page::SiteView) -> SiteLine {
    let mut devices: Vec<(&str, &str)> = data
        .loss
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|r| (r.table.as_str(), r.device.as_str())))
        .collect();
    devices.sort_unstable();
    devices.dedup();
    SiteLine {
        site: data.site.name.clone(),
        first_day: data.days[0].date,
        last_day: data.days[data.days.len() - 1].date,
        devices: devices.len(),
        worst: view.worst,
        measured_now: data.on_the_spot.iter().map(|(_, d)| d.len()).sum(),
        problems: data.problems.clone(),
    }
}

impl Report for ReportSummary {
    type Row = SiteLine;
    const KIND: &'static str = "site";
    const HEADER: &'static str = "SITE|DAYS|DEVICES|WORST GRADE|MEASURED NOW";
    fn rows(&self) -> &[SiteLine] {
        &self.rows
    }
    fn cells(row: &SiteLine) -> Vec<String> {
        vec![
            row.site.clone(),
            format!("{} to {}", row.first_day, row.last_day),
            row.devices.to_string(),
            row.worst.to_string(),
            match row.measured_now {
                0 => String::new(),
                n => format!("{n} server-days"),
            },
        ]
    }
    fn problem(row: &SiteLine) -> Option<String> {
        (!row.problems.is_empty()).then(|| row.problems.join("; "))
    }
    fn summary(&self) -> String {
        format!(
            "report written to {} ({})",
            self.output.display(),
            human_bytes(self.bytes)
        )
    }
    fn outcome(&self) -> Outcome {
        match self.rows.iter().any(|r| !r.problems.is_empty()) {
            true => Outcome::Partial,
            false => Outcome::Clean,
        }
    }
}
