//! Reading the history back, for `essops status`: the newest ingest minute
//! per device group and host, loss per table on a day, the last reconcile.

use chrono::{DateTime, NaiveDate, Utc};
use tokio_postgres::Client;

use super::{EVENTS_TABLE, LOSS_TABLE, MINUTES_TABLE, RECONCILE_TABLE, table};

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
