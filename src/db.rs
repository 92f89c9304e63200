//! Connections to the configured PostgreSQL/TimescaleDB servers, password
//! lookup, and the one identifier-quoting helper.
//!
//! Every SQL identifier that essops writes goes through [`quote_ident`]; every
//! value is a bound parameter. Data moves over tokio-postgres (connected
//! here); sqlx is used only by `migrate`, with options built here so both
//! drivers see the same server, user and password.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, PasswordSource, Server, SslMode};
use crate::exit::code as exit;

static APPLICATION_NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Names this process's sessions `essops COMMAND HOST:PID` (in
/// `pg_stat_activity`, and in a lock refusal on another host). Set once.
pub fn set_application_name(command: &str) {
    let mut name = format!("essops {command} {}:{}", hostname(), std::process::id());
    // PostgreSQL keeps 63 bytes.
    while name.len() > 63 {
        name.pop();
    }
    let _ = APPLICATION_NAME.set(name);
}

/// This machine's host name (history rows and lock holders name it).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

fn application_name() -> &'static str {
    APPLICATION_NAME.get().map_or("essops", String::as_str)
}

/// A device id a table holds that does not fit essops's smallint ids.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a device id {0} is outside -32768..=32767 (essops keeps device ids as smallint); fix the row or the id column"
)]
pub struct IdOutOfRange(pub i64);

/// The device of `row`'s first `n` columns (read as int8): `None` when one
/// is NULL (the row cannot be keyed to a device), an error when one does not
/// fit a smallint. Never wraps.
pub fn device_id(
    row: &tokio_postgres::Row,
    n: usize,
) -> Result<Option<crate::schema::DeviceId>, IdOutOfRange> {
    let mut id = Vec::with_capacity(n);
    for i in 0..n {
        let Some(v) = row.get::<_, Option<i32>>(i) else {
            return Ok(None);
        };
        id.push(i16::try_from(v).map_err(|_| IdOutOfRange(i64::from(v)))?);
    }
    Ok(Some(id))
}

/// How long a connection attempt may take before the server counts as down.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Work memory for the statements that group a day or more of rows (the
/// rollup, kpi, the cache's full builds): at the server's default 4 MB a
/// day of 1 Hz racks sorts on disk, and the rollup takes 1.3x as long.
const GROUPING_WORK_MEM: &str = "64MB";

/// Gives this session's grouping statements [`GROUPING_WORK_MEM`].
pub async fn set_grouping_memory(
    client: &impl tokio_postgres::GenericClient,
) -> Result<(), tokio_postgres::Error> {
    client
        .batch_execute(&format!("SET work_mem = '{GROUPING_WORK_MEM}'"))
        .await
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("server `{server}`: password variable {var} is not set")]
    PasswordEnvMissing { server: String, var: String },
    #[error(
        "server `{server}`: cannot read password file {path}: {reason}; check the path in password_file (relative paths start at the config file's folder) and that this user may read it (the package's secrets are mode 0640, group essops)"
    )]
    PasswordFile {
        server: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "server `{server}` ({addr}) is unreachable: {reason}; check that PostgreSQL runs there and this host may connect (`essops check --server {server}` tests it)"
    )]
    Unreachable {
        server: String,
        addr: String,
        reason: String,
    },
    #[error("server `{server}` ({addr}): {reason}")]
    Tls {
        server: String,
        addr: String,
        reason: String,
    },
    #[error("server `{server}`, database `{database}`: {context}: {reason}")]
    Query {
        server: String,
        database: String,
        context: String,
        reason: String,
        sqlstate: Option<String>,
    },
}

impl DbError {
    pub fn exit_code(&self) -> u8 {
        match self {
            DbError::PasswordEnvMissing { .. }
            | DbError::PasswordFile { .. }
            | DbError::Tls { .. } => exit::CONFIG,
            DbError::Unreachable { .. } => exit::UNAVAILABLE,
            DbError::Query { sqlstate, .. }
                if sqlstate.as_deref() == Some(INSUFFICIENT_PRIVILEGE) =>
            {
                exit::PRIVILEGE
            }
            DbError::Query { .. } => exit::UNAVAILABLE,
        }
    }

