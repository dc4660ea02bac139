//! A bot's bounded priority queue and its running set, shared by the Registry (which
//! pushes), the Bot actor (which pulls) and the callers' tickets (which withdraw).
//!
//! It lives outside the Bot actor on purpose: when the actor crashes, what waits here is
//! kept for the restarted actor, and what runs here finishes on its own.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::model::{Answer, EngineError, Inbound};

/// How a job's caller is answered.
pub type Reply = oneshot::Sender<Result<Answer, EngineError>>;

/// One message waiting in, or taken from, a bot's queue.
pub struct Job {
    /// Unique within the queue; orders jobs of one priority.
    pub seq: u64,
    pub msg: Inbound,
    pub reply: Reply,
    /// When it was queued, for `queue_ms`.
    pub queued_at: Instant,
}

/// Whether the queue takes new messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Running, starting or in backoff: messages are queued.
    Open,
    /// Stopping, or gone: new messages get 503 `shutting_down`.
    ShuttingDown,
    /// Stopped or failed: 409 `bot_not_running`.
    NotRunning,
}

/// Why a running job was cancelled from the bot's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The stop deadline passed.
    ShuttingDown,
}

struct Running {
    conversation: String,
    cancel: CancellationToken,
}

struct Inner {
    admission: Admission,
    capacity: usize,
    concurrency: usize,
    /// Waiting jobs by (priority, seq): priority 0 first, FIFO within a priority.
    waiting: BTreeMap<(u8, u64), Job>,
    /// seq → priority, to find a waiting job by seq.
    index: HashMap<u64, u8>,
    running: HashMap<u64, Running>,
    busy_conversations: HashSet<String>,
    stop_reason: Option<StopReason>,
}

/// The shared queue of one bot. All methods take the lock briefly and never await.
pub struct BotQueue {
    inner: Mutex<Inner>,
    next_seq: AtomicU64,
    handled: AtomicU64,
}

/// A queue's live numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueLoad {
    pub waiting: usize,
    pub running: usize,
}

impl QueueLoad {
    pub fn total(&self) -> usize {
        self.waiting + self.running
    }
}

