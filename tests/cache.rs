//! `essops cache warm` against real TimescaleDB and real Redis: values equal
//! SQL aggregates, TTLs, planted outliers found (and nothing else),
//! incremental equals full, atomic swaps, and both services failing.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::Value;

use crate::support::{Cmd, Scratch, TestDb, free_port, servers_toml};

const REDIS: &str = "redis://127.0.0.1:26379/0";
/// One node of the services' Redis Cluster (3 masters); essops discovers the others.
const CLUSTER: &str = "redis://127.0.0.1:26391";
/// Another node: readers there see the warm through the cluster's redirects.
const CLUSTER_OTHER_NODE: &str = "redis://127.0.0.1:26393";
const MEASURES: [&str; 8] = [
    "SOC",
    "DC_VOLTAGE",
    "DC_CURRENT",
    "DC_POWER",
    "MAX_CELL_VOLTAGE",
    "MIN_CELL_VOLTAGE",
    "MAX_CELL_TEMP",
    "MIN_CELL_TEMP",
];

struct Setup {
    cluster: bool,
    db: TestDb,
    _scratch: Scratch,
    config: PathBuf,
    site: String,
}

/// A site (2 banks × 3 racks) with the last 3 hours of 1 Hz rack and bank rows.
fn setup(test: &str, redis: &str, extra: &str) -> Setup {
    let db = TestDb::new(test, 1);
    let scratch = Scratch::new(test);
    let site = format!("Cache_{test}");
    let cluster = redis == CLUSTER;
    let config = scratch.site_config(
        &format!("{extra}[redis]\nurl = \"{redis}\"\ncluster = {cluster}\n"),
        &servers_toml(),
        &format!("name = \"{site}\"\ndatabase = \"{}\"\nbanks = [{{ id = 1, racks = 3 }}, {{ id = 2, racks = 3 }}]\n", db.databases[0]),
    );
    // A clean slate in Redis: an earlier run of this test left its keys.
    let mut con = redis::Client::open(REDIS)
        .unwrap()
        .get_connection()
        .unwrap();
    let old: Vec<String> = redis::cmd("KEYS")
        .arg(format!("essops:v1:{{{site}}}:*"))
        .query(&mut con)
        .unwrap();
    if !old.is_empty() {
        let _: () = redis::cmd("DEL").arg(&old).query(&mut con).unwrap();
    }
    let s = Setup {
        cluster,
        db,
        _scratch: scratch,
        config,
        site,
    };
    s.sql(
        "INSERT INTO rack SELECT t, b, r, 50 + 10 * sin(extract(epoch FROM t) / 600) + r, 98, 800 + b, 100 * cos(extract(epoch FROM t) / 300),
                80 * cos(extract(epoch FROM t) / 300), 3.30 + 0.001 * r, 3.29, 3.295, 1, 2, 30 + 0.1 * r + 0.5 * sin(extract(epoch FROM t) / 900), 25, 27, 3, 4, 1, 0, 0
           FROM generate_series(date_trunc('minute', now()) - interval '3 hours', date_trunc('minute', now()) - interval '1 second', interval '1 second') t,
                generate_series(1, 2) b, generate_series(1, 3) r;
         INSERT INTO bank (\"TIMESTAMP\", \"BANK_ID\", \"SOC\", \"DC_VOLTAGE\", \"DC_CURRENT\", \"MAX_CELL_TEMP\")
         SELECT t, b, 55, 800, 300, 31 FROM generate_series(date_trunc('minute', now()) - interval '3 hours', date_trunc('minute', now()) - interval '1 second', interval '1 second') t, generate_series(1, 2) b;
         -- Planted: rack 1/2 runs hot for 5 minutes; rack 2/3's lowest cell sags for one minute.
         UPDATE rack SET \"MAX_CELL_TEMP\" = 60 WHERE \"BANK_ID\" = 1 AND \"RACK_ID\" = 2
            AND \"TIMESTAMP\" >= date_trunc('minute', now()) - interval '20 minutes' AND \"TIMESTAMP\" < date_trunc('minute', now()) - interval '15 minutes';
         UPDATE rack SET \"MIN_CELL_VOLTAGE\" = 2.4 WHERE \"BANK_ID\" = 2 AND \"RACK_ID\" = 3
            AND \"TIMESTAMP\" >= date_trunc('minute', now()) - interval '10 minutes' AND \"TIMESTAMP\" < date_trunc('minute', now()) - interval '9 minutes';
         ANALYZE rack; ANALYZE bank;",
    );
    s
}

impl Setup {
    fn sql(&self, sql: &str) {
        self.db.execute("local", sql);
    }

    fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        self.db.rows("local", sql)
    }

    fn warm(&self, args: &[&str], code: i32) -> Vec<Value> {
        Cmd::new(Some(&self.config))
            .args(["--json", "cache", "warm", "--site", &self.site])
            .args(args)
            .run()
            .expect_code(code)
            .json()
    }

    fn key(&self, rest: &str) -> String {
        format!("essops:v1:{{{}}}:{rest}", self.site)
    }

    fn get(&self, rest: &str) -> Value {
        let v: Option<String> = match self.cluster {
            true => {
                let client = redis::cluster::ClusterClient::new(vec![CLUSTER_OTHER_NODE]).unwrap();
                let mut con = client.get_connection().unwrap();
                redis::cmd("GET")
                    .arg(self.key(rest))
                    .query(&mut con)
                    .unwrap()
            }
            false => {
                let mut con = redis::Client::open(REDIS)
                    .unwrap()
                    .get_connection()
                    .unwrap();
                redis::cmd("GET")
                    .arg(self.key(rest))
                    .query(&mut con)
                    .unwrap()
            }
        };
        serde_json::from_str(&v.unwrap_or_else(|| panic!("no key {rest}"))).unwrap()
    }

    /// Checks every bucket of a cached rack period against SQL over the same rows.
    fn assert_period_matches_sql(&self, period: &str) -> usize {
        let cached = self.get(&format!("agg:{period}:rack"));
        let bucket = cached["bucket_secs"].as_i64().unwrap();
        let from = cached["from"].as_i64().unwrap();
        let columns: Vec<String> = cached["columns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect();
        assert_eq!(columns, MEASURES);
        let start = match bucket {
            86_400 => "extract(epoch FROM (date_trunc('day', \"TIMESTAMP\" AT TIME ZONE 'Asia/Seoul') AT TIME ZONE 'Asia/Seoul'))::int8".to_string(),
            b => format!("(extract(epoch FROM \"TIMESTAMP\")::int8 / {b}) * {b}"),
        };
        let aggs: Vec<String> = MEASURES
            .iter()
            .map(|m| format!("avg(\"{m}\")::float8, min(\"{m}\")::float8, max(\"{m}\")::float8"))
            .collect();
        let rows = self.query(&format!(
            "SELECT \"BANK_ID\" || '/' || \"RACK_ID\", {start} AS s, count(*), {} FROM rack
              WHERE \"TIMESTAMP\" >= to_timestamp({from}) GROUP BY 1, 2 ORDER BY 1, 2",
            aggs.join(", ")
        ));
        let mut checked = 0;
        for r in &rows {
            let (device, s, n): (String, i64, i64) = (r.get(0), r.get(1), r.get(2));
            let buckets = cached["devices"][&device]
                .as_array()
                .unwrap_or_else(|| panic!("{period}: no device {device}"));
            let b = buckets
                .iter()
                .find(|b| b[0].as_i64() == Some(s))
                .unwrap_or_else(|| panic!("{period} {device}: no bucket {s}"));
            assert_eq!(b[1].as_i64(), Some(n), "{period} {device} {s}: rows");
            for (m, name) in MEASURES.iter().enumerate() {
                for (k, what) in ["avg", "min", "max"].iter().enumerate() {
                    let want: f64 = r.get(3 + 3 * m + k);
                    let got = b[2 + k][m].as_f64().unwrap();
                    // Values are kept to 4 decimals; a coarse average built from
                    // already-rounded finer buckets may carry two roundings more.
                    let tolerance = if k == 0 { 2e-4 } else { 5e-5 };
                    assert!(
                        (got - want).abs() <= tolerance + 1e-9 * want.abs(),
                        "{period} {device} {s} {name} {what}: cached {got}, SQL {want}"
                    );
                }
            }
            checked += 1;
        }
        let cached_buckets: usize = cached["devices"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_array().unwrap().len())
            .sum();
        assert_eq!(cached_buckets, rows.len(), "{period}: bucket count");
        checked
    }
}

#[test]
fn cache_warm_values_equal_sql_aggregates_ttls_set_outliers_found() {
    let s = setup("cache_values", REDIS, "");
    let report = s.warm(&["--full"], 0);
    assert_eq!(
        (report[0]["mode"].as_str(), report[0]["outliers"].as_u64()),
        (Some("full"), Some(4)),
        "{report:?}"
    );
    // The data ends at the last whole minute before setup; when a minute
    // boundary passes before the warm, the hour's newest bucket has no rows
    // yet. Every bucket present is still checked against SQL.
    let hour = s.assert_period_matches_sql("hour");
    assert!((6 * 59..=6 * 60).contains(&hour), "{hour} hour buckets");
    assert!(s.assert_period_matches_sql("day") >= 6 * 36);
    assert!(s.assert_period_matches_sql("week") >= 6 * 3);
    assert!(s.assert_period_matches_sql("month") >= 6);

    let mut con = redis::Client::open(REDIS)
        .unwrap()
        .get_connection()
        .unwrap();
    for (key, ttl) in [
        ("agg:hour:rack", 600),
        ("agg:day:rack", 3600),
        ("agg:week:bank", 6 * 3600),
        ("agg:month:rack", 86_400),
        ("latest:rack", 600),
        ("loss", 3600),
    ] {
        let left: i64 = redis::cmd("TTL").arg(s.key(key)).query(&mut con).unwrap();
        assert!(left > 0 && left <= ttl, "{key}: TTL {left}");
    }

    let mut found: Vec<(String, String, String)> = s.get("outliers")["outliers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| {
            (
                o["device"].as_str().unwrap().into(),
                o["measure"].as_str().unwrap().into(),
                o["kind"].as_str().unwrap().into(),
            )
        })
        .collect();
    found.sort();
    let want = [
        ("1/2", "MAX_CELL_TEMP", "bank"),
        ("1/2", "MAX_CELL_TEMP", "limit"),
        ("2/3", "CELL_VOLTAGE_SPREAD", "bank"),
        ("2/3", "MIN_CELL_VOLTAGE", "limit"),
    ];
    assert_eq!(
        found,
        want.map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    );

    let latest = s.get("latest:rack");
    let newest = s.query("SELECT max(\"TIMESTAMP\")::text FROM rack")[0].get::<_, String>(0);
    assert_eq!(latest.as_object().unwrap().len(), 6);
    assert!(
        newest.starts_with(&latest["2/3"]["TIMESTAMP"].as_str().unwrap()[..19].replace('T', " ")),
        "{newest} vs {}",
        latest["2/3"]
    );

    let loss = s.get("loss");
    let (day_start, end) = (
        loss["day_start"].as_i64().unwrap(),
        loss["window_end"].as_i64().unwrap(),
    );
    let observed: i64 = s.query(&format!(
        "SELECT count(*) FROM rack WHERE \"TIMESTAMP\" >= to_timestamp({day_start}) AND \"TIMESTAMP\" < to_timestamp({end})"
    ))[0]
        .get(0);
    assert_eq!(loss["local"]["rack"]["observed"].as_i64(), Some(observed));
    assert_eq!(
        loss["local"]["rack"]["expected"].as_i64(),
        Some(6 * (end - day_start))
    );
}

