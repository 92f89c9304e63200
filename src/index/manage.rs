//! Creating and dropping indexes on every chosen site and server.

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio_postgres::Client;

use super::catalog::{self, IndexInfo};
use crate::db::quote_ident;

/// The reference tool's name for an index: `{table}_{col}_{col}_idx`, lower case.
pub fn default_name(table: &str, columns: &[String]) -> String {
    let cols: Vec<String> = columns.iter().map(|c| c.to_lowercase()).collect();
    format!("{table}_{}_idx", cols.join("_"))
}

/// An index name PostgreSQL would refuse or change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexNameError {
    #[error("an index name cannot be empty")]
    Empty,
    #[error(
        "index name `{name}` is {bytes} bytes; PostgreSQL allows 63 and would silently cut it, so give a shorter --name"
    )]
    TooLong { name: String, bytes: usize },
    #[error("an index name cannot contain NUL")]
    Nul,
}

/// Index names are identifiers: PostgreSQL would silently cut one past 63 bytes.
pub fn check_name(name: &str) -> Result<(), IndexNameError> {
    match name.len() {
        0 => Err(IndexNameError::Empty),
        n if n > 63 => Err(IndexNameError::TooLong {
            name: name.to_string(),
            bytes: n,
        }),
        _ if name.contains('\0') => Err(IndexNameError::Nul),
        _ => Ok(()),
    }
}

/// `("A", "B") INCLUDE ("C")`: an index's columns, quoted by the one helper.
pub fn column_list(columns: &[String], include: &[String]) -> String {
    let list = |cols: &[String]| {
        cols.iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match include.is_empty() {
        true => format!("({})", list(columns)),
        false => format!("({}) INCLUDE ({})", list(columns), list(include)),
    }
}

/// `CREATE INDEX "name" ON "table" ("A", "B") INCLUDE ("C")`, per chunk on a
/// hypertable when asked.
pub fn create_sql(
    table: &str,
    name: &str,
    columns: &[String],
    include: &[String],
    per_chunk: bool,
) -> String {
    let with = if per_chunk {
        " WITH (timescaledb.transaction_per_chunk)"
    } else {
        ""
    };
    format!(
        "CREATE INDEX {} ON {} {}{with}",
        quote_ident(name),
        quote_ident(table),
        column_list(columns, include)
    )
}

#[derive(Debug, Clone, Serialize)]
pub struct ChangeRow {
    pub server: String,
    pub site: String,
    pub table: String,
    pub index: String,
    /// planned, created, exists, dropped, absent, refused, failed
    pub status: String,
    pub sql: String,
    pub note: String,
    pub duration_ms: u64,
}

/// An index of that name exists with other columns.
#[derive(Debug, thiserror::Error)]
#[error(
    "an index named `{name}` already exists on `{table}` with other columns ({columns}); choose another --name"
)]
pub struct NameTaken {
    name: String,
    table: String,
    columns: String,
}

/// What creating `columns` (plus `include`) on `table` would do here: nothing
/// when an index with the same columns exists, an error when the name is taken.
pub fn plan_create(
    indexes: &[IndexInfo],
    table: &str,
    name: &str,
    columns: &[String],
    include: &[String],
) -> Result<Option<String>, NameTaken> {
    if let Some(same) = indexes.iter().find(|i| i.same_as(columns, include)) {
        return Ok(Some(format!(
            "index `{}` already has these columns; nothing to do",
            same.name
        )));
    }
    if let Some(taken) = indexes.iter().find(|i| i.name == name) {
        return Err(NameTaken {
            name: name.to_string(),
            table: table.to_string(),
            columns: taken.columns.join(", "),
        });
    }
    Ok(None)
}

/// Runs a CREATE INDEX; on a per-chunk build `on_chunk(done)` is called as chunks finish.
pub async fn create(
    client: &Client,
    watcher: Option<&Client>,
    table: &str,
    name: &str,
    sql: &str,
    mut on_chunk: impl FnMut(i64),
) -> Result<Duration, tokio_postgres::Error> {
    let started = Instant::now();
    let build = client.batch_execute(sql);
    tokio::pin!(build);
    let Some(watcher) = watcher else {
        build.await?;
        return Ok(started.elapsed());
    };
    loop {
        tokio::select! {
            r = &mut build => {
                r?;
                return Ok(started.elapsed());
            }
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if let Ok(n) = catalog::chunk_indexes(watcher, table, name).await {
                    on_chunk(n);
                }
            }
        }
    }
}
