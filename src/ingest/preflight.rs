//! Preflight: before the first poll (or, for a server that was down at
//! start, before its first write), every register-map field is checked
//! against each server's catalog: the table and column exist, the column's
//! type can hold every value the field can take (u32 into `integer` cannot,
//! nor a float into an integer column, nor u64 into `bigint`), and the role
//! may insert. A refusal names the site, server, table, field, column and
//! both types, and maps to exit 3 (map or schema) or 6 (privilege).

use std::collections::HashMap;

use tokio_postgres::Client;

use super::batch::Batch;
use crate::catalog::Column;
use crate::db::CopyType;
use crate::exit::code as exit;
use crate::modbus::map::{Field, RegisterMap, TableMap};
use crate::modbus::value::DataType;

/// What preflight read of one table on one server.
#[derive(Debug, Clone)]
pub struct TableCatalog {
    pub columns: Vec<Column>,
    /// A valid unique index covers exactly the natural key: a plain COPY
    /// can then never store a row twice (it fails instead, and the batch
    /// goes through the insert-only-absent path).
    pub unique_key: bool,
}

/// A server's ESS tables, as read at preflight.
pub type Catalog = HashMap<&'static str, TableCatalog>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PreflightError {
    /// The map and the table do not fit (exit 3).
    #[error("{0}")]
    Schema(String),
    /// The role may not write (exit 6).
    #[error("{0}")]
    Privilege(String),
    /// The server could not be asked; it is checked again when it is back.
    #[error("{0}")]
    Unreachable(String),
}

impl PreflightError {
    pub fn exit_code(&self) -> u8 {
        match self {
            PreflightError::Schema(_) => exit::CONFIG,
            PreflightError::Privilege(_) => exit::PRIVILEGE,
            PreflightError::Unreachable(_) => exit::UNAVAILABLE,
        }
    }
}

/// A map field and its column that do not fit together.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ColumnError {
    #[error(
        "register map field `{name}` has no column `{name}` in the table; a column the shipped schema lacks is added on every server of the site with: ALTER TABLE {table} ADD COLUMN {quoted} {ty}"
    )]
    Missing {
        name: String,
        table: String,
        quoted: String,
        ty: &'static str,
    },
    #[error("column `{0}` is in the batch but not in the table (run essops migrate)")]
    MissingKey(String),
    #[error("column `{name}` is {ty}, which ingest cannot fill from registers")]
    Unsupported { name: String, ty: String },
    #[error(
        "register map field `{name}` ({field}) does not fit column `{name}` of type {ty}: \
         change the field's type or scale in the register map, or the column's type"
    )]
    DoesNotFit {
        name: String,
        field: String,
        ty: String,
    },
}

/// Checks every table the map fills on one server; returns its catalog.
pub async fn check_server(
    client: &Client,
    server: &str,
    database: &str,
    site: &str,
    map: &RegisterMap,
) -> Result<Catalog, PreflightError> {
    let mut catalog = Catalog::new();
    for t in &map.tables {
        let place = format!("site `{site}`, server `{server}`, table `{}`", t.spec.name);
        let columns = crate::catalog::columns(client, server, database, t.spec.name)
            .await
            .map_err(|e| PreflightError::Unreachable(e.to_string()))?;
        if columns.is_empty() {
            return Err(PreflightError::Schema(format!(
                "{place}: the table does not exist in database `{database}` (run essops migrate)"
            )));
        }
        for name in t
            .spec
            .key_columns()
            .into_iter()
            .map(String::from)
            .chain(t.value_columns())
        {
            column_type(Some(t), &name, &columns)
                .map_err(|m| PreflightError::Schema(format!("{place}: {m}")))?;
        }
        crate::privilege::require(
            client,
            server,
            database,
            "ingest",
            t.spec.name,
            &["SELECT", "INSERT"],
            true,
        )
        .await
        .map_err(|e| match e {
            crate::privilege::PrivilegeError::Lacks { .. } => {
                PreflightError::Privilege(e.to_string())
            }
            crate::privilege::PrivilegeError::Check(m) => PreflightError::Unreachable(m),
        })?;
        let unique_key = crate::catalog::has_unique_key(client, &t.spec)
            .await
            .map_err(|e| {
                PreflightError::Unreachable(
                    crate::db::DbError::query(server, database, "reading indexes", &e).to_string(),
                )
            })?;
        catalog.insert(
            t.spec.name,
            TableCatalog {
                columns,
                unique_key,
            },
        );
    }
    Ok(catalog)
}

