//! `essops migrate`: create or upgrade the schema of every site database on
//! every server, with sqlx's migrator over `migrations/`.
//!
//! Each (server, site) pair is one target, migrated on its own: a server that
//! is down is reported by name and the others are still migrated. sqlx takes
//! an advisory lock per database, so two concurrent runs cannot interleave.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use clap::Args;
use serde::Serialize;
use sqlx::Connection;
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migrate, Migration, MigrationType, Migrator};

use crate::config::Config;
use crate::context::Context;
use crate::db::{self, DbError, Target};
use crate::exit::{Outcome, code as exit};
use crate::output::Report;
use crate::tasks;

/// The files of `migrations/`, built into the binary. A unit test checks
/// that this list and the folder agree.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "ess tables",
        include_str!("../migrations/0001_ess_tables.sql"),
    ),
    (2, "history", include_str!("../migrations/0002_history.sql")),
    (3, "rollups", include_str!("../migrations/0003_rollups.sql")),
    (
        4,
        "rollup rerolls",
        include_str!("../migrations/0004_rollup_rerolls.sql"),
    ),
    (
        5,
        "reconcile direction",
        include_str!("../migrations/0005_reconcile_direction.sql"),
    ),
    (6, "kpi", include_str!("../migrations/0006_kpi.sql")),
    (
        7,
        "server resumed",
        include_str!("../migrations/0007_server_resumed.sql"),
    ),
    (
        8,
        "kpi rollups",
        include_str!("../migrations/0008_kpi_rollups.sql"),
    ),
];

/// The newest schema version this binary knows.
pub fn latest_version() -> i64 {
    MIGRATIONS.iter().map(|(v, _, _)| *v).max().unwrap_or(0)
}

/// sqlx's bookkeeping table in each site database.
const MIGRATIONS_TABLE: &str = "_sqlx_migrations";

/// Create or upgrade the ESS tables (TimescaleDB hypertables with unique natural keys)
/// and the run history (schema essops) in every site database on every server.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub select: crate::select::Selection,
    /// Create a site database that does not exist yet (needs CREATEDB).
    #[arg(long)]
    pub create_database: bool,
    /// Show what would be migrated and stop.
    #[arg(long)]
    pub dry_run: bool,
    /// Also create the essops_writer and essops_reader roles on every server
    /// and grant them on every site database (see docs/OPERATIONS.md, "Security").
    #[arg(long)]
    pub create_roles: bool,
    /// Community edition of TimescaleDB only: also add native compression
    /// (after 7 days) and, with [retention] raw_days, a retention policy on
    /// the ESS tables. Native policies drop without essops's checks; see
    /// docs/OPERATIONS.md, "Keeping data". Refused on the Apache edition.
    #[arg(long)]
    pub timescale_policies: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(
        "server `{server}`: database `{database}` does not exist; run `essops migrate --create-database` or create it"
    )]
    MissingDatabase { server: String, database: String },
    #[error("server `{server}`, database `{database}`: {reason}")]
    Sqlx {
        server: String,
        database: String,
        reason: String,
    },
}

impl MigrateError {
    pub fn exit_code(&self) -> u8 {
        match self {
            MigrateError::Db(e) => e.exit_code(),
            MigrateError::MissingDatabase { .. } | MigrateError::Sqlx { .. } => exit::UNAVAILABLE,
        }
    }
}

crate::into_error!(MigrateError);

/// What to do when a site database is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingDatabase {
    Create,
    Fail,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrateTarget {
    pub server: String,
    pub site: String,
    pub database: String,
}

