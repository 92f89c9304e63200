//! `sites.toml`: servers, sites, devices, thresholds; loading and strict validation.
//!
//! The raw structs mirror the file (unknown keys are an error) and keep the
//! byte span of every value that validation may complain about, so each error
//! names the file, the line, and the key. [`Config`] is the validated form the
//! rest of essops uses; nothing outside this module sees TOML. Passwords are
//! resolved at connect time by `db`, never stored here.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use chrono_tz::Tz;
use toml::Spanned;
use url::Url;

pub mod locate;
mod raw;
mod validate;
pub mod view;

use crate::doc::{Doc, DocError};
use crate::modbus::map::{DeviceAddress, DeviceOverride, PlacementError, RegisterMap, TableMap};
use crate::schema::{DeviceId, Table, TableSpec};
use raw::RawConfig;
use validate::Validator;

/// The shipped `sites.toml`, used when neither `--config` nor `ESSOPS_CONFIG` is given.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../sites.toml");
const EMBEDDED_LABEL: &str = "sites.toml (built-in default)";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file that cannot be read, or one place in it that is wrong.
    #[error(transparent)]
    Doc(#[from] DocError),
    #[error("unknown site `{name}` (configured: {known})")]
    UnknownSite { name: String, known: String },
    #[error("unknown server `{name}` (configured: {known})")]
    UnknownServer { name: String, known: String },
    #[error(
        "no config file found (looked at {looked}); the built-in demo config points into the repository essops was built from, {repo}, which is not on this machine. Write /etc/essops/sites.toml (the package installs an example) or name a file with --config"
    )]
    DemoWithoutRepository { looked: String, repo: String },
    #[error(
        "no config file found (looked at {looked}); the built-in demo config is used only by `essops demo` and from inside the repository essops was built from ({repo}), so that a production host never reaches the dev databases by mistake. Write /etc/essops/sites.toml (the package installs an example) or name a file with --config"
    )]
    DemoOutsideRepository { looked: String, repo: String },
}

impl ConfigError {
    pub fn exit_code(&self) -> u8 {
        crate::exit::code::CONFIG
    }
}

crate::into_error!(ConfigError);

impl TableSpec {
    /// Every device the config says this site has in this table, even those
    /// that never sent anything. A table the site's register map does not
    /// describe has none: nothing is polled, graded or shown for it.
    pub fn devices(&self, site: &Site) -> Vec<DeviceId> {
        if !site.has_table(self.table) {
            return Vec::new();
        }
        match self.table {
            Table::Bank => site.banks.iter().map(|b| vec![b.id as i16]).collect(),
            Table::Rack => site
                .banks
                .iter()
                .flat_map(|b| b.racks.iter().map(move |r| vec![b.id as i16, *r as i16]))
                .collect(),
            Table::Pcs => site.pcs.iter().map(|p| vec![p.id as i16]).collect(),
            Table::Etc => vec![vec![]],
        }
    }
}

// ------------------------------------------------------------ validated form

/// Where the configuration came from, for messages and relative paths.
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigSource {
    Embedded,
    File(PathBuf),
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::Embedded => f.write_str(EMBEDDED_LABEL),
            ConfigSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Where the cache lives.
#[derive(Debug, Clone)]
pub struct Redis {
    /// `redis://` or `rediss://`.
    pub url: Url,
    /// PEM CA for `rediss://` (none: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// `url` is one node of a Redis Cluster; the others are discovered.
    pub cluster: bool,
}

#[derive(Debug, Clone)]
pub struct Config {
    /// Where the configuration was read from, for messages.
    pub source: ConfigSource,
    /// Why this file was chosen (`essops config path` says the same).
    pub source_why: String,
    /// Where the graded JSON logs go, and where ingest keeps rows a server
    /// could not take yet.
    pub log_dir: PathBuf,
    /// Daily log files kept per site (0: all).
    pub log_keep_days: u32,
    /// Where this host's run-lock files live (default: `log_dir/locks`).
    pub lock_dir: Option<PathBuf>,
    pub spool_dir: PathBuf,
    /// Per server: the spool's cap and the free disk it leaves.
    pub spool_limits: SpoolSettings,
    /// How devices are polled: timeouts, pipelining, breakers.
    pub modbus: ModbusSettings,
    /// What `cache warm` reads and writes.
    pub cache: CacheSettings,
    /// None: the cache commands refuse to run.
    pub redis: Option<Redis>,
    /// How long the run history (`essops.*` tables) is kept.
    pub history: HistorySettings,
    /// How long raw rows and rollups are kept (`essops retention`).
    pub retention: RetentionSettings,
    /// When `essops status` warns and when it is critical.
    pub status: StatusSettings,
    /// How `essops kpi` grades the battery figures.
    pub kpi: KpiSettings,
    /// In file order: the first two are a site's default reconcile pair.
    pub servers: Vec<Server>,
    pub sites: Vec<Site>,
}

/// A read replica's address (`read_url`): the same user, password and TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadReplica {
    pub host: String,
    pub port: u16,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: PasswordSource,
    pub tls: Tls,
    /// Where read-only work (`loss`) goes; none: the server itself.
    pub read: Option<ReadReplica>,
    /// The login administration uses (`admin_url`): migrations, roles,
    /// database creation, retention's drops, index builds; none: `url`'s.
    pub admin: Option<AdminLogin>,
}

