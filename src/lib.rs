//! essops: operations for battery energy storage (ESS) fleets.
//!
//! The command line ([`Cli`]) and [`run`], which loads the config, sets up
//! logging, dispatches to one command's `plan`/`execute`, and renders its
//! report. Commands live in their own modules; the binary only maps the
//! result to an exit code.

pub mod cache;
pub mod catalog;
pub mod check;
pub mod command;
pub mod config;
pub mod config_cmd;
pub mod context;
pub mod db;
pub mod demo;
pub mod disk;
pub mod doc;
pub mod error;
pub mod exit;
pub mod export;
pub mod history;
pub mod index;
pub mod ingest;
pub mod kpi;
pub mod lock;
pub mod logging;
pub mod loss;
pub mod metrics;
pub mod migrate;
pub mod modbus;
pub mod named;
pub mod output;
pub mod privilege;
pub mod read;
pub mod reconcile;
pub mod redis_client;
pub mod report;
pub mod retention;
pub mod rollup;
pub mod schema;
pub mod select;
pub mod simulate;
pub mod size;
pub mod spool;
pub mod sql;
pub mod status;
pub mod sunspec_cmd;
pub mod tasks;
pub mod tls;
pub mod window;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigSource};
use crate::context::Context;
use crate::error::{Error, Outcome};
use crate::output::{Format, Verbosity};

/// Operations for battery energy storage fleets: TimescaleDB schema, Modbus
/// ingest, local/cloud reconcile, loss rates, indexes and dashboard caches.
#[derive(Debug, Parser)]
#[command(name = "essops", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes.
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
    /// Fleet configuration. Without it: ESSOPS_CONFIG, ./sites.toml,
    /// $XDG_CONFIG_HOME/essops/sites.toml, /etc/essops/sites.toml, then the
    /// built-in demo config (`essops config path` says which and why).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// One JSON object per line on stdout, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// Print only errors and warnings (reports still go to stdout with --json).
    #[arg(long, short, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Also log progress (info level) to stderr.
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// When another run holds a run lock this one needs, wait up to this
    /// long for it (like `flock -w`) instead of exiting 5 at once.
    #[arg(long, global = true, value_name = "DURATION", value_parser = window::parse_std_duration)]
    pub wait: Option<std::time::Duration>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Migrate(migrate::MigrateArgs),
    Loss(loss::LossArgs),
    Kpi(kpi::KpiArgs),
    Reconcile(reconcile::ReconcileArgs),
    Simulate(simulate::SimulateArgs),
    Ingest(ingest::IngestArgs),
    /// Dashboard caches in Redis.
    Cache(cache::CacheArgs),
    /// Indexes: list, columns, create, drop, recommend, and a wizard.
    Index(index::IndexArgs),
    Demo(demo::DemoArgs),
    /// Batches ingest set aside per server: list, replay, discard.
    Spool(spool::SpoolArgs),
    Check(check::CheckArgs),
    Status(status::StatusArgs),
    Report(report::ReportArgs),
    Rollup(rollup::RollupArgs),
    Retention(retention::RetentionArgs),
    Size(size::SizeArgs),
    Read(read::ReadArgs),
    /// SunSpec devices: the models a device offers (no config needed).
    #[command(subcommand)]
    Sunspec(sunspec_cmd::SunSpecCommand),
    /// Which config file is used and why, what it says, and whether it is usable.
    #[command(subcommand)]
    Config(config_cmd::ConfigCommand),
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
    /// A TCP relay on loopback that adds latency each way: a slow link for
    /// benches and tests (`scripts/bench.sh reconcile`), not for production.
    #[command(hide = true)]
    Relay(demo::RelayArgs),
}

impl Command {
    /// The subcommand's name, for the sessions' application name.
    fn name(&self) -> &'static str {
        match self {
            Command::Migrate(_) => "migrate",
            Command::Loss(_) => "loss",
            Command::Kpi(_) => "kpi",
            Command::Reconcile(_) => "reconcile",
            Command::Simulate(_) => "simulate",
            Command::Ingest(_) => "ingest",
            Command::Cache(_) => "cache",
            Command::Index(_) => "index",
            Command::Demo(_) => "demo",
            Command::Spool(_) => "spool",
            Command::Check(_) => "check",
            Command::Status(_) => "status",
            Command::Report(_) => "report",
            Command::Rollup(_) => "rollup",
            Command::Retention(_) => "retention",
            Command::Size(_) => "size",
            Command::Read(_) => "read",
            Command::Sunspec(_) => "sunspec",
            Command::Config(_) => "config",
            Command::Completions { .. } => "completions",
            Command::Man => "man",
            Command::Relay(_) => "relay",
        }
    }

    /// Long-running commands stop cleanly on Ctrl-C/SIGTERM themselves;
    /// the others are cut short (and say so with exit code 130).
    fn handles_signals(&self) -> bool {
        matches!(self, Command::Simulate(_) | Command::Ingest(_))
    }
}

