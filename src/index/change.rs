//! `essops index create` and `drop`: one index on every chosen site and
//! server, chunk by chunk on a hypertable, with what was done per place.

use std::time::Instant;

use serde::Serialize;

use super::*;

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
    let indexes = p.indexes(&client, spec.name).await?;
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
            let indexes = p.indexes(&client, spec.name).await?;
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
