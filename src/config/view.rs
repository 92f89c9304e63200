//! The effective config as `key = value` lines (`essops config show`):
//! defaults filled in, paths resolved, secrets masked. The config holds no
//! password (only where to find one); a password in the Redis URL is masked.

use super::{Config, PasswordSource, Server, Site};
use crate::output::human_bytes;

/// Every setting, in file order, as (key, value).
pub fn settings(config: &Config) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut set = |k: &str, v: String| out.push((k.to_string(), v));
    let base = config.base_dir();
    set("source", config.source.to_string());
    set("log_dir", base.join(&config.log_dir).display().to_string());
    set(
        "lock_dir",
        match &config.lock_dir {
            Some(dir) => base.join(dir),
            None => base.join(&config.log_dir).join("locks"),
        }
        .display()
        .to_string(),
    );
    set(
        "spool_dir",
        base.join(&config.spool_dir).display().to_string(),
    );
    set("spool_max", human_bytes(config.spool_limits.max_bytes));
    set(
        "spool_min_free",
        human_bytes(config.spool_limits.min_free_bytes),
    );
    let m = &config.modbus;
    set("modbus.timeout_ms", m.timeout.as_millis().to_string());
    set("modbus.connections", m.connections.to_string());
    set("modbus.pipeline", m.pipeline.to_string());
    set("modbus.breaker_after", m.breaker_after.to_string());
    set(
        "modbus.stale_after",
        format!("{} s", m.stale_after.as_secs()),
    );
    set(
        "history.keep_days",
        config
            .history
            .keep_days
            .map_or("forever".into(), |d| d.to_string()),
    );
    let r = &config.retention;
    for (key, days) in [
        ("retention.raw_days", r.raw_days),
        ("retention.rollup_1m_days", r.rollup_1m_days),
        ("retention.rollup_1h_days", r.rollup_1h_days),
    ] {
        set(key, days.map_or("forever".into(), |d| d.to_string()));
    }
    let st = &config.status;
    for (name, limits) in [
        ("heartbeat", st.heartbeat),
        ("sample_age", st.sample_age),
        ("reconcile", st.reconcile),
        ("cache_age", st.cache_age),
    ] {
        set(
            &format!("status.{name}"),
            format!(
                "warning after {} s, critical after {} s",
                limits.warning.as_secs(),
                limits.critical.as_secs()
            ),
        );
    }
    set(
        "status.spool_critical",
        human_bytes(st.spool_critical_bytes),
    );
    let k = &config.kpi;
    set("kpi.soh_end_of_life", format!("{} %", k.soh_end_of_life));
    for (name, (w, c), higher_is_worse, unit) in [
        ("cell_spread", k.cell_spread_mv, true, "mV"),
        ("temp_spread", k.temp_spread_c, true, "°C"),
        ("rte", k.rte_pct, false, "%"),
        ("availability", k.availability_pct, false, "%"),
        ("soh_eol", k.soh_eol_days, false, "days"),
    ] {
        let side = if higher_is_worse { "from" } else { "below" };
        set(
            &format!("kpi.{name}"),
            format!("warning {side} {w} {unit}, critical {side} {c} {unit}"),
        );
    }
    if let Some(redis) = &config.redis {
        let mut url = redis.url.clone();
        if url.password().is_some() {
            let _ = url.set_password(Some("****"));
        }
        set("redis.url", url.to_string());
        set("redis.cluster", redis.cluster.to_string());
        let ca = redis.ca_file.as_ref().map(|p| p.display().to_string());
        set(
            "redis.ca_file",
            ca.unwrap_or_else(|| "(system roots)".into()),
        );
    }
    let c = &config.cache;
    set("cache.source", c.source.clone());
    set("cache.recheck", format!("{} s", c.recheck_secs));
    set("cache.outlier_factor", c.outlier_factor.to_string());
    for p in &c.periods {
        let v = format!(
            "span {} s, bucket {} s, ttl {} s",
            p.span_secs, p.bucket_secs, p.ttl_secs
        );
        set(&format!("cache.periods.{}", p.name), v);
    }
    for (col, (lo, hi)) in &c.limits {
        set(&format!("cache.limits.{col}"), format!("[{lo}, {hi}]"));
    }
    for server in &config.servers {
        out.extend(server_settings(server));
    }
    for site in &config.sites {
        out.extend(site_settings(site));
    }
    out
}