/// A server's administration login: its own user and password source, the
/// server's TLS settings.
#[derive(Debug, Clone, PartialEq)]
pub struct AdminLogin {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: PasswordSource,
}

/// libpq's sslmode values, with libpq's meaning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it, without checking its certificate.
    Prefer,
    /// TLS always, without checking the certificate; with a `ca_file`,
    /// as verify-ca (libpq does the same when a root certificate is given).
    Require,
    /// TLS; the certificate must chain to `ca_file`.
    VerifyCa,
    /// As verify-ca, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    const NAMES: [(&'static str, SslMode); 5] = [
        ("disable", SslMode::Disable),
        ("prefer", SslMode::Prefer),
        ("require", SslMode::Require),
        ("verify-ca", SslMode::VerifyCa),
        ("verify-full", SslMode::VerifyFull),
    ];

    fn parse(s: &str) -> Option<SslMode> {
        crate::named::by_name(&SslMode::NAMES, s)
    }

    /// libpq's word for the mode.
    pub fn name(self) -> &'static str {
        crate::named::name_of(&SslMode::NAMES, self)
    }
}

/// How one server's connections are encrypted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tls {
    pub mode: SslMode,
    /// PEM CA certificates the server's certificate must chain to.
    pub ca_file: Option<PathBuf>,
    /// A client certificate and key (PEM), for servers that ask for one.
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl Tls {
    /// The mode as libpq applies it: `require` with a CA file verifies the chain.
    pub fn effective_mode(&self) -> SslMode {
        match self.mode {
            SslMode::Require if self.ca_file.is_some() => SslMode::VerifyCa,
            mode => mode,
        }
    }
}

/// How a server's password is found. The password itself is read only when connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordSource {
    Env(String),
    File(PathBuf),
    /// PGPASSWORD, then PGPASSFILE or ~/.pgpass, as libpq does.
    Standard,
}

/// How ingest talks to devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModbusSettings {
    /// Per request; a device that does not answer in time misses that sample.
    pub timeout: std::time::Duration,
    /// At most this many TCP connections per endpoint; devices share them.
    pub connections: usize,
    /// Requests in flight per connection (1: one at a time).
    pub pipeline: usize,
    /// Failures in a row after which a device is only probed.
    pub breaker_after: u32,
    /// Measured values unchanged this long flag a device as stale.
    pub stale_after: std::time::Duration,
}

/// `[history]`: rows older than `keep_days` are pruned by reconcile (None: kept).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HistorySettings {
    pub keep_days: Option<u32>,
}

/// `[retention]`: whole days of raw rows and of each rollup kept before
/// today (None: kept forever).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionSettings {
    pub raw_days: Option<u32>,
    pub rollup_1m_days: Option<u32>,
    pub rollup_1h_days: Option<u32>,
}

/// A (warning, critical) pair of ages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AgeLimits {
    pub warning: std::time::Duration,
    pub critical: std::time::Duration,
}