/// "Loss today" counts as `essops loss` does: samples of configured devices
/// only, so a rack the config does not list adds nothing.
#[test]
fn cache_loss_today_counts_only_configured_devices() {
    let s = setup("cache_loss_def", REDIS, "");
    s.sql(
        "INSERT INTO rack (\"TIMESTAMP\", \"BANK_ID\", \"RACK_ID\")
         SELECT t, 1, 9 FROM generate_series(date_trunc('minute', now()) - interval '1 hour', date_trunc('minute', now()) - interval '1 second', interval '1 second') t",
    );
    s.warm(&["--full"], 0);
    let loss = s.get("loss");
    let (day_start, end) = (
        loss["day_start"].as_i64().unwrap(),
        loss["window_end"].as_i64().unwrap(),
    );
    let count = |filter: &str| -> i64 {
        s.query(&format!(
            "SELECT count(*) FROM rack WHERE \"TIMESTAMP\" >= to_timestamp({day_start}) AND \"TIMESTAMP\" < to_timestamp({end}){filter}"
        ))[0]
            .get(0)
    };
    let configured = count(" AND \"RACK_ID\" <= 3");
    assert!(count("") > configured, "the unlisted rack has rows today");
    assert_eq!(loss["local"]["rack"]["observed"].as_i64(), Some(configured));
}

