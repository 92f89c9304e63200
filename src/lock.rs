//! Run locks: one run of a command per site at a time, so cron can start a
//! job while the last one still runs without the two doubling work. The lock
//! is an OS file lock (flock): a run that crashes or is killed releases it,
//! so nothing is ever left stuck.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::context::Context;
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
            LockError::Held { .. } => exit::LOCKED,
            LockError::Io { .. } => exit::CONFIG,
        }
    }
}

crate::into_error!(LockError);

/// Held while alive.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Takes the lock of `command` on `site` in `dir`, or says who holds it.
pub fn acquire(dir: &Path, command: &str, site: &str) -> Result<RunLock, LockError> {
    let path = dir.join(format!("{command}.{site}.lock"));
    let io = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let file = File::create(&path).map_err(io)?;
    match file.try_lock() {
        Ok(()) => Ok(RunLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(LockError::Held {
            command: command.to_string(),
            site: site.to_string(),
            path,
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// The locks of `command` for every site named, all or none.
pub fn acquire_sites<'a>(
    ctx: &Context,
    command: &str,
    sites: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<RunLock>, LockError> {
    sites
        .into_iter()
        .map(|s| acquire(&ctx.lock_dir(), command, s))
        .collect()
}
