//! Moving the missing rows from one server to the other, whole and once.
//!
//! The diff hands the [`Mover`] each key a side lacks; in batches, the keys
//! go to the source as binary COPY into a temp table (on a connection that
//! shares the diff's snapshot), the rows they name come back as binary COPY
//! and are piped, unparsed, into a staging temp table on the target (same
//! shared columns, same types, so the binary format is the same). One
//! `INSERT … SELECT … WHERE NOT EXISTS … ON CONFLICT DO NOTHING RETURNING`
//! then adds only what the target still lacks and names what it added: the
//! check that the batch landed. Where the target has no unique natural-key
//! index, the insert takes the lock ingest takes for the same kind of insert.
//! Rows that differ in value are only ever updated with `--prefer`.
//! Temp tables are ANALYZEd by hand: autovacuum never sees them, and without
//! statistics the planner picks nested loops over the whole hypertable.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures_util::{SinkExt, TryStreamExt, pin_mut};
use tokio::sync::{Mutex, OnceCell};
use tokio_postgres::Client;

use super::stream::{pack, unpack};
use crate::config::{Config, Server};
use crate::db::{self, BinaryCopyWriter, DbError, Target, quote_ident, quote_list};
use crate::schema::TableSpec;
use crate::sql::insert_absent_sql;

/// Keys moved per batch (one transaction on the target each).
const FLUSH_AT: usize = 100_000;

/// A device's packed id and a Unix-microsecond timestamp.
pub type PackedKey = (u64, i64);

/// Key columns of the temp key table: d0, d1, … then t.
fn key_table_columns(spec: &TableSpec) -> Vec<String> {
    (0..spec.device_columns.len())
        .map(|i| format!("d{i}"))
        .chain(["t".to_string()])
        .collect()
}

/// Joins table alias `x` to key alias `k`: each device column by `=`, then
/// the time by `time` (a condition on `x.{ts}` and `k.t`).
fn natural_key_join(spec: &TableSpec, time: fn(&str) -> String) -> String {
    let ts = quote_ident(crate::schema::TIME_COLUMN);
    spec.device_columns
        .iter()
        .zip(key_table_columns(spec))
        .map(|(col, k)| format!("x.{} = k.{k}", quote_ident(col)))
        .chain([time(&ts)])
        .collect::<Vec<_>>()
        .join(" AND ")
}

/// Joins table alias `x` to key alias `k` on the natural key.
pub(super) fn key_join(spec: &TableSpec) -> String {
    natural_key_join(spec, |ts| format!("x.{ts} = k.t"))
}

/// [`key_join`] for probing a unique natural-key index, the time written as
/// a one-point range. With `=` the planner, misled by ANALYZE's sample
/// (every rack of a site shares each timestamp, yet few are sampled twice),
/// takes the time index for unique and filters a site's worth of rows per
/// key; a range on the time is priced as many rows there, so the key index
/// (whose device columns narrow it to one) is taken.
fn probe_join(spec: &TableSpec) -> String {
    natural_key_join(spec, |ts| format!("x.{ts} >= k.t AND x.{ts} <= k.t"))
}

/// Creates (or empties) the session's temp key table and loads `keys` into
/// it; the session's window becomes the keys' span, so the rows query
/// touches only the chunks that can hold them.
pub async fn load_keys(
    client: &Client,
    spec: &TableSpec,
    keys: &[PackedKey],
) -> Result<(), tokio_postgres::Error> {
    let cols = key_table_columns(spec);
    let defs: Vec<String> = cols
        .iter()
        .map(|c| format!("{c} {}", if c == "t" { "timestamptz" } else { "int4" }))
        .collect();
    let create = format!(
        "CREATE TEMP TABLE IF NOT EXISTS essops_keys ({}); TRUNCATE essops_keys",
        defs.join(", ")
    );
    let n = spec.device_columns.len();
    let mut w = BinaryCopyWriter::new();
    for (device, micros) in keys {
        let ids: Vec<i32> = unpack(*device, n).into_iter().map(i32::from).collect();
        w.row(&ids, *micros);
    }
    let (first, last) = keys.iter().fold((i64::MAX, i64::MIN), |(lo, hi), (_, t)| {
        (lo.min(*t), hi.max(*t))
    });
    let span = crate::window::Window {
        start: super::diff::micros_to_time(first.min(last)),
        end: super::diff::micros_to_time(last.max(first).saturating_add(1)),
    };
    // One round trip: the table made, the span set, the COPY parsed.
    let (created, spanned, copy) = tokio::join!(
        client.batch_execute(&create),
        super::stream::set_window(client, span),
        client.prepare("COPY essops_keys FROM STDIN (FORMAT binary)")
    );
    created?;
    spanned?;
    let sink = client.copy_in(&copy?).await?;
    pin_mut!(sink);
    sink.send(w.finish()).await?;
    sink.finish().await?;
    client.batch_execute("ANALYZE essops_keys").await
}

