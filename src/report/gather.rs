//! What the report shows, read per site: each server's recorded loss per
//! device and day (measured on the spot for the days its history lacks), and
//! from the first server that answers, the reconcile runs, the ingest's
//! failed polls and spool depth per hour, and its breaker events (every
//! server holds those for the whole site).

use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::Client;

use crate::config::{Config, Site};
use crate::db;
use crate::history::kpi;
use crate::history::read::{self, BreakerEvent, DeviceDay, Hourly, Run};
use crate::loss::LossTarget;
use crate::window::Window;

/// A local day of the window: whole, or the part of it the window holds
/// (the history keeps whole days only; a part is always measured now).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Day {
    pub date: NaiveDate,
    pub piece: Window,
    pub whole: bool,
}

/// One site's material for the page.
#[derive(Debug, Clone)]
pub struct SiteData {
    pub site: Site,
    /// The local days shown, oldest first.
    pub days: Vec<Day>,
    /// The site's servers, in config order.
    pub servers: Vec<String>,
    /// Per server: its devices' days.
    pub loss: Vec<(String, Vec<DeviceDay>)>,
    /// Per server: the days measured now because its history lacked them.
    pub on_the_spot: Vec<(String, Vec<NaiveDate>)>,
    pub runs: Vec<Run>,
    pub failed_polls: Hourly,
    pub spool: Hourly,
    pub breakers: Vec<BreakerEvent>,
    /// Per server and table: bytes, rows, growth (as `essops size`).
    pub sizes: Vec<crate::size::TableSize>,
    /// Battery KPIs of the window, from the first server whose history has them.
    pub kpi: KpiData,
    /// Sources that could not be read, in words.
    pub problems: Vec<String>,
}

/// What `essops kpi` kept for the window: per device and day, the
/// intervals, the server they come from and the grading thresholds.
#[derive(Debug, Clone, Default)]
pub struct KpiData {
    pub server: Option<String>,
    /// Days the history lacked, measured now.
    pub on_the_spot: Vec<NaiveDate>,
    pub days: Vec<kpi::KpiRecord>,
    pub intervals: Vec<kpi::IntervalRecord>,
    pub settings: crate::config::KpiSettings,
}

impl SiteData {
    pub fn dates(&self) -> Vec<NaiveDate> {
        self.days.iter().map(|d| d.date).collect()
    }
}

pub async fn site(config: &Config, site: &Site, span: Window, days: Vec<Day>) -> SiteData {
    let mut data = SiteData {
        site: site.clone(),
        days,
        servers: site.servers.clone(),
        loss: Vec::new(),
        on_the_spot: Vec::new(),
        runs: Vec::new(),
        failed_polls: Vec::new(),
        spool: Vec::new(),
        breakers: Vec::new(),
        sizes: Vec::new(),
        kpi: KpiData {
            settings: config.kpi,
            ..KpiData::default()
        },
        problems: Vec::new(),
    };
    let mut activity_read = false;
    for server in &site.servers {
        let client = match db::connect_named(config, server, &site.database).await {
            Ok(c) => c,
            Err(e) => {
                data.problems.push(format!("server `{server}`: {e}"));
                continue;
            }
        };
        server_loss(config, &client, server, &mut data).await;
        match crate::size::tables(&client, server, &site.name).await {
            Ok(sizes) => data.sizes.extend(sizes),
            Err(e) => data.problems.push(format!(
                "server `{server}`: table sizes unreadable: {}",
                db::describe(&e)
            )),
        }
        if data.kpi.server.is_none() {
            battery(config, &client, server, &mut data).await;
        }
        if !activity_read {
            match activity(&client, &site.name, span).await {
                Ok((runs, failed_polls, spool, breakers)) => {
                    (data.runs, data.failed_polls, data.spool, data.breakers) =
                        (runs, failed_polls, spool, breakers);
                    activity_read = true;
                }
                Err(e) => data.problems.push(format!(
                    "server `{server}`: run history unreadable: {}",
                    db::describe(&e)
                )),
            }
        }
    }
    data
}

