//! Connections of either backend, the r2d2 manager that makes them, and [`Db`]: the pools.
//!
//! On SQLite every connection has the configured `synchronous`, a busy timeout and foreign
//! keys on; the file is switched to WAL once, when [`Db::connect`] opens it (the mode is
//! kept in the file). Writes go through one writer connection. On PostgreSQL one pool
//! serves reads and writes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::r2d2::R2D2Connection;
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::StoreError;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations/postgres");

/// How long a caller waits for a pooled connection, and start-up for the first one.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// libpq's own limit on establishing one connection (seconds), added to a PostgreSQL URL
/// that names none: without it a host that drops packets holds `connect` for minutes.
const PG_CONNECT_TIMEOUT_SECS: u64 = 5;

/// SQLite's wait for a lock held by another connection, in milliseconds.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5000;

/// The WAL file is cut back to this size when it starts over after growing past it.
const WAL_SIZE_LIMIT: u64 = 64 << 20;

/// A connection to either backend.
pub enum DbConn {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

impl DbConn {
    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            DbConn::Postgres(_) => "postgres",
            DbConn::Sqlite(_) => "sqlite",
        }
    }
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
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// The URL as libpq takes it, `connect_timeout` added when it named none.
    Postgres(String),
    /// The file, relative to the working directory unless absolute.
    Sqlite(PathBuf),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Postgres(url) => f.debug_tuple("Postgres").field(&redact(url)).finish(),
            Target::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
        }
    }
}

impl Target {
    /// `sqlite://PATH` or `sqlite:PATH` (relative to the working directory), or
    /// `postgres://…` / `postgresql://…`.
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        let url = url.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Target::Postgres(with_connect_timeout(url)));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| {
                let scheme = url.split_once(':').map_or(url, |(s, _)| s);
                StoreError::Config(format!(
                    "the database URL must start with sqlite://, postgres:// or \
                     postgresql://, not {scheme:?}"
                ))
            })?;
        if path.is_empty() {
            return Err(StoreError::Config("the SQLite path is empty".into()));
        }
        if path == ":memory:" || path.starts_with("file:") || path.contains('?') {
            return Err(StoreError::Config(format!(
                "the SQLite URL must name a file (sqlite://PATH), not {path:?}"
            )));
        }
        Ok(Target::Sqlite(PathBuf::from(path)))
    }
}

/// Adds libpq's `connect_timeout` to a PostgreSQL URL that does not set one.
fn with_connect_timeout(url: &str) -> String {
    let query = url.split_once('?').map(|(_, q)| q);
    let named = query.is_some_and(|q| q.split('&').any(|kv| kv.starts_with("connect_timeout=")));
    if named {
        return url.to_owned();
    }
    let sep = if query.is_some() { '&' } else { '?' };
    format!("{url}{sep}connect_timeout={PG_CONNECT_TIMEOUT_SECS}")
}

/// The URL with its password (if any) masked, for messages and logs.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
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
            Target::Postgres(_) => self.establish_pg().map(DbConn::Postgres),
            Target::Sqlite(_) => self.establish_sqlite().map(DbConn::Sqlite),
        }
    }

    fn establish_pg(&self) -> Result<PgConnection, StoreError> {
        let Target::Postgres(url) = &self.target else {
            return Err(StoreError::Config("not a PostgreSQL URL".into()));
        };
        PgConnection::establish(url).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL: {}",
                e.to_string().trim_end()
            ))
        })
    }

    fn establish_sqlite(&self) -> Result<SqliteConnection, StoreError> {
        let Target::Sqlite(path) = &self.target else {
            return Err(StoreError::Config("not a SQLite URL".into()));
        };
        let fail = |e: &dyn std::fmt::Display| {
            StoreError::Unavailable(format!("cannot open SQLite file {}: {e}", path.display()))
        };
        let mut c = SqliteConnection::establish(&path.to_string_lossy()).map_err(|e| fail(&e))?;
        // busy_timeout first: the others may wait for a lock.
        c.batch_execute(&format!(
            "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; \
             PRAGMA synchronous = {}; PRAGMA foreign_keys = ON; \
             PRAGMA wal_autocheckpoint = {}; PRAGMA journal_size_limit = {WAL_SIZE_LIMIT};",
            self.synchronous,
            super::wal::SAFETY_NET_FRAMES
        ))
        .map_err(|e| fail(&e))?;
        Ok(c)
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

    /// Checked on every checkout: a connection the server dropped is replaced.
    fn is_valid(&self, conn: &mut DbConn) -> Result<(), ManagerError> {
        with_conn!(conn, c => c.ping())
            .map_err(|e| ManagerError(StoreError::Unavailable(e.to_string())))
    }

    /// A connection returned during a panic, or with a transaction left open (a job that
    /// panicked inside `transaction`), is closed rather than reused: closing rolls back.
    fn has_broken(&self, conn: &mut DbConn) -> bool {
        std::thread::panicking() || with_conn!(conn, c => c.is_broken())
    }
}

pub type Pool = r2d2::Pool<Manager>;