#[test]
fn cache_warm_incremental_equals_full_and_readers_never_see_a_mix() {
    let s = Arc::new(setup(
        "cache_incremental",
        REDIS,
        "[cache]\nrecheck = \"1h\"\n",
    ));
    assert_eq!(
        s.warm(&[], 0)[0]["mode"],
        "full",
        "no earlier cache: a full build"
    );
    let keys: Vec<String> = ["hour", "day", "week", "month"]
        .iter()
        .flat_map(|p| ["bank", "rack"].map(|t| s.key(&format!("agg:{p}:{t}"))))
        .chain([s.key("meta")])
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (keys, stop) = (keys.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut con = redis::Client::open(REDIS)
                .unwrap()
                .get_connection()
                .unwrap();
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let values: Vec<Option<String>> =
                    redis::cmd("MGET").arg(&keys).query(&mut con).unwrap();
                let parsed: Vec<Value> = values
                    .iter()
                    .map(|v| serde_json::from_str(v.as_deref().expect("a key is missing")).unwrap())
                    .collect();
                let warmed = parsed.last().unwrap()["warmed_at"].as_i64().unwrap();
                for v in &parsed[..parsed.len() - 1] {
                    assert_eq!(
                        v["to"].as_i64(),
                        Some(warmed),
                        "a reader saw values of two warms at once"
                    );
                }
                reads += 1;
            }
            reads
        })
    };
    for i in 0..4 {
        // New rows for the current minute, then an incremental warm.
        s.sql(&format!(
            "INSERT INTO rack SELECT date_trunc('second', now()) - interval '{i} seconds' - interval '1 second' * g, b, r, 60, 98, 801, 5, 4, 3.31, 3.29, 3.3, 1, 2, 31, 25, 27, 3, 4, 1, 0, 0
               FROM generate_series(0, 0) g, generate_series(1, 2) b, generate_series(1, 3) r ON CONFLICT DO NOTHING"
        ));
        assert_eq!(s.warm(&[], 0)[0]["mode"], "incremental");
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    stop.store(true, Ordering::Relaxed);
    assert!(reader.join().unwrap() > 10, "the reader hardly ran");
    for p in ["hour", "day", "week", "month"] {
        s.assert_period_matches_sql(p);
    }
    let incremental: Vec<Value> = ["day", "week", "month"]
        .iter()
        .map(|p| s.get(&format!("agg:{p}:rack"))["devices"].clone())
        .collect();
    s.warm(&["--full"], 0);
    let full: Vec<Value> = ["day", "week", "month"]
        .iter()
        .map(|p| s.get(&format!("agg:{p}:rack"))["devices"].clone())
        .collect();
    assert_eq!(incremental.len(), full.len());
    for (a, b) in incremental.iter().zip(&full) {
        let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (device, buckets) in a {
            assert_same_buckets(device, buckets, &b[device]);
        }
    }
}