#[derive(Debug)]
pub struct MigratePlan {
    /// --dry-run: report the targets, touch nothing.
    pub dry_run: bool,
    pub targets: Vec<MigrateTarget>,
    pub missing_database: MissingDatabase,
    pub create_roles: bool,
    pub timescale_policies: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MigrateStatus {
    /// --dry-run: would be migrated.
    Planned,
    Migrated,
    UpToDate,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrateRow {
    pub server: String,
    pub site: String,
    pub database: String,
    pub status: MigrateStatus,
    pub database_created: bool,
    /// Versions applied by this run.
    pub applied: Vec<i64>,
    /// essops_writer/essops_reader were (re)granted here (--create-roles).
    pub roles: bool,
    pub error: Option<String>,
    pub duration_ms: u64,
}

pub type MigrateReport = crate::output::Rows<MigrateRow>;

pub fn plan(args: &MigrateArgs, ctx: &Context) -> crate::error::Result<MigratePlan> {
    let targets = ctx
        .config
        .site_servers(&args.select.sites, &args.select.servers)?
        .into_iter()
        .map(|(site, server)| MigrateTarget {
            server: server.name.clone(),
            site: site.name.clone(),
            database: site.database.clone(),
        })
        .collect();
    let missing_database = match args.create_database {
        true => MissingDatabase::Create,
        false => MissingDatabase::Fail,
    };
    Ok(MigratePlan {
        dry_run: args.dry_run,
        create_roles: args.create_roles,
        timescale_policies: args.timescale_policies,
        targets,
        missing_database,
    })
}

/// The report a `--dry-run` prints: the plan, nothing touched.
pub fn dry_run(plan: &MigratePlan) -> MigrateReport {
    let rows = plan
        .targets
        .iter()
        .map(|t| row(t, MigrateStatus::Planned, Instant::now()))
        .collect();
    MigrateReport { rows }
}

pub async fn execute(plan: MigratePlan, ctx: &Context) -> crate::error::Result<MigrateReport> {
    // A password that cannot be found is a config error for the whole run,
    // not one failed target among others.
    for t in &plan.targets {
        let server = ctx.config.server(&t.server)?;
        db::password(&ctx.config, server, &t.database)?;
    }
    // Targets run concurrently: a down server costs one connect timeout, not one per site.
    let missing = plan.missing_database;
    let rows = tasks::run_in_order(
        plan.targets,
        |target| {
            let config = Arc::clone(&ctx.config);
            async move { migrate_one(&config, target, missing).await }
        },
        || {},
    )
    .await;
    let mut rows = rows;
    if plan.create_roles {
        grant_roles(&ctx.config, &mut rows).await;
    }
    if plan.timescale_policies {
        add_policies(&ctx.config, &mut rows).await;
    }
    Ok(MigrateReport { rows })
}

/// Creates and grants the roles on every database that migrated, one at a
/// time: roles are cluster-wide, and concurrent GRANTs on one catalog row collide.
async fn grant_roles(config: &Config, rows: &mut [MigrateRow]) {
    on_each_migrated(config, rows, async |client, row| {
        let failed = |what: &str, e: &tokio_postgres::Error| {
            DbError::query(&row.server, &row.database, what, e)
        };
        crate::privilege::create_roles(client, &row.database)
            .await
            .map_err(|e| failed("creating roles", &e))?;
        // With its own administration login, the server's `url` user is the
        // runtime login: made a member of essops_writer (created if missing).
        let server = config.server(&row.server)?;
        if let Some(admin) = &server.admin
            && admin.user != server.user
        {
            let password = db::password(config, server, &row.database)?;
            crate::privilege::ensure_login(client, &server.user, password.as_deref())
                .await
                .map_err(|e| failed("creating the runtime login", &e))?;
        }
        Ok(())
    })
    .await;
    for row in rows.iter_mut().filter(|r| r.error.is_none()) {
        row.roles = true;
    }
}

/// Native compression and retention policies on every database that
/// migrated, where the server runs TimescaleDB's Community edition.
async fn add_policies(config: &Config, rows: &mut [MigrateRow]) {
    let raw_days = config.retention.raw_days;
    on_each_migrated(config, rows, async |client, row| {
        policies(client, &row.server, raw_days).await
    })
    .await;
}

/// Why a step after the migration (roles, policies) failed on a database.
#[derive(Debug, thiserror::Error)]
enum StepError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{}", db::describe(.0))]
    Query(#[from] tokio_postgres::Error),
    #[error(
        "server `{server}` runs the {edition} edition of TimescaleDB (timescaledb.license = {edition}), which has no compression or retention policies; essops rollup and essops retention do that job there"
    )]
    NoPolicies { server: String, edition: String },
}

/// Runs `step` on every database that migrated, one at a time; a step that
/// fails marks its row failed with the reason.
async fn on_each_migrated(
    config: &Config,
    rows: &mut [MigrateRow],
    step: impl AsyncFn(&tokio_postgres::Client, &MigrateRow) -> Result<(), StepError>,
) {
    for row in rows.iter_mut().filter(|r| r.error.is_none()) {
        let Ok(server) = config.server(&row.server) else {
            continue;
        };
        let admin = server.for_admin();
        let target = Target {
            server: &admin,
            database: &row.database,
        };
        let result = match db::connect(config, target).await {
            Ok(client) => step(&client, row).await,
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            row.status = MigrateStatus::Failed;
            row.error = Some(e.to_string());
        }
    }
}