    /// A value the server returned that essops cannot use (say, a device id
    /// outside smallint): named like a query error, without a SQLSTATE.
    pub fn bad_value(
        server: &str,
        database: &str,
        context: impl Into<String>,
        reason: impl ToString,
    ) -> DbError {
        DbError::Query {
            server: server.to_string(),
            database: database.to_string(),
            context: context.into(),
            reason: reason.to_string(),
            sqlstate: None,
        }
    }

    /// Wraps a tokio-postgres error from a query, keeping its SQLSTATE.
    pub fn query(
        server: &str,
        database: &str,
        context: impl Into<String>,
        e: &tokio_postgres::Error,
    ) -> DbError {
        let reason = describe(e);
        DbError::Query {
            server: server.to_string(),
            database: database.to_string(),
            context: context.into(),
            reason,
            sqlstate: e.code().map(|c| c.code().to_string()),
        }
    }
}

crate::into_error!(DbError);

/// A driver error as the server worded it (or the driver, when the server said nothing).
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => db.message().to_string(),
        None => e.to_string(),
    }
}

/// Whether a failed write may succeed when repeated as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The server or the link is the problem (it went away, ran out of
    /// something, or chose another transaction to fail): keep the rows and retry.
    Transient,
    /// The rows or the schema are the problem: repeating it fails the same way.
    Permanent,
}

/// The one place that splits write failures, by SQLSTATE class. Only what
/// is about the rows themselves is permanent: data exceptions (22) and
/// integrity violations (23; a natural-key conflict never gets here, it
/// means "already there"). Everything else is the server's state: a
/// failover's read-only transactions (25006), a privilege revoked (42501), a
/// table or column changing under a migration (42P01, 42703), a missing
/// database (3D000), authentication (28), a lost connection. The rows are
/// fine; they wait in the spool until the server takes them again.
pub fn classify(sqlstate: Option<&str>) -> Failure {
    match sqlstate.and_then(|code| code.get(..2)) {
        Some("22" | "23") => Failure::Permanent,
        _ => Failure::Transient,
    }
}

/// Whether a refusal is about the server or its schema rather than the
/// connection: read-only (25006), a privilege (42501), a table or column
/// (42P01, 42703), a database or schema (3D000, 3F000), authentication (28),
/// resources such as a full disk (53). Such a server is set aside and
/// checked again; a lost connection is only retried.
pub fn is_server_state(sqlstate: Option<&str>) -> bool {
    matches!(
        sqlstate.and_then(|code| code.get(..2)),
        Some("25" | "42" | "3D" | "3F" | "28" | "53" | "0A")
    )
}

pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
pub const INVALID_CATALOG_NAME: &str = "3D000";

pub use crate::sql::{quote_ident, quote_list};

/// PostgreSQL counts timestamps from 2000-01-01; Unix from 1970-01-01.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Column types essops writes with binary COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyType {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Timestamptz,
}

impl CopyType {
    /// The catalog's `format_type` name of each type.
    pub(crate) const NAMES: [(&'static str, CopyType); 6] = [
        ("smallint", CopyType::Int2),
        ("integer", CopyType::Int4),
        ("bigint", CopyType::Int8),
        ("real", CopyType::Float4),
        ("double precision", CopyType::Float8),
        ("timestamp with time zone", CopyType::Timestamptz),
    ];

    /// From the catalog's `format_type` name; `None` for types essops does not write.
    pub fn from_catalog(name: &str) -> Option<CopyType> {
        crate::named::by_name(&CopyType::NAMES, name)
    }

    /// The type as PostgreSQL names it (`smallint`), for messages.
    pub fn name(self) -> &'static str {
        crate::named::name_of(&CopyType::NAMES, self)
    }

