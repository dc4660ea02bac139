//! The Store actor: diesel blocks, so queries run on `SyncArbiter` threads, never on an
//! async executor. One generic message carries any query function.
//!
//! Writes that must run one at a time (all of SQLite's, and the ordered writes on either
//! backend) go to a [`GroupWriter`] instead: one thread that takes every write already
//! queued (up to [`MAX_BATCH`]) and commits them together in one transaction, each in a
//! savepoint of its own so that one write failing does not undo the others. A batch of
//! one runs exactly as a lone write always did. No caller is answered before the commit
//! that holds its rows has returned, so grouping changes what a commit costs, not what
//! an answer promises.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use actix::prelude::*;
use diesel::connection::{AnsiTransactionManager, TransactionManager};
use tokio::sync::oneshot;

use super::{Db, DbConn, StoreError};

type Job<R> = Box<dyn FnOnce(&mut DbConn) -> Result<R, StoreError> + Send>;

/// Writes at most in one group commit: enough to share a commit among every caller of a
/// busy moment, few enough that the first of them does not wait long for the last.
pub const MAX_BATCH: usize = 64;

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
        let result = run_caught(msg.0, &mut conn);
        drop(conn);
        crate::metrics::Metrics::get()
            .db_query_duration
            .observe(started.elapsed().as_secs_f64());
        result
    }
}

