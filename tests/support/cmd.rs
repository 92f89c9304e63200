//! Runs the real `essops` binary and checks what it did.

use std::path::Path;
use std::process::{Command, Output};

use serde::de::DeserializeOwned;

pub struct Cmd {
    command: Command,
    shown: String,
}

impl Cmd {
    /// `essops` with `config` as its configuration (no --config: the built-in default).
    pub fn new(config: Option<&Path>) -> Cmd {
        let mut command = Command::new(env!("CARGO_BIN_EXE_essops"));
        command.env_remove("ESSOPS_CONFIG").env_remove("PGPASSWORD");
        if let Some(c) = config {
            command.env("ESSOPS_CONFIG", c);
        }
        Cmd {
            command,
            shown: String::from("essops"),
        }
    }

    pub fn args<I: IntoIterator<Item = S>, S: AsRef<str>>(mut self, args: I) -> Cmd {
        for a in args {
            self.shown.push(' ');
            self.shown.push_str(a.as_ref());
            self.command.arg(a.as_ref());
        }
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Cmd {
        self.command.env(key, value);
        self
    }

    pub fn cwd(mut self, dir: &Path) -> Cmd {
        self.command.current_dir(dir);
        self
    }

    pub fn run(mut self) -> Run {
        let output = self.command.output().expect("spawn essops");
        Run {
            shown: self.shown,
            output,
        }
    }
}

pub struct Run {
    pub shown: String,
    pub output: Output,
}

impl Run {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn code(&self) -> i32 {
        self.output.status.code().unwrap_or(-1)
    }

    /// Asserts the exit code, showing the command and its output when it differs.
    pub fn expect_code(self, code: i32) -> Run {
        assert_eq!(
            self.code(),
            code,
            "`{}` exited {} (expected {code})\n--- stdout\n{}--- stderr\n{}",
            self.shown,
            self.code(),
            self.stdout(),
            self.stderr()
        );
        self
    }

    /// Parses stdout as JSON lines.
    pub fn json<T: DeserializeOwned>(&self) -> Vec<T> {
        self.stdout()
            .lines()
            .map(|l| {
                serde_json::from_str(l)
                    .unwrap_or_else(|e| panic!("`{}`: bad JSON line {l:?}: {e}", self.shown))
            })
            .collect()
    }
}
