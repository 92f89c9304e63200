//! The one table of exit codes (README, "Exit codes") and [`Outcome`], how a
//! command that ran to the end went. A leaf: it imports nothing of essops,
//! so every layer can name a code without depending on the commands.

/// Documented exit codes. Scripts depend on these numbers.
pub mod code {
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
///
/// The one precedence rule, for every command: the variants are declared
/// in it, so the worst of several is their `max`. A critical finding (11)
/// beats a part that could not be done (4, 6, 3), which beats a warning
/// (10), which beats success (0): a down server must not hide a critical
/// day the other server showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Everything done, nothing to report.
    Clean,
    /// Ran; found (or repaired) something worth a warning.
    Warning,
    /// Some targets (servers, sites) could not be reached; the rest were done.
    Partial,
    /// The database role lacks a privilege the command needs; nothing was changed there.
    Privilege,
    /// Ran, but part of the configuration (a register map, a schema) was found unusable.
    BadConfig,
    /// Ran; found something critical.
    Critical,
    /// `status --nagios`: a monitoring plugin's own code (0 ok, 1 warning,
    /// 2 critical, 3 unknown) instead of the table's.
    Plugin(u8),
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Clean => code::OK,
            Outcome::Warning => code::FOUND_WARNING,
            Outcome::Critical => code::FOUND_CRITICAL,
            Outcome::Partial => code::UNAVAILABLE,
            Outcome::Privilege => code::PRIVILEGE,
            Outcome::BadConfig => code::CONFIG,
            Outcome::Plugin(code) => code,
        }
    }
}
