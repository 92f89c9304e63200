//! essops: operations for battery energy storage (ESS) fleets.
//!
//! The command line ([`Cli`]) and [`run`], which loads the config, sets up
//! logging, dispatches to one command's `plan`/`execute`, and renders its
//! report. Commands live in their own modules; the binary only maps the
//! result to an exit code.

pub mod cache;
pub mod catalog;
pub mod config;
pub mod context;
pub mod db;
pub mod demo;
pub mod doc;
pub mod error;
pub mod exit;
pub mod index;
pub mod ingest;
pub mod lock;
pub mod logging;
pub mod loss;
pub mod migrate;
pub mod modbus;
pub mod output;
pub mod privilege;
pub mod reconcile;
pub mod schema;
pub mod simulate;
pub mod spool;
pub mod sql;
pub mod tasks;
pub mod tls;
pub mod window;

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::context::Context;
use crate::error::{Error, Outcome};
use crate::output::{Format, Report, Verbosity};

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
    /// Fleet configuration (default: the built-in sites.toml).
    #[arg(long, global = true, env = "ESSOPS_CONFIG", value_name = "FILE")]
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
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Migrate(migrate::MigrateArgs),
    Loss(loss::LossArgs),
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
    /// Print shell completions for bash, zsh, fish, elvish or powershell.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    Man,
}

impl Command {
    /// Long-running commands stop cleanly on Ctrl-C/SIGTERM themselves;
    /// the others are cut short (and say so with exit code 130).
    fn handles_signals(&self) -> bool {
        matches!(self, Command::Simulate(_) | Command::Ingest(_))
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM (systemd, kill).
pub async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Runs one command line to the end and says how it went.
pub fn run(cli: Cli) -> Result<Outcome, Error> {
    // Generated from the CLI definition; they need no config.
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "essops", &mut std::io::stdout());
            return Ok(Outcome::Clean);
        }
        Command::Man => {
            let cmd = <Cli as clap::CommandFactory>::command();
            clap_mangen::Man::new(cmd)
                .render(&mut std::io::stdout())
                .map_err(Error::Output)?;
            return Ok(Outcome::Clean);
        }
        _ => {}
    }
    let config = Config::load(cli.global.config.as_deref())?;
    let ctx = Context {
        config: Arc::new(config),
        format: if cli.global.json {
            Format::Json
        } else {
            Format::Table
        },
        verbosity: if cli.global.quiet {
            Verbosity::Quiet
        } else {
            Verbosity::Normal
        },
    };
    let stderr_level = match cli.global.verbose {
        true => logging::StderrLevel::Info,
        false => logging::StderrLevel::Warn,
    };
    logging::init(&ctx.log_dir(), stderr_level)?;
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

async fn dispatch(command: Command, ctx: &Context) -> Result<Outcome, Error> {
    match command {
        Command::Migrate(args) => {
            let plan = migrate::plan(&args, ctx)?;
            let report = match args.dry_run {
                true => migrate::dry_run(&plan),
                false => migrate::execute(plan, ctx).await?,
            };
            emit(&report, ctx)
        }
        Command::Reconcile(args) => {
            let plan = reconcile::plan(&args, ctx, chrono::Utc::now())?;
            let _locks = lock::acquire_sites(ctx, "reconcile", plan.site_names())?;
            let mode = if args.dry_run {
                reconcile::Mode::DryRun
            } else {
                reconcile::Mode::Apply
            };
            let report = reconcile::execute(plan, ctx, mode).await;
            emit(&report, ctx)
        }
        Command::Ingest(args) => {
            let plan = ingest::plan(&args, ctx)?;
            if args.plan {
                return emit(
                    &ingest::plan_check::check(&plan, ctx, args.probe).await?,
                    ctx,
                );
            }
            let report = ingest::execute(plan, ctx, shutdown_signal(), args.duration).await?;
            emit(&report, ctx)
        }
        Command::Cache(args) => match args.command {
            cache::CacheCommand::Warm(w) => {
                let sites = ctx.config.select_sites(&w.sites)?;
                let _locks =
                    lock::acquire_sites(ctx, "cache-warm", sites.iter().map(|s| s.name.as_str()))?;
                let report = cache::warm(&w, ctx).await?;
                emit(&report, ctx)
            }
        },
        Command::Completions { .. } | Command::Man => Ok(Outcome::Clean),
        Command::Index(args) => {
            use index::IndexCommand as I;
            match args.command {
                Some(I::List(a)) => emit(&index::list(&a, ctx).await?, ctx),
                Some(I::Columns(a)) => emit(&index::columns(&a, ctx).await?, ctx),
                Some(I::Create(a)) => emit(&index::create(&a, ctx).await?, ctx),
                Some(I::Drop(a)) => emit(&index::drop(&a, ctx).await?, ctx),
                Some(I::Recommend(a)) => emit(&index::recommend(&a, ctx).await?, ctx),
                Some(I::Wizard) | None => emit(&index::wizard::run(ctx).await?, ctx),
            }
        }
        Command::Demo(args) => {
            let report = demo::execute(&args, ctx).await?;
            emit(&report, ctx)
        }
        Command::Spool(args) => match args.command {
            spool::SpoolCommand::List(a) => emit(&spool::list(&a, ctx)?, ctx),
            spool::SpoolCommand::Replay(a) => emit(&spool::replay(&a, ctx).await?, ctx),
            spool::SpoolCommand::Discard(a) => emit(&spool::discard(&a, ctx)?, ctx),
        },
        Command::Simulate(args) => {
            let report = simulate::execute(&args, ctx, shutdown_signal()).await?;
            emit(&report, ctx)
        }
        Command::Loss(args) => {
            let plan = loss::plan(&args, ctx, chrono::Utc::now())?;
            let _locks = lock::acquire_sites(ctx, "loss", plan.site_names())?;
            let report = loss::execute(plan, ctx).await?;
            emit(&report, ctx)
        }
    }
}

fn emit<R: Report>(report: &R, ctx: &Context) -> Result<Outcome, Error> {
    output::render(
        report,
        ctx.format,
        ctx.verbosity,
        &mut std::io::stdout().lock(),
    )
    .map_err(Error::Output)?;
    Ok(report.outcome())
}
