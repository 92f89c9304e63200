//! Run locks: one run of a command per site at a time, so cron can start a
//! job while the last one still runs without the two doubling work, on this
//! host or on another.
//!
//! Two locks, both released by the system when a run crashes or is killed,
//! so nothing is ever left stuck:
//! - an OS file lock (flock) in `log_dir/locks/`, for this host;
//! - a PostgreSQL advisory lock (session-level), keyed by command and site,
//!   on the site's first configured server (the `postgres` database), for
//!   every host that shares that server. When that server cannot be reached
//!   the file lock alone holds, and the run goes on (its own connections
//!   will say what is wrong).

use std::fs::File;
use std::path::{Path, PathBuf};

use tokio_postgres::Client;

use crate::config::{Config, Server};
use crate::context::Context;
use crate::db::{self, Target};
use crate::exit::code as exit;

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another essops {command} of site `{site}` is running (it holds {path}); this run changed nothing"
    )]
    Held {
        command: String,
        site: String,
        path: PathBuf,
    },
    #[error(
        "another essops {command} of site `{site}` is running: {holder} holds its lock on server `{server}`; this run changed nothing"
    )]
    HeldElsewhere {
        command: String,
        site: String,
        server: String,
        holder: String,
    },
    #[error("{held} (waited {waited:?} for it: --wait)")]
    WaitedFor {
        waited: std::time::Duration,
        held: Box<LockError>,
    },
    #[error("cannot open lock file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl LockError {
    pub fn exit_code(&self) -> u8 {
        match self {
            LockError::Held { .. }
            | LockError::HeldElsewhere { .. }
            | LockError::WaitedFor { .. } => exit::LOCKED,
            LockError::Io { .. } => exit::CONFIG,
        }
    }
}

crate::into_error!(LockError);

/// One run lock: a job on a site, or on part of one (an ingest device
/// group, one bank). Its server and database are the site's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockKey {
    pub job: String,
    pub site: String,
    pub part: Option<String>,
}

impl LockKey {
    pub fn site(job: &str, site: &str) -> LockKey {
        LockKey {
            job: job.to_string(),
            site: site.to_string(),
            part: None,
        }
    }

    pub fn part(job: &str, site: &str, part: &str) -> LockKey {
        LockKey {
            part: Some(part.to_string()),
            ..LockKey::site(job, site)
        }
    }

    /// `SITE` or `SITE@PART`, as messages and lock files name it.
    fn name(&self) -> String {
        match &self.part {
            Some(p) => format!("{}@{p}", self.site),
            None => self.site.clone(),
        }
    }
}

/// Held while alive: the files, and the sessions that hold the advisory locks.
#[derive(Debug)]
pub struct RunLocks {
    _files: Vec<File>,
    _sessions: Vec<Client>,
}

/// The advisory lock's two keys for `command` on `site`, whose data lives in
/// `database` (FNV-1a, so every essops version and host computes the same).
/// The database is part of the key: two sites that share only a name (a test
/// fleet beside a real one) do not lock each other out.
pub fn advisory_key(command: &str, site: &str, database: &str) -> (i32, i32) {
    let fnv = |text: &str| {
        let mut h: u32 = 0x811c_9dc5;
        for b in text.bytes() {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        (h & 0x7fff_ffff) as i32
    };
    (fnv("essops"), fnv(&format!("{command}/{site}/{database}")))
}

/// Where a table has no unique natural-key index, every essops writer that
/// inserts "rows the table lacks" (ingest and reconcile) takes this lock in
/// its transaction first, so two of them never both add the same sample.
/// An advisory lock needs no privilege beyond connecting.
pub async fn absent_insert(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
) -> Result<(), tokio_postgres::Error> {
    let (class, object) = advisory_key("insert-absent", table, "");
    tx.execute("SELECT pg_advisory_xact_lock($1, $2)", &[&class, &object])
        .await
        .map(|_| ())
}

/// How often a run that waits for a lock (`--wait`) tries again.
const WAIT_STEP: std::time::Duration = std::time::Duration::from_millis(500);

/// Takes every lock, all or none, or says who holds one; while another run
/// holds one, tries again until `ctx.lock_wait` has passed.
pub async fn acquire_all(ctx: &Context, locks: &[LockKey]) -> Result<RunLocks, LockError> {
    let deadline = std::time::Instant::now() + ctx.lock_wait;
    loop {
        match try_acquire_all(ctx, locks).await {
            Err(e) if e.exit_code() == exit::LOCKED && std::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "waiting for the run lock (--wait)");
                tokio::time::sleep(WAIT_STEP.min(deadline - std::time::Instant::now())).await;
            }
            Err(e) if e.exit_code() == exit::LOCKED && !ctx.lock_wait.is_zero() => {
                return Err(LockError::WaitedFor {
                    waited: ctx.lock_wait,
                    held: Box::new(e),
                });
            }
            other => return other,
        }
    }
}

