//! Writing a site's entries to Redis so that readers never see a half-written
//! set: every value goes to a staging key first (one pipeline), then one
//! MULTI/EXEC renames them all into place, drops keys the site no longer
//! has, and writes the meta key. All keys share the site's hash tag.

use crate::redis_client::Connection;
use serde_json::{Value, json};

use super::keys::Keys;
use super::warm::{Entry, Previous};

pub async fn read_previous(
    con: &mut Connection,
    keys: &Keys,
    wanted: &[String],
) -> redis::RedisResult<Previous> {
    let meta: Option<String> = redis::cmd("GET").arg(keys.meta()).query_async(con).await?;
    let meta: Value = meta
        .and_then(|m| serde_json::from_str(&m).ok())
        .unwrap_or(Value::Null);
    let mut prev = Previous {
        warmed_at: meta["warmed_at"].as_i64(),
        rerolls_seen: meta["rerolls_seen"].as_i64(),
        keys: meta["keys"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|k| k.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default(),
        ..Previous::default()
    };
    if wanted.is_empty() || prev.warmed_at.is_none() {
        return Ok(prev);
    }
    let values: Vec<Option<String>> = redis::cmd("MGET").arg(wanted).query_async(con).await?;
    for (k, v) in wanted.iter().zip(values) {
        if let Some(v) = v.and_then(|v| serde_json::from_str(&v).ok()) {
            prev.values.insert(k.clone(), v);
        }
    }
    Ok(prev)
}

/// Stages every entry, then swaps them in atomically. `previous` are the keys
/// the last warm listed; of those, `keep` (other periods, not rebuilt now)
/// stay and the rest not written again are dropped.
pub async fn publish(
    con: &mut Connection,
    keys: &Keys,
    run: &str,
    entries: &[Entry],
    previous: &[String],
    keep: &[String],
    meta: Value,
) -> redis::RedisResult<u64> {
    let mut stage = redis::pipe();
    let mut bytes = 0u64;
    for e in entries {
        bytes += e.value.len() as u64;
        let c = stage
            .cmd("SET")
            .arg(keys.staging(run, &e.key))
            .arg(&e.value);
        if e.ttl > 0 {
            c.arg("EX").arg(e.ttl);
        }
        c.ignore();
    }
    stage.query_async::<()>(con).await?;
    let written: Vec<&String> = entries.iter().map(|e| &e.key).collect();
    let stale: Vec<&String> = previous
        .iter()
        .filter(|k| !written.contains(k) && !keep.contains(k))
        .collect();
    let mut listed: Vec<String> = written
        .iter()
        .map(|k| k.to_string())
        .chain(keep.iter().cloned())
        .collect();
    listed.sort();
    listed.dedup();
    let mut meta = meta;
    meta["keys"] = json!(listed);
    let mut swap = redis::pipe();
    swap.atomic();
    for e in entries {
        swap.cmd("RENAME")
            .arg(keys.staging(run, &e.key))
            .arg(&e.key)
            .ignore();
    }
    if !stale.is_empty() {
        swap.cmd("DEL").arg(&stale).ignore();
    }
    swap.cmd("SET")
        .arg(keys.meta())
        .arg(meta.to_string())
        .ignore();
    swap.query_async::<()>(con).await?;
    Ok(bytes)
}
