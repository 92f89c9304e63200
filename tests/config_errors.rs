//! Bad configuration files: each gives one message naming the file, line and
//! key, and the config-error exit code (3).

use crate::support::{Cmd, Scratch};

const SERVER: &str = "[servers.local]\nurl = \"postgres://essops@127.0.0.1:25432\"\n";
const SITE: &str = "[[sites]]\nname = \"A\"\nbanks = [{ id = 1, racks = 2 }]\n";

/// Writes `text` as a config, runs `essops migrate --dry-run`, and checks
/// the one error line (after the file path) and exit code 3.
fn expect_config_error(case: &str, text: &str, expected: &str) {
    let scratch = Scratch::new(&format!("config_{case}"));
    let path = scratch.write("sites.toml", text);
    let run = Cmd::new(Some(&path))
        .args(["migrate", "--dry-run"])
        .run()
        .expect_code(3);
    assert_eq!(
        run.stderr().trim(),
        format!("essops: error: {}:{expected}", path.display()),
        "case {case}"
    );
}

#[test]
fn config_the_valid_base_loads() {
    let scratch = Scratch::new("config_valid_base");
    let path = scratch.write("sites.toml", &format!("{SERVER}{SITE}"));
    let run = Cmd::new(Some(&path))
        .args(["migrate", "--dry-run", "--json"])
        .run()
        .expect_code(0);
    assert_eq!(run.json::<serde_json::Value>()[0]["status"], "planned");
}

#[test]
fn config_unknown_top_level_key() {
    expect_config_error(
        "unknown_top",
        &format!("colour = \"red\"\n{SERVER}{SITE}"),
        "1:1: key `colour`: unknown field `colour`, expected one of `log_dir`, `log_keep_days`, `lock_dir`, `spool_dir`, `spool_max_mb`, `spool_min_free_mb`, `modbus`, `cache`, `defaults`, `redis`, `history`, `retention`, `status`, `kpi`, `servers`, `sites`",
    );
}

#[test]
fn config_unknown_site_key() {
    expect_config_error(
        "unknown_site_key",
        &format!("{SERVER}{SITE}rackz = 3\n"),
        "6:1: key `rackz`: unknown field `rackz`, expected one of `name`, `database`, `servers`, `timezone`, `sample_interval_secs`, `loss_warning_pct`, `loss_critical_pct`, `banks`, `pcs`, `modbus`, `register_map`, `metrics_listen`, `rated_kwh`",
    );
}

#[test]
fn config_bank_with_zero_racks() {
    expect_config_error(
        "zero_racks",
        &format!(
            "{SERVER}[[sites]]\nname = \"A\"\nbanks = [{{ id = 1, racks = 4 }}, {{ id = 2, racks = 0 }}]\n"
        ),
        "5:51: key `sites[0].banks[1].racks`: a bank has 1 to 32767 racks (rack ids are smallint), got 0",
    );
}

#[test]
fn config_duplicate_site_name() {
    expect_config_error(
        "dup_site",
        &format!("{SERVER}{SITE}{SITE}"),
        "7:8: key `sites[1].name`: duplicate site name `A`",
    );
}

#[test]
fn config_bad_timezone() {
    expect_config_error(
        "bad_tz",
        &format!("[defaults]\ntimezone = \"Asia/Seol\"\n{SERVER}{SITE}"),
        "2:12: key `defaults.timezone`: unknown time zone `Asia/Seol`; expected an IANA name such as Asia/Seoul",
    );
}

#[test]
fn config_site_names_a_missing_server() {
    expect_config_error(
        "missing_server",
        &format!(
            "{SERVER}[[sites]]\nname = \"A\"\nservers = [\"local\", \"gcp\"]\nbanks = [{{ id = 1, racks = 2 }}]\n"
        ),
        "5:21: key `sites[0].servers`: no server `gcp` is configured (configured: local)",
    );
}

#[test]
fn config_bad_url() {
    expect_config_error(
        "bad_url",
        &format!("[servers.local]\nurl = \"127.0.0.1:25432\"\n{SITE}"),
        "2:7: key `servers.local.url`: not a valid URL (relative URL without a base); expected postgres://USER@HOST:PORT",
    );
}

#[test]
fn config_unparsable_url() {
    expect_config_error(
        "unparsable_url",
        &format!("[servers.local]\nurl = \"postgres://essops@[::1:25432\"\n{SITE}"),
        "2:7: key `servers.local.url`: not a valid URL (invalid IPv6 address); expected postgres://USER@HOST:PORT",
    );
}

#[test]
fn config_literal_password_is_refused() {
    expect_config_error(
        "literal_password",
        &format!("[servers.local]\nurl = \"postgres://essops:hunter2@127.0.0.1:25432\"\n{SITE}"),
        "2:7: key `servers.local.url`: a password in the config file is refused; put it in an environment variable (password_env) or a file (password_file)",
    );
}

#[test]
fn config_wrong_redis_scheme() {
    expect_config_error(
        "redis_scheme",
        &format!("[redis]\nurl = \"http://127.0.0.1:6379\"\n{SERVER}{SITE}"),
        "2:7: key `redis.url`: URL scheme `http` is not supported; expected redis://HOST:PORT/DB",
    );
}

#[test]
fn config_warning_above_critical() {
    expect_config_error(
        "thresholds",
        &format!("[defaults]\nloss_warning_pct = 6.0\nloss_critical_pct = 5.0\n{SERVER}{SITE}"),
        "2:20: key `defaults.loss_warning_pct`: the warning threshold (6 %) is above the critical one (5 %)",
    );
}

