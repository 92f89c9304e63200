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

/// Why an ESS table cannot be worked on.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(
        "server `{server}`, database `{database}`: table `{table}` does not exist (run essops migrate)"
    )]
    Missing {
        server: String,
        database: String,
        table: &'static str,
    },
    #[error("server `{server}`, database `{database}`: table `{table}` has no column `{column}`")]
    NoKeyColumn {
        server: String,
        database: String,
        table: &'static str,
        column: &'static str,
    },
}

/// The columns of an ESS table that exists with its natural-key columns.
pub async fn require_table(
    client: &tokio_postgres::Client,
    server: &str,
    database: &str,
    spec: &TableSpec,
) -> Result<Vec<Column>, TableError> {
    let columns = columns(client, server, database, spec.name).await?;
    let (server, database, table) = (server.to_string(), database.to_string(), spec.name);
    if columns.is_empty() {
        return Err(TableError::Missing {
            server,
            database,
            table,
        });
    }
    match spec
        .key_columns()
        .into_iter()
        .find(|k| !columns.iter().any(|c| c.name == *k))
    {
        Some(column) => Err(TableError::NoKeyColumn {
            server,
            database,
            table,
            column,
        }),
        None => Ok(columns),
    }
}
