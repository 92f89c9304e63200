//! Moving the missing rows from one server to the other, whole and once.
//!
//! The keys go to the source as binary COPY into a temp table; the rows they
//! name come back as binary COPY and are piped, unparsed, into a staging temp
//! table on the target (same shared columns, same types, so the binary format
//! is the same). One `INSERT … SELECT … WHERE NOT EXISTS … ON CONFLICT DO
//! NOTHING` then adds only what the target still lacks: safe without a unique
//! index, and safe against a concurrent ingest. It never updates or deletes.
//! Temp tables are ANALYZEd by hand: autovacuum never sees them, and without
//! statistics the planner picks nested loops over the whole hypertable.

use futures_util::{SinkExt, TryStreamExt, pin_mut};
use tokio_postgres::Client;

use crate::db::{BinaryCopyWriter, quote_ident, quote_list};
use crate::schema::{DeviceId, TableSpec};
use crate::sql::insert_absent_sql;

/// Key columns of the temp key table: d0, d1, … then t.
fn key_table_columns(spec: &TableSpec) -> Vec<String> {
    (0..spec.device_columns.len())
        .map(|i| format!("d{i}"))
        .chain(["t".to_string()])
        .collect()
}

/// Joins table alias `x` to key alias `k` on the natural key.
fn key_join(spec: &TableSpec) -> String {
    spec.key_columns()
        .iter()
        .zip(key_table_columns(spec))
        .map(|(col, k)| format!("x.{} = k.{k}", quote_ident(col)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Creates (or empties) the session's temp key table and loads `keys` into it.
pub async fn load_keys(
    client: &Client,
    spec: &TableSpec,
    keys: &[(DeviceId, i64)],
) -> Result<(), tokio_postgres::Error> {
    let cols = key_table_columns(spec);
    let defs: Vec<String> = cols
        .iter()
        .map(|c| format!("{c} {}", if c == "t" { "timestamptz" } else { "int4" }))
        .collect();
    client
        .batch_execute(&format!(
            "CREATE TEMP TABLE IF NOT EXISTS essops_keys ({}) ON COMMIT DROP; TRUNCATE essops_keys",
            defs.join(", ")
        ))
        .await?;
    let mut w = BinaryCopyWriter::new();
    for (device, micros) in keys {
        let ids: Vec<i32> = device.iter().map(|&x| i32::from(x)).collect();
        w.row(&ids, *micros);
    }
    let sink = client
        .copy_in("COPY essops_keys FROM STDIN (FORMAT binary)")
        .await?;
    pin_mut!(sink);
    sink.send(w.finish()).await?;
    sink.finish().await?;
    client.batch_execute("ANALYZE essops_keys").await
}

/// Pipes the rows named by the source's `essops_keys` into the target and
/// inserts those it lacks. Returns the bytes moved and the device of each
/// row inserted. The target work runs in its own transaction, committed here.
pub async fn copy_rows(
    source: &Client,
    target: &mut Client,
    spec: &TableSpec,
    columns: &[String],
) -> Result<(u64, Vec<DeviceId>), tokio_postgres::Error> {
    let table = quote_ident(spec.name);
    let cols = quote_list(columns);
    let x_cols: String = columns
        .iter()
        .map(|c| format!("x.{}", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let k_cols = key_table_columns(spec).join(", ");
    // DISTINCT ON: a source without a unique index may hold a sample twice.
    let out_sql = format!(
        "COPY (SELECT DISTINCT ON ({k_cols}) {x_cols} FROM {table} x JOIN essops_keys k ON {join} ORDER BY {k_cols}) TO STDOUT (FORMAT binary)",
        join = key_join(spec),
    );
    let tx = target.transaction().await?;
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE essops_stage ON COMMIT DROP AS SELECT {cols} FROM {table} WITH NO DATA"
    ))
    .await?;
    let sink = tx
        .copy_in(&format!(
            "COPY essops_stage ({cols}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    pin_mut!(sink);
    let stream = source.copy_out(&out_sql).await?;
    pin_mut!(stream);
    let mut moved = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        moved += chunk.len() as u64;
        sink.send(chunk).await?;
    }
    sink.finish().await?;
    tx.batch_execute("ANALYZE essops_stage").await?;
    let returning = crate::sql::device_ids_returning(spec);
    let inserted = tx
        .query(
            &insert_absent_sql(spec, columns, "essops_stage", &returning),
            &[],
        )
        .await?;
    tx.commit().await?;
    let n = spec.device_columns.len();
    let devices = inserted
        .iter()
        .filter_map(|r| crate::db::device_id(r, n).ok().flatten())
        .collect();
    Ok((moved, devices))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::RACK;

    #[test]
    fn reconcile_key_join_covers_the_natural_key() {
        assert_eq!(
            key_join(&RACK),
            r#"x."BANK_ID" = k.d0 AND x."RACK_ID" = k.d1 AND x."TIMESTAMP" = k.t"#
        );
    }
}
