//! Real devices: maps with a controller per bank, rack gaps, byte-swapped
//! floats, coils and discrete inputs; SunSpec batteries and inverters found
//! without a map; `essops read` and `essops sunspec scan`. Checked against
//! `essops simulate` and against devices written by hand from the Modbus
//! and SunSpec specifications (tests/support/device.rs).

use std::path::PathBuf;

use essops::config::{Config, Site};
use essops::simulate::model::Model;
use serde_json::Value;

use crate::support::device::HandDevice;
use crate::support::{Background, Cmd, Scratch, TestDb, free_port, server_toml, wait_for_port};

/// A site's config in a scratch folder, migrated on the local cluster.
struct Site1 {
    db: TestDb,
    _scratch: Scratch,
    config: PathBuf,
    site: Site,
}

fn site(test: &str, map: Option<&str>, site_keys: &str) -> Site1 {
    let servers = server_toml("local", "local");
    let db = TestDb::on(test, 1, &servers);
    let scratch = Scratch::new(test);
    if let Some(map) = map {
        scratch.write("map.toml", map);
    }
    let config = scratch.site_config(
        &format!(
            "spool_dir = \"{}\"\n[modbus]\ntimeout_ms = 500\n",
            scratch.path.join("spool").display()
        ),
        &servers,
        &format!(
            "name = \"Site1\"\ndatabase = \"{}\"\n{site_keys}",
            db.databases[0]
        ),
    );
    let site = Config::load(Some(&config))
        .unwrap()
        .site("Site1")
        .unwrap()
        .clone();
    Site1 {
        db,
        _scratch: scratch,
        config,
        site,
    }
}

impl Site1 {
    fn cmd(&self) -> Cmd {
        Cmd::new(Some(&self.config))
    }

    fn simulate(&self, ports: &[u16], args: &[&str]) -> Background {
        let sim = self
            .cmd()
            .args(["simulate", "--site", "Site1", "--duration", "120s"])
            .args(args)
            .spawn();
        ports.iter().for_each(|p| wait_for_port(*p));
        sim
    }

    fn read(&self, device: &str, code: i32) -> Vec<Value> {
        self.cmd()
            .args(["--json", "read", "--site", "Site1", "--device", device])
            .run()
            .expect_code(code)
            .json()
    }

    /// `essops read` of a device the config or the device refuses (exit 3): its message.
    fn refused(&self, device: &str) -> String {
        self.cmd()
            .args(["read", "--site", "Site1", "--device", device])
            .run()
            .expect_code(3)
            .stderr()
    }

    fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        self.db.rows("local", sql)
    }
}

/// Each field's value by column, from `essops read --json`.
fn values(rows: &[Value]) -> std::collections::BTreeMap<String, Value> {
    rows.iter()
        .filter(|r| r["kind"] == "field")
        .map(|r| {
            (
                r["column"].as_str().unwrap().to_string(),
                r["value"].clone(),
            )
        })
        .collect()
}

const REAL_MAP: &str = r#"
# No map-level endpoint: each bank names its own controller.
[bank]
kind = "input"
base = 0
fields = [
  { column = "SOC",              at = 0, type = "u16", scale = 0.1 },
  { column = "DC_POWER",         at = 1, type = "f64", word_order = "DCBA" },
  { column = "AVG_CELL_VOLTAGE", at = 5, type = "f32", word_order = "BADC" },
  { column = "STATUS",           at = 0, kind = "discrete" },
]

[rack]
kind = "input"
base = 100
stride = { rack = 20 }
fields = [
  { column = "SOC",              at = 0, type = "u16", scale = 0.1 },
  { column = "AVG_CELL_VOLTAGE", at = 1, type = "f32", word_order = "BADC" },
  { column = "DC_POWER",         at = 3, type = "f32", word_order = "DCBA" },
  { column = "FAULT",            at = 0, kind = "coil" },
  { column = "CELL_BALANCING",   at = 1, kind = "discrete" },
]
"#;