/// One device's buckets from an incremental and a full warm hold the same
/// rows and values. The full warm ran a moment later, so its window may have
/// moved on by one bucket at the start; every bucket both hold must agree.
fn assert_same_buckets(device: &str, a: &Value, b: &Value) {
    let by_start = |v: &Value| -> std::collections::BTreeMap<i64, Value> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|bucket| (bucket[0].as_i64().unwrap(), bucket.clone()))
            .collect()
    };
    let (a, b) = (by_start(a), by_start(b));
    let common: Vec<&i64> = a.keys().filter(|k| b.contains_key(k)).collect();
    assert!(
        common.len() + 1 >= a.len().max(b.len()),
        "{device}: {} and {} buckets, {} in common",
        a.len(),
        b.len(),
        common.len()
    );
    for start in common {
        let (x, y) = (&a[start], &b[start]);
        assert_eq!(x[1], y[1], "{device} {start}: rows");
        for (k, tolerance) in [(2, 2e-4), (3, 5e-5), (4, 5e-5)] {
            for (u, v) in x[k]
                .as_array()
                .unwrap()
                .iter()
                .zip(y[k].as_array().unwrap())
            {
                let (u, v) = (
                    u.as_f64().unwrap_or(f64::NAN),
                    v.as_f64().unwrap_or(f64::NAN),
                );
                assert!(
                    (u - v).abs() <= tolerance || (u.is_nan() && v.is_nan()),
                    "{device} {start} field {k}: incremental {u}, full {v}"
                );
            }
        }
    }
}

