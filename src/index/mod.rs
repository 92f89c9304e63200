//! `essops index`: list tables and indexes (chunk-summed on hypertables),
//! show columns, create and drop multi-column indexes everywhere at once,
//! recommend indexes from pg_stat_statements, and an interactive wizard.

pub mod catalog;
pub mod manage;
pub mod recommend;
pub mod wizard;

use std::time::Instant;

use serde::Serialize;
use tokio_postgres::Client;

use self::catalog::IndexInfo;
use self::manage::ChangeRow;
use crate::config::{ConfigError, Server, Site};
use crate::context::Context;
use crate::db::{self, Target};
use crate::exit::{Outcome, code as exit};
use crate::output::{Progress, Report, human_bytes};
use crate::schema::{self, TABLES, TableSpec};

#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    /// Without a subcommand on a terminal: the interactive wizard.
    #[command(subcommand)]
    pub command: Option<IndexCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum IndexCommand {
    /// Tables (rows, size, hypertable chunks) and their indexes (columns, size, scans).
    List(ListArgs),
    /// A table's columns, their types, and the indexes that cover each.
    Columns(ColumnsArgs),
    /// Create a multi-column index, in the given column order, on every chosen site and server.
    Create(CreateArgs),
    /// Drop an index on every chosen site and server.
    Drop(DropArgs),
    /// Recommend indexes from pg_stat_statements; report unused and redundant ones.
    Recommend(RecommendArgs),
    /// Pick site, server, table and columns step by step, see the SQL and the gain, confirm.
    Wizard,
}

/// Where: sites and servers (default: all of each site's servers).
pub type At = crate::select::Selection;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub at: At,
    #[command(flatten)]
    pub tables: crate::select::Tables,
}

#[derive(Debug, clap::Args)]
pub struct ColumnsArgs {
    pub table: String,
    #[command(flatten)]
    pub at: At,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    pub table: String,
    /// Columns in index order.
    #[arg(required = true, num_args = 1..)]
    pub columns: Vec<String>,
    /// Index name (default: {table}_{columns}_idx, as the reference tool names them).
    #[arg(long)]
    pub name: Option<String>,
    /// Non-key columns stored in the index so queries reading them need no
    /// table access (index-only scans); repeatable.
    #[arg(long = "include", value_name = "COLUMN")]
    pub include: Vec<String>,
    /// Build chunk by chunk, one transaction each (TimescaleDB), for big hypertables.
    #[arg(long)]
    pub per_chunk: bool,
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub at: At,
}

#[derive(Debug, clap::Args)]
pub struct DropArgs {
    pub name: String,
    #[arg(long)]
    pub dry_run: bool,
    /// Also drop a table's unique natural-key index (then duplicates become possible).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub at: At,
}

#[derive(Debug, clap::Args)]
pub struct RecommendArgs {
    /// Only statements called at least this often.
    #[arg(long, default_value_t = 10)]
    pub min_calls: i64,
    /// Create the recommended indexes (per chunk on hypertables).
    #[arg(long)]
    pub apply: bool,
    #[command(flatten)]
    pub at: At,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Table(#[from] schema::UnknownTable),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(
        "the wizard needs a terminal; use the index subcommands in scripts (essops index --help)"
    )]
    NoTerminal,
}

impl IndexError {
    pub fn exit_code(&self) -> u8 {
        match self {
            IndexError::Config(_) => exit::CONFIG,
            IndexError::Db(e) => e.exit_code(),
            _ => exit::USAGE,
        }
    }
}

crate::into_error!(IndexError);

/// One database to work on.
pub struct Place {
    pub server: Server,
    pub site: Site,
}

impl Place {
    pub async fn connect(&self, ctx: &Context) -> Result<Client, db::DbError> {
        db::connect(
            &ctx.config,
            Target {
                server: &self.server,
                database: &self.site.database,
            },
        )
        .await
    }
}

