//! Time buckets of per-device aggregates (count, avg, min, max per
//! measure), how finer buckets roll up into coarser ones, and their compact
//! JSON form in the cache.

use std::collections::BTreeMap;

use chrono::{Offset, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Serialize, Serializer};
use serde_json::Value;

/// Seconds in a bucket that means "local day".
pub const DAY: i64 = 86_400;

#[derive(Debug, Clone, PartialEq)]
pub struct Bucket {
    /// Unix seconds.
    pub start: i64,
    /// Rows aggregated.
    pub n: u64,
    /// Per measure; NaN when every value was NULL.
    pub avg: Vec<f64>,
    pub min: Vec<f64>,
    pub max: Vec<f64>,
    /// Per measure, the rows its average stands for: the rows of the
    /// pieces that had a value (as the database weighs them).
    pub weight: Vec<u64>,
}

impl Bucket {
    /// A bucket of `n` rows; each measure's average weighs `n` unless NaN.
    pub fn new(start: i64, n: u64, avg: Vec<f64>, min: Vec<f64>, max: Vec<f64>) -> Bucket {
        let weight = avg.iter().map(|a| if a.is_nan() { 0 } else { n }).collect();
        Bucket {
            start,
            n,
            avg,
            min,
            max,
            weight,
        }
    }

    /// Folds `o` in: averages weighted by the rows of pieces with a value.
    pub fn merge(&mut self, o: &Bucket) {
        for i in 0..self.avg.len() {
            let (a, b) = (self.weight[i] as f64, o.weight[i] as f64);
            self.avg[i] = match (a > 0.0, b > 0.0) {
                (false, _) => o.avg[i],
                (_, false) => self.avg[i],
                _ => (self.avg[i] * a + o.avg[i] * b) / (a + b),
            };
            self.weight[i] += o.weight[i];
            self.min[i] = self.min[i].min(o.min[i]);
            self.max[i] = self.max[i].max(o.max[i]);
        }
        self.n += o.n;
    }
}

/// Per device (label → buckets in time order).
pub type Devices = BTreeMap<String, Vec<Bucket>>;

/// The start of the bucket holding `t`: local midnight for day buckets;
/// other buckets are aligned to the local clock, so an hour in Asia/Kolkata
/// (UTC+5:30) starts at :30 UTC.
pub fn bucket_start(t: i64, bucket: i64, tz: Tz) -> i64 {
    let utc = Utc.timestamp_opt(t, 0).single().unwrap_or_default();
    if bucket != DAY {
        let offset = i64::from(
            tz.offset_from_utc_datetime(&utc.naive_utc())
                .fix()
                .local_minus_utc(),
        );
        return t - (t + offset).rem_euclid(bucket);
    }
    let local = utc.with_timezone(&tz).date_naive();
    crate::window::local_day(local, tz).start.timestamp()
}

/// The starts of the buckets from the one holding `from` to the one holding `to`.
pub fn bucket_starts(from: i64, to: i64, bucket: i64, tz: Tz) -> Vec<i64> {
    let mut starts = vec![bucket_start(from, bucket, tz)];
    while let Some(&last) = starts.last() {
        // Half a bucket past the next start: lands in the next bucket even
        // when a local day has 23 or 25 hours.
        let next = bucket_start(last + bucket + bucket / 2, bucket, tz).max(last + 1);
        if next > to {
            break;
        }
        starts.push(next);
    }
    starts
}

/// Whether buckets of `fine` seconds tile buckets of `coarse` seconds in `tz`.
pub fn tiles(fine: i64, coarse: i64, tz: Tz, at: i64) -> bool {
    if coarse != DAY {
        return coarse % fine == 0;
    }
    let midnight = bucket_start(at, DAY, tz);
    DAY % fine == 0 && bucket_start(midnight, fine, tz) == midnight
}

/// Rolls `src` buckets with start in `[from, to)` up into `bucket`-second buckets.
pub fn rebucket(src: &Devices, bucket: i64, tz: Tz, from: i64, to: i64) -> Devices {
    let mut out = Devices::new();
    for (device, buckets) in src {
        let mut rolled: Vec<Bucket> = Vec::new();
        for b in buckets.iter().filter(|b| b.start >= from && b.start < to) {
            let start = bucket_start(b.start, bucket, tz);
            match rolled.last_mut() {
                Some(last) if last.start == start => last.merge(b),
                _ => {
                    let mut fresh = b.clone();
                    fresh.start = start;
                    rolled.push(fresh);
                }
            }
        }
        if !rolled.is_empty() {
            out.insert(device.clone(), rolled);
        }
    }
    out
}

