//! Opening the configured Redis (`[redis]`): one server (with TLS and a CA
//! file for `rediss://`) or a Redis Cluster (`cluster = true`: `url` is one
//! node, the others are discovered and keys follow their slots); the one
//! place that does, for `cache warm` and `check`.

use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

/// A connection to one Redis or to a Redis Cluster; cheap to clone.
#[derive(Clone)]
pub enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

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

pub async fn connect(config: &Config) -> Result<Connection, RedisError> {
    let redis = config.redis.as_ref().ok_or(RedisError::NotConfigured)?;
    let url = &redis.url;
    let fail = |reason: String| RedisError::Unavailable {
        addr: addr(config),
        reason,
    };
    if redis.cluster {
        let client = redis::cluster::ClusterClient::new(vec![url.as_str()])
            .map_err(|e| fail(e.to_string()))?;
        return tokio::time::timeout(TIMEOUT, client.get_async_connection())
            .await
            .map_err(|_| fail(format!("no answer in {} s", TIMEOUT.as_secs())))?
            .map(Connection::Cluster)
            .map_err(|e| fail(e.to_string()));
    }
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
        .map(Connection::Single)
        .map_err(|e| fail(e.to_string()))
}
