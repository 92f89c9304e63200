//! `essops index`: list tables and indexes (chunk-summed on hypertables),
//! show columns, create and drop multi-column indexes everywhere at once,
//! recommend indexes from pg_stat_statements, and an interactive wizard.

pub mod advise;
pub mod catalog;
pub mod change;
pub mod columns;
pub mod list;
pub mod manage;
pub mod recommend;
pub mod wizard;

pub use advise::*;
pub use change::*;
pub use columns::*;
pub use list::*;

use tokio_postgres::Client;

use self::catalog::IndexInfo;
use self::manage::ChangeRow;
use crate::config::{ConfigError, Server, Site};
use crate::context::Context;
use crate::db::{self, Target};
use crate::exit::{Outcome, code as exit};
use crate::output::{Progress, Report, human_bytes};
use crate::schema::{self, TABLES, TableSpec};

#[derive(Debug, clap::Args)]
pub struct IndexArgs {
    /// Without a subcommand on a terminal: the interactive wizard.
    #[command(subcommand)]
    pub command: Option<IndexCommand>,
}

#[derive(Debug, clap::Subcommand)]
pub enum IndexCommand {
    /// Tables (rows, size, hypertable chunks) and their indexes (columns, size, scans).
    List(ListArgs),
    /// A table's columns, their types, and the indexes that cover each.
    Columns(ColumnsArgs),
    /// Create a multi-column index, in the given column order, on every chosen site and server.
    Create(CreateArgs),
    /// Drop an index on every chosen site and server.
    Drop(DropArgs),
    /// Recommend indexes from pg_stat_statements; report unused and redundant ones.
    Recommend(RecommendArgs),
    /// Pick site, server, table and columns step by step, see the SQL and the gain, confirm.
    Wizard,
}

/// Where: sites and servers (default: all of each site's servers).
pub type At = crate::select::Selection;

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub at: At,
    #[command(flatten)]
    pub tables: crate::select::Tables,
}

#[derive(Debug, clap::Args)]
pub struct ColumnsArgs {
    pub table: String,
    #[command(flatten)]
    pub at: At,
}

#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    pub table: String,
    /// Columns in index order.
    #[arg(required = true, num_args = 1..)]
    pub columns: Vec<String>,
    /// Index name (default: {table}_{columns}_idx, as the reference tool names them).
    #[arg(long)]
    pub name: Option<String>,
    /// Non-key columns stored in the index so queries reading them need no
    /// table access (index-only scans); repeatable.
    #[arg(long = "include", value_name = "COLUMN")]
    pub include: Vec<String>,
    /// Build the whole hypertable in one transaction instead of chunk by
    /// chunk: ingest's writes into the table wait for the whole build.
    #[arg(long)]
    pub one_transaction: bool,
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub at: At,
}

#[derive(Debug, clap::Args)]
pub struct DropArgs {
    pub name: String,
    #[arg(long)]
    pub dry_run: bool,
    /// Also drop a table's unique natural-key index (then duplicates become possible).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub at: At,
}

#[derive(Debug, clap::Args)]
pub struct RecommendArgs {
    /// Only statements called at least this often.
    #[arg(long, default_value_t = 10)]
    pub min_calls: i64,
    /// Create the recommended indexes (per chunk on hypertables).
    #[arg(long)]
    pub apply: bool,
    #[command(flatten)]
    pub at: At,
}

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Table(#[from] schema::UnknownTable),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Catalog(#[from] crate::catalog::TableError),
    #[error(
        "the wizard needs a terminal; use the index subcommands in scripts (essops index --help)"
    )]
    NoTerminal,
}

impl IndexError {
    pub fn exit_code(&self) -> u8 {
        match self {
            IndexError::Config(_) => exit::CONFIG,
            IndexError::Db(e) | IndexError::Catalog(crate::catalog::TableError::Db(e)) => {
                e.exit_code()
            }
            _ => exit::USAGE,
        }
    }
}

