//! `essops check`: a doctor for one host. One line per check, marked ok,
//! warn or fail: the config; each server (reachable, TLS as configured,
//! PostgreSQL and TimescaleDB versions, schema version against this binary,
//! what each command's role may do, pg_stat_statements and HypoPG, clock
//! skew); Redis (reachable, TLS, can write its keys); the spool and log
//! directories (writable, free space against the spool cap); each Modbus
//! endpoint (TCP connect, one read per table with the register map).
//! Nothing is changed except one short-lived Redis key.

use std::time::Duration;

use clap::Args;
use serde::Serialize;
use tokio_postgres::Client;

use crate::config::{Server, Site};
use crate::context::Context;
use crate::db::{self, Target};
use crate::exit::{Outcome, code as exit};
use crate::output::{Report, Rows};
use crate::schema::TABLES;

/// Check this host's config, servers, Redis, directories and devices.
///
/// Exit code: 0 all ok, 10 a warning, 11 a failure; 3, 4 or 6 when a failure
/// is a bad config, an unreachable server, or a missing privilege.
#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub select: crate::select::Selection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct CheckRow {
    pub verdict: Verdict,
    /// config, server, redis, disk or modbus.
    pub area: &'static str,
    pub target: String,
    pub check: &'static str,
    pub detail: String,
    /// For a failure: the exit code that names it (3, 4, 6), else 11.
    #[serde(skip)]
    code: u8,
}

pub type CheckReport = Rows<CheckRow>;

impl Report for CheckReport {
    type Row = CheckRow;
    const KIND: &'static str = "check";
    const HEADER: &'static str = "RESULT|AREA|TARGET|CHECK|DETAIL";
    fn cells(r: &CheckRow) -> Vec<String> {
        let verdict = match r.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        vec![
            verdict.into(),
            r.area.into(),
            r.target.clone(),
            r.check.into(),
            r.detail.clone(),
        ]
    }
    fn summary(&self) -> String {
        let count = |v: Verdict| self.rows.iter().filter(|r| r.verdict == v).count();
        format!(
            "{} checks: {} ok, {} warning(s), {} failure(s)",
            self.rows.len(),
            count(Verdict::Ok),
            count(Verdict::Warn),
            count(Verdict::Fail)
        )
    }
    fn outcome(&self) -> Outcome {
        let one = |r: &CheckRow| match (r.verdict, r.code) {
            (Verdict::Ok, _) => Outcome::Clean,
            (Verdict::Warn, _) => Outcome::Warning,
            (Verdict::Fail, exit::CONFIG) => Outcome::BadConfig,
            (Verdict::Fail, exit::UNAVAILABLE) => Outcome::Partial,
            (Verdict::Fail, exit::PRIVILEGE) => Outcome::Privilege,
            (Verdict::Fail, _) => Outcome::Critical,
        };
        self.rows.iter().map(one).max().unwrap_or(Outcome::Clean)
    }
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

/// Collects rows for one area and target.
struct Checks<'a> {
    area: &'static str,
    target: &'a str,
    rows: Vec<CheckRow>,
}

impl<'a> Checks<'a> {
    fn new(area: &'static str, target: &'a str) -> Checks<'a> {
        Checks {
            area,
            target,
            rows: Vec::new(),
        }
    }

    fn add(&mut self, verdict: Verdict, check: &'static str, detail: impl Into<String>, code: u8) {
        self.rows.push(CheckRow {
            verdict,
            area: self.area,
            target: self.target.to_string(),
            check,
            detail: detail.into(),
            code,
        });
    }

    fn ok(&mut self, check: &'static str, detail: impl Into<String>) {
        self.add(Verdict::Ok, check, detail, exit::OK);
    }

    fn warn(&mut self, check: &'static str, detail: impl Into<String>) {
        self.add(Verdict::Warn, check, detail, exit::FOUND_WARNING);
    }

    fn fail(&mut self, check: &'static str, detail: impl Into<String>, code: u8) {
        self.add(Verdict::Fail, check, detail, code);
    }
}

