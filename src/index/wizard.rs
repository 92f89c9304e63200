//! The interactive index wizard: site, server, table, columns in order (the
//! recommendation preselected), the exact SQL and the estimated gain, then
//! confirm and watch. Nothing changes before the confirmation; Ctrl-C at any
//! step leaves everything as it was. Every step has a flag equivalent, and
//! the wizard prints the command that does the same without it.

use std::io::{IsTerminal, Write};

use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};

use super::{
    ChangeReport, IndexError, NewIndex, Place, catalog, covering, create_at, estimate, manage,
    recommend,
};
use crate::context::Context;
use crate::schema::{self, TABLES, TableSpec};

struct Prompt {
    lines: Lines<BufReader<Stdin>>,
}

impl Prompt {
    /// Asks and reads one line; end of input is a cancel.
    async fn ask(&mut self, question: &str, default: Option<&str>) -> Result<String, IndexError> {
        match default {
            Some(d) => print!("{question} [{d}]: "),
            None => print!("{question}: "),
        }
        let _ = std::io::stdout().flush();
        let line = self
            .lines
            .next_line()
            .await
            .ok()
            .flatten()
            .ok_or(IndexError::Usage("cancelled; nothing changed".into()))?;
        let line = line.trim().to_string();
        Ok(match (line.is_empty(), default) {
            (true, Some(d)) => d.to_string(),
            _ => line,
        })
    }

    /// A numbered menu; returns the index chosen.
    async fn choose(&mut self, title: &str, items: &[String]) -> Result<usize, IndexError> {
        println!("{title}:");
        for (i, item) in items.iter().enumerate() {
            println!("  {}) {item}", i + 1);
        }
        loop {
            let answer = self
                .ask(
                    &format!("Choose 1-{}", items.len()),
                    (items.len() == 1).then_some("1"),
                )
                .await?;
            match answer.parse::<usize>() {
                Ok(n) if (1..=items.len()).contains(&n) => return Ok(n - 1),
                _ => println!("  `{answer}` is not one of 1-{}", items.len()),
            }
        }
    }
}

/// The table the wizard works on, with what it learned about it.
struct Chosen {
    place: Place,
    client: tokio_postgres::Client,
    spec: TableSpec,
    hypertable: bool,
    columns: Vec<crate::catalog::Column>,
    indexes: Vec<catalog::IndexInfo>,
    statements: Vec<recommend::Statement>,
    /// The recorded queries' best uncovered index: key columns and INCLUDE columns.
    recommended: Option<(Vec<String>, Vec<String>)>,
}

pub async fn run(ctx: &Context) -> Result<ChangeReport, IndexError> {
    if !std::io::stdin().is_terminal() {
        return Err(IndexError::NoTerminal);
    }
    let mut p = Prompt {
        lines: BufReader::new(tokio::io::stdin()).lines(),
    };
    println!(
        "essops index wizard: nothing changes until you confirm; Ctrl-C leaves at any step.\n"
    );
    let t = choose_table(ctx, &mut p).await?;
    show_columns(&t);
    let picked = ask_columns(&t, &mut p).await?;
    let name = ask_name(&t, &picked, &mut p).await?;
    // The recommendation's INCLUDE columns come along when its key was taken as is.
    let include: Vec<String> = match &t.recommended {
        Some((cols, include)) if *cols == picked => include.clone(),
        _ => Vec::new(),
    };
    let nothing = Ok(ChangeReport { rows: Vec::new() });
    match manage::plan_create(&t.indexes, t.spec.name, &name, &picked, &include) {
        Err(taken) => {
            println!("{taken}");
            return nothing;
        }
        Ok(Some(exists)) => {
            println!("{exists}");
            return nothing;
        }
        Ok(None) => {}
    }
    let sql = manage::create_sql(t.spec.name, &name, &picked, &include, t.hypertable);
    println!("\nSQL: {sql}");
    show_estimate(&t, &picked, &include).await;
    let confirm = p.ask("Create it? (y/N)", Some("N")).await?;
    if !confirm.eq_ignore_ascii_case("y") && !confirm.eq_ignore_ascii_case("yes") {
        println!("Nothing changed.");
        return nothing;
    }
    let new = NewIndex {
        name: &name,
        columns: &picked,
        include: &include,
        per_chunk: t.hypertable,
    };
    let row = create_at(ctx, &t.place, &t.spec, &new, false).await?;
    println!(
        "The same without the wizard: essops index create {} {} --name {name}{} --site {} --server {}{}",
        t.spec.name,
        picked.join(" "),
        include
            .iter()
            .map(|c| format!(" --include {c}"))
            .collect::<String>(),
        t.place.site.name,
        t.place.server.name,
        if t.hypertable { " --per-chunk" } else { "" }
    );
    Ok(ChangeReport { rows: vec![row] })
}

