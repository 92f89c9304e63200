//! TLS to the cloud server (verify-full by default, a wrong CA or host name
//! refused with a clear message), TLS to Redis, and passwords that never
//! appear in any output or log.

use std::path::{Path, PathBuf};

use crate::support::pg::block_on;
use crate::support::{Cmd, REPO, Scratch, TestDb, server_toml, servers_toml};

fn services(path: &str) -> PathBuf {
    Path::new(REPO).join(".services").join(path)
}

/// A one-rack site on `servers` (TOML) in a migrated test database.
fn setup(test: &str, servers: &str, redis: &str) -> (TestDb, Scratch, PathBuf) {
    let db = TestDb::new(test, 1);
    let scratch = Scratch::new(test);
    let config = scratch.site_config(
        redis,
        servers,
        &format!(
            "name = \"Sec_{test}\"\ndatabase = \"{}\"\nbanks = [{{ id = 1, racks = 1 }}]\n",
            db.databases[0]
        ),
    );
    (db, scratch, config)
}

/// The gcp server with other TLS settings (host, sslmode, CA).
fn gcp_with(host: &str, sslmode: &str, ca: &str) -> String {
    format!(
        "[servers.gcp]\nurl = \"postgres://essops@{host}:25433\"\npassword_file = \"{}\"\nsslmode = \"{sslmode}\"\nca_file = \"{}\"\n\n",
        services("secrets/gcp.password").display(),
        services(ca).display()
    )
}

fn loss_on(scratch: &Scratch, db: &TestDb, servers: &str) -> crate::support::cmd::Run {
    let text = format!(
        "log_dir = \"{}\"\n{servers}[[sites]]\nname = \"Sec\"\ndatabase = \"{}\"\nbanks = [{{ id = 1, racks = 1 }}]\n",
        scratch.path.join("logs").display(),
        db.databases[0]
    );
    let config = scratch.write("variant.toml", &text);
    Cmd::new(Some(&config))
        .args(["loss", "--server", "gcp"])
        .run()
}

#[test]
fn security_gcp_is_tls_verified_and_a_wrong_ca_or_host_is_refused() {
    let (db, scratch, _) = setup("sec_tls", &servers_toml(), "");
    let ssl: bool = block_on(async {
        let c = db.client("gcp", &db.databases[0]).await;
        c.query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
    });
    assert!(ssl, "the connection to gcp is not encrypted");

    let ran = |code: i32| [0, 10, 11].contains(&code);
    let good = loss_on(
        &scratch,
        &db,
        &gcp_with("localhost", "verify-full", "tls/ca.crt"),
    );
    assert!(ran(good.code()), "{}", good.stderr());

    let wrong_ca = loss_on(
        &scratch,
        &db,
        &gcp_with("localhost", "verify-full", "tls/other-ca.crt"),
    );
    // Loss reports each server it cannot reach as a failed row, and exits 4.
    assert_eq!(wrong_ca.code(), 4, "{}", wrong_ca.stderr());
    assert!(
        wrong_ca.stdout().contains(
            "TLS (sslmode verify-full): the server's certificate is not signed by the CA in ca_file"
        ),
        "{}",
        wrong_ca.stdout()
    );

    let wrong_host = loss_on(
        &scratch,
        &db,
        &gcp_with("127.0.0.1", "verify-full", "tls/ca.crt"),
    );
    assert_eq!(wrong_host.code(), 4, "{}", wrong_host.stderr());
    assert!(
        wrong_host
            .stdout()
            .contains("does not name host `127.0.0.1`"),
        "{}",
        wrong_host.stdout()
    );

    // verify-ca checks the chain only, so the same address is accepted.
    let chain_only = loss_on(
        &scratch,
        &db,
        &gcp_with("127.0.0.1", "verify-ca", "tls/ca.crt"),
    );
    assert!(ran(chain_only.code()), "{}", chain_only.stderr());

    // require with a CA file verifies the chain, as libpq does: the wrong CA
    // is refused, on both driver paths; the right one is accepted.
    let require_wrong_ca = loss_on(
        &scratch,
        &db,
        &gcp_with("127.0.0.1", "require", "tls/other-ca.crt"),
    );
    assert_eq!(require_wrong_ca.code(), 4, "{}", require_wrong_ca.stderr());
    assert!(
        require_wrong_ca.stdout().contains(
            "TLS (sslmode require): the server's certificate is not signed by the CA in ca_file"
        ),
        "{}",
        require_wrong_ca.stdout()
    );
    let migrate_require = Cmd::new(Some(&scratch.path.join("variant.toml")))
        .args(["migrate", "--server", "gcp"])
        .run();
    assert_ne!(migrate_require.code(), 0, "{}", migrate_require.stderr());
    let require_right_ca = loss_on(
        &scratch,
        &db,
        &gcp_with("127.0.0.1", "require", "tls/ca.crt"),
    );
    assert!(
        ran(require_right_ca.code()),
        "{}",
        require_right_ca.stderr()
    );

    // The server itself refuses plain text.
    let plain = loss_on(
        &scratch,
        &db,
        &gcp_with("localhost", "disable", "tls/ca.crt"),
    );
    assert!(
        !ran(plain.code()) && plain.stdout().contains("no encryption"),
        "{}",
        plain.stdout()
    );

    // Migrations (sqlx) take the same path and refuse the wrong CA too.
    let text = std::fs::read_to_string(scratch.path.join("variant.toml"))
        .unwrap()
        .replace("tls/ca.crt", "tls/other-ca.crt")
        .replace("\"disable\"", "\"verify-full\"");
    let config = scratch.write("variant.toml", &text);
    let migrate = Cmd::new(Some(&config))
        .args(["migrate", "--server", "gcp"])
        .run();
    assert_ne!(migrate.code(), 0, "{}", migrate.stderr());
    assert!(
        migrate.stderr().contains(
            "TLS (sslmode verify-full): the server's certificate is not signed by the CA in ca_file"
        ),
        "{}",
        migrate.stderr()
    );
}

