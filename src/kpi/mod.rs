//! `essops kpi`: battery health and performance per device and local day
//! (cell and temperature spread, SoH and its trend, time outside limits,
//! alarm and fault intervals, availability, energy, round-trip efficiency,
//! demonstrated capacity, cycles), graded with `[kpi]` and kept in
//! `essops.kpi_daily` and `essops.alarm_intervals`.
//!
//! `measure` has the server compute every figure; `rows` makes and grades
//! the report's rows; `trend` fits the SoH line and sums 30 days of energy
//! from what the history keeps, never from 90 days of raw rows.

mod buckets;
mod measure;
pub mod rows;
pub mod trend;

use std::collections::BTreeMap;
use std::path::PathBuf;

use chrono::{DateTime, NaiveDate, Utc};
use clap::Args;

use crate::config::{Config, Site};
use crate::context::Context;
use crate::db::{self, Target};
use crate::exit::Outcome;
use crate::history::{self, kpi as kept};
use crate::logging::REPORT_TARGET;
use crate::loss::gaps::Grade;
use crate::output::{Failure, Report};
use crate::schema::{self, Table, TableSpec};
use crate::window::{Window, WindowArgs};

use measure::{DailyFigures, RawInterval, Scope, TableColumns};
pub use rows::KpiRow;
use rows::{DeviceDay, DeviceKpi, IntervalRow, SiteKpi};

