//! The report's battery section, from what `essops kpi` kept: a cell-spread
//! heatmap (rack × day), SoH lines with each rack's projected end of life,
//! daily energy with the 30-day RTE, and an alarm timeline per bank.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Serialize;

use super::charts::{self, Series};
use super::gather::SiteData;
use super::page::{Cell, HeatRow, Heatmap, column_x, heatmap};
use crate::history::kpi::{IntervalRecord, KpiRecord};

/// The SoH chart draws the racks closest to their end of life.
const SOH_LINES: usize = 5;
/// Timeline geometry, in pixels.
const LINE: u32 = 16;
const LABEL: u32 = 150;
const PLOT: u32 = 600;

#[derive(Debug, Serialize)]
pub struct BatteryView {
    /// The server whose KPIs are shown (None: none recorded).
    pub server: Option<String>,
    pub spread: Option<Heatmap>,
    pub soh_chart: Option<String>,
    pub projections: Vec<Projection>,
    pub energy_chart: Option<String>,
    pub rte_chart: Option<String>,
    pub timelines: Vec<Timeline>,
    /// Days of the window without KPIs.
    pub missing_days: Vec<NaiveDate>,
    /// Days the history lacked, measured now.
    pub on_the_spot: Vec<NaiveDate>,
}

#[derive(Debug, Serialize)]
pub struct Projection {
    pub device: String,
    pub soh: String,
    pub slope: String,
    pub eol: String,
}

#[derive(Debug, Serialize)]
pub struct Timeline {
    pub title: String,
    pub width: u32,
    pub height: u32,
    pub label_x: u32,
    pub rows: Vec<TimelineRow>,
}

#[derive(Debug, Serialize)]
pub struct TimelineRow {
    pub y: u32,
    pub label: String,
    pub bars: Vec<Bar>,
}

#[derive(Debug, Serialize)]
pub struct Bar {
    pub x: u32,
    pub width: u32,
    /// `alarm` or `fault`.
    pub word: String,
    pub title: String,
}

pub fn view(data: &SiteData, tz: Tz, span: (DateTime<Utc>, DateTime<Utc>)) -> BatteryView {
    let k = &data.kpi;
    let dates = data.dates();
    let missing_days = match &k.server {
        Some(_) => dates
            .iter()
            .filter(|d| !k.days.iter().any(|r| r.day == **d))
            .copied()
            .collect(),
        None => dates.clone(),
    };
    let racks: Vec<&KpiRecord> = k.days.iter().filter(|r| r.table_name == "rack").collect();
    let sites: Vec<&KpiRecord> = k.days.iter().filter(|r| r.table_name == "site").collect();
    let x_of = |day: NaiveDate| dates.iter().position(|d| *d == day).map(|i| i as f64 + 0.5);
    let (soh_chart, projections) = soh(data, &racks, &x_of);
    BatteryView {
        server: k.server.clone(),
        spread: (!racks.is_empty()).then(|| spread_map(data, &racks)),
        soh_chart,
        projections,
        energy_chart: chart(
            data,
            "Energy per day (site)",
            "kWh",
            vec![
                series("charged", &sites, &x_of, |r| r.charged_kwh),
                series("discharged", &sites, &x_of, |r| r.discharged_kwh),
            ],
            None,
        ),
        rte_chart: chart(
            data,
            "Round-trip efficiency, 30 days to each day (site)",
            "RTE %",
            vec![series("RTE 30 d", &sites, &x_of, |r| {
                r.figures["rte_30d_pct"].as_f64()
            })],
            Some((0.0, 100.0)),
        ),
        timelines: timelines(&k.intervals, tz, span),
        missing_days,
        on_the_spot: k.on_the_spot.clone(),
    }
}

fn series(
    name: &str,
    rows: &[&KpiRecord],
    x_of: &dyn Fn(NaiveDate) -> Option<f64>,
    value: fn(&KpiRecord) -> Option<f64>,
) -> Series {
    Series {
        name: name.to_string(),
        points: rows
            .iter()
            .filter_map(|r| Some((x_of(r.day)?, value(r)?)))
            .collect(),
    }
}

fn chart(
    data: &SiteData,
    title: &str,
    unit: &str,
    series: Vec<Series>,
    y: Option<(f64, f64)>,
) -> Option<String> {
    match charts::lines_in(title, unit, &data.dates(), &series, y) {
        Ok(svg) => svg,
        Err(e) => {
            tracing::warn!(site = %data.site.name, chart = title, error = %e, "chart not drawn");
            None
        }
    }
}

/// Rack × day, coloured by the day's cell-voltage spread p95 against `[kpi]`.
fn spread_map(data: &SiteData, racks: &[&KpiRecord]) -> Heatmap {
    let (warning, critical) = data.kpi.settings.cell_spread_mv;
    let mut per_rack: BTreeMap<(Vec<i16>, String), Vec<&KpiRecord>> = BTreeMap::new();
    for r in racks {
        per_rack
            .entry((r.device_ids.clone(), r.device.clone()))
            .or_default()
            .push(r);
    }
    let rows = per_rack
        .into_iter()
        .map(|((_, label), days)| {
            let cells = data
                .days
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    let r = days.iter().find(|r| r.day == d.date);
                    let p95 = r.and_then(|r| r.figures["cell_spread_p95_mv"].as_f64());
                    let grade = match p95 {
                        Some(v) if v >= critical => "critical",
                        Some(v) if v >= warning => "warning",
                        Some(_) => "info",
                        None => "none",
                    };
                    let title = match (p95, r.and_then(|r| r.cell_spread_max_mv)) {
                        (Some(p), Some(m)) => {
                            format!("{label}, {}: cell spread p95 {p} mV, max {m} mV", d.date)
                        }
                        _ => format!("{label}, {}: no spread figure", d.date),
                    };
                    Cell {
                        x: column_x(i),
                        grade,
                        title,
                    }
                })
                .collect();
            HeatRow { y: 0, label, cells }
        })
        .collect();
    heatmap(
        format!(
            "Cell voltage spread p95 per rack and day: {}",
            data.site.name
        ),
        &data.dates(),
        rows,
    )
}