/// `essops check` on the `expired` cluster (TLS only, its certificate, signed
/// by the dev CA, lapsed in 2020) with `sslmode` and an optional CA.
fn check_expired(scratch: &Scratch, sslmode: &str, ca: Option<&str>) -> String {
    let ca = ca.map_or(String::new(), |c| {
        format!("ca_file = \"{}\"\n", services(c).display())
    });
    let text = format!(
        "log_dir = \"{}\"\n[servers.expired]\nurl = \"postgres://essops@localhost:25435\"\npassword_file = \"{}\"\nsslmode = \"{sslmode}\"\n{ca}\n[[sites]]\nname = \"Sec\"\ndatabase = \"postgres\"\nbanks = [{{ id = 1, racks = 1 }}]\n",
        scratch.path.join("logs").display(),
        services("secrets/expired.password").display(),
    );
    let config = scratch.write(&format!("expired-{sslmode}.toml"), &text);
    let run = Cmd::new(Some(&config))
        .args(["check", "--site", "Sec"])
        .run();
    let refused = run.stdout().contains("FAIL    server");
    // 10: warnings only (the dev superuser's login role is named `essops`).
    assert_eq!(!matches!(run.code(), 0 | 10), refused, "{}", run.stdout());
    run.stdout()
}

/// Each of libpq's modes against a lapsed certificate: the modes that check
/// the chain refuse it and say which mode checked; the others encrypt without
/// checking, as libpq does; a server that takes only TLS refuses `disable`.
#[test]
fn security_each_sslmode_meets_an_expired_certificate_as_libpq_does() {
    let scratch = Scratch::new("sec_expired");
    let expired =
        |mode: &str| format!("TLS (sslmode {mode}): the server's certificate has expired");
    for (mode, ca) in [
        ("verify-full", Some("tls/ca.crt")),
        ("verify-ca", Some("tls/ca.crt")),
        ("require", Some("tls/ca.crt")),
    ] {
        let out = check_expired(&scratch, mode, ca);
        assert!(out.contains(&expired(mode)), "{mode}: {out}");
    }
    for mode in ["require", "prefer"] {
        let out = check_expired(&scratch, mode, None);
        assert!(
            out.contains(&format!("encrypted (sslmode {mode})")),
            "{mode}: {out}"
        );
        assert!(!out.contains("TLS ("), "{mode}: {out}");
    }
    let out = check_expired(&scratch, "disable", None);
    assert!(out.contains("no encryption"), "disable: {out}");
}

