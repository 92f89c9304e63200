//! Logging: readable lines on stderr, and JSON lines per site in daily-rolled
//! files under the configured log directory.
//!
//! Every command logs with the same field names (see [`fields`]); an event
//! with a `site` field goes to that site's file, any other to `essops.*.log`.
//! Files roll at midnight UTC (tracing-appender's clock).

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_appender::rolling::{RollingFileAppender, Rotation};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;

use crate::exit::code as exit;

/// The log folder cannot be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up logging in {dir}: {source}")]
pub struct LoggingError {
    dir: String,
    #[source]
    source: std::io::Error,
}

impl LoggingError {
    pub fn exit_code(&self) -> u8 {
        exit::CONFIG
    }
}

crate::into_error!(LoggingError);

/// The field names every command uses, so log searches work across commands.
pub mod fields {
    pub const SITE: &str = "site";
    pub const SERVER: &str = "server";
    pub const TABLE: &str = "table";
    pub const DEVICE: &str = "device";
    pub const WINDOW_START: &str = "window_start";
    pub const WINDOW_END: &str = "window_end";
}

/// Target for graded report lines (loss grades and the like): they go to the
/// site files only, since the report itself is already on stdout.
pub const REPORT_TARGET: &str = "essops::report";

/// File name prefix for events that belong to no site.
const GENERAL_LOG: &str = "essops";

/// How much of essops's own logging goes to stderr; the files always get
/// info and above. Other crates (sqlx's notices) only reach either at warn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StderrLevel {
    Info,
    Warn,
}

fn only_ours(level: Level) -> Targets {
    Targets::new()
        .with_target("essops", level)
        // sqlx warns of any statement over 1 s; a migration on a busy server
        // is one. Noise to an operator: its errors still come through.
        .with_target("sqlx::query", Level::ERROR)
        .with_default(Level::WARN)
}

/// Installs the global subscriber. Call once, after the config is loaded.
/// Each site keeps its newest `keep_days` daily files (0: all); older ones
/// go when the site's file is first opened and at each midnight.
pub fn init(log_dir: &Path, keep_days: u32, stderr: StderrLevel) -> Result<(), LoggingError> {
    std::fs::create_dir_all(log_dir).map_err(|source| LoggingError {
        dir: log_dir.display().to_string(),
        source,
    })?;
    let max = match stderr {
        StderrLevel::Info => Level::INFO,
        StderrLevel::Warn => Level::WARN,
    };
    let stderr_layer = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_target(false)
        .without_time()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            only_ours(max).with_target(REPORT_TARGET, tracing_subscriber::filter::LevelFilter::OFF),
        );
    let files = SiteFiles {
        dir: log_dir.to_path_buf(),
        keep: keep_days as usize,
        open: Mutex::new(HashMap::new()),
    }
    .with_filter(only_ours(Level::INFO));
    // A second init (tests calling run() twice in one process) keeps the first.
    let _ = tracing_subscriber::registry()
        .with(stderr_layer)
        .with(files)
        .try_init();
    Ok(())
}

/// The JSON file layer: one rolling appender per site, opened on first use.
struct SiteFiles {
    dir: PathBuf,
    keep: usize,
    open: Mutex<HashMap<String, RollingFileAppender>>,
}

impl<S: Subscriber> Layer<S> for SiteFiles {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut visitor = JsonFields(Map::new());
        event.record(&mut visitor);
        let mut obj = visitor.0;
        let site = obj
            .get(fields::SITE)
            .and_then(Value::as_str)
            .unwrap_or(GENERAL_LOG)
            .to_string();
        obj.insert(
            "ts".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        // An explicit `level` field (loss grades: info/warning/critical) wins
        // over tracing's level, which has no "critical".
        if !obj.contains_key("level") {
            obj.insert(
                "level".into(),
                Value::String(event.metadata().level().as_str().to_lowercase()),
            );
        }
        let Ok(mut line) = serde_json::to_vec(&obj) else {
            return;
        };
        line.push(b'\n');
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let appender = match open.get_mut(&site) {
            Some(a) => a,
            None => match RollingFileAppender::builder()
                .rotation(Rotation::DAILY)
                .filename_prefix(&site)
                .filename_suffix("log")
                .max_log_files(self.keep)
                .build(&self.dir)
            {
                Ok(a) => open.entry(site).or_insert(a),
                // Logging must never stop the work; stderr still has the event.
                Err(_) => return,
            },
        };
        let _ = appender.write_all(&line);
    }
}

struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().into(), Value::String(value.into()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), Value::from(value));
    }
}