/// Runs a job. A panic would end the thread for good (actix does not replace a
/// `SyncArbiter` thread; on SQLite the writer is the only one), so it becomes this
/// caller's error. A connection left inside a transaction by the panic is then closed,
/// not reused (`has_broken`).
fn run_caught<R>(job: Job<R>, conn: &mut DbConn) -> Result<R, StoreError> {
    catch_unwind(AssertUnwindSafe(|| job(conn))).unwrap_or_else(|panic| {
        Err(StoreError::Query(format!(
            "a store job panicked: {}",
            panic_text(&*panic)
        )))
    })
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

/// A write waiting in the [`GroupWriter`]'s queue, its result type erased.
trait Pending: Send {
    /// Runs the job; returns whether it succeeded.
    fn run(&mut self, conn: &mut DbConn) -> bool;
    /// Answers the caller: its own result once `commit` is `Ok`, else an error.
    fn answer(self: Box<Self>, commit: Result<(), StoreError>);
}

struct Write<R> {
    job: Option<Job<R>>,
    result: Option<Result<R, StoreError>>,
    /// `None` for a detached write.
    reply: Option<oneshot::Sender<Result<R, StoreError>>>,
}

impl<R: Send + 'static> Pending for Write<R> {
    fn run(&mut self, conn: &mut DbConn) -> bool {
        let Some(job) = self.job.take() else {
            return false;
        };
        let result = run_caught(job, conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, commit: Result<(), StoreError>) {
        let result = match (commit, self.result) {
            (Ok(()), Some(r)) => r,
            // Its own error says more than the batch's.
            (Err(_), Some(Err(own))) => Err(own),
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(StoreError::Unavailable("the write did not run".into())),
        };
        // A detached write has no caller to tell.
        if let Some(tx) = self.reply {
            let _ = tx.send(result);
        }
    }
}

/// The transaction depth of the connection's transaction manager (0 = none).
fn depth(conn: &mut DbConn) -> Result<u32, StoreError> {
    crate::with_conn!(conn, c => AnsiTransactionManager::transaction_manager_status_mut(c)
        .transaction_depth()
        .map(|d| d.map_or(0, |d| d.get())))
    .map_err(StoreError::from)
}

fn begin(conn: &mut DbConn) -> Result<(), StoreError> {
    crate::with_conn!(conn, c => AnsiTransactionManager::begin_transaction(c))
        .map_err(StoreError::from)
}

fn commit(conn: &mut DbConn) -> Result<(), StoreError> {
    crate::with_conn!(conn, c => AnsiTransactionManager::commit_transaction(c))
        .map_err(StoreError::from)
}

fn rollback(conn: &mut DbConn) -> Result<(), StoreError> {
    crate::with_conn!(conn, c => AnsiTransactionManager::rollback_transaction(c))
        .map_err(StoreError::from)
}

/// Runs one write of a batch in a savepoint: released when the job succeeded, rolled
/// back when it failed. An error here means the batch's transaction cannot go on.
fn run_in_savepoint(conn: &mut DbConn, write: &mut dyn Pending) -> Result<(), StoreError> {
    begin(conn)?;
    let ok = write.run(conn);
    // A job that panicked inside a transaction of its own left it open: unwind to ours.
    while depth(conn)? > 2 {
        rollback(conn)?;
    }
    if depth(conn)? != 2 {
        return Err(StoreError::Unavailable(
            "a write left the group commit's transaction".into(),
        ));
    }
    if ok {
        commit(conn)
    } else {
        rollback(conn)
    }
}

/// The single thread that runs writes in order, grouping what is queued into one commit.
struct GroupWriter {
    pool: super::conn::Pool,
    queue: mpsc::Receiver<Box<dyn Pending>>,
    /// SQLite: the checkpointer's signal for the writer's short pass between groups.
    wal: Option<Arc<super::wal::Shared>>,
}

impl GroupWriter {
    /// Starts the thread; it ends when every sender is gone.
    fn start(
        pool: super::conn::Pool,
        wal: Option<Arc<super::wal::Shared>>,
        name: &str,
    ) -> mpsc::Sender<Box<dyn Pending>> {
        let (tx, queue) = mpsc::channel();
        let writer = GroupWriter { pool, queue, wal };
        let spawned = std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || writer.run());
        if let Err(e) = spawned {
            // Without the thread every write answers "unavailable" (its queue is closed).
            eprintln!("botd: cannot start the store's writer thread: {e}");
        }
        tx
    }

    fn run(self) {
        let mut passes = super::wal::WriterPasses::default();
        while let Ok(first) = self.queue.recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match self.queue.try_recv() {
                    Ok(w) => batch.push(w),
                    Err(_) => break,
                }
            }
            self.commit(batch);
            if let Some(wal) = &self.wal {
                self.checkpoint(wal, &mut passes);
            }
        }
    }

    /// The writer's part of a WAL checkpoint, when the checkpointer asks for it: between
    /// groups, so that no caller's commit carries it.
    fn checkpoint(&self, wal: &super::wal::Shared, passes: &mut super::wal::WriterPasses) {
        if !wal.wanted() {
            return;
        }
        if let Ok(mut conn) = self.pool.get() {
            if let DbConn::Sqlite(c) = &mut *conn {
                wal.writer_pass(c, passes);
            }
        }
    }

    fn commit(&self, mut batch: Vec<Box<dyn Pending>>) {
        let started = Instant::now();
        let metrics = crate::metrics::Metrics::get();
        metrics.db_write_batch.observe(batch.len() as f64);
        let mut conn = match self.pool.get() {
            Ok(c) => c,
            Err(e) => {
                let e = StoreError::from(e);
                for w in batch {
                    w.answer(Err(e.clone()));
                }
                return;
            }
        };
        let outcome = if batch.len() == 1 {
            // Alone: the job commits its own statements, as it always did.
            batch[0].run(&mut conn);
            Ok(())
        } else {
            self.commit_group(&mut conn, &mut batch)
        };
        drop(conn);
        let took = started.elapsed().as_secs_f64();
        for w in batch {
            metrics.db_query_duration.observe(took);
            w.answer(outcome.clone());
        }
    }

    /// BEGIN, each write in its savepoint, COMMIT. On any error of the transaction itself
    /// it is rolled back and every write of the batch fails with that error.
    fn commit_group(
        &self,
        conn: &mut DbConn,
        batch: &mut [Box<dyn Pending>],
    ) -> Result<(), StoreError> {
        let result = (|| {
            if depth(conn)? != 0 {
                return Err(StoreError::Unavailable(
                    "the writer's connection is inside a transaction".into(),
                ));
            }
            begin(conn)?;
            for w in batch.iter_mut() {
                run_in_savepoint(conn, w.as_mut())?;
            }
            commit(conn)
        })();
        if result.is_err() {
            // Best effort; a connection still inside a transaction is closed by the pool.
            while depth(conn).unwrap_or(0) > 0 {
                if rollback(conn).is_err() {
                    break;
                }
            }
        }
        result
    }
}

/// Where a write goes: a `SyncArbiter`, or group writers (one, or several taking turns).
#[derive(Clone)]
enum Writer {
    Arbiter(Addr<Store>),
    Group(Arc<Groups>),
}

