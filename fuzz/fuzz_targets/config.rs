//! A whole sites.toml: parsed and validated (sections, servers, sites,
//! register maps named by path are not read: the text is all there is).
#![no_main]
use essops::config::{Config, ConfigSource};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::parse(text, ConfigSource::File("/nonexistent/fuzz.toml".into())) {
        let _ = essops::config::view::settings(&config);
    }
});