#[test]
fn config_wrong_type() {
    expect_config_error(
        "wrong_type",
        &format!("{SERVER}[[sites]]\nname = \"A\"\nbanks = [{{ id = 1, racks = \"eight\" }}]\n"),
        "5:28: key `racks`: invalid type: string \"eight\", expected a rack count (8) or a list of rack ids ([1, 2, 4, 5])",
    );
}

#[test]
fn config_syntax_error() {
    expect_config_error(
        "syntax",
        &format!("{SERVER}[[sites]\nname = \"A\"\n"),
        "3:9: key `(document)`: unclosed array table, expected `]`",
    );
}

#[test]
fn config_duplicate_bank_id() {
    expect_config_error(
        "dup_bank",
        &format!(
            "{SERVER}[[sites]]\nname = \"A\"\nbanks = [{{ id = 1, racks = 2 }}, {{ id = 1, racks = 3 }}]\n"
        ),
        "5:40: key `sites[0].banks[1].id`: duplicate bank id 1",
    );
}

#[test]
fn config_zero_sample_interval() {
    expect_config_error(
        "zero_interval",
        &format!(
            "{SERVER}[[sites]]\nname = \"A\"\nsample_interval_secs = 0\nbanks = [{{ id = 1, racks = 2 }}]\n"
        ),
        "5:24: key `sites[0].sample_interval_secs`: the sample interval must be at least 1 second",
    );
}

#[test]
fn config_both_password_sources() {
    expect_config_error(
        "both_passwords",
        &format!("{SERVER}password_env = \"PW\"\npassword_file = \"pw\"\n{SITE}"),
        "3:16: key `servers.local.password_env`: give password_env or password_file, not both",
    );
}

#[test]
fn config_no_sites() {
    expect_config_error(
        "no_sites",
        SERVER,
        "1:1: key `sites`: at least one [[sites]] entry is required",
    );
}

#[test]
fn config_missing_file() {
    let scratch = Scratch::new("config_missing_file");
    let path = scratch.path.join("nope.toml");
    let run = Cmd::new(Some(&path))
        .args(["migrate", "--dry-run"])
        .run()
        .expect_code(3);
    assert_eq!(
        run.stderr().trim(),
        format!(
            "essops: error: cannot read config file {}: No such file or directory (os error 2)",
            path.display()
        )
    );
}

#[test]
fn config_missing_password_variable_names_server_and_variable() {
    let scratch = Scratch::new("config_missing_pw_env");
    let path = scratch.write(
        "sites.toml",
        &format!(
            "log_dir = \"{}\"\n{SERVER}password_env = \"ESSOPS_IT_UNSET_PW\"\n{SITE}",
            scratch.path.display()
        ),
    );
    let run = Cmd::new(Some(&path)).args(["migrate"]).run().expect_code(3);
    assert_eq!(
        run.stderr().trim(),
        "essops: error: server `local`: password variable ESSOPS_IT_UNSET_PW is not set"
    );
}

#[test]
fn config_modbus_endpoint_must_be_host_and_port() {
    expect_config_error(
        "modbus_endpoint",
        &format!("{SERVER}{SITE}modbus = {{ bms = \"bms.site-a\", pcs = \"127.0.0.1:502\" }}\n"),
        "6:18: key `sites[0].modbus.bms`: `bms.site-a` is not HOST:PORT (for example 127.0.0.1:502)",
    );
}

#[test]
fn config_site_too_big_for_the_register_map_names_the_devices() {
    // The built-in map gives a bank 2000 registers of racks, 100 each: 21 racks collide with bank 2.
    expect_config_error(
        "modbus_overlap",
        &format!(
            "{SERVER}[[sites]]\nname = \"A\"\nbanks = [{{ id = 1, racks = 21 }}, {{ id = 2, racks = 1 }}]\nmodbus = {{ bms = \"127.0.0.1:1502\", pcs = \"127.0.0.1:1503\" }}\n"
        ),
        "6:10: key `sites[0].modbus`: rack bank 1 / rack 21 (registers 3000..3022) and rack bank 2 / rack 1 (from 3000) overlap on 127.0.0.1:1502 unit 1: a stride is smaller than a device's block of 23 registers (register map maps/default.toml (built-in))",
    );
}

#[test]
fn config_register_map_file_errors_name_the_map_file_and_field() {
    let scratch = Scratch::new("config_map_file");
    let map = scratch.write(
        "map.toml",
        "[pcs]\nendpoint = \"pcs\"\nbase = 0\nfields = [\n  { column = \"AC_ACTIVE_POWER\", at = 0, type = \"f32\", word_order = \"middle\" },\n]\n",
    );
    let path = scratch.write(
        "sites.toml",
        &format!("[modbus]\nregister_map = \"map.toml\"\n{SERVER}{SITE}"),
    );
    let run = Cmd::new(Some(&path))
        .args(["migrate", "--dry-run"])
        .run()
        .expect_code(3);
    assert_eq!(
        run.stderr().trim(),
        format!(
            "essops: error: {}:5:68: key `pcs.fields[0].word_order`: unknown word order `middle`; expected ABCD (big), BADC, CDAB (little) or DCBA",
            map.display()
        )
    );
    let missing = scratch.write(
        "sites.toml",
        &format!("[modbus]\nregister_map = \"nope.toml\"\n{SERVER}{SITE}"),
    );
    let run = Cmd::new(Some(&missing))
        .args(["migrate", "--dry-run"])
        .run()
        .expect_code(3);
    assert!(
        run.stderr()
            .contains("2:16: key `modbus.register_map`: no register map file at"),
        "{}",
        run.stderr()
    );
}
