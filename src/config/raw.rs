//! The file as written: structs that mirror `sites.toml` (unknown keys are
//! an error) and keep the byte span of every value validation may complain
//! about. Only `validate` reads them.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) log_dir: Option<String>,
    pub(super) log_keep_days: Option<u32>,
    pub(super) lock_dir: Option<String>,
    pub(super) spool_dir: Option<String>,
    pub(super) spool_max_mb: Option<Spanned<u64>>,
    pub(super) spool_min_free_mb: Option<Spanned<u64>>,
    pub(super) modbus: Option<RawModbus>,
    pub(super) cache: Option<RawCache>,
    #[serde(default)]
    pub(super) defaults: RawDefaults,
    pub(super) redis: Option<RawRedis>,
    pub(super) history: Option<RawHistory>,
    pub(super) retention: Option<RawRetention>,
    pub(super) status: Option<RawStatus>,
    pub(super) kpi: Option<RawKpi>,
    #[serde(default)]
    pub(super) servers: BTreeMap<Spanned<String>, RawServer>,
    #[serde(default)]
    pub(super) sites: Vec<RawSite>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDefaults {
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) sample_interval_secs: Option<Spanned<u32>>,
    pub(super) loss_warning_pct: Option<Spanned<f64>>,
    pub(super) loss_critical_pct: Option<Spanned<f64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawModbus {
    pub(super) register_map: Option<Spanned<String>>,
    pub(super) timeout_ms: Option<Spanned<u64>>,
    pub(super) connections: Option<Spanned<u16>>,
    pub(super) pipeline: Option<Spanned<u16>>,
    pub(super) breaker_after: Option<Spanned<u32>>,
    pub(super) stale_after: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    pub(super) source: Option<Spanned<String>>,
    pub(super) recheck: Option<Spanned<String>>,
    pub(super) outlier_factor: Option<Spanned<f64>>,
    pub(super) periods: Option<Vec<RawPeriod>>,
    pub(super) limits: Option<BTreeMap<String, Spanned<[f64; 2]>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeriod {
    pub(super) name: Spanned<String>,
    pub(super) span: Spanned<String>,
    pub(super) bucket: Spanned<String>,
    pub(super) ttl: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHistory {
    pub(super) keep_days: Option<Spanned<u32>>,
}

/// `[retention]`: days of each kind of chunk kept (absent: kept forever).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRetention {
    pub(super) raw_days: Option<Spanned<u32>>,
    pub(super) rollup_1m_days: Option<Spanned<u32>>,
    pub(super) rollup_1h_days: Option<Spanned<u32>>,
}

/// `[status]`: each value a duration ("3m", "26h") or a size in MiB.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStatus {
    pub(super) heartbeat_warning: Option<Spanned<String>>,
    pub(super) heartbeat_critical: Option<Spanned<String>>,
    pub(super) sample_age_warning: Option<Spanned<String>>,
    pub(super) sample_age_critical: Option<Spanned<String>>,
    pub(super) reconcile_warning: Option<Spanned<String>>,
    pub(super) reconcile_critical: Option<Spanned<String>>,
    pub(super) cache_age_warning: Option<Spanned<String>>,
    pub(super) cache_age_critical: Option<Spanned<String>>,
    pub(super) spool_critical_mb: Option<Spanned<u64>>,
}

/// `[kpi]`: the battery KPIs' grading thresholds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKpi {
    pub(super) soh_end_of_life: Option<Spanned<f64>>,
    pub(super) cell_spread_warning_mv: Option<Spanned<f64>>,
    pub(super) cell_spread_critical_mv: Option<Spanned<f64>>,
    pub(super) temp_spread_warning_c: Option<Spanned<f64>>,
    pub(super) temp_spread_critical_c: Option<Spanned<f64>>,
    pub(super) rte_warning_pct: Option<Spanned<f64>>,
    pub(super) rte_critical_pct: Option<Spanned<f64>>,
    pub(super) availability_warning_pct: Option<Spanned<f64>>,
    pub(super) availability_critical_pct: Option<Spanned<f64>>,
    pub(super) soh_eol_warning_days: Option<Spanned<f64>>,
    pub(super) soh_eol_critical_days: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRedis {
    pub(super) url: Spanned<String>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) cluster: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    pub(super) url: Spanned<String>,
    pub(super) read_url: Option<Spanned<String>>,
    pub(super) admin_url: Option<Spanned<String>>,
    pub(super) admin_password_env: Option<Spanned<String>>,
    pub(super) admin_password_file: Option<Spanned<String>>,
    pub(super) password_env: Option<Spanned<String>>,
    pub(super) password_file: Option<Spanned<String>>,
    pub(super) sslmode: Option<Spanned<String>>,
    pub(super) ca_file: Option<Spanned<String>>,
    pub(super) client_cert: Option<Spanned<String>>,
    pub(super) client_key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSite {
    pub(super) name: Spanned<String>,
    pub(super) database: Option<Spanned<String>>,
    pub(super) servers: Option<Vec<Spanned<String>>>,
    pub(super) timezone: Option<Spanned<String>>,
    pub(super) sample_interval_secs: Option<Spanned<u32>>,
    pub(super) loss_warning_pct: Option<Spanned<f64>>,
    pub(super) loss_critical_pct: Option<Spanned<f64>>,
    pub(super) banks: Spanned<Vec<RawBank>>,
    pub(super) pcs: Option<Spanned<Vec<Spanned<RawPcs>>>>,
    pub(super) modbus: Option<Spanned<BTreeMap<String, Spanned<String>>>>,
    pub(super) register_map: Option<Spanned<String>>,
    pub(super) metrics_listen: Option<Spanned<String>>,
    pub(super) rated_kwh: Option<Spanned<f64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBank {
    pub(super) id: Spanned<u16>,
    pub(super) racks: Spanned<RawRacks>,
    pub(super) endpoint: Option<Spanned<String>>,
    pub(super) unit: Option<Spanned<u8>>,
}

/// `racks = 8` (ids 1..8) or `racks = [1, 2, 4, 5]` (a rack out for service).
#[derive(Debug)]
pub(super) enum RawRacks {
    Count(u16),
    Ids(Vec<u16>),
}

/// `pcs = [1]` or `pcs = [{ id = 1, endpoint = "pcs1", unit = 3 }]`.
#[derive(Debug)]
pub(super) enum RawPcs {
    Id(u16),
    Device(RawPcsDevice),
}

// Hand-written rather than `#[serde(untagged)]`, whose error ("data did not
// match any variant") would not say what the key takes.
impl<'de> Deserialize<'de> for RawRacks {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawRacks;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a rack count (8) or a list of rack ids ([1, 2, 4, 5])")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawRacks, E> {
                u16::try_from(v)
                    .map(RawRacks::Count)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<RawRacks, A::Error> {
                Vec::<u16>::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))
                    .map(RawRacks::Ids)
            }
        }
        d.deserialize_any(V)
    }
}

impl<'de> Deserialize<'de> for RawPcs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawPcs;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a PCS id (1) or a table ({ id = 1, endpoint = \"pcs1\", unit = 3 })")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawPcs, E> {
                u16::try_from(v)
                    .map(RawPcs::Id)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawPcs, A::Error> {
                RawPcsDevice::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawPcs::Device)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPcsDevice {
    pub(super) id: u16,
    pub(super) endpoint: Option<String>,
    pub(super) unit: Option<u8>,
}
