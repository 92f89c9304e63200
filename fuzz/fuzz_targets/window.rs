//! Time arguments from the command line: durations (--min-age, --duration),
//! times (--from, --to) in zones with DST and half-hour offsets, and the
//! arithmetic a command then does with them.
#![no_main]
use essops::window;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = window::parse_duration(text) {
        let _ = chrono::Utc::now() - d;
    }
    let _ = window::parse_std_duration(text);
    for tz in [
        chrono_tz::Asia::Seoul,
        chrono_tz::Asia::Kolkata,
        chrono_tz::Europe::Berlin,
        chrono_tz::America::New_York,
    ] {
        if let Ok(t) = window::parse_time(text, tz) {
            let _ = window::local_day(t.with_timezone(&tz).date_naive(), tz);
        }
    }
});