/// The pools of one database.
#[derive(Clone)]
pub struct Db {
    /// Reads (and on PostgreSQL, writes).
    pub readers: Pool,
    /// Writes: on SQLite a pool of exactly one connection, so writes are serialised.
    /// On PostgreSQL the same pool as `readers`.
    pub writer: Pool,
    backend: &'static str,
    pool_size: u32,
    /// SQLite only: the thread that checkpoints the WAL (see [`super::wal`]).
    checkpointer: Option<Arc<super::wal::Checkpointer>>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db")
            .field("backend", &self.backend)
            .field("pool_size", &self.pool_size)
            .finish_non_exhaustive()
    }
}

impl Db {
    /// Opens the database: `url` as in [`Target::parse`], `pool_size` connections (at
    /// least 1), `sqlite_synchronous` `"normal"` or `"full"` (checked on both backends,
    /// used on SQLite). Fails within a few seconds, with the reason, when the database
    /// cannot be reached or the SQLite file's directory does not exist.
    pub fn connect(url: &str, pool_size: u32, sqlite_synchronous: &str) -> Result<Db, StoreError> {
        let target = Target::parse(url)?;
        let synchronous = match sqlite_synchronous.to_ascii_lowercase().as_str() {
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
                        "cannot open SQLite file {}: the directory {} does not exist",
                        path.display(),
                        dir.display()
                    )));
                }
            }
        }
        let manager = Manager {
            target: target.clone(),
            synchronous,
        };
        // One direct connection first: its error is the clearest one to report (r2d2's
        // would be a timeout). On SQLite it also switches the file to WAL, once, and then
        // serves the checkpointer.
        let first = match manager.establish()? {
            DbConn::Sqlite(mut c) => {
                enable_wal(&mut c)?;
                Some(c)
            }
            DbConn::Postgres(_) => None,
        };
        let pool_size = pool_size.max(1);
        // A PostgreSQL connection can die with its server (a restart, a network cut), so
        // each check-out pings it first. A SQLite connection is a file handle that cannot:
        // the ping would be pure cost on every query (about 2 % of the daemon's CPU).
        let test_on_check_out = matches!(target, Target::Postgres(_));
        let build = |size: u32| {
            r2d2::Pool::builder()
                .max_size(size)
                .min_idle(Some(1))
                .connection_timeout(CONNECTION_TIMEOUT)
                .test_on_check_out(test_on_check_out)
                .build(manager.clone())
                .map_err(StoreError::from)
        };
        let (readers, writer, backend, checkpointer) = match first {
            None => {
                let p = build(pool_size)?;
                (p.clone(), p, "postgres", None)
            }
            Some(c) => {
                let checkpointer = Arc::new(super::wal::Checkpointer::start(c)?);
                (build(pool_size)?, build(1)?, "sqlite", Some(checkpointer))
            }
        };
        Ok(Db {
            readers,
            writer,
            backend,
            pool_size,
            checkpointer,
        })
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// SQLite only: what the writer shares with the WAL checkpointer.
    pub fn wal(&self) -> Option<Arc<super::wal::Shared>> {
        self.checkpointer.as_ref().map(|c| c.shared.clone())
    }

    /// The configured pool size (the reader pool's on SQLite).
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

    /// A cheap query through the reader pool, for readiness.
    pub fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.readers.get()?;
        with_conn!(&mut *conn, c => c.ping()).map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

/// Switches a SQLite file to WAL (kept in the file) and checks that it took.
fn enable_wal(c: &mut SqliteConnection) -> Result<(), StoreError> {
    use diesel::sql_types::Text;
    use diesel::RunQueryDsl;

    #[derive(diesel::QueryableByName)]
    struct Mode {
        #[diesel(sql_type = Text)]
        journal_mode: String,
    }
    let mode = diesel::sql_query("PRAGMA journal_mode = WAL")
        .get_result::<Mode>(c)
        .map_err(|e| StoreError::Unavailable(format!("cannot switch SQLite to WAL: {e}")))?;
    if mode.journal_mode.eq_ignore_ascii_case("wal") {
        Ok(())
    } else {
        Err(StoreError::Unavailable(format!(
            "SQLite refused WAL mode (journal_mode is {})",
            mode.journal_mode
        )))
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
        assert!(matches!(
            Target::parse("mysql://x"),
            Err(StoreError::Config(m)) if m.contains("\"mysql\"")
        ));
        assert!(Target::parse("sqlite://").is_err());
        assert!(Target::parse("sqlite::memory:").is_err());
        assert!(Target::parse("botd.db").is_err());
    }

    #[test]
    fn postgres_urls_get_a_connect_timeout_unless_they_name_one() {
        assert_eq!(
            Target::parse("postgres://u@h/db").unwrap(),
            Target::Postgres("postgres://u@h/db?connect_timeout=5".into())
        );
        assert_eq!(
            Target::parse("postgres://u@h/db?sslmode=disable").unwrap(),
            Target::Postgres("postgres://u@h/db?sslmode=disable&connect_timeout=5".into())
        );
        assert_eq!(
            Target::parse("postgres://u@h/db?connect_timeout=1").unwrap(),
            Target::Postgres("postgres://u@h/db?connect_timeout=1".into())
        );
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db?x=1"),
            "postgres://u:***@h:5432/db?x=1"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://a/b.db"), "sqlite://a/b.db");
        let t = Target::parse("postgres://u:secret@h/db").unwrap();
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[test]
    fn a_bad_synchronous_is_a_config_error() {
        assert!(matches!(
            Db::connect("sqlite://x.db", 1, "off"),
            Err(StoreError::Config(_))
        ));
    }
}