#[test]
fn cache_warm_redis_down_and_database_down_keep_what_was_there() {
    let dead = free_port();
    let s = setup("cache_down", &format!("redis://127.0.0.1:{dead}/0"), "");
    let run = Cmd::new(Some(&s.config))
        .args(["cache", "warm"])
        .run()
        .expect_code(4);
    assert!(
        run.stderr()
            .contains(&format!("Redis at 127.0.0.1:{dead} is unavailable")),
        "{}",
        run.stderr()
    );

    // A warm that works, then the source database goes away: the cache stays as it was.
    let up = setup("cache_db_down", REDIS, "");
    up.warm(&[], 0);
    let before = up.get("agg:hour:rack");
    let text = std::fs::read_to_string(&up.config)
        .unwrap()
        .replace("127.0.0.1:25432", &format!("127.0.0.1:{dead}"));
    std::fs::write(&up.config, text).unwrap();
    let report = up.warm(&[], 4);
    assert_eq!(report[0]["mode"], "kept");
    assert!(
        report[0]["error"]
            .as_str()
            .unwrap()
            .contains("previous cache kept"),
        "{report:?}"
    );
    assert_eq!(up.get("agg:hour:rack"), before);
}

#[test]
fn cache_warm_writes_a_whole_site_to_a_redis_cluster() {
    let s = setup("cache_cluster", CLUSTER, "");
    let rows = s.warm(&["--full"], 0);
    assert_eq!(rows[0]["mode"], "full", "{rows:?}");
    // Every key the meta lists, read through another node of the cluster.
    let meta = s.get("meta");
    let keys: Vec<&str> = meta["keys"]
        .as_array()
        .unwrap_or_else(|| panic!("meta lists no keys: {meta}"))
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert!(keys.len() > 4, "{keys:?}");
    let prefix = s.key("");
    for key in &keys {
        let rest = key.strip_prefix(&prefix).unwrap_or(key);
        let _ = s.get(rest);
    }
    // One slot holds the whole site, so the swap is one transaction.
    let client = redis::cluster::ClusterClient::new(vec![CLUSTER_OTHER_NODE]).unwrap();
    let mut con = client.get_connection().unwrap();
    let slots: std::collections::BTreeSet<i64> = keys
        .iter()
        .map(|k| {
            redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(k)
                .query(&mut con)
                .unwrap()
        })
        .collect();
    assert_eq!(slots.len(), 1, "{slots:?}");
    // The values are the same as on a single Redis.
    assert!(s.assert_period_matches_sql("hour") > 0);
}

/// Two sites (America/New_York, Asia/Kolkata) with a year of rack and bank
/// rows (every 30 s for the last 40 days, every 5 min before), whole hours
/// and scattered samples missing, their rollups current.
struct Year {
    db: TestDb,
    _scratch: Scratch,
    config: PathBuf,
    sites: [String; 2],
}

const YEAR_PERIODS: &str = "[[cache.periods]]\nname = \"hour\"\nspan = \"1h\"\nbucket = \"1m\"\nttl = \"10m\"\n\
    [[cache.periods]]\nname = \"day\"\nspan = \"1d\"\nbucket = \"5m\"\nttl = \"1h\"\n\
    [[cache.periods]]\nname = \"month\"\nspan = \"30d\"\nbucket = \"1h\"\nttl = \"1d\"\n\
    [[cache.periods]]\nname = \"year\"\nspan = \"366d\"\nbucket = \"1d\"\nttl = \"1d\"\n";