/// Values rounded to 4 decimals; NaN as null.
struct Rounded<'a>(&'a [f64]);

impl Serialize for Rounded<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(
            self.0
                .iter()
                .map(|v| v.is_finite().then(|| (v * 10_000.0).round() / 10_000.0)),
        )
    }
}

/// A bucket in the cache: `[start, n, [avg…], [min…], [max…]]`, values
/// rounded to 4 decimals. Serialized straight to text: a month of buckets
/// is too many values to build as a `Value` tree first.
pub struct BucketJson<'a>(pub &'a Bucket);

impl Serialize for BucketJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b = self.0;
        (
            b.start,
            b.n,
            Rounded(&b.avg),
            Rounded(&b.min),
            Rounded(&b.max),
        )
            .serialize(s)
    }
}

/// One device's buckets, in the cache's form.
pub struct BucketsJson<'a>(pub &'a [Bucket]);

impl Serialize for BucketsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(BucketJson))
    }
}

/// Reads back what [`BucketJson`] wrote.
pub fn bucket_from_json(v: &Value) -> Option<Bucket> {
    let a = v.as_array()?;
    let list = |i: usize| -> Option<Vec<f64>> {
        a.get(i)?
            .as_array()?
            .iter()
            .map(|x| Some(x.as_f64().unwrap_or(f64::NAN)))
            .collect()
    };
    Some(Bucket::new(
        a.first()?.as_i64()?,
        a.get(1)?.as_u64()?,
        list(2)?,
        list(3)?,
        list(4)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(start: i64, n: u64, v: f64) -> Bucket {
        Bucket::new(start, n, vec![v], vec![v - 1.0], vec![v + 1.0])
    }

    #[test]
    fn cache_rebucket_weights_averages_and_keeps_extremes() {
        let src: Devices = [(
            "1/1".to_string(),
            vec![b(0, 60, 10.0), b(60, 30, 20.0), b(300, 60, 5.0)],
        )]
        .into();
        let out = rebucket(&src, 300, chrono_tz::UTC, 0, 600);
        let d = &out["1/1"];
        assert_eq!(d.len(), 2);
        assert_eq!(
            (d[0].start, d[0].n, d[0].min[0], d[0].max[0]),
            (0, 90, 9.0, 21.0)
        );
        assert!((d[0].avg[0] - (600.0 + 600.0) / 90.0).abs() < 1e-12);
        let json = serde_json::to_value(BucketJson(&d[1])).unwrap();
        assert_eq!(bucket_from_json(&json), Some(d[1].clone()));
    }

    #[test]
    fn cache_hour_buckets_follow_a_half_hour_zone() {
        let kolkata = chrono_tz::Asia::Kolkata;
        // 2026-03-05 10:45 IST = 05:15 UTC: its local hour began at 10:00 IST = 04:30 UTC.
        let t = 1_772_687_700;
        assert_eq!(bucket_start(t, 3600, kolkata), t - 45 * 60);
        assert_eq!(bucket_start(t, 60, kolkata), t);
        // Local midnight is an hour boundary, so hours tile the day.
        assert!(tiles(3600, DAY, kolkata, t));
        assert_eq!(
            bucket_start(bucket_start(t, DAY, kolkata), 3600, kolkata),
            bucket_start(t, DAY, kolkata)
        );
    }

    #[test]
    fn cache_bucket_starts_cross_dst_days_and_half_hour_zones() {
        let ny = chrono_tz::America::New_York;
        // 2026-03-07 00:00 EST .. 2026-03-10 00:00 EDT: the 8th has 23 hours.
        let (from, to) = (1_772_859_600, 1_773_115_200);
        let days = bucket_starts(from, to, DAY, ny);
        let lengths: Vec<i64> = days.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(lengths, [86_400, 82_800, 86_400]);
        let kolkata = chrono_tz::Asia::Kolkata;
        let hours = bucket_starts(1_772_687_700, 1_772_687_700 + 7200, 3600, kolkata);
        assert_eq!(hours.len(), 3);
        assert!(hours.iter().all(|h| h % 3600 == 1800));
    }

    #[test]
    fn cache_day_buckets_are_local_days() {
        let seoul = chrono_tz::Asia::Seoul;
        // 2026-03-05 01:00 KST = 2026-03-04 16:00 UTC.
        let t = 1_772_640_000;
        assert_eq!(bucket_start(t, DAY, seoul), t - 3600);
        assert!(tiles(3600, DAY, seoul, t) && !tiles(7 * 60, 3600, seoul, t));
    }
}
