//! Connections of either backend, the r2d2 manager that makes them, and [`Db`]: the pools.
//!
//! On SQLite every connection runs in WAL mode with the configured `synchronous`, a busy
//! timeout and foreign keys on; writes go through one writer connection. On PostgreSQL
//! one pool serves reads and writes.

use std::path::PathBuf;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::StoreError;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");

/// How long a caller waits for a pooled connection, and start-up for the first one.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to either backend.
pub enum DbConn {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

/// Runs the same expression against whichever backend `conn` is: each arm is compiled
/// for its own backend, so one query text serves both.
#[macro_export]
#[doc(hidden)]
macro_rules! with_conn {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::store::DbConn::Postgres($c) => $body,
            $crate::store::DbConn::Sqlite($c) => $body,
        }
    };
}

/// Which backend a URL names, and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Postgres(String),
    Sqlite(PathBuf),
}

impl Target {
    /// `sqlite://PATH` or `sqlite:PATH` (relative to the working directory), or
    /// `postgres://…` / `postgresql://…`.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Target::Postgres(url.to_owned()));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| {
                StoreError::Config(
                    "must start with sqlite://, postgres:// or postgresql://".to_owned(),
                )
            })?;
        if path.is_empty() {
            return Err(StoreError::Config("the SQLite path is empty".into()));
        }
        Ok(Target::Sqlite(PathBuf::from(path)))
    }
}

/// Makes connections for r2d2.
#[derive(Debug, Clone)]
pub struct Manager {
    target: Target,
    /// `NORMAL` or `FULL`.
    synchronous: &'static str,
}

impl Manager {
    fn establish(&self) -> Result<DbConn, StoreError> {
        match &self.target {
            Target::Postgres(url) => PgConnection::establish(url)
                .map(DbConn::Postgres)
                .map_err(|e| StoreError::Unavailable(e.to_string())),
            Target::Sqlite(path) => {
                let path_str = path.to_string_lossy();
                let mut c = SqliteConnection::establish(&path_str)
                    .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
                c.batch_execute(&format!(
                    "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; \
                     PRAGMA synchronous = {}; PRAGMA foreign_keys = ON;",
                    self.synchronous
                ))
                .map_err(|e| StoreError::Unavailable(format!("{}: {e}", path.display())))?;
                Ok(DbConn::Sqlite(c))
            }
        }
    }
}

/// r2d2 wants a std error.
#[derive(Debug)]
pub struct ManagerError(pub StoreError);

impl std::fmt::Display for ManagerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for ManagerError {}

impl r2d2::ManageConnection for Manager {
    type Connection = DbConn;
    type Error = ManagerError;

    fn connect(&self) -> Result<DbConn, ManagerError> {
        self.establish().map_err(ManagerError)
    }

    fn is_valid(&self, conn: &mut DbConn) -> Result<(), ManagerError> {
        with_conn!(conn, c => c.batch_execute("SELECT 1"))
            .map_err(|e| ManagerError(StoreError::Unavailable(e.to_string())))
    }

    fn has_broken(&self, _: &mut DbConn) -> bool {
        false
    }
}

pub type Pool = r2d2::Pool<Manager>;

/// The pools of one database.
#[derive(Clone)]
pub struct Db {
    /// Reads (and on PostgreSQL, writes).
    pub readers: Pool,
    /// Writes: on SQLite a pool of exactly one connection, so writes are serialised.
    pub writer: Pool,
    backend: &'static str,
    pool_size: u32,
}

impl Db {
    /// Opens the database; fails within a few seconds, with the reason, when it cannot.
    pub fn connect(url: &str, pool_size: u32, synchronous: &str) -> Result<Db, StoreError> {
        let target = Target::parse(url)?;
        let synchronous = match synchronous.to_ascii_lowercase().as_str() {
            "normal" => "NORMAL",
            "full" => "FULL",
            other => {
                return Err(StoreError::Config(format!(
                    "sqlite_synchronous must be normal or full, not {other:?}"
                )))
            }
        };
        if let Target::Sqlite(path) = &target {
            let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
            if let Some(dir) = dir {
                if !dir.is_dir() {
                    return Err(StoreError::Unavailable(format!(
                        "the directory of {} does not exist",
                        path.display()
                    )));
                }
            }
        }
        let manager = Manager {
            target: target.clone(),
            synchronous,
        };
        // One direct connection first: its error is the clearest one to report.
        manager.establish()?;
        let pool_size = pool_size.max(1);
        let build = |size: u32| {
            r2d2::Pool::builder()
                .max_size(size)
                .min_idle(Some(1))
                .connection_timeout(CONNECTION_TIMEOUT)
                .build(manager.clone())
                .map_err(StoreError::from)
        };
        let (readers, writer, backend) = match target {
            Target::Postgres(_) => {
                let p = build(pool_size)?;
                (p.clone(), p, "postgres")
            }
            Target::Sqlite(_) => (build(pool_size)?, build(1)?, "sqlite"),
        };
        Ok(Db {
            readers,
            writer,
            backend,
            pool_size,
        })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    pub fn pool_size(&self) -> u32 {
        self.pool_size
    }

    /// Applies the embedded migrations not yet applied; returns their versions.
    pub fn run_migrations(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.writer.get()?;
        let applied = match &mut *conn {
            DbConn::Postgres(c) => c
                .run_pending_migrations(POSTGRES_MIGRATIONS)
                .map(|v| v.iter().map(|m| m.to_string()).collect()),
            DbConn::Sqlite(c) => c
                .run_pending_migrations(SQLITE_MIGRATIONS)
                .map(|v| v.iter().map(|m| m.to_string()).collect()),
        };
        applied.map_err(|e| StoreError::Migration(e.to_string()))
    }

    /// A cheap query through the reader pool.
    pub fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.readers.get()?;
        with_conn!(&mut *conn, c => c.batch_execute("SELECT 1"))
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_backend() {
        assert_eq!(
            Target::parse("sqlite://botd.db").unwrap(),
            Target::Sqlite("botd.db".into())
        );
        assert_eq!(
            Target::parse("sqlite:///var/lib/botd/botd.db").unwrap(),
            Target::Sqlite("/var/lib/botd/botd.db".into())
        );
        assert_eq!(
            Target::parse("sqlite:x.db").unwrap(),
            Target::Sqlite("x.db".into())
        );
        assert!(matches!(
            Target::parse("postgresql://u@h/db").unwrap(),
            Target::Postgres(_)
        ));
        assert!(Target::parse("mysql://x").is_err());
        assert!(Target::parse("sqlite://").is_err());
    }
}