/// The queues of one or more group writers; writes go to them in turn.
struct Groups {
    queues: Vec<mpsc::Sender<Box<dyn Pending>>>,
    next: std::sync::atomic::AtomicUsize,
}

impl Groups {
    fn start(db: &Db, writers: usize, name: &str) -> Writer {
        let queues = (0..writers.max(1))
            .map(|i| {
                let name = if writers > 1 {
                    format!("{name}-{i}")
                } else {
                    name.to_owned()
                };
                GroupWriter::start(db.writer.clone(), db.wal(), &name)
            })
            .collect();
        Writer::Group(Arc::new(Groups {
            queues,
            next: Default::default(),
        }))
    }

    fn queue(&self) -> &mpsc::Sender<Box<dyn Pending>> {
        let i = match self.queues.len() {
            1 => 0,
            n => self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % n,
        };
        &self.queues[i]
    }
}

impl Writer {
    fn run<R: Send + 'static>(
        &self,
        job: Job<R>,
    ) -> impl std::future::Future<Output = Result<R, StoreError>> {
        // Both queue the write now, before the future is first polled.
        let queued = match self {
            Writer::Arbiter(addr) => Queued::Arbiter(addr.send(Run(job))),
            Writer::Group(groups) => {
                let (reply, rx) = oneshot::channel();
                let write = Write {
                    job: Some(job),
                    result: None,
                    reply: Some(reply),
                };
                match groups.queue().send(Box::new(write)) {
                    Ok(()) => Queued::Group(Some(rx)),
                    Err(_) => Queued::Group(None),
                }
            }
        };
        async move {
            let gone = |e: &dyn std::fmt::Display| {
                StoreError::Unavailable(format!("the store is not answering: {e}"))
            };
            match queued {
                Queued::Arbiter(sent) => sent.await.map_err(|e| gone(&e))?,
                Queued::Group(Some(rx)) => rx.await.map_err(|e| gone(&e))?,
                Queued::Group(None) => Err(gone(&"its writer thread has stopped")),
            }
        }
    }

    fn detach(&self, job: Job<()>) {
        match self {
            Writer::Arbiter(addr) => addr.do_send(Run(job)),
            Writer::Group(groups) => {
                let _ = groups.queue().send(Box::new(Write {
                    job: Some(job),
                    result: None,
                    reply: None,
                }));
            }
        }
    }
}

enum Queued<R: Send + 'static> {
    Arbiter(actix::dev::Request<Store, Run<R>>),
    Group(Option<oneshot::Receiver<Result<R, StoreError>>>),
}

/// The addresses of the reader arbiters and the writers.
#[derive(Clone)]
pub struct StoreHandle {
    readers: Addr<Store>,
    writer: Writer,
    /// One thread, so that detached writes run in the order they were queued.
    ordered: Writer,
    backend: &'static str,
    db: Db,
}

/// Group writers for PostgreSQL's unordered writes (messages). Each holds a pooled
/// connection only while it commits.
const PG_WRITERS: usize = 4;

/// Reader threads at most on SQLite (its readers do not need many).
const SQLITE_READER_THREADS: u32 = 8;

impl StoreHandle {
    /// Starts the readers' arbiter and the writers: on SQLite one group writer with the
    /// single writer connection takes every write; on PostgreSQL [`PG_WRITERS`] group
    /// writers take the writes in turn (each commit waits for the server's WAL flush, so
    /// a group shares one flush among its writes) and the ordered ones go to a group
    /// writer of their own.
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
        let ordered = Groups::start(&db, 1, "botd-store-writer");
        let writer = if db.backend() == "sqlite" {
            ordered.clone()
        } else {
            Groups::start(&db, PG_WRITERS, "botd-store-pg-writer")
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
        Writer::Arbiter(self.readers.clone()).run(Box::new(f)).await
    }

