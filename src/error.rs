//! The crate's top error: what a command could not do, with its exit code.
//!
//! Each command has its own error enum (in its module) and converts it into
//! [`Error`] where it is wired in (`impl From<…> for Error` beside the enum),
//! so this module names no command. The binary only calls
//! [`Error::exit_code`] and [`Outcome::exit_code`]; nothing else picks codes.

pub use crate::exit::{Outcome, code as exit};

/// A command's failure (its message and exit code), a closed stdout, or Ctrl-C.
#[derive(Debug)]
pub enum Error {
    /// A command's own error, with the exit code it maps to.
    Command {
        code: u8,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    Output(std::io::Error),
    Interrupted,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Command { source, .. } => source.fmt(f),
            Error::Output(e) => write!(f, "cannot write output: {e}"),
            Error::Interrupted => f.write_str("interrupted"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Command { source, .. } => source.source(),
            Error::Output(e) => Some(e),
            Error::Interrupted => None,
        }
    }
}

impl Error {
    /// A command's error with the exit code it maps to.
    pub fn command(code: u8, e: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Command {
            code,
            source: Box::new(e),
        }
    }

    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Command { code, .. } => *code,
            Error::Output(_) => exit::INTERNAL,
            Error::Interrupted => exit::INTERRUPTED,
        }
    }

    /// A closed stdout (`essops … | head`) is not a failure.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

/// `impl From<$error> for Error` through the error's own `exit_code()`:
/// how a command (or shared layer) wires its error into the top one.
#[macro_export]
macro_rules! into_error {
    ($($ty:ty),+ $(,)?) => {$(
        impl From<$ty> for $crate::error::Error {
            fn from(e: $ty) -> Self {
                $crate::error::Error::command(e.exit_code(), e)
            }
        }
    )+};
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
