//! Reading the history back. For `essops status`: the newest ingest minute
//! per device group and host, loss per table on a day, the last reconcile.
//! For `essops report`: loss per device and day, reconcile runs, failed
//! polls and spool depth per hour, breaker events.

use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::Client;

use super::{DROPS_TABLE, EVENTS_TABLE, LOSS_TABLE, MINUTES_TABLE, RECONCILE_TABLE, table};

/// The newest minute of one ingest (site, device group, host) on one server,
/// with its spool depth ten minutes before, to tell a growing spool.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub devices: String,
    pub host: String,
    pub server: String,
    pub minute: DateTime<Utc>,
    pub polls_ok: i64,
    pub polls_failed: i64,
    pub spool_rows: i64,
    pub spool_bytes: i64,
    pub spool_rows_before: Option<i64>,
    pub breakers_open: i32,
}

pub async fn heartbeats(
    client: &Client,
    site: &str,
) -> Result<Vec<Heartbeat>, tokio_postgres::Error> {
    let t = table(MINUTES_TABLE);
    let sql = format!(
        "SELECT DISTINCT ON (m.devices, m.host, m.server)
                m.devices, m.host, m.server, m.minute, m.polls_ok, m.polls_failed,
                m.spool_rows, m.spool_bytes, m.breakers_open,
                (SELECT b.spool_rows FROM {t} b
                  WHERE b.site = m.site AND b.devices = m.devices AND b.host = m.host AND b.server = m.server
                    AND b.minute <= m.minute - interval '10 minutes'
                  ORDER BY b.minute DESC LIMIT 1)
           FROM {t} m
          WHERE m.site = $1 AND m.minute > now() - interval '7 days'
          ORDER BY m.devices, m.host, m.server, m.minute DESC"
    );
    let rows = client.query(&sql, &[&site]).await?;
    Ok(rows
        .iter()
        .map(|r| Heartbeat {
            devices: r.get(0),
            host: r.get(1),
            server: r.get(2),
            minute: r.get(3),
            polls_ok: r.get(4),
            polls_failed: r.get(5),
            spool_rows: r.get(6),
            spool_bytes: r.get(7),
            breakers_open: r.get(8),
            spool_rows_before: r.get(9),
        })
        .collect())
}

/// One table's loss on one day, as recorded.
#[derive(Debug, Clone)]
pub struct TableDay {
    pub table: String,
    pub expected: i64,
    pub missing: i64,
}

pub async fn loss_on(
    client: &Client,
    site: &str,
    server: &str,
    day: NaiveDate,
) -> Result<Vec<TableDay>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT table_name, sum(expected)::int8, sum(missing)::int8 FROM {}
          WHERE site = $1 AND server = $2 AND day = $3
          GROUP BY table_name ORDER BY table_name",
        table(LOSS_TABLE)
    );
    let rows = client.query(&sql, &[&site, &server, &day]).await?;
    Ok(rows
        .iter()
        .map(|r| TableDay {
            table: r.get(0),
            expected: r.get(1),
            missing: r.get(2),
        })
        .collect())
}

/// The newest reconcile run of a site: when, and its tables' totals.
#[derive(Debug, Clone)]
pub struct LastReconcile {
    pub at: DateTime<Utc>,
    pub failed_tables: i64,
    pub copied: i64,
}

pub async fn last_reconcile(
    client: &Client,
    site: &str,
) -> Result<Option<LastReconcile>, tokio_postgres::Error> {
    // A run's tables are written within seconds of each other: take the
    // newest row's run as the rows of the last minute before it.
    let t = table(RECONCILE_TABLE);
    let sql = format!(
        "WITH newest AS (SELECT max(at) AS at FROM {t} WHERE site = $1 AND NOT dry_run)
         SELECT n.at, count(*) FILTER (WHERE r.outcome = 'failed'), coalesce(sum(r.copied_to_a + r.copied_to_b), 0)::int8
           FROM newest n JOIN {t} r ON r.site = $1 AND NOT r.dry_run AND r.at > n.at - interval '1 hour' AND r.at <= n.at
          GROUP BY n.at"
    );
    let row = client.query_opt(&sql, &[&site]).await?;
    Ok(row.map(|r| LastReconcile {
        at: r.get(0),
        failed_tables: r.get(1),
        copied: r.get(2),
    }))
}

/// Events of a site since `since`, newest first.
pub async fn events_since(
    client: &Client,
    site: &str,
    since: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, String, Option<String>, String)>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT at, event, device, detail FROM {} WHERE site = $1 AND at >= $2 ORDER BY at DESC LIMIT 100",
        table(EVENTS_TABLE)
    );
    let rows = client.query(&sql, &[&site, &since]).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

// ------------------------------------------------------------ for the report