#[test]
fn security_rediss_uses_the_configured_ca() {
    let redis = |ca: &str| {
        format!(
            "[redis]\nurl = \"rediss://localhost:26380/0\"\nca_file = \"{}\"\n",
            services(ca).display()
        )
    };
    let (_db, _scratch, config) = setup(
        "sec_rediss",
        &server_toml("local", "local"),
        &redis("tls/ca.crt"),
    );
    Cmd::new(Some(&config))
        .args(["cache", "warm"])
        .run()
        .expect_code(0);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("tls/ca.crt", "tls/other-ca.crt");
    std::fs::write(&config, text).unwrap();
    let run = Cmd::new(Some(&config))
        .args(["cache", "warm"])
        .run()
        .expect_code(4);
    assert!(
        run.stderr()
            .contains("Redis at localhost:26380 is unavailable"),
        "{}",
        run.stderr()
    );
}

#[test]
fn security_passwords_appear_in_no_output_and_no_log() {
    let (db, scratch, config) = setup(
        "sec_secrets",
        &servers_toml(),
        "[redis]\nurl = \"redis://127.0.0.1:26379/0\"\n",
    );
    let secrets: Vec<String> = ["local", "gcp"]
        .iter()
        .map(|s| {
            std::fs::read_to_string(services(&format!("secrets/{s}.password")))
                .unwrap()
                .trim()
                .to_string()
        })
        .collect();
    // A config whose server is down, so connection errors are printed too.
    let down = scratch.write(
        "down.toml",
        &std::fs::read_to_string(&config)
            .unwrap()
            .replace("127.0.0.1:25432", "127.0.0.1:1"),
    );
    // Ingest needs Modbus endpoints: two where nothing answers.
    let (bms, pcs) = (crate::support::free_port(), crate::support::free_port());
    let with_modbus = |from: &std::path::Path, name: &str| {
        let text = std::fs::read_to_string(from).unwrap().replace(
            "banks = [",
            &format!(
                "modbus = {{ bms = \"127.0.0.1:{bms}\", pcs = \"127.0.0.1:{pcs}\" }}\nbanks = ["
            ),
        );
        scratch.write(name, &text)
    };
    let (polled, polled_down) = (
        with_modbus(&config, "polled.toml"),
        with_modbus(&down, "polled-down.toml"),
    );
    let site = "Sec_sec_secrets";
    let ingest = vec![
        "--verbose",
        "--json",
        "ingest",
        "--site",
        site,
        "--duration",
        "2s",
    ];
    let mut outputs = Vec::new();
    // Every command that connects to a server or to Redis, up and down.
    for (cfg, args) in [
        (&config, vec!["--help"]),
        (&config, vec!["migrate", "--dry-run", "--json"]),
        (&config, vec!["--verbose", "migrate"]),
        (&config, vec!["--json", "loss"]),
        (&config, vec!["--json", "reconcile", "--min-age", "0"]),
        (&config, vec!["--json", "cache", "warm"]),
        (&config, vec!["--json", "index", "list"]),
        (&config, vec!["--json", "index", "columns", "rack"]),
        (&config, vec!["--json", "index", "recommend"]),
        (&config, vec!["--json", "spool", "list"]),
        (&config, vec!["--json", "check"]),
        (&config, vec!["config", "show"]),
        (&config, vec!["config", "check"]),
        (&polled, ingest.clone()),
        (&down, vec!["--verbose", "--json", "loss"]),
        (&down, vec!["--verbose", "migrate"]),
        (&down, vec!["--json", "index", "list"]),
        (&down, vec!["--json", "check"]),
        (&polled_down, ingest.clone()),
    ] {
        let run = Cmd::new(Some(cfg)).args(&args).run();
        outputs.push((
            format!("{args:?}"),
            format!("{}{}", run.stdout(), run.stderr()),
        ));
    }
    for entry in std::fs::read_dir(scratch.path.join("logs")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            outputs.push((
                path.display().to_string(),
                std::fs::read_to_string(&path).unwrap(),
            ));
        }
    }
    assert!(outputs.len() > 19, "no log files were written");
    assert!(
        outputs.iter().any(|(_, o)| o.contains("unreachable")),
        "the down server was not reported"
    );
    for (what, text) in &outputs {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "a password appears in {what}"
            );
        }
    }
    drop(db);
}

