//! `essops index create` and `drop`: one index on every chosen site and
//! server, chunk by chunk on a hypertable, with what was done per place.

use std::time::Instant;

use super::*;

pub type ChangeReport = crate::output::Rows<ChangeRow>;

impl Report for ChangeReport {
    type Row = ChangeRow;
    const KIND: &'static str = "index";
    const HEADER: &'static str = "SERVER|SITE|INDEX|STATUS|NOTE";
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
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

/// One index change under way: where, on what, and since when.
struct Change<'a> {
    p: &'a Place,
    table: &'a str,
    index: &'a str,
    sql: &'a str,
    started: Instant,
}

impl Change<'_> {
    /// The report row once the change ended with `status`.
    fn row(&self, status: &str, note: impl Into<String>) -> ChangeRow {
        ChangeRow {
            server: self.p.server.name.clone(),
            site: self.p.site.name.clone(),
            table: self.table.into(),
            index: self.index.into(),
            status: status.into(),
            sql: self.sql.into(),
            note: note.into(),
            duration_ms: self.started.elapsed().as_millis() as u64,
        }
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
    let client = p.connect_admin(ctx).await?;
    let cols =
        crate::catalog::require_table(&client, &p.server.name, &p.site.database, spec).await?;
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
    let indexes = p.indexes(&client, spec.name).await?;
    let sql = manage::create_sql(spec.name, name, columns, include, per_chunk);
    let change = Change {
        p,
        table: spec.name,
        index: name,
        sql: &sql,
        started,
    };
    match manage::plan_create(&indexes, spec.name, name, columns, include) {
        Err(taken) => return Ok(change.row("refused", taken.to_string())),
        Ok(Some(note)) => return Ok(change.row("exists", note)),
        Ok(None) if dry_run => return Ok(change.row("planned", "")),
        Ok(None) => {}
    }
    let result = build_watched(ctx, p, &client, spec, name, &sql, per_chunk).await;
    Ok(match result {
        Ok(chunk_note) => {
            tracing::info!(site = %p.site.name, server = %p.server.name, table = spec.name, index = name, "index created");
            change.row("created", chunk_note.unwrap_or_default())
        }
        Err(e) => change.row("failed", db::describe(&e)),
    })
}

/// Runs the CREATE INDEX; a per-chunk build on a hypertable shows a progress
/// bar fed from a second connection that watches the chunks get done, and
/// says how long the slowest chunk took (a chunk's writes wait that long).
async fn build_watched(
    ctx: &Context,
    p: &Place,
    client: &tokio_postgres::Client,
    spec: &TableSpec,
    name: &str,
    sql: &str,
    per_chunk: bool,
) -> Result<Option<String>, tokio_postgres::Error> {
    let chunks = catalog::tables(client, &[spec.name])
        .await
        .ok()
        .and_then(|t| t.first().map(|t| t.chunks))
        .unwrap_or(0);
    let watcher = match per_chunk && chunks > 0 {
        true => p.connect(ctx).await.ok(),
        false => None,
    };
    let mut progress = Progress::new(chunks.max(0) as usize, "chunks indexed", ctx.verbosity);
    let (mut shown, mut last, mut longest) = (0, Instant::now(), std::time::Duration::ZERO);
    manage::create(client, watcher.as_ref(), spec.name, name, sql, |done| {
        if done > shown {
            longest = longest.max(last.elapsed());
            last = Instant::now();
        }
        while shown < done.min(chunks) {
            progress.tick();
            shown += 1;
        }
    })
    .await?;
    Ok(watcher.is_some().then(|| {
        let longest = longest.max(last.elapsed());
        format!(
            "built chunk by chunk ({chunks} chunks, one transaction each); the slowest chunk took about {} ms (sampled every 200 ms): writes into a chunk wait while it builds",
            longest.as_millis()
        )
    }))
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
            per_chunk: !args.one_transaction,
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
        let client = p.connect_admin(ctx).await?;
        let sql = format!("DROP INDEX {}", db::quote_ident(&args.name));
        let mut found = None;
        for spec in TABLES {
            let indexes = p.indexes(&client, spec.name).await?;
            if let Some(i) = indexes.into_iter().find(|i| i.name == args.name) {
                found = Some(i);
                break;
            }
        }
        let change = Change {
            p: &p,
            table: found.as_ref().map_or("", |i| i.table.as_str()),
            index: &args.name,
            sql: &sql,
            started,
        };
        let row = match &found {
            None => change.row("absent", "no such index on the ESS tables"),
            Some(i) if i.unique && !args.force => change.row(
                "refused",
                format!(
                    "`{}` is the unique natural key of `{}`: without it a sample can be stored twice (--force to drop anyway)",
                    i.name, i.table
                ),
            ),
            Some(_) if args.dry_run => change.row("planned", ""),
            Some(_) => match client.batch_execute(&sql).await {
                Ok(()) => change.row("dropped", ""),
                Err(e) => change.row("failed", db::describe(&e)),
            },
        };
        rows.push(row);
    }
    Ok(ChangeReport { rows })
}

// -------------------------------------------------------------- recommend
