//! Storage: diesel on PostgreSQL or SQLite behind r2d2, chosen by `database.url`.
//!
//! - [`conn`]: the connection of either backend, the pool manager and [`Db`].
//! - [`schema`]: the tables, one declaration for both backends.
//! - [`queries`]: plain functions over `&mut DbConn`, testable without actors.
//! - [`actor`]: the `Store` actor on a `SyncArbiter` (diesel blocks) and its handle.
//! - [`wal`]: SQLite's WAL checkpoints, kept out of the commits callers wait for.
//! - [`testing`]: fresh databases for tests.

pub mod actor;
pub mod conn;
pub mod queries;
pub mod schema;
#[doc(hidden)]
pub mod testing;
pub mod wal;

pub use actor::{Store, StoreHandle};
pub use conn::{Db, DbConn};

/// Every way a store operation fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    #[error("already exists: {0}")]
    Conflict(String),
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("a query failed: {0}")]
    Query(String),
    #[error("migrations failed: {0}")]
    Migration(String),
    #[error("{0}")]
    Config(String),
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::NotFound => StoreError::NotFound,
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info) => {
                StoreError::Conflict(info.message().to_owned())
            }
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                StoreError::Unavailable(info.message().to_owned())
            }
            // SQLite's SQLITE_BUSY / SQLITE_LOCKED once busy_timeout has passed.
            Error::DatabaseError(_, info)
                if info.message().contains("database is locked")
                    || info.message().contains("database table is locked")
                    || info.message().contains("database is busy") =>
            {
                StoreError::Unavailable(info.message().to_owned())
            }
            Error::BrokenTransactionManager => {
                StoreError::Unavailable("the connection's transaction state is broken".into())
            }
            other => StoreError::Query(other.to_string()),
        }
    }
}

impl From<r2d2::Error> for StoreError {
    fn from(e: r2d2::Error) -> Self {
        StoreError::Unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error};

    #[test]
    fn diesel_errors_map_to_their_kind() {
        assert_eq!(StoreError::from(Error::NotFound), StoreError::NotFound);
        let db = |kind, msg: &str| Error::DatabaseError(kind, Box::new(msg.to_owned()));
        assert!(matches!(
            StoreError::from(db(DatabaseErrorKind::UniqueViolation, "dup")),
            StoreError::Conflict(m) if m == "dup"
        ));
        assert!(matches!(
            StoreError::from(db(DatabaseErrorKind::ClosedConnection, "gone")),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            StoreError::from(db(DatabaseErrorKind::Unknown, "database is locked")),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            StoreError::from(db(DatabaseErrorKind::Unknown, "syntax error")),
            StoreError::Query(_)
        ));
        assert!(matches!(
            StoreError::from(Error::BrokenTransactionManager),
            StoreError::Unavailable(_)
        ));
    }
}
