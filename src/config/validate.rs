//! Validation, section by section: every value of the raw file is checked
//! and resolved (paths against the file's folder, register maps loaded,
//! defaults filled in) into the [`Config`](super::Config) the rest of essops
//! uses; each refusal names the file, line, column and key.

use super::raw::*;
use super::*;

pub(super) struct Validator<'a> {
    pub(super) doc: &'a Doc<'a>,
    pub(super) source: &'a ConfigSource,
    /// Register maps by path, loaded once however many sites name them.
    pub(super) maps: RefCell<BTreeMap<String, Arc<RegisterMap>>>,
}

struct SiteDefaults {
    timezone: Tz,
    sample_interval_secs: u32,
    loss: LossThresholds,
}

impl Validator<'_> {
    pub(super) fn config(&self, mut raw: RawConfig) -> Result<Config, DocError> {
        let defaults = self.defaults(&raw.defaults)?;
        let cache = self.cache(raw.cache.as_ref(), &servers_first_name(&raw))?;
        let mib = |v: &Option<Spanned<u64>>, default: u64| -> u64 {
            v.as_ref()
                .map_or(default, |v| *v.get_ref())
                .saturating_mul(1 << 20)
        };
        let spool_limits = SpoolSettings {
            max_bytes: mib(&raw.spool_max_mb, 10_240),
            min_free_bytes: mib(&raw.spool_min_free_mb, 1_024),
        };
        let raw_modbus = raw.modbus.take().unwrap_or_default();
        let modbus = self.modbus(&raw_modbus)?;
        let default_map =
            self.register_map(raw_modbus.register_map.as_ref(), "modbus.register_map")?;
        let servers = self.servers(&raw)?;
        let sites = self.sites(&raw, &defaults, &servers, &default_map)?;
        if !servers.iter().any(|s| s.name == cache.source) {
            let at = raw
                .cache
                .as_ref()
                .and_then(|c| c.source.as_ref())
                .map_or(0, |s| s.span().start);
            return Err(self.doc.error(
                at,
                "cache.source",
                format!(
                    "no server `{}` is configured (configured: {})",
                    cache.source,
                    join_names(servers.iter().map(|s| s.name.as_str()))
                ),
            ));
        }
        let redis = match &raw.redis {
            Some(r) => Some(Redis {
                url: self.redis_url(&r.url)?,
                ca_file: r.ca_file.as_ref().map(|f| self.path(f)),
                cluster: r.cluster.unwrap_or(false),
            }),
            None => None,
        };
        let history = HistorySettings {
            keep_days: raw
                .history
                .as_ref()
                .and_then(|h| h.keep_days.as_ref())
                .map(|d| *d.get_ref()),
        };
        let retention = self.retention(raw.retention.as_ref())?;
        let status = self.status(raw.status.as_ref())?;
        let kpi = self.kpi(raw.kpi.as_ref())?;
        Ok(Config {
            source: self.source.clone(),
            source_why: "given to the parser".into(),
            log_dir: PathBuf::from(raw.log_dir.unwrap_or_else(|| "logs".into())),
            log_keep_days: raw.log_keep_days.unwrap_or(14),
            lock_dir: raw.lock_dir.map(PathBuf::from),
            spool_dir: PathBuf::from(raw.spool_dir.unwrap_or_else(|| "spool".into())),
            spool_limits,
            modbus,
            cache,
            redis,
            history,
            retention,
            status,
            kpi,
            servers,
            sites,
        })
    }

    /// `[kpi]`, each value defaulted alone; a warning past its critical
    /// (in the figure's own direction) is refused.
    fn kpi(&self, raw: Option<&RawKpi>) -> Result<KpiSettings, DocError> {
        let d = KpiSettings::default();
        let Some(raw) = raw else {
            return Ok(d);
        };
        let value = |v: &Option<Spanned<f64>>, key: &str, default: f64| match v {
            Some(x) if !x.get_ref().is_finite() || *x.get_ref() < 0.0 => {
                Err(self
                    .doc
                    .at(x, format!("kpi.{key}"), "a number of at least 0"))
            }
            Some(x) => Ok(*x.get_ref()),
            None => Ok(default),
        };
        // `higher_is_worse`: spreads; otherwise a lower value is worse.
        let pair = |w: &Option<Spanned<f64>>,
                    c: &Option<Spanned<f64>>,
                    name: &str,
                    default: (f64, f64),
                    higher_is_worse: bool| {
            let p = (
                value(w, &format!("{name}_warning{}", suffix(name)), default.0)?,
                value(c, &format!("{name}_critical{}", suffix(name)), default.1)?,
            );
            let inverted = match higher_is_worse {
                true => p.0 > p.1,
                false => p.0 < p.1,
            };
            match (inverted, w.as_ref().or(c.as_ref())) {
                (true, Some(at)) => Err(self.doc.at(
                    at,
                    format!("kpi.{name}_warning{}", suffix(name)),
                    format!(
                        "the warning threshold ({}) is past the critical one ({})",
                        p.0, p.1
                    ),
                )),
                _ => Ok(p),
            }
        };
        let eol = value(&raw.soh_end_of_life, "soh_end_of_life", d.soh_end_of_life)?;
        if eol > 100.0 {
            let at = raw
                .soh_end_of_life
                .as_ref()
                .expect("a value above 100 was given");
            return Err(self
                .doc
                .at(at, "kpi.soh_end_of_life", "a percentage, 0 to 100"));
        }
        Ok(KpiSettings {
            soh_end_of_life: eol,
            cell_spread_mv: pair(
                &raw.cell_spread_warning_mv,
                &raw.cell_spread_critical_mv,
                "cell_spread",
                d.cell_spread_mv,
                true,
            )?,
            temp_spread_c: pair(
                &raw.temp_spread_warning_c,
                &raw.temp_spread_critical_c,
                "temp_spread",
                d.temp_spread_c,
                true,
            )?,
            rte_pct: pair(
                &raw.rte_warning_pct,
                &raw.rte_critical_pct,
                "rte",
                d.rte_pct,
                false,
            )?,
            availability_pct: pair(
                &raw.availability_warning_pct,
                &raw.availability_critical_pct,
                "availability",
                d.availability_pct,
                false,
            )?,
            soh_eol_days: pair(
                &raw.soh_eol_warning_days,
                &raw.soh_eol_critical_days,
                "soh_eol",
                d.soh_eol_days,
                false,
            )?,
        })
    }

    /// `[retention]`: each a whole number of days, at least 1.
    fn retention(&self, raw: Option<&RawRetention>) -> Result<RetentionSettings, DocError> {
        let days = |v: Option<&Spanned<u32>>, key: &str| match v {
            Some(d) if *d.get_ref() == 0 => {
                Err(self
                    .doc
                    .at(d, key, "at least 1 day (leave it out to keep forever)"))
            }
            Some(d) => Ok(Some(*d.get_ref())),
            None => Ok(None),
        };
        let Some(raw) = raw else {
            return Ok(RetentionSettings::default());
        };
        Ok(RetentionSettings {
            raw_days: days(raw.raw_days.as_ref(), "retention.raw_days")?,
            rollup_1m_days: days(raw.rollup_1m_days.as_ref(), "retention.rollup_1m_days")?,
            rollup_1h_days: days(raw.rollup_1h_days.as_ref(), "retention.rollup_1h_days")?,
        })
    }

    /// `[status]`, each limit defaulted alone; a warning past its critical is refused.
    fn status(&self, raw: Option<&RawStatus>) -> Result<StatusSettings, DocError> {
        let defaults = StatusSettings::default();
        let Some(raw) = raw else {
            return Ok(defaults);
        };
        let age = |v: &Option<Spanned<String>>, key: &str, default: Duration| match v {
            Some(v) => crate::window::parse_std_duration(v.get_ref())
                .map_err(|e| self.doc.at(v, key, e.to_string())),
            None => Ok(default),
        };
        let pair =
            |w: &Option<Spanned<String>>, c: &Option<Spanned<String>>, name: &str, d: AgeLimits| {
                let limits = AgeLimits {
                    warning: age(w, &format!("status.{name}_warning"), d.warning)?,
                    critical: age(c, &format!("status.{name}_critical"), d.critical)?,
                };
                match (limits.warning > limits.critical, w.as_ref().or(c.as_ref())) {
                    (true, Some(at)) => Err(self.doc.at(
                        at,
                        format!("status.{name}_warning"),
                        format!(
                            "the warning age ({} s) is past the critical one ({} s)",
                            limits.warning.as_secs(),
                            limits.critical.as_secs()
                        ),
                    )),
                    _ => Ok(limits),
                }
            };
        Ok(StatusSettings {
            heartbeat: pair(
                &raw.heartbeat_warning,
                &raw.heartbeat_critical,
                "heartbeat",
                defaults.heartbeat,
            )?,
            sample_age: pair(
                &raw.sample_age_warning,
                &raw.sample_age_critical,
                "sample_age",
                defaults.sample_age,
            )?,
            reconcile: pair(
                &raw.reconcile_warning,
                &raw.reconcile_critical,
                "reconcile",
                defaults.reconcile,
            )?,
            cache_age: pair(
                &raw.cache_age_warning,
                &raw.cache_age_critical,
                "cache_age",
                defaults.cache_age,
            )?,
            spool_critical_bytes: raw
                .spool_critical_mb
                .as_ref()
                .map_or(defaults.spool_critical_bytes, |v| {
                    v.get_ref().saturating_mul(1 << 20)
                }),
        })
    }

    /// The `[servers.NAME]` tables in file order, not the map's sorted
    /// order: the first server named is the first of a reconcile pair.
    fn servers(&self, raw: &RawConfig) -> Result<Vec<Server>, DocError> {
        let mut raw_servers: Vec<_> = raw.servers.iter().collect();
        raw_servers.sort_by_key(|(name, _)| name.span().start);
        let servers = raw_servers
            .into_iter()
            .map(|(name, s)| self.server(name, s))
            .collect::<Result<Vec<_>, _>>()?;
        match servers.is_empty() {
            true => Err(self.doc.error(
                0,
                "servers",
                "at least one [servers.NAME] table is required",
            )),
            false => Ok(servers),
        }
    }

    /// The `[[sites]]`, each name once.
    fn sites(
        &self,
        raw: &RawConfig,
        defaults: &SiteDefaults,
        servers: &[Server],
        default_map: &Arc<RegisterMap>,
    ) -> Result<Vec<Site>, DocError> {
        if raw.sites.is_empty() {
            return Err(self
                .doc
                .error(0, "sites", "at least one [[sites]] entry is required"));
        }
        let mut seen = BTreeSet::new();
        let mut sites = Vec::new();
        for (i, s) in raw.sites.iter().enumerate() {
            let site = self.site(i, s, defaults, servers, default_map)?;
            if !seen.insert(site.name.clone()) {
                return Err(self.doc.at(
                    &s.name,
                    format!("sites[{i}].name"),
                    format!("duplicate site name `{}`", site.name),
                ));
            }
            sites.push(site);
        }
        Ok(sites)
    }

    fn cache(&self, c: Option<&RawCache>, first_server: &str) -> Result<CacheSettings, DocError> {
        let Some(c) = c else {
            return Ok(CacheSettings {
                source: first_server.to_string(),
                recheck_secs: 900,
                outlier_factor: 1.5,
                periods: CachePeriod::defaults(),
                limits: default_limits(),
            });
        };
        let source = match &c.source {
            Some(s) => s.get_ref().clone(),
            None => first_server.to_string(),
        };
        let recheck_secs = match &c.recheck {
            Some(v) => self.secs(v, "cache.recheck")?,
            None => 900,
        };
        let outlier_factor = match &c.outlier_factor {
            Some(v) if !(*v.get_ref() > 1.0 && v.get_ref().is_finite()) => {
                return Err(self.doc.at(
                    v,
                    "cache.outlier_factor",
                    "a factor above 1 is expected (1.5: 50 % away from the others)",
                ));
            }
            Some(v) => *v.get_ref(),
            None => 1.5,
        };
        let periods = match &c.periods {
            None => CachePeriod::defaults(),
            Some(list) => {
                let mut out: Vec<CachePeriod> = Vec::new();
                for (i, p) in list.iter().enumerate() {
                    out.push(self.cache_period(i, p, &out)?);
                }
                out
            }
        };
        Ok(CacheSettings {
            source,
            recheck_secs,
            outlier_factor,
            periods,
            limits: self.cache_limits(c)?,
        })
    }

    /// A duration such as `15m` in seconds.
    fn secs(&self, v: &Spanned<String>, key: &str) -> Result<i64, DocError> {
        crate::window::parse_duration(v.get_ref())
            .map(|d| d.num_seconds())
            .map_err(|e| self.doc.at(v, key, e.to_string()))
    }

    /// One `[[cache.periods]]` entry; `before` are the entries already read.
    fn cache_period(
        &self,
        i: usize,
        p: &RawPeriod,
        before: &[CachePeriod],
    ) -> Result<CachePeriod, DocError> {
        let key = |k: &str| format!("cache.periods[{i}].{k}");
        let name = p.name.get_ref();
        if !is_plain_name(name) || before.iter().any(|o| &o.name == name) {
            return Err(self.doc.at(
                &p.name,
                key("name"),
                "period names are distinct and use only letters, digits, '_' and '-'",
            ));
        }
        let (span, bucket, ttl) = (
            self.secs(&p.span, &key("span"))?,
            self.secs(&p.bucket, &key("bucket"))?,
            self.secs(&p.ttl, &key("ttl"))?,
        );
        if bucket < 60
            || bucket % 60 != 0
            || (bucket < 86_400 && 86_400 % bucket != 0)
            || (bucket > 86_400)
        {
            return Err(self.doc.at(
                &p.bucket,
                key("bucket"),
                "a bucket is whole minutes that divide a day, or 1d",
            ));
        }
        if span < bucket || span % bucket != 0 {
            return Err(self.doc.at(
                &p.span,
                key("span"),
                "the span must be a whole number of buckets",
            ));
        }
        if ttl < 1 {
            return Err(self
                .doc
                .at(&p.ttl, key("ttl"), "a TTL of at least 1 s is expected"));
        }
        Ok(CachePeriod::new(name, span, bucket, ttl))
    }

    /// The defaults, with `[cache.limits]` laid over them.
    fn cache_limits(&self, c: &RawCache) -> Result<BTreeMap<String, (f64, f64)>, DocError> {
        let mut limits = default_limits();
        for (col, v) in c.limits.iter().flatten() {
            let [lo, hi] = *v.get_ref();
            if lo >= hi || lo.is_nan() || hi.is_nan() {
                return Err(self.doc.at(
                    v,
                    format!("cache.limits.{col}"),
                    format!("[min, max] with min below max is expected, got [{lo}, {hi}]"),
                ));
            }
            limits.insert(col.clone(), (lo, hi));
        }
        Ok(limits)
    }

    fn modbus(&self, m: &RawModbus) -> Result<ModbusSettings, DocError> {
        let timeout_ms = match &m.timeout_ms {
            Some(v) if !(10..=60_000).contains(v.get_ref()) => {
                return Err(self.doc.at(
                    v,
                    "modbus.timeout_ms",
                    format!(
                        "a timeout of 10 to 60000 ms is expected, got {}",
                        v.get_ref()
                    ),
                ));
            }
            Some(v) => *v.get_ref(),
            None => 500,
        };
        let connections = match &m.connections {
            Some(v) if *v.get_ref() == 0 => {
                return Err(self.doc.at(
                    v,
                    "modbus.connections",
                    "at least 1 connection per endpoint",
                ));
            }
            Some(v) => usize::from(*v.get_ref()),
            None => 8,
        };
        let pipeline = match &m.pipeline {
            Some(v) if !(1..=64).contains(v.get_ref()) => {
                return Err(self.doc.at(
                    v,
                    "modbus.pipeline",
                    format!(
                        "1 to 64 requests in flight per connection are expected, got {}",
                        v.get_ref()
                    ),
                ));
            }
            Some(v) => usize::from(*v.get_ref()),
            None => 8,
        };
        let breaker_after = match &m.breaker_after {
            Some(v) if *v.get_ref() == 0 => {
                return Err(self.doc.at(v, "modbus.breaker_after", "at least 1 failure"));
            }
            Some(v) => *v.get_ref(),
            None => 3,
        };
        let stale_after = match &m.stale_after {
            Some(v) => crate::window::parse_std_duration(v.get_ref())
                .map_err(|e| self.doc.at(v, "modbus.stale_after", e.to_string()))?,
            None => Duration::from_secs(600),
        };
        Ok(ModbusSettings {
            timeout: Duration::from_millis(timeout_ms),
            connections,
            pipeline,
            breaker_after,
            stale_after,
        })
    }

    /// The map a path names (relative to the config file), or the built-in one.
    fn register_map(
        &self,
        path: Option<&Spanned<String>>,
        key: &str,
    ) -> Result<Arc<RegisterMap>, DocError> {
        let name = path.map_or(String::new(), |p| p.get_ref().clone());
        if let Some(m) = self.maps.borrow().get(&name) {
            return Ok(m.clone());
        }
        let map = match path {
            None => RegisterMap::builtin(),
            // A reserved word: a map file of that name is written `./sunspec`.
            Some(p) if p.get_ref() == crate::modbus::sunspec::MAP_NAME => {
                crate::modbus::sunspec::register_map()
            }
            Some(p) => {
                let base = match self.source {
                    ConfigSource::File(f) => f.parent().map(Path::to_path_buf).unwrap_or_default(),
                    ConfigSource::Embedded => PathBuf::new(),
                };
                let file = base.join(p.get_ref());
                if !file.is_file() {
                    return Err(self.doc.at(
                        p,
                        key,
                        format!("no register map file at {}", file.display()),
                    ));
                }
                RegisterMap::load(&file)?
            }
        };
        let map = Arc::new(map);
        self.maps.borrow_mut().insert(name, map.clone());
        Ok(map)
    }

    fn endpoints(
        &self,
        i: usize,
        modbus: Option<&Spanned<BTreeMap<String, Spanned<String>>>>,
    ) -> Result<Vec<Endpoint>, DocError> {
        let Some(modbus) = modbus else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (name, addr) in modbus.get_ref() {
            self.host_port(addr, &format!("sites[{i}].modbus.{name}"), 502)?;
            out.push(Endpoint {
                name: name.clone(),
                addr: addr.get_ref().clone(),
            });
        }
        Ok(out)
    }

    fn defaults(&self, d: &RawDefaults) -> Result<SiteDefaults, DocError> {
        let timezone = match &d.timezone {
            Some(tz) => self.timezone(tz, "defaults.timezone")?,
            None => chrono_tz::Asia::Seoul,
        };
        let sample_interval_secs = match &d.sample_interval_secs {
            Some(v) => self.interval(v, "defaults.sample_interval_secs")?,
            None => 1,
        };
        let loss = self.thresholds(
            LossThresholds {
                warning_pct: 2.0,
                critical_pct: 5.0,
            },
            d.loss_warning_pct.as_ref(),
            d.loss_critical_pct.as_ref(),
            "defaults",
        )?;
        Ok(SiteDefaults {
            timezone,
            sample_interval_secs,
            loss,
        })
    }

    fn timezone(&self, tz: &Spanned<String>, key: &str) -> Result<Tz, DocError> {
        Tz::from_str(tz.get_ref()).map_err(|_| {
            self.doc.at(
                tz,
                key,
                format!(
                    "unknown time zone `{}`; expected an IANA name such as Asia/Seoul",
                    tz.get_ref()
                ),
            )
        })
    }

    fn interval(&self, v: &Spanned<u32>, key: &str) -> Result<u32, DocError> {
        match *v.get_ref() {
            0 => Err(self
                .doc
                .at(v, key, "the sample interval must be at least 1 second")),
            n if 86_400 % n != 0 => Err(self.doc.at(
                v,
                key,
                format!("{n} s does not divide a day evenly; use a divisor of 86400"),
            )),
            n => Ok(n),
        }
    }

    fn thresholds(
        &self,
        base: LossThresholds,
        warning: Option<&Spanned<f64>>,
        critical: Option<&Spanned<f64>>,
        scope: &str,
    ) -> Result<LossThresholds, DocError> {
        let pct = |v: Option<&Spanned<f64>>, name: &str, fallback: f64| -> Result<f64, DocError> {
            let Some(v) = v else { return Ok(fallback) };
            let x = *v.get_ref();
            if (0.0..=100.0).contains(&x) {
                Ok(x)
            } else {
                Err(self.doc.at(
                    v,
                    format!("{scope}.{name}"),
                    format!("a percentage between 0 and 100 is expected, got {x}"),
                ))
            }
        };
        let t = LossThresholds {
            warning_pct: pct(warning, "loss_warning_pct", base.warning_pct)?,
            critical_pct: pct(critical, "loss_critical_pct", base.critical_pct)?,
        };
        if t.warning_pct > t.critical_pct {
            let at = warning.or(critical).map_or(0, |v| v.span().start);
            return Err(self.doc.error(
                at,
                format!("{scope}.loss_warning_pct"),
                format!(
                    "the warning threshold ({} %) is above the critical one ({} %)",
                    t.warning_pct, t.critical_pct
                ),
            ));
        }
        Ok(t)
    }

    fn server(&self, name: &Spanned<String>, s: &RawServer) -> Result<Server, DocError> {
        let key = format!("servers.{}", name.get_ref());
        if !is_plain_name(name.get_ref()) {
            return Err(self.doc.at(
                name,
                &key,
                "server names may use only letters, digits, '_' and '-'",
            ));
        }
        let url = self.login_url(&s.url, &format!("{key}.url"))?;
        let password = self.password_source(
            (&s.password_env, &s.password_file),
            (
                &format!("{key}.password_env"),
                "password_env or password_file",
            ),
        )?;
        let admin = match &s.admin_url {
            Some(a) => {
                let admin = self.login_url(a, &format!("{key}.admin_url"))?;
                Some(AdminLogin {
                    host: host_of(&admin),
                    port: admin.port().unwrap_or(5432),
                    user: admin.username().to_string(),
                    password: self.password_source(
                        (&s.admin_password_env, &s.admin_password_file),
                        (
                            &format!("{key}.admin_password_env"),
                            "admin_password_env or admin_password_file",
                        ),
                    )?,
                })
            }
            None => {
                if let Some(given) = s
                    .admin_password_env
                    .as_ref()
                    .or(s.admin_password_file.as_ref())
                {
                    return Err(self.doc.at(
                        given,
                        format!("{key}.admin_url"),
                        "an admin password needs admin_url (postgres://ADMIN_USER@HOST:PORT)",
                    ));
                }
                None
            }
        };
        let tls = self.tls(&key, s)?;
        let read = match &s.read_url {
            Some(r) => Some(self.read_replica(r, &format!("{key}.read_url"), url.username())?),
            None => None,
        };
        Ok(Server {
            tls,
            read,
            admin,
            name: name.get_ref().clone(),
            host: host_of(&url),
            port: url.port().unwrap_or(5432),
            user: url.username().to_string(),
            password,
        })
    }

    /// A login URL: postgres://USER@HOST:PORT, with a user and no database.
    fn login_url(&self, v: &Spanned<String>, key: &str) -> Result<Url, DocError> {
        let url = self.url(
            v,
            key,
            &["postgres", "postgresql"],
            "postgres://USER@HOST:PORT",
        )?;
        if url.username().is_empty() {
            return Err(self.doc.at(
                v,
                key.to_string(),
                "the URL needs a user name: postgres://USER@HOST:PORT",
            ));
        }
        if url.path().len() > 1 {
            return Err(self.doc.at(
                v,
                key.to_string(),
                "leave the database out of the URL; each site names its own database",
            ));
        }
        Ok(url)
    }

    /// Where a password comes from: an environment variable, a file, or
    /// libpq's PGPASSWORD and ~/.pgpass.
    fn password_source(
        &self,
        (env, file): (&Option<Spanned<String>>, &Option<Spanned<String>>),
        (env_key, keys): (&str, &str),
    ) -> Result<PasswordSource, DocError> {
        match (env, file) {
            (Some(a), Some(_)) => {
                Err(self
                    .doc
                    .at(a, env_key.to_string(), format!("give {keys}, not both")))
            }
            (Some(env), None) => Ok(PasswordSource::Env(env.get_ref().clone())),
            (None, Some(file)) => Ok(PasswordSource::File(PathBuf::from(file.get_ref()))),
            (None, None) => Ok(PasswordSource::Standard),
        }
    }

    /// A server's `read_url`: the same user as its `url`, no database.
    fn read_replica(
        &self,
        r: &Spanned<String>,
        key: &str,
        user: &str,
    ) -> Result<ReadReplica, DocError> {
        let replica = self.url(
            r,
            key,
            &["postgres", "postgresql"],
            "postgres://USER@HOST:PORT",
        )?;
        if replica.username() != user || replica.path().len() > 1 {
            return Err(self.doc.at(
                r,
                key,
                "a read replica takes the same user as url, and no database: postgres://USER@HOST:PORT",
            ));
        }
        Ok(ReadReplica {
            host: replica
                .host_str()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_string(),
            port: replica.port().unwrap_or(5432),
        })
    }

    /// A path from the file, relative to the config's folder (read when used).
    fn path(&self, v: &Spanned<String>) -> PathBuf {
        let base = match self.source {
            ConfigSource::File(f) => f.parent().map(Path::to_path_buf).unwrap_or_default(),
            ConfigSource::Embedded => super::locate::embedded_base().unwrap_or_default(),
        };
        base.join(v.get_ref())
    }

    /// sslmode and certificates: from the file, else libpq's PGSSL* variables, else `prefer`.
    fn tls(&self, key: &str, s: &RawServer) -> Result<Tls, DocError> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let mode = match (&s.sslmode, env("PGSSLMODE")) {
            (Some(m), _) => SslMode::parse(m.get_ref()).ok_or_else(|| {
                self.doc.at(
                    m,
                    format!("{key}.sslmode"),
                    format!(
                        "unknown sslmode `{}`; expected disable, prefer, require, verify-ca or verify-full",
                        m.get_ref()
                    ),
                )
            })?,
            (None, Some(m)) => SslMode::parse(&m).ok_or_else(|| {
                self.doc.error(0, format!("{key}.sslmode"), format!("PGSSLMODE=`{m}` is not an sslmode"))
            })?,
            (None, None) => SslMode::Prefer,
        };
        let file = |v: &Option<Spanned<String>>, var: &str| -> Option<PathBuf> {
            match v {
                Some(v) => Some(self.path(v)),
                None => env(var).map(PathBuf::from),
            }
        };
        let tls = Tls {
            mode,
            ca_file: file(&s.ca_file, "PGSSLROOTCERT"),
            client_cert: file(&s.client_cert, "PGSSLCERT"),
            client_key: file(&s.client_key, "PGSSLKEY"),
        };
        let at = s
            .sslmode
            .as_ref()
            .map_or(s.url.span().start, |m| m.span().start);
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && tls.ca_file.is_none() {
            return Err(self.doc.error(
                at,
                format!("{key}.sslmode"),
                "verify-ca and verify-full check the server's certificate against a CA: give ca_file (or PGSSLROOTCERT)",
            ));
        }
        if tls.client_cert.is_some() != tls.client_key.is_some() {
            return Err(self.doc.error(
                at,
                format!("{key}.client_cert"),
                "give client_cert and client_key together",
            ));
        }
        Ok(tls)
    }

    fn redis_url(&self, url: &Spanned<String>) -> Result<Url, DocError> {
        self.url(
            url,
            "redis.url",
            &["redis", "rediss"],
            "redis://HOST:PORT/DB",
        )
    }

    /// Parses a URL, checking its scheme and refusing a literal password.
    fn url(
        &self,
        raw: &Spanned<String>,
        key: &str,
        schemes: &[&str],
        shape: &str,
    ) -> Result<Url, DocError> {
        let url = Url::parse(raw.get_ref()).map_err(|e| {
            self.doc
                .at(raw, key, format!("not a valid URL ({e}); expected {shape}"))
        })?;
        if !schemes.contains(&url.scheme()) {
            return Err(self.doc.at(
                raw,
                key,
                format!(
                    "URL scheme `{}` is not supported; expected {shape}",
                    url.scheme()
                ),
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(self
                .doc
                .at(raw, key, format!("the URL has no host; expected {shape}")));
        }
        if url.password().is_some() {
            return Err(self.doc.at(
                raw,
                key,
                "a password in the config file is refused; put it in an environment variable (password_env) or a file (password_file)",
            ));
        }
        if url.query().is_some() {
            return Err(self
                .doc
                .at(raw, key, "URL parameters are not supported here"));
        }
        Ok(url)
    }

    fn site(
        &self,
        i: usize,
        s: &RawSite,
        d: &SiteDefaults,
        servers: &[Server],
        default_map: &Arc<RegisterMap>,
    ) -> Result<Site, DocError> {
        let key = |k: &str| format!("sites[{i}].{k}");
        let name = s.name.get_ref();
        if !is_plain_name(name) || name.len() > 63 {
            return Err(self.doc.at(
                &s.name,
                key("name"),
                "site names may use only letters, digits, '_' and '-', at most 63 bytes",
            ));
        }
        let database = self.database(s, &key("database"))?;
        let site_servers = self.site_servers(s, servers, &key("servers"))?;
        let timezone = match &s.timezone {
            Some(tz) => self.timezone(tz, &key("timezone"))?,
            None => d.timezone,
        };
        let sample_interval_secs = match &s.sample_interval_secs {
            Some(v) => self.interval(v, &key("sample_interval_secs"))?,
            None => d.sample_interval_secs,
        };
        let loss = self.thresholds(
            d.loss,
            s.loss_warning_pct.as_ref(),
            s.loss_critical_pct.as_ref(),
            &format!("sites[{i}]"),
        )?;
        let register_map = match &s.register_map {
            Some(p) => self.register_map(Some(p), &key("register_map"))?,
            None => default_map.clone(),
        };
        let site = Site {
            name: name.clone(),
            database,
            servers: site_servers,
            timezone,
            sample_interval_secs,
            loss,
            banks: self.banks(i, &s.banks, &register_map)?,
            pcs: self.pcs(i, s.pcs.as_ref(), &register_map)?,
            endpoints: self.endpoints(i, s.modbus.as_ref())?,
            register_map,
            metrics_listen: match &s.metrics_listen {
                Some(addr) => Some(self.host_port(addr, &key("metrics_listen"), 9464)?),
                None => None,
            },
            rated_kwh: match &s.rated_kwh {
                Some(v) if !(v.get_ref().is_finite() && *v.get_ref() > 0.0) => {
                    return Err(self.doc.at(v, key("rated_kwh"), "a positive number of kWh"));
                }
                Some(v) => Some(*v.get_ref()),
                None => None,
            },
        };
        if let Some(modbus) = &s.modbus {
            crate::modbus::map::check_devices(
                &site.register_map,
                |spec| site.placed_devices(spec),
                |e| site.endpoint(e).map(|e| e.addr.clone()),
            )
            .map_err(|m| {
                self.doc.at(
                    modbus,
                    key("modbus"),
                    format!("{m} (register map {})", site.register_map.label),
                )
            })?;
        }
        Ok(site)
    }

    /// `addr` when it is HOST:PORT; `example_port` is the example's port.
    fn host_port(
        &self,
        addr: &Spanned<String>,
        key: &str,
        example_port: u16,
    ) -> Result<String, DocError> {
        let ok = addr.get_ref().rsplit_once(':').is_some_and(|(host, port)| {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
        });
        match ok {
            true => Ok(addr.get_ref().clone()),
            false => Err(self.doc.at(
                addr,
                key.to_string(),
                format!(
                    "`{}` is not HOST:PORT (for example 127.0.0.1:{example_port})",
                    addr.get_ref()
                ),
            )),
        }
    }

    /// The site's database name; the site's name when not given.
    fn database(&self, s: &RawSite, key: &str) -> Result<String, DocError> {
        match &s.database {
            Some(db)
                if db.get_ref().is_empty()
                    || db.get_ref().len() > 63
                    || db.get_ref().contains('\0') =>
            {
                Err(self.doc.at(db, key, "a database name is 1 to 63 bytes"))
            }
            Some(db) => Ok(db.get_ref().clone()),
            None => Ok(s.name.get_ref().clone()),
        }
    }

    /// The servers that keep the site's data; every configured one when not given.
    fn site_servers(
        &self,
        s: &RawSite,
        servers: &[Server],
        key: &str,
    ) -> Result<Vec<String>, DocError> {
        let Some(list) = &s.servers else {
            return Ok(servers.iter().map(|s| s.name.clone()).collect());
        };
        list.iter()
            .map(|n| match servers.iter().any(|s| &s.name == n.get_ref()) {
                true => Ok(n.get_ref().clone()),
                false => Err(self.doc.at(
                    n,
                    key,
                    format!(
                        "no server `{}` is configured (configured: {})",
                        n.get_ref(),
                        join_names(servers.iter().map(|s| s.name.as_str()))
                    ),
                )),
            })
            .collect()
    }

    fn banks(
        &self,
        i: usize,
        banks: &Spanned<Vec<RawBank>>,
        map: &RegisterMap,
    ) -> Result<Vec<Bank>, DocError> {
        if banks.get_ref().is_empty() {
            return Err(self.doc.at(
                banks,
                format!("sites[{i}].banks"),
                "a site needs at least one bank",
            ));
        }
        let mut ids = BTreeSet::new();
        let mut out = Vec::new();
        for (j, b) in banks.get_ref().iter().enumerate() {
            let key = |k: &str| format!("sites[{i}].banks[{j}].{k}");
            let id = *b.id.get_ref();
            if id == 0 || id > MAX_DEVICE_ID {
                return Err(self.doc.at(
                    &b.id,
                    key("id"),
                    format!(
                        "bank ids are 1 to {MAX_DEVICE_ID} (device ids are smallint), got {id}"
                    ),
                ));
            }
            if !ids.insert(id) {
                return Err(self
                    .doc
                    .at(&b.id, key("id"), format!("duplicate bank id {id}")));
            }
            let own = DeviceOverride {
                endpoint: b.endpoint.as_ref().map(|e| e.get_ref().clone()),
                unit: b.unit.as_ref().map(|u| *u.get_ref()),
            };
            let described = map.table("bank").is_some() || map.table("rack").is_some();
            if let (Some(e), false) = (&b.endpoint, described) {
                return Err(self.doc.at(e, key("endpoint"), format!(
                    "the register map {} describes neither [bank] nor [rack], so the bank has no registers to read", map.label
                )));
            }
            out.push(Bank {
                id,
                racks: self.racks(&b.racks, &key("racks"))?,
                own,
            });
        }
        Ok(out)
    }

    /// `racks = N` (ids 1..N) or a list of rack ids (gaps allowed).
    fn racks(&self, racks: &Spanned<RawRacks>, key: &str) -> Result<Vec<u16>, DocError> {
        match racks.get_ref() {
            RawRacks::Count(n) if *n == 0 || *n > MAX_DEVICE_ID => Err(self.doc.at(
                racks,
                key,
                format!("a bank has 1 to {MAX_DEVICE_ID} racks (rack ids are smallint), got {n}"),
            )),
            RawRacks::Count(n) => Ok((1..=*n).collect()),
            RawRacks::Ids(ids) => {
                let set: BTreeSet<u16> = ids.iter().copied().collect();
                let bad = ids.iter().find(|&&r| r == 0 || r > MAX_DEVICE_ID);
                match (ids.is_empty(), bad, set.len() == ids.len()) {
                    (true, _, _) => Err(self.doc.at(racks, key, "a bank needs at least one rack")),
                    (_, Some(r), _) => Err(self.doc.at(
                        racks,
                        key,
                        format!("rack ids are 1 to {MAX_DEVICE_ID} (smallint), got {r}"),
                    )),
                    (_, _, false) => Err(self.doc.at(racks, key, "a rack id is listed twice")),
                    _ => Ok(set.into_iter().collect()),
                }
            }
        }
    }

    /// The site's PCS: as listed, or PCS 1 when the map describes a `[pcs]`
    /// (none when it does not).
    fn pcs(
        &self,
        i: usize,
        pcs: Option<&Spanned<Vec<Spanned<RawPcs>>>>,
        map: &RegisterMap,
    ) -> Result<Vec<Pcs>, DocError> {
        let described = map.table("pcs").is_some();
        let Some(pcs) = pcs else {
            // A SunSpec site lists its inverters: there is no PCS 1 to assume.
            return Ok(match described && !map.sunspec {
                true => vec![Pcs {
                    id: 1,
                    own: DeviceOverride::default(),
                }],
                false => Vec::new(),
            });
        };
        if !described && !pcs.get_ref().is_empty() {
            return Err(self.doc.at(
                pcs,
                format!("sites[{i}].pcs"),
                format!(
                    "the register map {} has no [pcs] table; remove `pcs` or describe the PCS registers in the map",
                    map.label
                ),
            ));
        }
        let mut ids = BTreeSet::new();
        let mut out = Vec::new();
        for (j, p) in pcs.get_ref().iter().enumerate() {
            let (id, own) = match p.get_ref() {
                RawPcs::Id(id) => (*id, DeviceOverride::default()),
                RawPcs::Device(d) => (
                    d.id,
                    DeviceOverride {
                        endpoint: d.endpoint.clone(),
                        unit: d.unit,
                    },
                ),
            };
            if id == 0 || id > MAX_DEVICE_ID || !ids.insert(id) {
                return Err(self.doc.at(
                    p,
                    format!("sites[{i}].pcs[{j}]"),
                    format!("PCS ids are distinct, 1 to {MAX_DEVICE_ID}, got {id}"),
                ));
            }
            out.push(Pcs { id, own });
        }
        out.sort_by_key(|p| p.id);
        Ok(out)
    }
}

/// Device ids are stored as smallint: a larger one would wrap.
const MAX_DEVICE_ID: u16 = i16::MAX as u16;

/// The first `[servers.NAME]` in file order (the cache's default source).
fn servers_first_name(raw: &RawConfig) -> String {
    raw.servers
        .keys()
        .min_by_key(|k| k.span().start)
        .map(|k| k.get_ref().clone())
        .unwrap_or_default()
}

/// A URL's host, without an IPv6 address's brackets.
fn host_of(url: &Url) -> String {
    url.host_str()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_string()
}

fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The unit ending of a `[kpi]` threshold's key: `cell_spread_warning_mv`.
fn suffix(name: &str) -> &'static str {
    match name {
        "cell_spread" => "_mv",
        "temp_spread" => "_c",
        "soh_eol" => "_days",
        _ => "_pct",
    }
}
