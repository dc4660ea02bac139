//! The Bot actor: one per running bot. It pulls messages from the bot's shared queue,
//! at most `concurrency` at once and never two of one conversation, and runs each as a
//! task that stores the user message, builds the context, calls the model through the
//! LLM pool and stores the reply before answering.
//!
//! A panic in a message's task is caught: that caller gets 500 `internal`, and the actor
//! stops as crashed so the Registry's supervisor restarts it. The queue is not the actor's
//! to lose: waiting messages stay for the restarted actor, running ones finish.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use futures::FutureExt;
use slog::{debug, error, o, Logger};
use tokio_util::sync::CancellationToken;

use crate::cache::{self, context_key, ContextCache};
use crate::llm::client::{ChatMessage, ChatRequest};
use crate::llm::pool::{CallError, CallSpec, LlmService};
use crate::model::{now_ms, Answer, BotSpec, EngineError, Inbound, Target, Timings, Usage};
use crate::names::PoolName;
use crate::queue::{BotQueue, Job, StopReason};
use crate::store::queries::{self, MessageScope, NewMessage};
use crate::store::StoreHandle;

/// What every task of one bot run shares.
pub struct BotEnv {
    pub spec: BotSpec,
    /// The name as a shared string, for the LLM pool's round-robin.
    pub key: Arc<str>,
    pub queue: Arc<BotQueue>,
    pub store: StoreHandle,
    pub llm: LlmService,
    /// Conversation context, versioned by the conversation's newest message id.
    pub cache: ContextCache,
    pub log: Logger,
}

/// How a Bot actor ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// A stop the Registry asked for.
    Requested,
    /// Stopped on its own without a fault.
    Normal,
    /// A panic or an unexpected stop.
    Crash(String),
}

/// Tells the Registry a Bot actor has stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub struct BotExited {
    pub name: crate::names::BotName,
    /// Which run of the bot this was; stale notices are ignored.
    pub generation: u64,
    pub exit: Exit,
}

/// New work may be waiting, or a slot came free.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Poke;

/// Finish what is queued by `deadline`, then stop.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain {
    pub deadline: Instant,
}

/// A task of this bot panicked.
#[derive(Message)]
#[rtype(result = "()")]
struct TaskPanicked {
    error: String,
}

/// Stop now (fault injection: `stop` is a crash, `exit` a normal exit).
#[derive(Message)]
#[rtype(result = "()")]
#[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
struct Halt {
    exit: Exit,
}

pub struct Bot {
    env: Arc<BotEnv>,
    generation: u64,
    registry: Recipient<BotExited>,
    draining: bool,
    exit: Option<Exit>,
}

impl Bot {
    pub fn new(env: Arc<BotEnv>, generation: u64, registry: Recipient<BotExited>) -> Self {
        Self {
            env,
            generation,
            registry,
            draining: false,
            exit: None,
        }
    }

    /// Starts every job a free slot allows; stops the actor when draining is done.
    fn schedule(&mut self, ctx: &mut Context<Self>) {
        if self.exit.is_some() {
            return;
        }
        while let Some((job, token)) = self.env.queue.take_next() {
            let env = self.env.clone();
            let me = ctx.address();
            actix::spawn(run_task(env, job, token, me));
        }
        if self.draining && self.env.queue.is_idle() {
            self.exit = Some(Exit::Requested);
            ctx.stop();
        }
    }
}

impl Actor for Bot {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Messages queued while the bot was starting or in backoff.
        self.schedule(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // An actor that stops without saying why stopped unexpectedly.
        let exit = self
            .exit
            .take()
            .unwrap_or_else(|| Exit::Crash("the bot's actor stopped unexpectedly".into()));
        self.registry.do_send(BotExited {
            name: self.env.spec.name.clone(),
            generation: self.generation,
            exit,
        });
    }
}

impl Handler<Poke> for Bot {
    type Result = ();

    fn handle(&mut self, _: Poke, ctx: &mut Self::Context) {
        self.schedule(ctx);
    }
}

impl Handler<Drain> for Bot {
    type Result = ();