    /// The integer range the column holds; `None` for floats and times.
    pub fn int_range(self) -> Option<(i128, i128)> {
        Some(match self {
            CopyType::Int2 => (i16::MIN.into(), i16::MAX.into()),
            CopyType::Int4 => (i32::MIN.into(), i32::MAX.into()),
            CopyType::Int8 => (i64::MIN.into(), i64::MAX.into()),
            _ => return None,
        })
    }
}

/// The first bytes of every binary COPY stream.
pub const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Builds a binary COPY stream: how essops sends rows and key sets to a
/// server without putting values in SQL text.
pub struct BinaryCopyWriter {
    buf: Vec<u8>,
}

impl BinaryCopyWriter {
    pub fn new() -> BinaryCopyWriter {
        let mut buf = COPY_SIGNATURE.to_vec();
        buf.extend(0i32.to_be_bytes()); // flags
        buf.extend(0i32.to_be_bytes()); // header extension length
        BinaryCopyWriter { buf }
    }

    /// Starts a row of `fields` fields; write exactly that many next.
    pub fn begin_row(&mut self, fields: usize) {
        self.buf.extend((fields as i16).to_be_bytes());
    }

    pub fn null(&mut self) {
        self.buf.extend((-1i32).to_be_bytes());
    }

    /// An integer into a column of type `ty` (integers clamp to the column's
    /// range; callers check ranges up front).
    pub fn int(&mut self, ty: CopyType, v: i64) {
        match ty {
            CopyType::Int2 => {
                self.field(&(v.clamp(i16::MIN.into(), i16::MAX.into()) as i16).to_be_bytes())
            }
            CopyType::Int4 => {
                self.field(&(v.clamp(i32::MIN.into(), i32::MAX.into()) as i32).to_be_bytes())
            }
            CopyType::Int8 => self.field(&v.to_be_bytes()),
            CopyType::Timestamptz => self.timestamptz(v),
            CopyType::Float4 | CopyType::Float8 => self.float(ty, v as f64),
        }
    }

    pub fn float(&mut self, ty: CopyType, v: f64) {
        match ty {
            CopyType::Float4 => self.field(&(v as f32).to_be_bytes()),
            CopyType::Float8 => self.field(&v.to_be_bytes()),
            _ => self.int(ty, v.round() as i64),
        }
    }

    /// A timestamptz given in Unix microseconds.
    pub fn timestamptz(&mut self, unix_micros: i64) {
        self.field(&(unix_micros - PG_EPOCH_UNIX_MICROS).to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        self.buf.extend((bytes.len() as i32).to_be_bytes());
        self.buf.extend(bytes);
    }

    /// One row of `int4` fields, then one timestamptz in Unix microseconds.
    pub fn row(&mut self, ints: &[i32], unix_micros: i64) {
        self.begin_row(ints.len() + 1);
        for v in ints {
            self.int(CopyType::Int4, (*v).into());
        }
        self.timestamptz(unix_micros);
    }

    pub fn finish(mut self) -> bytes::Bytes {
        self.buf.extend((-1i16).to_be_bytes());
        self.buf.into()
    }
}

impl Default for BinaryCopyWriter {
    fn default() -> Self {
        BinaryCopyWriter::new()
    }
}

/// A `timestamptz[]` without NULLs as Unix microseconds, decoded in one
/// tight pass over the wire format (a day of 1 Hz samples is 86,400 elements;
/// the generic array decoder spends most of its time in per-element checks).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixMicrosArray(pub Vec<i64>);

impl<'a> tokio_postgres::types::FromSql<'a> for UnixMicrosArray {
    fn from_sql(
        _: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let word = |at: usize| -> Result<i32, &'static str> {
            raw.get(at..at + 4)
                .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                .ok_or("truncated array header")
        };
        // Header: dimensions, has-nulls flag, element type, then (length, lower bound) per dimension.
        let dims = word(0)?;
        if dims == 0 {
            return Ok(UnixMicrosArray(Vec::new()));
        }
        if dims != 1 || word(4)? != 0 {
            return Err("expected a one-dimensional timestamptz array without NULLs".into());
        }
        let len = usize::try_from(word(12)?).map_err(|_| "negative array length")?;
        let body = raw.get(20..).ok_or("truncated array")?;
        if body.len() != len * 12 {
            return Err("array length does not match its data".into());
        }
        // Each element: a 4-byte length (always 8) and the 8-byte value.
        let values = body
            .chunks_exact(12)
            .map(|e| {
                i64::from_be_bytes([e[4], e[5], e[6], e[7], e[8], e[9], e[10], e[11]])
                    + PG_EPOCH_UNIX_MICROS
            })
            .collect();
        Ok(UnixMicrosArray(values))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        *ty == tokio_postgres::types::Type::TIMESTAMPTZ_ARRAY
    }
}