pub fn places(ctx: &Context, at: &At) -> Result<Vec<Place>, IndexError> {
    Ok(ctx
        .config
        .site_servers(&at.sites, &at.servers)?
        .into_iter()
        .map(|(site, server)| Place {
            server: server.clone(),
            site: site.clone(),
        })
        .collect())
}

fn table(name: &str) -> Result<TableSpec, IndexError> {
    TableSpec::by_name(name).ok_or_else(|| schema::UnknownTable(name.to_string()).into())
}

// ------------------------------------------------------------------ list

#[derive(Debug, Clone, Serialize)]
pub struct ListRow {
    pub server: String,
    pub site: String,
    pub table: String,
    pub hypertable: bool,
    pub chunks: i64,
    pub rows_estimate: i64,
    pub table_size_bytes: i64,
    pub index: String,
    pub columns: Vec<String>,
    pub unique: bool,
    pub index_size_bytes: i64,
    /// On a hypertable: the sum over its chunk indexes.
    pub scans: i64,
}

#[derive(Debug, Serialize)]
pub struct ListReport {
    pub rows: Vec<ListRow>,
}

impl Report for ListReport {
    type Row = ListRow;
    const HEADER: &'static [&'static str] = &[
        "SERVER",
        "SITE",
        "TABLE",
        "CHUNKS",
        "ROWS",
        "SIZE",
        "INDEX",
        "COLUMNS",
        "INDEX SIZE",
        "SCANS",
    ];
    fn rows(&self) -> &[ListRow] {
        &self.rows
    }
    fn cells(r: &ListRow) -> Vec<String> {
        vec![
            r.server.clone(),
            r.site.clone(),
            r.table.clone(),
            if r.hypertable {
                r.chunks.to_string()
            } else {
                "-".into()
            },
            r.rows_estimate.to_string(),
            human_bytes(r.table_size_bytes.max(0) as u64),
            format!("{}{}", r.index, if r.unique { " (unique)" } else { "" }),
            r.columns.join(", "),
            human_bytes(r.index_size_bytes.max(0) as u64),
            r.scans.to_string(),
        ]
    }
    fn summary(&self) -> String {
        format!("{} indexes", self.rows.len())
    }
    fn outcome(&self) -> Outcome {
        Outcome::Clean
    }
}

pub async fn list(args: &ListArgs, ctx: &Context) -> Result<ListReport, IndexError> {
    let specs: Vec<TableSpec> = schema::select_tables(&args.tables.tables)?;
    let names: Vec<&str> = specs.iter().map(|t| t.name).collect();
    let mut rows = Vec::new();
    for p in places(ctx, &args.at)? {
        let client = p.connect(ctx).await?;
        let err = catalog::query_error(&p.server.name, &p.site.database, "reading the catalog");
        for t in catalog::tables(&client, &names).await.map_err(&err)? {
            for i in catalog::indexes(&client, &t.table).await.map_err(&err)? {
                rows.push(ListRow {
                    server: p.server.name.clone(),
                    site: p.site.name.clone(),
                    table: t.table.clone(),
                    hypertable: t.hypertable,
                    chunks: t.chunks,
                    rows_estimate: t.rows_estimate,
                    table_size_bytes: t.size_bytes,
                    index: i.name,
                    columns: i.columns,
                    unique: i.unique,
                    index_size_bytes: i.size_bytes,
                    scans: i.scans,
                });
            }
        }
    }
    Ok(ListReport { rows })
}

// ---------------------------------------------------------------- columns