    fn handle(&mut self, msg: Drain, ctx: &mut Self::Context) {
        self.draining = true;
        let wait = msg.deadline.saturating_duration_since(Instant::now());
        ctx.run_later(wait, |act, ctx| {
            // The deadline passed: whatever still waits or runs is answered 503.
            for job in act.env.queue.drain_waiting() {
                answer_unprocessed(
                    &act.env,
                    job,
                    EngineError::ShuttingDown(format!(
                        "bot '{}' stopped before handling the message",
                        act.env.spec.name
                    )),
                );
            }
            act.env.queue.cancel_running(StopReason::ShuttingDown);
            act.schedule(ctx);
        });
        self.schedule(ctx);
    }
}

impl Handler<TaskPanicked> for Bot {
    type Result = ();

    fn handle(&mut self, msg: TaskPanicked, ctx: &mut Self::Context) {
        if self.exit.is_none() {
            self.exit = Some(Exit::Crash(msg.error));
            ctx.stop();
        }
    }
}

impl Handler<Halt> for Bot {
    type Result = ();

    fn handle(&mut self, msg: Halt, ctx: &mut Self::Context) {
        if self.exit.is_none() {
            self.exit = Some(msg.exit);
            ctx.stop();
        }
    }
}

/// Runs one job, catching a panic, and frees its slot.
async fn run_task(env: Arc<BotEnv>, job: Job, token: CancellationToken, me: Addr<Bot>) {
    let Job {
        seq,
        msg,
        reply,
        queued_at,
    } = job;
    let user_id = Arc::new(AtomicI64::new(0));
    let outcome = AssertUnwindSafe(process(&env, msg, queued_at, &token, &user_id, &me))
        .catch_unwind()
        .await;
    let result = match outcome {
        Ok(result) => result,
        Err(panic) => {
            let what = panic_message(&panic);
            error!(env.log, "A bot crashed while handling a message."; "error" => &what);
            let id = user_id.load(Ordering::Acquire);
            if id != 0 {
                env.store.write_detached(move |c| {
                    queries::set_message_status(c, id, "failed", Some("internal"))
                });
            }
            me.do_send(TaskPanicked {
                error: format!("panic: {what}"),
            });
            Err(EngineError::Internal(
                "the bot crashed while handling the message".into(),
            ))
        }
    };
    let metrics = crate::metrics::Metrics::get();
    match &result {
        Ok(a) => {
            debug!(env.log, "A message was answered.";
                "conversation" => a.conversation.as_str(),
                "duration_ms" => a.timings.total_ms,
                "model" => a.model.as_str());
            metrics.message("complete");
            metrics.message_duration.observe(a.total_us as f64 / 1e6);
            metrics
                .overhead
                .observe(a.total_us.saturating_sub(a.llm_us) as f64 / 1e6);
        }
        Err(e) => metrics.message(e.code()),
    }
    env.queue.finish(seq);
    let _ = reply.send(result);
    me.do_send(Poke);
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_owned()
    }
}

/// Fault injection (test builds only): the strings ARCHITECTURE.md names.
#[cfg(feature = "fault-injection")]
fn inject_fault(content: &str, me: &Addr<Bot>) -> Option<EngineError> {
    match content {
        "__botd_fault:panic__" => panic!("fault injection: panic"),
        "__botd_fault:stop__" => {
            me.do_send(Halt {
                exit: Exit::Crash("fault injection: the bot's actor stopped".into()),
            });
            Some(EngineError::Internal(
                "the bot stopped while handling the message".into(),
            ))
        }
        "__botd_fault:exit__" => {
            me.do_send(Halt { exit: Exit::Normal });
            Some(EngineError::ShuttingDown(
                "the bot exited before handling the message".into(),
            ))
        }
        _ => None,
    }
}

#[cfg(not(feature = "fault-injection"))]
fn inject_fault(_: &str, _: &Addr<Bot>) -> Option<EngineError> {
    None
}

fn scope_of(env: &BotEnv, target: &Target) -> (Option<PoolName>, MessageScope) {
    match target {
        Target::Pool(pool) => (
            Some(pool.clone()),
            MessageScope::Pool(pool.clone().into_string()),
        ),
        Target::Bot(_) => (None, MessageScope::Bot(env.spec.name.as_str().to_owned())),
    }
}