/// One database on one server: what every connection is opened against.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub server: &'a Server,
    pub database: &'a str,
}

impl Target<'_> {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.server.host, self.server.port)
    }
}

/// The server's password, from where the config says to look.
pub fn password(
    config: &Config,
    server: &Server,
    database: &str,
) -> Result<Option<String>, DbError> {
    match &server.password {
        PasswordSource::Env(var) => match std::env::var(var) {
            Ok(p) => Ok(Some(p)),
            Err(_) => Err(DbError::PasswordEnvMissing {
                server: server.name.clone(),
                var: var.clone(),
            }),
        },
        PasswordSource::File(rel) => {
            let path = config.base_dir().join(rel);
            read_password_file(&path)
                .map(Some)
                .map_err(|e| DbError::PasswordFile {
                    server: server.name.clone(),
                    path,
                    reason: e.to_string(),
                })
        }
        PasswordSource::Standard => Ok(std::env::var("PGPASSWORD")
            .ok()
            .or_else(|| pgpass_lookup(server, database))),
    }
}

/// Why a password file gave no password.
#[derive(Debug, thiserror::Error)]
pub enum PasswordFileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("the file is empty")]
    Empty,
}

fn read_password_file(path: &Path) -> Result<String, PasswordFileError> {
    let text = std::fs::read_to_string(path)?;
    let pw = text.lines().next().unwrap_or("").to_string();
    if pw.is_empty() {
        return Err(PasswordFileError::Empty);
    }
    Ok(pw)
}

/// libpq's password file: PGPASSFILE or ~/.pgpass, `host:port:db:user:password`
/// with `*` wildcards and `\:` escapes; the first matching line wins.
fn pgpass_lookup(server: &Server, database: &str) -> Option<String> {
    let path = std::env::var_os("PGPASSFILE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".pgpass")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let port = server.port.to_string();
    let wanted = [
        server.host.as_str(),
        port.as_str(),
        database,
        server.user.as_str(),
    ];
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(split_pgpass_line)
        .find(|f| {
            f.len() == 5
                && f[..4]
                    .iter()
                    .zip(wanted)
                    .all(|(have, want)| have == "*" || have == want)
        })
        .map(|mut f| f.swap_remove(4))
}

fn split_pgpass_line(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => fields.last_mut().unwrap().extend(chars.next()),
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => fields.last_mut().unwrap().push(c),
        }
    }
    fields
}

/// Opens a data connection (tokio-postgres) and drives it on the runtime.
///
/// No retry here: a server that is down must be reported quickly, and
/// callers that poll (ingest) have their own backoff.
/// Connects to `database` on the configured server named `server` (an
/// unknown name is reported as a connection failure naming it).
pub async fn connect_named(
    config: &Config,
    server: &str,
    database: &str,
) -> Result<tokio_postgres::Client, ConnectError> {
    let server = config.server(server)?;
    Ok(connect(config, Target { server, database }).await?)
}

/// Why [`connect_named`] could not connect.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(transparent)]
    UnknownServer(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
}

