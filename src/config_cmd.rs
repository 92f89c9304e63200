//! `essops config path|show|check`: which config file a run uses and why,
//! what essops makes of it, and whether it is usable, without touching a
//! server. Runs before (and without) the config load every other command
//! needs, so `path` answers even for a file that does not parse.

use std::path::Path;

use clap::Subcommand;
use serde::Serialize;

use crate::config::locate::{self, Located};
use crate::config::{Config, ConfigSource, PasswordSource, view};
use crate::error::Error;
use crate::exit::Outcome;
use crate::output::{Format, Report, Rows, Verbosity};

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Which config file is used, and why (exit 3 when it is missing).
    Path,
    /// The effective config: defaults filled in, paths resolved, secrets masked.
    Show,
    /// Validate the config and the files it names; no server is contacted.
    Check,
}

#[derive(Debug, Clone, Serialize)]
pub struct SettingRow {
    pub key: String,
    pub value: String,
    /// A file the config names that cannot be used, or why the config is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

pub type ConfigReport = Rows<SettingRow>;

impl Report for ConfigReport {
    type Row = SettingRow;
    const KIND: &'static str = "setting";
    const HEADER: &'static str = "KEY|VALUE";
    fn cells(r: &SettingRow) -> Vec<String> {
        vec![r.key.clone(), r.value.clone()]
    }
    fn problem(r: &SettingRow) -> Option<String> {
        r.problem.clone()
    }
    fn summary(&self) -> String {
        match self.rows.iter().filter(|r| r.problem.is_some()).count() {
            0 => format!("{} settings", self.rows.len()),
            n => format!("{n} problem(s): see above"),
        }
    }
    fn outcome(&self) -> Outcome {
        match self.rows.iter().any(|r| r.problem.is_some()) {
            true => Outcome::BadConfig,
            false => Outcome::Clean,
        }
    }
    fn rows(&self) -> &[Self::Row] {
        &self.rows
    }
}

fn row(key: &str, value: impl Into<String>, problem: Option<String>) -> SettingRow {
    SettingRow {
        key: key.into(),
        value: value.into(),
        problem,
    }
}

/// Runs one `config` subcommand and prints its report.
pub fn run(
    command: &ConfigCommand,
    flag: Option<&Path>,
    format: Format,
    verbosity: Verbosity,
) -> Result<Outcome, Error> {
    let located = locate::locate(flag);
    let report = match command {
        ConfigCommand::Path => path(&located),
        ConfigCommand::Show => {
            let config = Config::load(flag)?;
            let rows = view::settings(&config)
                .into_iter()
                .map(|(k, v)| row(&k, v, None))
                .collect();
            ConfigReport { rows }
        }
        ConfigCommand::Check => check(&Config::load(flag)?),
    };
    crate::output::render(&report, format, verbosity, &mut std::io::stdout().lock())
        .map_err(Error::Output)?;
    Ok(report.outcome())
}

fn path(located: &Located) -> ConfigReport {
    let (file, problem) = match &located.source {
        ConfigSource::File(p) if !p.is_file() => (
            p.display().to_string(),
            Some(format!("{} does not exist or is not a file", p.display())),
        ),
        ConfigSource::File(p) => (absolute(p), None),
        ConfigSource::Embedded => match locate::embedded_base() {
            Some(_) => ("(built-in demo config)".to_string(), None),
            None => (
                "(built-in demo config)".to_string(),
                Some("the demo config's repository is not on this machine; write /etc/essops/sites.toml or use --config".into()),
            ),
        },
    };
    let looked: Vec<String> = located
        .looked
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    ConfigReport {
        rows: vec![
            row("file", file, problem),
            row("why", located.why.clone(), None),
            row("looked at", looked.join(", "), None),
        ],
    }
}

/// The config parsed (it did, or `load` failed); now every file it names.
fn check(config: &Config) -> ConfigReport {
    let mut rows = vec![row("config", config.source.to_string(), None)];
    for s in &config.servers {
        let key = |k: &str| format!("servers.{}.{k}", s.name);
        if let PasswordSource::File(p) = &s.password {
            rows.push(file_row(&key("password_file"), &config.base_dir().join(p)));
        }
        if let PasswordSource::Env(var) = &s.password {
            let problem = std::env::var_os(var)
                .is_none()
                .then(|| format!("environment variable {var} is not set"));
            rows.push(row(&key("password_env"), var.clone(), problem));
        }
        for (k, f) in [
            ("ca_file", &s.tls.ca_file),
            ("client_cert", &s.tls.client_cert),
            ("client_key", &s.tls.client_key),
        ] {
            if let Some(f) = f {
                rows.push(file_row(&key(k), f));
            }
        }
    }
    if let Some(ca) = config.redis.as_ref().and_then(|r| r.ca_file.as_ref()) {
        rows.push(file_row("redis.ca_file", ca));
    }
    for (k, dir) in [
        ("log_dir", &config.log_dir),
        ("spool_dir", &config.spool_dir),
    ] {
        rows.push(dir_row(k, &config.base_dir().join(dir)));
    }
    ConfigReport { rows }
}

/// A file the config names: it must exist and be readable by this user.
fn file_row(key: &str, path: &Path) -> SettingRow {
    let problem = std::fs::File::open(path)
        .err()
        .map(|e| format!("{key}: cannot read {}: {e}", path.display()));
    row(key, path.display().to_string(), problem)
}

/// A directory essops writes: it, or the nearest folder above that exists,
/// must be writable by this user.
fn dir_row(key: &str, path: &Path) -> SettingRow {
    let problem = (!crate::disk::writable(path)).then(|| {
        format!(
            "{key}: {} is not writable by this user (essops creates {} there)",
            crate::disk::nearest_existing(path).display(),
            path.display()
        )
    });
    row(key, path.display().to_string(), problem)
}

/// `p` from the filesystem root, so the line names the file wherever it is read.
fn absolute(p: &Path) -> String {
    std::path::absolute(p)
        .unwrap_or_else(|_| p.to_path_buf())
        .display()
        .to_string()
}