    /// Runs a write; it is committed when this answers.
    pub async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DbConn) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.writer.run(Box::new(f)).await
    }

    /// Queues a write without waiting for it; detached writes run one at a time, in the
    /// order they were queued.
    pub fn write_detached(
        &self,
        f: impl FnOnce(&mut DbConn) -> Result<(), StoreError> + Send + 'static,
    ) {
        self.ordered.detach(Box::new(f));
    }

    /// Runs a write in order with the detached writes (lifecycle state and events): one
    /// writer decides the order in which they commit.
    pub async fn write_ordered<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut DbConn) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        self.ordered.run(Box::new(f)).await
    }

    /// Waits until every detached write queued before this call has run.
    pub async fn flush_detached(&self) -> Result<(), StoreError> {
        self.ordered.run(Box::new(|_| Ok(()))).await
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
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;

    use super::*;
    use crate::store::queries::{self, UserRow};
    use crate::store::testing::TestDb;

    fn user(name: &str) -> UserRow {
        UserRow {
            username: name.into(),
            password_hash: "h".into(),
            role: "viewer".into(),
            created_at: 1,
            updated_at: 1,
        }
    }

    /// Queues an ordered write now (before the returned future is polled).
    fn queue<R: Send + 'static>(
        store: &StoreHandle,
        f: impl FnOnce(&mut DbConn) -> Result<R, StoreError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<R, StoreError>> + 'static {
        store.ordered.run(Box::new(f))
    }

    #[actix::test]
    async fn queued_writes_commit_together_and_a_failing_one_is_undone_alone() {
        TestDb::each_async(|db| async move {
            let be = db.backend();
            let store = StoreHandle::start(db.open(2));
            // The first write holds the writer until the others are queued behind it.
            let (started_tx, started_rx) = std_mpsc::channel();
            let (gate_tx, gate_rx) = std_mpsc::channel::<()>();
            let first = queue(&store, move |c| {
                let _ = started_tx.send(());
                let _ = gate_rx.recv();
                queries::insert_user(c, &user("first"))?;
                depth(c)
            });
            let first = actix::spawn(first);
            tokio::task::spawn_blocking(move || started_rx.recv())
                .await
                .unwrap()
                .unwrap();
            let mut queued = Vec::new();
            for i in 0..10 {
                let name = format!("ok-{i}");
                queued.push(actix::spawn(queue(&store, move |c| {
                    queries::insert_user(c, &user(&name))?;
                    depth(c)
                })));
            }
            let failing = actix::spawn(queue(&store, |c| -> Result<u32, StoreError> {
                queries::insert_user(c, &user("failed"))?;
                Err(StoreError::Query("refused on purpose".into()))
            }));
            let panicking = actix::spawn(queue(&store, |c| -> Result<u32, StoreError> {
                crate::store::testing::panic_inside_a_transaction(c)?;
                Ok(0)
            }));
            let last = actix::spawn(queue(&store, |c| {
                queries::insert_user(c, &user("last"))?;
                depth(c)
            }));
            gate_tx.send(()).unwrap();
            // Alone, the first write ran outside any transaction of the writer's.
            assert_eq!(first.await.unwrap(), Ok(0), "{be}");
            // The others shared one transaction, each in its savepoint (depth 2).
            for q in queued {
                assert_eq!(q.await.unwrap(), Ok(2), "{be}");
            }
            let e = failing.await.unwrap();
            assert!(
                matches!(&e, Err(StoreError::Query(m)) if m.contains("on purpose")),
                "{be}: {e:?}"
            );
            let e = panicking.await.unwrap();
            assert!(
                matches!(&e, Err(StoreError::Query(m)) if m.contains("boom")),
                "{be}: {e:?}"
            );
            assert_eq!(last.await.unwrap(), Ok(2), "{be}");
            // Committed (a fresh connection sees them), without the failed writes' rows.
            let direct = Db::connect(db.url(), 1, "normal").unwrap();
            let mut c = direct.readers.get().unwrap();
            let mut names: Vec<String> = queries::list_users(&mut c)
                .unwrap()
                .into_iter()
                .map(|u| u.username)
                .collect();
            names.sort();
            let mut want: Vec<String> = (0..10).map(|i| format!("ok-{i}")).collect();
            want.extend(["first".to_owned(), "last".to_owned()]);
            want.sort();
            assert_eq!(names, want, "{be}");
            // The writer goes on with a clean connection.
            store
                .write_ordered(|c| queries::insert_user(c, &user("after")))
                .await
                .unwrap();
            assert!(
                queries::get_user(&mut c, "after").unwrap().is_some(),
                "{be}"
            );
        })
        .await;
    }
}