fn year(test: &str) -> Year {
    let db = TestDb::new(test, 2);
    let scratch = Scratch::new(test);
    let sites = [format!("NY_{test}"), format!("Kolkata_{test}")];
    let site = |n: usize, tz: &str| {
        format!(
            "name = \"{}\"\ndatabase = \"{}\"\ntimezone = \"{tz}\"\nsample_interval_secs = 30\nbanks = [{{ id = 1, racks = 3 }}]\n",
            sites[n], db.databases[n]
        )
    };
    let config = scratch.site_config(
        &format!("[redis]\nurl = \"{REDIS}\"\n[cache]\nrecheck = \"10m\"\n{YEAR_PERIODS}"),
        &servers_toml(),
        &format!(
            "{}[[sites]]\n{}",
            site(0, "America/New_York"),
            site(1, "Asia/Kolkata")
        ),
    );
    for n in 0..2 {
        db.execute_in(
            "local",
            n,
            "CREATE TEMP VIEW planted AS
               SELECT t FROM generate_series(date_trunc('minute', now()) - interval '370 days', date_trunc('minute', now()) - interval '40 days 1 second', interval '5 minutes') t
               UNION ALL
               SELECT t FROM generate_series(date_trunc('minute', now()) - interval '40 days', now(), interval '30 seconds') t;
             INSERT INTO rack SELECT t, 1, r, 50 + 20 * sin(extract(epoch FROM t) / 5000) + r, 98 - extract(epoch FROM now() - t) / 8640000, 800 + r,
                    100 * cos(extract(epoch FROM t) / 3000), 80 * cos(extract(epoch FROM t) / 3000), 3.30 + 0.001 * r + 0.01 * sin(extract(epoch FROM t) / 7000), 3.29, 3.295, 1, 2,
                    30 + 0.1 * r + 3 * sin(extract(epoch FROM t) / 9000), 25, 27, 3, 4, 1, 0, 0
               FROM planted, generate_series(1, 3) r
              WHERE (extract(epoch FROM t)::int8 / 3600) % 97 <> 5
                AND (extract(epoch FROM t)::int8 / 30 * 7919 + r * 104729) % 100 >= 3;
             INSERT INTO bank (\"TIMESTAMP\", \"BANK_ID\", \"SOC\", \"DC_VOLTAGE\", \"DC_CURRENT\", \"MAX_CELL_TEMP\")
               SELECT t, 1, 55 + 5 * sin(extract(epoch FROM t) / 4000), 800, 300, 31 FROM planted
                WHERE (extract(epoch FROM t)::int8 / 3600) % 89 <> 7;
             ANALYZE rack; ANALYZE bank;",
        );
    }
    for site in &sites {
        Cmd::new(Some(&config))
            .args([
                "rollup", "--site", site, "--table", "rack", "--table", "bank",
            ])
            .run()
            .expect_code(0);
    }
    Year {
        db,
        _scratch: scratch,
        config,
        sites,
    }
}

impl Year {
    fn warm(&self, args: &[&str]) -> Vec<Value> {
        Cmd::new(Some(&self.config))
            .args(["--json", "cache", "warm"])
            .args(args)
            .run()
            .expect_code(0)
            .json()
    }

    /// Every aggregate key of both sites, by key.
    fn aggregates(&self) -> std::collections::BTreeMap<String, Value> {
        let mut con = redis::Client::open(REDIS)
            .unwrap()
            .get_connection()
            .unwrap();
        let mut out = std::collections::BTreeMap::new();
        for site in &self.sites {
            for period in ["hour", "day", "month", "year"] {
                for table in ["rack", "bank"] {
                    let key = format!("essops:v1:{{{site}}}:agg:{period}:{table}");
                    let v: String = redis::cmd("GET").arg(&key).query(&mut con).unwrap();
                    out.insert(key, serde_json::from_str(&v).unwrap());
                }
            }
        }
        out
    }

    fn meta(&self, site: &str) -> Value {
        let mut con = redis::Client::open(REDIS)
            .unwrap()
            .get_connection()
            .unwrap();
        let v: String = redis::cmd("GET")
            .arg(format!("essops:v1:{{{site}}}:meta"))
            .query(&mut con)
            .unwrap();
        serde_json::from_str(&v).unwrap()
    }
}

/// Two builds hold the same buckets: every device, start and sample count,
/// min and max equal, averages equal to the 4 decimals kept. The windows of
/// two runs a moment apart may differ by the newest or oldest bucket.
fn assert_same_aggregates(
    a: &std::collections::BTreeMap<String, Value>,
    b: &std::collections::BTreeMap<String, Value>,
) -> usize {
    let mut compared = 0;
    for (key, x) in a {
        let y = &b[key];
        let (dx, dy) = (
            x["devices"].as_object().unwrap(),
            y["devices"].as_object().unwrap(),
        );
        assert_eq!(
            dx.keys().collect::<Vec<_>>(),
            dy.keys().collect::<Vec<_>>(),
            "{key}"
        );
        for (device, buckets) in dx {
            assert_same_buckets(&format!("{key} {device}"), buckets, &dy[device]);
            compared += buckets.as_array().unwrap().len();
        }
    }
    compared
}

#[test]
fn cache_warm_from_rollups_equals_raw_on_a_planted_year_and_follows_rerolls() {
    let y = year("cache_rollups");
    let from_rollups = y.warm(&["--full"]);
    assert!(
        from_rollups.iter().all(|r| r["mode"] == "full"),
        "{from_rollups:?}"
    );
    let rolled = y.aggregates();
    let [ny, kolkata] = [0, 1].map(|n| y.meta(&y.sites[n]));
    // New York's local days and hours are whole UTC hours: the hourly
    // rollup serves them; Kolkata's (UTC+5:30) are not: the minute rollup.
    for (meta, table) in [(&ny, "rack_1h"), (&kolkata, "rack_1m")] {
        let periods = &meta["sources"]["rack"]["periods"];
        assert_eq!(periods["year"]["rollup"], table, "{meta}");
        assert_eq!(periods["day"]["rollup"], "rack_1m", "{meta}");
        assert!(meta["sources"]["rack"]["rollups"]["rolled_until"].is_i64());
    }
    assert_eq!(
        ny["sources"]["rack"]["periods"]["month"]["rollup"],
        "rack_1h"
    );
    assert_eq!(
        kolkata["sources"]["rack"]["periods"]["month"]["rollup"],
        "rack_1m"
    );
    // The year of New York days holds a 23-hour and a 25-hour day.
    let days: Vec<i64> = rolled[&format!("essops:v1:{{{}}}:agg:year:rack", y.sites[0])]["devices"]
        ["1/1"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b[0].as_i64().unwrap())
        .collect();
    let lengths: Vec<i64> = days.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        lengths.contains(&82_800) && lengths.contains(&90_000),
        "{lengths:?}"
    );

    y.warm(&["--full", "--raw"]);
    let raw = y.aggregates();
    assert_eq!(
        y.meta(&y.sites[0])["sources"]["rack"]["rollups"]["raw_because"],
        "--raw"
    );
    let compared = assert_same_aggregates(&rolled, &raw);
    assert!(
        compared > 2 * 3 * (60 + 288 + 720 + 366) - 200,
        "{compared} buckets"
    );

    // Reconcile fills a hole 20 days back; `essops rollup` re-rolls the hour
    // (here by its window flag, as it does for reconcile's runs), and the
    // next plain warm shows the rows without `--full`.
    let hole = "(extract(epoch FROM now())::int8 / 3600 - 480) / 97 * 97 + 5";
    y.db.execute(
        "local",
        &format!(
            "INSERT INTO rack (\"TIMESTAMP\", \"BANK_ID\", \"RACK_ID\", \"SOC\")
               SELECT to_timestamp(({hole}) * 3600) + interval '30 seconds' * g, 1, 2, 99 FROM generate_series(0, 119) g"
        ),
    );
    let hour: i64 = y.db.scalar("local", &format!("SELECT ({hole}) * 3600"));
    let at = |t: i64| chrono::DateTime::from_timestamp(t, 0).unwrap().to_rfc3339();
    Cmd::new(Some(&y.config))
        .args(["rollup", "--site", &y.sites[0], "--table", "rack"])
        .args(["--from", &at(hour), "--to", &at(hour + 3600)])
        .run()
        .expect_code(0);
    assert_eq!(y.warm(&["--site", &y.sites[0]])[0]["mode"], "incremental");
    let incremental = y.aggregates();
    let month = &incremental[&format!("essops:v1:{{{}}}:agg:month:rack", y.sites[0])];
    let filled = month["devices"]["1/2"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b[0].as_i64() == Some(hour))
        .unwrap_or_else(|| panic!("no bucket for the filled hour {hour}"));
    assert_eq!(
        (filled[1].as_i64(), filled[4][0].as_f64()),
        (Some(120), Some(99.0))
    );
    y.warm(&["--full", "--raw", "--site", &y.sites[0]]);
    assert_same_aggregates(&incremental, &y.aggregates());
}
