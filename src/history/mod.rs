//! Run history in the `essops` schema of every site database (migration
//! 0002): loss per device and local day, reconcile runs, ingest's minutes and
//! events. Each command writes its own rows, to the server they describe;
//! `status` reads them back (`read`).
//!
//! Writing history never changes a command's own result: a failed write is a
//! warning that says what to run (migrate, or the GRANT), never lost data.

pub mod kpi;
pub mod read;

use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::Client;

use crate::config::Config;
use crate::db::{self, DbError, Target};
use crate::sql::quote_ident;

pub const SCHEMA: &str = "essops";
pub const LOSS_TABLE: &str = "loss_daily";
const RECONCILE_TABLE: &str = "reconcile_runs";
const MINUTES_TABLE: &str = "ingest_minutes";
const EVENTS_TABLE: &str = "ingest_events";
const DROPS_TABLE: &str = "retention_drops";
/// Windows `essops rollup` rolled again below its mark, for the cache to
/// rebuild (migration 0004).
pub const REROLLS_TABLE: &str = "rollup_rerolls";

/// `"essops"."table"`.
pub fn table(name: &str) -> String {
    format!("{}.{}", quote_ident(SCHEMA), quote_ident(name))
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(
        "server `{server}`, database `{database}`: the history tables are missing; run `essops migrate` (schema version 2 adds them)"
    )]
    Missing { server: String, database: String },
    #[error(
        "server `{server}`: role `{role}` may not write {what}; run `GRANT {privileges} ON TABLE {table} TO {role_quoted}` (or `essops migrate --create-roles`, whose roles hold it)"
    )]
    Privilege {
        server: String,
        role: String,
        role_quoted: String,
        what: &'static str,
        privileges: &'static str,
        table: String,
    },
}

/// What a failed history statement means to an operator.
async fn explain(
    client: &Client,
    target: Target<'_>,
    history_table: &str,
    privileges: &'static str,
    e: &tokio_postgres::Error,
) -> HistoryError {
    let (server, database) = (target.server.name.as_str(), target.database);
    match e.code().map(|c| c.code()) {
        Some("3F000" | "42P01") => HistoryError::Missing {
            server: server.into(),
            database: database.into(),
        },
        Some("42501") => {
            let role: String = match client.query_one("SELECT current_user::text", &[]).await {
                Ok(r) => r.get(0),
                Err(_) => "(this role)".into(),
            };
            HistoryError::Privilege {
                server: server.into(),
                role_quoted: quote_ident(&role),
                role,
                what: "run history",
                privileges,
                table: table(history_table),
            }
        }
        _ => DbError::query(
            server,
            database,
            format!("writing {}", table(history_table)),
            e,
        )
        .into(),
    }
}

/// A history write's result, its error in an operator's words.
async fn written<T>(
    client: &Client,
    target: Target<'_>,
    history_table: &str,
    privileges: &'static str,
    result: Result<T, tokio_postgres::Error>,
) -> Result<(), HistoryError> {
    match result {
        Ok(_) => Ok(()),
        Err(e) => Err(explain(client, target, history_table, privileges, &e).await),
    }
}

/// Connects to the server's primary (never a read replica: history is written).
pub async fn connect(config: &Config, target: Target<'_>) -> Result<Client, HistoryError> {
    Ok(db::connect(config, target).await?)
}

// -------------------------------------------------------------------- loss

/// One device's loss over one whole local day.
#[derive(Debug, Clone, PartialEq)]
pub struct LossDay {
    pub table: String,
    pub device: String,
    pub device_ids: Vec<i16>,
    pub day: NaiveDate,
    pub configured: bool,
    pub expected: i64,
    pub observed: i64,
    pub gaps: i32,
    pub longest_gap_s: i64,
    pub loss_pct: f64,
    pub grade: &'static str,
}

