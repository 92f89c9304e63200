//! `essops size`: how much each ESS table takes per server and site, how fast
//! it grows, and (given the disk's free space) when the disk fills.
//!
//! Figures come from TimescaleDB: `hypertable_detailed_size()` (table,
//! indexes, TOAST; the total is `hypertable_size()`), `approximate_row_count()`,
//! and the sizes of the chunks of the last 7 whole days for the growth.

use std::sync::Arc;

use clap::Args;
use serde::Serialize;
use tokio_postgres::Client;

use crate::config::Config;
use crate::context::Context;
use crate::db;
use crate::exit::Outcome;
use crate::output::{Report, human_bytes};
use crate::schema::TABLES;

/// Days of chunks the growth rate is measured over.
const GROWTH_DAYS: i64 = 7;
/// Fewer days than these until the disk fills: a warning, a critical.
const WARN_DAYS: f64 = 30.0;
const CRITICAL_DAYS: f64 = 7.0;

/// Size per table and server: chunks, bytes (table, indexes, total),
/// estimated rows, growth per day over the last 7 days, and with
/// --disk-free the days until the disk fills.
///
/// Exit code: 10 when a disk fills in under 30 days, 11 under 7, 4 when a
/// server cannot be read.
#[derive(Debug, Args)]
pub struct SizeArgs {
    #[command(flatten)]
    pub select: crate::select::Selection,
    /// Free space on the database servers' disk (e.g. 500G, 2T): says in how
    /// many days the growth fills it.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub disk_free: Option<u64>,
}

/// `500G`, `2T`, `750M`, `1024` (bytes); binary units.
fn parse_size(s: &str) -> Result<u64, SizeError> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| SizeError::NotASize(s.to_string()))?;
    let shift = match unit
        .trim()
        .trim_end_matches(['B', 'b', 'i'])
        .to_ascii_uppercase()
        .as_str()
    {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        "P" => 50,
        other => return Err(SizeError::Unit(s.to_string(), other.to_string())),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| SizeError::TooLarge(s.to_string()))
}