#[derive(Debug, Clone, Serialize)]
pub struct ColumnRow {
    pub server: String,
    pub site: String,
    pub table: String,
    pub column: String,
    pub data_type: String,
    /// `index (position)` for every index that has the column.
    pub indexes: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ColumnsReport {
    pub rows: Vec<ColumnRow>,
}

impl Report for ColumnsReport {
    type Row = ColumnRow;
    const HEADER: &'static [&'static str] =
        &["SERVER", "SITE", "COLUMN", "TYPE", "INDEXES (POSITION)"];
    fn rows(&self) -> &[ColumnRow] {
        &self.rows
    }
    fn cells(r: &ColumnRow) -> Vec<String> {
        vec![
            r.server.clone(),
            r.site.clone(),
            r.column.clone(),
            r.data_type.clone(),
            r.indexes.join(", "),
        ]
    }
    fn summary(&self) -> String {
        format!("{} columns", self.rows.len())
    }
    fn outcome(&self) -> Outcome {
        Outcome::Clean
    }
}

pub fn covering(indexes: &[IndexInfo], column: &str) -> Vec<String> {
    indexes
        .iter()
        .filter_map(|i| {
            i.columns
                .iter()
                .position(|c| c == column)
                .map(|p| format!("{} ({})", i.name, p + 1))
        })
        .collect()
}

pub async fn columns(args: &ColumnsArgs, ctx: &Context) -> Result<ColumnsReport, IndexError> {
    let spec = table(&args.table)?;
    let mut rows = Vec::new();
    for p in places(ctx, &args.at)? {
        let client = p.connect(ctx).await?;
        let cols = crate::catalog::require_table(&client, &p.server.name, &p.site.database, &spec)
            .await
            .map_err(IndexError::Usage)?;
        let indexes = catalog::indexes(&client, spec.name)
            .await
            .map_err(catalog::query_error(
                &p.server.name,
                &p.site.database,
                "reading indexes",
            ))?;
        for c in cols {
            rows.push(ColumnRow {
                server: p.server.name.clone(),
                site: p.site.name.clone(),
                table: spec.name.into(),
                indexes: covering(&indexes, &c.name),
                column: c.name,
                data_type: c.data_type,
            });
        }
    }
    Ok(ColumnsReport { rows })
}

// --------------------------------------------------------- create / drop

#[derive(Debug, Serialize)]
pub struct ChangeReport {
    pub rows: Vec<ChangeRow>,
}

impl Report for ChangeReport {
    type Row = ChangeRow;
    const HEADER: &'static [&'static str] = &["SERVER", "SITE", "INDEX", "STATUS", "NOTE"];
    fn rows(&self) -> &[ChangeRow] {
        &self.rows
    }
    fn cells(r: &ChangeRow) -> Vec<String> {
        let note = if r.note.is_empty() {
            r.sql.clone()
        } else {
            r.note.clone()
        };
        vec![
            r.server.clone(),
            r.site.clone(),
            r.index.clone(),
            r.status.clone(),
            note,
        ]
    }
    fn summary(&self) -> String {
        let count = |s: &str| self.rows.iter().filter(|r| r.status == s).count();
        format!(
            "{} created, {} dropped, {} already there, {} planned, {} refused or failed",
            count("created"),
            count("dropped"),
            count("exists") + count("absent"),
            count("planned"),
            count("refused") + count("failed")
        )
    }
    fn outcome(&self) -> Outcome {
        match self
            .rows
            .iter()
            .any(|r| r.status == "failed" || r.status == "refused")
        {
            true => Outcome::Partial,
            false => Outcome::Clean,
        }
    }
}