/// `[status]`: the ages past which `essops status` warns or is critical.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusSettings {
    /// Since the ingest's last minute in the history.
    pub heartbeat: AgeLimits,
    /// Since the newest sample of a table on a server.
    pub sample_age: AgeLimits,
    /// Since the last reconcile run.
    pub reconcile: AgeLimits,
    /// Since the last cache warm.
    pub cache_age: AgeLimits,
    /// A spool this big is critical (growing at all is a warning).
    pub spool_critical_bytes: u64,
}

impl Default for StatusSettings {
    fn default() -> StatusSettings {
        let limits = |w: u64, c: u64| AgeLimits {
            warning: std::time::Duration::from_secs(w),
            critical: std::time::Duration::from_secs(c),
        };
        StatusSettings {
            heartbeat: limits(180, 600),
            sample_age: limits(120, 900),
            reconcile: limits(26 * 3600, 50 * 3600),
            cache_age: limits(300, 3600),
            spool_critical_bytes: 1 << 30,
        }
    }
}

/// `[kpi]`: when a battery figure is a warning or critical. A (warning,
/// critical) pair is "above is worse" for spreads and "below is worse" for
/// RTE, availability and the days left to the SoH end of life.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KpiSettings {
    /// SoH (%) at which a rack has reached its end of life.
    pub soh_end_of_life: f64,
    /// Cell voltage spread p95 (mV).
    pub cell_spread_mv: (f64, f64),
    /// Cell temperature spread p95 (°C).
    pub temp_spread_c: (f64, f64),
    /// 30-day round-trip efficiency (%).
    pub rte_pct: (f64, f64),
    /// Share of the day with data and no fault (%).
    pub availability_pct: (f64, f64),
    /// Days until the projected SoH end of life.
    pub soh_eol_days: (f64, f64),
}

impl Default for KpiSettings {
    fn default() -> KpiSettings {
        KpiSettings {
            soh_end_of_life: 80.0,
            cell_spread_mv: (50.0, 100.0),
            temp_spread_c: (5.0, 10.0),
            rte_pct: (85.0, 75.0),
            availability_pct: (99.0, 95.0),
            soh_eol_days: (365.0, 90.0),
        }
    }
}

/// How much a server's spool may hold (bytes; 0 means no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolSettings {
    pub max_bytes: u64,
    pub min_free_bytes: u64,
}

/// What `essops cache warm` stores and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheSettings {
    /// The server read from (default: the first configured).
    pub source: String,
    /// Each warm re-reads at least this much recent data (seconds).
    pub recheck_secs: i64,
    /// A rack departing from its bank's other racks by more than this factor is an outlier.
    pub outlier_factor: f64,
    pub periods: Vec<CachePeriod>,
    /// Allowed [min, max] per column; values outside are outliers.
    pub limits: BTreeMap<String, (f64, f64)>,
}

/// A dashboard period: the last `span` seconds in buckets of `bucket` seconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachePeriod {
    pub name: String,
    pub span_secs: i64,
    /// 86400 means local days (the site's time zone).
    pub bucket_secs: i64,
    pub ttl_secs: i64,
}

impl CachePeriod {
    fn new(name: &str, span: i64, bucket: i64, ttl: i64) -> CachePeriod {
        CachePeriod {
            name: name.into(),
            span_secs: span,
            bucket_secs: bucket,
            ttl_secs: ttl,
        }
    }

    pub fn defaults() -> Vec<CachePeriod> {
        vec![
            CachePeriod::new("hour", 3600, 60, 600),
            CachePeriod::new("day", 86_400, 300, 3600),
            CachePeriod::new("week", 7 * 86_400, 3600, 6 * 3600),
            CachePeriod::new("month", 30 * 86_400, 86_400, 86_400),
        ]
    }
}

