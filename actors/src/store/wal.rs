//! SQLite's WAL checkpoints, kept out of the commits that callers wait for.
//!
//! Left to itself, SQLite checkpoints inside the commit that takes the WAL past 1,000
//! pages: it flushes the WAL, copies its pages into the database file and flushes that,
//! while every write queued behind it waits (the 100-250 ms spikes in
//! docs/benchmarks.md). A checkpoint on another connection blocks nobody, but under
//! writes that never pause it never catches up with the last frame, so the WAL never
//! starts over and grows without end (17 GB in five minutes at 1,000 messages/s).
//!
//! So the work is split. The [`Checkpointer`] thread runs PASSIVE checkpoints on a
//! connection of its own, which copy and flush nearly everything; once the WAL is past
//! [`RESTART_FRAMES`] and a pass finds it has caught up to within [`TAIL_FRAMES`], it
//! raises a flag. The writer, between two groups, sees the flag and runs one more
//! PASSIVE checkpoint itself: with no write in flight it copies the last few frames,
//! and its next write starts the WAL over. SQLite's own checkpoint stays as a safety
//! net at [`SAFETY_NET_FRAMES`], for a disk too slow for the thread to keep up.
//!
//! Durability is unchanged: a commit is in the WAL before it is answered, checkpointed
//! or not.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use diesel::sql_types::BigInt;
use diesel::sqlite::SqliteConnection;
use diesel::RunQueryDsl;

use super::StoreError;

/// The WAL size (4 KiB pages) past which the checkpointer prepares a restart: SQLite's
/// own default checkpoint point.
pub const RESTART_FRAMES: i64 = 1000;

/// A pass that found at most this many new frames has caught up: what is left for the
/// writer to copy is about as small.
pub const TAIL_FRAMES: i64 = 128;

/// SQLite checkpoints inside a commit only past this many pages (64 MiB), which the
/// checkpointer keeps the WAL well below.
pub const SAFETY_NET_FRAMES: u32 = 16384;

/// How often the checkpointer looks at the WAL.
const INTERVAL: Duration = Duration::from_millis(50);

/// Passes in a row at most, chasing the last frame, before the writer is asked anyway.
const MAX_PASSES: usize = 8;

/// Passes the writer runs at most for one request, one after each group, while readers
/// keep the WAL from starting over.
pub const WRITER_TRIES: u32 = 16;

/// The writer's side of one request: what its last pass saw.
#[derive(Debug, Default)]
pub struct WriterPasses {
    last_log: Option<i64>,
    tries: u32,
}

/// What the checkpointer and the writer share.
#[derive(Debug, Default)]
pub struct Shared {
    /// Raised by the checkpointer when the writer's pass would be short; lowered by the
    /// writer once it has run it.
    ready: AtomicBool,
    /// How many times the writer's pass has seen the WAL start over.
    restarts: AtomicU64,
}

impl Shared {
    /// Whether the checkpointer asks for the writer's pass.
    pub fn wanted(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Called by the writer between groups, with no write of its own in flight. Its
    /// pass copies the last frames; the writer's next write then starts the WAL over,
    /// unless a reader that began before the pass is still reading. So the request
    /// stands until the pass after a group finds the WAL restarted, or
    /// [`WRITER_TRIES`] passes have gone by.
    pub fn writer_pass(&self, conn: &mut SqliteConnection, state: &mut WriterPasses) {
        if !self.wanted() {
            return;
        }
        // A failure leaves the WAL as it was; the next group tries again.
        let Ok(pass) = passive(conn) else { return };
        let restarted = state.last_log.is_some_and(|last| pass.log < last);
        state.tries += 1;
        if restarted || state.tries >= WRITER_TRIES {
            if restarted {
                self.restarts.fetch_add(1, Ordering::Relaxed);
            }
            *state = WriterPasses::default();
            self.ready.store(false, Ordering::Release);
        } else {
            state.last_log = Some(pass.log);
        }
    }

    /// How many times the writer's pass has seen the WAL start over since the database
    /// was opened (SQLite's own safety-net checkpoints are not counted).
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }
}

/// The checkpointer thread; it stops when this is dropped (with the last `Db` clone).
#[derive(Debug)]
pub struct Checkpointer {
    pub shared: Arc<Shared>,
    _stop: mpsc::Sender<()>,
}

impl Checkpointer {
    pub fn start(mut conn: SqliteConnection) -> Result<Checkpointer, StoreError> {
        let shared = Arc::new(Shared::default());
        let (stop, stopped) = mpsc::channel::<()>();
        let thread_shared = shared.clone();
        std::thread::Builder::new()
            .name("botd-checkpoint".into())
            .spawn(move || {
                let mut last_log = 0;
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(INTERVAL) {
                    round(&mut conn, &thread_shared, &mut last_log);
                }
            })
            .map_err(|e| StoreError::Unavailable(format!("cannot start the checkpointer: {e}")))?;
        Ok(Checkpointer {
            shared,
            _stop: stop,
        })
    }
}

/// One round of the checkpointer: passes until the WAL is caught up, or a few of them.
fn round(conn: &mut SqliteConnection, shared: &Shared, last_log: &mut i64) {
    for _ in 0..MAX_PASSES {
        if shared.wanted() {
            return;
        }
        let Ok(pass) = passive(conn) else { return };
        let new_frames = if pass.log < *last_log {
            pass.log
        } else {
            pass.log - *last_log
        };
        *last_log = pass.log;
        // Small, or a reader still holds frames the pass could not copy: next round.
        if pass.log < RESTART_FRAMES || pass.busy != 0 || pass.checkpointed < pass.log {
            return;
        }
        if new_frames <= TAIL_FRAMES {
            shared.ready.store(true, Ordering::Release);
            return;
        }
    }
    // Writes outrun the passes: the writer's pass will be longer, but the WAL restarts.
    shared.ready.store(true, Ordering::Release);
}

/// What `PRAGMA wal_checkpoint` answers.
#[derive(diesel::QueryableByName)]
struct Pass {
    /// 1 when another checkpoint held the lock.
    #[diesel(sql_type = BigInt)]
    busy: i64,
    /// Frames in the WAL.
    #[diesel(sql_type = BigInt)]
    log: i64,
    /// Frames of those now in the database file.
    #[diesel(sql_type = BigInt)]
    checkpointed: i64,
}

fn passive(conn: &mut SqliteConnection) -> Result<Pass, diesel::result::Error> {
    diesel::sql_query("PRAGMA wal_checkpoint(PASSIVE)").get_result(conn)
}