/// The COPY types of a batch's columns (a replayed batch may predate the
/// current map, so its own columns are checked, not the map's).
pub fn copy_types(
    map: &RegisterMap,
    batch: &Batch,
    columns: &[Column],
) -> Result<Vec<CopyType>, ColumnError> {
    let table = map.table(batch.spec.name);
    batch
        .all_columns()
        .iter()
        .map(|name| column_type(table, name, columns))
        .collect()
}

/// The type essops writes `name` as, refusing a column the table lacks, a
/// type essops cannot fill, and a map field whose values the column cannot hold.
fn column_type(
    table: Option<&TableMap>,
    name: &str,
    columns: &[Column],
) -> Result<CopyType, ColumnError> {
    let field = table.and_then(|t| Some((t, t.fields.iter().find(|f| f.column == name)?)));
    let col = columns
        .iter()
        .find(|c| c.name == name)
        .ok_or_else(|| match field {
            Some((t, f)) => ColumnError::Missing {
                name: name.to_string(),
                table: crate::sql::quote_ident(t.spec.name),
                quoted: crate::sql::quote_ident(name),
                ty: column_type_for(f),
            },
            None => ColumnError::MissingKey(name.to_string()),
        })?;
    let ty = CopyType::from_catalog(&col.data_type).ok_or_else(|| ColumnError::Unsupported {
        name: name.to_string(),
        ty: col.data_type.clone(),
    })?;
    let field = field.map(|(_, f)| f);
    if let (None, Some(f)) = (ty.int_range(), field)
        && f.dtype == DataType::Bit
    {
        return Err(ColumnError::DoesNotFit {
            name: name.to_string(),
            field: format!("{} {}", f.kind.name(), f.dtype),
            ty: col.data_type.clone(),
        });
    }
    if let (Some((lo, hi)), Some(f)) = (ty.int_range(), field) {
        let fits = !f.dtype.is_float()
            && !f.is_scaled()
            && f.dtype.int_range().is_some_and(|(a, b)| a >= lo && b <= hi);
        if !fits {
            return Err(ColumnError::DoesNotFit {
                name: name.to_string(),
                field: format!("{}{}", f.dtype, if f.is_scaled() { ", scaled" } else { "" }),
                ty: col.data_type.clone(),
            });
        }
    }
    Ok(ty)
}

/// The column type that holds every value a field can take, for the
/// ALTER TABLE a missing column's message suggests.
fn column_type_for(f: &Field) -> &'static str {
    if f.dtype.is_float() || f.is_scaled() {
        return "double precision";
    }
    let fits = |lo: i128, hi: i128, a: i128, b: i128| a >= lo && b <= hi;
    match f.dtype.int_range() {
        Some((a, b)) if fits(i16::MIN.into(), i16::MAX.into(), a, b) => "smallint",
        Some((a, b)) if fits(i32::MIN.into(), i32::MAX.into(), a, b) => "integer",
        Some((a, b)) if fits(i64::MIN.into(), i64::MAX.into(), a, b) => "bigint",
        _ => "double precision",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ty: &str) -> Column {
        Column {
            name: name.into(),
            data_type: ty.into(),
            nullable: true,
        }
    }

    #[test]
    fn ingest_preflight_refuses_fields_a_column_cannot_hold() {
        let map = RegisterMap::builtin();
        let bank = map.table("bank").unwrap();
        let alarm = bank.fields.iter().find(|f| f.column == "ALARM").unwrap();
        let mut wide = bank.clone();
        wide.fields
            .iter_mut()
            .find(|f| f.column == "ALARM")
            .unwrap()
            .dtype = crate::modbus::value::DataType::U32;
        let integer = [col("ALARM", "integer")];
        let bigint = [col("ALARM", "bigint")];
        assert!(
            column_type(Some(bank), "ALARM", &integer).is_ok(),
            "{:?}",
            alarm.dtype
        );
        let err = column_type(Some(&wide), "ALARM", &integer)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`ALARM` (u32)") && err.contains("integer"),
            "{err}"
        );
        assert!(column_type(Some(&wide), "ALARM", &bigint).is_ok());
        let soc = [col("SOC", "integer")];
        assert!(
            column_type(Some(bank), "SOC", &soc)
                .unwrap_err()
                .to_string()
                .contains("scaled")
        );
        assert!(
            column_type(Some(bank), "SOC", &[])
                .unwrap_err()
                .to_string()
                .contains("no column")
        );
        assert!(column_type(Some(bank), "SOC", &[col("SOC", "text")]).is_err());
    }
}
