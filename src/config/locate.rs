//! Which config file a run uses, and why, as other Unix tools look: the first
//! that exists of `--config`, `ESSOPS_CONFIG`, `./sites.toml`,
//! `$XDG_CONFIG_HOME/essops/sites.toml` (`~/.config` when unset) and
//! `/etc/essops/sites.toml`; last the built-in demo config. Relative paths in
//! a file resolve against its folder; the built-in config's resolve against
//! the repository it was built from, and only while that still exists.

use std::path::{Path, PathBuf};

use super::ConfigSource;

/// The config a run uses, and the rule that chose it.
#[derive(Debug, Clone)]
pub struct Located {
    pub source: ConfigSource,
    pub why: String,
    /// Every place looked at, in order, for messages.
    pub looked: Vec<PathBuf>,
}

/// Whether the working directory is inside the repository essops was
/// built from (where the built-in demo config may be used).
pub fn inside_repository() -> bool {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let (Ok(cwd), Ok(repo)) = (std::env::current_dir(), repo.canonicalize()) else {
        return false;
    };
    cwd.canonicalize().is_ok_and(|cwd| cwd.starts_with(repo))
}

/// Where the built-in config's relative paths point: the repository it was
/// built from, when that is still on this machine.
pub fn embedded_base() -> Option<PathBuf> {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    repo.join("sites.toml").is_file().then_some(repo)
}

/// The candidates after `--config` and `ESSOPS_CONFIG`, with their reasons.
fn candidates() -> Vec<(PathBuf, &'static str)> {
    let mut out = vec![(
        PathBuf::from("sites.toml"),
        "./sites.toml exists in the current directory",
    )];
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".config")));
    if let Some(dir) = xdg {
        out.push((
            dir.join("essops").join("sites.toml"),
            "found under $XDG_CONFIG_HOME (or ~/.config)",
        ));
    }
    out.push((
        PathBuf::from("/etc/essops/sites.toml"),
        "found in /etc/essops",
    ));
    out
}

/// The config to use: `flag` (`--config`) or `ESSOPS_CONFIG` when given,
/// even if missing (reading it then fails with its name); else the first
/// candidate that exists; else the built-in demo config.
pub fn locate(flag: Option<&Path>) -> Located {
    if let Some(path) = flag {
        return Located {
            source: ConfigSource::File(path.to_path_buf()),
            why: "named by --config".into(),
            looked: vec![path.to_path_buf()],
        };
    }
    if let Some(path) = std::env::var_os("ESSOPS_CONFIG").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return Located {
            source: ConfigSource::File(path.clone()),
            why: "named by ESSOPS_CONFIG".into(),
            looked: vec![path],
        };
    }
    let mut looked = Vec::new();
    for (path, why) in candidates() {
        looked.push(path.clone());
        if path.is_file() {
            return Located {
                source: ConfigSource::File(path),
                why: why.into(),
                looked,
            };
        }
    }
    let why = match embedded_base() {
        Some(repo) => format!(
            "no config file found; the built-in demo config, with paths in {}",
            repo.display()
        ),
        None => "no config file found; the built-in demo config".into(),
    };
    Located {
        source: ConfigSource::Embedded,
        why,
        looked,
    }
}