/// One device's recorded loss on one day.
#[derive(Debug, Clone)]
pub struct DeviceDay {
    pub table: String,
    pub device: String,
    pub device_ids: Vec<i16>,
    pub day: NaiveDate,
    pub expected: i64,
    pub missing: i64,
    pub longest_gap_s: i64,
    pub loss_pct: f64,
    pub grade: String,
}

/// The loss this server recorded about itself for `site` on the days `from..=to`.
pub async fn loss_days(
    client: &Client,
    site: &str,
    server: &str,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Vec<DeviceDay>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT table_name, device, device_ids, day, expected, missing, longest_gap_s, loss_pct, grade
           FROM {} WHERE site = $1 AND server = $2 AND day BETWEEN $3 AND $4",
        table(LOSS_TABLE)
    );
    let rows = client.query(&sql, &[&site, &server, &from, &to]).await?;
    Ok(rows
        .iter()
        .map(|r| DeviceDay {
            table: r.get(0),
            device: r.get(1),
            device_ids: r.get(2),
            day: r.get(3),
            expected: r.get(4),
            missing: r.get(5),
            longest_gap_s: r.get(6),
            loss_pct: r.get(7),
            grade: r.get(8),
        })
        .collect())
}

/// One table of one reconcile run.
#[derive(Debug, Clone)]
pub struct Run {
    pub at: DateTime<Utc>,
    pub window_start: DateTime<Utc>,
    pub table: String,
    pub server_a: String,
    pub server_b: String,
    pub copied_to_a: i64,
    pub copied_to_b: i64,
    pub outcome: String,
    pub error: Option<String>,
}

/// The runs (not dry runs) whose reconciled window overlaps `start..end`, oldest first.
pub async fn runs_over(
    client: &Client,
    site: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Vec<Run>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT at, window_start, table_name, server_a, server_b, copied_to_a, copied_to_b, outcome, error
           FROM {} WHERE site = $1 AND NOT dry_run AND window_start < $3 AND window_end > $2
          ORDER BY at, table_name",
        table(RECONCILE_TABLE)
    );
    let rows = client.query(&sql, &[&site, &start, &end]).await?;
    Ok(rows
        .iter()
        .map(|r| Run {
            at: r.get(0),
            window_start: r.get(1),
            table: r.get(2),
            server_a: r.get(3),
            server_b: r.get(4),
            copied_to_a: r.get(5),
            copied_to_b: r.get(6),
            outcome: r.get(7),
            error: r.get(8),
        })
        .collect())
}

/// A figure per hour and name (a failure reason, a server).
pub type Hourly = Vec<(DateTime<Utc>, String, i64)>;

/// Failed polls per hour and reason. Every server holds every ingest's
/// minutes, once per server it writes: one server's row per minute counts.
pub async fn failed_polls_hourly(
    client: &Client,
    site: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Hourly, tokio_postgres::Error> {
    let sql = format!(
        "WITH m AS (SELECT DISTINCT ON (devices, host, minute) minute, failed_by_reason FROM {}
                     WHERE site = $1 AND minute >= $2 AND minute < $3
                     ORDER BY devices, host, minute, server)
         SELECT date_trunc('hour', m.minute), r.key, sum(r.value::int8)::int8
           FROM m, jsonb_each_text(m.failed_by_reason) r
          WHERE r.value ~ '^[0-9]+$'
          GROUP BY 1, 2 HAVING sum(r.value::int8) > 0 ORDER BY 1, 2",
        table(MINUTES_TABLE)
    );
    hourly(client, &sql, site, start, end).await
}