/// The source's rows named by its `essops_keys`, as binary COPY. With a
/// unique natural key they stream as the key index finds them; without one
/// a sample may be stored twice, and only one copy of each is sent.
fn rows_out_sql(spec: &TableSpec, columns: &[String], unique_key: bool) -> String {
    let x_cols = crate::sql::prefixed_list("x", columns);
    let k_cols = key_table_columns(spec).join(", ");
    let (distinct, order, join) = match unique_key {
        true => (String::new(), String::new(), probe_join(spec)),
        false => (
            format!("DISTINCT ON ({k_cols}) "),
            format!(" ORDER BY {k_cols}"),
            key_join(spec),
        ),
    };
    format!(
        "COPY (SELECT {distinct}{x_cols} FROM {table} x JOIN essops_keys k ON {join}
               WHERE x.{ts} >= current_setting('essops.window_start')::timestamptz
                 AND x.{ts} < current_setting('essops.window_end')::timestamptz{order}) TO STDOUT (FORMAT binary)",
        table = quote_ident(spec.name),
        ts = quote_ident(crate::schema::TIME_COLUMN),
    )
}

/// The connection that reads a direction's rows, in the source's snapshot.
#[derive(Clone, Copy)]
struct Source<'c> {
    client: &'c Client,
    /// The source table has a unique index on the natural key.
    unique_key: bool,
}

/// Pipes the source's rows named by its `essops_keys`, unparsed, into the
/// target's COPY `into` (both started at once); returns bytes and rows.
async fn pipe_rows(
    source: Source<'_>,
    tx: &tokio_postgres::Transaction<'_>,
    into: &str,
    spec: &TableSpec,
    columns: &[String],
) -> Result<(u64, u64), tokio_postgres::Error> {
    let out = rows_out_sql(spec, columns, source.unique_key);
    let (sink, stream) = tokio::join!(tx.copy_in(into), source.client.copy_out(&out));
    let (sink, stream) = (sink?, stream?);
    pin_mut!(sink);
    pin_mut!(stream);
    let mut moved = 0u64;
    while let Some(chunk) = stream.try_next().await? {
        moved += chunk.len() as u64;
        sink.feed(chunk).await?;
    }
    let rows = sink.finish().await?;
    Ok((moved, rows))
}

/// Pipes the source's rows named by its `essops_keys` into the target's
/// `essops_stage` (in the target's open transaction); returns the bytes moved.
async fn stage_rows(
    source: Source<'_>,
    tx: &tokio_postgres::Transaction<'_>,
    spec: &TableSpec,
    columns: &[String],
) -> Result<u64, tokio_postgres::Error> {
    let (table, cols) = (quote_ident(spec.name), quote_list(columns));
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE essops_stage ON COMMIT DROP AS SELECT {cols} FROM {table} WITH NO DATA"
    ))
    .await?;
    let into = format!("COPY essops_stage ({cols}) FROM STDIN (FORMAT binary)");
    let (moved, _) = pipe_rows(source, tx, &into, spec, columns).await?;
    tx.batch_execute("ANALYZE essops_stage").await?;
    Ok(moved)
}

