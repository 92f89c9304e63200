//! What the catalog says about the ESS tables and their indexes. On a
//! hypertable the root index holds no data and is never scanned; sizes and
//! scans are the sums over its chunk indexes.

use serde::Serialize;
use tokio_postgres::Client;

use crate::db::DbError;

#[derive(Debug, Clone, Serialize)]
pub struct TableInfo {
    pub table: String,
    pub hypertable: bool,
    pub chunks: i64,
    pub rows_estimate: i64,
    pub size_bytes: i64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct IndexInfo {
    pub table: String,
    pub name: String,
    /// Key columns, then INCLUDE columns.
    pub columns: Vec<String>,
    /// How many of `columns` are key columns.
    pub key_columns: usize,
    pub unique: bool,
    pub size_bytes: i64,
    pub scans: i64,
}

/// Tables named `names` that exist in `public`, with size and row estimates.
pub async fn tables(
    client: &Client,
    names: &[&str],
) -> Result<Vec<TableInfo>, tokio_postgres::Error> {
    let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let rows = client
        .query(
            "SELECT c.relname::text,
                    h.hypertable_name IS NOT NULL,
                    coalesce(h.num_chunks, 0)::int8,
                    CASE WHEN h.hypertable_name IS NOT NULL THEN approximate_row_count(c.oid) ELSE greatest(c.reltuples, 0)::int8 END,
                    CASE WHEN h.hypertable_name IS NOT NULL THEN hypertable_size(c.oid) ELSE pg_total_relation_size(c.oid) END
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace AND n.nspname = 'public'
               LEFT JOIN timescaledb_information.hypertables h ON h.hypertable_schema = 'public' AND h.hypertable_name = c.relname
              WHERE c.relkind IN ('r', 'p') AND c.relname = ANY($1)
              ORDER BY array_position($1, c.relname::text)",
            &[&names],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| TableInfo {
            table: r.get(0),
            hypertable: r.get(1),
            chunks: r.get(2),
            rows_estimate: r.get(3),
            size_bytes: r.get::<_, Option<i64>>(4).unwrap_or(0),
        })
        .collect())
}

/// The indexes of `table` with their columns in order; for a hypertable,
/// size and scans summed over the chunk indexes.
pub async fn indexes(
    client: &Client,
    table: &str,
) -> Result<Vec<IndexInfo>, tokio_postgres::Error> {
    let rows = client
        .query(
            "WITH idx AS (
               SELECT i.indexrelid, ic.relname::text AS name, i.indisunique, i.indnkeyatts::int4 AS nkey,
                      ARRAY(SELECT coalesce(a.attname::text, pg_get_indexdef(i.indexrelid, k.n, true))
                              FROM generate_subscripts(i.indkey, 1) AS k(n)
                              LEFT JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[k.n]
                             ORDER BY k.n) AS columns
                 FROM pg_index i
                 JOIN pg_class t ON t.oid = i.indrelid
                 JOIN pg_namespace n ON n.oid = t.relnamespace AND n.nspname = 'public'
                 JOIN pg_class ic ON ic.oid = i.indexrelid
                WHERE t.relname = $1),
             chunks AS (
               SELECT ci.hypertable_index_name::text AS name,
                      sum(coalesce(s.idx_scan, 0))::int8 AS scans,
                      sum(pg_relation_size(s.indexrelid))::int8 AS size
                 FROM _timescaledb_catalog.chunk_index ci
                 JOIN _timescaledb_catalog.hypertable h ON h.id = ci.hypertable_id
                 JOIN _timescaledb_catalog.chunk c ON c.id = ci.chunk_id
                 JOIN pg_stat_all_indexes s ON s.schemaname = c.schema_name AND s.indexrelname = ci.index_name
                WHERE h.schema_name = 'public' AND h.table_name = $1
                GROUP BY 1)
             SELECT idx.name, idx.columns, idx.indisunique, idx.nkey,
                    coalesce(chunks.size, pg_relation_size(idx.indexrelid))::int8,
                    coalesce(chunks.scans, s.idx_scan, 0)::int8
               FROM idx
               LEFT JOIN chunks ON chunks.name = idx.name
               LEFT JOIN pg_stat_all_indexes s ON s.indexrelid = idx.indexrelid
              ORDER BY idx.name",
            &[&table],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| IndexInfo {
            table: table.to_string(),
            name: r.get(0),
            columns: r.get(1),
            unique: r.get(2),
            key_columns: r.get::<_, i32>(3) as usize,
            size_bytes: r.get(4),
            scans: r.get(5),
        })
        .collect())
}

impl IndexInfo {
    pub fn key(&self) -> &[String] {
        &self.columns[..self.key_columns.min(self.columns.len())]
    }

    /// Whether this index leads with `key` and holds every `include` column.
    pub fn covers(&self, key: &[String], include: &[String]) -> bool {
        self.key().starts_with(key) && include.iter().all(|c| self.columns.contains(c))
    }

    /// Exactly these key columns and these INCLUDE columns (in any order).
    pub fn same_as(&self, key: &[String], include: &[String]) -> bool {
        let mut extra: Vec<&String> = self.columns[self.key().len()..].iter().collect();
        let mut want: Vec<&String> = include.iter().collect();
        extra.sort();
        want.sort();
        self.key() == key && extra == want
    }
}

/// Chunk indexes built so far for `index` (progress of a per-chunk build).
pub async fn chunk_indexes(
    client: &Client,
    table: &str,
    index: &str,
) -> Result<i64, tokio_postgres::Error> {
    client
        .query_one(
            "SELECT count(*) FROM _timescaledb_catalog.chunk_index ci
               JOIN _timescaledb_catalog.hypertable h ON h.id = ci.hypertable_id
              WHERE h.schema_name = 'public' AND h.table_name = $1 AND ci.hypertable_index_name = $2",
            &[&table, &index],
        )
        .await
        .map(|r| r.get(0))
}

pub fn query_error(
    server: &str,
    database: &str,
    what: &str,
) -> impl Fn(tokio_postgres::Error) -> DbError {
    let (server, database, what) = (server.to_string(), database.to_string(), what.to_string());
    move |e| DbError::query(&server, &database, what.clone(), &e)
}