pub use crate::command::shutdown_signal;

/// Runs one command line to the end and says how it went.
pub fn run(cli: Cli) -> Result<Outcome, Error> {
    // Generated from the CLI definition; they need no config.
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "essops", &mut std::io::stdout());
            return Ok(Outcome::Clean);
        }
        Command::Relay(args) => return demo::relay(args),
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(Error::Output)?;
            return Ok(Outcome::Clean);
        }
        _ => {}
    }
    let format = match cli.global.json {
        true => Format::Json,
        false => Format::Table,
    };
    let verbosity = match cli.global.quiet {
        true => Verbosity::Quiet,
        false => Verbosity::Normal,
    };
    // Before the load: `config path` answers even when the file is broken.
    if let Command::Config(command) = &cli.command {
        return config_cmd::run(command, cli.global.config.as_deref(), format, verbosity);
    }
    if let Command::Sunspec(command) = &cli.command {
        return sunspec_cmd::run(command, format, verbosity);
    }
    let config = match &cli.command {
        Command::Demo(_) => Config::load_for_demo(cli.global.config.as_deref())?,
        _ => Config::load(cli.global.config.as_deref())?,
    };
    if config.source == ConfigSource::Embedded {
        eprintln!(
            "essops: no config file found: using the built-in demo config (it points at the dev services of {}; `essops config path` says where essops looked)",
            env!("CARGO_MANIFEST_DIR")
        );
    }
    db::set_application_name(cli.command.name());
    let ctx = Context {
        config: Arc::new(config),
        format,
        verbosity,
        lock_wait: cli.global.wait.unwrap_or_default(),
    };
    let stderr_level = match cli.global.verbose {
        true => logging::StderrLevel::Info,
        false => logging::StderrLevel::Warn,
    };
    logging::init(&ctx.log_dir(), ctx.config.log_keep_days, stderr_level)?;
    tracing::info!(config = %ctx.config.source, why = %ctx.config.source_why, "config file");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            Error::Output(std::io::Error::other(format!(
                "cannot start the async runtime: {e}"
            )))
        })?;
    let result = runtime.block_on(async {
        if cli.command.handles_signals() {
            return dispatch(cli.command, &ctx).await;
        }
        tokio::select! {
            result = dispatch(cli.command, &ctx) => result,
            // Ctrl-C is not success: open transactions roll back as connections drop.
            _ = shutdown_signal() => Err(Error::Interrupted),
        }
    });
    // A blocking read of the terminal (the wizard's) must not hold the exit.
    runtime.shutdown_background();
    result
}

/// One line per command; each goes plan → locks → execute → report (see `command`).
async fn dispatch(command: Command, ctx: &Context) -> Result<Outcome, Error> {
    use crate::command::run;
    match command {
        Command::Migrate(args) => run(args, ctx).await,
        Command::Loss(args) => run(args, ctx).await,
        Command::Kpi(args) => run(args, ctx).await,
        Command::Reconcile(args) => run(args, ctx).await,
        Command::Simulate(args) => run(args, ctx).await,
        Command::Ingest(args) => ingest::run(args, ctx).await,
        Command::Spool(args) => spool::run(args, ctx).await,
        Command::Cache(args) => cache::run(args, ctx).await,
        Command::Index(args) => index::run(args, ctx).await,
        Command::Demo(args) => run(args, ctx).await,
        Command::Check(args) => run(args, ctx).await,
        Command::Status(args) => status::run(args, ctx).await,
        Command::Report(args) => run(args, ctx).await,
        Command::Rollup(args) => run(args, ctx).await,
        Command::Retention(args) => run(args, ctx).await,
        Command::Size(args) => run(args, ctx).await,
        Command::Read(args) => run(args, ctx).await,
        Command::Completions { .. }
        | Command::Man
        | Command::Config(_)
        | Command::Sunspec(_)
        | Command::Relay(_) => Ok(Outcome::Clean),
    }
}