#[test]
// Over 60 lines: one scenario, from the missing column to the loss report.
fn devices_controller_per_bank_rack_gaps_swapped_floats_and_bits_ingest_exactly() {
    let (bms1, bms2) = (free_port(), free_port());
    let s = site(
        "devices_real",
        Some(REAL_MAP),
        &format!(
            "register_map = \"map.toml\"\nmodbus = {{ bms1 = \"127.0.0.1:{bms1}\", bms2 = \"127.0.0.1:{bms2}\" }}\n\
             banks = [{{ id = 1, racks = [1, 2, 4, 5], endpoint = \"bms1\" }}, {{ id = 2, racks = 2, endpoint = \"bms2\" }}]\n"
        ),
    );
    let _sim = s.simulate(&[bms1, bms2], &["--seed", "5"]);
    // The operator's own column: preflight names the ALTER TABLE that adds it.
    let refused = s
        .cmd()
        .args(["ingest", "--site", "Site1", "--duration", "2s"])
        .run()
        .expect_code(3);
    assert!(
        refused
            .stderr()
            .contains(r#"ALTER TABLE "rack" ADD COLUMN "CELL_BALANCING" smallint"#),
        "{}",
        refused.stderr()
    );
    s.db.execute(
        "local",
        r#"ALTER TABLE rack ADD COLUMN "CELL_BALANCING" smallint"#,
    );
    let t0 = chrono::Utc::now();
    s.cmd()
        .args(["ingest", "--site", "Site1", "--duration", "4s"])
        .run()
        .expect_code(0);
    let t1 = chrono::Utc::now();

    let model = Model::new(&s.site, 5);
    let mut checked = 0;
    for t in &s.site.register_map.tables {
        let ids: Vec<String> = t
            .spec
            .device_columns
            .iter()
            .map(|c| format!("\"{c}\"::int4"))
            .collect();
        let cols: Vec<String> = t
            .fields
            .iter()
            .map(|f| format!("\"{}\"::float8", f.column))
            .collect();
        let sql = format!(
            "SELECT ARRAY[{}]::int4[], extract(epoch FROM \"TIMESTAMP\")::int8, {} FROM {}",
            ids.join(", "),
            cols.join(", "),
            t.spec.name
        );
        for row in s.query(&sql) {
            let device: Vec<i16> = row
                .get::<_, Vec<i32>>(0)
                .into_iter()
                .map(|x| x as i16)
                .collect();
            assert_ne!(
                device,
                [1, 3],
                "rack 1.3 is not configured and must not be polled"
            );
            let sec: i64 = row.get(1);
            for (i, f) in t.fields.iter().enumerate() {
                let stored: f64 = row.get(2 + i);
                let physical = model.value(t.spec.table, &f.column, &device, sec);
                let want = match f.kind.is_bit() {
                    true => physical.rem_euclid(2.0).floor(),
                    false => physical,
                };
                let tolerance = f.scale.abs() / 2.0 + want.abs() * 1e-6 + 1e-9;
                assert!(
                    (stored - want).abs() <= tolerance,
                    "{} {device:?} at {sec}: {} stored {stored}, simulator {want}",
                    t.spec.name,
                    f.column
                );
                checked += 1;
            }
        }
    }
    // 2 banks + 6 racks, about 4 s, 4 or 5 fields each.
    assert!(checked > 100, "only {checked} values checked");
    let racks = s.query("SELECT DISTINCT \"BANK_ID\", \"RACK_ID\" FROM rack ORDER BY 1, 2");
    let racks: Vec<(i16, i16)> = racks.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(racks, [(1, 1), (1, 2), (1, 4), (1, 5), (2, 1), (2, 2)]);

    // Loss over the run grades the configured devices only: no rack 1.3, no PCS, no etc.
    let fmt = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let loss: Vec<Value> = s
        .cmd()
        .args(["loss", "--json", "--from", &fmt(t0), "--to", &fmt(t1)])
        .run()
        .json();
    let tables: std::collections::BTreeSet<&str> =
        loss.iter().filter_map(|r| r["table"].as_str()).collect();
    assert_eq!(tables, ["bank", "rack"].into(), "{loss:?}");
    assert!(
        !loss.iter().any(|r| r["device"] == "bank 1 / rack 3"),
        "{loss:?}"
    );
    // Status judges the tables the site has: no pcs or etc row to be critical about.
    let status: Vec<Value> = s
        .cmd()
        .args(["--json", "status", "--site", "Site1"])
        .run()
        .json();
    assert!(
        !status.iter().any(|r| {
            let target = r["target"].as_str().unwrap_or("");
            target.ends_with(" pcs") || target.ends_with(" etc")
        }),
        "{status:?}"
    );
    // `essops read` shows the gap as a config error, and a rack that is there field by field.
    let err = s.refused("rack:1.3");
    assert!(err.contains("has no bank 1 / rack 3"), "{err}");
    let rack = s.read("rack:1.4", 0);
    let kinds: Vec<(&str, &str, u64)> = rack
        .iter()
        .map(|r| {
            (
                r["column"].as_str().unwrap(),
                r["register_kind"].as_str().unwrap(),
                r["address"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("SOC", "input", 160),
            ("AVG_CELL_VOLTAGE", "input", 161),
            ("DC_POWER", "input", 163),
            ("FAULT", "coil", 160),
            ("CELL_BALANCING", "discrete", 161),
        ]
    );
}

#[test]
fn devices_read_decodes_hand_written_frames_as_the_modbus_spec_lays_them_out() {
    let dev = HandDevice::default();
    // 1.5f32 is 0x3FC00000: BADC sends C0 3F 00 00. -2.25f64 is
    // 0xC002000000000000: DCBA sends every byte reversed.
    dev.put(
        1,
        4,
        100,
        &[0x00EB, 0xC03F, 0x0000, 0x0000, 0x0000, 0x0000, 0x02C0],
    );
    // Coil 100 on, discrete 101 off, as packed bits.
    dev.put(1, 1, 100, &[1]);
    dev.put(1, 2, 101, &[0]);
    let addr = dev.serve();
    let map = r#"
[rack]
endpoint = "bms"
kind = "input"
base = 100
fields = [
  { column = "SOC",              at = 0, type = "u16", scale = 0.1 },
  { column = "AVG_CELL_VOLTAGE", at = 1, type = "f32", word_order = "BADC" },
  { column = "DC_POWER",         at = 3, type = "f64", word_order = "DCBA" },
  { column = "FAULT",            at = 0, kind = "coil" },
  { column = "ALARM",            at = 1, kind = "discrete" },
]
"#;
    let s = site(
        "devices_hand_frames",
        Some(map),
        &format!(
            "register_map = \"map.toml\"\nmodbus = {{ bms = \"{addr}\" }}\nbanks = [{{ id = 1, racks = 1 }}]\n"
        ),
    );
    let rows: Vec<Value> = s
        .cmd()
        .args([
            "--json", "read", "--site", "Site1", "--device", "rack:1.1", "--raw",
        ])
        .run()
        .expect_code(0)
        .json();
    let v = values(&rows);
    assert_eq!(v["SOC"].as_f64(), Some(23.5));
    assert_eq!(v["AVG_CELL_VOLTAGE"].as_f64(), Some(1.5));
    assert_eq!(v["DC_POWER"].as_f64(), Some(-2.25));
    assert_eq!(
        (v["FAULT"].as_i64(), v["ALARM"].as_i64()),
        (Some(1), Some(0))
    );
    let raw: Vec<&str> = rows.iter().filter_map(|r| r["raw"].as_str()).collect();
    assert!(raw.contains(&"0xC03F 0x0000"), "{raw:?}");
    // --raw: the request frames as the spec writes them (function 4 from 100, 7 registers; function 1, 1 coil).
    let frames: Vec<&str> = rows
        .iter()
        .filter(|r| r["kind"] == "frame")
        .filter_map(|r| r["request"].as_str())
        .collect();
    assert!(
        frames.iter().any(|f| f.ends_with("01 04 00 64 00 07")),
        "{frames:?}"
    );
    assert!(
        frames.iter().any(|f| f.ends_with("01 01 00 64 00 01")),
        "{frames:?}"
    );
    // An unanswered device: exit 4, the fields still listed.
    let silent = site(
        "devices_hand_silent",
        Some(map),
        &format!(
            "register_map = \"map.toml\"\nmodbus = {{ bms = \"{addr}\" }}\nbanks = [{{ id = 2, racks = 1, unit = 2 }}]\n"
        ),
    );
    let rows = silent.read("rack:2.1", 4);
    assert_eq!(values(&rows).len(), 5);
}

/// A battery written by hand from the SunSpec model tables: 802 at the
/// chain's start, 803 with `strings` string groups, an 804 per string when
/// `with_804`, then `end` (Some(id) written as the next model id; None: nothing, an exception).
fn hand_battery(
    dev: &HandDevice,
    unit: u8,
    base: u16,
    strings: u16,
    with_804: bool,
    end: Option<u16>,
) {
    dev.holding(unit, base, &[0x5375, 0x6E53]);
    let mut at = base + 2;
    // Common model 1: L = 66, maker at +2.
    let mut common = vec![0u16; 68];
    common[0] = 1;
    common[1] = 66;
    common[2] = u16::from_be_bytes(*b"AC");
    common[3] = u16::from_be_bytes(*b"ME");
    dev.holding(unit, at, &common);
    at += 68;
    // 802 battery, L = 62.
    let mut b = vec![0xFFFFu16; 64];
    b[0] = 802;
    b[1] = 62;
    b[11] = 5123; // SoC
    b[56] = (-2i16) as u16; // SoC_SF
    b[34] = 8123; // V
    b[59] = (-1i16) as u16; // V_SF
    b[44] = (-150i16) as u16; // A
    b[61] = 0; // A_SF
    b[47] = (-1218i16) as u16; // W
    b[63] = 2; // W_SF: -121800 W
    b[37] = 3345; // CellVMax
    b[60] = (-3i16) as u16; // CellV_SF
    b[22] = 99; // State: FAULT
    b[26] = 0x8000; // Evt1, high word
    b[27] = 0x0001;
    b[62] = 0; // AMax_SF; AChaMax (45) stays 0xFFFF: not implemented
    dev.holding(unit, at, &b);
    at += 64;
    // 803 bank, L = 26 + 32 × strings.
    let mut m = vec![0xFFFFu16; usize::from(28 + 32 * strings)];
    m[0] = 803;
    m[1] = 26 + 32 * strings;
    m[2] = strings; // NStr
    m[4] = 312; // ModTmpMax
    m[23] = (-1i16) as u16; // ModTmp_SF
    m[22] = (-3i16) as u16; // CellV_SF
    m[24] = 0; // A_SF
    m[26] = (-1i16) as u16; // SoC_SF
    m[25] = 0x8000; // SoH_SF: not implemented, so StrSoH is NULL
    for k in 0..strings {
        let g = usize::from(28 + 32 * k);
        m[g + 1] = 0;
        m[g + 2] = k + 1; // StrSt
        m[g + 4] = 400 + 10 * k; // StrSoC: 40.0, 41.0, …
        m[g + 5] = 990; // StrSoH (its SF is not implemented)
        m[g + 6] = 20 + k; // StrA
        m[g + 7] = 3300 + k; // StrCellVMax
        m[g + 20] = 0;
        m[g + 21] = 7; // StrEvt1
    }
    dev.holding(unit, at, &m);
    at += 28 + 32 * strings;
    if with_804 {
        for k in 0..strings {
            let mut s = vec![0xFFFFu16; 48];
            s[0] = 804;
            s[1] = 46;
            s[2] = k + 1; // Idx
            s[8] = 600 + k; // SoC
            s[38] = (-1i16) as u16; // SoC_SF
            s[14] = 7500 + k; // V
            s[42] = (-1i16) as u16; // V_SF
            s[13] = 0x8000; // A: not implemented
            s[41] = 0; // A_SF
            s[4] = 0;
            s[5] = 1; // St
            dev.holding(unit, at, &s);
            at += 48;
        }
    }
    if let Some(id) = end {
        dev.holding(unit, at, &[id, 0]);
    }
}

/// An inverter (103, L = 50) after the common model.
fn hand_inverter(dev: &HandDevice, unit: u8, base: u16, end: Option<u16>) {
    dev.holding(unit, base, &[0x5375, 0x6E53]);
    let mut common = vec![0u16; 68];
    common[0] = 1;
    common[1] = 66;
    dev.holding(unit, base + 2, &common);
    let mut m = vec![0xFFFFu16; 52];
    m[0] = 103;
    m[1] = 50;
    m[14] = (-2500i16) as u16; // W
    m[15] = 1; // W_SF: -25000 W
    m[16] = 5998; // Hz
    m[17] = (-2i16) as u16; // Hz_SF
    m[22] = (-9500i16) as u16; // PF, percent
    m[23] = (-2i16) as u16; // PF_SF: -95.00 %
    m[24] = 0;
    m[25] = 1234; // WH (acc32)
    m[26] = 3; // WH_SF: 1234 kWh
    m[31] = 0x8000; // DCW: not implemented
    m[32] = 0;
    m[38] = 4; // St
    dev.holding(unit, base + 70, &m);
    if let Some(id) = end {
        dev.holding(unit, base + 122, &[id, 0]);
    }
}

#[test]
// Over 60 lines: the scan of three chain shapes, then reads of each device.
fn devices_sunspec_scan_and_read_hand_built_images() {
    let dev = HandDevice::default();
    hand_battery(&dev, 1, 0, 2, false, Some(0)); // base 0, strings in 803, ends with id 0
    hand_battery(&dev, 2, 40000, 3, true, Some(0xFFFF)); // 804 per string
    hand_inverter(&dev, 3, 50000, None); // ends with an exception
    let addr = dev.serve();
    let scan = |unit: &str, code: i32| -> Vec<Value> {
        Cmd::new(None)
            .args(["--json", "sunspec", "scan", &addr, "--unit", unit])
            .run()
            .expect_code(code)
            .json()
    };
    let ids = |rows: &[Value]| -> Vec<(u64, u64)> {
        rows.iter()
            .filter(|r| r["kind"] == "model")
            .map(|r| (r["id"].as_u64().unwrap(), r["address"].as_u64().unwrap()))
            .collect()
    };
    assert_eq!(ids(&scan("1", 0)), [(1, 2), (802, 70), (803, 134)]);
    let two = scan("2", 0);
    assert_eq!(
        ids(&two),
        [
            (1, 40002),
            (802, 40070),
            (803, 40134),
            (804, 40258),
            (804, 40306),
            (804, 40354)
        ]
    );
    assert!(
        two.iter()
            .any(|r| r["kind"] == "common" && r["manufacturer"] == "ACME"),
        "{two:?}"
    );
    assert_eq!(ids(&scan("3", 0)), [(1, 50002), (103, 50070)]);
    // A unit that never answers: exit 4; the models' names come from the definitions.
    Cmd::new(None)
        .args([
            "sunspec",
            "scan",
            &addr,
            "--unit",
            "9",
            "--timeout",
            "300ms",
        ])
        .run()
        .expect_code(4);
    assert_eq!(
        scan("2", 0).iter().find(|r| r["id"] == 804).unwrap()["name"],
        "lithium_ion_string"
    );

    let s = site(
        "devices_sunspec_hand",
        None,
        &format!(
            "register_map = \"sunspec\"\nmodbus = {{ bms = \"{addr}\", pcs = \"{addr}\" }}\n\
             banks = [{{ id = 1, racks = 2 }}, {{ id = 2, racks = 3 }}]\npcs = [{{ id = 1, unit = 3 }}]\n"
        ),
    );
    let bank = values(&s.read("bank:1", 0));
    assert_eq!(bank["SOC"].as_f64(), Some(51.23));
    assert_eq!(bank["DC_VOLTAGE"].as_f64(), Some(812.3));
    assert_eq!(bank["DC_CURRENT"].as_f64(), Some(-150.0));
    assert_eq!(bank["DC_POWER"].as_f64(), Some(-121.8));
    assert_eq!(bank["MAX_CELL_VOLTAGE"].as_f64(), Some(3.345));
    assert_eq!(bank["MAX_CELL_TEMP"].as_f64(), Some(31.2));
    assert_eq!(
        (bank["STATUS"].as_i64(), bank["FAULT"].as_i64()),
        (Some(99), Some(1))
    );
    assert_eq!(bank["ALARM"].as_i64(), Some(i64::from(i32::MIN) + 1));
    assert!(bank["CHARGE_CURRENT_LIMIT"].is_null() && bank["SOH"].is_null());
    // A string from 803's group, and one from its 804.
    let r12 = values(&s.read("rack:1.2", 0));
    assert_eq!(
        (r12["SOC"].as_f64(), r12["DC_CURRENT"].as_f64()),
        (Some(41.0), Some(21.0))
    );
    assert_eq!(
        (
            r12["MAX_CELL_VOLTAGE"].as_f64(),
            r12["STATUS"].as_i64(),
            r12["ALARM"].as_i64()
        ),
        (Some(3.301), Some(2), Some(7))
    );
    assert!(
        r12["SOH"].is_null() && r12["DC_VOLTAGE"].is_null(),
        "{r12:?}"
    );
    let r23 = values(&s.read("rack:2.3", 0));
    assert_eq!(
        (r23["SOC"].as_f64(), r23["DC_VOLTAGE"].as_f64()),
        (Some(60.2), Some(750.2))
    );
    assert!(r23["DC_CURRENT"].is_null(), "{r23:?}");
    let pcs = values(&s.read("pcs:1", 0));
    assert_eq!(pcs["AC_ACTIVE_POWER"].as_f64(), Some(-25.0));
    assert_eq!(pcs["AC_FREQUENCY"].as_f64(), Some(59.98));
    assert_eq!(pcs["AC_POWER_FACTOR"].as_f64(), Some(-0.95));
    assert_eq!(pcs["DISCHARGED_ENERGY"].as_f64(), Some(1234.0));
    assert!(pcs["DC_POWER"].is_null() && pcs["CHARGED_ENERGY"].is_null());
    // The device changes a scale factor: the next read scales by the new one.
    dev.holding(1, 70 + 56, &[(-1i16) as u16]);
    assert_eq!(values(&s.read("bank:1", 0))["SOC"].as_f64(), Some(512.3));
    // A scale factor of 0x8000 makes its values NULL.
    dev.holding(1, 70 + 56, &[0x8000]);
    assert!(values(&s.read("bank:1", 0))["SOC"].is_null());

    // A string the battery does not have: exit 3, saying what was found.
    let more = site(
        "devices_sunspec_more",
        None,
        &format!(
            "register_map = \"sunspec\"\nmodbus = {{ bms = \"{addr}\" }}\nbanks = [{{ id = 1, racks = 3 }}]\n"
        ),
    );
    let err = more.refused("rack:1.3");
    assert!(
        err.contains("string 3 is not there: the battery has 2 string(s)"),
        "{err}"
    );
    // Ingest polls the rest and counts the missing string's seconds as `sunspec`.
    let run = more
        .cmd()
        .args(["--json", "ingest", "--site", "Site1", "--duration", "4s"])
        .run();
    let report: Vec<Value> = run.json();
    let missed = report[0]["missed"]["sunspec"].as_u64().unwrap();
    assert!((3..=5).contains(&missed), "{report:?}");
    let racks = more.query("SELECT DISTINCT \"RACK_ID\" FROM rack ORDER BY 1");
    let racks: Vec<i16> = racks.iter().map(|r| r.get(0)).collect();
    assert_eq!(racks, [1, 2]);
}

#[test]
// Over 60 lines: one site run end to end and every stored value checked.
fn devices_sunspec_site_ingests_scaled_values_across_scale_factor_changes() {
    let (bms, bms2, pcs) = (free_port(), free_port(), free_port());
    let s = site(
        "devices_sunspec_sim",
        None,
        &format!(
            "register_map = \"sunspec\"\nmodbus = {{ bms = \"127.0.0.1:{bms}\", bms2 = \"127.0.0.1:{bms2}\", pcs = \"127.0.0.1:{pcs}\" }}\n\
             banks = [{{ id = 1, racks = 3 }}, {{ id = 2, racks = 2, endpoint = \"bms2\" }}]\npcs = [1]\n"
        ),
    );
    let _sim = s.simulate(
        &[bms, bms2, pcs],
        &[
            "--seed",
            "3",
            "--sunspec-base",
            "bank:2=0",
            "--sunspec-strings-in-803",
            "bank:2",
            "--sunspec-end",
            "pcs:1=exception",
            "--sunspec-sf-period",
            "2s",
        ],
    );
    let scan: Vec<Value> = Cmd::new(None)
        .args([
            "--json",
            "sunspec",
            "scan",
            &format!("127.0.0.1:{bms}"),
            "--unit",
            "1",
        ])
        .run()
        .expect_code(0)
        .json();
    let models: Vec<u64> = scan.iter().filter_map(|r| r["id"].as_u64()).collect();
    assert_eq!(models, [1, 802, 803, 804, 804, 804]);
    let rack = values(&s.read("rack:1.2", 0));
    assert!(
        rack["SOC"]
            .as_f64()
            .is_some_and(|v| (0.0..=100.0).contains(&v)),
        "{rack:?}"
    );

    // Before discovery --plan counts each SunSpec device as one read.
    let plan: Vec<Value> = s
        .cmd()
        .args(["--json", "ingest", "--site", "Site1", "--plan"])
        .run()
        .json();
    let reads: f64 = plan
        .iter()
        .filter_map(|r| r["requests_per_sec"].as_f64())
        .sum();
    assert_eq!(reads, 8.0, "{plan:?}");
    let run = s
        .cmd()
        .args(["--json", "ingest", "--site", "Site1", "--duration", "6s"])
        .run()
        .expect_code(0);
    let report: Vec<Value> = run.json();
    assert_eq!(report[0]["missed"]["sunspec"], 0, "{report:?}");
    let model = Model::new(&s.site, 3);
    let mut precisions = std::collections::BTreeSet::new();
    let mut checked = 0;
    for (table, ids, columns) in [
        (
            "bank",
            "ARRAY[\"BANK_ID\"::int4]",
            ["SOC", "DC_VOLTAGE", "MAX_CELL_TEMP"],
        ),
        (
            "rack",
            "ARRAY[\"BANK_ID\"::int4, \"RACK_ID\"::int4]",
            ["SOC", "DC_CURRENT", "MAX_CELL_VOLTAGE"],
        ),
        (
            "pcs",
            "ARRAY[\"PCS_ID\"::int4]",
            ["AC_ACTIVE_POWER", "AC_FREQUENCY", "INTERNAL_TEMP"],
        ),
    ] {
        let cols: Vec<String> = columns.iter().map(|c| format!("\"{c}\"::float8")).collect();
        let sql = format!(
            "SELECT {ids}, extract(epoch FROM \"TIMESTAMP\")::int8, {} FROM {table}",
            cols.join(", ")
        );
        let table_enum = essops::schema::TableSpec::by_name(table).unwrap().table;
        for row in s.query(&sql) {
            let device: Vec<i16> = row
                .get::<_, Vec<i32>>(0)
                .into_iter()
                .map(|x| x as i16)
                .collect();
            let sec: i64 = row.get(1);
            for (i, c) in columns.iter().enumerate() {
                let stored: f64 = row.get(2 + i);
                let want = model.value(table_enum, c, &device, sec);
                // The coarsest scale factor the simulator writes for these is 10^-1.
                assert!(
                    (stored - want).abs() <= 0.05 + want.abs() * 1e-6,
                    "{table} {device:?} {c} at {sec}: {stored} vs {want}"
                );
                if *c == "SOC" && table == "bank" {
                    precisions.insert(((stored * 100.0).round() as i64 % 10 != 0) as u8);
                }
                checked += 1;
            }
        }
    }
    // 8 devices, about 6 s, 3 columns each.
    assert!(checked > 100, "only {checked} values checked");
    // Both scale factors were stored: tenths in one period, hundredths in the other.
    assert_eq!(precisions.len(), 2, "SoC_SF never switched while ingesting");
    // Not implemented points are NULL: 804's SoH, 803's ModTmpAvg, 103's DCW.
    let nulls = |sql: &str| s.query(sql)[0].get::<_, i64>(0);
    assert_eq!(
        nulls("SELECT count(*) FROM rack WHERE \"BANK_ID\" = 1 AND \"SOH\" IS NOT NULL"),
        0
    );
    assert!(nulls("SELECT count(*) FROM rack WHERE \"BANK_ID\" = 2 AND \"SOH\" IS NOT NULL") > 0);
    assert_eq!(
        nulls("SELECT count(*) FROM bank WHERE \"AVG_CELL_TEMP\" IS NOT NULL"),
        0
    );
    assert_eq!(
        nulls("SELECT count(*) FROM pcs WHERE \"DC_POWER\" IS NOT NULL"),
        0
    );
    let strings = nulls("SELECT count(DISTINCT (\"BANK_ID\", \"RACK_ID\")) FROM rack");
    assert_eq!(strings, 5);
}

#[test]
fn devices_a_table_the_map_lacks_has_no_devices_and_an_explicit_one_is_an_error() {
    let map = "[rack]\nendpoint = \"bms\"\nbase = 0\nstride = { rack = 10 }\nfields = [{ column = \"SOC\", at = 0, type = \"u16\" }]\n";
    let scratch = Scratch::new("devices_no_pcs");
    scratch.write("map.toml", map);
    let config = scratch.write(
        "sites.toml",
        &format!(
            "{}[[sites]]\nname = \"S\"\nregister_map = \"map.toml\"\nmodbus = {{ bms = \"127.0.0.1:1502\" }}\nbanks = [{{ id = 1, racks = 2 }}]\npcs = [1]\n",
            server_toml("local", "local")
        ),
    );
    let run = Cmd::new(Some(&config))
        .args(["config", "check"])
        .run()
        .expect_code(3);
    assert!(
        run.stderr().contains("key `sites[0].pcs`") || run.stdout().contains("sites[0].pcs"),
        "{}{}",
        run.stdout(),
        run.stderr()
    );
    assert!(format!("{}{}", run.stdout(), run.stderr()).contains("has no [pcs] table"));
    // Without `pcs` the site has racks only.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("pcs = [1]\n", ""),
    )
    .unwrap();
    let site = Config::load(Some(&config))
        .unwrap()
        .site("S")
        .unwrap()
        .clone();
    assert!(site.pcs.is_empty());
    assert_eq!(
        site.tables().iter().map(|t| t.name).collect::<Vec<_>>(),
        ["rack"]
    );
}
