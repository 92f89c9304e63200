//! Least privilege: the two roles `essops migrate --create-roles` makes on
//! every server, what each command needs, and the check that turns a missing
//! privilege into a message naming it (before anything is changed).
//!
//! | role | may | for |
//! |---|---|---|
//! | `essops_writer` | CONNECT, TEMP; SELECT, INSERT on the ESS tables; SELECT, INSERT, DELETE on the history (`essops.*`) | ingest, reconcile |
//! | `essops_reader` | CONNECT; SELECT on the ESS tables and the history; INSERT, DELETE on `essops.loss_daily` only | loss, cache warm, status |
//!
//! Both are NOLOGIN group roles: grant them to the login roles essops uses
//! (`GRANT essops_reader TO dashboards;`).

use tokio_postgres::Client;

use crate::db::{DbError, quote_ident};

pub const WRITER: &str = "essops_writer";
pub const READER: &str = "essops_reader";

/// The runtime login `user` (a server's `url` user, when administration has
/// its own `admin_url`) as a member of essops_writer, logging in with
/// `password` (the one its config names): created when missing, else
/// granted the role and given that password. With no password known, a
/// new login has none (set one with `\password`). Safe to repeat.
pub async fn ensure_login(
    client: &Client,
    user: &str,
    password: Option<&str>,
) -> Result<(), tokio_postgres::Error> {
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&user])
        .await?
        .is_some();
    // DDL takes no parameters: the server quotes the names and the password.
    let sql = match (exists, password.is_some()) {
        (false, _) => {
            "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L IN ROLE %I', $1::text, $2::text, $3::text)"
        }
        (true, true) => {
            "SELECT format('GRANT %I TO %I; ALTER ROLE %I LOGIN PASSWORD %L', $3::text, $1::text, $1::text, $2::text)"
        }
        (true, false) => "SELECT format('GRANT %I TO %I', $3::text, $1::text, $2::text)",
    };
    let ddl: String = client
        .query_one(sql, &[&user, &password, &WRITER])
        .await?
        .get(0);
    match client.batch_execute(&ddl).await {
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => Ok(()),
        other => other,
    }
}

/// Creates both roles if missing (cluster-wide) and grants them on this
/// database and its tables, present and future. Safe to repeat.
pub async fn create_roles(client: &Client, database: &str) -> Result<(), tokio_postgres::Error> {
    for role in [WRITER, READER] {
        // DO blocks cannot take parameters; the names are constants, quoted anyway.
        let exists = client
            .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
            .await?
            .is_some();
        // Another database's grant may have made it a moment ago.
        if !exists
            && let Err(e) = client
                .batch_execute(&format!("CREATE ROLE {} NOLOGIN", quote_ident(role)))
                .await
            && e.code() != Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT)
        {
            return Err(e);
        }
    }
    let (db, w, r) = (
        quote_ident(database),
        quote_ident(WRITER),
        quote_ident(READER),
    );
    client
        .batch_execute(&format!(
            "GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {w};
             GRANT CONNECT ON DATABASE {db} TO {r};
             GRANT USAGE ON SCHEMA public TO {w}, {r};
             GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO {w};
             GRANT SELECT ON ALL TABLES IN SCHEMA public TO {r};
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT ON TABLES TO {w};
             ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {r};
             GRANT DELETE ON TABLE {rollups} TO {w};
             {history}",
            rollups = rollup_tables().join(", "),
            history = crate::history::grants_sql(&w, &r),
        ))
        .await
}

/// Every rollup table (the KPI rollups too), qualified: the writer
/// replaces their buckets.
fn rollup_tables() -> Vec<String> {
    crate::schema::TABLES
        .iter()
        .flat_map(|spec| {
            crate::schema::ROLLUPS
                .iter()
                .map(move |(suffix, _)| crate::schema::rollup_name(spec, suffix))
                .chain(crate::rollup::kpi::tables_of(spec))
        })
        .map(|table| format!("public.{}", quote_ident(&table)))
        .collect()
}

/// A privilege the connected role lacks, or the check could not run.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "server `{server}`: role `{role}` lacks {lacking}, which essops {command} needs. Run `{grant}`, or make it a member of the role that holds it: `GRANT {needs} TO {role}` (essops migrate --create-roles makes {needs})"
    )]
    Lacks {
        server: String,
        role: String,
        lacking: String,
        command: String,
        /// The exact statement that grants what is lacking.
        grant: String,
        needs: &'static str,
    },
    #[error("{0}")]
    Check(String),
}

/// Checks that the connected role holds `privileges` on `table` (and TEMP on
/// the database when `temp`); the error names the first one missing.
pub async fn require(
    client: &Client,
    server: &str,
    database: &str,
    command: &str,
    table: &str,
    privileges: &[&str],
    temp: bool,
) -> Result<(), PrivilegeError> {
    let row = client
        .query_one(
            "SELECT current_user::text,
                    ARRAY(SELECT p FROM unnest($2::text[]) p WHERE NOT has_table_privilege(format('public.%I', $1::text), p)),
                    has_database_privilege(current_database(), 'TEMPORARY')",
            &[&table, &privileges.iter().map(|p| p.to_string()).collect::<Vec<_>>()],
        )
        .await
        .map_err(|e| {
            PrivilegeError::Check(
                DbError::query(server, database, "checking privileges", &e).to_string(),
            )
        })?;
    let (role, missing, has_temp): (String, Vec<String>, bool) =
        (row.get(0), row.get(1), row.get(2));
    // Of essops's roles, only the writer has TEMPORARY (staging tables) and INSERT.
    let to = crate::sql::quote_ident(&role);
    let (lacking, grant, needs) = match (missing.first(), temp && !has_temp) {
        (Some(p), _) => (
            format!("{p} on table `{table}`"),
            format!(
                "GRANT {p} ON TABLE public.{} TO {to}",
                crate::sql::quote_ident(table)
            ),
            if p == "SELECT" { READER } else { WRITER },
        ),
        (None, true) => (
            format!("TEMPORARY on database `{database}`"),
            format!(
                "GRANT TEMPORARY ON DATABASE {} TO {to}",
                crate::sql::quote_ident(database)
            ),
            WRITER,
        ),
        (None, false) => return Ok(()),
    };
    let needs = match privileges.contains(&"INSERT") {
        true => WRITER,
        false => needs,
    };
    Err(PrivilegeError::Lacks {
        server: server.to_string(),
        role,
        lacking,
        command: command.to_string(),
        grant,
        needs,
    })
}