fn change(
    p: &Place,
    table: &str,
    index: &str,
    status: &str,
    sql: &str,
    note: String,
    started: Instant,
) -> ChangeRow {
    ChangeRow {
        server: p.server.name.clone(),
        site: p.site.name.clone(),
        table: table.into(),
        index: index.into(),
        status: status.into(),
        sql: sql.into(),
        note,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

/// An index to build: its name, key columns in order, INCLUDE columns.
pub struct NewIndex<'a> {
    pub name: &'a str,
    pub columns: &'a [String],
    pub include: &'a [String],
    /// One chunk per transaction (TimescaleDB), with progress.
    pub per_chunk: bool,
}

/// Creates `new` on `spec` at one place (or says why not).
pub async fn create_at(
    ctx: &Context,
    p: &Place,
    spec: &TableSpec,
    new: &NewIndex<'_>,
    dry_run: bool,
) -> Result<ChangeRow, IndexError> {
    let NewIndex {
        name,
        columns,
        include,
        per_chunk,
    } = *new;
    let started = Instant::now();
    let client = p.connect(ctx).await?;
    let cols = crate::catalog::require_table(&client, &p.server.name, &p.site.database, spec)
        .await
        .map_err(IndexError::Usage)?;
    if let Some(bad) = columns
        .iter()
        .chain(include)
        .find(|c| !cols.iter().any(|k| &k.name == *c))
    {
        let known: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        return Err(IndexError::Usage(format!(
            "table `{}` has no column `{bad}` (columns: {})",
            spec.name,
            known.join(", ")
        )));
    }
    let indexes = catalog::indexes(&client, spec.name)
        .await
        .map_err(catalog::query_error(
            &p.server.name,
            &p.site.database,
            "reading indexes",
        ))?;
    let sql = manage::create_sql(spec.name, name, columns, include, per_chunk);
    match manage::plan_create(&indexes, spec.name, name, columns, include) {
        Err(m) => return Ok(change(p, spec.name, name, "refused", &sql, m, started)),
        Ok(Some(note)) => return Ok(change(p, spec.name, name, "exists", &sql, note, started)),
        Ok(None) if dry_run => {
            return Ok(change(
                p,
                spec.name,
                name,
                "planned",
                &sql,
                String::new(),
                started,
            ));
        }
        Ok(None) => {}
    }
    let chunks = catalog::tables(&client, &[spec.name])
        .await
        .ok()
        .and_then(|t| t.first().map(|t| t.chunks))
        .unwrap_or(0);
    let watcher = match per_chunk && chunks > 0 {
        true => p.connect(ctx).await.ok(),
        false => None,
    };
    let mut progress = Progress::new(chunks.max(0) as usize, "chunks indexed", ctx.verbosity);
    let mut shown = 0;
    let result = manage::create(&client, watcher.as_ref(), spec.name, name, &sql, |done| {
        while shown < done.min(chunks) {
            progress.tick();
            shown += 1;
        }
    })
    .await;
    match result {
        Ok(_) => {
            tracing::info!(site = %p.site.name, server = %p.server.name, table = spec.name, index = name, "index created");
            Ok(change(
                p,
                spec.name,
                name,
                "created",
                &sql,
                String::new(),
                started,
            ))
        }
        Err(e) => Ok(change(
            p,
            spec.name,
            name,
            "failed",
            &sql,
            db::describe(&e),
            started,
        )),
    }
}

pub async fn create(args: &CreateArgs, ctx: &Context) -> Result<ChangeReport, IndexError> {
    let spec = table(&args.table)?;
    let name = args
        .name
        .clone()
        .unwrap_or_else(|| manage::default_name(spec.name, &args.columns));
    manage::check_name(&name).map_err(|e| IndexError::Usage(e.to_string()))?;
    let mut rows = Vec::new();
    for p in places(ctx, &args.at)? {
        let new = NewIndex {
            name: &name,
            columns: &args.columns,
            include: &args.include,
            per_chunk: args.per_chunk,
        };
        rows.push(create_at(ctx, &p, &spec, &new, args.dry_run).await?);
    }
    Ok(ChangeReport { rows })
}

pub async fn drop(args: &DropArgs, ctx: &Context) -> Result<ChangeReport, IndexError> {
    manage::check_name(&args.name).map_err(|e| IndexError::Usage(e.to_string()))?;
    let mut rows = Vec::new();
    for p in places(ctx, &args.at)? {
        let started = Instant::now();
        let client = p.connect(ctx).await?;
        let sql = format!("DROP INDEX {}", db::quote_ident(&args.name));
        let mut found = None;
        for spec in TABLES {
            let indexes =
                catalog::indexes(&client, spec.name)
                    .await
                    .map_err(catalog::query_error(
                        &p.server.name,
                        &p.site.database,
                        "reading indexes",
                    ))?;
            if let Some(i) = indexes.into_iter().find(|i| i.name == args.name) {
                found = Some(i);
                break;
            }
        }
        let row = match found {
            None => change(
                &p,
                "",
                &args.name,
                "absent",
                &sql,
                "no such index on the ESS tables".into(),
                started,
            ),
            Some(i) if i.unique && !args.force => change(
                &p,
                &i.table,
                &args.name,
                "refused",
                &sql,
                format!(
                    "`{}` is the unique natural key of `{}`: without it a sample can be stored twice (--force to drop anyway)",
                    i.name, i.table
                ),
                started,
            ),
            Some(i) if args.dry_run => change(
                &p,
                &i.table,
                &args.name,
                "planned",
                &sql,
                String::new(),
                started,
            ),
            Some(i) => match client.batch_execute(&sql).await {
                Ok(()) => change(
                    &p,
                    &i.table,
                    &args.name,
                    "dropped",
                    &sql,
                    String::new(),
                    started,
                ),
                Err(e) => change(
                    &p,
                    &i.table,
                    &args.name,
                    "failed",
                    &sql,
                    db::describe(&e),
                    started,
                ),
            },
        };
        rows.push(row);
    }
    Ok(ChangeReport { rows })
}

// -------------------------------------------------------------- recommend

#[derive(Debug, Clone, Serialize)]
pub struct RecommendRow {
    pub server: String,
    pub site: String,
    /// `create`, `unused` or `redundant`.
    pub kind: String,
    pub table: String,
    pub index: String,
    pub columns: Vec<String>,
    /// INCLUDE columns (an index-only scan for the query).
    pub include: Vec<String>,
    pub calls: i64,
    pub cost_before: Option<f64>,
    pub cost_after: Option<f64>,
    /// Planner cost saved per call × calls.
    pub weighted_gain: Option<f64>,
    pub sql: String,
    pub note: String,
}

#[derive(Debug, Serialize)]
pub struct RecommendReport {
    pub rows: Vec<RecommendRow>,
    #[serde(skip)]
    pub applied: Vec<ChangeRow>,
}

impl Report for RecommendReport {
    type Row = RecommendRow;
    const HEADER: &'static [&'static str] = &[
        "SERVER",
        "SITE",
        "KIND",
        "TABLE",
        "COLUMNS",
        "CALLS",
        "COST BEFORE",
        "COST AFTER",
        "NOTE",
    ];
    fn rows(&self) -> &[RecommendRow] {
        &self.rows
    }
    fn cells(r: &RecommendRow) -> Vec<String> {
        let f = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.0}"));
        vec![
            r.server.clone(),
            r.site.clone(),
            r.kind.clone(),
            r.table.clone(),
            r.columns.join(", "),
            r.calls.to_string(),
            f(r.cost_before),
            f(r.cost_after),
            if r.note.is_empty() {
                r.sql.clone()
            } else {
                format!("{} {}", r.sql, r.note)
            },
        ]
    }
    fn summary(&self) -> String {
        let n = self.rows.iter().filter(|r| r.kind == "create").count();
        format!(
            "{n} index(es) recommended{}; {} unused, {} redundant",
            if self.applied.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} created",
                    self.applied
                        .iter()
                        .filter(|a| a.status == "created")
                        .count()
                )
            },
            self.rows.iter().filter(|r| r.kind == "unused").count(),
            self.rows.iter().filter(|r| r.kind == "redundant").count()
        )
    }
    fn outcome(&self) -> Outcome {
        match self.rows.iter().any(|r| r.kind == "create") && self.applied.is_empty() {
            true => Outcome::Warning,
            false => Outcome::Clean,
        }
    }
}

