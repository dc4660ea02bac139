//! Fresh databases for tests: a temporary SQLite file, or a randomly named PostgreSQL
//! database made through `BOTD_TEST_POSTGRES_URL`. Under `CI=true` a missing or
//! unreachable PostgreSQL is a failure, not a skip.

use std::path::PathBuf;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::Connection;
use rand::Rng;

fn random_suffix() -> String {
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

/// A database that exists for one test and is removed after it.
pub struct TestDb {
    url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Postgres { admin: String, name: String },
}

impl TestDb {
    /// A fresh SQLite file in its own temporary directory.
    pub fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(format!("botd-test-{}", random_suffix()));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let url = format!("sqlite://{}", dir.join("botd.db").display());
        TestDb {
            url,
            cleanup: Cleanup::Dir(dir),
        }
    }

    /// A fresh PostgreSQL database, or `None` (with a note) when
    /// `BOTD_TEST_POSTGRES_URL` is unset outside CI.
    pub fn postgres() -> Option<TestDb> {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        let admin = match std::env::var("BOTD_TEST_POSTGRES_URL") {
            Ok(u) if !u.is_empty() => u,
            _ => {
                assert!(!ci, "CI=true but BOTD_TEST_POSTGRES_URL is not set");
                eprintln!("note: BOTD_TEST_POSTGRES_URL is not set; skipping the PostgreSQL half");
                return None;
            }
        };
        let name = format!("botd_test_{}", random_suffix());
        let mut conn = match PgConnection::establish(&admin) {
            Ok(c) => c,
            Err(e) => panic!("PostgreSQL at BOTD_TEST_POSTGRES_URL does not answer: {e}"),
        };
        conn.batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("CREATE DATABASE");
        let url = match admin.rfind('/') {
            Some(i) if i > "postgres://".len() => format!("{}/{name}", &admin[..i]),
            _ => format!("{}/{name}", admin.trim_end_matches('/')),
        };
        Some(TestDb {
            url,
            cleanup: Cleanup::Postgres { admin, name },
        })
    }

    /// Both backends that are available: SQLite always, PostgreSQL when configured.
    pub fn all() -> Vec<TestDb> {
        let mut v = vec![TestDb::sqlite()];
        v.extend(TestDb::postgres());
        v
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.cleanup {
            Cleanup::Dir(_) => "sqlite",
            Cleanup::Postgres { .. } => "postgres",
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { admin, name } => {
                if let Ok(mut c) = PgConnection::establish(admin) {
                    let _ =
                        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
                }
            }
        }
    }
}
