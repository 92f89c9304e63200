//! `essops size`: bytes that match TimescaleDB's own `hypertable_size()`,
//! growth from the last 7 whole days, and the days a disk lasts.

use serde_json::Value;

use crate::support::{Cmd, Scratch, TestDb, servers_toml};

#[test]
fn size_matches_hypertable_size_and_says_when_the_disk_fills() {
    let db = TestDb::new("size", 1);
    let scratch = Scratch::new("size");
    let config = scratch.site_config(
        "",
        &servers_toml(),
        &format!(
            "name = \"Sz\"\ndatabase = \"{}\"\nbanks = [{{ id = 1, racks = 3 }}]\n",
            db.databases[0]
        ),
    );
    // Nine days of three racks every 10 s, ending now: seven whole days of growth.
    db.execute(
        "local",
        "INSERT INTO rack (\"TIMESTAMP\", \"BANK_ID\", \"RACK_ID\", \"SOC\")
         SELECT t, 1, r, 50 FROM generate_series(date_trunc('day', now()) - interval '8 days', now(), interval '10 seconds') t,
                generate_series(1, 3) r;",
    );
    // Alone: VACUUM cannot run in the implicit transaction of a batch.
    db.execute("local", "VACUUM ANALYZE rack");
    // Autovacuum may still add a page (a visibility map) at any moment: the
    // size essops reports lies between TimescaleDB's own before and after.
    let expect = |sql: &str| db.scalar("local", sql);
    let seven_days = || {
        expect(
            "SELECT sum(s.total_bytes)::int8 FROM chunks_detailed_size('rack') s
               JOIN timescaledb_information.chunks c USING (chunk_schema, chunk_name)
              WHERE c.range_start >= date_trunc('day', now()) - interval '7 days' AND c.range_end <= date_trunc('day', now())",
        )
    };
    let (size_before, seven_before) = (expect("SELECT hypertable_size('rack')"), seven_days());
    let run = Cmd::new(Some(&config))
        .args(["--json", "size", "--server", "local", "--disk-free", "10G"])
        .run();
    let (size_after, seven_after) = (expect("SELECT hypertable_size('rack')"), seven_days());
    assert_eq!(run.code(), 0, "{}", run.stderr());
    let rows: Vec<Value> = run.json();
    let rack = rows
        .iter()
        .find(|r| r["kind"] == "table" && r["table"] == "rack")
        .unwrap();
    let total = rack["total_bytes"].as_i64().unwrap();
    assert!(
        (size_before..=size_after).contains(&total),
        "{total} outside {size_before}..={size_after}"
    );
    assert_eq!(
        rack["chunks"].as_i64(),
        Some(expect("SELECT count(*) FROM show_chunks('rack')"))
    );
    let rows_now = expect("SELECT count(*) FROM rack");
    let estimated = rack["estimated_rows"].as_i64().unwrap();
    assert!(
        (estimated - rows_now).abs() * 10 < rows_now,
        "{estimated} vs {rows_now}"
    );
    let growth = rack["growth_bytes_per_day"].as_i64().unwrap();
    assert!(
        (seven_before / 7..=seven_after / 7).contains(&growth),
        "{growth} outside {seven_before}/7..={seven_after}/7"
    );
    let server = rows.iter().find(|r| r["kind"] == "server").unwrap();
    let days = server["days_until_full"].as_f64().unwrap();
    let all_growth = server["growth_bytes_per_day"].as_f64().unwrap();
    assert!(
        ((10u64 << 30) as f64 / all_growth - days).abs() < 0.1,
        "{server}"
    );

    // A disk that fills within a week is critical.
    Cmd::new(Some(&config))
        .args(["size", "--server", "local", "--disk-free", "1M"])
        .run()
        .expect_code(11);
    // A bad size is a usage error that names it.
    let bad = Cmd::new(Some(&config))
        .args(["size", "--disk-free", "12Q"])
        .run()
        .expect_code(2);
    assert!(
        bad.stderr().contains("unknown unit `Q`"),
        "{}",
        bad.stderr()
    );
}