/// The natural key of `alias` as `RETURNING` columns: device ids as int4,
/// then the time.
fn key_returning(spec: &TableSpec, alias: &str) -> String {
    spec.key_columns()
        .iter()
        .map(|c| match *c == crate::schema::TIME_COLUMN {
            true => format!("{alias}.{}", quote_ident(c)),
            false => format!("{alias}.{}::int4", quote_ident(c)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn returned_keys(rows: &[tokio_postgres::Row], n: usize) -> BTreeSet<PackedKey> {
    rows.iter()
        .filter_map(|r| {
            let ids = db::device_id(r, n).ok().flatten()?;
            let ts: chrono::DateTime<chrono::Utc> = r.get(n);
            Some((pack(&ids), ts.timestamp_micros()))
        })
        .collect()
}

/// What an insert says it added.
enum Added {
    /// A direct COPY: every row the source sent (the count COPY returns).
    All(u64),
    /// An insert of the absent rows: the keys it returned.
    Keys(BTreeSet<PackedKey>),
}

/// Adds the rows the source's `essops_keys` names to the target. With a
/// unique natural key the rows go straight in by COPY (the diff found them
/// absent; a concurrent writer that got there first makes the COPY fail on
/// the key, and then they go through staging, where only the absent rows
/// are inserted). Returns the bytes moved and what was added.
async fn insert_rows(
    source: Source<'_>,
    target: &mut Client,
    spec: &TableSpec,
    columns: &[String],
    unique_key: bool,
) -> Result<(u64, Added), tokio_postgres::Error> {
    if unique_key {
        match copy_rows_in(source, target, spec, columns).await {
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {}
            other => return other,
        }
    }
    let tx = target.transaction().await?;
    if !unique_key {
        crate::lock::absent_insert(&tx, spec.name).await?;
    }
    let moved = stage_rows(source, &tx, spec, columns).await?;
    let sql = insert_absent_sql(
        spec,
        columns,
        "essops_stage",
        &key_returning(spec, &quote_ident(spec.name)),
        unique_key,
    );
    let inserted = tx.query(&sql, &[]).await?;
    tx.commit().await?;
    let keys = returned_keys(&inserted, spec.device_columns.len());
    Ok((moved, Added::Keys(keys)))
}

/// Pipes the source's rows named by its `essops_keys` straight into the table.
async fn copy_rows_in(
    source: Source<'_>,
    target: &mut Client,
    spec: &TableSpec,
    columns: &[String],
) -> Result<(u64, Added), tokio_postgres::Error> {
    let tx = target.transaction().await?;
    let into = format!(
        "COPY {} ({}) FROM STDIN (FORMAT binary)",
        quote_ident(spec.name),
        quote_list(columns)
    );
    let (moved, rows) = pipe_rows(source, &tx, &into, spec, columns).await?;
    tx.commit().await?;
    Ok((moved, Added::All(rows)))
}

/// Overwrites the target's rows named by the source's `essops_keys` with
/// the source's values, where they differ; returns the keys updated.
async fn update_rows(
    source: Source<'_>,
    target: &mut Client,
    spec: &TableSpec,
    columns: &[String],
) -> Result<(u64, BTreeSet<PackedKey>), tokio_postgres::Error> {
    let tx = target.transaction().await?;
    let moved = stage_rows(source, &tx, spec, columns).await?;
    let key = spec.key_columns();
    let same_key = crate::sql::same_key(spec, "t", "s");
    let values: Vec<&String> = columns
        .iter()
        .filter(|c| !key.contains(&c.as_str()))
        .collect();
    let set = values
        .iter()
        .map(|c| format!("{q} = s.{q}", q = quote_ident(c)))
        .collect::<Vec<_>>()
        .join(", ");
    let (t_row, s_row) = (
        crate::sql::prefixed_list("t", &values),
        crate::sql::prefixed_list("s", &values),
    );
    let returning = key_returning(spec, "t");
    let sql = format!(
        "UPDATE {table} t SET {set} FROM essops_stage s WHERE {same_key} AND ROW({t_row}) IS DISTINCT FROM ROW({s_row}) RETURNING {returning}",
        table = quote_ident(spec.name),
    );
    let updated = tx.query(&sql, &[]).await?;
    tx.commit().await?;
    Ok((moved, returned_keys(&updated, spec.device_columns.len())))
}

/// One direction's connections: a reader in the source's snapshot, a writer
/// on the target. Opened by [`Mover::warm_up`] or at the first batch.
struct Pipe {
    fetcher: Client,
    writer: Client,
    /// The source table has a unique natural-key index.
    source_unique: bool,
    /// The target table has one.
    target_unique: bool,
}

impl Pipe {
    /// The reading end, the writing end, and whether the target's natural
    /// key is unique.
    fn ends(&mut self) -> (Source<'_>, &mut Client, bool) {
        let source = Source {
            client: &self.fetcher,
            unique_key: self.source_unique,
        };
        (source, &mut self.writer, self.target_unique)
    }
}

/// One direction: rows go from `source` into `target`.
pub struct End<'a> {
    pub source: &'a Server,
    pub target: &'a Server,
    /// The source snapshot's exported id.
    pub snapshot: Option<String>,
    pub fills: bool,
    /// With `--prefer`, rows that differ in value are overwritten here.
    pub updates: bool,
    pipe: Arc<OnceCell<Mutex<Pipe>>>,
    inserts: Vec<PackedKey>,
    overwrites: Vec<PackedKey>,
}

impl<'a> End<'a> {
    pub fn new(
        source: &'a Server,
        target: &'a Server,
        snapshot: Option<String>,
        fills: bool,
        updates: bool,
    ) -> End<'a> {
        End {
            source,
            target,
            snapshot,
            fills,
            updates,
            pipe: Arc::default(),
            inserts: Vec::new(),
            overwrites: Vec::new(),
        }
    }
}

/// Per direction (0: into a, 1: into b), what was found and done.
#[derive(Debug, Default)]
pub struct Tally {
    pub missing: [BTreeMap<u64, u64>; 2],
    pub copied: [BTreeMap<u64, u64>; 2],
    pub repaired: [u64; 2],
    /// Keys a batch sent that its insert did not add (a concurrent writer
    /// got there first, or the source lost the row): checked afresh after.
    pub unconfirmed: Vec<PackedKey>,
    pub bytes_moved: u64,
}

/// Collects what each side lacks and moves it in batches.
pub struct Mover<'a> {
    config: &'a Config,
    database: &'a str,
    spec: &'a TableSpec,
    columns: &'a [String],
    pub ends: [End<'a>; 2],
    pub tally: Tally,
}

impl<'a> Mover<'a> {
    pub fn new(
        config: &'a Config,
        database: &'a str,
        spec: &'a TableSpec,
        columns: &'a [String],
        ends: [End<'a>; 2],
    ) -> Mover<'a> {
        Mover {
            config,
            database,
            spec,
            columns,
            ends,
            tally: Tally::default(),
        }
    }

    /// Side `into` (0: a, 1: b) lacks this sample.
    pub async fn missing(&mut self, into: usize, key: PackedKey) -> Result<(), DbError> {
        *self.tally.missing[into].entry(key.0).or_default() += 1;
        if self.ends[into].fills {
            self.ends[into].inserts.push(key);
            return self.flush_if_full().await;
        }
        Ok(())
    }

    /// The sample differs in value; with `--prefer`, the other side takes the preferred one's.
    pub async fn differs(&mut self, key: PackedKey) -> Result<(), DbError> {
        match self.ends.iter_mut().find(|e| e.updates) {
            Some(end) => {
                end.overwrites.push(key);
                self.flush_if_full().await
            }
            None => Ok(()),
        }
    }

    /// Opens the connections of every direction that may write, without
    /// borrowing the mover: run it beside a diff that is about to find rows.
    pub fn warm_up(&self) -> impl std::future::Future<Output = Result<(), DbError>> + 'a {
        let (config, database, spec) = (self.config, self.database, self.spec);
        let ends: Vec<_> = self
            .ends
            .iter()
            .filter(|e| e.fills || e.updates)
            .map(|e| (e.source, e.target, e.snapshot.clone(), Arc::clone(&e.pipe)))
            .collect();
        async move {
            let opened = ends.iter().map(|(source, target, snapshot, pipe)| {
                pipe.get_or_try_init(move || {
                    open_pipe(config, database, spec, source, target, snapshot.as_deref())
                })
            });
            futures_util::future::try_join_all(opened).await.map(|_| ())
        }
    }

    async fn flush_if_full(&mut self) -> Result<(), DbError> {
        let held: usize = self
            .ends
            .iter()
            .map(|e| e.inserts.len() + e.overwrites.len())
            .sum();
        match held >= FLUSH_AT {
            true => self.flush().await,
            false => Ok(()),
        }
    }

    /// Moves every held key, both directions at once.
    pub async fn flush(&mut self) -> Result<(), DbError> {
        let [into_a, into_b] = &mut self.ends;
        let (ra, rb) = tokio::join!(
            move_end(self.config, self.database, self.spec, self.columns, into_a),
            move_end(self.config, self.database, self.spec, self.columns, into_b),
        );
        for (into, moved) in [ra?, rb?].into_iter().enumerate() {
            self.tally.bytes_moved += moved.bytes;
            for (device, _) in &moved.inserted {
                *self.tally.copied[into].entry(*device).or_default() += 1;
            }
            self.tally.unconfirmed.extend(moved.unconfirmed);
            self.tally.repaired[into] += moved.repaired;
        }
        Ok(())
    }
}

#[derive(Default)]
struct Moved {
    bytes: u64,
    inserted: Vec<PackedKey>,
    unconfirmed: Vec<PackedKey>,
    repaired: u64,
}

async fn move_end(
    config: &Config,
    database: &str,
    spec: &TableSpec,
    columns: &[String],
    end: &mut End<'_>,
) -> Result<Moved, DbError> {
    let mut moved = Moved::default();
    if end.inserts.is_empty() && end.overwrites.is_empty() {
        return Ok(moved);
    }
    let (source, target) = (end.source, end.target);
    let snapshot = end.snapshot.as_deref();
    let pipe = end
        .pipe
        .get_or_try_init(|| open_pipe(config, database, spec, source, target, snapshot))
        .await?;
    let mut pipe = pipe.lock().await;
    let pipe = &mut *pipe;
    let failed = |e: tokio_postgres::Error, what: &str| {
        let privilege = e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE);
        let server = if privilege { target } else { source };
        DbError::query(
            &server.name,
            database,
            format!("{what} of table `{}`", spec.name),
            &e,
        )
    };
    for keys in by_utc_days(std::mem::take(&mut end.inserts)) {
        load_keys(&pipe.fetcher, spec, &keys)
            .await
            .map_err(|e| failed(e, "sending the missing keys"))?;
        let (source, writer, target_unique) = pipe.ends();
        let (bytes, added) = insert_rows(source, writer, spec, columns, target_unique)
            .await
            .map_err(|e| failed(e, "copying the missing rows"))?;
        moved.bytes += bytes;
        match added {
            // Every key sent landed; fewer rows than keys means the source
            // lost some, and which is not known: all are checked afresh.
            Added::All(n) if n == keys.len() as u64 => moved.inserted.extend(keys),
            Added::All(_) => moved.unconfirmed.extend(keys),
            Added::Keys(inserted) => {
                let (landed, not): (Vec<PackedKey>, Vec<PackedKey>) =
                    keys.into_iter().partition(|k| inserted.contains(k));
                moved.inserted.extend(landed);
                moved.unconfirmed.extend(not);
            }
        }
    }
    if !end.overwrites.is_empty() {
        let keys = std::mem::take(&mut end.overwrites);
        load_keys(&pipe.fetcher, spec, &keys)
            .await
            .map_err(|e| failed(e, "sending the keys of rows that differ"))?;
        let (source, writer, _) = pipe.ends();
        let (bytes, updated) = update_rows(source, writer, spec, columns)
            .await
            .map_err(|e| failed(e, "repairing the rows that differ"))?;
        moved.bytes += bytes;
        moved.repaired = updated.len() as u64;
    }
    Ok(moved)
}