/// The planner cost of every recorded statement on `table`, before and with
/// a hypothetical index on `columns`, summed by calls: (calls, before, after).
pub async fn estimate(
    client: &Client,
    table: &str,
    columns: &[String],
    include: &[String],
    statements: &[recommend::Statement],
) -> Option<(i64, f64, f64)> {
    let mut shapes = Vec::new();
    for s in statements {
        if let Some(shape) = recommend::parse(&s.query).filter(|sh| sh.table == table) {
            let Ok(stmt) = client.prepare(&s.query).await else {
                continue;
            };
            if let Some(params) = recommend::sample_params(client, &stmt, &shape).await {
                shapes.push((s, params));
            }
        }
    }
    if shapes.is_empty() {
        return None;
    }
    let mut before = Vec::new();
    for (s, params) in &shapes {
        before.push(recommend::cost(client, &s.query, params).await.ok()?);
    }
    let hypo = recommend::hypothetical(client, table, columns, include)
        .await
        .ok()?;
    let tx_started = !hypo
        && client
            .batch_execute(&format!(
                "BEGIN; {}",
                manage::create_sql(table, "essops_probe", columns, include, false)
            ))
            .await
            .is_ok();
    if !hypo && !tx_started {
        return None;
    }
    let mut calls = 0;
    let (mut b, mut a) = (0.0, 0.0);
    for ((s, params), cost_before) in shapes.iter().zip(before) {
        let Ok(after) = recommend::cost(client, &s.query, params).await else {
            continue;
        };
        calls += s.calls;
        b += cost_before * s.calls as f64;
        a += after * s.calls as f64;
    }
    match hypo {
        true => recommend::reset_hypothetical(client).await,
        false => {
            let _ = client.batch_execute("ROLLBACK").await;
        }
    }
    Some((calls, b, a))
}