/// What `check` looks at.
pub struct CheckPlan {
    sites: Vec<Site>,
    servers: Vec<Server>,
}

impl crate::command::Plan for CheckPlan {}

impl crate::command::Command for CheckArgs {
    type Plan = CheckPlan;
    type Report = CheckReport;
    async fn plan(self, ctx: &Context) -> crate::error::Result<CheckPlan> {
        let config = &ctx.config;
        let sites: Vec<Site> = config
            .select_sites(&self.select.sites)
            .map_err(crate::error::Error::from)?
            .into_iter()
            .cloned()
            .collect();
        let chosen = config
            .select_servers(&self.select.servers)
            .map_err(crate::error::Error::from)?;
        let servers = chosen
            .into_iter()
            .filter(|s| sites.iter().any(|site| site.servers.contains(&s.name)))
            .cloned()
            .collect();
        Ok(CheckPlan { sites, servers })
    }
    async fn execute(plan: CheckPlan, ctx: &Context) -> crate::error::Result<CheckReport> {
        let mut rows = Vec::new();
        let source = ctx.config.source.to_string();
        let mut config = Checks::new("config", &source);
        config.ok(
            "found and valid",
            format!(
                "parsed and validated; used because {}",
                ctx.config.source_why
            ),
        );
        rows.extend(config.rows);
        for server in &plan.servers {
            rows.extend(server_checks(ctx, server, &plan.sites).await);
        }
        rows.extend(redis_checks(ctx).await);
        rows.extend(disk_checks(ctx));
        for site in &plan.sites {
            rows.extend(modbus_checks(ctx, site).await);
        }
        Ok(CheckReport { rows })
    }
}

// ----------------------------------------------------------------- servers

async fn server_checks(ctx: &Context, server: &Server, sites: &[Site]) -> Vec<CheckRow> {
    let mut c = Checks::new("server", &server.name);
    let Some(site) = sites.iter().find(|s| s.servers.contains(&server.name)) else {
        return c.rows;
    };
    let target = Target {
        server,
        database: &site.database,
    };
    let client = match db::connect(&ctx.config, target).await {
        Ok(client) => client,
        Err(e) => {
            c.fail("reachable", e.to_string(), e.exit_code());
            return c.rows;
        }
    };
    c.ok(
        "reachable",
        format!("{}:{} database {}", server.host, server.port, site.database),
    );
    tls(&mut c, &client, server).await;
    versions(&mut c, &client).await;
    schema_version(&mut c, &client).await;
    privileges(&mut c, &client, server, &site.database).await;
    extensions(&mut c, &client).await;
    schema_name_clash(&mut c, &client).await;
    clock(&mut c, &client).await;
    c.rows
}

/// A login role named like the history schema (`essops`, the package's
/// system user with peer authentication, say) finds that schema first on its
/// default search_path (`"$user", public`): tables it creates in psql land
/// in the history schema. essops pins its own search_path, so only people
/// are at risk.
async fn schema_name_clash(c: &mut Checks<'_>, client: &Client) {
    let schema = crate::history::SCHEMA;
    let row = client
        .query_opt(
            "SELECT r.rolcanlogin AND NOT EXISTS (
                      SELECT 1 FROM pg_db_role_setting s, unnest(s.setconfig) c
                       WHERE s.setrole = r.oid AND c LIKE 'search_path=%' AND c NOT LIKE '%$user%')
               FROM pg_roles r WHERE r.rolname = $1",
            &[&schema],
        )
        .await;
    match row {
        Ok(Some(r)) if r.get::<_, bool>(0) => c.warn(
            "role name",
            format!(
                "a login role `{schema}` exists: its default search_path (\"$user\", public) puts what it creates in psql into essops's history schema `{schema}`; give people another role name, or set its search_path: ALTER ROLE {schema} SET search_path = public"
            ),
        ),
        Ok(_) => c.ok(
            "role name",
            format!("no login role named `{schema}` on the default search_path"),
        ),
        Err(e) => c.warn("role name", db::describe(&e)),
    }
}