/// Keys in batches of two UTC days at most, each sorted. A batch's fetch
/// probes, per key, every chunk its span touches: one batch of a month
/// probed thirty chunks per key (a day is TimescaleDB's usual chunk here).
/// Two days keep a site's local day, which straddles two UTC days, in one
/// batch (every batch costs a few round trips more on a slow link).
fn by_utc_days(mut keys: Vec<PackedKey>) -> Vec<Vec<PackedKey>> {
    const DAY: i64 = 86_400_000_000;
    let Some(first) = keys.iter().map(|k| k.1.div_euclid(DAY)).min() else {
        return Vec::new();
    };
    let span = |ts: i64| (ts.div_euclid(DAY) - first).div_euclid(2);
    keys.sort_unstable_by_key(|&(device, ts)| (span(ts), device, ts));
    keys.chunk_by(|a, b| span(a.1) == span(b.1))
        .map(<[PackedKey]>::to_vec)
        .collect()
}

/// The fetcher joins the source's snapshot, so batches copy what the diff saw.
async fn open_pipe(
    config: &Config,
    database: &str,
    spec: &TableSpec,
    source: &Server,
    target: &Server,
    snapshot: Option<&str>,
) -> Result<Mutex<Pipe>, DbError> {
    let (fetcher, writer) = tokio::join!(
        db::connect(
            config,
            Target {
                server: source,
                database
            }
        ),
        db::connect(
            config,
            Target {
                server: target,
                database
            }
        )
    );
    let (fetcher, writer) = (fetcher?, writer?);
    let snapshot = snapshot.unwrap_or_default();
    // The id comes from pg_export_snapshot(), never from input; SET
    // TRANSACTION SNAPSHOT takes no parameters, so it is checked and spliced.
    if snapshot.is_empty() || !snapshot.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
        return Err(DbError::bad_value(
            &source.name,
            database,
            "joining the diff's snapshot",
            format!("unexpected snapshot id `{snapshot}`"),
        ));
    }
    let joined = super::begin_read(Some(snapshot));
    let (joined, source_unique, target_unique) = tokio::join!(
        fetcher.batch_execute(&joined),
        crate::catalog::has_unique_key(&fetcher, spec),
        crate::catalog::has_unique_key(&writer, spec)
    );
    let join_failed = |e: tokio_postgres::Error| {
        DbError::query(&source.name, database, "joining the diff's snapshot", &e)
    };
    joined.map_err(join_failed)?;
    let indexes = |server: &Server, e: tokio_postgres::Error| {
        DbError::query(
            &server.name,
            database,
            format!("reading the indexes of table `{}`", spec.name),
            &e,
        )
    };
    let target_unique = target_unique.map_err(|e| indexes(target, e))?;
    let source_unique = source_unique.map_err(|e| indexes(source, e))?;
    // A batch names a sliver of the window's rows: probing the key index
    // per key beats a hash join over whole chunks, whose filter on the
    // window setting the planner prices too low. No key repeats, so a
    // memo of probes only costs.
    if source_unique {
        fetcher
            .batch_execute(
                "SET LOCAL enable_hashjoin = off; SET LOCAL enable_mergejoin = off; SET LOCAL enable_memoize = off",
            )
            .await
            .map_err(join_failed)?;
    }
    Ok(Mutex::new(Pipe {
        fetcher,
        writer,
        source_unique,
        target_unique,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::RACK;

    #[test]
    fn reconcile_batches_span_two_utc_days_at_most() {
        let day = 86_400_000_000;
        let keys = vec![(2, 2 * day + 5), (1, 7), (1, day), (2, 3), (3, 3 * day - 2)];
        assert_eq!(
            by_utc_days(keys),
            vec![
                vec![(1, 7), (1, day), (2, 3)],
                vec![(2, 2 * day + 5), (3, 3 * day - 2)]
            ]
        );
        let from_yesterday = by_utc_days(vec![(1, -1), (1, day + 1), (1, 2 * day)]);
        assert_eq!(
            from_yesterday,
            vec![vec![(1, -1)], vec![(1, day + 1), (1, 2 * day)]]
        );
        assert!(by_utc_days(Vec::new()).is_empty());
    }

    #[test]
    fn reconcile_key_join_covers_the_natural_key() {
        assert_eq!(
            key_join(&RACK),
            r#"x."BANK_ID" = k.d0 AND x."RACK_ID" = k.d1 AND x."TIMESTAMP" = k.t"#
        );
        assert_eq!(
            probe_join(&RACK),
            r#"x."BANK_ID" = k.d0 AND x."RACK_ID" = k.d1 AND x."TIMESTAMP" >= k.t AND x."TIMESTAMP" <= k.t"#
        );
    }
}
