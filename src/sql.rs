//! SQL text: the one identifier-quoting helper and the statements built
//! from table knowledge. Every SQL identifier essops writes goes through
//! [`quote_ident`]; every value is a bound parameter, never text.

use crate::schema::TableSpec;

/// Quotes an SQL identifier: wraps it in double quotes and doubles any inside.
/// The only way essops puts a name into SQL text.
pub fn quote_ident(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' {
            out.push('"');
        }
        // NUL cannot appear in a PostgreSQL identifier; drop it rather than
        // let it cut the statement short on the wire.
        if c != '\0' {
            out.push(c);
        }
    }
    out.push('"');
    out
}

/// A comma-separated list of quoted identifiers.
pub fn quote_list<S: AsRef<str>>(names: &[S]) -> String {
    names
        .iter()
        .map(|n| quote_ident(n.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `alias."a", alias."b", …`: quoted column names under a table alias.
pub fn prefixed_list<S: AsRef<str>>(alias: &str, names: &[S]) -> String {
    names
        .iter()
        .map(|n| format!("{alias}.{}", quote_ident(n.as_ref())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `a."BANK_ID" = b."BANK_ID" AND …`: the natural key of two aliases is equal.
pub fn same_key(spec: &TableSpec, a: &str, b: &str) -> String {
    same_columns(&spec.key_columns(), a, b)
}

/// `"BANK_ID" IS NULL OR …`: the row has no device (`None` for a table
/// without device columns, whose rows all belong to the site).
pub fn device_is_null(spec: &TableSpec) -> Option<String> {
    (!spec.device_columns.is_empty()).then(|| {
        spec.device_columns
            .iter()
            .map(|c| format!("{} IS NULL", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(" OR ")
    })
}

/// `a."BANK_ID" = b."BANK_ID" AND …` over `columns` (device columns).
pub fn same_columns(columns: &[&str], a: &str, b: &str) -> String {
    columns
        .iter()
        .map(|c| format!("{a}.{q} = {b}.{q}", q = quote_ident(c)))
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// `d AS (…)`, for a `WITH RECURSIVE`: every device id tuple the table has
/// ever held, in order, by a loose index scan (each step jumps to the next
/// tuple in the natural-key index).
pub fn devices_cte(spec: &TableSpec) -> String {
    let columns = spec.device_columns;
    let order: String = (1..=columns.len())
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "d AS (
             (SELECT {list} FROM {table} ORDER BY {order} LIMIT 1)
             UNION ALL
             SELECT n.* FROM d CROSS JOIN LATERAL
                 (SELECT {next} FROM {table} t WHERE ({next}) > ({prev}) ORDER BY {order} LIMIT 1) n)",
        list = quote_list(columns),
        table = quote_ident(spec.name),
        next = prefixed_list("t", columns),
        prev = prefixed_list("d", columns),
    )
}

/// ` AND "BANK_ID" IS NOT NULL AND …`: the row has all its device ids.
pub fn devices_not_null(spec: &TableSpec) -> String {
    spec.device_columns
        .iter()
        .map(|c| format!(" AND {} IS NOT NULL", quote_ident(c)))
        .collect()
}

/// ` AND "BANK_ID" = $N::int4 AND …`: one device's ids bound from `$first` on.
pub fn device_filter(spec: &TableSpec, first: usize) -> String {
    spec.device_columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!(" AND {} = ${}::int4", quote_ident(c), first + i))
        .collect()
}

/// `INSERT INTO table (columns) SELECT … FROM stage s WHERE NOT EXISTS (same
/// natural key) ON CONFLICT DO NOTHING RETURNING returning`: adds only rows
/// the table lacks, whether or not it has a unique natural-key index, and
/// never updates or deletes. `stage` is a temp table essops created.
pub fn insert_absent_sql(
    spec: &TableSpec,
    columns: &[String],
    stage: &str,
    returning: &str,
    unique_key: bool,
) -> String {
    let prefixed = |alias: &str| prefixed_list(alias, columns);
    let same_key = same_key(spec, "t", "s");
    // With a unique natural key, ON CONFLICT alone is exact, and cheaper
    // than probing the index twice.
    let absent = match unique_key {
        true => String::new(),
        false => format!(
            " WHERE NOT EXISTS (SELECT 1 FROM {} t WHERE {same_key})",
            quote_ident(spec.name)
        ),
    };
    format!(
        "INSERT INTO {table} ({cols})
         SELECT {s_cols} FROM {stage} s{absent}
         ON CONFLICT DO NOTHING
         RETURNING {returning}",
        table = quote_ident(spec.name),
        cols = quote_list(columns),
        s_cols = prefixed("s"),
    )
}

/// The table's device ids as `int4`, for `RETURNING` (a constant where the
/// table has none): which devices' rows an insert added.
pub fn device_ids_returning(spec: &TableSpec) -> String {
    match spec.device_columns {
        [] => "1".to_string(),
        ids => ids
            .iter()
            .map(|c| format!("{}::int4", quote_ident(c)))
            .collect::<Vec<_>>()
            .join(", "),
    }
}