fn server_settings(s: &Server) -> Vec<(String, String)> {
    let key = |k: &str| format!("servers.{}.{k}", s.name);
    let password = match &s.password {
        PasswordSource::Env(var) => format!("environment variable {var}"),
        PasswordSource::File(path) => format!("file {}", path.display()),
        PasswordSource::Standard => "PGPASSWORD or ~/.pgpass (as libpq)".into(),
    };
    let file =
        |p: &Option<std::path::PathBuf>| p.as_ref().map_or("-".into(), |p| p.display().to_string());
    vec![
        (key("address"), format!("{}@{}:{}", s.user, s.host, s.port)),
        (
            key("read_url"),
            s.read
                .as_ref()
                .map_or("-".into(), |r| format!("{}@{}:{}", s.user, r.host, r.port)),
        ),
        (key("password"), password),
        (key("sslmode"), s.tls.effective_mode().name().into()),
        (key("ca_file"), file(&s.tls.ca_file)),
        (key("client_cert"), file(&s.tls.client_cert)),
    ]
}

fn site_settings(s: &Site) -> Vec<(String, String)> {
    let key = |k: &str| format!("sites.{}.{k}", s.name);
    let banks: Vec<String> = s
        .banks
        .iter()
        .map(|b| format!("{} (racks {}{})", b.id, id_list(&b.racks), own(&b.own)))
        .collect();
    let endpoints: Vec<String> = s
        .endpoints
        .iter()
        .map(|e| format!("{} = {}", e.name, e.addr))
        .collect();
    let pcs: Vec<String> = s
        .pcs
        .iter()
        .map(|p| format!("{}{}", p.id, own(&p.own)))
        .collect();
    vec![
        (key("database"), s.database.clone()),
        (key("servers"), s.servers.join(", ")),
        (key("timezone"), s.timezone.name().into()),
        (
            key("sample_interval_secs"),
            s.sample_interval_secs.to_string(),
        ),
        (
            key("loss"),
            format!(
                "warning above {} %, critical above {} %",
                s.loss.warning_pct, s.loss.critical_pct
            ),
        ),
        (key("banks"), banks.join(", ")),
        (key("pcs"), pcs.join(", ")),
        (key("modbus"), endpoints.join(", ")),
        (key("register_map"), s.register_map.label.clone()),
        (
            key("rated_kwh"),
            s.rated_kwh
                .map_or("- (no capacity ratio or cycles)".into(), |r| {
                    format!("{r} kWh")
                }),
        ),
    ]
}

/// Ids as ranges: `1-3, 5`.
fn id_list(ids: &[u16]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i;
        while j + 1 < ids.len() && ids[j + 1] == ids[j] + 1 {
            j += 1;
        }
        parts.push(match i == j {
            true => ids[i].to_string(),
            false => format!("{}-{}", ids[i], ids[j]),
        });
        i = j + 1;
    }
    parts.join(", ")
}

/// A device's own endpoint and unit, as `, at bms1 unit 3`.
fn own(o: &crate::modbus::map::DeviceOverride) -> String {
    let endpoint = o.endpoint.as_ref().map(|e| format!(" at {e}"));
    let unit = o.unit.map(|u| format!(" unit {u}"));
    match (endpoint, unit) {
        (None, None) => String::new(),
        (e, u) => format!(",{}{}", e.unwrap_or_default(), u.unwrap_or_default()),
    }
}
