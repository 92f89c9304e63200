//! Index recommendations from query frequency: the predicates of the ESS
//! queries in pg_stat_statements become candidate multi-column indexes
//! (equality columns first, the time range last), each checked by planner
//! cost with hypothetical indexes (HypoPG, made on every chunk, since the
//! planner ignores a hypertable's root) or, without HypoPG, a real index
//! built inside a transaction that is rolled back.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tokio_postgres::Client;
use tokio_postgres::types::{ToSql, Type};

use super::catalog::IndexInfo;
use crate::db::quote_ident;
use crate::schema::{TABLES, TIME_COLUMN};

/// A column compared with a parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub column: String,
    /// `=`, `in`, or a range operator.
    pub op: String,
    /// Parameter number, when the right side is `$n`.
    pub param: Option<usize>,
}

/// One query's table and predicates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape {
    pub table: String,
    pub comparisons: Vec<Comparison>,
    /// Columns the query reads (plain columns or simple aggregates of them);
    /// empty when it reads anything else (`*`, expressions).
    pub outputs: Vec<String>,
}

impl Comparison {
    fn is_equality(&self) -> bool {
        self.op == "=" || self.op == "in"
    }
}

impl Shape {
    /// Equality columns in order of appearance, then the first range column.
    pub fn candidate(&self) -> Vec<String> {
        let mut cols: Vec<String> = Vec::new();
        for c in self.comparisons.iter().filter(|c| c.is_equality()) {
            if !cols.contains(&c.column) {
                cols.push(c.column.clone());
            }
        }
        if let Some(r) = self
            .comparisons
            .iter()
            .find(|c| !c.is_equality() && !cols.contains(&c.column))
        {
            cols.push(r.column.clone());
        }
        cols
    }

    /// Columns to INCLUDE so the index alone answers the query (an
    /// index-only scan): what it reads beyond the key, at most four.
    pub fn include(&self, key: &[String]) -> Vec<String> {
        let extra: Vec<String> = self
            .outputs
            .iter()
            .filter(|c| !key.contains(c))
            .cloned()
            .collect();
        if extra.len() > 4 { Vec::new() } else { extra }
    }
}

/// The columns a SELECT list reads, if it reads only columns (or avg/min/max/sum/count of one).
fn outputs(list: &str) -> Vec<String> {
    let mut cols = Vec::new();
    for item in list.split(',') {
        let mut t = item.trim();
        let lower = t.to_lowercase();
        for f in ["avg(", "min(", "max(", "sum(", "count(", "first(", "last("] {
            if lower.starts_with(f) && t.ends_with(')') {
                t = t[f.len()..t.len() - 1]
                    .split(',')
                    .next()
                    .unwrap_or("")
                    .trim();
            }
        }
        match ident(t) {
            Some(c) if !cols.contains(&c) => cols.push(c),
            Some(_) => {}
            None => return Vec::new(),
        }
    }
    cols
}

fn ident(token: &str) -> Option<String> {
    let t = token.trim();
    if let Some(inner) = t.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
        return Some(inner.replace("\"\"", "\""));
    }
    let bare = t.rsplit('.').next()?;
    (!bare.is_empty() && bare.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then(|| bare.to_lowercase())
}

/// Reads the table and the `column op $n` conjuncts of a normalised query.
/// Only a single plain SELECT qualifies: essops never plans (let alone runs)
/// anything else it collected.
pub fn parse(query: &str) -> Option<Shape> {
    let lower = query.to_lowercase();
    let single_select = lower.trim_start().starts_with("select ")
        && !query.trim_end().trim_end_matches(';').contains(';');
    if !single_select {
        return None;
    }
    let from = lower.find(" from ")? + 6;
    let select_list = lower
        .find("select ")
        .filter(|s| *s < from)
        .map(|s| &query[s + 7..from - 6])
        .unwrap_or("");
    let rest = &query[from..];
    let table_token = rest.split_whitespace().next()?;
    let table = ident(table_token.trim_end_matches([',', ';', ')']))?;
    if !TABLES.iter().any(|t| t.name == table) {
        return None;
    }
    let lower_rest = &lower[from..];
    let where_at = lower_rest.find(" where ")? + 7;
    let mut clause = &rest[where_at..];
    let lower_clause = &lower_rest[where_at..];
    for stop in [
        " group by ",
        " order by ",
        " limit ",
        " offset ",
        " union ",
        " for ",
    ] {
        if let Some(i) = lower_clause.find(stop) {
            clause = &clause[..i.min(clause.len())];
        }
    }
    let lower_clause = clause.to_lowercase();
    if lower_clause.contains(" or ") {
        return None; // OR'd predicates want a different index shape; leave them be.
    }
    let comparisons: Vec<Comparison> = conjuncts(clause)
        .into_iter()
        .filter_map(comparison)
        .collect();
    (!comparisons.is_empty()).then_some(Shape {
        table,
        comparisons,
        outputs: outputs(select_list),
    })
}

