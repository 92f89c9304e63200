//! The README and `docs/`: a short front door, links that resolve, only
//! flags essops has, and config examples whose every key essops knows.

use std::collections::BTreeSet;
use std::path::PathBuf;

use essops::config::{Config, ConfigSource};

/// Flags the docs name that belong to other tools, and which.
const OTHER_TOOLS: [&str; 12] = [
    "--profile",     // cargo
    "--path",        // cargo install
    "--locked",      // cargo
    "--no-build",    // cargo deb
    "--test",        // cargo test
    "--headless",    // chromium
    "--screenshot",  // chromium
    "--window-size", // chromium
    "--cpu",         // stress
    "--now",         // systemctl enable
    "--port",        // essops relay (hidden) and redis-server
    "--delay",       // essops relay (hidden)
];

fn repo() -> PathBuf {
    PathBuf::from(crate::support::REPO)
}

/// README.md and every page of docs/, with their text.
fn pages() -> Vec<(PathBuf, String)> {
    let mut paths = vec![repo().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    paths.extend(docs);
    paths
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect()
}

#[test]
fn docs_readme_is_a_short_front_door() {
    let lines = std::fs::read_to_string(repo().join("README.md"))
        .unwrap()
        .lines()
        .count();
    assert!(
        lines <= 250,
        "README.md has {lines} lines; move detail to docs/"
    );
}

#[test]
fn docs_links_resolve() {
    let mut checked = 0;
    for (page, text) in pages() {
        for target in text.split("](").skip(1).filter_map(|s| s.split(')').next()) {
            let file = target.split('#').next().unwrap();
            if file.is_empty() || file.contains("://") || file.starts_with("mailto:") {
                continue;
            }
            let path = page.parent().unwrap().join(file);
            assert!(
                path.exists(),
                "{}: link to `{target}`: no such file",
                page.display()
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} links found");
}

/// Every long flag of every essops command (global flags included).
fn essops_flags() -> BTreeSet<String> {
    fn walk(cmd: &clap::Command, out: &mut BTreeSet<String>) {
        for arg in cmd.get_arguments() {
            if let Some(long) = arg.get_long() {
                out.insert(format!("--{long}"));
            }
        }
        for sub in cmd.get_subcommands() {
            walk(sub, out);
        }
    }
    let mut out: BTreeSet<String> = ["--help", "--version"].map(String::from).into();
    walk(&<essops::Cli as clap::CommandFactory>::command(), &mut out);
    out
}

#[test]
fn docs_name_only_flags_essops_has() {
    let known = essops_flags();
    let mut named = 0;
    for (page, text) in pages() {
        for (i, _) in text.match_indices("--") {
            let before = text[..i].chars().next_back().unwrap_or(' ');
            let flag: String = text[i..]
                .chars()
                .take_while(|c| *c == '-' || c.is_ascii_lowercase() || c.is_ascii_digit())
                .collect();
            // Prose dashes, `--sunspec-… …`-style families and table rules.
            if !" `[(".contains(before) || flag.len() < 4 || flag.ends_with('-') {
                continue;
            }
            named += 1;
            assert!(
                known.contains(&flag) || OTHER_TOOLS.contains(&flag.as_str()),
                "{}: `{flag}` is no flag of essops (nor listed in OTHER_TOOLS)",
                page.display()
            );
        }
    }
    assert!(named > 100, "only {named} flags found");
}

/// The ```toml blocks of a page.
fn toml_blocks(text: &str) -> Vec<String> {
    text.split("```toml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_string())
        .collect()
}

/// Parses a config as if it were the repository's `sites.toml`; `Err` when
/// a key is unknown (any other refusal means every key was known).
fn unknown_keys(text: &str) -> Result<(), String> {
    match Config::parse(text, ConfigSource::File(repo().join("sites.toml"))) {
        Ok(_) => Ok(()),
        Err(e) if e.to_string().contains("unknown field") => Err(e.to_string()),
        Err(_) => Ok(()),
    }
}

#[test]
fn docs_config_examples_use_only_keys_essops_knows() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for block in toml_blocks(&readme) {
        Config::parse(&block, ConfigSource::File(repo().join("sites.toml")))
            .unwrap_or_else(|e| panic!("README's config example: {e}\n{block}"));
    }
    let reference = std::fs::read_to_string(repo().join("docs/CONFIGURATION.md")).unwrap();
    let block = toml_blocks(&reference).remove(0);
    unknown_keys(&block).unwrap();
    // Each commented-out `# key = value` line, switched on alone.
    let mut tried = 0;
    let lines: Vec<&str> = block.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix("# ") else {
            continue;
        };
        let setting = rest.split("  #").next().unwrap().trim_end();
        if setting.parse::<toml::Table>().is_err() {
            continue;
        }
        let mut switched = lines.clone();
        switched[i] = setting;
        unknown_keys(&switched.join("\n"))
            .unwrap_or_else(|e| panic!("CONFIGURATION.md: `{setting}`: {e}"));
        tried += 1;
    }
    assert!(tried >= 10, "only {tried} commented keys tried");
}

#[test]
fn docs_sample_config_error_is_what_essops_prints() {
    let reference = std::fs::read_to_string(repo().join("docs/CONFIGURATION.md")).unwrap();
    let sample = reference
        .lines()
        .find(|l| l.starts_with("essops: error: sites.toml:"))
        .expect("CONFIGURATION.md shows a sample config error");
    let scratch = crate::support::Scratch::new("docs_sample_error");
    let config = scratch.write(
        "sites.toml",
        "[servers.local]\nurl = \"postgres://essops@127.0.0.1:25432\"\n[[sites]]\nname = \"S\"\nbanks = [{ id = 1, racks = 9 }, { id = 2, racks = 0 }]\n",
    );
    let run = crate::support::Cmd::new(Some(&config))
        .args(["config", "check"])
        .run()
        .expect_code(3);
    let printed = run.stderr();
    let shown = sample.trim_start_matches("essops: error: sites.toml:");
    let line = printed
        .lines()
        .find(|l| l.contains("key `sites[0].banks[1].racks`"))
        .unwrap_or_else(|| panic!("no such error printed:\n{printed}"));
    assert!(
        line.ends_with(&shown[shown.find(": key").unwrap()..]),
        "docs show `{sample}`, essops printed `{line}`"
    );
}