/// Replaces the loss history of `site` on this server for the measured
/// tables and days with `rows`, in one transaction: a re-run never adds a
/// second set.
pub async fn record_loss(
    client: &mut Client,
    target: Target<'_>,
    site: &str,
    tables: &[String],
    days: &[NaiveDate],
    rows: &[LossDay],
) -> Result<(), HistoryError> {
    let t = table(LOSS_TABLE);
    let delete = format!(
        "DELETE FROM {t} WHERE site = $1 AND server = $2 AND table_name = ANY($3) AND day = ANY($4)"
    );
    let insert = format!(
        "INSERT INTO {t} (site, server, table_name, device, device_ids, day, configured, expected, observed, missing, gaps, longest_gap_s, loss_pct, grade)
         SELECT $1, $2, u.tn, u.dev, string_to_array(u.ids, ',')::int2[], u.day, u.conf, u.exp, u.obs, u.exp - u.obs, u.gaps, u.longest, u.pct, u.grade
           FROM unnest($3::text[], $4::text[], $5::text[], $6::date[], $7::bool[], $8::int8[], $9::int8[], $10::int4[], $11::int8[], $12::float8[], $13::text[])
                AS u(tn, dev, ids, day, conf, exp, obs, gaps, longest, pct, grade)"
    );
    let server = target.server.name.as_str();
    let col = |f: fn(&LossDay) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let ids = col(|r| {
        let ids: Vec<String> = r.device_ids.iter().map(i16::to_string).collect();
        ids.join(",")
    });
    let result = async {
        let tx = client.transaction().await?;
        tx.execute(&delete, &[&site, &server, &tables, &days])
            .await?;
        tx.execute(
            &insert,
            &[
                &site,
                &server,
                &col(|r| r.table.clone()),
                &col(|r| r.device.clone()),
                &ids,
                &rows.iter().map(|r| r.day).collect::<Vec<_>>(),
                &rows.iter().map(|r| r.configured).collect::<Vec<_>>(),
                &rows.iter().map(|r| r.expected).collect::<Vec<_>>(),
                &rows.iter().map(|r| r.observed).collect::<Vec<_>>(),
                &rows.iter().map(|r| r.gaps).collect::<Vec<_>>(),
                &rows.iter().map(|r| r.longest_gap_s).collect::<Vec<_>>(),
                &rows.iter().map(|r| r.loss_pct).collect::<Vec<_>>(),
                &col(|r| r.grade.to_string()),
            ],
        )
        .await?;
        tx.commit().await
    }
    .await;
    written(client, target, LOSS_TABLE, "INSERT, DELETE", result).await
}

// --------------------------------------------------------------- reconcile

/// One reconciled table of one run.
#[derive(Debug, Clone)]
pub struct ReconcileRun {
    pub site: String,
    pub table: String,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub server_a: String,
    pub server_b: String,
    /// `both`, or `to-SERVER`: which server(s) it filled.
    pub direction: String,
    pub dry_run: bool,
    pub compared: i64,
    pub differing: i64,
    pub copied_to_a: i64,
    pub copied_to_b: i64,
    pub seconds: f64,
    pub error: Option<String>,
}

pub async fn record_reconcile(
    client: &Client,
    target: Target<'_>,
    run: &ReconcileRun,
) -> Result<(), HistoryError> {
    let sql = format!(
        "INSERT INTO {} (site, table_name, window_start, window_end, server_a, server_b, dry_run, compared, differing, copied_to_a, copied_to_b, seconds, outcome, error, direction)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
        table(RECONCILE_TABLE)
    );
    let outcome = if run.error.is_some() { "failed" } else { "ok" };
    let result = client
        .execute(
            &sql,
            &[
                &run.site,
                &run.table,
                &run.window_start,
                &run.window_end,
                &run.server_a,
                &run.server_b,
                &run.dry_run,
                &run.compared,
                &run.differing,
                &run.copied_to_a,
                &run.copied_to_b,
                &run.seconds,
                &outcome,
                &run.error,
                &run.direction,
            ],
        )
        .await;
    written(client, target, RECONCILE_TABLE, "INSERT", result).await
}

// --------------------------------------------------------------- retention

/// Records, in the caller's transaction (the one that drops the chunk), that
/// `[start, end)` of `table_name` held `rows` rows when it was dropped here.
pub async fn record_drop(
    tx: &impl tokio_postgres::GenericClient,
    table_name: &str,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
    rows: i64,
) -> Result<(), tokio_postgres::Error> {
    let sql = format!(
        "INSERT INTO {} (table_name, range_start, range_end, rows) VALUES ($1, $2, $3, $4)
         ON CONFLICT (table_name, range_start) DO UPDATE SET range_end = $3, rows = $4, at = now()",
        table(DROPS_TABLE)
    );
    tx.execute(&sql, &[&table_name, &start, &end, &rows])
        .await?;
    Ok(())
}

// ------------------------------------------------------------------ ingest

/// One minute of one ingest, as seen by one server.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestMinute {
    pub site: String,
    pub devices: String,
    pub host: String,
    pub server: String,
    pub minute: DateTime<Utc>,
    pub polls_ok: i64,
    pub polls_failed: i64,
    pub failed_by_reason: serde_json::Value,
    pub rows_written: i64,
    pub rows_spooled: i64,
    pub rows_replayed: i64,
    pub spool_rows: i64,
    pub spool_bytes: i64,
    pub breakers_open: i32,
}

pub async fn record_minute(
    client: &Client,
    target: Target<'_>,
    m: &IngestMinute,
) -> Result<(), HistoryError> {
    let sql = format!(
        "INSERT INTO {} (site, devices, host, server, minute, polls_ok, polls_failed, failed_by_reason, rows_written, rows_spooled, rows_replayed, spool_rows, spool_bytes, breakers_open)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT DO NOTHING",
        table(MINUTES_TABLE)
    );
    let result = client
        .execute(
            &sql,
            &[
                &m.site,
                &m.devices,
                &m.host,
                &m.server,
                &m.minute,
                &m.polls_ok,
                &m.polls_failed,
                &m.failed_by_reason,
                &m.rows_written,
                &m.rows_spooled,
                &m.rows_replayed,
                &m.spool_rows,
                &m.spool_bytes,
                &m.breakers_open,
            ],
        )
        .await;
    written(client, target, MINUTES_TABLE, "INSERT", result).await
}

