//! Rows with the same key but different values: which columns differ, read
//! for a sample of them from both snapshots and compared as text.

use std::collections::{BTreeMap, BTreeSet};

use tokio_postgres::Client;

use super::transfer::{PackedKey, load_keys};
use crate::db::quote_ident;
use crate::schema::TableSpec;

/// The shared columns whose text differs in any sampled row.
pub async fn columns_differing(
    readers: [&Client; 2],
    spec: &TableSpec,
    values: &[String],
    sample: &[PackedKey],
) -> Result<Vec<String>, (usize, tokio_postgres::Error)> {
    let sql = sample_sql(spec, values);
    let read = |i: usize| {
        let sql = &sql;
        async move {
            load_keys(readers[i], spec, sample)
                .await
                .map_err(|e| (i, e))?;
            let rows = readers[i]
                .query(sql.as_str(), &[])
                .await
                .map_err(|e| (i, e))?;
            Ok::<_, (usize, tokio_postgres::Error)>(
                rows.iter()
                    .enumerate()
                    .map(|(n, r)| (n, r.get::<_, Vec<Option<String>>>(0)))
                    .collect::<BTreeMap<usize, Vec<Option<String>>>>(),
            )
        }
    };
    let (a, b) = tokio::join!(read(0), read(1));
    let (a, b) = (a?, b?);
    let mut differing = BTreeSet::new();
    for (n, row_a) in &a {
        let Some(row_b) = b.get(n) else { continue };
        for (i, (x, y)) in row_a.iter().zip(row_b).enumerate() {
            if x != y {
                differing.insert(i);
            }
        }
    }
    Ok(differing.into_iter().map(|i| values[i].clone()).collect())
}

/// Each sampled row's values as text, in key order (the keys exist on both
/// sides, so the n-th row of each side is the same sample).
fn sample_sql(spec: &TableSpec, values: &[String]) -> String {
    let texts = values
        .iter()
        .map(|c| format!("x.{}::text", quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let join = super::transfer::key_join(spec);
    let order = (0..spec.device_columns.len())
        .map(|i| format!("k.d{i}, "))
        .collect::<String>();
    format!(
        "SELECT DISTINCT ON ({order}k.t) ARRAY[{texts}]::text[] FROM {table} x JOIN essops_keys k ON {join} ORDER BY {order}k.t",
        table = quote_ident(spec.name),
    )
}