async fn policies(
    client: &tokio_postgres::Client,
    server: &str,
    raw_days: Option<u32>,
) -> Result<(), StepError> {
    let edition = crate::catalog::timescale_edition(client).await?;
    if edition != "timescale" {
        return Err(StepError::NoPolicies {
            server: server.to_string(),
            edition,
        });
    }
    for spec in crate::schema::TABLES {
        // DDL takes no parameters: the server quotes the table (%I) and the
        // option's value (%L, the device columns as a quoted list) itself.
        let ddl: String = client
            .query_one(
                "SELECT CASE WHEN $2 = '' THEN format('ALTER TABLE %I SET (timescaledb.compress)', $1::text)
                             ELSE format('ALTER TABLE %I SET (timescaledb.compress, timescaledb.compress_segmentby = %L)', $1::text, $2::text) END",
                &[&spec.name, &crate::sql::quote_list(spec.device_columns)],
            )
            .await?
            .get(0);
        client.execute(&ddl, &[]).await?;
        client
            .execute(
                "SELECT add_compression_policy($1::text::regclass, INTERVAL '7 days', if_not_exists => true)",
                &[&spec.name],
            )
            .await?;
        if let Some(days) = raw_days {
            client
                .execute(
                    "SELECT add_retention_policy($1::text::regclass, make_interval(days => $2), if_not_exists => true)",
                    &[&spec.name, &(days as i32)],
                )
                .await?;
        }
    }
    Ok(())
}

fn row(t: &MigrateTarget, status: MigrateStatus, started: Instant) -> MigrateRow {
    MigrateRow {
        server: t.server.clone(),
        site: t.site.clone(),
        database: t.database.clone(),
        status,
        database_created: false,
        applied: Vec::new(),
        roles: false,
        error: None,
        duration_ms: started.elapsed().as_millis() as u64,
    }
}

async fn migrate_one(config: &Config, t: MigrateTarget, missing: MissingDatabase) -> MigrateRow {
    let started = Instant::now();
    let result = async {
        let admin = config
            .server(&t.server)
            .expect("planned servers exist")
            .for_admin();
        let target = Target {
            server: &admin,
            database: &t.database,
        };
        let created = match missing {
            MissingDatabase::Create => ensure_database(config, target).await?,
            MissingDatabase::Fail => false,
        };
        let applied = apply_migrations(config, target).await?;
        Ok::<_, MigrateError>((created, applied))
    }
    .await;
    let mut r = row(&t, MigrateStatus::Failed, started);
    match result {
        Ok((created, applied)) => {
            r.status = if applied.is_empty() {
                MigrateStatus::UpToDate
            } else {
                MigrateStatus::Migrated
            };
            r.database_created = created;
            r.applied = applied;
            tracing::info!(site = %t.site, server = %t.server, applied = ?r.applied, created, "migrated");
        }
        Err(e) => {
            tracing::error!(site = %t.site, server = %t.server, error = %e, "migration failed");
            r.error = Some(e.to_string());
        }
    }
    r.duration_ms = started.elapsed().as_millis() as u64;
    r
}

/// Creates the site database when it is missing; true when it did.
async fn ensure_database(config: &Config, target: Target<'_>) -> Result<bool, MigrateError> {
    let maintenance = Target {
        server: target.server,
        database: "postgres",
    };
    let client = db::connect(config, maintenance).await?;
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&target.database],
        )
        .await
        .map_err(|e| {
            DbError::query(
                &target.server.name,
                "postgres",
                "looking up the site database",
                &e,
            )
        })?
        .is_some();
    if exists {
        return Ok(false);
    }
    let sql = format!("CREATE DATABASE {}", db::quote_ident(target.database));
    match client.batch_execute(&sql).await {
        Ok(()) => Ok(true),
        // Another migrate created it between our check and our CREATE: fine.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_DATABASE) => {
            Ok(false)
        }
        Err(e) => Err(DbError::query(
            &target.server.name,
            target.database,
            "creating the database",
            &e,
        )
        .into()),
    }
}

fn migrator() -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|(version, description, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*description),
                MigrationType::Simple,
                sql.into_sql_str(),
                false,
            )
        })
        .collect();
    Migrator::with_migrations(migrations)
}

