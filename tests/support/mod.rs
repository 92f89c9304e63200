//! Test support: the real services (started by scripts/services.sh), a
//! per-test configuration and databases, and a runner for the real binary.
//!
//! A missing service is a loud failure, never a silent skip.

#![allow(
    dead_code,
    reason = "each test uses a different part of the support module"
)]

pub mod cmd;
pub mod device;
pub mod pg;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

pub use cmd::{Background, Cmd, eventually, free_port, wait_for_port};
pub use pg::TestDb;

pub const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Brings the services up once per test process (the script is idempotent and locked).
pub fn services() {
    static UP: OnceLock<()> = OnceLock::new();
    UP.get_or_init(|| {
        let out = std::process::Command::new("bash")
            .arg(Path::new(REPO).join("scripts/services.sh"))
            .arg("up")
            .output()
            .expect("run scripts/services.sh up");
        assert!(
            out.status.success(),
            "scripts/services.sh up failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    });
}

/// A scratch folder for one test, removed at the end unless the test panicked.
pub struct Scratch {
    pub path: PathBuf,
}

impl Scratch {
    pub fn new(test: &str) -> Scratch {
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("it").join(test);
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Scratch { path }
    }

    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

impl Scratch {
    /// Writes this test's `sites.toml` (logs in this folder, then `head`:
    /// more top-level keys and tables, `servers`: `[servers.*]` tables, and
    /// `site`: the keys of one `[[sites]]` entry), then creates and migrates
    /// its databases.
    pub fn site_config(&self, head: &str, servers: &str, site: &str) -> PathBuf {
        let text = format!(
            "log_dir = \"{}\"\n{head}{servers}[[sites]]\n{site}",
            self.path.join("logs").display()
        );
        let config = self.write("sites.toml", &text);
        Cmd::new(Some(&config))
            .args(["migrate", "--create-database"])
            .run()
            .expect_code(0);
        config
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept scratch folder {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The dev servers' `[servers]` tables, with absolute password-file paths.
pub fn servers_toml() -> String {
    server_toml("local", "local") + &server_toml("gcp", "gcp")
}

/// One `[servers.NAME]` table for the dev cluster `cluster` (local, gcp, outage).
pub fn server_toml(name: &str, cluster: &str) -> String {
    let port = match cluster {
        "local" => 25432,
        "gcp" => 25433,
        "outage" => 25434,
        other => panic!("no dev cluster `{other}`"),
    };
    let services = Path::new(REPO).join(".services");
    // The gcp cluster takes only TLS; tests connect to it as the shipped config does.
    let (host, tls) = match cluster {
        "gcp" => (
            "localhost",
            format!(
                "sslmode = \"verify-full\"\nca_file = \"{}\"\n",
                services.join("tls/ca.crt").display()
            ),
        ),
        _ => ("127.0.0.1", "sslmode = \"disable\"\n".to_string()),
    };
    format!(
        "[servers.{name}]\nurl = \"postgres://essops@{host}:{port}\"\npassword_file = \"{}\"\n{tls}\n",
        services
            .join(format!("secrets/{cluster}.password"))
            .display()
    )
}

/// Runs `scripts/services.sh` with `args` (stop/start a cluster mid-test).
pub fn services_script(args: &[&str]) {
    let out = std::process::Command::new("bash")
        .arg(Path::new(REPO).join("scripts/services.sh"))
        .args(args)
        .output()
        .expect("run scripts/services.sh");
    assert!(
        out.status.success(),
        "scripts/services.sh {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
