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

/// An `essops` running in the background (a simulator, a long ingest);
/// killed when dropped so a failing test leaves nothing behind.
pub struct Background {
    pub child: std::process::Child,
    pub shown: String,
}

impl Cmd {
    pub fn spawn(mut self) -> Background {
        self.command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        Background {
            child: self.command.spawn().expect("spawn essops"),
            shown: self.shown,
        }
    }
}

impl Background {
    /// Sends `signal` (TERM, KILL, …) and collects what the process wrote.
    pub fn signal(self, signal: &str) -> Run {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
        self.finish()
    }

    /// Waits for the process to end by itself.
    pub fn finish(mut self) -> Run {
        let child = std::mem::replace(
            &mut self.child,
            Command::new("true").spawn().expect("spawn true"),
        );
        let output = child.wait_with_output().expect("wait for essops");
        Run {
            shown: std::mem::take(&mut self.shown),
            output,
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something accepts connections on `port` (at most 20 s).
pub fn wait_for_port(port: u16) {
    eventually(&format!("something listens on port {port}"), 20, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// Waits until `cond` holds, checking every 100 ms, and fails the test after
/// `secs` seconds. The bound is generous: a loaded 2-core machine is slow,
/// and a condition awaited is not a timing assertion.
pub fn eventually(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "not within {secs} s: {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
