//! Opening the configured Redis (`[redis]`), with TLS and a CA file for
//! `rediss://`; the one place that does, for `cache warm` and `check`.

use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::config::Config;

/// How long connecting to Redis may take.
pub const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("no [redis] url is configured")]
    NotConfigured,
    #[error("Redis at {addr} is unavailable: {reason}")]
    Unavailable { addr: String, reason: String },
}

/// `host:port` of the configured Redis, for messages.
pub fn addr(config: &Config) -> String {
    config.redis.as_ref().map_or_else(String::new, |r| {
        format!(
            "{}:{}",
            r.url.host_str().unwrap_or(""),
            r.url.port().unwrap_or(6379)
        )
    })
}

pub async fn connect(config: &Config) -> Result<MultiplexedConnection, RedisError> {
    let redis = config.redis.as_ref().ok_or(RedisError::NotConfigured)?;
    let url = &redis.url;
    let fail = |reason: String| RedisError::Unavailable {
        addr: addr(config),
        reason,
    };
    let client = match (url.scheme(), &redis.ca_file) {
        ("rediss", Some(ca)) => {
            let root = std::fs::read(ca)
                .map_err(|e| fail(format!("cannot read the CA file {}: {e}", ca.display())))?;
            let certs = redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(root),
            };
            redis::Client::build_with_tls(url.as_str(), certs)
        }
        _ => redis::Client::open(url.as_str()),
    }
    .map_err(|e| fail(e.to_string()))?;
    tokio::time::timeout(TIMEOUT, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| fail(format!("no answer in {} s", TIMEOUT.as_secs())))?
        .map_err(|e| fail(e.to_string()))
}