async fn try_acquire_all(ctx: &Context, locks: &[LockKey]) -> Result<RunLocks, LockError> {
    let mut files = Vec::new();
    for key in locks {
        files.push(acquire_file(&ctx.lock_dir(), &key.job, &key.name())?);
    }
    // One session per server holds all of this run's advisory locks there.
    let mut by_server: Vec<(&Server, Vec<&LockKey>)> = Vec::new();
    for key in locks {
        let Some(server) = lock_server(&ctx.config, &key.site) else {
            continue;
        };
        match by_server.iter_mut().find(|(s, _)| s.name == server.name) {
            Some((_, keys)) => keys.push(key),
            None => by_server.push((server, vec![key])),
        }
    }
    let mut sessions = Vec::new();
    for (server, keys) in by_server {
        if let Some(session) = acquire_advisory(&ctx.config, server, &keys).await? {
            sessions.push(session);
        }
    }
    Ok(RunLocks {
        _files: files,
        _sessions: sessions,
    })
}

/// The file lock of `command` on `site` in `dir` (this host only).
pub fn acquire_file(dir: &Path, command: &str, site: &str) -> Result<File, LockError> {
    let path = dir.join(format!("{command}.{site}.lock"));
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = File::create(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Held {
            command: command.to_string(),
            site: site.to_string(),
            path,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Where a site's advisory lock lives: its first server (for a lock that
/// is not a site's, the first configured server).
fn lock_server<'a>(config: &'a Config, site: &str) -> Option<&'a Server> {
    let first = config
        .site(site)
        .ok()
        .and_then(|s| s.servers.first())
        .and_then(|name| config.server(name).ok());
    first.or_else(|| config.servers.first())
}

/// The advisory locks of `keys` on `server`, held by one session; `None`
/// when the server cannot be reached (the file locks then hold alone).
async fn acquire_advisory(
    config: &Config,
    server: &Server,
    keys: &[&LockKey],
) -> Result<Option<Client>, LockError> {
    let target = Target {
        server,
        database: "postgres",
    };
    let Ok(client) = db::connect(config, target).await else {
        tracing::info!(server = %server.name, "the server of the cross-host locks is unreachable; the local locks hold alone");
        return Ok(None);
    };
    for key in keys {
        let database = config.site(&key.site).map_or("", |s| s.database.as_str());
        let (k1, k2) = advisory_key(&key.job, &key.name(), database);
        let taken = client
            .query_one("SELECT pg_try_advisory_lock($1, $2)", &[&k1, &k2])
            .await
            .map(|r| r.get::<_, bool>(0));
        match taken {
            Ok(true) => {}
            Ok(false) => {
                return Err(LockError::HeldElsewhere {
                    command: key.job.clone(),
                    site: key.name(),
                    server: server.name.clone(),
                    holder: holder(&client, (k1, k2)).await,
                });
            }
            Err(e) => {
                tracing::info!(server = %server.name, error = %db::describe(&e), "the cross-host locks could not be taken; the local locks hold alone");
                return Ok(None);
            }
        }
    }
    Ok(Some(client))
}

/// Who holds the advisory lock: its session's application name (essops
/// puts its command, host and pid there) and client address.
async fn holder(client: &Client, (k1, k2): (i32, i32)) -> String {
    let row = client
        .query_opt(
            "SELECT a.application_name, coalesce(host(a.client_addr), 'a local socket'), a.pid
               FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                AND l.classid::int8 = $1 AND l.objid::int8 = $2",
            &[&i64::from(k1), &i64::from(k2)],
        )
        .await;
    match row {
        Ok(Some(r)) => format!(
            "`{}` (connected from {}, server pid {})",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, i32>(2)
        ),
        _ => "another session".into(),
    }
}