pub async fn recommend_at(
    ctx: &Context,
    p: &Place,
    min_calls: i64,
) -> Result<Vec<RecommendRow>, IndexError> {
    let client = p.connect(ctx).await?;
    let err = catalog::query_error(
        &p.server.name,
        &p.site.database,
        "reading pg_stat_statements",
    );
    if client
        .batch_execute("SELECT 1 FROM pg_stat_statements LIMIT 0")
        .await
        .is_err()
    {
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            .await
            .map_err(&err)?;
    }
    let statements = recommend::statements(&client, min_calls)
        .await
        .map_err(&err)?;
    let row = |kind: &str, table: &str, index: &str, columns: Vec<String>| RecommendRow {
        server: p.server.name.clone(),
        site: p.site.name.clone(),
        kind: kind.into(),
        table: table.into(),
        index: index.into(),
        columns,
        include: Vec::new(),
        calls: 0,
        cost_before: None,
        cost_after: None,
        weighted_gain: None,
        sql: String::new(),
        note: String::new(),
    };
    let mut rows = Vec::new();
    for spec in TABLES {
        let indexes = catalog::indexes(&client, spec.name).await.map_err(&err)?;
        if indexes.is_empty() {
            continue;
        }
        let mut seen: Vec<Vec<String>> = Vec::new();
        for s in &statements {
            let Some(shape) = recommend::parse(&s.query).filter(|sh| sh.table == spec.name) else {
                continue;
            };
            let cols = shape.candidate();
            let include = shape.include(&cols);
            if cols.is_empty()
                || seen.contains(&cols)
                || recommend::covered(&indexes, &cols, &include).is_some()
            {
                continue;
            }
            seen.push(cols.clone());
            let Some((calls, before, after)) =
                estimate(&client, spec.name, &cols, &include, &statements).await
            else {
                continue;
            };
            if after >= before * 0.9 {
                continue; // the planner would not use it, or barely gains
            }
            let name = manage::default_name(spec.name, &cols);
            let mut r = row("create", spec.name, &name, cols.clone());
            r.calls = calls;
            r.cost_before = Some(before / calls.max(1) as f64);
            r.cost_after = Some(after / calls.max(1) as f64);
            r.weighted_gain = Some(before - after);
            r.sql = manage::create_sql(spec.name, &name, &cols, &include, true);
            r.include = include;
            if cols.first().map(String::as_str) != Some(crate::schema::TIME_COLUMN) {
                r.note = format!(
                    "(equality columns first, time last: the reference tool would build ({}, …), which cannot seek one device's range)",
                    crate::schema::TIME_COLUMN
                );
            }
            rows.push(r);
        }
        for i in indexes.iter().filter(|i| i.scans == 0 && !i.unique) {
            let mut r = row("unused", spec.name, &i.name, i.columns.clone());
            r.note = "0 scans over all chunks since statistics were last reset".into();
            rows.push(r);
        }
        for (a, b) in recommend::redundant(&indexes) {
            let mut r = row("redundant", spec.name, &a.name, a.columns.clone());
            r.note = format!("its columns lead `{}` ({})", b.name, b.columns.join(", "));
            rows.push(r);
        }
    }
    rows.sort_by(|a, b| {
        b.weighted_gain
            .partial_cmp(&a.weighted_gain)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    Ok(rows)
}

pub async fn recommend(args: &RecommendArgs, ctx: &Context) -> Result<RecommendReport, IndexError> {
    let mut rows = Vec::new();
    let mut applied = Vec::new();
    for p in places(ctx, &args.at)? {
        let found = recommend_at(ctx, &p, args.min_calls).await?;
        if args.apply {
            for r in found.iter().filter(|r| r.kind == "create") {
                let spec = table(&r.table)?;
                let new = NewIndex {
                    name: &r.index,
                    columns: &r.columns,
                    include: &r.include,
                    per_chunk: true,
                };
                applied.push(create_at(ctx, &p, &spec, &new, false).await?);
            }
        }
        rows.extend(found);
    }
    Ok(RecommendReport { rows, applied })
}

/// Index subcommands whose plan is their arguments and whose work is one call.
macro_rules! index_command {
    ($($args:ty => $report:ty = $f:path;)+) => {$(
        impl crate::command::Command for $args {
            type Plan = crate::command::Args<$args>;
            type Report = $report;
            async fn plan(self, _ctx: &Context) -> Result<Self::Plan, crate::error::Error> {
                Ok(crate::command::Args(self))
            }
            async fn execute(plan: Self::Plan, ctx: &Context) -> Result<$report, crate::error::Error> {
                Ok($f(&plan.0, ctx).await?)
            }
        }
    )+};
}

index_command! {
    ListArgs => ListReport = list;
    ColumnsArgs => ColumnsReport = columns;
    CreateArgs => ChangeReport = create;
    DropArgs => ChangeReport = drop;
    RecommendArgs => RecommendReport = recommend;
}

/// The wizard: it asks for what the flags would give.
pub struct WizardArgs;

impl crate::command::Command for WizardArgs {
    type Plan = crate::command::Args<WizardArgs>;
    type Report = ChangeReport;
    async fn plan(self, _ctx: &Context) -> Result<Self::Plan, crate::error::Error> {
        Ok(crate::command::Args(self))
    }
    async fn execute(
        _plan: Self::Plan,
        ctx: &Context,
    ) -> Result<ChangeReport, crate::error::Error> {
        Ok(wizard::run(ctx).await?)
    }
}

/// `essops index …`: each subcommand through the one command shape.
pub async fn run(
    args: IndexArgs,
    ctx: &Context,
) -> Result<crate::exit::Outcome, crate::error::Error> {
    use crate::command::run;
    match args.command {
        Some(IndexCommand::List(a)) => run(a, ctx).await,
        Some(IndexCommand::Columns(a)) => run(a, ctx).await,
        Some(IndexCommand::Create(a)) => run(a, ctx).await,
        Some(IndexCommand::Drop(a)) => run(a, ctx).await,
        Some(IndexCommand::Recommend(a)) => run(a, ctx).await,
        Some(IndexCommand::Wizard) | None => run(WizardArgs, ctx).await,
    }
}
