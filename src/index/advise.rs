//! `essops index recommend`: candidate indexes from pg_stat_statements,
//! their measured gain (see `recommend` for the parsing and the planner
//! costs), and unused or redundant indexes.

use serde::Serialize;
use tokio_postgres::Client;

use super::*;

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
    const KIND: &'static str = "advice";
    const HEADER: &'static str = "SERVER|SITE|KIND|TABLE|COLUMNS|CALLS|COST BEFORE|COST AFTER|NOTE";
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
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

/// The planner cost of every recorded statement on `table`, before and with
/// a hypothetical index on `columns`, summed by calls: (calls, before,
/// after). `after` is `None` without HypoPG: essops never builds an index on
/// a live table to measure (a build blocks ingest's writes), so the advice is
/// then unmeasured.
pub async fn estimate(
    client: &Client,
    table: &str,
    columns: &[String],
    include: &[String],
    statements: &[recommend::Statement],
) -> Option<(i64, f64, Option<f64>)> {
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
    let mut calls = 0;
    let (mut b, mut a) = (0.0, 0.0);
    for ((s, params), cost_before) in shapes.iter().zip(before) {
        let after = match hypo {
            true => match recommend::cost(client, &s.query, params).await {
                Ok(after) => after,
                Err(_) => continue,
            },
            false => cost_before,
        };
        calls += s.calls;
        b += cost_before * s.calls as f64;
        a += after * s.calls as f64;
    }
    if hypo {
        recommend::reset_hypothetical(client).await;
    }
    Some((calls, b, hypo.then_some(a)))
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
    let mut rows = Vec::new();
    for spec in TABLES {
        let indexes = catalog::indexes(&client, spec.name).await.map_err(&err)?;
        if indexes.is_empty() {
            continue;
        }
        rows.extend(create_rows(&client, p, &spec, &indexes, &statements).await);
        rows.extend(cleanup_rows(p, &spec, &indexes));
    }
    rows.sort_by(|a, b| {
        b.weighted_gain
            .partial_cmp(&a.weighted_gain)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    Ok(rows)
}

/// A row of `kind` for one index, with nothing measured yet.
fn blank_row(
    p: &Place,
    kind: &str,
    table: &str,
    index: &str,
    columns: Vec<String>,
) -> RecommendRow {
    RecommendRow {
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
    }
}

/// An index to create for each recorded query shape on `spec` that no index
/// covers, when the planner's cost drops by more than a tenth.
async fn create_rows(
    client: &Client,
    p: &Place,
    spec: &TableSpec,
    indexes: &[IndexInfo],
    statements: &[recommend::Statement],
) -> Vec<RecommendRow> {
    let mut rows = Vec::new();
    let mut seen: Vec<Vec<String>> = Vec::new();
    for s in statements {
        let Some(shape) = recommend::parse(&s.query).filter(|sh| sh.table == spec.name) else {
            continue;
        };
        let cols = shape.candidate();
        let include = shape.include(&cols);
        if cols.is_empty()
            || seen.contains(&cols)
            || recommend::covered(indexes, &cols, &include).is_some()
        {
            continue;
        }
        seen.push(cols.clone());
        let Some((calls, before, after)) =
            estimate(client, spec.name, &cols, &include, statements).await
        else {
            continue;
        };
        if after.is_some_and(|after| after >= before * 0.9) {
            continue; // the planner would not use it, or barely gains
        }
        let name = manage::default_name(spec.name, &cols);
        let mut r = blank_row(p, "create", spec.name, &name, cols.clone());
        r.calls = calls;
        r.cost_before = Some(before / calls.max(1) as f64);
        r.cost_after = after.map(|a| a / calls.max(1) as f64);
        r.weighted_gain = after.map(|a| before - a);
        if after.is_none() {
            r.note = "unmeasured: HypoPG is not installed here (CREATE EXTENSION hypopg, or essops migrate where it is available); essops never builds an index on a live table to measure".into();
        }
        r.sql = manage::create_sql(spec.name, &name, &cols, &include, true);
        r.include = include;
        if cols.first().map(String::as_str) != Some(crate::schema::TIME_COLUMN) {
            let why = format!(
                "(equality columns first, time last: the reference tool would build ({}, …), which cannot seek one device's range)",
                crate::schema::TIME_COLUMN
            );
            r.note = [why, std::mem::take(&mut r.note)]
                .join(" ")
                .trim()
                .to_string();
        }
        rows.push(r);
    }
    rows
}

/// Indexes never scanned, and indexes whose columns lead another's.
fn cleanup_rows(p: &Place, spec: &TableSpec, indexes: &[IndexInfo]) -> Vec<RecommendRow> {
    let mut rows = Vec::new();
    for i in indexes.iter().filter(|i| i.scans == 0 && !i.unique) {
        let mut r = blank_row(p, "unused", spec.name, &i.name, i.columns.clone());
        r.note = "0 scans over all chunks since statistics were last reset".into();
        rows.push(r);
    }
    for (a, b) in recommend::redundant(indexes) {
        let mut r = blank_row(p, "redundant", spec.name, &a.name, a.columns.clone());
        r.note = format!("its columns lead `{}` ({})", b.name, b.columns.join(", "));
        rows.push(r);
    }
    rows
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