/// Answers a message that never reached the model, and stores it with the status its
/// error gives (history shows it, `cancelled` or `failed`).
pub(crate) fn answer_unprocessed(env: &BotEnv, job: Job, error: EngineError) {
    answer_unprocessed_in(&env.store, env.spec.name.as_str(), job, error)
}

pub(crate) fn answer_unprocessed_in(store: &StoreHandle, bot: &str, job: Job, error: EngineError) {
    let pool = match &job.msg.target {
        Target::Pool(p) => Some(p.clone()),
        Target::Bot(_) => None,
    };
    let row = NewMessage {
        bot: bot.to_owned(),
        pool: pool.map(PoolName::into_string),
        conversation: job.msg.conversation.as_str().to_owned(),
        role: "user".into(),
        content: job.msg.content,
        status: error.message_status().into(),
        error: Some(error.code().into()),
        created_at: now_ms(),
        ..NewMessage::default()
    };
    store.write_detached(move |c| queries::insert_message(c, &row).map(|_| ()));
    let _ = job.reply.send(Err(error));
}

/// Stores the message, calls the model with its context, stores the reply.
async fn process(
    env: &BotEnv,
    msg: Inbound,
    queued_at: Instant,
    token: &CancellationToken,
    user_id: &AtomicI64,
    me: &Addr<Bot>,
) -> Result<Answer, EngineError> {
    let queue_time = queued_at.elapsed();
    let (pool, scope) = scope_of(env, &msg.target);
    let cause = |env: &BotEnv| {
        if env.queue.stop_reason() == Some(StopReason::ShuttingDown) {
            EngineError::ShuttingDown(format!("bot '{}' stopped", env.spec.name))
        } else if Instant::now() >= msg.deadline {
            EngineError::DeadlineExceeded
        } else {
            EngineError::Cancelled
        }
    };
    let early = if token.is_cancelled() {
        Some(cause(env))
    } else if Instant::now() >= msg.deadline {
        Some(EngineError::DeadlineExceeded)
    } else {
        None
    };
    // A place in the model's queue first: a full queue refuses the message before it is
    // stored, like a full mailbox, so shedding load costs no database work. `Err` is why
    // a message ends before the model (stored with that status).
    let admitted = match early {
        None => Ok(env.llm.admit(&env.key).await?),
        Some(e) => Err(e),
    };
    // The context's version is the conversation's newest message before this one. It is
    // read in the same store job that stores this message, just before the insert, so
    // that the cache can be checked against it; one trip to the store, not two.
    let n = env.spec.context_messages;
    let conversation = msg.conversation.as_str().to_owned();
    let wants_version = n > 0 && admitted.is_ok();
    let early = admitted.as_ref().err();
    let status = early.map_or("pending", |e| e.message_status());
    let row = NewMessage {
        bot: env.spec.name.as_str().to_owned(),
        pool: pool.clone().map(PoolName::into_string),
        conversation: msg.conversation.as_str().to_owned(),
        role: "user".into(),
        content: msg.content.clone(),
        status: status.into(),
        error: early.map(|e| e.code().to_owned()),
        created_at: now_ms(),
        ..NewMessage::default()
    };
    let (version, id) = {
        let (scope, conversation) = (scope.clone(), conversation.clone());
        env.store
            .write(move |c| {
                let version = if wants_version {
                    queries::last_message_id(c, &scope, &conversation)?
                } else {
                    None
                };
                Ok((version, queries::insert_message(c, &row)?))
            })
            .await?
    };
    let ticket = admitted?;
    user_id.store(id, Ordering::Release);
    if let Some(e) = inject_fault(&msg.content, me) {
        let (status, code) = (e.message_status(), e.code());
        env.store
            .write(move |c| queries::set_message_status(c, id, status, Some(code)))
            .await?;
        return Err(e);
    }

    let key = context_key(&scope, &conversation);
    let history = match version {
        Some(version) => context(env, &scope, &key, &conversation, version, n).await?,
        None => Vec::new(),
    };
    let mut messages = Vec::with_capacity(history.len() + 2);
    if let Some(prompt) = &env.spec.system_prompt {
        messages.push(ChatMessage {
            role: "system".into(),
            content: prompt.clone(),
        });
    }
    messages.extend(history.iter().cloned());
    messages.push(ChatMessage {
        role: "user".into(),
        content: msg.content.clone(),
    });
    let request = ChatRequest {
        model: env.spec.model.as_str().to_owned(),
        messages,
        options: env.spec.options.clone(),
        keep_alive: None,
    };
    let call = env
        .llm
        .call(CallSpec {
            ticket,
            request: &request,
            tokens: msg.tokens.as_ref(),
            cancel: token,
            deadline: msg.deadline,
        })
        .await;
    let outcome = match call {
        Ok(outcome) => outcome,
        Err(e) => {
            let e = match e {
                CallError::Engine(e) => e,
                CallError::Cancelled => cause(env),
                CallError::Deadline => EngineError::DeadlineExceeded,
            };
            debug!(env.log, "A message failed."; "error" => e.code(), "conversation" => msg.conversation.as_str());
            let (status, code) = (e.message_status(), e.code());
            env.store
                .write(move |c| queries::set_message_status(c, id, status, Some(code)))
                .await?;
            return Err(e);
        }
    };
    let usage = Usage {
        prompt_tokens: outcome.reply.prompt_tokens.unwrap_or(0),
        completion_tokens: outcome.reply.completion_tokens.unwrap_or(0),
    };
    let total = msg.received.elapsed();
    let timings = Timings {
        queue_ms: (queue_time + outcome.queue_time).as_millis() as u64,
        llm_ms: outcome.llm_time.as_millis() as u64,
        total_ms: total.as_millis() as u64,
    };
    let created_at = now_ms();
    let reply_row = NewMessage {
        bot: env.spec.name.as_str().to_owned(),
        pool: pool.map(PoolName::into_string),
        conversation: msg.conversation.as_str().to_owned(),
        role: "assistant".into(),
        content: outcome.reply.content.clone(),
        status: "complete".into(),
        reply_to: Some(id),
        model: Some(request.model.clone()),
        prompt_tokens: Some(usage.prompt_tokens as i64),
        completion_tokens: Some(usage.completion_tokens as i64),
        queue_ms: Some(timings.queue_ms as i64),
        llm_ms: Some(timings.llm_ms as i64),
        total_ms: Some(timings.total_ms as i64),
        error: None,
        created_at,
    };
    let reply_id = env
        .store
        .write(move |c| queries::complete_exchange(c, id, &reply_row))
        .await?;
    if n > 0 {
        // The next turn's context: this one's plus this exchange, as of its reply.
        let next = cache::Context {
            version: reply_id,
            limit: n,
            turns: history,
        }
        .advanced(
            reply_id,
            ChatMessage {
                role: "user".into(),
                content: msg.content,
            },
            ChatMessage {
                role: "assistant".into(),
                content: outcome.reply.content.clone(),
            },
        );
        env.cache.put(&key, next).await;
    }
    let total = msg.received.elapsed();
    Ok(Answer {
        id,
        bot: env.spec.name.clone(),
        conversation: msg.conversation,
        reply_id,
        reply: outcome.reply.content,
        reply_created_at: created_at,
        model: request.model,
        usage,
        timings,
        llm_us: outcome.llm_time.as_micros() as u64,
        total_us: total.as_micros() as u64,
    })
}

/// The last `n` complete turns of a conversation as of `version`: from the cache when it
/// has them for that version, else from the database.
async fn context(
    env: &BotEnv,
    scope: &MessageScope,
    key: &str,
    conversation: &str,
    version: i64,
    n: u32,
) -> Result<Vec<ChatMessage>, EngineError> {
    if let Some(turns) = env
        .cache
        .get(key)
        .await
        .and_then(|c| c.turns_for(version, n))
    {
        cache::count("hit");
        return Ok(turns);
    }
    cache::count("miss");
    let (scope, conversation) = (scope.clone(), conversation.to_owned());
    let rows = env
        .store
        .read(move |c| queries::context(c, &scope, &conversation, n as i64))
        .await?;
    Ok(rows
        .into_iter()
        .map(|m| ChatMessage {
            role: m.role,
            content: m.content,
        })
        .collect())
}

/// A child logger for a bot.
pub fn bot_logger(log: &Logger, spec: &BotSpec) -> Logger {
    log.new(o!("bot" => spec.name.as_str().to_owned()))
}
