//! Fresh databases for tests (the store's own and the daemon's integration tests): a
//! temporary SQLite file, or a randomly named PostgreSQL database made through
//! `BOTD_TEST_POSTGRES_URL`. Without that variable the PostgreSQL half is skipped with a
//! note, except under `CI=true`, where a missing URL or an unreachable server fails the
//! test.
//!
//! Compiled in every build (it needs no test-only dependency) and hidden from the docs.

use std::future::Future;
use std::path::{Path, PathBuf};

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::Connection;
use rand::Rng;

use super::{Db, DbConn, StoreError};

/// The variable naming the PostgreSQL server tests may create databases on.
pub const POSTGRES_URL_VAR: &str = "BOTD_TEST_POSTGRES_URL";

fn random_suffix() -> String {
    let n: u64 = rand::thread_rng().gen();
    format!("{n:016x}")
}

/// Whether `CI=true`: then PostgreSQL must be there.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// A database that exists for one test and is removed after it (on drop).
pub struct TestDb {
    url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Dir(PathBuf),
    Postgres { admin: String, name: String },
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("backend", &self.backend())
            .field("url", &super::conn::redact(&self.url))
            .finish()
    }
}

impl TestDb {
    /// A fresh SQLite file (`botd.db`) in its own temporary directory.
    pub fn sqlite() -> TestDb {
        let dir = std::env::temp_dir().join(format!("botd-test-{}", random_suffix()));
        if let Err(e) = std::fs::create_dir_all(&dir) {
            panic!("cannot create the test directory {}: {e}", dir.display());
        }
        let url = format!("sqlite://{}", dir.join("botd.db").display());
        TestDb {
            url,
            cleanup: Cleanup::Dir(dir),
        }
    }

    /// A fresh PostgreSQL database `botd_test_<random>`, or `None` (with a note on
    /// stderr) when `BOTD_TEST_POSTGRES_URL` is unset and `CI` is not `true`.
    ///
    /// # Panics
    /// Under `CI=true` without the variable, and whenever the variable is set but the
    /// server does not answer or refuses `CREATE DATABASE`.
    pub fn postgres() -> Option<TestDb> {
        let admin = match std::env::var(POSTGRES_URL_VAR) {
            Ok(u) if !u.trim().is_empty() => u.trim().to_owned(),
            _ => {
                assert!(
                    !under_ci(),
                    "CI=true but {POSTGRES_URL_VAR} is not set: the PostgreSQL tests must run"
                );
                eprintln!(
                    "note: {POSTGRES_URL_VAR} is not set; skipping the PostgreSQL half \
                     (e.g. {POSTGRES_URL_VAR}=postgres://postgres@127.0.0.1:5432/test)"
                );
                return None;
            }
        };
        let name = format!("botd_test_{}", random_suffix());
        let mut conn = admin_connection(&admin).unwrap_or_else(|e| {
            panic!(
                "PostgreSQL at {POSTGRES_URL_VAR} ({}) does not answer: {e}",
                super::conn::redact(&admin)
            )
        });
        if let Err(e) = conn.batch_execute(&format!("CREATE DATABASE {name}")) {
            panic!("CREATE DATABASE {name} failed: {e}");
        }
        Some(TestDb {
            url: database_url(&admin, &name),
            cleanup: Cleanup::Postgres { admin, name },
        })
    }

    /// Every backend available: SQLite always, then PostgreSQL when configured.
    pub fn all() -> Vec<TestDb> {
        let mut v = vec![TestDb::sqlite()];
        v.extend(TestDb::postgres());
        v
    }

    /// Runs `f` against a fresh database of each backend in turn (see [`TestDb::all`]).
    /// Assertions inside should name `db.backend()` so that a failure says which.
    pub fn each(mut f: impl FnMut(&TestDb)) {
        for db in TestDb::all() {
            f(&db);
        }
    }

    /// [`TestDb::each`] for async tests.
    pub async fn each_async<F, Fut>(mut f: F)
    where
        F: FnMut(TestDb) -> Fut,
        Fut: Future<Output = ()>,
    {
        for db in TestDb::all() {
            f(db).await;
        }
    }

    /// The URL for `database.url`.
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

    /// The SQLite file's directory (removed on drop); `None` on PostgreSQL.
    pub fn dir(&self) -> Option<&Path> {
        match &self.cleanup {
            Cleanup::Dir(d) => Some(d),
            Cleanup::Postgres { .. } => None,
        }
    }

    /// Connects with `pool_size` connections and runs the migrations.
    ///
    /// # Panics
    /// When either fails: this is for tests.
    pub fn open(&self, pool_size: u32) -> Db {
        let db = Db::connect(&self.url, pool_size, "normal")
            .unwrap_or_else(|e| panic!("{}: cannot connect: {e}", self.backend()));
        if let Err(e) = db.run_migrations() {
            panic!("{}: migrations failed: {e}", self.backend());
        }
        db
    }
}

/// The admin URL with its database replaced by `name` (query parameters kept).
fn database_url(admin: &str, name: &str) -> String {
    let (base, query) = match admin.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

fn admin_connection(admin: &str) -> Result<PgConnection, String> {
    match super::conn::Target::parse(admin) {
        Ok(super::conn::Target::Postgres(url)) => {
            PgConnection::establish(&url).map_err(|e| e.to_string())
        }
        _ => Err("not a postgres:// URL".into()),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Dir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::Postgres { admin, name } => {
                // Best effort; FORCE (PostgreSQL 13+) ends connections still open.
                if let Ok(mut c) = admin_connection(admin) {
                    if c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .is_err()
                    {
                        let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name}"));
                    }
                }
            }
        }
    }
}

/// A store job that inserts a user inside a transaction and panics there: the tests that
/// prove a panicking job is an error and leaves no open transaction behind run it.
pub fn panic_inside_a_transaction(c: &mut DbConn) -> Result<(), StoreError> {
    crate::with_conn!(c, c => {
        c.transaction::<(), diesel::result::Error, _>(|c| {
            c.batch_execute(
                "INSERT INTO users (username, password_hash, role, created_at, updated_at) \
                 VALUES ('ghost', 'h', 'viewer', 1, 1)",
            )?;
            panic!("boom inside a transaction");
        })
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_name_replaces_the_admin_one() {
        assert_eq!(
            database_url("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            database_url("postgres://u:p@h/test?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(database_url("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(database_url("postgres://u@h/", "x"), "postgres://u@h/x");
    }

    #[test]
    fn a_sqlite_test_db_removes_its_directory() {
        let db = TestDb::sqlite();
        let dir = db.dir().map(Path::to_path_buf);
        let d = db.open(1);
        drop(d);
        assert!(dir.as_ref().is_some_and(|d| d.is_dir()));
        drop(db);
        assert!(dir.is_some_and(|d| !d.exists()));
    }
}