/// The WHERE clause split at its top-level ANDs (not a BETWEEN's AND).
fn conjuncts(clause: &str) -> Vec<&str> {
    let lower_clause = clause.to_lowercase();
    let mut pieces: Vec<&str> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 5 <= lower_clause.len() {
        if &lower_clause[i..i + 5] == " and "
            && !lower_clause[..i].trim_end().ends_with(" between")
            && !is_between_and(&lower_clause[..i])
        {
            pieces.push(&clause[start..i]);
            start = i + 5;
            i += 5;
            continue;
        }
        i += 1;
    }
    pieces.push(&clause[start..]);
    pieces
}

/// `column op $n` from one conjunct; `None` for `<>`/`!=` and what is not a column.
fn comparison(piece: &str) -> Option<Comparison> {
    let p = piece.trim().trim_matches(['(', ')']).trim();
    let lp = p.to_lowercase();
    let ops = [">=", "<=", "<>", "!=", "=", ">", "<", " between ", " in "];
    let (at, op) = ops
        .iter()
        .filter_map(|op| lp.find(op).map(|i| (i, *op)))
        .min_by_key(|(i, _)| *i)?;
    if op == "<>" || op == "!=" {
        return None;
    }
    let column = ident(&p[..at])?;
    let rhs = p[at + op.len()..].trim();
    // The first parameter on the right side: `$2`, `($2)`, `to_timestamp($2)`.
    let param = rhs.find('$').and_then(|i| {
        rhs[i + 1..]
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    });
    Some(Comparison {
        column,
        op: op.trim().to_string(),
        param,
    })
}

/// Whether the text ends inside `x BETWEEN a` (whose AND is not a conjunction).
fn is_between_and(before: &str) -> bool {
    match before.rfind(" between ") {
        Some(b) => !before[b..].contains(" and "),
        None => false,
    }
}

#[derive(Debug, Clone)]
pub struct Statement {
    pub query: String,
    pub calls: i64,
    pub mean_ms: f64,
}

/// Frequent statements of this database from pg_stat_statements.
pub async fn statements(
    client: &Client,
    min_calls: i64,
) -> Result<Vec<Statement>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT query, calls, mean_exec_time FROM pg_stat_statements
              WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                AND calls >= $1 AND query ILIKE '%where%'
              ORDER BY calls DESC LIMIT 500",
            &[&min_calls],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Statement {
            query: r.get(0),
            calls: r.get(1),
            mean_ms: r.get(2),
        })
        .collect())
}

/// Values for a statement's parameters, taken from the table itself: the
/// newest row's value for an equality, the last hour before it for a range.
pub async fn sample_params(
    client: &Client,
    stmt: &tokio_postgres::Statement,
    shape: &Shape,
) -> Option<Vec<Box<dyn ToSql + Sync + Send>>> {
    let mut by_param: BTreeMap<usize, &Comparison> = BTreeMap::new();
    for c in &shape.comparisons {
        if let Some(p) = c.param {
            by_param.insert(p, c);
        }
    }
    let row = client
        .query_opt(
            &format!(
                "SELECT to_jsonb(t) FROM {} t ORDER BY {} DESC LIMIT 1",
                quote_ident(&shape.table),
                quote_ident(TIME_COLUMN)
            ),
            &[],
        )
        .await
        .ok()??;
    let newest: serde_json::Value = row.get(0);
    let mut out: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    for (i, ty) in stmt.params().iter().enumerate() {
        let c = by_param.get(&(i + 1))?;
        let v = &newest[&c.column];
        let lower_bound = matches!(c.op.as_str(), ">" | ">=" | "between");
        out.push(match *ty {
            Type::TIMESTAMPTZ => {
                let t: DateTime<Utc> = v.as_str()?.parse().ok()?;
                Box::new(if lower_bound {
                    t - chrono::Duration::hours(1)
                } else {
                    t
                })
            }
            // A time compared through to_timestamp($n): epoch seconds.
            Type::FLOAT8 | Type::INT8 | Type::NUMERIC if c.column == TIME_COLUMN => {
                let t: DateTime<Utc> = v.as_str()?.parse().ok()?;
                let secs = if lower_bound {
                    t.timestamp() - 3600
                } else {
                    t.timestamp()
                };
                match *ty {
                    Type::INT8 => Box::new(secs),
                    _ => Box::new(secs as f64),
                }
            }
            Type::INT2 => Box::new(v.as_i64()? as i16),
            Type::INT4 => Box::new(v.as_i64()? as i32),
            Type::INT8 => Box::new(v.as_i64()?),
            Type::FLOAT4 => Box::new(v.as_f64()? as f32),
            Type::FLOAT8 => Box::new(v.as_f64()?),
            Type::TEXT | Type::VARCHAR => Box::new(v.as_str()?.to_string()),
            _ => return None,
        });
    }
    Some(out)
}

