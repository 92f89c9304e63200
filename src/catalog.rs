//! Catalog reads: what a server really holds (columns, types), so commands
//! that read work on tables essops did not create.

use crate::db::DbError;
use crate::schema::TableSpec;

/// A column as the catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Column {
    pub name: String,
    pub data_type: String,
    pub nullable: bool,
}

/// The columns of `public.<table>` in table order; empty when there is no such table.
pub async fn columns(
    client: &tokio_postgres::Client,
    server: &str,
    database: &str,
    table: &str,
) -> Result<Vec<Column>, DbError> {
    let rows = client
        .query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull
               FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 'public' AND c.relname = $1 AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&table],
        )
        .await
        .map_err(|e| {
            DbError::query(
                server,
                database,
                format!("reading the columns of `{table}`"),
                &e,
            )
        })?;
    Ok(rows
        .iter()
        .map(|r| Column {
            name: r.get(0),
            data_type: r.get(1),
            nullable: r.get(2),
        })
        .collect())
}

/// The columns of an ESS table that exists with its natural-key columns, or
/// a message naming what is missing (or what failed) and the fix.
pub async fn require_table(
    client: &tokio_postgres::Client,
    server: &str,
    database: &str,
    spec: &TableSpec,
) -> Result<Vec<Column>, String> {
    let columns = columns(client, server, database, spec.name)
        .await
        .map_err(|e| e.to_string())?;
    let place = format!(
        "server `{server}`, database `{database}`: table `{}`",
        spec.name
    );
    if columns.is_empty() {
        return Err(format!("{place} does not exist (run essops migrate)"));
    }
    match spec
        .key_columns()
        .into_iter()
        .find(|k| !columns.iter().any(|c| c.name == *k))
    {
        Some(k) => Err(format!("{place} has no column `{k}`")),
        None => Ok(columns),
    }
}