#[test]
fn security_reader_role_reads_but_cannot_write() {
    let (db, scratch, config) = setup(
        "sec_roles",
        &servers_toml(),
        "[redis]\nurl = \"redis://127.0.0.1:26379/0\"\n",
    );
    Cmd::new(Some(&config))
        .args(["--json", "migrate", "--create-roles"])
        .run()
        .expect_code(0);
    let reader_pw = "it-reader-pw-7f3a9c";
    for server in ["local", "gcp"] {
        block_on(async {
            let c = db.client(server, &db.databases[0]).await;
            c.batch_execute(&format!(
                "DROP ROLE IF EXISTS it_reader_sec; CREATE ROLE it_reader_sec LOGIN PASSWORD '{reader_pw}' IN ROLE essops_reader"
            ))
            .await
            .unwrap();
        });
    }
    // Rows on local only: a reconcile would copy them to gcp.
    block_on(async {
        let c = db.client("local", &db.databases[0]).await;
        c.batch_execute(
            "INSERT INTO rack (\"TIMESTAMP\", \"BANK_ID\", \"RACK_ID\", \"SOC\")
             SELECT t, 1, 1, 50 FROM generate_series(now() - interval '2 hours', now() - interval '1 hour', interval '1 second') t",
        )
        .await
        .unwrap();
    });
    let as_reader = std::fs::read_to_string(&config)
        .unwrap()
        .replace("postgres://essops@", "postgres://it_reader_sec@")
        .replace(
            &format!(
                "password_file = \"{}\"",
                services("secrets/local.password").display()
            ),
            "password_env = \"IT_READER_PW\"",
        )
        .replace(
            &format!(
                "password_file = \"{}\"",
                services("secrets/gcp.password").display()
            ),
            "password_env = \"IT_READER_PW\"",
        )
        .replace(
            "banks = [",
            "modbus = { bms = \"127.0.0.1:1\", pcs = \"127.0.0.1:2\" }\nbanks = [",
        );
    let reader = scratch.write("reader.toml", &as_reader);
    let run = |args: &[&str]| {
        Cmd::new(Some(&reader))
            .env("IT_READER_PW", reader_pw)
            .args(args)
            .run()
    };
    let counts = || -> (i64, i64) {
        let n = |server: &str| -> i64 {
            block_on(async {
                db.client(server, &db.databases[0])
                    .await
                    .query_one("SELECT count(*) FROM rack", &[])
                    .await
                    .unwrap()
                    .get(0)
            })
        };
        (n("local"), n("gcp"))
    };
    let before = counts();

    let loss = run(&["loss", "--from", "2020-01-01", "--to", "2020-01-02"]);
    assert!(
        [0, 10, 11].contains(&loss.code()),
        "loss as reader: {}{}",
        loss.stdout(),
        loss.stderr()
    );
    // The reader may record loss history, and nothing else of it.
    assert!(!loss.stderr().contains("not recorded"), "{}", loss.stderr());
    let recorded: i64 = block_on(async {
        db.client("local", &db.databases[0])
            .await
            .query_one(
                "SELECT count(*) FROM essops.loss_daily WHERE day = '2020-01-01'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    });
    assert!(recorded > 0, "the reader's loss left no history");
    // And its KPI days, the same way.
    let kpi = run(&["kpi", "--from", "2020-01-01", "--to", "2020-01-02"]);
    assert!(
        [0, 10, 11].contains(&kpi.code()) && !kpi.stderr().contains("not recorded"),
        "kpi as reader: {}{}",
        kpi.stdout(),
        kpi.stderr()
    );
    let kept: i64 = block_on(async {
        db.client("local", &db.databases[0])
            .await
            .query_one(
                "SELECT count(*) FROM essops.kpi_daily WHERE day = '2020-01-01'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    });
    assert!(kept > 0, "the reader's kpi left no history");
    let check = run(&["check"]);
    // The dev superuser is a login role named like the history schema.
    assert!(
        check.stdout().contains("a login role `essops` exists"),
        "{}",
        check.stdout()
    );
    assert!(
        check
            .stdout()
            .contains("GRANT INSERT ON TABLE \"essops\".\"reconcile_runs\" TO \"it_reader_sec\"")
            && !check.stdout().contains("\"loss_daily\" TO")
            && !check.stdout().contains("\"kpi_daily\" TO"),
        "{}",
        check.stdout()
    );
    let cache = run(&["cache", "warm"]);
    assert_eq!(
        cache.code(),
        0,
        "cache warm as reader: {}{}",
        cache.stdout(),
        cache.stderr()
    );

    let site = "Sec_sec_roles";
    let window = [
        "--from",
        "2000-01-01",
        "--to",
        "2100-01-01",
        "--min-age",
        "0",
    ];
    let rec = run(&[&["reconcile"][..], &window[..]].concat());
    assert_eq!(
        rec.code(),
        6,
        "reconcile as reader: {}{}",
        rec.stdout(),
        rec.stderr()
    );
    assert!(
        rec.stdout()
            .contains("role `it_reader_sec` lacks INSERT on table `rack`"),
        "{}",
        rec.stdout()
    );
    assert!(
        rec.stdout()
            .contains("Run `GRANT INSERT ON TABLE public.\"rack\" TO \"it_reader_sec\"`")
            && rec
                .stdout()
                .contains("`GRANT essops_writer TO it_reader_sec`"),
        "{}",
        rec.stdout()
    );

    // Filling only gcp, local is only read, but its staging table needs
    // TEMPORARY; taken from PUBLIC (which has it by default), the reader
    // lacks it, and the exact GRANT is given.
    db.execute(
        "local",
        &format!(
            "REVOKE TEMPORARY ON DATABASE \"{}\" FROM PUBLIC",
            db.databases[0]
        ),
    );
    let to_gcp = run(&[&["reconcile", "--direction", "to-gcp"][..], &window[..]].concat());
    assert_eq!(to_gcp.code(), 6, "{}{}", to_gcp.stdout(), to_gcp.stderr());
    assert!(
        to_gcp.stdout().contains("lacks TEMPORARY on database")
            && to_gcp
                .stdout()
                .contains("Run `GRANT TEMPORARY ON DATABASE \"")
            && to_gcp.stdout().contains("TO \"it_reader_sec\"`"),
        "{}",
        to_gcp.stdout()
    );

    let ingest = run(&["ingest", "--site", site, "--duration", "2s"]);
    assert_eq!(
        ingest.code(),
        6,
        "ingest as reader: {}{}",
        ingest.stdout(),
        ingest.stderr()
    );
    assert!(
        ingest
            .stderr()
            .contains("role `it_reader_sec` lacks INSERT on table"),
        "{}",
        ingest.stderr()
    );
    assert_eq!(counts(), before, "a refused command changed rows");
    assert!(before.0 > 0 && before.1 == 0);
}

#[test]
fn security_any_identifier_reaches_sql_quoted_and_intact() {
    let db = TestDb::new("sec_idents", 0);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let alphabet: Vec<char> = "aZ_0 \"';-()$\\/*.%\t\nÅ한🔋".chars().collect();
    let names: Vec<String> = (0..300)
        .map(|_| {
            let len = 1 + (next() % 20) as usize;
            (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect::<String>()
        })
        .filter(|n: &String| n.len() <= 63)
        .collect();
    block_on(async {
        let c = db.client("local", "postgres").await;
        for name in &names {
            let sql = format!("SELECT 1 AS {}", essops::db::quote_ident(name));
            let row = c
                .query_one(&sql, &[])
                .await
                .unwrap_or_else(|e| panic!("{name:?}: {e}"));
            assert_eq!(
                row.columns()[0].name(),
                name.as_str(),
                "identifier changed on its way through SQL"
            );
        }
    });
    assert!(names.len() > 250);
}
