//! Finding what differs by the cheaper of two routes, chosen per table:
//!
//! - **hashes**: per device and hour, a count and a sum of key hashes on both
//!   servers; only the buckets that differ have their keys read. Cheapest
//!   when few buckets differ (a clean re-run reads no key at all).
//! - **keys**: every key of the window, once per side, sorted, by binary
//!   COPY, merged as it arrives. Cheapest when most buckets differ
//!   (scattered loss), where hashing first would only add a pass.
//!
//! The estimate is the hash summary of the window's first stretch (a
//! ninety-sixth, at least a quarter hour, at most a day): see [`choose`].
//! Comparing values always streams (each row's hash rides with its key).

use serde::Serialize;
use tokio::sync::mpsc;

use super::diff::{self, BUCKET_MICROS, BUCKET_SECS, Range, Summary};
use super::stream::{self, Cursor, Key, StreamError, pack};
use super::transfer::{Mover, PackedKey};
use crate::db::DbError;
use crate::window::Window;

/// Keys kept of the rows that differ in value (for the report's sample and
/// its list of columns).
const VALUE_SAMPLE: usize = 200;

/// The estimate's stretch ends on a multiple of this.
const PROBE_EDGE_SECS: i64 = 900;

/// Wire size of one side's totals row (two int8, a numeric as text, framing).
const TOTALS_BYTES: u64 = 80;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Route {
    Hashes,
    Keys,
}

/// What the diff found (the missing keys went to the mover as they came).
#[derive(Debug, Default)]
pub struct Found {
    pub route: Option<Route>,
    pub why: String,
    pub without_device: u64,
    pub buckets_compared: u64,
    pub buckets_differing: u64,
    /// Keys (per side) past the first stretch shown equal by one hash of
    /// the whole stretch, not bucket by bucket.
    pub keys_by_one_hash: u64,
    pub values_differing: u64,
    pub value_sample: Vec<PackedKey>,
    pub bytes_read: [u64; 2],
}

/// The readers of both sides, each in its snapshot, and how both store the
/// device columns.
pub struct Readers<'r> {
    pub a: &'r tokio_postgres::Client,
    pub b: &'r tokio_postgres::Client,
    pub devices: &'r diff::DeviceTypes,
}

/// A side that failed, and why: 0 is a, 1 is b.
#[derive(Debug)]
pub struct SideError(pub usize, pub StreamError);

impl From<(usize, tokio_postgres::Error)> for SideError {
    fn from((side, e): (usize, tokio_postgres::Error)) -> Self {
        SideError(side, StreamError::Db(e))
    }
}

/// A failure of the diff: one side's read, or the mover's copy.
#[derive(Debug)]
pub enum RouteError {
    Side(SideError),
    Move(DbError),
}

impl From<DbError> for RouteError {
    fn from(e: DbError) -> Self {
        RouteError::Move(e)
    }
}

impl From<SideError> for RouteError {
    fn from(e: SideError) -> Self {
        RouteError::Side(e)
    }
}

