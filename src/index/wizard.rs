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
    let sites: Vec<String> = ctx.config.sites.iter().map(|s| s.name.clone()).collect();
    let site = ctx.config.sites[p.choose("Site", &sites).await?].clone();
    let servers: Vec<String> = site.servers.clone();
    let server = ctx
        .config
        .server(&servers[p.choose("Server", &servers).await?])?
        .clone();
    let place = Place { server, site };
    let client = place.connect(ctx).await?;
    let err = catalog::query_error(
        &place.server.name,
        &place.site.database,
        "reading the catalog",
    );
    let names: Vec<&str> = TABLES.iter().map(|t| t.name).collect();
    let tables = catalog::tables(&client, &names).await.map_err(&err)?;
    if tables.is_empty() {
        return Err(IndexError::Usage(format!(
            "database `{}` has no ESS tables (run essops migrate)",
            place.site.database
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
    let columns =
        crate::catalog::require_table(&client, &place.server.name, &place.site.database, &spec)
            .await
            .map_err(IndexError::Usage)?;
    let indexes = catalog::indexes(&client, spec.name).await.map_err(&err)?;
    let statements = recommend::statements(&client, 1).await.unwrap_or_default();
    let recommended: Option<(Vec<String>, Vec<String>)> = statements
        .iter()
        .filter_map(|s| recommend::parse(&s.query))
        .filter(|sh| sh.table == spec.name)
        .map(|sh| (sh.candidate(), sh.include(&sh.candidate())))
        .find(|(c, i)| recommend::covered(&indexes, c, i).is_none());
    println!("Columns of {}:", spec.name);
    for (i, c) in columns.iter().enumerate() {
        let cover = covering(&indexes, &c.name);
        let cover = if cover.is_empty() {
            String::new()
        } else {
            format!("  [in {}]", cover.join(", "))
        };
        println!("  {}) {} {}{cover}", i + 1, c.name, c.data_type);
    }
    let default = recommended.as_ref().map(|(cols, _)| {
        cols.iter()
            .filter_map(|c| {
                columns
                    .iter()
                    .position(|k| &k.name == c)
                    .map(|i| (i + 1).to_string())
            })
            .collect::<Vec<_>>()
            .join(",")
    });
    if let Some((cols, include)) = &recommended {
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
    let picked: Vec<String> = loop {
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
                    .and_then(|n| columns.get(n.wrapping_sub(1)))
                    .map(|c| c.name.clone())
            })
            .collect();
        match picked {
            Some(v) if !v.is_empty() => break v,
            _ => println!("  give column numbers from the list, e.g. 3,1"),
        }
    };
    let name = loop {
        let name = p
            .ask(
                "Index name",
                Some(&manage::default_name(spec.name, &picked)),
            )
            .await?;
        match manage::check_name(&name) {
            Ok(()) => break name,
            Err(e) => println!("  {e}"),
        }
    };
    // The recommendation's INCLUDE columns come along when its key was taken as is.
    let include: Vec<String> = match &recommended {
        Some((cols, include)) if *cols == picked => include.clone(),
        _ => Vec::new(),
    };
    match manage::plan_create(&indexes, spec.name, &name, &picked, &include) {
        Err(m) | Ok(Some(m)) => {
            println!("{m}");
            return Ok(ChangeReport { rows: Vec::new() });
        }
        Ok(None) => {}
    }
    let sql = manage::create_sql(spec.name, &name, &picked, &include, chosen.hypertable);
    println!("\nSQL: {sql}");
    match estimate(&client, spec.name, &picked, &include, &statements).await {
        Some((calls, before, after)) if calls > 0 => println!(
            "Estimated planner cost over {calls} recorded calls: {:.0} -> {:.0} per call ({:.0} % less)",
            before / calls as f64,
            after / calls as f64,
            100.0 * (1.0 - after / before.max(f64::MIN_POSITIVE))
        ),
        _ => println!(
            "No recorded queries on `{}` to estimate the gain from.",
            spec.name
        ),
    }
    let confirm = p.ask("Create it? (y/N)", Some("N")).await?;
    if !confirm.eq_ignore_ascii_case("y") && !confirm.eq_ignore_ascii_case("yes") {
        println!("Nothing changed.");
        return Ok(ChangeReport { rows: Vec::new() });
    }
    let new = NewIndex {
        name: &name,
        columns: &picked,
        include: &include,
        per_chunk: chosen.hypertable,
    };
    let row = create_at(ctx, &place, &spec, &new, false).await?;
    println!(
        "The same without the wizard: essops index create {} {} --name {name}{} --site {} --server {}{}",
        spec.name,
        picked.join(" "),
        include
            .iter()
            .map(|c| format!(" --include {c}"))
            .collect::<String>(),
        place.site.name,
        place.server.name,
        if chosen.hypertable {
            " --per-chunk"
        } else {
            ""
        }
    );
    Ok(ChangeReport { rows: vec![row] })
}