/// Site, server and table from menus, then the table's columns, indexes and
/// the recommendation from recorded queries.
async fn choose_table(ctx: &Context, p: &mut Prompt) -> Result<Chosen, IndexError> {
    let sites: Vec<String> = ctx.config.sites.iter().map(|s| s.name.clone()).collect();
    let site = ctx.config.sites[p.choose("Site", &sites).await?].clone();
    let servers: Vec<String> = site.servers.clone();
    let server = ctx
        .config
        .server(&servers[p.choose("Server", &servers).await?])?
        .clone();
    let place = Place { server, site };
    let client = place.connect(ctx).await?;
    let (server_name, database) = (place.server.name.clone(), place.site.database.clone());
    let err = catalog::query_error(&server_name, &database, "reading the catalog");
    let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
    let tables = catalog::tables(&client, &names).await.map_err(&err)?;
    if tables.is_empty() {
        return Err(IndexError::Usage(format!(
            "database `{database}` has no ESS tables (run essops migrate)"
        )));
    }
    let labels: Vec<String> = tables
        .iter()
        .map(|t| match t.hypertable {
            true => format!(
                "{} (about {} rows, hypertable, {} chunks)",
                t.table, t.rows_estimate, t.chunks
            ),
            false => format!("{} (about {} rows)", t.table, t.rows_estimate),
        })
        .collect();
    let chosen = &tables[p.choose("Table", &labels).await?];
    let spec: TableSpec = TableSpec::by_name(&chosen.table)
        .ok_or_else(|| schema::UnknownTable(chosen.table.clone()))?;
    let columns = crate::catalog::require_table(&client, &server_name, &database, &spec).await?;
    let indexes = catalog::indexes(&client, spec.name).await.map_err(&err)?;
    let statements = recommend::statements(&client, 1).await.unwrap_or_default();
    let recommended = statements
        .iter()
        .filter_map(|s| recommend::parse(&s.query))
        .filter(|sh| sh.table == spec.name)
        .map(|sh| (sh.candidate(), sh.include(&sh.candidate())))
        .find(|(c, i)| recommend::covered(&indexes, c, i).is_none());
    Ok(Chosen {
        place,
        client,
        spec,
        hypertable: chosen.hypertable,
        columns,
        indexes,
        statements,
        recommended,
    })
}

/// The numbered columns, the indexes each is in, and the recommendation.
fn show_columns(t: &Chosen) {
    println!("Columns of {}:", t.spec.name);
    for (i, c) in t.columns.iter().enumerate() {
        let cover = covering(&t.indexes, &c.name);
        let cover = if cover.is_empty() {
            String::new()
        } else {
            format!("  [in {}]", cover.join(", "))
        };
        println!("  {}) {} {}{cover}", i + 1, c.name, c.data_type);
    }
    if let Some((cols, include)) = &t.recommended {
        println!(
            "Recommended from recorded queries: {} (equality columns first, the time range last){}",
            cols.join(", "),
            if include.is_empty() {
                String::new()
            } else {
                format!(", including {}", include.join(", "))
            }
        );
    }
}

/// The index's columns by number, the recommendation's as the default.
async fn ask_columns(t: &Chosen, p: &mut Prompt) -> Result<Vec<String>, IndexError> {
    let number = |name: &String| {
        let at = t.columns.iter().position(|k| &k.name == name);
        at.map(|i| (i + 1).to_string())
    };
    let default = t.recommended.as_ref().map(|(cols, _)| {
        let numbers: Vec<String> = cols.iter().filter_map(number).collect();
        numbers.join(",")
    });
    loop {
        let answer = p
            .ask(
                "Columns in index order (numbers, comma-separated)",
                default.as_deref(),
            )
            .await?;
        let picked: Option<Vec<String>> = answer
            .split(',')
            .map(|n| {
                n.trim()
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| t.columns.get(n.wrapping_sub(1)))
                    .map(|c| c.name.clone())
            })
            .collect();
        match picked {
            Some(v) if !v.is_empty() => return Ok(v),
            _ => println!("  give column numbers from the list, e.g. 3,1"),
        }
    }
}

async fn ask_name(t: &Chosen, picked: &[String], p: &mut Prompt) -> Result<String, IndexError> {
    let default = manage::default_name(t.spec.name, picked);
    loop {
        let name = p.ask("Index name", Some(&default)).await?;
        match manage::check_name(&name) {
            Ok(()) => return Ok(name),
            Err(e) => println!("  {e}"),
        }
    }
}

/// The planner's cost of the recorded queries before and after the index.
async fn show_estimate(t: &Chosen, picked: &[String], include: &[String]) {
    match estimate(&t.client, t.spec.name, picked, include, &t.statements).await {
        Some((calls, before, Some(after))) if calls > 0 => println!(
            "Estimated planner cost over {calls} recorded calls: {:.0} -> {:.0} per call ({:.0} % less)",
            before / calls as f64,
            after / calls as f64,
            100.0 * (1.0 - after / before.max(f64::MIN_POSITIVE))
        ),
        Some((calls, before, None)) if calls > 0 => println!(
            "Planner cost over {calls} recorded calls: {:.0} per call now; the gain is unmeasured without HypoPG (CREATE EXTENSION hypopg), and essops never builds an index on a live table to measure it.",
            before / calls as f64
        ),
        _ => println!(
            "No recorded queries on `{}` to estimate the gain from.",
            t.spec.name
        ),
    }
}