pub async fn connect(
    config: &Config,
    target: Target<'_>,
) -> Result<tokio_postgres::Client, DbError> {
    let mut pg = tokio_postgres::Config::new();
    pg.host(&target.server.host)
        .port(target.server.port)
        .user(&target.server.user)
        .dbname(target.database)
        .application_name(application_name())
        // essops runs short analytical scans over hours or days of rows;
        // JIT compilation costs more than it saves on those (measured: a
        // site-day count went from 1 s to 0.3 s with it off).
        // UTC sessions: timestamptz casts and hashes then need no zone lookups,
        // and nothing essops computes depends on the session's zone.
        // search_path: see SEARCH_PATH.
        .options(format!(
            "-c jit=off -c TimeZone=UTC -c search_path={SEARCH_PATH}"
        ))
        .connect_timeout(CONNECT_TIMEOUT);
    if let Some(pw) = password(config, target.server, target.database)? {
        pg.password(pw);
    }
    let tls = &target.server.tls;
    match tls.mode {
        SslMode::Disable => {
            pg.ssl_mode(tokio_postgres::config::SslMode::Disable);
            spawn_connection(pg.connect(tokio_postgres::NoTls).await, target)
        }
        mode => {
            pg.ssl_mode(match mode {
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            });
            let rustls = crate::tls::client_config(tls).map_err(|e| DbError::Tls {
                server: target.server.name.clone(),
                addr: target.addr(),
                reason: e.to_string(),
            })?;
            let connector = tokio_postgres_rustls::MakeRustlsConnect::new(rustls);
            spawn_connection(pg.connect(connector).await, target)
        }
    }
}

/// Drives an opened connection on the runtime and hands back its client.
fn spawn_connection<C>(
    opened: Result<(tokio_postgres::Client, C), tokio_postgres::Error>,
    target: Target<'_>,
) -> Result<tokio_postgres::Client, DbError>
where
    C: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    let (client, connection) = opened.map_err(|e| connect_error(target, &e))?;
    tokio::spawn(async move {
        // The connection ends when the client is dropped; errors surface on the client's next query.
        let _ = connection.await;
    });
    Ok(client)
}

/// The TLS failure among `e`'s causes, if any, worded for `target` (either driver).
pub fn tls_failure(target: Target<'_>, e: &(dyn std::error::Error + 'static)) -> Option<DbError> {
    crate::tls::explain(e, &target.server.tls, &target.server.host).map(|reason| DbError::Tls {
        server: target.server.name.clone(),
        addr: target.addr(),
        reason,
    })
}

/// A failed connect is "unreachable" unless the server answered with an error
/// of its own (no such database, bad password), which is reported as it said.
fn connect_error(target: Target<'_>, e: &tokio_postgres::Error) -> DbError {
    if let Some(tls) = tls_failure(target, e) {
        return tls;
    }
    match e.as_db_error() {
        Some(_) => DbError::query(&target.server.name, target.database, "cannot connect", e),
        None => DbError::Unreachable {
            server: target.server.name.clone(),
            addr: target.addr(),
            reason: std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string()),
        },
    }
}

/// Every session resolves unqualified names in `public` only, where the ESS
/// tables and sqlx's bookkeeping live. PostgreSQL's default path starts with
/// `"$user"`: for a login role named `essops`, the history schema `essops`
/// would come first, and a table created unqualified would land there.
const SEARCH_PATH: &str = "public";

