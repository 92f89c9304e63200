//! Per-test databases on the dev servers, and catalog queries for assertions.

use std::path::Path;

use essops::config::{Config, ConfigSource};
use essops::db::{self, Target};

/// Databases owned by one test on both dev servers. Dropped at the end; kept
/// (and named on stderr) when the test panicked, for a look afterwards.
pub struct TestDb {
    pub config: Config,
    pub databases: Vec<String>,
}

impl TestDb {
    /// `count` database names derived from the test's name; any left over
    /// from an earlier run are dropped first.
    pub fn new(test: &str, count: usize) -> TestDb {
        TestDb::on(test, count, &super::servers_toml())
    }

    /// Like [`new`](Self::new), on the servers `servers_toml` describes.
    pub fn on(test: &str, count: usize, servers_toml: &str) -> TestDb {
        super::services();
        let config = config_for(servers_toml);
        let databases: Vec<String> = (1..=count).map(|i| format!("it_{test}_{i}")).collect();
        let db = TestDb { config, databases };
        db.drop_all();
        db
    }

    fn drop_all(&self) {
        block_on(async {
            for server in &self.config.servers {
                let client = db::connect(
                    &self.config,
                    Target {
                        server,
                        database: "postgres",
                    },
                )
                .await
                .unwrap();
                for name in &self.databases {
                    let sql = format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        db::quote_ident(name)
                    );
                    client.batch_execute(&sql).await.unwrap();
                }
            }
        });
    }

    /// A client for `database` on `server`.
    pub async fn client(&self, server: &str, database: &str) -> tokio_postgres::Client {
        let server = self.config.server(server).unwrap();
        db::connect(&self.config, Target { server, database })
            .await
            .unwrap()
    }

    /// Runs SQL in this test's first database on `server`.
    pub fn execute(&self, server: &str, sql: &str) {
        self.execute_in(server, 0, sql)
    }

    /// Runs SQL in this test's `n`th database (from 0) on `server`.
    pub fn execute_in(&self, server: &str, n: usize, sql: &str) {
        block_on(async {
            self.client(server, &self.databases[n])
                .await
                .batch_execute(sql)
                .await
                .unwrap()
        });
    }

    /// The rows of a query in this test's first database on `server`.
    pub fn rows(&self, server: &str, sql: &str) -> Vec<tokio_postgres::Row> {
        block_on(async {
            self.client(server, &self.databases[0])
                .await
                .query(sql, &[])
                .await
                .unwrap()
        })
    }

    /// The first column of the first row, as i64.
    pub fn scalar(&self, server: &str, sql: &str) -> i64 {
        self.rows(server, sql)[0].get(0)
    }

    pub fn exists(&self, server: &str, database: &str) -> bool {
        block_on(async {
            let c = self.client(server, "postgres").await;
            c.query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&database])
                .await
                .unwrap()
                .is_some()
        })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "kept test databases {:?} on both dev servers",
                self.databases
            );
        } else {
            self.drop_all();
        }
    }
}

/// The dev servers only, for connecting from tests.
pub fn dev_config() -> Config {
    config_for(&super::servers_toml())
}

fn config_for(servers_toml: &str) -> Config {
    let text =
        format!("{servers_toml}[[sites]]\nname = \"x\"\nbanks = [{{ id = 1, racks = 1 }}]\n");
    Config::parse(
        &text,
        ConfigSource::File(Path::new(super::REPO).join("it.toml")),
    )
    .unwrap()
}

/// Runs a future to completion on a fresh single-thread runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