pub async fn find(
    readers: Readers<'_>,
    spec: &crate::schema::TableSpec,
    window: Window,
    values: Option<&[String]>,
    mover: &mut Mover<'_>,
) -> Result<Found, RouteError> {
    let mut found = Found::default();
    let (first, rest) = split(window);
    let rest = match rest {
        Some(rest) if values.is_none() => rest,
        _ => {
            found.why = match values {
                Some(_) => "comparing values: each row's hash rides with its key",
                None => "a window of one stretch: its keys are read once",
            }
            .into();
            stream_keys(&readers, spec, window, values, mover, &mut found).await?;
            return Ok(found);
        }
    };
    let (sa, sb) = summaries(&readers, spec, first, &mut found).await?;
    let buckets = sa.len().max(sb.len()) as u64;
    let differ: u64 = diff::differing_ranges(&sa, &sb)
        .iter()
        .map(bucket_count)
        .sum();
    let (route, why) = choose(differ, buckets);
    found.why = format!("{differ} of {buckets} buckets of the first stretch differ: {why}");
    tracing::debug!(table = spec.name, why = %found.why, "reconcile route");
    // Rows will be copied: connect for that while the diff runs.
    let warm = futures_util::future::OptionFuture::from((differ > 0).then(|| mover.warm_up()));
    let diff = async {
        match route {
            Route::Keys => stream_keys(&readers, spec, window, values, mover, &mut found).await,
            Route::Hashes => {
                let (mut sa, mut sb) = (sa, sb);
                match rest_agrees(&readers, spec, rest, &mut found).await? {
                    Some(rows) => found.keys_by_one_hash = rows,
                    None => {
                        let (ra, rb) = summaries(&readers, spec, rest, &mut found).await?;
                        diff::add(&mut sa, ra);
                        diff::add(&mut sb, rb);
                    }
                }
                let ranges = diff::differing_ranges(&sa, &sb);
                found.buckets_compared = sa.len().max(sb.len()) as u64;
                found.buckets_differing = ranges.iter().map(bucket_count).sum();
                keys_of_ranges(&readers, spec, window, &ranges, mover, &mut found).await
            }
        }
    };
    let (warmed, diffed) = tokio::join!(warm, diff);
    diffed?;
    warmed.transpose()?;
    found.route = Some(route);
    Ok(found)
}

/// Most buckets differ: read every key once (hashing first would only add
/// a pass). Few differ: hash, and read the keys of those only.
fn choose(differ: u64, buckets: u64) -> (Route, &'static str) {
    match differ * 2 > buckets {
        true => (Route::Keys, "most differ, so every key is read once"),
        false => (
            Route::Hashes,
            "few differ, so hashes first and keys only where buckets differ",
        ),
    }
}

fn bucket_count(r: &Range) -> u64 {
    ((r.end - r.start) / BUCKET_MICROS) as u64
}

/// The estimate's stretch and the rest, if any. The stretch is a
/// ninety-sixth of the window, at least a quarter hour (enough samples per
/// device to show scattered loss), at most a day, ending on a quarter-hour
/// edge. A window of an hour or less is one stretch.
fn split(window: Window) -> (Window, Option<Window>) {
    let secs = (window.end - window.start).num_seconds();
    if secs <= BUCKET_SECS {
        return (window, None);
    }
    let span = (secs / 96).clamp(PROBE_EDGE_SECS, 86_400);
    let edge = (window.start.timestamp() + span).div_euclid(PROBE_EDGE_SECS) * PROBE_EDGE_SECS;
    let cut = chrono::DateTime::from_timestamp(edge, 0).unwrap_or(window.end);
    match cut > window.start && cut < window.end {
        true => (
            Window {
                start: window.start,
                end: cut,
            },
            Some(Window {
                start: cut,
                end: window.end,
            }),
        ),
        false => (window, None),
    }
}

async fn summaries(
    readers: &Readers<'_>,
    spec: &crate::schema::TableSpec,
    window: Window,
    found: &mut Found,
) -> Result<(Summary, Summary), SideError> {
    let side = |i: usize| {
        move |e: diff::ReadError| match e {
            diff::ReadError::Db(e) => SideError(i, StreamError::Db(e)),
            diff::ReadError::Id(e) => SideError(i, StreamError::Id(e)),
        }
    };
    let (sa, sb) = tokio::join!(
        diff::summary(readers.a, spec, window),
        diff::summary(readers.b, spec, window)
    );
    let (sa, sb) = (sa.map_err(side(0))?, sb.map_err(side(1))?);
    found.bytes_read[0] += sa.bytes;
    found.bytes_read[1] += sb.bytes;
    found.without_device += sa.without_device + sb.without_device;
    Ok((sa.summary, sb.summary))
}