/// The planner's total cost of `query` with these parameters: `EXPLAIN`
/// only (never ANALYZE, so the statement is planned, not run), inside a
/// READ ONLY transaction with a statement timeout.
pub async fn cost(
    client: &Client,
    query: &str,
    params: &[Box<dyn ToSql + Sync + Send>],
) -> Result<f64, tokio_postgres::Error> {
    let refs: Vec<&(dyn ToSql + Sync)> = params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect();
    client
        .batch_execute("BEGIN READ ONLY; SET LOCAL statement_timeout = '5s'")
        .await?;
    let row = client
        .query_one(&format!("EXPLAIN (FORMAT JSON) {query}"), &refs)
        .await;
    let _ = client.batch_execute("ROLLBACK").await;
    let plan: serde_json::Value = row?.get(0);
    Ok(plan[0]["Plan"]["Total Cost"].as_f64().unwrap_or(f64::NAN))
}

/// Whether HypoPG is installed in this database. essops installs nothing
/// itself: `CREATE EXTENSION hypopg` (or `essops migrate`) does.
pub async fn has_hypopg(client: &Client) -> bool {
    client
        .query_opt("SELECT 1 FROM pg_extension WHERE extname = 'hypopg'", &[])
        .await
        .is_ok_and(|r| r.is_some())
}

/// Makes `columns` exist hypothetically for the planner (on every chunk of a
/// hypertable). Returns false when HypoPG is not available here.
pub async fn hypothetical(
    client: &Client,
    table: &str,
    columns: &[String],
    include: &[String],
) -> Result<bool, tokio_postgres::Error> {
    if !has_hypopg(client).await {
        return Ok(false);
    }
    // `rel` is quoted: format('%I.%I') from the catalog, or quote_ident.
    let sql = |rel: &str| {
        format!(
            "CREATE INDEX ON {rel} {}",
            super::manage::column_list(columns, include)
        )
    };
    let relations: Vec<String> = client
        .query(
            "SELECT format('%I.%I', chunk_schema, chunk_name) FROM timescaledb_information.chunks
              WHERE hypertable_schema = 'public' AND hypertable_name = $1",
            &[&table],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let relations = if relations.is_empty() {
        vec![quote_ident(table)]
    } else {
        relations
    };
    for rel in relations {
        client
            .query("SELECT * FROM hypopg_create_index($1)", &[&sql(&rel)])
            .await?;
    }
    Ok(true)
}

pub async fn reset_hypothetical(client: &Client) {
    let _ = client.batch_execute("SELECT hypopg_reset()").await;
}

/// Indexes whose columns lead another index's columns (and are not unique).
pub fn redundant(indexes: &[IndexInfo]) -> Vec<(&IndexInfo, &IndexInfo)> {
    let mut out = Vec::new();
    for a in indexes.iter().filter(|i| !i.unique) {
        if let Some(b) = indexes.iter().find(|b| {
            b.name != a.name && b.key().len() > a.key().len() && b.key().starts_with(a.key())
        }) {
            out.push((a, b));
        }
    }
    out
}

/// An index that already leads with `key` and holds `include`.
pub fn covered(indexes: &[IndexInfo], key: &[String], include: &[String]) -> Option<String> {
    indexes
        .iter()
        .find(|i| i.covers(key, include))
        .map(|i| i.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_recommend_parses_predicates_and_orders_equality_first() {
        let s = parse(r#"SELECT "TIMESTAMP", "SOC" FROM rack WHERE "RACK_ID" = $1 AND "TIMESTAMP" >= $2 AND "TIMESTAMP" < $3 ORDER BY "TIMESTAMP""#).unwrap();
        assert_eq!(s.table, "rack");
        assert_eq!(s.candidate(), ["RACK_ID", "TIMESTAMP"]);
        assert_eq!(s.include(&s.candidate()), ["SOC"]);
        assert_eq!(s.comparisons[1].param, Some(2));
        let s = parse(r#"select avg("SOC") from public.bank where "TIMESTAMP" between $1 and $2 and "STATUS" = $3"#).unwrap();
        assert_eq!(s.candidate(), ["STATUS", "TIMESTAMP"]);
        assert_eq!(s.outputs, ["SOC"]);
        assert_eq!(s.comparisons.len(), 2);
        assert!(parse("SELECT * FROM pg_class WHERE oid = $1").is_none());
        let s = parse(r#"SELECT "SOC" FROM rack WHERE "RACK_ID" = $1 AND "TIMESTAMP" >= to_timestamp($2) AND "TIMESTAMP" < to_timestamp($3)"#).unwrap();
        assert_eq!(
            (s.candidate(), s.comparisons[2].param),
            (
                vec!["RACK_ID".to_string(), "TIMESTAMP".to_string()],
                Some(3)
            )
        );
        assert!(parse(r#"SELECT * FROM rack WHERE "RACK_ID" = $1 OR "BANK_ID" = $2"#).is_none());
    }
}