/// One server's loss: its history, and the missing days measured now.
async fn server_loss(config: &Config, client: &Client, server: &str, data: &mut SiteData) {
    let (Some(first), Some(last)) = (data.days.first(), data.days.last()) else {
        return;
    };
    let (first, last) = (first.date, last.date);
    let mut rows = match read::loss_days(client, &data.site.name, server, first, last).await {
        Ok(rows) => rows,
        Err(e) => {
            data.problems.push(format!(
                "server `{server}`: loss history unreadable ({}); measuring every day now",
                db::describe(&e)
            ));
            Vec::new()
        }
    };
    rows.retain(|r| data.days.iter().any(|d| d.whole && d.date == r.day));
    let missing: Vec<Day> = data
        .days
        .iter()
        .filter(|d| !rows.iter().any(|r| r.day == d.date))
        .copied()
        .collect();
    if let (Some(from), Some(to)) = (missing.first(), missing.last()) {
        let window = Window {
            start: from.piece.start,
            end: to.piece.end,
        };
        match measure_now(config, &data.site, server, window).await {
            Ok(measured) => {
                let dates: Vec<NaiveDate> = missing.iter().map(|d| d.date).collect();
                rows.extend(measured.into_iter().filter(|r| dates.contains(&r.day)));
                data.on_the_spot.push((server.to_string(), dates));
            }
            Err(e) => data.problems.push(format!(
                "server `{server}`: loss could not be measured: {e}"
            )),
        }
    }
    data.loss.push((server.to_string(), rows));
}

/// Loss per device and local day of `window` on `server`, from the raw rows.
async fn measure_now(
    config: &Config,
    site: &Site,
    server: &str,
    window: Window,
) -> Result<Vec<DeviceDay>, crate::loss::NotMeasured> {
    let target = LossTarget {
        server: server.to_string(),
        site: site.clone(),
        window,
        counted: window,
    };
    let days = crate::loss::measure_days(config, &target).await?;
    Ok(days
        .into_iter()
        .map(|d| DeviceDay {
            missing: d.expected - d.observed,
            table: d.table,
            device: d.device,
            device_ids: d.device_ids,
            day: d.day,
            expected: d.expected,
            longest_gap_s: d.longest_gap_s,
            loss_pct: d.loss_pct,
            grade: d.grade.to_string(),
        })
        .collect())
}

/// The KPIs one server kept for the window, and the days it lacks measured
/// now; the first server that gives any wins.
async fn battery(config: &Config, client: &Client, server: &str, data: &mut SiteData) {
    let (Some(first), Some(last)) = (data.days.first(), data.days.last()) else {
        return;
    };
    let span = (first.date, last.date);
    let read = async {
        let days = kpi::days(client, &data.site.name, server, span).await?;
        let intervals = kpi::intervals(client, &data.site.name, server, span).await?;
        Ok::<_, tokio_postgres::Error>((days, intervals))
    };
    let (mut days, mut intervals) = match read.await {
        Ok(kept) => kept,
        Err(e) => {
            data.problems.push(format!(
                "server `{server}`: KPI history unreadable: {} (run `essops migrate`: schema version 6 adds it); measuring every day now",
                db::describe(&e)
            ));
            (Vec::new(), Vec::new())
        }
    };
    days.retain(|r| data.days.iter().any(|d| d.whole && d.date == r.day));
    let missing: Vec<Day> = data
        .days
        .iter()
        .filter(|d| !days.iter().any(|r| r.day == d.date))
        .copied()
        .collect();
    if let (Some(from), Some(to)) = (missing.first(), missing.last()) {
        let target = crate::kpi::KpiTarget {
            server: server.to_string(),
            site: data.site.clone(),
            counted: Window {
                start: from.piece.start,
                end: to.piece.end,
            },
        };
        let dates: Vec<NaiveDate> = missing.iter().map(|d| d.date).collect();
        for row in crate::kpi::measure_now(config, &target).await {
            match row {
                crate::kpi::KpiRow::AlarmInterval(i) if dates.contains(&i.day) => {
                    intervals.push(i.as_record())
                }
                crate::kpi::KpiRow::Failure(f) => data.problems.push(format!(
                    "server `{server}`: KPIs could not be measured: {}",
                    f.error
                )),
                other => days.extend(other.as_record().filter(|r| dates.contains(&r.day))),
            }
        }
        data.kpi.on_the_spot = dates;
    }
    if !days.is_empty() {
        data.kpi.server = Some(server.to_string());
        (data.kpi.days, data.kpi.intervals) = (days, intervals);
    }
}

type Activity = (Vec<Run>, Hourly, Hourly, Vec<BreakerEvent>);

async fn activity(
    client: &Client,
    site: &str,
    span: Window,
) -> Result<Activity, tokio_postgres::Error> {
    let (start, end): (DateTime<Utc>, DateTime<Utc>) = (span.start, span.end);
    Ok((
        read::runs_over(client, site, start, end).await?,
        read::failed_polls_hourly(client, site, start, end).await?,
        read::spool_hourly(client, site, start, end).await?,
        read::breaker_events(client, site, start, end).await?,
    ))
}
