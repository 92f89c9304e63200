//! The crate's error type and the one table of exit codes.
//!
//! Each command has its own error enum (in its module); this module wraps them
//! and says which exit code each kind maps to. The binary only calls
//! [`Error::exit_code`] and [`Outcome::exit_code`]; nothing else picks codes.

use crate::cache::CacheError;
use crate::config::ConfigError;
use crate::db::DbError;
use crate::ingest::IngestError;
use crate::loss::LossError;
use crate::migrate::MigrateError;
use crate::reconcile::ReconcileError;
use crate::simulate::SimulateError;

/// Documented exit codes (README, "Exit codes"). Scripts depend on these numbers.
pub mod exit {
    /// Ran and found nothing to report.
    pub const OK: u8 = 0;
    /// A bug in essops: please report it.
    pub const INTERNAL: u8 = 1;
    /// Bad command line (clap's own code).
    pub const USAGE: u8 = 2;
    /// Bad configuration file or environment.
    pub const CONFIG: u8 = 3;
    /// A server could not be reached or failed; whatever else could be done was done.
    pub const UNAVAILABLE: u8 = 4;
    /// Another run of the same job holds the lock.
    pub const LOCKED: u8 = 5;
    /// The database role lacks a privilege the command needs.
    pub const PRIVILEGE: u8 = 6;
    /// Ran and found problems at warning level (or repaired something).
    pub const FOUND_WARNING: u8 = 10;
    /// Ran and found problems at critical level.
    pub const FOUND_CRITICAL: u8 = 11;
    /// Stopped by Ctrl-C before finishing.
    pub const INTERRUPTED: u8 = 130;
}

/// How a command that ran to the end went, for the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Everything done, nothing to report.
    Clean,
    /// Ran; found (or repaired) something worth a warning.
    Warning,
    /// Ran; found something critical.
    Critical,
    /// Some targets (servers, sites) could not be reached; the rest were done.
    Partial,
    /// The database role lacks a privilege the command needs; nothing was changed there.
    Privilege,
    /// Ran, but part of the configuration (a register map, a schema) was found unusable.
    BadConfig,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Clean => exit::OK,
            Outcome::Warning => exit::FOUND_WARNING,
            Outcome::Critical => exit::FOUND_CRITICAL,
            Outcome::Partial => exit::UNAVAILABLE,
            Outcome::Privilege => exit::PRIVILEGE,
            Outcome::BadConfig => exit::CONFIG,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Migrate(#[from] MigrateError),
    #[error(transparent)]
    Loss(#[from] LossError),
    #[error(transparent)]
    Reconcile(#[from] ReconcileError),
    #[error(transparent)]
    Simulate(#[from] SimulateError),
    #[error(transparent)]
    Ingest(#[from] IngestError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Lock(#[from] crate::lock::LockError),
    #[error(transparent)]
    Index(#[from] crate::index::IndexError),
    #[error(transparent)]
    Spool(#[from] crate::spool::SpoolCmdError),
    #[error("cannot write output: {0}")]
    Output(#[source] std::io::Error),
    #[error("cannot set up logging in {dir}: {source}")]
    Logging {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("demo: {0}")]
    Demo(String),
    #[error("interrupted")]
    Interrupted,
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) => exit::CONFIG,
            Error::Logging { .. } => exit::CONFIG,
            Error::Db(e) => e.exit_code(),
            Error::Migrate(e) => e.exit_code(),
            Error::Loss(e) => e.exit_code(),
            Error::Reconcile(e) => e.exit_code(),
            Error::Simulate(e) => e.exit_code(),
            Error::Ingest(e) => e.exit_code(),
            Error::Cache(e) => e.exit_code(),
            Error::Lock(e) => e.exit_code(),
            Error::Index(e) => e.exit_code(),
            Error::Spool(e) => e.exit_code(),
            Error::Output(_) => exit::INTERNAL,
            Error::Interrupted => exit::INTERRUPTED,
            Error::Demo(_) => exit::UNAVAILABLE,
        }
    }

    /// A closed stdout (`essops … | head`) is not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
