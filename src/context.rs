//! What every command receives: the loaded config and the global flags, as one value.

use std::sync::Arc;

use crate::config::Config;
use crate::output::{Format, Verbosity};

#[derive(Debug, Clone)]
pub struct Context {
    pub config: Arc<Config>,
    pub format: Format,
    pub verbosity: Verbosity,
    /// How long a run waits for a run lock another run holds (`--wait`).
    pub lock_wait: std::time::Duration,
}

impl Context {
    pub fn log_dir(&self) -> std::path::PathBuf {
        self.config.base_dir().join(&self.config.log_dir)
    }

    /// Where run locks (see `lock`) live: `lock_dir`, else beside the logs.
    pub fn lock_dir(&self) -> std::path::PathBuf {
        match &self.config.lock_dir {
            Some(dir) => self.config.base_dir().join(dir),
            None => self.log_dir().join("locks"),
        }
    }
}
