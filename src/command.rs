//! One shape for every command: parsed args → [`Command::plan`] (resolves
//! inputs, may read, never writes; declares the run locks it needs) →
//! [`Command::execute`] (does the work, or for `--dry-run` describes it, and
//! returns a report; never prints) → `output` renders the report as a table
//! or JSON lines and its outcome becomes the exit code.
//!
//! [`run`] is the one place that takes run locks. A command with
//! subcommands (index, cache, spool) routes each to [`run`] in its module,
//! so `lib.rs` dispatches every command in one line.

use std::future::Future;

use crate::context::Context;
use crate::error::Error;
use crate::exit::Outcome;
use crate::output::Report;

/// A subcommand's parsed arguments.
pub trait Command: Sized {
    type Plan: Plan;
    type Report: Report;
    /// Resolves inputs and reads what it needs; changes nothing.
    fn plan(self, ctx: &Context) -> impl Future<Output = Result<Self::Plan, Error>>;
    /// Does the planned work (a dry run only describes it).
    fn execute(
        plan: Self::Plan,
        ctx: &Context,
    ) -> impl Future<Output = Result<Self::Report, Error>>;
}

/// What a plan needs held while it executes.
pub trait Plan {
    /// Run locks as (job, site): a second run of the same job on the same
    /// site is refused (exit 5) while these are held.
    fn locks(&self) -> Vec<crate::lock::LockKey> {
        Vec::new()
    }
}

/// The run locks of `job` on each of `sites`, each site once (a plan lists
/// a site once per server).
pub fn site_locks<S: AsRef<str>>(
    job: &str,
    sites: impl IntoIterator<Item = S>,
) -> Vec<crate::lock::LockKey> {
    let mut seen: Vec<String> = Vec::new();
    for s in sites {
        if !seen.iter().any(|n| n == s.as_ref()) {
            seen.push(s.as_ref().to_string());
        }
    }
    seen.iter()
        .map(|s| crate::lock::LockKey::site(job, s))
        .collect()
}

/// Plans, takes the plan's locks, executes, renders; returns the outcome.
pub async fn run<C: Command>(args: C, ctx: &Context) -> Result<Outcome, Error> {
    let plan = args.plan(ctx).await?;
    let _locks = crate::lock::acquire_all(ctx, &plan.locks()).await?;
    let report = C::execute(plan, ctx).await?;
    emit(&report, ctx)
}

/// Renders a report to stdout; its outcome is the run's.
pub fn emit<R: Report>(report: &R, ctx: &Context) -> Result<Outcome, Error> {
    crate::output::render(
        report,
        ctx.format,
        ctx.verbosity,
        &mut std::io::stdout().lock(),
    )
    .map_err(Error::Output)?;
    Ok(report.outcome())
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

/// A plan that is its command's own arguments (nothing to resolve, no lock).
#[derive(Debug)]
pub struct Args<A>(pub A);

impl<A> Plan for Args<A> {}
