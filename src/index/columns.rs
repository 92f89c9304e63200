//! `essops index columns`: a table's columns, their types, and the indexes
//! that cover each.

use serde::Serialize;

use super::*;

#[derive(Debug, Clone, Serialize)]
pub struct ColumnRow {
    pub server: String,
    pub site: String,
    pub table: String,
    pub column: String,
    pub data_type: String,
    /// `index (position)` for every index that has the column.
    pub indexes: Vec<String>,
}

pub type ColumnsReport = crate::output::Rows<ColumnRow>;

impl Report for ColumnsReport {
    type Row = ColumnRow;
    const KIND: &'static str = "column";
    const HEADER: &'static str = "SERVER|SITE|COLUMN|TYPE|INDEXES (POSITION)";
    fn cells(r: &ColumnRow) -> Vec<String> {
        vec![
            r.server.clone(),
            r.site.clone(),
            r.column.clone(),
            r.data_type.clone(),
            r.indexes.join(", "),
        ]
    }
    fn summary(&self) -> String {
        format!("{} columns", self.rows.len())
    }
    fn outcome(&self) -> Outcome {
        Outcome::Clean
    }
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

pub fn covering(indexes: &[IndexInfo], column: &str) -> Vec<String> {
    indexes
        .iter()
        .filter_map(|i| {
            i.columns
                .iter()
                .position(|c| c == column)
                .map(|p| format!("{} ({})", i.name, p + 1))
        })
        .collect()
}

pub async fn columns(args: &ColumnsArgs, ctx: &Context) -> Result<ColumnsReport, IndexError> {
    let spec = table(&args.table)?;
    let mut rows = Vec::new();
    for p in places(ctx, &args.at)? {
        let client = p.connect(ctx).await?;
        let cols =
            crate::catalog::require_table(&client, &p.server.name, &p.site.database, &spec).await?;
        let indexes = p.indexes(&client, spec.name).await?;
        for c in cols {
            rows.push(ColumnRow {
                server: p.server.name.clone(),
                site: p.site.name.clone(),
                table: spec.name.into(),
                indexes: covering(&indexes, &c.name),
                column: c.name,
                data_type: c.data_type,
            });
        }
    }
    Ok(ColumnsReport { rows })
}

// --------------------------------------------------------- create / drop