/// The spool's depth (rows waiting) per hour and server: the hour's peak of
/// the sum over the site's ingests.
pub async fn spool_hourly(
    client: &Client,
    site: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Hourly, tokio_postgres::Error> {
    let sql = format!(
        "SELECT date_trunc('hour', minute), server, max(rows)::int8
           FROM (SELECT minute, server, sum(spool_rows) AS rows FROM {}
                  WHERE site = $1 AND minute >= $2 AND minute < $3 GROUP BY minute, server) s
          GROUP BY 1, 2 ORDER BY 1, 2",
        table(MINUTES_TABLE)
    );
    hourly(client, &sql, site, start, end).await
}

async fn hourly(
    client: &Client,
    sql: &str,
    site: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Hourly, tokio_postgres::Error> {
    let rows = client.query(sql, &[&site, &start, &end]).await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// A breaker opening or closing.
#[derive(Debug, Clone)]
pub struct BreakerEvent {
    pub at: DateTime<Utc>,
    pub opened: bool,
    pub host: String,
    pub device: String,
    pub detail: String,
}

/// The breaker events of `start..end`, oldest first.
pub async fn breaker_events(
    client: &Client,
    site: &str,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> Result<Vec<BreakerEvent>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT at, event = 'breaker_opened', host, coalesce(device, ''), detail FROM {}
          WHERE site = $1 AND at >= $2 AND at < $3 AND event IN ('breaker_opened', 'breaker_closed')
          ORDER BY at",
        table(EVENTS_TABLE)
    );
    let rows = client.query(&sql, &[&site, &start, &end]).await?;
    Ok(rows
        .iter()
        .map(|r| BreakerEvent {
            at: r.get(0),
            opened: r.get(1),
            host: r.get(2),
            device: r.get(3),
            detail: r.get(4),
        })
        .collect())
}

/// The reconciled windows of `table` that runs after `since` copied rows
/// into on `server`: (window start, window end, run time), oldest first.
pub async fn copied_into(
    client: &Client,
    site: &str,
    table_name: &str,
    server: &str,
    since: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, DateTime<Utc>, DateTime<Utc>)>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT window_start, window_end, at FROM {}
          WHERE site = $1 AND table_name = $2 AND NOT dry_run AND at > $3
            AND ((server_a = $4 AND copied_to_a > 0) OR (server_b = $4 AND copied_to_b > 0))
          ORDER BY at",
        table(RECONCILE_TABLE)
    );
    let rows = client
        .query(&sql, &[&site, &table_name, &since, &server])
        .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Whether clean reconcile runs (not dry runs) of `table_name` between
/// `server` and `other` together cover `[start, end)` in both directions:
/// for each server, the runs that filled it (both-way runs, and one-way
/// runs to it) leave no gap. A chunk is a UTC day and a nightly run a local
/// day, so no single run covers a chunk outside UTC. Runs recorded before
/// migration 5 have no direction and count for neither.
pub async fn reconciled_over(
    client: &Client,
    site: &str,
    table_name: &str,
    (server, other): (&str, &str),
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> Result<bool, tokio_postgres::Error> {
    let sql = format!(
        "SELECT window_start, window_end FROM {}
          WHERE site = $1 AND table_name = $2 AND NOT dry_run AND outcome = 'ok'
            AND window_start < $4 AND window_end > $3
            AND ((server_a = $5 AND server_b = $6) OR (server_a = $6 AND server_b = $5))
            AND (direction = 'both' OR direction = 'to-' || $7)
          ORDER BY window_start",
        table(RECONCILE_TABLE)
    );
    for filled in [server, other] {
        let runs: Vec<(DateTime<Utc>, DateTime<Utc>)> = client
            .query(
                &sql,
                &[&site, &table_name, &start, &end, &server, &other, &filled],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if !covers(&runs, (start, end)) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether `spans`, sorted by start, leave no gap in `[start, end)`.
fn covers<T: PartialOrd + Copy>(spans: &[(T, T)], (start, end): (T, T)) -> bool {
    let mut reached = start;
    for &(from, to) in spans {
        if reached >= end || from > reached {
            break;
        }
        if to > reached {
            reached = to;
        }
    }
    reached >= end
}

/// The local days among `days` that have no loss rows of `table_name` recorded
/// for `server`.
pub async fn loss_unrecorded(
    client: &Client,
    site: &str,
    server: &str,
    table_name: &str,
    days: &[NaiveDate],
) -> Result<Vec<NaiveDate>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT d FROM unnest($4::date[]) d
          WHERE NOT EXISTS (SELECT 1 FROM {} WHERE site = $1 AND server = $2 AND table_name = $3 AND day = d)
          ORDER BY d",
        table(LOSS_TABLE)
    );
    let rows = client
        .query(&sql, &[&site, &server, &table_name, &days])
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// The rows a retention run counted in `[start, end)` of `table_name` when
/// it dropped that chunk on this server (None: not dropped by essops).
pub async fn dropped_rows(
    client: &Client,
    table_name: &str,
    (start, end): (DateTime<Utc>, DateTime<Utc>),
) -> Result<Option<i64>, tokio_postgres::Error> {
    let sql = format!(
        "SELECT rows FROM {} WHERE table_name = $1 AND range_start = $2 AND range_end = $3",
        table(DROPS_TABLE)
    );
    Ok(client
        .query_opt(&sql, &[&table_name, &start, &end])
        .await?
        .map(|r| r.get(0)))
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn history_reconcile_runs_cover_a_chunk_together_or_not_at_all() {
        // A UTC day (0..24) covered by local days of UTC+9: 15..39, -9..15.
        assert!(covers(&[(-9, 15), (15, 39)], (0, 24)));
        assert!(!covers(&[(15, 39)], (0, 24)), "a run covers only part");
        assert!(!covers(&[(-9, 10), (15, 39)], (0, 24)), "a gap 10..15");
        assert!(covers(&[(-9, 12), (5, 20), (19, 30)], (0, 24)), "overlaps");
        assert!(!covers::<i32>(&[], (0, 24)));
    }
}