/// Battery KPIs per rack, bank, PCS and site and local day (default:
/// yesterday), kept in the history.
///
/// Exit code 10 when a KPI is past its `[kpi]` warning threshold, 11 past
/// the critical one, 4 when a server or table could not be measured.
#[derive(Debug, Args)]
pub struct KpiArgs {
    #[command(flatten)]
    pub select: crate::select::Selection,
    #[command(flatten)]
    pub window: WindowArgs,
    /// Also write the device and site rows to FILE.csv or FILE.parquet.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// One (server, site) to measure over its counted window.
#[derive(Debug, Clone)]
pub struct KpiTarget {
    pub server: String,
    pub site: Site,
    pub counted: Window,
}

#[derive(Debug)]
pub struct KpiPlan {
    pub targets: Vec<KpiTarget>,
    pub export: Option<crate::export::ExportPath>,
}

pub type KpiReport = crate::output::Rows<KpiRow>;

pub fn plan(args: &KpiArgs, ctx: &Context, now: DateTime<Utc>) -> crate::error::Result<KpiPlan> {
    let export = args
        .output
        .as_deref()
        .map(crate::export::ExportPath::new)
        .transpose()?;
    let targets = args
        .select
        .windows(&ctx.config, &args.window.spec(), now)?
        .into_iter()
        .map(|(site, server, window)| KpiTarget {
            server,
            site,
            counted: window.until(now),
        })
        .collect();
    Ok(KpiPlan { targets, export })
}

pub async fn execute(plan: KpiPlan, ctx: &Context) -> crate::error::Result<KpiReport> {
    let measured = crate::tasks::run_in_order(
        plan.targets.clone(),
        |target| {
            let config = std::sync::Arc::clone(&ctx.config);
            async move { measure_target(&config, &target).await }
        },
        || {},
    )
    .await;
    let rows: Vec<KpiRow> = measured.into_iter().flatten().collect();
    rows.iter().for_each(log_row);
    let report = KpiReport { rows };
    if let Some(path) = &plan.export {
        let values: Vec<serde_json::Value> = report
            .rows
            .iter()
            .filter(|r| r.level().is_some())
            .filter_map(|r| serde_json::to_value(r).ok())
            .collect();
        path.write(|| {
            crate::export::frame_of_json(
                &values,
                &["kind", "server", "site", "day", "device", "level"],
            )
        })?;
    }
    Ok(report)
}

/// What one table gave: its figures and intervals, or why it could not.
#[derive(Default)]
struct TableFigures {
    daily: Vec<DailyFigures>,
    intervals: Vec<RawInterval>,
    soc_spread: Vec<measure::SocSpread>,
    energy: Vec<measure::PcsEnergy>,
}

impl TableFigures {
    /// Adds what another part of the same table measured.
    fn absorb(&mut self, part: TableFigures) {
        self.daily.extend(part.daily);
        self.intervals.extend(part.intervals);
        self.soc_spread.extend(part.soc_spread);
        self.energy.extend(part.energy);
    }
}

/// The KPIs of `t` measured now and recorded nowhere (for `essops report`,
/// where the history lacks days).
pub async fn measure_now(config: &Config, t: &KpiTarget) -> Vec<KpiRow> {
    measure(config, t, false).await
}

/// Everything about one (server, site): its rows, recorded in its history.
async fn measure_target(config: &Config, t: &KpiTarget) -> Vec<KpiRow> {
    measure(config, t, true).await
}

async fn measure(config: &Config, t: &KpiTarget, recorded: bool) -> Vec<KpiRow> {
    let fail = |table: Option<&str>, error: String| {
        KpiRow::Failure(Failure::new(&t.server, &t.site.name, table, error))
    };
    let server = config.server(&t.server).expect("planned servers exist");
    let database = t.site.database.as_str();
    let pieces = t.counted.local_days(t.site.timezone);
    let mut out = Vec::new();
    // The tables (the racks in two lanes) at once, each on its own
    // connection: the work is the server's, on as many cores as it has.
    let parts: Vec<(TableSpec, measure::Lane)> = crate::rollup::kpi::TABLES
        .into_iter()
        .filter(|spec| t.site.has_table(spec.table))
        .flat_map(|spec| {
            lanes(&t.site, spec.table)
                .into_iter()
                .map(move |lane| (spec, lane))
        })
        .collect();
    let results = futures_util::future::join_all(
        parts
            .iter()
            .map(|(spec, lane)| measure_part(config, t, spec, *lane, &pieces)),
    )
    .await;
    let mut measured: BTreeMap<Table, TableFigures> = BTreeMap::new();
    let mut failed = std::collections::BTreeSet::new();
    for ((spec, _), result) in parts.iter().zip(results) {
        match result {
            Ok(f) => measured.entry(spec.table).or_default().absorb(f),
            Err(e) => {
                failed.insert(spec.table);
                out.push(fail(Some(spec.name), e.to_string()));
            }
        }
    }
    // A table with a failed part is not measured at all.
    measured.retain(|table, _| !failed.contains(table));
    let mut history = match history::connect(config, Target { server, database }).await {
        Ok(c) => Some(c),
        Err(e) => {
            history::warn_unrecorded(
                &format!("KPIs of site `{}` on server `{}`", t.site.name, t.server),
                &e,
            );
            None
        }
    };
    let kept_rows = match (&history, pieces.first(), pieces.last()) {
        (Some(c), Some(first), Some(last)) => {
            let from = first.0 - chrono::Duration::days(trend::TREND_DAYS);
            kept::kept(c, &t.site.name, &t.server, (from, last.0))
                .await
                .unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let made = assemble(config, t, &pieces, &measured, kept_rows);
    if let Some(client) = history.as_mut().filter(|_| recorded) {
        record(
            client,
            Target { server, database },
            t,
            &pieces,
            &measured,
            &made,
        )
        .await;
    }
    out.extend(made);
    out
}

/// The rack table's devices in two lanes of about as many racks, split
/// between banks (one lane when the site has one bank).
fn lanes(site: &Site, table: Table) -> Vec<measure::Lane> {
    let whole = vec![measure::Lane::default()];
    if table != Table::Rack || site.banks.len() < 2 {
        return whole;
    }
    let mut banks: Vec<(u16, usize)> = site.banks.iter().map(|b| (b.id, b.racks.len())).collect();
    banks.sort();
    let total: usize = banks.iter().map(|b| b.1).sum();
    let mut seen = 0;
    let split = banks
        .iter()
        .find(|(_, n)| {
            seen += n;
            seen * 2 >= total
        })
        .map(|(id, _)| *id as i16);
    match split {
        Some(last) if banks.last().is_some_and(|(id, _)| *id as i16 > last) => vec![
            measure::Lane {
                from: None,
                to: Some(last),
            },
            measure::Lane {
                from: Some(last + 1),
                to: None,
            },
        ],
        _ => whole,
    }
}

/// Why a table could not be measured: its failure row's text.
#[derive(Debug, thiserror::Error)]
enum PartError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Table(#[from] crate::catalog::TableError),
}

/// One lane of one table over every local day of the window: per device
/// the daily figures and intervals, per bank the SOC spread, per PCS the
/// energy.
async fn measure_part(
    config: &Config,
    t: &KpiTarget,
    spec: &TableSpec,
    lane: measure::Lane,
    pieces: &[Piece],
) -> Result<TableFigures, PartError> {
    // KPIs only read the ESS tables: a read replica takes them when there is one.
    let reading = config
        .server(&t.server)
        .expect("planned servers exist")
        .for_reading();
    let database = t.site.database.as_str();
    let target = Target {
        server: &reading,
        database,
    };
    let client = db::connect(config, target).await?;
    measure::prepare(&client, &t.server, database).await?;
    let columns = crate::catalog::require_table(&client, &t.server, database, spec).await?;
    crate::rollup::kpi::require(&client, &t.server, database, spec).await?;
    let cols = TableColumns::new(&columns);
    let limits: Vec<(String, (f64, f64))> = config
        .cache
        .limits
        .iter()
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let mut f = TableFigures::default();
    for (day, piece, _) in pieces {
        let scope = Scope {
            server: &t.server,
            database,
            client: &client,
            window: *piece,
            day: *day,
            interval_secs: t.site.sample_interval_secs,
        };
        let reading = buckets::reading(&scope, spec, lane).await?;
        let daily = measure::daily(&scope, spec, &cols, &limits, lane, &reading).await?;
        if spec.table == Table::Rack {
            f.soc_spread
                .extend(buckets::soc_spread(&scope, &cols, lane, &reading).await?);
        }
        let flagged: Vec<Vec<i16>> = daily
            .iter()
            .filter(|d| d.alarm_samples + d.fault_samples > 0)
            .map(|d| d.ids.clone())
            .collect();
        f.intervals
            .extend(measure::intervals(&scope, spec, &cols, &flagged).await?);
        f.daily.extend(daily);
        if spec.table == Table::Pcs {
            f.energy.extend(measure::pcs_energy(&scope, &cols).await?);
        }
    }
    Ok(f)
}

type Piece = (NaiveDate, Window, bool);

/// The rows of one (server, site): per table, device and day; per site and
/// day; and the intervals, graded, with trends from the kept days.
fn assemble(
    config: &Config,
    t: &KpiTarget,
    pieces: &[Piece],
    measured: &BTreeMap<Table, TableFigures>,
    kept_rows: Vec<kept::Kept>,
) -> Vec<KpiRow> {
    let mut devices: BTreeMap<Table, Vec<DeviceKpi>> = BTreeMap::new();
    let mut intervals = Vec::new();
    for (table, figures) in measured {
        let spec = table.spec();
        let (rows, ivs) = device_rows(t, &spec, pieces, figures);
        devices.insert(*table, rows);
        intervals.extend(ivs);
    }
    // Banks compare their racks; PCS get their energy.
    if let (Some(banks), Some(racks)) = (
        devices.get(&Table::Bank).cloned(),
        devices.get(&Table::Rack),
    ) {
        let spreads = &measured[&Table::Rack].soc_spread;
        let updated = banks
            .into_iter()
            .map(|mut b| {
                let bank = b.device_ids.first().copied().unwrap_or_default();
                let spread = spreads.iter().find(|s| s.bank == bank && s.day == b.day);
                let same_day: Vec<&DeviceKpi> = racks.iter().filter(|r| r.day == b.day).collect();
                b.bank = Some(rows::bank_figures(bank, spread, &same_day));
                b
            })
            .collect();
        devices.insert(Table::Bank, updated);
    }
    if let Some(pcs) = devices.get_mut(&Table::Pcs) {
        let energy = &measured[&Table::Pcs].energy;
        for p in pcs.iter_mut() {
            let id = p.device_ids.first().copied().unwrap_or_default();
            p.energy = Some(rows::energy(
                energy.iter().find(|e| e.id == id && e.day == p.day),
            ));
        }
    }
    let mut sites = site_rows(t, pieces, devices.get(&Table::Pcs));
    with_trends(config, &mut devices, &mut sites, &kept_rows);
    let mut out = Vec::new();
    for (table, rows) in devices {
        for mut r in rows {
            rows::grade_device(&mut r, &config.kpi);
            out.push(match table {
                Table::Rack => KpiRow::Rack(r),
                Table::Bank => KpiRow::Bank(r),
                Table::Pcs | Table::Etc => KpiRow::Pcs(r),
            });
        }
    }
    for mut s in sites {
        rows::grade_site(&mut s, &config.kpi);
        out.push(KpiRow::Site(s));
    }
    out.extend(intervals.into_iter().map(KpiRow::AlarmInterval));
    out
}

/// A table's device rows per local day (configured devices every day,
/// others only on days they sent something) and its intervals.
fn device_rows(
    t: &KpiTarget,
    spec: &TableSpec,
    pieces: &[Piece],
    figures: &TableFigures,
) -> (Vec<DeviceKpi>, Vec<IntervalRow>) {
    let configured = spec.devices(&t.site);
    let mut extra: Vec<Vec<i16>> = figures
        .daily
        .iter()
        .map(|f| f.ids.clone())
        .filter(|ids| !configured.contains(ids))
        .collect();
    extra.sort();
    extra.dedup();
    let mut rows = Vec::new();
    for (date, piece, _) in pieces {
        for (ids, is_configured) in configured
            .iter()
            .map(|d| (d, true))
            .chain(extra.iter().map(|d| (d, false)))
        {
            let f = figures
                .daily
                .iter()
                .find(|f| f.day == *date && &f.ids == ids);
            if f.is_none() && !is_configured {
                continue;
            }
            let ivs: Vec<&RawInterval> = figures
                .intervals
                .iter()
                .filter(|i| i.day == *date && &i.ids == ids)
                .collect();
            let day = DeviceDay {
                server: &t.server,
                site: &t.site.name,
                device: schema::device_label(spec, ids),
                day: *date,
                day_secs: piece.seconds(),
                interval_secs: t.site.sample_interval_secs,
            };
            rows.push(day.row(ids, f, &ivs));
        }
    }
    let tz = t.site.timezone;
    let sunspec = t.site.register_map.sunspec;
    let intervals = figures
        .intervals
        .iter()
        .map(|i| {
            let piece_end = pieces.iter().find(|p| p.0 == i.day).map(|p| p.1.end);
            IntervalRow {
                server: t.server.clone(),
                site: t.site.name.clone(),
                day: i.day,
                table: spec.name,
                device: schema::device_label(spec, &i.ids),
                device_ids: i.ids.clone(),
                word: i.word,
                bit: i.bit,
                bit_name: match (sunspec, i.bit) {
                    (true, Some(bit)) => crate::modbus::sunspec::mapping::bit_name(
                        spec.table,
                        &i.word.to_uppercase(),
                        bit,
                    ),
                    _ => None,
                },
                start: i.start.with_timezone(&tz).to_rfc3339(),
                end: i.end.with_timezone(&tz).to_rfc3339(),
                duration_secs: (i.end - i.start).num_seconds(),
                samples: i.samples,
                open: piece_end.is_some_and(|end| i.end >= end),
                raw: i.clone(),
            }
        })
        .collect();
    (rows, intervals)
}

/// Per day: the site's PCS summed, against its rated energy.
fn site_rows(t: &KpiTarget, pieces: &[Piece], pcs: Option<&Vec<DeviceKpi>>) -> Vec<SiteKpi> {
    let Some(pcs) = pcs else {
        return Vec::new();
    };
    pieces
        .iter()
        .map(|(date, _, _)| {
            let energies: Vec<&rows::Energy> = pcs
                .iter()
                .filter(|p| p.day == *date)
                .filter_map(|p| p.energy.as_ref())
                .collect();
            let energy = rows::site_energy(&energies);
            let rated = t.site.rated_kwh;
            let ratio =
                |v: Option<f64>| v.zip(rated).map(|(v, r)| (v / r * 1000.0).round() / 1000.0);
            SiteKpi {
                server: t.server.clone(),
                site: t.site.name.clone(),
                day: *date,
                pcs: energies.len(),
                capacity_ratio: ratio(energy.demonstrated_kwh),
                equivalent_full_cycles: ratio(energy.discharged_kwh),
                rated_kwh: rated,
                energy,
                level: Grade::Info,
                reasons: Vec::new(),
            }
        })
        .collect()
}

/// The SoH trend of each rack and the 30-day RTE of each PCS and the site,
/// from the kept days before this run and this run's own days.
fn with_trends(
    config: &Config,
    devices: &mut BTreeMap<Table, Vec<DeviceKpi>>,
    sites: &mut [SiteKpi],
    kept_rows: &[kept::Kept],
) {
    // (table, ids) → day → (soh, charged, discharged); this run's days win.
    type Series = BTreeMap<NaiveDate, (Option<f64>, Option<f64>, Option<f64>)>;
    let mut series: BTreeMap<(String, Vec<i16>), Series> = BTreeMap::new();
    for k in kept_rows {
        series
            .entry((k.table_name.clone(), k.device_ids.clone()))
            .or_default()
            .insert(k.day, (k.soh_median, k.charged_kwh, k.discharged_kwh));
    }
    for (table, rows) in devices.iter() {
        for r in rows {
            let (c, d) = r
                .energy
                .as_ref()
                .map_or((None, None), |e| (e.charged_kwh, e.discharged_kwh));
            series
                .entry((table.spec().name.to_string(), r.device_ids.clone()))
                .or_default()
                .insert(r.day, (r.soh_median, c, d));
        }
    }
    for s in sites.iter() {
        series
            .entry(("site".into(), Vec::new()))
            .or_default()
            .insert(s.day, (None, s.energy.charged_kwh, s.energy.discharged_kwh));
    }
    let energies = |key: &(String, Vec<i16>)| -> Vec<(NaiveDate, f64, f64)> {
        series.get(key).map_or(Vec::new(), |days| {
            days.iter()
                .filter_map(|(day, (_, c, d))| Some((*day, (*c)?, (*d)?)))
                .collect()
        })
    };
    for (table, rows) in devices.iter_mut() {
        for r in rows.iter_mut() {
            let key = (table.spec().name.to_string(), r.device_ids.clone());
            match table {
                Table::Rack => {
                    let points: Vec<(NaiveDate, f64)> =
                        series.get(&key).map_or(Vec::new(), |days| {
                            days.iter()
                                .filter_map(|(day, (soh, _, _))| Some((*day, (*soh)?)))
                                .collect()
                        });
                    r.trend = Some(trend::soh(&points, r.day, config.kpi.soh_end_of_life));
                }
                Table::Pcs => {
                    if let Some(e) = r.energy.as_mut() {
                        (e.rte_30d_pct, e.rte_30d_days) = trend::rte_30d(&energies(&key), r.day);
                    }
                }
                Table::Bank | Table::Etc => {}
            }
        }
    }
    let key = ("site".to_string(), Vec::new());
    for s in sites.iter_mut() {
        (s.energy.rte_30d_pct, s.energy.rte_30d_days) = trend::rte_30d(&energies(&key), s.day);
    }
}

/// Replaces the history of the whole local days measured, for the tables
/// that could be measured (and the site rows when the PCS could).
async fn record(
    client: &mut tokio_postgres::Client,
    target: Target<'_>,
    t: &KpiTarget,
    pieces: &[Piece],
    measured: &BTreeMap<Table, TableFigures>,
    rows: &[KpiRow],
) {
    let days: Vec<NaiveDate> = pieces
        .iter()
        .filter_map(|(d, _, whole)| whole.then_some(*d))
        .collect();
    let mut tables: Vec<String> = measured.keys().map(|t| t.spec().name.to_string()).collect();
    if measured.contains_key(&Table::Pcs) {
        tables.push("site".into());
    }
    if days.is_empty() || tables.is_empty() {
        return;
    }
    // Whole local days only, as the history gives them back.
    let kpi_days: Vec<kept::KpiRecord> = rows
        .iter()
        .filter_map(KpiRow::as_record)
        .filter(|r| days.contains(&r.day))
        .collect();
    let interval_days: Vec<kept::IntervalRecord> = rows
        .iter()
        .filter_map(|r| match r {
            KpiRow::AlarmInterval(i) if days.contains(&i.day) => Some(i.as_record()),
            _ => None,
        })
        .collect();
    match kept::record(
        client,
        target,
        &t.site.name,
        (&tables, &days),
        &kpi_days,
        &interval_days,
    )
    .await
    {
        Ok(()) => {
            tracing::info!(site = %t.site.name, server = %t.server, days = days.len(), rows = kpi_days.len(), "KPI history recorded")
        }
        Err(e) => history::warn_unrecorded(
            &format!("KPIs of site `{}` on server `{}`", t.site.name, t.server),
            &e,
        ),
    }
}

/// The graded log line of a device or site row, in the site's log file.
fn log_row(row: &KpiRow) {
    let (site, server, day, what, level, reasons) = match row {
        KpiRow::Rack(d) | KpiRow::Bank(d) | KpiRow::Pcs(d) => (
            &d.site,
            &d.server,
            d.day,
            d.device.as_str(),
            d.level,
            &d.reasons,
        ),
        KpiRow::Site(s) => (&s.site, &s.server, s.day, "site", s.level, &s.reasons),
        KpiRow::Failure(f) => {
            tracing::error!(target: REPORT_TARGET, site = %f.site, server = %f.server,
                table = f.table.as_deref().unwrap_or(""), error = %f.error, "KPIs could not be measured");
            return;
        }
        KpiRow::AlarmInterval(_) => return,
    };
    let reasons = reasons.join("; ");
    match level {
        Grade::Info => {}
        Grade::Warning => tracing::warn!(target: REPORT_TARGET, level = "warning",
            site = %site, server = %server, day = %day, device = what, reasons = %reasons, "battery KPI"),
        Grade::Critical => tracing::error!(target: REPORT_TARGET, level = "critical",
            site = %site, server = %server, day = %day, device = what, reasons = %reasons, "battery KPI"),
    }
}

impl Report for KpiReport {
    type Row = KpiRow;
    const KIND: &'static str = "kpi";
    const HEADER: &'static str = "SERVER|SITE|DAY|KIND|DEVICE|FIGURES|LEVEL";

    fn cells(row: &KpiRow) -> Vec<String> {
        let line = |d: &DeviceKpi, kind: &str| {
            vec![
                d.server.clone(),
                d.site.clone(),
                d.day.to_string(),
                kind.to_string(),
                d.device.clone(),
                device_figures(d),
                d.level.as_str().to_string(),
            ]
        };
        match row {
            KpiRow::Rack(d) => line(d, "rack"),
            KpiRow::Bank(d) => line(d, "bank"),
            KpiRow::Pcs(d) => line(d, "pcs"),
            KpiRow::Site(s) => vec![
                s.server.clone(),
                s.site.clone(),
                s.day.to_string(),
                "site".into(),
                format!("{} PCS", s.pcs),
                site_figures(s),
                s.level.as_str().into(),
            ],
            KpiRow::AlarmInterval(i) => vec![
                i.server.clone(),
                i.site.clone(),
                i.day.to_string(),
                format!("{} interval", i.word),
                i.device.clone(),
                format!(
                    "{}{} from {} for {} s{}",
                    i.word,
                    i.bit.map_or(String::new(), |b| match &i.bit_name {
                        Some(n) => format!(" bit {b} ({n})"),
                        None => format!(" bit {b}"),
                    }),
                    i.start.get(11..19).unwrap_or(&i.start),
                    i.duration_secs,
                    if i.open {
                        ", open at the day's end"
                    } else {
                        ""
                    }
                ),
                String::new(),
            ],
            KpiRow::Failure(f) => {
                let mut c = f.cells();
                c.insert(2, String::new());
                c.extend([String::new(), String::new(), "error".into()]);
                c
            }
        }
    }

    fn problem(row: &KpiRow) -> Option<String> {
        match row {
            KpiRow::Failure(f) => Some(f.error.clone()),
            _ => None,
        }
    }

    fn summary(&self) -> String {
        let count = |g: Grade| self.rows.iter().filter(|r| r.level() == Some(g)).count();
        let graded = self.rows.iter().filter(|r| r.level().is_some()).count();
        let failed = self
            .rows
            .iter()
            .filter(|r| matches!(r, KpiRow::Failure(_)))
            .count();
        format!(
            "{graded} KPI row(s): {} critical, {} warning; {failed} table(s) could not be measured. A single day's RTE depends on the state of charge at midnight: the 30-day RTE is graded.",
            count(Grade::Critical),
            count(Grade::Warning)
        )
    }

    fn outcome(&self) -> Outcome {
        self.rows
            .iter()
            .map(|r| match r {
                KpiRow::Failure(_) => Outcome::Partial,
                other => match other.level() {
                    Some(Grade::Warning) => Outcome::Warning,
                    Some(Grade::Critical) => Outcome::Critical,
                    _ => Outcome::Clean,
                },
            })
            .max()
            .unwrap_or(Outcome::Clean)
    }

    fn rows(&self) -> &[KpiRow] {
        &self.rows
    }
}

fn device_figures(d: &DeviceKpi) -> String {
    let mut parts = vec![format!("avail {:.2} %", d.availability_pct)];
    if let Some(v) = d.cell_spread_max_mv {
        parts.push(format!("cell spread max {v} mV"));
    }
    if let Some(v) = d.soh_median {
        parts.push(format!("SoH {v} %"));
    }
    if let Some(eol) = d.trend.as_ref().and_then(|t| t.soh_eol_date) {
        parts.push(format!("EoL {eol}"));
    }
    if d.fault_secs > 0 {
        parts.push(format!("fault {} s", d.fault_secs));
    }
    if let Some(b) = &d.bank
        && let Some(v) = b.soc_spread_max_pct
    {
        parts.push(format!("SOC spread max {v} %"));
    }
    if let Some(e) = &d.energy {
        parts.push(energy_figures(e));
    }
    parts.join(", ")
}

fn energy_figures(e: &rows::Energy) -> String {
    let kwh = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v}"));
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v} %"));
    format!(
        "in {} / out {} kWh, RTE day {} (30 d {})",
        kwh(e.charged_kwh),
        kwh(e.discharged_kwh),
        pct(e.rte_day_pct),
        pct(e.rte_30d_pct)
    )
}

fn site_figures(s: &SiteKpi) -> String {
    let mut parts = vec![energy_figures(&s.energy)];
    if let Some(c) = s.equivalent_full_cycles {
        parts.push(format!("{c} cycles"));
    }
    if let Some(r) = s.capacity_ratio {
        parts.push(format!("capacity ratio {r}"));
    }
    parts.join(", ")
}

impl crate::command::Plan for KpiPlan {
    fn locks(&self) -> Vec<crate::lock::LockKey> {
        crate::command::site_locks("kpi", self.targets.iter().map(|t| t.site.name.as_str()))
    }
}

impl crate::command::Command for KpiArgs {
    type Plan = KpiPlan;
    type Report = KpiReport;
    async fn plan(self, ctx: &Context) -> crate::error::Result<KpiPlan> {
        plan(&self, ctx, Utc::now())
    }
    async fn execute(plan: KpiPlan, ctx: &Context) -> crate::error::Result<KpiReport> {
        execute(plan, ctx).await
    }
}