crate::into_error!(IndexError);

/// One database to work on.
pub struct Place {
    pub server: Server,
    pub site: Site,
}

impl Place {
    pub async fn connect(&self, ctx: &Context) -> Result<Client, db::DbError> {
        self.connect_as(ctx, &self.server).await
    }

    /// Through the server's administration login (`admin_url`): building
    /// and dropping an index needs the table's owner.
    pub async fn connect_admin(&self, ctx: &Context) -> Result<Client, db::DbError> {
        self.connect_as(ctx, &self.server.for_admin()).await
    }

    async fn connect_as(&self, ctx: &Context, server: &Server) -> Result<Client, db::DbError> {
        let target = Target {
            server,
            database: &self.site.database,
        };
        db::connect(&ctx.config, target).await
    }

    /// The indexes on `table` at this place.
    pub async fn indexes(
        &self,
        client: &Client,
        table: &str,
    ) -> Result<Vec<IndexInfo>, IndexError> {
        let err = catalog::query_error(&self.server.name, &self.site.database, "reading indexes");
        Ok(catalog::indexes(client, table).await.map_err(err)?)
    }
}

pub fn places(ctx: &Context, at: &At) -> Result<Vec<Place>, IndexError> {
    Ok(ctx
        .config
        .site_servers(&at.sites, &at.servers)?
        .into_iter()
        .map(|(site, server)| Place {
            server: server.clone(),
            site: site.clone(),
        })
        .collect())
}

fn table(name: &str) -> Result<TableSpec, IndexError> {
    TableSpec::by_name(name).ok_or_else(|| schema::UnknownTable(name.to_string()).into())
}

// ------------------------------------------------------------------ list

/// Index subcommands whose plan is their arguments and whose work is one call.
macro_rules! index_command {
    ($($args:ty => $report:ty = $f:path;)+) => {$(
        impl crate::command::Command for $args {
            type Plan = crate::command::Args<$args>;
            type Report = $report;
            async fn plan(self, _ctx: &Context) -> Result<Self::Plan, crate::error::Error> {
                Ok(crate::command::Args(self))
            }
            async fn execute(plan: Self::Plan, ctx: &Context) -> Result<$report, crate::error::Error> {
                Ok($f(&plan.0, ctx).await?)
            }
        }
    )+};
}

index_command! {
    ListArgs => ListReport = list;
    ColumnsArgs => ColumnsReport = columns;
    CreateArgs => ChangeReport = create;
    DropArgs => ChangeReport = drop;
    RecommendArgs => RecommendReport = recommend;
}

/// The wizard: it asks for what the flags would give.
pub struct WizardArgs;

impl crate::command::Command for WizardArgs {
    type Plan = crate::command::Args<WizardArgs>;
    type Report = ChangeReport;
    async fn plan(self, _ctx: &Context) -> Result<Self::Plan, crate::error::Error> {
        Ok(crate::command::Args(self))
    }
    async fn execute(
        _plan: Self::Plan,
        ctx: &Context,
    ) -> Result<ChangeReport, crate::error::Error> {
        Ok(wizard::run(ctx).await?)
    }
}

/// `essops index …`: each subcommand through the one command shape.
pub async fn run(
    args: IndexArgs,
    ctx: &Context,
) -> Result<crate::exit::Outcome, crate::error::Error> {
    use crate::command::run;
    match args.command {
        Some(IndexCommand::List(a)) => run(a, ctx).await,
        Some(IndexCommand::Columns(a)) => run(a, ctx).await,
        Some(IndexCommand::Create(a)) => run(a, ctx).await,
        Some(IndexCommand::Drop(a)) => run(a, ctx).await,
        Some(IndexCommand::Recommend(a)) => run(a, ctx).await,
        Some(IndexCommand::Wizard) | None => run(WizardArgs, ctx).await,
    }
}
