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
    read_columns(client, table).await.map_err(|e| {
        DbError::query(
            server,
            database,
            format!("reading the columns of `{table}`"),
            &e,
        )
    })
}

/// [`columns`] on any client (a transaction too), with the driver's error.
pub async fn read_columns(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
) -> Result<Vec<Column>, tokio_postgres::Error> {
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
        .await?;
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
    #[error(
        "server `{server}`, database `{database}`: the KPI rollup `{table}` does not exist: run essops migrate (schema version 8 adds it)"
    )]
    MissingKpiRollup {
        server: String,
        database: String,
        table: String,
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

/// TimescaleDB's edition on this server: `timescaledb.license`, `apache`
/// (no compression, retention policies or continuous aggregates) or
/// `timescale` (Community).
pub async fn timescale_edition(
    client: &tokio_postgres::Client,
) -> Result<String, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT coalesce(current_setting('timescaledb.license', true), 'unknown')",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// A hypertable's chunks that end at or before `until`, oldest first:
/// (schema, name, range start, range end, bytes).
pub async fn chunks_before(
    client: &tokio_postgres::Client,
    table: &str,
    until: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<Chunk>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.chunk_schema, c.chunk_name, c.range_start, c.range_end,
                    pg_total_relation_size(format('%I.%I', c.chunk_schema, c.chunk_name)::regclass)
               FROM timescaledb_information.chunks c
              WHERE c.hypertable_schema = 'public' AND c.hypertable_name = $1 AND c.range_end <= $2
              ORDER BY c.range_start",
            &[&table, &until],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Chunk {
            name: format!("{}.{}", r.get::<_, String>(0), r.get::<_, String>(1)),
            start: r.get(2),
            end: r.get(3),
            bytes: r.get(4),
        })
        .collect())
}

/// Locks a chunk (`schema.name`) against writes for the rest of the
/// transaction, and counts its rows.
pub async fn lock_and_count_chunk(
    tx: &impl tokio_postgres::GenericClient,
    chunk: &str,
) -> Result<i64, tokio_postgres::Error> {
    let (schema, name) = chunk.split_once('.').unwrap_or(("public", chunk));
    let relation = format!(
        "{}.{}",
        crate::sql::quote_ident(schema),
        crate::sql::quote_ident(name)
    );
    tx.batch_execute(&format!("LOCK TABLE {relation} IN SHARE MODE"))
        .await?;
    Ok(tx
        .query_one(&format!("SELECT count(*) FROM {relation}"), &[])
        .await?
        .get(0))
}

/// One chunk of a hypertable.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Chunk {
    /// `schema.name`
    pub name: String,
    pub start: chrono::DateTime<chrono::Utc>,
    pub end: chrono::DateTime<chrono::Utc>,
    pub bytes: i64,
}

/// Drops exactly the chunk of `table` spanning `[start, end)` with
/// `drop_chunks()`; returns the names it dropped.
pub async fn drop_chunk(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
    chunk: &Chunk,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT drop_chunks(format('public.%I', $1::text)::regclass, older_than => $3::timestamptz, newer_than => $2::timestamptz)::text",
            &[&table, &chunk.start, &chunk.end],
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Whether `spec`'s table has a valid unique index on exactly its natural key.
pub async fn has_unique_key(
    client: &tokio_postgres::Client,
    spec: &crate::schema::TableSpec,
) -> Result<bool, tokio_postgres::Error> {
    let key: Vec<String> = spec.key_columns().into_iter().map(String::from).collect();
    let row = client
        .query_one(
            "SELECT EXISTS (
               SELECT 1 FROM pg_index i
                 JOIN pg_class c ON c.oid = i.indrelid
                 JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname = 'public' AND c.relname = $1 AND i.indisunique AND i.indisvalid
                  AND i.indpred IS NULL AND i.indexprs IS NULL
                  AND (SELECT array_agg(a.attname::text ORDER BY a.attname::text)
                         FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum = ANY (i.indkey))
                      = (SELECT array_agg(k ORDER BY k) FROM unnest($2::text[]) k))",
            &[&spec.name.to_string(), &key],
        )
        .await?;
    Ok(row.get(0))
}
