//! `essops index list`: tables (rows, size, hypertable chunks) and their
//! indexes (columns, size, scans), per site and server.

use serde::Serialize;

use super::*;

#[derive(Debug, Clone, Serialize)]
pub struct ListRow {
    pub server: String,
    pub site: String,
    pub table: String,
    pub hypertable: bool,
    pub chunks: i64,
    pub rows_estimate: i64,
    pub table_size_bytes: i64,
    pub index: String,
    pub columns: Vec<String>,
    pub unique: bool,
    pub index_size_bytes: i64,
    /// On a hypertable: the sum over its chunk indexes.
    pub scans: i64,
}

pub type ListReport = crate::output::Rows<ListRow>;

impl Report for ListReport {
    type Row = ListRow;
    const KIND: &'static str = "index";
    const HEADER: &'static str =
        "SERVER|SITE|TABLE|CHUNKS|ROWS|SIZE|INDEX|COLUMNS|INDEX SIZE|SCANS";
    fn cells(r: &ListRow) -> Vec<String> {
        vec![
            r.server.clone(),
            r.site.clone(),
            r.table.clone(),
            if r.hypertable {
                r.chunks.to_string()
            } else {
                "-".into()
            },
            r.rows_estimate.to_string(),
            human_bytes(r.table_size_bytes.max(0) as u64),
            format!("{}{}", r.index, if r.unique { " (unique)" } else { "" }),
            r.columns.join(", "),
            human_bytes(r.index_size_bytes.max(0) as u64),
            r.scans.to_string(),
        ]
    }
    fn summary(&self) -> String {
        format!("{} indexes", self.rows.len())
    }
    fn outcome(&self) -> Outcome {
        Outcome::Clean
    }
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

pub async fn list(args: &ListArgs, ctx: &Context) -> Result<ListReport, IndexError> {
    let specs: Vec<TableSpec> = schema::select_tables(&args.tables.tables)?;
    let names: Vec<&str> = specs.iter().map(|t| t.name).collect();
    let mut rows = Vec::new();
    for p in places(ctx, &args.at)? {
        let client = p.connect(ctx).await?;
        let err = catalog::query_error(&p.server.name, &p.site.database, "reading the catalog");
        for t in catalog::tables(&client, &names).await.map_err(&err)? {
            for i in catalog::indexes(&client, &t.table).await.map_err(&err)? {
                rows.push(ListRow {
                    server: p.server.name.clone(),
                    site: p.site.name.clone(),
                    table: t.table.clone(),
                    hypertable: t.hypertable,
                    chunks: t.chunks,
                    rows_estimate: t.rows_estimate,
                    table_size_bytes: t.size_bytes,
                    index: i.name,
                    columns: i.columns,
                    unique: i.unique,
                    index_size_bytes: i.size_bytes,
                    scans: i.scans,
                });
            }
        }
    }
    Ok(ListReport { rows })
}

// ---------------------------------------------------------------- columns
