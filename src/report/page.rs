//! From what was read to what the page shows: the heatmap's rows and cells
//! (positions, grade, hover text), the charts' series, the tables' lines.
//! The template (`page.html`) only lays these out.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::charts::{self, Series};
use super::gather::{Day, SiteData};
use crate::history::read::{BreakerEvent, DeviceDay};
use crate::schema::TABLES;

/// Above this many devices a site's heatmap shows one row per bank's racks,
/// with each bank's racks in a drill-down section.
pub const GROUP_ABOVE: usize = 300;
/// Heatmap geometry, in pixels: a cell's pitch, the device labels' width,
/// the date labels' height.
const CELL: u32 = 14;
const LABEL_WIDTH: u32 = 150;
const HEADER_HEIGHT: u32 = 44;

const TEMPLATE: &str = include_str!("page.html");

#[derive(Debug, Serialize)]
pub struct Page {
    pub window: String,
    pub generated: String,
    pub version: &'static str,
    pub config: String,
    pub sites: Vec<SiteView>,
}

#[derive(Debug, Serialize)]
pub struct SiteView {
    pub name: String,
    pub timezone: String,
    pub days: String,
    /// The worst grade of any cell: info, warning, critical, or none.
    pub worst: &'static str,
    pub heatmap: Heatmap,
    /// Per bank, its racks (only when the heatmap groups them).
    pub banks: Vec<Heatmap>,
    pub loss_chart: Option<String>,
    pub runs_chart: Option<String>,
    pub runs: Vec<RunLine>,
    pub polls_chart: Option<String>,
    pub spool_chart: Option<String>,
    pub episodes: Vec<Episode>,
    pub sizes: Vec<SizeLine>,
    pub battery: super::battery::BatteryView,
    pub on_the_spot: Vec<String>,
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Heatmap {
    pub title: String,
    pub width: u32,
    pub height: u32,
    /// Where the device labels end and the date labels start.
    pub label_x: u32,
    pub date_y: u32,
    pub columns: Vec<Column>,
    pub rows: Vec<HeatRow>,
}

#[derive(Debug, Serialize)]
pub struct Column {
    pub x: u32,
    pub label: String,
}

#[derive(Debug, Serialize)]
pub struct HeatRow {
    pub y: u32,
    pub label: String,
    pub cells: Vec<Cell>,
}

#[derive(Debug, Serialize)]
pub struct Cell {
    pub x: u32,
    pub grade: &'static str,
    pub title: String,
}

#[derive(Debug, Serialize)]
pub struct RunLine {
    pub at: String,
    pub table: String,
    pub copied: String,
    pub outcome: String,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct SizeLine {
    pub server: String,
    pub table: String,
    pub total: String,
    pub indexes: String,
    pub rows: i64,
    pub growth: String,
}

#[derive(Debug, Serialize)]
pub struct Episode {
    pub device: String,
    pub host: String,
    pub opened: String,
    pub closed: String,
    pub length: String,
}

pub fn render(page: &Page) -> Result<String, minijinja::Error> {
    let mut env = minijinja::Environment::new();
    // The `.html` name turns on HTML escaping of every value.
    env.add_template("report.html", TEMPLATE)?;
    env.get_template("report.html")?.render(page)
}

/// Ranks grades, best first; "none" (no figure) ranks lowest.
fn rank(grade: &str) -> u8 {
    match grade {
        "info" => 1,
        "warning" => 2,
        "critical" => 3,
        _ => 0,
    }
}

fn grade_name(grade: &str) -> &'static str {
    match grade {
        "info" => "info",
        "warning" => "warning",
        "critical" => "critical",
        _ => "none",
    }
}

/// A device of the site: its table's rank, its ids, its label.
type DeviceKey = (usize, Vec<i16>, String);

fn device_key(d: &DeviceDay) -> DeviceKey {
    let table = TABLES
        .iter()
        .position(|t| t.name == d.table)
        .unwrap_or(TABLES.len());
    (table, d.device_ids.clone(), d.device.clone())
}

pub fn site_view(data: &SiteData, tz: Tz, span: (DateTime<Utc>, DateTime<Utc>)) -> SiteView {
    let span_start = span.0;
    // Per device and day, each server's figure.
    let mut grid: Grid<'_> = BTreeMap::new();
    for (server, rows) in &data.loss {
        for r in rows {
            grid.entry(device_key(r))
                .or_default()
                .entry(r.day)
                .or_default()
                .push((server.as_str(), r));
        }
    }
    let (heatmap, banks) = heatmaps(data, &grid);
    let worst = grid
        .values()
        .flat_map(|days| days.values().flatten())
        .map(|(_, r)| r.grade.as_str())
        .max_by_key(|g| rank(g))
        .map_or("none", grade_name);
    let x_of = |t: DateTime<Utc>| (t - span_start).num_seconds() as f64 / 86_400.0;
    SiteView {
        name: data.site.name.clone(),
        timezone: tz.name().to_string(),
        days: day_span(&data.days),
        worst,
        heatmap,
        banks,
        loss_chart: chart("Loss per day and server", "loss %", data, loss_series(data)),
        runs_chart: chart(
            "Rows copied by reconcile",
            "rows",
            data,
            runs_series(data, &x_of),
        ),
        runs: run_lines(data, tz),
        polls_chart: chart(
            "Failed polls per hour, by reason",
            "polls",
            data,
            hourly_series(&data.failed_polls, &x_of, |name| name.to_string()),
        ),
        spool_chart: chart(
            "Spool depth (rows waiting), per server",
            "rows",
            data,
            hourly_series(&data.spool, &x_of, |name| format!("for {name}")),
        ),
        episodes: episodes(&data.breakers, tz),
        sizes: data
            .sizes
            .iter()
            .map(|t| {
                let b = |n: i64| crate::output::human_bytes(n.max(0) as u64);
                SizeLine {
                    server: t.server.clone(),
                    table: t.table.clone(),
                    total: b(t.total_bytes),
                    indexes: b(t.index_bytes),
                    rows: t.estimated_rows,
                    growth: format!("{}/day", b(t.growth_bytes_per_day)),
                }
            })
            .collect(),
        battery: super::battery::view(data, tz, span),
        on_the_spot: data
            .on_the_spot
            .iter()
            .map(|(server, days)| format!("server {server}: {}", dates(days)))
            .collect(),
        problems: data.problems.clone(),
    }
}

fn chart(title: &str, unit: &str, data: &SiteData, series: Vec<Series>) -> Option<String> {
    match charts::lines(title, unit, &data.dates(), &series) {
        Ok(svg) => svg,
        Err(e) => {
            tracing::warn!(site = %data.site.name, chart = title, error = %e, "chart not drawn");
            None
        }
    }
}

fn day_span(days: &[Day]) -> String {
    let part = match days.iter().any(|d| !d.whole) {
        true => ", part of a day measured on the spot",
        false => "",
    };
    match (days.first(), days.last()) {
        (Some(a), Some(b)) if a == b => format!("{}{part}", a.date),
        (Some(a), Some(b)) => format!("{} to {} ({} days{part})", a.date, b.date, days.len()),
        _ => "no day".into(),
    }
}

fn dates(days: &[NaiveDate]) -> String {
    days.iter()
        .map(NaiveDate::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

// ------------------------------------------------------------------ heatmap

type Grid<'a> = BTreeMap<DeviceKey, BTreeMap<NaiveDate, Vec<(&'a str, &'a DeviceDay)>>>;

/// The site's heatmap, and per bank its racks' when the devices are many.
fn heatmaps(data: &SiteData, grid: &Grid<'_>) -> (Heatmap, Vec<Heatmap>) {
    let title = format!("Loss per device and day: {}", data.site.name);
    if grid.len() <= GROUP_ABOVE {
        let rows = grid
            .iter()
            .map(|(key, days)| device_row(data, &key.2, days))
            .collect();
        return (heatmap(title, &data.dates(), rows), Vec::new());
    }
    let rack = TABLES.iter().position(|t| t.name == "rack");
    let mut rows = Vec::new();
    let mut per_bank: BTreeMap<i16, Vec<&DeviceKey>> = BTreeMap::new();
    for key in grid.keys() {
        match (Some(key.0) == rack, key.1.first()) {
            (true, Some(bank)) => per_bank.entry(*bank).or_default().push(key),
            _ => rows.push(device_row(data, &key.2, &grid[key])),
        }
    }
    let mut banks = Vec::new();
    for (bank, keys) in &per_bank {
        rows.push(bank_row(data, *bank, keys, grid));
        let racks = keys
            .iter()
            .map(|k| device_row(data, &k.2, &grid[*k]))
            .collect();
        banks.push(heatmap(
            format!("{}: bank {bank}, per rack", data.site.name),
            &data.dates(),
            racks,
        ));
    }
    (heatmap(title, &data.dates(), rows), banks)
}

pub(super) fn heatmap(title: String, days: &[NaiveDate], mut rows: Vec<HeatRow>) -> Heatmap {
    for (i, row) in rows.iter_mut().enumerate() {
        row.y = HEADER_HEIGHT + i as u32 * CELL;
    }
    Heatmap {
        title,
        width: LABEL_WIDTH + days.len() as u32 * CELL + CELL,
        height: HEADER_HEIGHT + rows.len() as u32 * CELL + 4,
        label_x: LABEL_WIDTH - 6,
        date_y: HEADER_HEIGHT - 4,
        columns: days
            .iter()
            .enumerate()
            .map(|(i, d)| Column {
                x: column_x(i),
                label: d.format("%m-%d").to_string(),
            })
            .collect(),
        rows,
    }
}

pub(super) fn column_x(day: usize) -> u32 {
    LABEL_WIDTH + day as u32 * CELL
}

/// One device: per day, the worst grade of the servers, and each server's figures.
fn device_row(
    data: &SiteData,
    label: &str,
    days: &BTreeMap<NaiveDate, Vec<(&str, &DeviceDay)>>,
) -> HeatRow {
    let cells = data
        .days
        .iter()
        .map(|d| &d.date)
        .enumerate()
        .map(|(i, day)| {
            let figures = days.get(day).map(Vec::as_slice).unwrap_or_default();
            let grade = figures
                .iter()
                .map(|(_, r)| r.grade.as_str())
                .max_by_key(|g| rank(g))
                .map_or("none", grade_name);
            let complete =
                figures.len() == data.servers.len() && figures.iter().all(|(_, r)| r.missing == 0);
            let per_server: Vec<String> = match complete {
                // Most cells: one short line keeps a month of a fleet small.
                true => vec![format!(
                    "{}: expected {}, missing 0, longest gap 0 s",
                    data.servers.join(", "),
                    figures.first().map_or(0, |(_, r)| r.expected)
                )],
                false => data
                    .servers
                    .iter()
                    .map(|s| match figures.iter().find(|(name, _)| name == s) {
                        Some((_, r)) => format!(
                            "{s}: expected {}, missing {} ({:.2} %), longest gap {}",
                            r.expected,
                            r.missing,
                            r.loss_pct,
                            length(r.longest_gap_s)
                        ),
                        None => format!("{s}: no figure"),
                    })
                    .collect(),
            };
            Cell {
                x: column_x(i),
                grade,
                title: format!("{label}, {day}: {grade}\n{}", per_server.join("\n")),
            }
        })
        .collect();
    HeatRow {
        y: 0,
        label: label.to_string(),
        cells,
    }
}

/// A bank's racks in one row: per day, the worst rack, and how many are graded what.
fn bank_row(data: &SiteData, bank: i16, keys: &[&DeviceKey], grid: &Grid<'_>) -> HeatRow {
    let label = format!("bank {bank}: {} racks", keys.len());
    let cells = data
        .days
        .iter()
        .map(|d| &d.date)
        .enumerate()
        .map(|(i, day)| {
            let grades: Vec<&str> = keys
                .iter()
                .map(|k| {
                    grid[*k]
                        .get(day)
                        .into_iter()
                        .flatten()
                        .map(|(_, r)| r.grade.as_str())
                        .max_by_key(|g| rank(g))
                        .unwrap_or("none")
                })
                .collect();
            let count = |g: &str| grades.iter().filter(|x| **x == g).count();
            let grade = grades.iter().copied().max_by_key(|g| rank(g)).map_or("none", grade_name);
            Cell {
                x: column_x(i),
                grade,
                title: format!(
                    "{label}, {day}: {grade}\n{} critical, {} warning, {} info, {} without a figure",
                    count("critical"),
                    count("warning"),
                    count("info"),
                    count("none")
                ),
            }
        })
        .collect();
    HeatRow { y: 0, label, cells }
}

/// `90061` → `1 d 1 h 1 min 1 s`, shortest first units dropped.
fn length(secs: i64) -> String {
    let parts = [(86_400, "d"), (3_600, "h"), (60, "min"), (1, "s")];
    let mut left = secs.max(0);
    let mut out = Vec::new();
    for (unit, name) in parts {
        if left >= unit {
            out.push(format!("{} {name}", left / unit));
            left %= unit;
        }
    }
    if out.is_empty() {
        "0 s".into()
    } else {
        out.join(" ")
    }
}

// ------------------------------------------------------------------- charts

/// Per server, the loss % of all its devices, per day.
fn loss_series(data: &SiteData) -> Vec<Series> {
    data.loss
        .iter()
        .map(|(server, rows)| {
            let points = data
                .days
                .iter()
                .map(|d| &d.date)
                .enumerate()
                .filter_map(|(i, day)| {
                    let (expected, missing) = rows
                        .iter()
                        .filter(|r| r.day == *day)
                        .fold((0i64, 0i64), |(e, m), r| (e + r.expected, m + r.missing));
                    (expected > 0).then(|| {
                        (
                            i as f64 + 0.5,
                            crate::loss::gaps::loss_pct(expected, expected - missing),
                        )
                    })
                })
                .collect();
            Series {
                name: server.clone(),
                points,
            }
        })
        .collect()
}

/// Rows copied each way, per reconciled day (summed over tables).
fn runs_series(data: &SiteData, x_of: &dyn Fn(DateTime<Utc>) -> f64) -> Vec<Series> {
    let mut ways: BTreeMap<String, BTreeMap<i64, f64>> = BTreeMap::new();
    for r in &data.runs {
        let day = x_of(r.window_start).floor() as i64;
        for (to, n) in [(&r.server_a, r.copied_to_a), (&r.server_b, r.copied_to_b)] {
            *ways
                .entry(format!("copied to {to}"))
                .or_default()
                .entry(day)
                .or_default() += n as f64;
        }
    }
    ways.into_iter()
        .map(|(name, per_day)| Series {
            name,
            points: per_day
                .into_iter()
                .map(|(d, n)| (d as f64 + 0.5, n))
                .collect(),
        })
        .collect()
}

/// One line per name, a point per hour (at the hour's middle).
fn hourly_series(
    figures: &[(DateTime<Utc>, String, i64)],
    x_of: &dyn Fn(DateTime<Utc>) -> f64,
    name: impl Fn(&str) -> String,
) -> Vec<Series> {
    let mut lines: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for (hour, key, n) in figures {
        lines
            .entry(key.as_str())
            .or_default()
            .push((x_of(*hour) + 1.0 / 48.0, *n as f64));
    }
    lines
        .into_iter()
        .map(|(key, points)| Series {
            name: name(key),
            points,
        })
        .collect()
}

// ------------------------------------------------------------------- tables

fn local(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz).format("%Y-%m-%d %H:%M").to_string()
}

fn run_lines(data: &SiteData, tz: Tz) -> Vec<RunLine> {
    data.runs
        .iter()
        .map(|r| RunLine {
            at: local(r.at, tz),
            table: r.table.clone(),
            copied: format!(
                "{} to {}, {} to {}",
                r.copied_to_a, r.server_a, r.copied_to_b, r.server_b
            ),
            outcome: r.outcome.clone(),
            error: r.error.clone().unwrap_or_default(),
        })
        .collect()
}

/// Breaker openings paired with their closing, per host and device.
fn episodes(events: &[BreakerEvent], tz: Tz) -> Vec<Episode> {
    let mut open: BTreeMap<(&str, &str), DateTime<Utc>> = BTreeMap::new();
    let mut out = Vec::new();
    let episode =
        |e: &BreakerEvent, opened: Option<DateTime<Utc>>, closed: Option<DateTime<Utc>>| Episode {
            device: e.device.clone(),
            host: e.host.clone(),
            opened: opened.map_or("before the window".into(), |t| local(t, tz)),
            closed: closed.map_or("still open".into(), |t| local(t, tz)),
            length: match (opened, closed) {
                (Some(a), Some(b)) => length((b - a).num_seconds()),
                _ => String::new(),
            },
        };
    for e in events {
        let key = (e.host.as_str(), e.device.as_str());
        if e.opened {
            open.entry(key).or_insert(e.at);
        } else {
            out.push(episode(e, open.remove(&key), Some(e.at)));
        }
    }
    for ((host, device), at) in open {
        let e = events
            .iter()
            .find(|e| e.host == host && e.device == device)
            .expect("an open breaker has its event");
        out.push(episode(e, Some(at), None));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigSource, EMBEDDED_DEFAULT};

    /// A site's loss as `banks` banks of `racks` racks, on both its servers,
    /// every 7th device-day with a warning and every 50th critical.
    fn synthetic(
        site: &crate::config::Site,
        banks: i16,
        racks: i16,
        days: &[NaiveDate],
    ) -> SiteData {
        let mut rows = Vec::new();
        let mut n = 0usize;
        let mut push = |table: &str, device: String, ids: Vec<i16>, rows: &mut Vec<DeviceDay>| {
            for day in days {
                n += 1;
                let (grade, missing) = match (n % 50, n % 7) {
                    (0, _) => ("critical", 9_000),
                    (_, 0) => ("warning", 2_000),
                    _ => ("info", 0),
                };
                rows.push(DeviceDay {
                    table: table.into(),
                    device: device.clone(),
                    device_ids: ids.clone(),
                    day: *day,
                    expected: 86_400,
                    missing,
                    longest_gap_s: missing,
                    loss_pct: missing as f64 / 864.0,
                    grade: grade.into(),
                });
            }
        };
        for b in 1..=banks {
            push("bank", format!("bank {b}"), vec![b], &mut rows);
            for r in 1..=racks {
                push(
                    "rack",
                    format!("bank {b} / rack {r}"),
                    vec![b, r],
                    &mut rows,
                );
            }
        }
        push("pcs", "pcs 1".into(), vec![1], &mut rows);
        SiteData {
            site: site.clone(),
            days: days
                .iter()
                .map(|d| Day {
                    date: *d,
                    piece: crate::window::local_day(*d, site.timezone),
                    whole: true,
                })
                .collect(),
            servers: site.servers.clone(),
            loss: site
                .servers
                .iter()
                .map(|s| (s.clone(), rows.clone()))
                .collect(),
            on_the_spot: Vec::new(),
            runs: Vec::new(),
            failed_polls: Vec::new(),
            spool: Vec::new(),
            breakers: Vec::new(),
            sizes: Vec::new(),
            kpi: Default::default(),
            problems: Vec::new(),
        }
    }

    fn month() -> Vec<NaiveDate> {
        let first = NaiveDate::from_ymd_opt(2026, 11, 1).unwrap();
        (0..30).map(|i| first + chrono::Days::new(i)).collect()
    }

    fn page(sites: Vec<SiteView>) -> Page {
        Page {
            window: "2026-11-01 to 2026-11-30".into(),
            generated: "now".into(),
            version: "test",
            config: "t.toml".into(),
            sites,
        }
    }

    #[test]
    fn a_month_of_four_sites_of_200_racks_stays_under_5_mb() {
        let config = Config::parse(EMBEDDED_DEFAULT, ConfigSource::Embedded).unwrap();
        let days = month();
        let views: Vec<SiteView> = config
            .sites
            .iter()
            .map(|site| {
                let data = synthetic(site, 10, 20, &days);
                site_view(&data, site.timezone, (Utc::now(), Utc::now()))
            })
            .collect();
        assert_eq!(views.len(), 4);
        // 10 banks, 200 racks, 1 PCS: one row each, no grouping.
        assert!(
            views
                .iter()
                .all(|v| v.heatmap.rows.len() == 211 && v.banks.is_empty())
        );
        let html = render(&page(views)).unwrap();
        assert!(html.len() < 5 << 20, "{} bytes", html.len());
        eprintln!("a month of 4 sites of 200 racks: {} bytes", html.len());
        assert!(html.contains("bank 3 &#x2f; rack 7, 2026-11-"));
    }

    #[test]
    fn many_racks_are_grouped_per_bank_with_a_drill_down() {
        let config = Config::parse(EMBEDDED_DEFAULT, ConfigSource::Embedded).unwrap();
        let site = &config.sites[0];
        let data = synthetic(site, 4, 100, &month());
        let view = site_view(&data, site.timezone, (Utc::now(), Utc::now()));
        // 4 banks + 4 rows of racks + 1 PCS; each bank's 100 racks below.
        assert_eq!(view.heatmap.rows.len(), 9);
        assert_eq!(view.banks.len(), 4);
        assert!(view.banks.iter().all(|b| b.rows.len() == 100));
        let html = render(&page(vec![view])).unwrap();
        assert!(html.contains("<details><summary>"), "no drill-down");
        assert!(html.contains("bank 2: 100 racks"));
    }

    #[test]
    fn lengths_read_as_units() {
        assert_eq!(length(0), "0 s");
        assert_eq!(length(90_061), "1 d 1 h 1 min 1 s");
        assert_eq!(length(7_200), "2 h");
    }

    #[test]
    fn grades_rank_worst_last() {
        let mut g = vec!["critical", "none", "warning", "info"];
        g.sort_by_key(|g| rank(g));
        assert_eq!(g, ["none", "info", "warning", "critical"]);
    }
}
