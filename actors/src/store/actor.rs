//! The Store actor: diesel blocks, so queries run on `SyncArbiter` threads, never on an
//! async executor. One generic message carries any query function.

use std::panic::{catch_unwind, AssertUnwindSafe};

use actix::prelude::*;

use super::{Db, DbConn, StoreError};

type Job<R> = Box<dyn FnOnce(&mut DbConn) -> Result<R, StoreError> + Send>;

/// Runs one query function on a pooled connection.
pub struct Run<R: Send + 'static>(Job<R>);

impl<R: Send + 'static> Message for Run<R> {
    type Result = Result<R, StoreError>;
}

/// One thread of a `SyncArbiter`, taking connections from one pool.
pub struct Store {
    pool: super::conn::Pool,
}

impl Actor for Store {
    type Context = SyncContext<Self>;
}

impl<R: Send + 'static> Handler<Run<R>> for Store {
    type Result = Result<R, StoreError>;

    fn handle(&mut self, msg: Run<R>, _: &mut Self::Context) -> Self::Result {
        let started = std::time::Instant::now();
        let mut conn = self.pool.get()?;
        // A panic would end this arbiter thread for good (actix does not replace it; on
        // SQLite it is the only writer), so it becomes this caller's error. A connection
        // left inside a transaction by the panic is then closed, not reused (`has_broken`).
        let job = AssertUnwindSafe(|| (msg.0)(&mut conn));
        let result = catch_unwind(job).unwrap_or_else(|panic| {
            Err(StoreError::Query(format!(
                "a store job panicked: {}",
                panic_text(&*panic)
            )))
        });
        drop(conn);
        crate::metrics::Metrics::get()
            .db_query_duration
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_owned()
    }
}

/// The addresses of the reader and writer arbiters.
#[derive(Clone)]
pub struct StoreHandle {
    readers: Addr<Store>,
    writer: Addr<Store>,
    /// One thread, so that detached writes run in the order they were queued.
    ordered: Addr<Store>,
    backend: &'static str,
    db: Db,
}

/// Reader threads at most on SQLite (its readers do not need many).
const SQLITE_READER_THREADS: u32 = 8;

impl StoreHandle {
    /// Starts the arbiters: on SQLite one writer thread with the single writer
    /// connection, on PostgreSQL writes share the readers' threads.
    pub fn start(db: Db) -> StoreHandle {
        let threads = match db.backend() {
            "sqlite" => db.pool_size().min(SQLITE_READER_THREADS),
            _ => db.pool_size(),
        }
        .max(1) as usize;
        let readers = {
            let pool = db.readers.clone();
            SyncArbiter::start(threads, move || Store { pool: pool.clone() })
        };
        let single = || {
            let pool = db.writer.clone();
            SyncArbiter::start(1, move || Store { pool: pool.clone() })
        };
        let (writer, ordered) = if db.backend() == "sqlite" {
            let w = single();
            (w.clone(), w)
        } else {
            (readers.clone(), single())
        };
        StoreHandle {
            readers,
            writer,
            ordered,
            backend: db.backend(),
            db,
        }
    }

    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// Publishes the reader pool's connection counts to the metrics.
    pub fn publish_pool_state(&self) {
        let state = self.db.readers.state();
        let g = &crate::metrics::Metrics::get().db_connections;
        g.with_label_values(&["idle"])
            .set(state.idle_connections as i64);
        g.with_label_values(&["in_use"])
            .set(state.connections.saturating_sub(state.idle_connections) as i64);
        g.with_label_values(&["max"])
            .set(self.db.readers.max_size() as i64);
    }

    /// Runs a read query.
    pub async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DbConn) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        Self::run(&self.readers, Box::new(f)).await
    }

    /// Runs a write; it is committed when this answers.
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DbConn) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        Self::run(&self.writer, Box::new(f)).await
    }

    /// Queues a write without waiting for it; detached writes run one at a time, in the
    /// order they were queued.
    pub fn write_detached(
        &self,
        f: impl FnOnce(&mut DbConn) -> Result<(), StoreError> + Send + 'static,
    ) {
        self.ordered.do_send(Run(Box::new(f)));
    }

    /// Runs a write in order with the detached writes (lifecycle state and events): one
    /// writer decides the order in which they commit.
    pub async fn write_ordered<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DbConn) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        Self::run(&self.ordered, Box::new(f)).await
    }

    /// Waits until every detached write queued before this call has run.
    pub async fn flush_detached(&self) -> Result<(), StoreError> {
        Self::run(&self.ordered, Box::new(|_| Ok(()))).await
    }

    /// A cheap query, for readiness.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.read(|c| {
            use diesel::connection::SimpleConnection;
            crate::with_conn!(c, c => c.batch_execute("SELECT 1"))
                .map_err(|e| StoreError::Unavailable(e.to_string()))
        })
        .await
    }

    fn run<R: Send + 'static>(
        addr: &Addr<Store>,
        job: Job<R>,
    ) -> impl std::future::Future<Output = Result<R, StoreError>> {
        // `send` queues the message now, before the future is first polled.
        let sent = addr.send(Run(job));
        async move {
            sent.await
                .map_err(|e| StoreError::Unavailable(format!("the store is not answering: {e}")))?
        }
    }
}