impl BotQueue {
    pub fn new(capacity: u32, concurrency: u32) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Inner {
                admission: Admission::NotRunning,
                capacity: capacity as usize,
                concurrency: concurrency as usize,
                waiting: BTreeMap::new(),
                index: HashMap::new(),
                running: HashMap::new(),
                busy_conversations: HashSet::new(),
                stop_reason: None,
            }),
            next_seq: AtomicU64::new(1),
            handled: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic never happens while the lock is held (no user code runs under it), so a
        // poisoned lock still holds consistent data.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_admission(&self, admission: Admission) {
        let mut inner = self.lock();
        if admission == Admission::Open {
            inner.stop_reason = None;
        }
        inner.admission = admission;
    }

    pub fn admission(&self) -> Admission {
        self.lock().admission.clone()
    }

    /// Applies a new spec's sizes (from the next start).
    pub fn resize(&self, capacity: u32, concurrency: u32) {
        let mut inner = self.lock();
        inner.capacity = capacity as usize;
        inner.concurrency = concurrency as usize;
    }

    /// Queues a message; on refusal hands the reply channel back untouched. `shed` is asked
    /// last, once the bot would take the message: a refusal it gives (the model's queue is
    /// full) refuses the message before it waits here for nothing.
    pub fn push(
        &self,
        msg: Inbound,
        reply: Reply,
        bot: &str,
        shed: impl FnOnce() -> Option<EngineError>,
    ) -> Result<u64, (EngineError, Reply)> {
        let mut inner = self.lock();
        match inner.admission {
            Admission::Open => {}
            Admission::ShuttingDown => {
                return Err((
                    EngineError::ShuttingDown(format!("bot '{bot}' is stopping")),
                    reply,
                ))
            }
            Admission::NotRunning => return Err((EngineError::BotNotRunning(bot.into()), reply)),
        }
        if inner.waiting.len() >= inner.capacity {
            let capacity = inner.capacity as u32;
            return Err((
                EngineError::MailboxFull {
                    bot: bot.into(),
                    capacity,
                    retry_after_secs: 1,
                },
                reply,
            ));
        }
        if let Some(e) = shed() {
            return Err((e, reply));
        }
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let priority = msg.priority;
        inner.index.insert(seq, priority);
        inner.waiting.insert(
            (priority, seq),
            Job {
                seq,
                msg,
                reply,
                queued_at: Instant::now(),
            },
        );
        Ok(seq)
    }

    /// Takes the most urgent waiting job whose conversation is not busy, if a slot is free.
    /// The job is then running until `finish`.
    pub fn take_next(&self) -> Option<(Job, CancellationToken)> {
        let mut inner = self.lock();
        if inner.running.len() >= inner.concurrency {
            return None;
        }
        let key = inner
            .waiting
            .iter()
            .find(|(_, job)| {
                !inner
                    .busy_conversations
                    .contains(job.msg.conversation.as_str())
            })
            .map(|(k, _)| *k)?;
        let job = inner.waiting.remove(&key)?;
        inner.index.remove(&job.seq);
        let conversation = job.msg.conversation.as_str().to_owned();
        inner.busy_conversations.insert(conversation.clone());
        let cancel = job.msg.cancel.child_token();
        inner.running.insert(
            job.seq,
            Running {
                conversation,
                cancel: cancel.clone(),
            },
        );
        Some((job, cancel))
    }

    /// A running job ended.
    pub fn finish(&self, seq: u64) {
        let mut inner = self.lock();
        if let Some(r) = inner.running.remove(&seq) {
            inner.busy_conversations.remove(&r.conversation);
        }
        self.handled.fetch_add(1, Ordering::Relaxed);
    }

    /// A caller gave up on a job: if it still waits, it leaves the queue and is returned;
    /// if it runs, its token is tripped and `None` returned (the job answers itself).
    pub fn withdraw(&self, seq: u64) -> Option<Job> {
        let mut inner = self.lock();
        if let Some(priority) = inner.index.remove(&seq) {
            return inner.waiting.remove(&(priority, seq));
        }
        if let Some(r) = inner.running.get(&seq) {
            r.cancel.cancel();
        }
        None
    }

    /// Takes every waiting job out (to answer them `shutting_down`).
    pub fn drain_waiting(&self) -> Vec<Job> {
        let mut inner = self.lock();
        inner.index.clear();
        std::mem::take(&mut inner.waiting).into_values().collect()
    }

    /// Cancels every running job (a stop's deadline passed).
    pub fn cancel_running(&self, reason: StopReason) {
        let mut inner = self.lock();
        inner.stop_reason = Some(reason);
        for r in inner.running.values() {
            r.cancel.cancel();
        }
    }

    /// Why running jobs were cancelled from the bot's side, if they were.
    pub fn stop_reason(&self) -> Option<StopReason> {
        self.lock().stop_reason
    }

    pub fn load(&self) -> QueueLoad {
        let inner = self.lock();
        QueueLoad {
            waiting: inner.waiting.len(),
            running: inner.running.len(),
        }
    }

    pub fn is_idle(&self) -> bool {
        let inner = self.lock();
        inner.waiting.is_empty() && inner.running.is_empty()
    }

    pub fn handled(&self) -> u64 {
        self.handled.load(Ordering::Relaxed)
    }

    /// Whether a turn of this conversation is waiting or running here: a pool sends the
    /// conversation's next turns to the same bot, so that they stay in order.
    pub fn has_conversation(&self, conversation: &str) -> bool {
        let inner = self.lock();
        inner.busy_conversations.contains(conversation)
            || inner
                .waiting
                .values()
                .any(|j| j.msg.conversation.as_str() == conversation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Target;
    use crate::names::{BotName, Conversation};
    use std::time::Duration;

    fn msg(conversation: &str, priority: u8) -> Inbound {
        Inbound {
            target: Target::Bot(BotName::parse("b").unwrap()),
            content: "x".into(),
            conversation: Conversation::parse(conversation).unwrap(),
            priority,
            deadline: Instant::now() + Duration::from_secs(60),
            cancel: CancellationToken::new(),
            tokens: None,
            received: Instant::now(),
        }
    }

    fn push(q: &BotQueue, conversation: &str, priority: u8) -> Result<u64, EngineError> {
        let (tx, _rx) = oneshot::channel();
        q.push(msg(conversation, priority), tx, "b", || None)
            .map_err(|(e, _)| e)
    }

    #[test]
    fn a_closed_queue_refuses_with_the_right_error() {
        let q = BotQueue::new(2, 1);
        assert_eq!(push(&q, "a", 2).unwrap_err().code(), "bot_not_running");
        q.set_admission(Admission::ShuttingDown);
        assert_eq!(push(&q, "a", 2).unwrap_err().code(), "shutting_down");
    }

    #[test]
    fn a_shed_refusal_comes_after_the_bots_own_and_queues_nothing() {
        let q = BotQueue::new(1, 1);
        let overloaded = || {
            Some(EngineError::LlmOverloaded {
                queued: 0,
                retry_after_secs: 1,
            })
        };
        let shed = |q: &BotQueue| {
            let (tx, _rx) = oneshot::channel();
            q.push(msg("a", 2), tx, "b", overloaded)
                .map_err(|(e, _)| e.code())
        };
        assert_eq!(shed(&q), Err("bot_not_running"));
        q.set_admission(Admission::Open);
        assert_eq!(shed(&q), Err("llm_overloaded"));
        assert_eq!(q.load().waiting, 0);
        push(&q, "a", 2).unwrap();
        assert_eq!(shed(&q), Err("mailbox_full"));
    }

    #[test]
    fn capacity_counts_waiting_messages_only() {
        let q = BotQueue::new(2, 1);
        q.set_admission(Admission::Open);
        push(&q, "a", 2).unwrap();
        push(&q, "b", 2).unwrap();
        assert_eq!(push(&q, "c", 2).unwrap_err().code(), "mailbox_full");
        let (job, _) = q.take_next().unwrap();
        // One is running now, so one slot is free again.
        push(&q, "c", 2).unwrap();
        assert_eq!(push(&q, "d", 2).unwrap_err().code(), "mailbox_full");
        q.finish(job.seq);
    }

    #[test]
    fn priority_zero_goes_first_and_fifo_within_a_priority() {
        let q = BotQueue::new(10, 10);
        q.set_admission(Admission::Open);
        let a = push(&q, "a", 2).unwrap();
        let b = push(&q, "b", 0).unwrap();
        let c = push(&q, "c", 2).unwrap();
        let d = push(&q, "d", 0).unwrap();
        let order: Vec<u64> = std::iter::from_fn(|| q.take_next().map(|(j, _)| j.seq)).collect();
        assert_eq!(order, vec![b, d, a, c]);
    }

    #[test]
    fn one_conversation_never_runs_twice_at_once() {
        let q = BotQueue::new(10, 4);
        q.set_admission(Admission::Open);
        let a1 = push(&q, "a", 2).unwrap();
        let a2 = push(&q, "a", 2).unwrap();
        let b1 = push(&q, "b", 2).unwrap();
        let (j, _) = q.take_next().unwrap();
        assert_eq!(j.seq, a1);
        let (j, _) = q.take_next().unwrap();
        assert_eq!(j.seq, b1, "a2 must wait for a1");
        assert!(q.take_next().is_none());
        q.finish(a1);
        let (j, _) = q.take_next().unwrap();
        assert_eq!(j.seq, a2);
    }

    #[test]
    fn concurrency_bounds_running_jobs() {
        let q = BotQueue::new(10, 2);
        q.set_admission(Admission::Open);
        for c in ["a", "b", "c"] {
            push(&q, c, 2).unwrap();
        }
        assert!(q.take_next().is_some());
        assert!(q.take_next().is_some());
        assert!(q.take_next().is_none());
        assert_eq!(
            q.load(),
            QueueLoad {
                waiting: 1,
                running: 2
            }
        );
    }

    #[test]
    fn withdrawing_a_waiting_job_frees_its_place_and_a_running_one_is_cancelled() {
        let q = BotQueue::new(1, 1);
        q.set_admission(Admission::Open);
        let a = push(&q, "a", 2).unwrap();
        let (_, token) = q.take_next().unwrap();
        let b = push(&q, "b", 2).unwrap();
        assert!(q.withdraw(b).is_some());
        assert_eq!(q.load().waiting, 0);
        assert!(q.withdraw(a).is_none());
        assert!(token.is_cancelled());
    }
}