/// Built-in outlier limits: typical LFP cell and rack bounds.
pub fn default_limits() -> BTreeMap<String, (f64, f64)> {
    [
        ("SOC", (0.0, 100.0)),
        ("MAX_CELL_VOLTAGE", (2.5, 3.65)),
        ("MIN_CELL_VOLTAGE", (2.5, 3.65)),
        ("MAX_CELL_TEMP", (-20.0, 45.0)),
        ("MIN_CELL_TEMP", (-20.0, 45.0)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A Modbus TCP endpoint of a site (its BMS, its PCS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub name: String,
    /// `host:port`.
    pub addr: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossThresholds {
    pub warning_pct: f64,
    pub critical_pct: f64,
}

#[derive(Debug, Clone)]
pub struct Site {
    pub name: String,
    pub database: String,
    pub servers: Vec<String>,
    pub timezone: Tz,
    pub sample_interval_secs: u32,
    pub loss: LossThresholds,
    pub banks: Vec<Bank>,
    pub pcs: Vec<Pcs>,
    /// Empty when the site has no `modbus` table (ingest and simulate need one).
    pub endpoints: Vec<Endpoint>,
    pub register_map: Arc<RegisterMap>,
    /// Where this site's ingest serves Prometheus metrics (HOST:PORT);
    /// `ingest --metrics-listen` overrides it.
    pub metrics_listen: Option<String>,
    /// The site's rated energy (kWh), for capacity ratio and cycles.
    pub rated_kwh: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bank {
    pub id: u16,
    /// Rack ids, ascending; gaps are racks the site does not have.
    pub racks: Vec<u16>,
    /// The bank's own controller (endpoint, unit), for it and its racks.
    pub own: DeviceOverride,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pcs {
    pub id: u16,
    pub own: DeviceOverride,
}

impl Server {
    /// The server as read-only work sees it: its read replica when it has one.
    pub fn for_reading(&self) -> Server {
        match &self.read {
            Some(r) => Server {
                host: r.host.clone(),
                port: r.port,
                ..self.clone()
            },
            None => self.clone(),
        }
    }

    /// The server as administration sees it: its `admin_url` login when it
    /// has one.
    pub fn for_admin(&self) -> Server {
        match &self.admin {
            Some(a) => Server {
                host: a.host.clone(),
                port: a.port,
                user: a.user.clone(),
                password: a.password.clone(),
                ..self.clone()
            },
            None => self.clone(),
        }
    }
}

impl Site {
    pub fn rack_count(&self) -> usize {
        self.banks.iter().map(|b| b.racks.len()).sum()
    }

    /// The tables the site's register map describes, in table order: the
    /// others have no devices and are skipped by loss, status, cache and rollup.
    pub fn tables(&self) -> Vec<TableSpec> {
        crate::schema::TABLES
            .into_iter()
            .filter(|t| self.has_table(t.table))
            .collect()
    }

    /// Whether the site's register map describes the table.
    pub fn has_table(&self, table: Table) -> bool {
        self.register_map.table(table.spec().name).is_some()
    }

    /// The endpoint and unit a device was given in `sites.toml`, if any: a
    /// bank's apply to its racks too.
    pub fn device_override(&self, table: Table, device: &[i16]) -> DeviceOverride {
        let id = device.first().map(|&i| i as u16);
        match table {
            Table::Bank | Table::Rack => self
                .banks
                .iter()
                .find(|b| Some(b.id) == id)
                .map(|b| b.own.clone()),
            Table::Pcs => self
                .pcs
                .iter()
                .find(|p| Some(p.id) == id)
                .map(|p| p.own.clone()),
            Table::Etc => None,
        }
        .unwrap_or_default()
    }

    /// A table's devices with their own endpoint and unit.
    pub fn placed_devices(&self, spec: &TableSpec) -> Vec<(DeviceId, DeviceOverride)> {
        spec.devices(self)
            .into_iter()
            .map(|d| {
                let own = self.device_override(spec.table, &d);
                (d, own)
            })
            .collect()
    }

    /// Where a device of the map's table answers (its endpoint, unit and first register).
    pub fn address(&self, t: &TableMap, device: &[i16]) -> Result<DeviceAddress, PlacementError> {
        t.address(device, &self.device_override(t.spec.table, device))
    }

    /// Whether the site has this device (a rack in a gap is not one).
    pub fn has_device(&self, spec: &TableSpec, device: &[i16]) -> bool {
        spec.devices(self).iter().any(|d| d == device)
    }

    pub fn endpoint(&self, name: &str) -> Option<&Endpoint> {
        self.endpoints.iter().find(|e| e.name == name)
    }
}

impl Config {
    /// Loads the config `locate` chooses for `flag` (`--config`); the
    /// built-in demo config only from inside the repository it points into.
    pub fn load(flag: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_allowing_demo(flag, locate::inside_repository())
    }

    /// Like [`load`](Self::load), for `essops demo`: the built-in demo
    /// config from anywhere, while its repository is on this machine.
    pub fn load_for_demo(flag: Option<&Path>) -> Result<Config, ConfigError> {
        Config::load_allowing_demo(flag, true)
    }

    fn load_allowing_demo(flag: Option<&Path>, demo: bool) -> Result<Config, ConfigError> {
        let located = locate::locate(flag);
        let looked = || {
            let looked: Vec<String> = located
                .looked
                .iter()
                .map(|p| p.display().to_string())
                .collect();
            looked.join(", ")
        };
        let repo = || env!("CARGO_MANIFEST_DIR").to_string();
        match &located.source {
            ConfigSource::Embedded if locate::embedded_base().is_none() => {
                Err(ConfigError::DemoWithoutRepository {
                    looked: looked(),
                    repo: repo(),
                })
            }
            ConfigSource::Embedded if !demo => Err(ConfigError::DemoOutsideRepository {
                looked: looked(),
                repo: repo(),
            }),
            source => {
                let mut config = Config::load_from(source)?;
                config.source_why = located.why.clone();
                Ok(config)
            }
        }
    }

    /// Loads `source` (the built-in default or a file).
    pub fn load_from(source: &ConfigSource) -> Result<Config, ConfigError> {
        match source {
            ConfigSource::Embedded => Config::parse(EMBEDDED_DEFAULT, ConfigSource::Embedded),
            ConfigSource::File(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| DocError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Config::parse(&text, ConfigSource::File(p.to_path_buf()))
            }
        }
    }

    pub fn parse(text: &str, source: ConfigSource) -> Result<Config, ConfigError> {
        let doc = Doc {
            text,
            label: source.to_string(),
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| doc.toml_error(&e))?;
        Ok(Validator {
            doc: &doc,
            source: &source,
            maps: RefCell::default(),
        }
        .config(raw)?)
    }

    /// Folder that relative paths in the file are relative to.
    pub fn base_dir(&self) -> PathBuf {
        match &self.source {
            ConfigSource::File(p) => p.parent().map(Path::to_path_buf).unwrap_or_default(),
            ConfigSource::Embedded => locate::embedded_base().unwrap_or_default(),
        }
    }

    pub fn server(&self, name: &str) -> Result<&Server, ConfigError> {
        self.servers
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ConfigError::UnknownServer {
                name: name.to_string(),
                known: join_names(self.servers.iter().map(|s| s.name.as_str())),
            })
    }

    pub fn site(&self, name: &str) -> Result<&Site, ConfigError> {
        self.sites
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ConfigError::UnknownSite {
                name: name.to_string(),
                known: join_names(self.sites.iter().map(|s| s.name.as_str())),
            })
    }

    /// The sites named (all when none are), in the order asked; unknown names are an error.
    pub fn select_sites(&self, names: &[String]) -> Result<Vec<&Site>, ConfigError> {
        if names.is_empty() {
            return Ok(self.sites.iter().collect());
        }
        names.iter().map(|n| self.site(n)).collect()
    }

    /// Every (site, server) pair to work on: the sites named (all when none
    /// are), each on those of its servers that are named (all when none are).
    pub fn site_servers(
        &self,
        sites: &[String],
        servers: &[String],
    ) -> Result<Vec<(&Site, &Server)>, ConfigError> {
        let servers = self.select_servers(servers)?;
        Ok(self
            .select_sites(sites)?
            .into_iter()
            .flat_map(|site| {
                servers
                    .iter()
                    .filter(|s| site.servers.contains(&s.name))
                    .map(move |s| (site, *s))
            })
            .collect())
    }

    /// The servers named (all when none are); unknown names are an error.
    pub fn select_servers(&self, names: &[String]) -> Result<Vec<&Server>, ConfigError> {
        if names.is_empty() {
            return Ok(self.servers.iter().collect());
        }
        names.iter().map(|n| self.server(n)).collect()
    }
}

fn join_names<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_fuzz_crash_quote_then_a_comment_with_a_wide_char() {
        // fuzz/artifacts/config/crash-48882753…: `' #Ns\u{fffb}= `
        let text = "' #Ns\u{fffb}= ";
        assert!(Config::parse(text, ConfigSource::File("fuzz.toml".into())).is_err());
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, ConfigSource::File(PathBuf::from("t.toml")))
    }

    #[test]
    fn config_admin_url_is_administrations_own_login() {
        let servers = "[servers.a]\nurl = \"postgres://runtime@db:5432\"\npassword_file = \"r.pw\"\nadmin_url = \"postgres://postgres@db:5433\"\nadmin_password_env = \"ADMIN_PW\"\n";
        let site = "[[sites]]\nname = \"S\"\nbanks = [{ id = 1, racks = 1 }]\n";
        let c = parse(&format!("{servers}{site}")).unwrap();
        let (s, admin) = (&c.servers[0], c.servers[0].for_admin());
        assert_eq!((s.user.as_str(), s.port), ("runtime", 5432));
        assert_eq!(
            (admin.user.as_str(), admin.port, &admin.password),
            ("postgres", 5433, &PasswordSource::Env("ADMIN_PW".into()))
        );
        let plain = parse(&format!(
            "[servers.a]\nurl = \"postgres://runtime@db\"\n{site}"
        ))
        .unwrap();
        assert_eq!(plain.servers[0].for_admin().user, "runtime");
        let orphan = parse(&format!(
            "[servers.a]\nurl = \"postgres://runtime@db\"\nadmin_password_file = \"x\"\n{site}"
        ))
        .unwrap_err()
        .to_string();
        assert!(orphan.contains("servers.a.admin_url"), "{orphan}");
    }

    #[test]
    fn config_embedded_default_is_the_reference_fleet() {
        let c = Config::load(None).unwrap();
        let shape: Vec<_> = c
            .sites
            .iter()
            .map(|s| {
                (
                    s.name.as_str(),
                    s.banks.iter().map(|b| b.racks.len()).collect::<Vec<_>>(),
                )
            })
            .collect();
        assert_eq!(
            shape,
            vec![
                ("ESS_Operating_Site1", vec![8]),
                ("ESS_Operating_Site2", vec![9, 8]),
                ("ESS_Operating_Site3", vec![11]),
                ("ESS_Operating_Site4", vec![9]),
            ]
        );
        assert_eq!(
            c.servers
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            ["local", "gcp"]
        );
        let s2 = c.site("ESS_Operating_Site2").unwrap();
        assert_eq!(
            (s2.timezone, s2.sample_interval_secs, s2.rack_count()),
            (chrono_tz::Asia::Seoul, 1, 17)
        );
        assert_eq!(
            s2.loss,
            LossThresholds {
                warning_pct: 2.0,
                critical_pct: 5.0
            }
        );
        assert!(c.redis.is_some());
        // The shipped file spells out the defaults, so it documents them truly.
        assert_eq!(c.cache.periods, CachePeriod::defaults());
        assert_eq!(c.cache.limits, default_limits());
        assert_eq!(
            (c.cache.recheck_secs, c.cache.source.as_str()),
            (900, "local")
        );
        assert_eq!(c.modbus.timeout, Duration::from_millis(500));
        assert_eq!(
            c.site("ESS_Operating_Site3")
                .unwrap()
                .endpoint("pcs")
                .unwrap()
                .addr,
            "127.0.0.1:15042"
        );
    }

    #[test]
    fn config_device_ids_fit_smallint() {
        let site = |banks: &str| {
            format!(
                "[servers.a]\nurl = \"postgres://u@h\"\n[[sites]]\nname = \"s\"\nbanks = [{banks}]\n"
            )
        };
        let e = parse(&site("{ id = 40000, racks = 1 }"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("bank ids are 1 to 32767"), "{e}");
        let e = parse(&site("{ id = 1, racks = 40000 }"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 to 32767 racks"), "{e}");
        assert!(parse(&site("{ id = 32767, racks = 2 }")).is_ok());
    }

    #[test]
    fn config_error_points_at_line_and_column() {
        let text = "[servers.a]\nurl = \"postgres://u@h\"\n[[sites]]\nname = \"s\"\nbanks = [{ id = 1, racks = 0 }]\n";
        let e = parse(text).unwrap_err().to_string();
        assert_eq!(
            e,
            "t.toml:5:28: key `sites[0].banks[0].racks`: a bank has 1 to 32767 racks (rack ids are smallint), got 0"
        );
    }
}