/// Runs the pending migrations; returns the versions it applied.
async fn apply_migrations(config: &Config, target: Target<'_>) -> Result<Vec<i64>, MigrateError> {
    let sqlx_err = |e: &dyn std::fmt::Display| MigrateError::Sqlx {
        server: target.server.name.clone(),
        database: target.database.to_string(),
        reason: e.to_string(),
    };
    let opts = db::sqlx_options(config, target)?;
    let mut conn =
        match tokio::time::timeout(db::CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(&opts))
            .await
        {
            Err(_) => return Err(unreachable(target, "connection timed out")),
            Ok(Err(sqlx::Error::Database(e)))
                if e.code().as_deref() == Some(db::INVALID_CATALOG_NAME) =>
            {
                return Err(MigrateError::MissingDatabase {
                    server: target.server.name.clone(),
                    database: target.database.to_string(),
                });
            }
            Ok(Err(e)) => {
                return Err(match (db::tls_failure(target, &e), &e) {
                    (Some(tls), _) => MigrateError::Db(tls),
                    (
                        None,
                        sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut,
                    ) => unreachable(target, &e.to_string()),
                    (None, _) => sqlx_err(&e),
                });
            }
            Ok(Ok(c)) => c,
        };
    let mut migrator = migrator();
    // Take sqlx's advisory lock ourselves so that what we report as applied
    // is exactly what this run applied, even with a concurrent migrate.
    conn.lock().await.map_err(|e| sqlx_err(&e))?;
    migrator.set_locking(false);
    let result = async {
        conn.ensure_migrations_table(MIGRATIONS_TABLE).await?;
        let before: Vec<i64> = conn
            .list_applied_migrations(MIGRATIONS_TABLE)
            .await?
            .into_iter()
            .map(|m| m.version)
            .collect();
        // run_direct rather than run: `run` takes an `Acquire` whose lifetime
        // bound makes the future non-Send inside a spawned task (sqlx's own note).
        migrator.run_direct(None, &mut conn, false).await?;
        Ok::<_, sqlx::migrate::MigrateError>(
            migrator
                .iter()
                .map(|m| m.version)
                .filter(|v| !before.contains(v))
                .collect(),
        )
    }
    .await;
    let _ = conn.unlock().await;
    let applied = result.map_err(|e| sqlx_err(&e))?;
    let _ = conn.close().await;
    Ok(applied)
}

fn unreachable(target: Target<'_>, reason: &str) -> MigrateError {
    MigrateError::Db(DbError::Unreachable {
        server: target.server.name.clone(),
        addr: target.addr(),
        reason: reason.to_string(),
    })
}

impl Report for MigrateReport {
    type Row = MigrateRow;
    const KIND: &'static str = "database";
    const HEADER: &'static str = "SERVER|SITE|DATABASE|STATUS|APPLIED";

    fn cells(r: &MigrateRow) -> Vec<String> {
        let status = match r.status {
            MigrateStatus::Planned => "planned",
            MigrateStatus::Migrated if r.database_created => "created+migrated",
            MigrateStatus::Migrated => "migrated",
            MigrateStatus::UpToDate => "up to date",
            MigrateStatus::Failed => "FAILED",
        };
        let applied = r
            .applied
            .iter()
            .map(|v| format!("{v:04}"))
            .collect::<Vec<_>>()
            .join(",");
        vec![
            r.server.clone(),
            r.site.clone(),
            r.database.clone(),
            status.into(),
            applied,
        ]
    }

    fn problem(r: &MigrateRow) -> Option<String> {
        r.error.clone()
    }

    fn summary(&self) -> String {
        let count = |s: MigrateStatus| self.rows.iter().filter(|r| r.status == s).count();
        let (planned, migrated, current, failed) = (
            count(MigrateStatus::Planned),
            count(MigrateStatus::Migrated),
            count(MigrateStatus::UpToDate),
            count(MigrateStatus::Failed),
        );
        if planned > 0 {
            return format!(
                "dry run: {planned} database(s) would be checked and migrated; nothing was changed"
            );
        }
        if migrated == 0 && failed == 0 {
            return format!("no change: all {current} database(s) are up to date");
        }
        format!("{migrated} migrated, {current} already up to date, {failed} failed")
    }

    fn outcome(&self) -> Outcome {
        match self.rows.iter().any(|r| r.status == MigrateStatus::Failed) {
            true => Outcome::Partial,
            false => Outcome::Clean,
        }
    }
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

impl crate::command::Plan for MigratePlan {}

impl crate::command::Command for MigrateArgs {
    type Plan = MigratePlan;
    type Report = MigrateReport;
    async fn plan(self, ctx: &Context) -> crate::error::Result<MigratePlan> {
        plan(&self, ctx)
    }
    async fn execute(plan: MigratePlan, ctx: &Context) -> crate::error::Result<MigrateReport> {
        match plan.dry_run {
            true => Ok(dry_run(&plan)),
            false => execute(plan, ctx).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrate_embedded_list_matches_the_folder() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let listed: Vec<String> = MIGRATIONS
            .iter()
            .map(|(v, d, _)| format!("{v:04}_{}.sql", d.replace(' ', "_")))
            .collect();
        assert_eq!(files, listed);
        let versions: Vec<i64> = migrator().iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=MIGRATIONS.len() as i64).collect::<Vec<_>>());
    }
}