/// Why `--disk-free` is not a size.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum SizeError {
    #[error("`{0}`: expected a size like 500G, 2T or 750M")]
    NotASize(String),
    #[error("`{0}`: unknown unit `{1}` (use K, M, G, T or P)")]
    Unit(String, String),
    #[error("`{0}`: too large")]
    TooLarge(String),
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SizeRow {
    Table(TableSize),
    /// All tables of all sites on one server, and when the disk fills.
    Server(ServerSize),
    Failure {
        server: String,
        site: String,
        error: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct TableSize {
    pub server: String,
    pub site: String,
    pub table: String,
    pub chunks: i64,
    pub table_bytes: i64,
    pub index_bytes: i64,
    pub toast_bytes: i64,
    /// `hypertable_size()`: table, indexes and TOAST.
    pub total_bytes: i64,
    pub estimated_rows: i64,
    /// Average bytes per day of the last 7 whole days' chunks.
    pub growth_bytes_per_day: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerSize {
    pub server: String,
    pub total_bytes: i64,
    pub growth_bytes_per_day: i64,
    pub disk_free_bytes: Option<u64>,
    pub days_until_full: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SizeReport {
    pub rows: Vec<SizeRow>,
}

#[derive(Debug)]
pub struct SizePlan {
    targets: Vec<(String, crate::config::Site)>,
    disk_free: Option<u64>,
}

impl crate::command::Plan for SizePlan {}

/// One table's figures on a server.
async fn table_size(
    client: &Client,
    table: &str,
) -> Result<Option<[i64; 7]>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT (SELECT count(*) FROM show_chunks(h.relid)),
                    d.table_bytes, d.index_bytes, d.toast_bytes, hypertable_size(h.relid),
                    approximate_row_count(h.relid),
                    coalesce((SELECT sum(s.total_bytes) FROM chunks_detailed_size(h.relid) s
                                JOIN timescaledb_information.chunks c
                                  ON c.chunk_schema = s.chunk_schema AND c.chunk_name = s.chunk_name
                               WHERE c.range_end <= date_trunc('day', now())
                                 AND c.range_start >= date_trunc('day', now()) - make_interval(days => $2::int4)), 0)::int8
                      / $2::int8
               FROM (SELECT format('public.%I', $1::text)::regclass AS relid) h,
                    hypertable_detailed_size(h.relid) d
              WHERE EXISTS (SELECT 1 FROM timescaledb_information.hypertables
                             WHERE hypertable_schema = 'public' AND hypertable_name = $1)",
            &[&table, &(GROWTH_DAYS as i32)],
        )
        .await?;
    Ok(row.map(|r| {
        let mut v = [0i64; 7];
        for (i, slot) in v.iter_mut().enumerate() {
            *slot = r.get::<_, Option<i64>>(i).unwrap_or(0);
        }
        v
    }))
}

/// Every ESS table's figures on the connected server (status and report
/// show them too).
pub async fn tables(
    client: &Client,
    server: &str,
    site: &str,
) -> Result<Vec<TableSize>, tokio_postgres::Error> {
    let mut out = Vec::new();
    for spec in TABLES {
        if let Some([chunks, table, index, toast, total, estimated, growth]) =
            table_size(client, spec.name).await?
        {
            out.push(TableSize {
                server: server.to_string(),
                site: site.to_string(),
                table: spec.name.to_string(),
                chunks,
                table_bytes: table,
                index_bytes: index,
                toast_bytes: toast,
                total_bytes: total,
                estimated_rows: estimated.max(0),
                growth_bytes_per_day: growth,
            });
        }
    }
    Ok(out)
}

async fn site_rows(config: &Config, server: &str, site: &crate::config::Site) -> Vec<SizeRow> {
    let fail = |error: String| {
        vec![SizeRow::Failure {
            server: server.to_string(),
            site: site.name.clone(),
            error,
        }]
    };
    let client = match db::connect_named(config, server, &site.database).await {
        Ok(c) => c,
        Err(e) => return fail(e.to_string()),
    };
    match tables(&client, server, &site.name).await {
        Ok(t) => t.into_iter().map(SizeRow::Table).collect(),
        Err(e) => fail(db::describe(&e)),
    }
}

/// Per server: the sum of its tables, and the days its disk lasts.
fn server_rows(rows: &[SizeRow], disk_free: Option<u64>) -> Vec<SizeRow> {
    let mut servers: Vec<String> = Vec::new();
    for r in rows {
        if let SizeRow::Table(t) = r
            && !servers.contains(&t.server)
        {
            servers.push(t.server.clone());
        }
    }
    servers
        .into_iter()
        .map(|server| {
            let tables = rows.iter().filter_map(|r| match r {
                SizeRow::Table(t) if t.server == server => Some(t),
                _ => None,
            });
            let (total, growth) = tables.fold((0, 0), |(a, b), t| {
                (a + t.total_bytes, b + t.growth_bytes_per_day)
            });
            let days = match (disk_free, growth) {
                (Some(free), g) if g > 0 => Some(((free as f64 / g as f64) * 10.0).round() / 10.0),
                _ => None,
            };
            SizeRow::Server(ServerSize {
                server,
                total_bytes: total,
                growth_bytes_per_day: growth,
                disk_free_bytes: disk_free,
                days_until_full: days,
            })
        })
        .collect()
}

impl Report for SizeReport {
    type Row = SizeRow;
    const KIND: &'static str = "size";
    const HEADER: &'static str =
        "SERVER|SITE|TABLE|CHUNKS|TABLE|INDEXES|TOTAL|ROWS (EST.)|GROWTH/DAY|DISK FULL IN";
    fn rows(&self) -> &[SizeRow] {
        &self.rows
    }
    fn cells(row: &SizeRow) -> Vec<String> {
        let b = |n: i64| human_bytes(n.max(0) as u64);
        match row {
            SizeRow::Table(t) => vec![
                t.server.clone(),
                t.site.clone(),
                t.table.clone(),
                t.chunks.to_string(),
                b(t.table_bytes),
                b(t.index_bytes),
                b(t.total_bytes),
                t.estimated_rows.to_string(),
                b(t.growth_bytes_per_day),
                String::new(),
            ],
            SizeRow::Server(s) => vec![
                s.server.clone(),
                "= all".into(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                b(s.total_bytes),
                String::new(),
                b(s.growth_bytes_per_day),
                match (s.days_until_full, s.disk_free_bytes) {
                    (Some(d), _) => format!("{d} days"),
                    (None, Some(_)) => "not growing".into(),
                    (None, None) => "(--disk-free)".into(),
                },
            ],
            SizeRow::Failure { server, site, .. } => {
                vec![server.clone(), site.clone(), "FAILED".into()]
            }
        }
    }
    fn problem(row: &SizeRow) -> Option<String> {
        match row {
            SizeRow::Failure { error, .. } => Some(error.clone()),
            _ => None,
        }
    }
    fn summary(&self) -> String {
        let servers: Vec<String> = self
            .rows
            .iter()
            .filter_map(|r| match r {
                SizeRow::Server(s) => Some(format!(
                    "{} {} (+{}/day)",
                    s.server,
                    human_bytes(s.total_bytes.max(0) as u64),
                    human_bytes(s.growth_bytes_per_day.max(0) as u64)
                )),
                _ => None,
            })
            .collect();
        format!("ESS tables: {}", servers.join(", "))
    }
    fn outcome(&self) -> Outcome {
        self.rows
            .iter()
            .map(|r| match r {
                SizeRow::Failure { .. } => Outcome::Partial,
                SizeRow::Server(ServerSize {
                    days_until_full: Some(d),
                    ..
                }) if *d < CRITICAL_DAYS => Outcome::Critical,
                SizeRow::Server(ServerSize {
                    days_until_full: Some(d),
                    ..
                }) if *d < WARN_DAYS => Outcome::Warning,
                _ => Outcome::Clean,
            })
            .max()
            .unwrap_or(Outcome::Clean)
    }
}

impl crate::command::Command for SizeArgs {
    type Plan = SizePlan;
    type Report = SizeReport;
    async fn plan(self, ctx: &Context) -> crate::error::Result<SizePlan> {
        let targets = self.select.targets(&ctx.config)?;
        Ok(SizePlan {
            targets,
            disk_free: self.disk_free,
        })
    }
    async fn execute(plan: SizePlan, ctx: &Context) -> crate::error::Result<SizeReport> {
        let per_target = crate::tasks::run_in_order(
            plan.targets,
            |(server, site)| {
                let config = Arc::clone(&ctx.config);
                async move { site_rows(&config, &server, &site).await }
            },
            || {},
        )
        .await;
        let mut rows: Vec<SizeRow> = per_target.into_iter().flatten().collect();
        rows.extend(server_rows(&rows, plan.disk_free));
        Ok(SizeReport { rows })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_parses_binary_units_and_refuses_the_rest() {
        assert_eq!(parse_size("500G"), Ok(500 << 30));
        assert_eq!(parse_size("2TiB"), Ok(2 << 40));
        assert_eq!(parse_size("1024"), Ok(1024));
        let error = |s: &str| parse_size(s).unwrap_err().to_string();
        assert!(error("5X").contains("unknown unit `X`"));
        assert!(parse_size("G").is_err());
        assert!(error("99999999P").contains("too large"));
    }
}