/// A clean stretch is the common case: one plain hash of all its keys per
/// side settles it for about half the cost of bucket hashes. Its key count
/// when both sides agree; `None` when they do not (then buckets find where).
async fn rest_agrees(
    readers: &Readers<'_>,
    spec: &crate::schema::TableSpec,
    rest: Window,
    found: &mut Found,
) -> Result<Option<u64>, SideError> {
    let sql = diff::totals_sql(spec, readers.devices);
    let (ta, tb) = tokio::join!(
        diff::totals(readers.a, &sql, rest),
        diff::totals(readers.b, &sql, rest)
    );
    let (ta, tb) = (
        ta.map_err(|e| SideError::from((0, e)))?,
        tb.map_err(|e| SideError::from((1, e)))?,
    );
    found.bytes_read[0] += TOTALS_BYTES;
    found.bytes_read[1] += TOTALS_BYTES;
    if !ta.same_keys(&tb) {
        return Ok(None);
    }
    found.without_device += (ta.without_device + tb.without_device) as u64;
    Ok(Some(ta.rows as u64))
}

/// The hash route's second level: keys of the differing ranges only.
pub async fn keys_of_ranges(
    readers: &Readers<'_>,
    spec: &crate::schema::TableSpec,
    window: Window,
    ranges: &[Range],
    mover: &mut Mover<'_>,
    found: &mut Found,
) -> Result<(), RouteError> {
    if ranges.is_empty() {
        return Ok(());
    }
    let sql = diff::keys_sql(spec);
    let (sa, sb) = tokio::join!(readers.a.prepare(&sql), readers.b.prepare(&sql));
    let (sa, sb) = (
        sa.map_err(|e| SideError::from((0, e)))?,
        sb.map_err(|e| SideError::from((1, e)))?,
    );
    for range in ranges {
        let (ka, kb) = tokio::join!(
            diff::keys(readers.a, &sa, range, window),
            diff::keys(readers.b, &sb, range, window)
        );
        let ((ka, bytes_a), (kb, bytes_b)) = (
            ka.map_err(|e| SideError::from((0, e)))?,
            kb.map_err(|e| SideError::from((1, e)))?,
        );
        found.bytes_read[0] += bytes_a;
        found.bytes_read[1] += bytes_b;
        let d = diff::merge(&ka, &kb);
        let device = pack(&range.device);
        for ts in d.only_a {
            mover.missing(1, (device, ts)).await?;
        }
        for ts in d.only_b {
            mover.missing(0, (device, ts)).await?;
        }
    }
    Ok(())
}

/// The keys route: both sides' sorted keys at once, merged as they arrive,
/// a UTC day at a time (a TimescaleDB chunk's usual span: each chunk's index
/// is walked once, and in order, so the per-device sort is cheap).
async fn stream_keys(
    readers: &Readers<'_>,
    spec: &crate::schema::TableSpec,
    window: Window,
    values: Option<&[String]>,
    mover: &mut Mover<'_>,
    found: &mut Found,
) -> Result<(), RouteError> {
    found.route = Some(Route::Keys);
    let sql = stream::copy_sql(spec, values);
    let (n, values) = (spec.device_columns.len(), values.is_some());
    for slice in utc_days(window) {
        let (ta, ra) = mpsc::channel(2);
        let (tb, rb) = mpsc::channel(2);
        let (read_a, read_b, merged) = tokio::join!(
            stream::read(readers.a, slice, &sql, n, values, ta),
            stream::read(readers.b, slice, &sql, n, values, tb),
            merge(Cursor::new(0, ra), Cursor::new(1, rb), mover, found)
        );
        // A side's own error says more than the merge's "stream broke".
        let (read_a, read_b) = (
            read_a.map_err(|e| SideError(0, e))?,
            read_b.map_err(|e| SideError(1, e))?,
        );
        merged?;
        found.bytes_read[0] += read_a.bytes;
        found.bytes_read[1] += read_b.bytes;
        found.without_device += read_a.without_device + read_b.without_device;
    }
    Ok(())
}