/// sqlx options for the same target (migrations only).
pub fn sqlx_options(
    config: &Config,
    target: Target<'_>,
) -> Result<sqlx::postgres::PgConnectOptions, DbError> {
    let mut opts = sqlx::postgres::PgConnectOptions::new_without_pgpass()
        .host(&target.server.host)
        .port(target.server.port)
        .username(&target.server.user)
        .database(target.database)
        .application_name(application_name())
        .options([("search_path", SEARCH_PATH)])
        .ssl_mode(match target.server.tls.effective_mode() {
            SslMode::Disable => sqlx::postgres::PgSslMode::Disable,
            SslMode::Prefer => sqlx::postgres::PgSslMode::Prefer,
            SslMode::Require => sqlx::postgres::PgSslMode::Require,
            SslMode::VerifyCa => sqlx::postgres::PgSslMode::VerifyCa,
            SslMode::VerifyFull => sqlx::postgres::PgSslMode::VerifyFull,
        });
    let tls = &target.server.tls;
    if let Some(ca) = &tls.ca_file {
        opts = opts.ssl_root_cert(ca);
    }
    if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
        opts = opts.ssl_client_cert(cert).ssl_client_key(key);
    }
    if let Some(pw) = password(config, target.server, target.database)? {
        opts = opts.password(&pw);
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_write_failures_split_by_sqlstate_class() {
        use Failure::*;
        for (code, want) in [
            (None, Transient),
            (Some("08006"), Transient), // connection failure
            (Some("40001"), Transient), // serialization failure
            (Some("40P01"), Transient), // deadlock
            (Some("53100"), Transient), // disk full
            (Some("57P01"), Transient), // admin shutdown
            (Some("58030"), Transient), // I/O error
            (Some("XX000"), Transient), // internal error
            (Some("55P03"), Transient), // lock not available
            (Some("25006"), Transient), // read-only transaction (failover)
            (Some("22003"), Permanent), // numeric value out of range
            (Some("23514"), Permanent), // check violation
            (Some("23502"), Permanent), // not null violation
            (Some("42703"), Transient), // undefined column: a migration under way
            (Some("42501"), Transient), // insufficient privilege: revoked for a while
            (Some("42P01"), Transient), // undefined table
            (Some("3D000"), Transient), // no such database
            (Some("28P01"), Transient), // password authentication failed
            (Some("0A000"), Transient), // feature not supported (a compressed chunk)
            (Some("55000"), Transient), // object not in prerequisite state
        ] {
            assert_eq!(classify(code), want, "{code:?}");
        }
    }

    #[test]
    fn db_quote_ident_doubles_quotes_and_keeps_case() {
        assert_eq!(quote_ident("TIMESTAMP"), "\"TIMESTAMP\"");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(
            quote_ident("x\"; DROP TABLE bank; --"),
            "\"x\"\"; DROP TABLE bank; --\""
        );
        assert_eq!(quote_ident("nul\0byte"), "\"nulbyte\"");
        assert_eq!(
            quote_list(&["BANK_ID", "TIMESTAMP"]),
            "\"BANK_ID\", \"TIMESTAMP\""
        );
    }

    #[test]
    fn db_timestamptz_array_decodes_from_the_wire_format() {
        use tokio_postgres::types::{FromSql, Type};
        let mut raw = Vec::new();
        for word in [1i32, 0, 1184, 2, 1] {
            raw.extend(word.to_be_bytes());
        }
        for micros_since_2000 in [0i64, 1_000_000] {
            raw.extend(8i32.to_be_bytes());
            raw.extend(micros_since_2000.to_be_bytes());
        }
        let got = UnixMicrosArray::from_sql(&Type::TIMESTAMPTZ_ARRAY, &raw).unwrap();
        assert_eq!(got.0, [946_684_800_000_000, 946_684_801_000_000]);
        assert!(
            UnixMicrosArray::from_sql(&Type::TIMESTAMPTZ_ARRAY, &raw[..raw.len() - 1]).is_err()
        );
        let empty = [0u8; 12];
        assert_eq!(
            UnixMicrosArray::from_sql(&Type::TIMESTAMPTZ_ARRAY, &empty)
                .unwrap()
                .0,
            Vec::<i64>::new()
        );
    }

    #[test]
    fn db_pgpass_line_handles_escapes() {
        assert_eq!(
            split_pgpass_line(r"h:5432:*:u:p\:w\\d"),
            ["h", "5432", "*", "u", r"p:w\d"]
        );
        assert_eq!(
            split_pgpass_line("h:1:d:u:a:b"),
            ["h", "1", "d", "u", "a:b"]
        );
    }
}
