//! An operator's register map: parsed and validated, then placed for a site
//! of a few banks (overlaps, past 65535, unit ids).
#![no_main]
use essops::modbus::map::{RegisterMap, check_devices};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(map) = RegisterMap::parse(text, "fuzz.toml") else {
        return;
    };
    let devices = |spec: &essops::schema::TableSpec| match spec.device_columns.len() {
        0 => vec![vec![]],
        1 => (1..=3).map(|b| vec![b]).collect(),
        _ => (1..=3).flat_map(|b| (1..=40).map(move |r| vec![b, r])).collect(),
    };
    let _ = check_devices(&map, devices, |e| Some(format!("{e}:502")));
    for t in &map.tables {
        let _ = t.requests(&[1, 1]);
        let _ = t.block_len();
    }
});