/// Something that changed while ingest ran.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestEvent {
    pub site: String,
    pub devices: String,
    pub host: String,
    pub server: Option<String>,
    pub at: DateTime<Utc>,
    pub event: &'static str,
    pub device: Option<String>,
    pub detail: String,
}

pub async fn record_events(
    client: &Client,
    target: Target<'_>,
    events: &[IngestEvent],
) -> Result<(), HistoryError> {
    if events.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {} (site, devices, host, server, at, event, device, detail)
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::text[], $7::text[], $8::text[])",
        table(EVENTS_TABLE)
    );
    let col = |f: fn(&IngestEvent) -> String| events.iter().map(f).collect::<Vec<_>>();
    let opt = |f: fn(&IngestEvent) -> Option<String>| events.iter().map(f).collect::<Vec<_>>();
    let result = client
        .execute(
            &sql,
            &[
                &col(|e| e.site.clone()),
                &col(|e| e.devices.clone()),
                &col(|e| e.host.clone()),
                &opt(|e| e.server.clone()),
                &events.iter().map(|e| e.at).collect::<Vec<_>>(),
                &col(|e| e.event.to_string()),
                &opt(|e| e.device.clone()),
                &col(|e| e.detail.clone()),
            ],
        )
        .await;
    written(client, target, EVENTS_TABLE, "INSERT", result).await
}

// ------------------------------------------------------------------- prune

/// Deletes history older than `keep_days` days from every history table;
/// returns the rows deleted.
pub async fn prune(
    client: &Client,
    target: Target<'_>,
    keep_days: u32,
) -> Result<u64, HistoryError> {
    let mut deleted = 0;
    for (name, column, is_date) in [
        (LOSS_TABLE, "day", true),
        (RECONCILE_TABLE, "at", false),
        (MINUTES_TABLE, "minute", false),
        (EVENTS_TABLE, "at", false),
        (REROLLS_TABLE, "at", false),
        (kpi::KPI_TABLE, "day", true),
        (kpi::INTERVALS_TABLE, "day", true),
    ] {
        let cutoff = if is_date {
            "current_date - $1::int4"
        } else {
            "now() - make_interval(days => $1::int4)"
        };
        let sql = format!(
            "DELETE FROM {} WHERE {} < {cutoff}",
            table(name),
            quote_ident(column)
        );
        let result = client.execute(&sql, &[&(keep_days as i32)]).await;
        if let Ok(n) = result {
            deleted += n;
        }
        written(client, target, name, "DELETE", result).await?;
    }
    Ok(deleted)
}

/// The grants of the history on this database: the writer (`w`) writes all
/// of it, the reader (`r`) reads it and replaces loss and KPI days (`loss`
/// and `kpi` only read the ESS tables). Role names quoted.
pub fn grants_sql(w: &str, r: &str) -> String {
    let h = quote_ident(SCHEMA);
    let replaced = [LOSS_TABLE, kpi::KPI_TABLE, kpi::INTERVALS_TABLE]
        .map(table)
        .join(", ");
    format!(
        "GRANT USAGE ON SCHEMA {h} TO {w}, {r};
         GRANT SELECT, INSERT, DELETE ON ALL TABLES IN SCHEMA {h} TO {w};
         GRANT SELECT ON ALL TABLES IN SCHEMA {h} TO {r};
         GRANT INSERT, DELETE ON TABLE {replaced} TO {r};"
    )
}

/// What each command writes to the history: (table, privileges).
const WRITES: [(&str, &str); 6] = [
    (LOSS_TABLE, "INSERT, DELETE"),
    (kpi::KPI_TABLE, "INSERT, DELETE"),
    (kpi::INTERVALS_TABLE, "INSERT, DELETE"),
    (RECONCILE_TABLE, "INSERT"),
    (MINUTES_TABLE, "INSERT"),
    (EVENTS_TABLE, "INSERT"),
];

/// The GRANTs the connected role would need to write every history table
/// (empty: it may); an error when the history tables are missing.
pub async fn missing_grants(client: &Client) -> Result<Vec<String>, tokio_postgres::Error> {
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await?
        .get(0);
    let mut out = Vec::new();
    for (name, privileges) in WRITES {
        let t = table(name);
        let lacking: Vec<&str> = {
            let mut v = Vec::new();
            for p in privileges.split(", ") {
                let has: bool = client
                    .query_one("SELECT has_table_privilege($1::text, $2::text)", &[&t, &p])
                    .await?
                    .get(0);
                if !has {
                    v.push(p);
                }
            }
            v
        };
        if !lacking.is_empty() {
            out.push(format!(
                "GRANT {} ON TABLE {t} TO {}",
                lacking.join(", "),
                quote_ident(&role)
            ));
        }
    }
    Ok(out)
}

/// Logs a history write that failed; the command's own result stands.
pub fn warn_unrecorded(what: &str, e: &HistoryError) {
    tracing::warn!("{what} not recorded in the history: {e}");
}