async fn tls(c: &mut Checks<'_>, client: &Client, server: &Server) {
    let mode = server.tls.effective_mode();
    let row = client
        .query_one(
            "SELECT coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)",
            &[],
        )
        .await;
    match (row.map(|r| r.get::<_, bool>(0)), mode) {
        (Ok(true), _) => c.ok("tls", format!("encrypted (sslmode {})", mode.name())),
        (Ok(false), crate::config::SslMode::Disable) => c.ok("tls", "plain text (sslmode disable)"),
        (Ok(false), _) => c.warn(
            "tls",
            format!(
                "plain text although sslmode is {} (the server offers no TLS)",
                mode.name()
            ),
        ),
        (Err(e), _) => c.warn("tls", db::describe(&e)),
    }
}

async fn versions(c: &mut Checks<'_>, client: &Client) {
    let row = client
        .query_one(
            "SELECT current_setting('server_version'),
                    (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'),
                    current_setting('timescaledb.license', true)",
            &[],
        )
        .await;
    match row {
        Ok(r) => {
            let pg: String = r.get(0);
            match r.get::<_, Option<String>>(1) {
                Some(ts) => {
                    let license: Option<String> = r.get(2);
                    let license = license.unwrap_or_else(|| "?".into());
                    c.ok(
                        "versions",
                        format!("PostgreSQL {pg}, TimescaleDB {ts} ({license})"),
                    );
                }
                None => c.fail(
                    "versions",
                    format!(
                        "PostgreSQL {pg} without TimescaleDB in this database (run essops migrate)"
                    ),
                    exit::CONFIG,
                ),
            }
        }
        Err(e) => c.fail("versions", db::describe(&e), exit::UNAVAILABLE),
    }
}

async fn schema_version(c: &mut Checks<'_>, client: &Client) {
    let binary = crate::migrate::latest_version();
    let sql = "SELECT max(version) FROM _sqlx_migrations WHERE success";
    match client.query_one(sql, &[]).await {
        Ok(r) => match r.get::<_, Option<i64>>(0) {
            Some(v) if v == binary => c.ok("schema", format!("version {v}, as this binary")),
            Some(v) if v < binary => c.warn(
                "schema",
                format!("version {v}; this binary has {binary}: run essops migrate"),
            ),
            Some(v) => c.fail(
                "schema",
                format!("version {v} is newer than this binary's {binary}: upgrade essops"),
                exit::CONFIG,
            ),
            None => c.warn("schema", "no migration applied: run essops migrate"),
        },
        Err(_) => c.warn("schema", "not migrated by essops: run essops migrate"),
    }
}

/// What each command needs on the ESS tables, as one line per command.
async fn privileges(c: &mut Checks<'_>, client: &Client, server: &Server, database: &str) {
    let needs: [(&str, &[&str], bool); 3] = [
        ("ingest", &["INSERT"], false),
        ("reconcile", &["SELECT", "INSERT"], true),
        ("loss", &["SELECT"], false),
    ];
    for (command, privileges, temp) in needs {
        let mut missing = None;
        for spec in TABLES {
            let checked = crate::privilege::require(
                client,
                &server.name,
                database,
                command,
                spec.name,
                privileges,
                temp,
            )
            .await;
            if let Err(e) = checked {
                missing = Some(e.to_string());
                break;
            }
        }
        let check = match command {
            "ingest" => "may ingest",
            "reconcile" => "may reconcile",
            _ => "may measure loss",
        };
        match missing {
            None => c.ok(
                check,
                format!("role {} has {}", server.user, privileges.join(", ")),
            ),
            Some(why) => c.warn(check, why),
        }
    }
    match crate::history::missing_grants(client).await {
        Ok(grants) if grants.is_empty() => c.ok(
            "may record history",
            format!("role {} may write every essops.* table", server.user),
        ),
        Ok(grants) => c.warn(
            "may record history",
            format!(
                "role {} may not write all of the run history (status would miss it): {}",
                server.user,
                grants.join("; ")
            ),
        ),
        Err(e)
            if e.code()
                .is_some_and(|c| c.code() == "3F000" || c.code() == "42P01") =>
        {
            c.warn(
                "may record history",
                "history tables missing (all, or those a newer schema version adds, such as the KPI tables of version 6): run `essops migrate`",
            )
        }
        Err(e) => c.warn("may record history", db::describe(&e)),
    }
}

async fn extensions(c: &mut Checks<'_>, client: &Client) {
    let sql = "SELECT name FROM pg_available_extensions WHERE name = ANY($1)";
    let wanted = ["pg_stat_statements", "hypopg"];
    let names: Vec<&str> = wanted.to_vec();
    match client.query(sql, &[&names]).await {
        Ok(rows) => {
            let have: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            for name in wanted {
                match have.iter().any(|h| h == name) {
                    true => c.ok("extension", format!("{name} available")),
                    false => c.warn(
                        "extension",
                        format!("{name} is not installed on the server (essops index recommend needs it)"),
                    ),
                }
            }
        }
        Err(e) => c.warn("extension", db::describe(&e)),
    }
}

/// The server's clock against this host's, from the middle of a round trip.
async fn clock(c: &mut Checks<'_>, client: &Client) {
    let before = chrono::Utc::now();
    let row = client
        .query_one("SELECT extract(epoch FROM clock_timestamp())::float8", &[])
        .await;
    let after = chrono::Utc::now();
    let Ok(row) = row else {
        return c.warn("clock", "could not read the server's clock");
    };
    let server: f64 = row.get(0);
    let here = (before.timestamp_micros() + after.timestamp_micros()) as f64 / 2e6;
    let skew = server - here;
    let detail = format!("server {skew:+.3} s against this host");
    match skew.abs() {
        s if s < 1.0 => c.ok("clock", detail),
        s if s < 30.0 => c.warn(
            "clock",
            format!("{detail}: samples are stamped by this host; fix NTP"),
        ),
        _ => c.fail(
            "clock",
            format!("{detail}: loss and reconcile windows would be wrong"),
            exit::FOUND_CRITICAL,
        ),
    }
}

// ------------------------------------------------------------- redis, disk

async fn redis_checks(ctx: &Context) -> Vec<CheckRow> {
    let addr = crate::redis_client::addr(&ctx.config);
    let mut c = Checks::new("redis", &addr);
    let Some(redis) = &ctx.config.redis else {
        return c.rows;
    };
    let mut con = match crate::redis_client::connect(&ctx.config).await {
        Ok(con) => con,
        Err(e) => {
            c.fail("reachable", e.to_string(), exit::UNAVAILABLE);
            return c.rows;
        }
    };
    let tls = match redis.url.scheme() {
        "rediss" => "TLS",
        _ => "plain text",
    };
    let mode = match redis.cluster {
        true => "a Redis Cluster",
        false => "one Redis",
    };
    c.ok("reachable", format!("{mode}, {tls}"));
    let key = format!("essops:check:{}", std::process::id());
    let wrote: redis::RedisResult<()> = redis::pipe()
        .set_ex(&key, "ok", 10)
        .ignore()
        .del(&key)
        .ignore()
        .query_async(&mut con)
        .await;
    match wrote {
        Ok(()) => c.ok("can write keys", "set and deleted a test key"),
        Err(e) => c.fail("can write keys", e.to_string(), exit::UNAVAILABLE),
    }
    c.rows
}

fn disk_checks(ctx: &Context) -> Vec<CheckRow> {
    let config = &ctx.config;
    let mut rows = Vec::new();
    let dirs = [
        ("spool", config.base_dir().join(&config.spool_dir)),
        ("logs", config.base_dir().join(&config.log_dir)),
        ("locks", ctx.lock_dir()),
    ];
    for (what, path) in dirs {
        let path = std::path::absolute(&path).unwrap_or(path);
        let shown = path.display().to_string();
        let mut c = Checks::new("disk", &shown);
        match crate::disk::writable(&path) {
            true => c.ok(what, "writable"),
            false => c.fail(
                what,
                format!(
                    "{} is not writable by this user",
                    crate::disk::nearest_existing(&path).display()
                ),
                exit::CONFIG,
            ),
        }
        if what == "spool" {
            spool_room(&mut c, &path, config.spool_limits);
        }
        rows.extend(c.rows);
    }
    rows
}

/// Free space where the spool lives, against its cap and reserve.
fn spool_room(c: &mut Checks<'_>, path: &std::path::Path, limits: crate::config::SpoolSettings) {
    let free = crate::disk::free_bytes(&crate::disk::nearest_existing(path)).unwrap_or(0);
    let human = crate::output::human_bytes;
    let detail = format!(
        "{} free; spool cap {} per server, reserve {}",
        human(free),
        human(limits.max_bytes),
        human(limits.min_free_bytes)
    );
    match free {
        f if f <= limits.min_free_bytes => c.fail(
            "free space",
            format!("{detail}: the spool cannot take rows"),
            exit::FOUND_CRITICAL,
        ),
        f if f < limits.min_free_bytes + limits.max_bytes => c.warn(
            "free space",
            format!("{detail}: a full spool would not fit"),
        ),
        _ => c.ok("free space", detail),
    }
}

// ------------------------------------------------------------------ modbus

/// Per endpoint: a TCP connect; per table on it: one read of its first device.
async fn modbus_checks(ctx: &Context, site: &Site) -> Vec<CheckRow> {
    let timeout = ctx.config.modbus.timeout.max(Duration::from_millis(500));
    let mut rows = Vec::new();
    for endpoint in &site.endpoints {
        let target = format!("{} {} ({})", site.name, endpoint.name, endpoint.addr);
        let mut c = Checks::new("modbus", &target);
        let con = match crate::modbus::client::Connection::open(&endpoint.addr, timeout).await {
            Ok(con) => con,
            Err(e) => {
                c.fail("connect", e.to_string(), exit::UNAVAILABLE);
                rows.extend(c.rows);
                continue;
            }
        };
        c.ok("connect", "TCP connected");
        for table in &site.register_map.tables {
            let first = table.spec.devices(site).into_iter().find_map(|d| {
                let at = site.address(table, &d).ok()?;
                (at.endpoint == endpoint.name).then_some((d, at))
            });
            let Some((device, at)) = first else {
                continue;
            };
            let label = crate::schema::device_label(&table.spec, &device);
            let unit = at.unit;
            // A SunSpec device is checked by finding its models.
            let read = match (site.register_map.sunspec, table.requests(at.start).first()) {
                (true, _) => {
                    let role = crate::modbus::sunspec::role(table.spec.table, &device);
                    match role {
                        Some(role) => {
                            crate::modbus::sunspec::mapping::discover(&con, unit, role, timeout)
                                .await
                                .map(|_| ())
                        }
                        None => Ok(()),
                    }
                }
                (false, Some(r)) => con
                    .read(unit, r.kind, r.start, r.count, timeout)
                    .await
                    .map(|_| ()),
                (false, None) => Ok(()),
            };
            match read {
                Ok(()) => c.ok("read", format!("{} {label}: answered", table.spec.name)),
                Err(e) => c.fail(
                    "read",
                    format!("{} {label}: {e}", table.spec.name),
                    exit::UNAVAILABLE,
                ),
            }
        }
        rows.extend(c.rows);
    }
    rows
}