/// The racks nearest their end of life: their daily SoH, and a table of
/// every rack's projection as of its last day in the window.
fn soh(
    data: &SiteData,
    racks: &[&KpiRecord],
    x_of: &dyn Fn(NaiveDate) -> Option<f64>,
) -> (Option<String>, Vec<Projection>) {
    let mut last: BTreeMap<Vec<i16>, &KpiRecord> = BTreeMap::new();
    for r in racks {
        last.insert(r.device_ids.clone(), r);
    }
    let eol = |r: &KpiRecord| r.figures["soh_eol_date"].as_str().map(str::to_string);
    let mut ranked: Vec<&KpiRecord> = last.values().copied().collect();
    ranked.sort_by_key(|r| eol(r).unwrap_or_else(|| "9999".into()));
    let projections = ranked
        .iter()
        .filter(|r| r.soh_median.is_some())
        .map(|r| Projection {
            device: r.device.clone(),
            soh: r.soh_median.map_or(String::new(), |v| format!("{v} %")),
            slope: r.figures["soh_slope_pct_per_day"]
                .as_f64()
                .map_or("no trend (under 14 days)".into(), |s| {
                    format!("{s:.4} %/day")
                }),
            eol: eol(r).unwrap_or_else(|| "none projected".into()),
        })
        .collect();
    let lines: Vec<Series> = ranked
        .iter()
        .take(SOH_LINES)
        .map(|top| {
            let name = match eol(top) {
                Some(d) => format!("{} (EoL {d})", top.device),
                None => top.device.clone(),
            };
            let mine: Vec<&KpiRecord> = racks
                .iter()
                .filter(|r| r.device_ids == top.device_ids)
                .copied()
                .collect();
            series(&name, &mine, x_of, |r| r.soh_median)
        })
        .collect();
    let values: Vec<f64> = lines
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .collect();
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let floor = (low - 2.0).min(data.kpi.settings.soh_end_of_life).max(0.0);
    let chart = chart(
        data,
        "SoH per day, the racks nearest their end of life",
        "SoH %",
        lines,
        Some((floor, 100.0)),
    );
    (chart, projections)
}

/// Per bank: its devices' alarm and fault intervals across the window.
fn timelines(
    intervals: &[IntervalRecord],
    tz: Tz,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> Vec<Timeline> {
    let span = (end - start).num_seconds().max(1) as f64;
    let x = |t: DateTime<Utc>| {
        let s = (t.clamp(start, end) - start).num_seconds() as f64;
        LABEL + (s / span * f64::from(PLOT)) as u32
    };
    // Bank → device → intervals (the PCS are a "bank" of their own).
    type Devices<'a> = BTreeMap<(Vec<i16>, String), Vec<&'a IntervalRecord>>;
    let mut banks: BTreeMap<String, Devices<'_>> = BTreeMap::new();
    for i in intervals {
        let bank = match (i.table_name.as_str(), i.device_ids.first()) {
            ("pcs", _) => "PCS".to_string(),
            (_, Some(b)) => format!("bank {b}"),
            _ => "site".to_string(),
        };
        banks
            .entry(bank)
            .or_default()
            .entry((i.device_ids.clone(), i.device.clone()))
            .or_default()
            .push(i);
    }
    banks
        .into_iter()
        .map(|(bank, devices)| {
            let rows: Vec<TimelineRow> = devices
                .into_iter()
                .enumerate()
                .map(|(n, ((_, label), ivs))| TimelineRow {
                    y: 20 + n as u32 * LINE,
                    label,
                    bars: ivs
                        .iter()
                        .map(|i| {
                            let (a, b) = (x(i.started_at), x(i.ended_at));
                            let local = |t: DateTime<Utc>| {
                                t.with_timezone(&tz).format("%Y-%m-%d %H:%M:%S").to_string()
                            };
                            Bar {
                                x: a,
                                width: (b - a).max(2),
                                word: i.word.clone(),
                                title: format!(
                                    "{} {} to {} ({} s){}",
                                    i.word,
                                    local(i.started_at),
                                    local(i.ended_at),
                                    (i.ended_at - i.started_at).num_seconds(),
                                    if i.open {
                                        ", open at the day's end"
                                    } else {
                                        ""
                                    }
                                ),
                            }
                        })
                        .collect(),
                })
                .collect();
            Timeline {
                title: format!("Alarms and faults: {bank}"),
                width: LABEL + PLOT + 10,
                height: 24 + rows.len() as u32 * LINE,
                label_x: LABEL - 6,
                rows,
            }
        })
        .collect()
}