/// The window cut at UTC midnights.
fn utc_days(window: Window) -> Vec<Window> {
    let mut days = Vec::new();
    let mut start = window.start;
    while start < window.end {
        let next = (start.timestamp().div_euclid(86_400) + 1) * 86_400;
        let end = chrono::DateTime::from_timestamp(next, 0)
            .unwrap_or(window.end)
            .min(window.end);
        days.push(Window { start, end });
        start = end;
    }
    days
}

/// Per (device, hour) bucket: whether anything in it differed.
#[derive(Default)]
struct Buckets {
    current: Option<(u64, i64)>,
    differs: bool,
}

impl Buckets {
    fn see(&mut self, key: &Key, differs: bool, found: &mut Found) {
        let bucket = (key.device, key.ts.div_euclid(BUCKET_MICROS));
        if self.current != Some(bucket) {
            self.close(found);
            self.current = Some(bucket);
        }
        self.differs |= differs;
    }

    fn close(&mut self, found: &mut Found) {
        if self.current.take().is_some() {
            found.buckets_compared += 1;
            found.buckets_differing += u64::from(self.differs);
        }
        self.differs = false;
    }
}

async fn merge(
    mut a: Cursor,
    mut b: Cursor,
    mover: &mut Mover<'_>,
    found: &mut Found,
) -> Result<(), RouteError> {
    let mut buckets = Buckets::default();
    loop {
        let (ka, kb) = (a.peek().await?, b.peek().await?);
        match (ka, kb) {
            (None, None) => break,
            (Some(x), Some(y)) if x.order() == y.order() => {
                let differs = x.value != y.value;
                buckets.see(&x, differs, found);
                if differs {
                    found.values_differing += 1;
                    if found.value_sample.len() < VALUE_SAMPLE {
                        found.value_sample.push((x.device, x.ts));
                    }
                    mover.differs((x.device, x.ts)).await?;
                }
                a.advance();
                b.advance();
            }
            (Some(x), y) if y.is_none_or(|y| x.order() < y.order()) => {
                buckets.see(&x, true, found);
                mover.missing(1, (x.device, x.ts)).await?;
                a.advance();
            }
            (_, Some(y)) => {
                buckets.see(&y, true, found);
                mover.missing(0, (y.device, y.ts)).await?;
                b.advance();
            }
            (Some(_), None) => unreachable!("covered by the arm above"),
        }
    }
    buckets.close(found);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(s).unwrap().into()
    }

    #[test]
    fn reconcile_estimate_stretch_is_a_quarter_hour_of_a_day() {
        let day = Window {
            start: at("2026-03-04T15:00:00Z"),
            end: at("2026-03-05T15:00:00Z"),
        };
        let (first, rest) = split(day);
        assert_eq!(first.end, at("2026-03-04T15:15:00Z"));
        assert_eq!(rest.unwrap().start, first.end);
        let month = Window {
            start: at("2026-03-04T15:00:00Z"),
            end: at("2026-04-03T15:00:00Z"),
        };
        assert_eq!(split(month).0.end, at("2026-03-04T22:30:00Z"));
        let short = Window {
            start: at("2026-03-04T15:10:00Z"),
            end: at("2026-03-04T16:10:00Z"),
        };
        assert_eq!(split(short), (short, None));
    }

    #[test]
    fn reconcile_route_reads_every_key_when_most_buckets_differ() {
        assert_eq!(choose(17, 17).0, Route::Keys);
        assert_eq!(choose(9, 17).0, Route::Keys);
        assert_eq!(choose(8, 17).0, Route::Hashes);
        assert_eq!(choose(0, 0).0, Route::Hashes);
    }

    #[test]
    fn reconcile_stream_days_cut_at_utc_midnight() {
        let seoul_day = Window {
            start: at("2026-03-04T15:00:00Z"),
            end: at("2026-03-05T15:00:00Z"),
        };
        let days = utc_days(seoul_day);
        assert_eq!(days.len(), 2);
        assert_eq!(days[0].end, at("2026-03-05T00:00:00Z"));
        assert_eq!(days[1].start, days[0].end);
        assert_eq!(days[1].end, seoul_day.end);
    }
}
