//! The Registry: the table of bots, the only writer of their lifecycle state, the router
//! of messages and the supervisor that applies restart policies.
//!
//! Every transition is recorded as an event. Persistent changes (a created bot, a desired
//! state, a failure) are committed before the caller is answered; the handlers that do so
//! run atomically, so no other operation interleaves with a half-done one.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rand::Rng;
use slog::{info, o, warn, Logger};
use tokio::sync::oneshot;

use crate::bot::{answer_unprocessed_in, Bot, BotEnv, BotExited, Drain, Exit, Poke};
use crate::cache::ContextCache;
use crate::llm::pool::LlmService;
use crate::model::{
    now_ms, Answer, BotInfo, BotPatch, BotSpec, BotState, DesiredState, EngineError, Inbound,
    PoolInfo, RestartPolicy, Target,
};
use crate::names::{BotName, ModelName, PoolName};
use crate::queue::{Admission, BotQueue};
use crate::settings::{PoolSettings, SupervisorSettings};
use crate::store::queries::{self, BotRow, NewEvent};
use crate::store::StoreHandle;

mod pools;

use pools::PoolEntry;
pub use pools::{DeletePool, GetPool, ListPools, PutPool};

/// Who made a change: a token subject, `supervisor` or `autoscaler`.
pub type Subject = String;

const SUPERVISOR: &str = "supervisor";

type Waiter = oneshot::Sender<Result<BotInfo, EngineError>>;

struct Entry {
    spec: BotSpec,
    managed: bool,
    desired: DesiredState,
    state: BotState,
    restarts: u32,
    last_error: Option<String>,
    started_at: Option<i64>,
    created_at: i64,
    updated_at: i64,
    queue: Arc<BotQueue>,
    addr: Option<Addr<Bot>>,
    /// Which run of the bot is current; bumped on every start, so stale exits and
    /// cancelled backoff timers are told apart.
    generation: u64,
    /// When the supervisor restarted the bot, within the restart window.
    restart_times: VecDeque<Instant>,
    /// Consecutive restarts since the bot was last healthy: the backoff exponent.
    backoff_step: u32,
    running_since: Option<Instant>,
    /// Callers waiting for the bot to be stopped.
    stop_waiters: Vec<Waiter>,
    /// Callers waiting for the bot to be running (restart from stopping, backoff).
    start_waiters: Vec<Waiter>,
    /// After a stop completes, start again (a restart of a running bot).
    start_after_stop: Option<Subject>,
    /// Who asked for the stop under way, for its event.
    stop_subject: Option<Subject>,
    arbiter: usize,
    /// Since when it had nothing queued or running, as the autoscaler last saw it.
    idle_since: Instant,
    /// `messages_handled` at the autoscaler's last check.
    last_handled: u64,
    /// Being scaled down: deleted once it has stopped.
    retiring: bool,
}

impl Entry {
    /// A bot that is not running (yet): its queue refuses messages until it starts.
    #[allow(clippy::too_many_arguments)]
    fn new(
        spec: BotSpec,
        managed: bool,
        desired: DesiredState,
        state: BotState,
        last_error: Option<String>,
        created_at: i64,
        updated_at: i64,
        arbiter: usize,
    ) -> Self {
        Self {
            queue: BotQueue::new(spec.mailbox_capacity, spec.concurrency),
            spec,
            managed,
            desired,
            state,
            restarts: 0,
            last_error,
            started_at: None,
            created_at,
            updated_at,
            addr: None,
            generation: 0,
            restart_times: VecDeque::new(),
            backoff_step: 0,
            running_since: None,
            stop_waiters: Vec::new(),
            start_waiters: Vec::new(),
            start_after_stop: None,
            stop_subject: None,
            arbiter,
            idle_since: Instant::now(),
            last_handled: 0,
            retiring: false,
        }
    }

    fn info(&self) -> BotInfo {
        let load = self.queue.load();
        BotInfo {
            spec: self.spec.clone(),
            managed: self.managed,
            desired_state: self.desired,
            state: self.state,
            restarts: self.restarts,
            last_error: self.last_error.clone(),
            mailbox_depth: load.waiting,
            in_flight: load.running,
            messages_handled: self.queue.handled(),
            started_at: self.started_at,
            created_at: self.created_at,
            updated_at: self.updated_at,
        }
    }
}

/// The Registry actor.
pub struct Registry {
    bots: BTreeMap<BotName, Entry>,
    /// The pools created with `PUT`.
    pools: BTreeMap<PoolName, PoolEntry>,
    pool_settings: PoolSettings,
    store: StoreHandle,
    llm: LlmService,
    settings: SupervisorSettings,
    arbiters: Vec<ArbiterHandle>,
    next_arbiter: usize,
    log: Logger,
    /// Set once the daemon is shutting down: nothing restarts any more.
    shutting_down: bool,
    /// The conversation-context cache every bot shares.
    cache: ContextCache,
}

fn spec_from_row(row: &BotRow) -> Result<BotSpec, EngineError> {
    let bad =
        |what: &str| EngineError::Internal(format!("bot '{}' in the database: {what}", row.name));
    Ok(BotSpec {
        name: BotName::parse(&row.name).map_err(|_| bad("bad name"))?,
        model: ModelName::parse(&row.model).map_err(|_| bad("bad model"))?,
        system_prompt: row.system_prompt.clone(),
        pool: match &row.pool {
            Some(p) => Some(PoolName::parse(p).map_err(|_| bad("bad pool"))?),
            None => None,
        },
        restart: RestartPolicy::parse(&row.restart).ok_or_else(|| bad("bad restart policy"))?,
        concurrency: row.concurrency as u32,
        mailbox_capacity: row.mailbox_capacity as u32,
        context_messages: row.context_messages as u32,
        options: serde_json::from_str(&row.options).map_err(|_| bad("bad options"))?,
    })
}

fn row_from_spec(spec: &BotSpec, managed: bool, desired: DesiredState, now: i64) -> BotRow {
    BotRow {
        name: spec.name.as_str().to_owned(),
        model: spec.model.as_str().to_owned(),
        system_prompt: spec.system_prompt.clone(),
        pool: spec.pool.as_ref().map(|p| p.as_str().to_owned()),
        managed: managed as i32,
        restart: spec.restart.as_str().to_owned(),
        concurrency: spec.concurrency as i32,
        mailbox_capacity: spec.mailbox_capacity as i32,
        context_messages: spec.context_messages as i32,
        options: serde_json::Value::Object(spec.options.clone()).to_string(),
        desired_state: desired.as_str().to_owned(),
        failed_reason: None,
        created_at: now,
        updated_at: now,
    }
}

/// The backoff before restart number `step` (0-based): initial × 1.5^step, ±20 %,
/// capped at the maximum.
pub fn backoff_delay(settings: &SupervisorSettings, step: u32, jitter: f64) -> Duration {
    let base = settings.backoff_initial_ms as f64 * 1.5f64.powi(step.min(64) as i32);
    let jittered = base * (1.0 + jitter.clamp(-0.2, 0.2));
    Duration::from_millis(jittered.min(settings.backoff_max_ms as f64).max(0.0) as u64)
}

impl Registry {
    pub fn new(
        store: StoreHandle,
        llm: LlmService,
        settings: SupervisorSettings,
        arbiters: Vec<ArbiterHandle>,
        log: Logger,
    ) -> Self {
        Self {
            bots: BTreeMap::new(),
            pools: BTreeMap::new(),
            pool_settings: PoolSettings::default(),
            store,
            llm,
            settings,
            arbiters,
            next_arbiter: 0,
            log,
            shutting_down: false,
            cache: ContextCache::in_process(),
        }
    }

    /// How often pools are checked and how often they may scale up.
    pub fn with_pool_settings(mut self, settings: PoolSettings) -> Self {
        self.pool_settings = settings;
        self
    }
    /// Uses `cache` for conversation context (the default is in-process).
    pub fn with_cache(mut self, cache: ContextCache) -> Self {
        self.cache = cache;
        self
    }

    fn event(&self, bot: &BotName, kind: &str, subject: &str, detail: serde_json::Value) {
        let pool = self
            .bots
            .get(bot)
            .and_then(|e| e.spec.pool.as_ref().map(|p| p.as_str().to_owned()));
        let ev = NewEvent {
            ts: now_ms(),
            bot: Some(bot.as_str().to_owned()),
            pool,
            kind: kind.to_owned(),
            subject: subject.to_owned(),
            detail: detail.to_string(),
        };
        self.store
            .write_detached(move |c| queries::insert_event(c, &ev).map(|_| ()));
    }

    /// Starts a new run of the bot's actor; the entry becomes `running`.
    fn spawn_bot(&mut self, name: &BotName, ctx: &mut Context<Self>) {
        let me = ctx.address().recipient();
        let Some(entry) = self.bots.get_mut(name) else {
            return;
        };
        entry.generation += 1;
        entry
            .queue
            .resize(entry.spec.mailbox_capacity, entry.spec.concurrency);
        entry.queue.set_admission(Admission::Open);
        let env = Arc::new(BotEnv {
            key: Arc::from(entry.spec.name.as_str()),
            spec: entry.spec.clone(),
            queue: entry.queue.clone(),
            store: self.store.clone(),
            llm: self.llm.clone(),
            cache: self.cache.clone(),
            log: self
                .log
                .new(o!("bot" => entry.spec.name.as_str().to_owned())),
        });
        let generation = entry.generation;
        let arbiter = &self.arbiters[entry.arbiter % self.arbiters.len()];
        entry.addr = Some(Bot::start_in_arbiter(arbiter, move |_| {
            Bot::new(env, generation, me)
        }));
        entry.state = BotState::Running;
        entry.running_since = Some(Instant::now());
        entry.started_at = Some(now_ms());
    }

    /// Answers every waiting message of a bot that will not run: 503 `shutting_down`.
    fn drain_queue(&self, name: &BotName, why: &str) {
        if let Some(entry) = self.bots.get(name) {
            for job in entry.queue.drain_waiting() {
                answer_unprocessed_in(
                    &self.store,
                    name.as_str(),
                    job,
                    EngineError::ShuttingDown(format!("bot '{name}' {why}")),
                );
            }
        }
    }

    fn answer_waiters(&mut self, name: &BotName) {
        if let Some(entry) = self.bots.get_mut(name) {
            let info = entry.info();
            let result = match entry.state {
                BotState::Running => Ok(info.clone()),
                BotState::Failed | BotState::Stopped => Ok(info.clone()),
                _ => return,
            };
            if entry.state == BotState::Stopped || entry.state == BotState::Failed {
                for w in entry.stop_waiters.drain(..) {
                    let _ = w.send(result.clone());
                }
                let crashed = Err(EngineError::Internal(format!(
                    "bot '{name}' crashed while starting"
                )));
                for w in entry.start_waiters.drain(..) {
                    let _ = w.send(crashed.clone());
                }
            } else {
                for w in entry.start_waiters.drain(..) {
                    let _ = w.send(result.clone());
                }
            }
        }
    }

    fn pick_arbiter(&mut self) -> usize {
        self.next_arbiter = self.next_arbiter.wrapping_add(1);
        self.next_arbiter
    }

    /// A crash or a normal exit of a running bot: the restart policy decides.
    fn supervise(&mut self, name: BotName, exit: Exit, ctx: &mut Context<Self>) {
        let settings = self.settings.clone();
        let Some(entry) = self.bots.get_mut(&name) else {
            return;
        };
        entry.addr = None;
        let crashed = matches!(exit, Exit::Crash(_));
        let error = match &exit {
            Exit::Crash(e) => Some(e.clone()),
            _ => None,
        };
        if let Some(e) = &error {
            entry.last_error = Some(e.clone());
        }
        let restart = !self.shutting_down
            && match entry.spec.restart {
                RestartPolicy::Permanent => true,
                RestartPolicy::Transient => crashed,
                RestartPolicy::Temporary => false,
            };
        let kind = if crashed { "crashed" } else { "exited" };
        let detail = serde_json::json!({ "error": error });
        if crashed {
            crate::metrics::Metrics::get().bot_crashes.inc();
            warn!(self.log, "A bot crashed."; "bot" => name.as_str(), "error" => error.as_deref().unwrap_or(""));
        } else {
            info!(self.log, "A bot exited."; "bot" => name.as_str());
        }
        self.event(&name, kind, SUPERVISOR, detail);
        let Some(entry) = self.bots.get_mut(&name) else {
            return;
        };
        if !restart {
            // Not restarted: stopped, and the operator's wish follows.
            entry.state = BotState::Stopped;
            entry.queue.set_admission(Admission::NotRunning);
            if self.shutting_down {
                self.drain_queue(&name, "stopped");
                self.answer_waiters(&name);
                return;
            }
            entry.desired = DesiredState::Stopped;
            let n = name.as_str().to_owned();
            self.store
                .write_detached(move |c| queries::set_desired_state(c, &n, "stopped", now_ms()));
            self.event(&name, "stopped", SUPERVISOR, serde_json::json!({}));
            self.drain_queue(&name, "stopped");
            self.answer_waiters(&name);
            return;
        }
        let now = Instant::now();
        let window = Duration::from_secs(settings.restart_window_secs);
        while entry
            .restart_times
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            entry.restart_times.pop_front();
        }
        if entry.restart_times.len() as u32 >= settings.max_restarts {
            let reason = format!(
                "restarted {} times within {} s; last error: {}",
                entry.restart_times.len(),
                settings.restart_window_secs,
                error.as_deref().unwrap_or("a normal exit")
            );
            entry.state = BotState::Failed;
            entry.last_error = Some(reason.clone());
            entry.queue.set_admission(Admission::NotRunning);
            warn!(self.log, "A bot failed: its restart limit was reached."; "bot" => name.as_str());
            let (n, r) = (name.as_str().to_owned(), reason.clone());
            self.store
                .write_detached(move |c| queries::set_failed(c, &n, Some(&r), now_ms()));
            self.event(
                &name,
                "failed",
                SUPERVISOR,
                serde_json::json!({ "reason": reason }),
            );
            self.drain_queue(&name, "failed");
            self.answer_waiters(&name);
            return;
        }
        let healthy = entry.running_since.is_some_and(|t| {
            now.duration_since(t) >= Duration::from_secs(settings.backoff_reset_secs)
        });
        if healthy {
            entry.backoff_step = 0;
        }
        let jitter = rand::thread_rng().gen_range(-0.2..=0.2);
        let delay = backoff_delay(&settings, entry.backoff_step, jitter);
        entry.backoff_step += 1;
        entry.state = BotState::Backoff;
        entry.running_since = None;
        let generation = entry.generation;
        self.event(
            &name,
            "backoff",
            SUPERVISOR,
            serde_json::json!({ "delay_ms": delay.as_millis() as u64 }),
        );
        ctx.run_later(delay, move |act, ctx| {
            let Some(entry) = act.bots.get_mut(&name) else {
                return;
            };
            // A stop, start or delete in the meantime changed the generation or state.
            if entry.generation != generation || entry.state != BotState::Backoff {
                return;
            }
            entry.restart_times.push_back(Instant::now());
            entry.restarts += 1;
            crate::metrics::Metrics::get().bot_restarts.inc();
            let restarts = entry.restarts;
            act.spawn_bot(&name, ctx);
            act.event(
                &name,
                "restarted",
                SUPERVISOR,
                serde_json::json!({ "restarts": restarts }),
            );
            act.answer_waiters(&name);
        });
    }

    fn not_found(name: &BotName) -> EngineError {
        EngineError::BotNotFound(name.to_string())
    }

    /// Starts a stopped or failed bot (the operator's start): clears the failure and the
    /// restart count, stores desired state `running`.
    fn operator_start(
        &mut self,
        name: BotName,
        subject: Subject,
    ) -> ResponseActFuture<Self, Result<BotInfo, EngineError>> {
        let n = name.as_str().to_owned();
        let store = self.store.clone();
        Box::pin(
            async move {
                store
                    .write_ordered(move |c| {
                        queries::set_failed(c, &n, None, now_ms())?;
                        queries::set_desired_state(c, &n, "running", now_ms())
                    })
                    .await
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                res?;
                let entry = act
                    .bots
                    .get_mut(&name)
                    .ok_or_else(|| Self::not_found(&name))?;
                entry.desired = DesiredState::Running;
                entry.last_error = None;
                entry.restarts = 0;
                entry.restart_times.clear();
                entry.backoff_step = 0;
                entry.state = BotState::Starting;
                act.spawn_bot(&name, ctx);
                act.event(&name, "started", &subject, serde_json::json!({}));
                info!(act.log, "A bot was started."; "bot" => name.as_str(), "subject" => &subject);
                Ok(act.bots[&name].info())
            }),
        )
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let every = Duration::from_millis(self.pool_settings.check_interval_ms);
        ctx.run_interval(every, |act, ctx| act.autoscale(ctx));
    }
}

/// Loads every bot from the database and starts those whose desired state is running and
/// that are not failed. Messages left pending by a crash of the daemon become `failed`.
#[derive(Message)]
#[rtype(result = "Result<usize, EngineError>")]
pub struct RestoreBots;

impl Handler<RestoreBots> for Registry {
    type Result = AtomicResponse<Self, Result<usize, EngineError>>;

    fn handle(&mut self, _: RestoreBots, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        AtomicResponse::new(Box::pin(
            async move {
                store
                    .write_ordered(|c| {
                        queries::fail_pending(c, "internal")?;
                        Ok((queries::list_bots(c)?, queries::list_pools(c)?))
                    })
                    .await
            }
            .into_actor(self)
            .map(|rows, act, ctx| {
                let (rows, pools) = rows?;
                for row in pools {
                    match PoolEntry::from_row(&row) {
                        Ok(p) => {
                            act.pools.insert(p.spec.name.clone(), p);
                        }
                        Err(e) => {
                            warn!(act.log, "A pool in the database cannot be loaded."; "pool" => &row.name, "error" => e);
                        }
                    }
                }
                let mut started = 0;
                for row in rows {
                    let spec = match spec_from_row(&row) {
                        Ok(spec) => spec,
                        Err(e) => {
                            warn!(act.log, "A bot in the database cannot be loaded."; "bot" => &row.name, "error" => e.to_string());
                            continue;
                        }
                    };
                    let name = spec.name.clone();
                    let failed = row.failed_reason.is_some();
                    let desired = if row.desired_state == "running" {
                        DesiredState::Running
                    } else {
                        DesiredState::Stopped
                    };
                    let arbiter = act.pick_arbiter();
                    act.bots.insert(
                        name.clone(),
                        Entry::new(
                            spec,
                            row.managed != 0,
                            desired,
                            if failed { BotState::Failed } else { BotState::Stopped },
                            row.failed_reason.clone(),
                            row.created_at,
                            row.updated_at,
                            arbiter,
                        ),
                    );
                    if desired == DesiredState::Running && !failed {
                        act.spawn_bot(&name, ctx);
                        started += 1;
                    }
                }
                info!(act.log, "Bots restored from the database."; "bots" => act.bots.len(), "running" => started, "pools" => act.pools.len());
                Ok(started)
            }),
        ))
    }
}

/// Creates a bot (stopped, or started with `autostart`).
#[derive(Message)]
#[rtype(result = "Result<BotInfo, EngineError>")]
pub struct CreateBot {
    pub spec: BotSpec,
    pub managed: bool,
    pub autostart: bool,
    pub subject: Subject,
}

impl Handler<CreateBot> for Registry {
    type Result = AtomicResponse<Self, Result<BotInfo, EngineError>>;

    fn handle(&mut self, msg: CreateBot, _: &mut Self::Context) -> Self::Result {
        let name = msg.spec.name.clone();
        if self.bots.contains_key(&name) {
            return AtomicResponse::new(Box::pin(fut::ready(Err(EngineError::BotExists(
                name.to_string(),
            )))));
        }
        let desired = if msg.autostart {
            DesiredState::Running
        } else {
            DesiredState::Stopped
        };
        let now = now_ms();
        let row = row_from_spec(&msg.spec, msg.managed, desired, now);
        let store = self.store.clone();
        AtomicResponse::new(Box::pin(
            async move { store.write_ordered(move |c| queries::insert_bot(c, &row)).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    res.map_err(|e| match e {
                        crate::store::StoreError::Conflict(_) => {
                            EngineError::BotExists(name.to_string())
                        }
                        e => e.into(),
                    })?;
                    let arbiter = act.pick_arbiter();
                    let spec = msg.spec;
                    act.bots.insert(
                        name.clone(),
                        Entry::new(
                            spec,
                            msg.managed,
                            desired,
                            BotState::Stopped,
                            None,
                            now,
                            now,
                            arbiter,
                        ),
                    );
                    act.event(&name, "created", &msg.subject, serde_json::json!({}));
                    info!(act.log, "A bot was created."; "bot" => name.as_str(), "subject" => &msg.subject);
                    if msg.autostart {
                        act.spawn_bot(&name, ctx);
                        act.event(&name, "started", &msg.subject, serde_json::json!({}));
                    }
                    Ok(act.bots[&name].info())
                }),
        ))
    }
}

/// Looks a bot up.
#[derive(Message)]
#[rtype(result = "Result<BotInfo, EngineError>")]
pub struct GetBot {
    pub name: BotName,
}

impl Handler<GetBot> for Registry {
    type Result = Result<BotInfo, EngineError>;

    fn handle(&mut self, msg: GetBot, _: &mut Self::Context) -> Self::Result {
        self.bots
            .get(&msg.name)
            .map(Entry::info)
            .ok_or_else(|| Self::not_found(&msg.name))
    }
}

/// Lists bots, sorted by name, optionally of one pool or in one state.
#[derive(Message)]
#[rtype(result = "Vec<BotInfo>")]
pub struct ListBots {
    pub pool: Option<PoolName>,
    pub state: Option<BotState>,
}

impl Handler<ListBots> for Registry {
    type Result = MessageResult<ListBots>;

    fn handle(&mut self, msg: ListBots, _: &mut Self::Context) -> Self::Result {
        MessageResult(
            self.bots
                .values()
                .filter(|e| msg.pool.is_none() || e.spec.pool == msg.pool)
                .filter(|e| msg.state.is_none_or(|s| e.state == s))
                .map(Entry::info)
                .collect(),
        )
    }
}

/// Counts bots by state.
#[derive(Message)]
#[rtype(result = "BTreeMap<&'static str, usize>")]
pub struct CountBots;

impl Handler<CountBots> for Registry {
    type Result = MessageResult<CountBots>;

    fn handle(&mut self, _: CountBots, _: &mut Self::Context) -> Self::Result {
        let mut counts: BTreeMap<&'static str, usize> =
            BotState::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        for e in self.bots.values() {
            *counts.entry(e.state.as_str()).or_default() += 1;
        }
        MessageResult(counts)
    }
}

/// Changes a bot's spec; it applies from the next start.
#[derive(Message)]
#[rtype(result = "Result<BotInfo, EngineError>")]
pub struct UpdateBot {
    pub name: BotName,
    pub patch: BotPatch,
    pub subject: Subject,
}

impl Handler<UpdateBot> for Registry {
    type Result = AtomicResponse<Self, Result<BotInfo, EngineError>>;

    fn handle(&mut self, msg: UpdateBot, _: &mut Self::Context) -> Self::Result {
        let Some(entry) = self.bots.get(&msg.name) else {
            return AtomicResponse::new(Box::pin(fut::ready(Err(Self::not_found(&msg.name)))));
        };
        let mut spec = entry.spec.clone();
        msg.patch.apply(&mut spec);
        let now = now_ms();
        let mut row = row_from_spec(&spec, entry.managed, entry.desired, now);
        row.created_at = entry.created_at;
        row.failed_reason = if entry.state == BotState::Failed {
            entry.last_error.clone()
        } else {
            None
        };
        let store = self.store.clone();
        let name = msg.name;
        let subject = msg.subject;
        AtomicResponse::new(Box::pin(
            async move {
                store
                    .write_ordered(move |c| queries::update_bot(c, &row))
                    .await
            }
            .into_actor(self)
            .map(move |res, act, _| {
                res?;
                let entry = act
                    .bots
                    .get_mut(&name)
                    .ok_or_else(|| Self::not_found(&name))?;
                entry.spec = spec;
                entry.updated_at = now;
                act.event(&name, "updated", &subject, serde_json::json!({}));
                Ok(act.bots[&name].info())
            }),
        ))
    }
}

/// Starts a stopped or failed bot.
#[derive(Message)]
#[rtype(result = "Result<BotInfo, EngineError>")]
pub struct StartBot {
    pub name: BotName,
    pub subject: Subject,
}

impl Handler<StartBot> for Registry {
    type Result = AtomicResponse<Self, Result<BotInfo, EngineError>>;

    fn handle(&mut self, msg: StartBot, _: &mut Self::Context) -> Self::Result {
        let Some(entry) = self.bots.get(&msg.name) else {
            return AtomicResponse::new(Box::pin(fut::ready(Err(Self::not_found(&msg.name)))));
        };
        let refused = match entry.state {
            BotState::Running | BotState::Starting | BotState::Backoff => {
                Some(EngineError::BotAlreadyRunning(msg.name.to_string()))
            }
            BotState::Stopping => Some(EngineError::Conflict(format!(
                "bot '{}' is stopping",
                msg.name
            ))),
            BotState::Stopped | BotState::Failed => None,
        };
        if let Some(e) = refused {
            return AtomicResponse::new(Box::pin(fut::ready(Err(e))));
        }
        AtomicResponse::new(self.operator_start(msg.name, msg.subject))
    }
}

/// Stops a bot: new messages are refused, queued ones answered within `timeout`, the
/// rest 503 `shutting_down`. Answers once the bot is stopped.
#[derive(Message)]
#[rtype(result = "Result<oneshot::Receiver<Result<BotInfo, EngineError>>, EngineError>")]
pub struct StopBot {
    pub name: BotName,
    pub timeout: Option<Duration>,
    pub subject: Subject,
    /// Start it again once stopped (a restart).
    pub then_start: bool,
}

impl Handler<StopBot> for Registry {
    type Result =
        AtomicResponse<Self, Result<oneshot::Receiver<Result<BotInfo, EngineError>>, EngineError>>;

    fn handle(&mut self, msg: StopBot, _: &mut Self::Context) -> Self::Result {
        let ready = |r| AtomicResponse::new(Box::pin(fut::ready(r)));
        let Some(entry) = self.bots.get(&msg.name) else {
            return ready(Err(Self::not_found(&msg.name)));
        };
        match entry.state {
            BotState::Stopping => {
                return ready(Err(EngineError::Conflict(format!(
                    "bot '{}' is stopping",
                    msg.name
                ))))
            }
            BotState::Stopped if !msg.then_start => {
                return ready(Err(EngineError::BotNotRunning(msg.name.to_string())))
            }
            _ => {}
        }
        let n = msg.name.as_str().to_owned();
        let store = self.store.clone();
        let timeout = msg
            .timeout
            .unwrap_or(Duration::from_millis(self.settings.stop_timeout_ms));
        let desired = if msg.then_start { "running" } else { "stopped" };
        AtomicResponse::new(Box::pin(
            async move {
                store
                    .write_ordered(move |c| {
                        queries::set_failed(c, &n, None, now_ms())?;
                        queries::set_desired_state(c, &n, desired, now_ms())
                    })
                    .await
            }
            .into_actor(self)
            .map(move |res, act, ctx| {
                res?;
                let name = msg.name;
                let (tx, rx) = oneshot::channel();
                let entry = act.bots.get_mut(&name).ok_or_else(|| Self::not_found(&name))?;
                entry.desired = if msg.then_start {
                    DesiredState::Running
                } else {
                    DesiredState::Stopped
                };
                match entry.state {
                    BotState::Running | BotState::Starting => {
                        entry.state = BotState::Stopping;
                        entry.queue.set_admission(Admission::ShuttingDown);
                        if msg.then_start {
                            entry.start_after_stop = Some(msg.subject.clone());
                        }
                        entry.stop_subject = Some(msg.subject.clone());
                        entry.stop_waiters.push(tx);
                        if let Some(addr) = &entry.addr {
                            addr.do_send(Drain {
                                deadline: Instant::now() + timeout,
                            });
                        }
                        info!(act.log, "A bot is stopping."; "bot" => name.as_str(), "subject" => &msg.subject);
                    }
                    BotState::Backoff | BotState::Failed | BotState::Stopped => {
                        // Nothing runs: the backoff timer is void by the generation bump.
                        entry.generation += 1;
                        entry.state = BotState::Stopped;
                        entry.last_error = None;
                        entry.queue.set_admission(Admission::NotRunning);
                        act.drain_queue(&name, "was stopped");
                        if msg.then_start {
                            act.event(&name, "stopped", &msg.subject, serde_json::json!({}));
                            let subject = msg.subject.clone();
                            let entry = act.bots.get_mut(&name).ok_or_else(|| Self::not_found(&name))?;
                            entry.restarts = 0;
                            entry.restart_times.clear();
                            entry.backoff_step = 0;
                            act.spawn_bot(&name, ctx);
                            act.event(&name, "started", &subject, serde_json::json!({}));
                        } else {
                            act.event(&name, "stopped", &msg.subject, serde_json::json!({}));
                        }
                        let _ = tx.send(Ok(act.bots[&name].info()));
                    }
                    BotState::Stopping => unreachable_stopping(),
                }
                Ok(rx)
            }),
        ))
    }
}

#[allow(clippy::unreachable)]
fn unreachable_stopping() {
    // Checked before the write: a stopping bot is refused with 409.
    unreachable!("stopping handled above")
}

impl Handler<BotExited> for Registry {
    type Result = ();

    fn handle(&mut self, msg: BotExited, ctx: &mut Self::Context) {
        let Some(entry) = self.bots.get_mut(&msg.name) else {
            return;
        };
        if entry.generation != msg.generation {
            return;
        }
        if entry.state == BotState::Stopping || msg.exit == Exit::Requested {
            entry.addr = None;
            entry.state = BotState::Stopped;
            entry.queue.set_admission(Admission::NotRunning);
            let subject = entry.start_after_stop.take();
            let stopped_by = entry.stop_subject.take();
            self.drain_queue(&msg.name, "was stopped");
            match subject {
                Some(subject) => {
                    let entry = match self.bots.get_mut(&msg.name) {
                        Some(e) => e,
                        None => return,
                    };
                    entry.restarts = 0;
                    entry.restart_times.clear();
                    entry.backoff_step = 0;
                    self.event(&msg.name, "stopped", &subject, serde_json::json!({}));
                    self.spawn_bot(&msg.name, ctx);
                    self.event(&msg.name, "started", &subject, serde_json::json!({}));
                    if let Some(entry) = self.bots.get_mut(&msg.name) {
                        let info = entry.info();
                        for w in entry.stop_waiters.drain(..) {
                            let _ = w.send(Ok(info.clone()));
                        }
                    }
                }
                None => {
                    if let Some(by) = stopped_by.filter(|_| !self.shutting_down) {
                        self.event(&msg.name, "stopped", &by, serde_json::json!({}));
                    }
                    self.answer_waiters(&msg.name);
                    if !self.shutting_down && self.bots.get(&msg.name).is_some_and(|e| e.retiring) {
                        self.delete_retired(msg.name, ctx);
                    }
                }
            }
            return;
        }
        self.supervise(msg.name, msg.exit, ctx);
    }
}

/// Deletes a bot, stopping it first; its history is kept unless `purge`.
#[derive(Message)]
#[rtype(result = "Result<(), EngineError>")]
pub struct DeleteBot {
    pub name: BotName,
    pub purge: bool,
    pub subject: Subject,
}

impl Handler<DeleteBot> for Registry {
    type Result = AtomicResponse<Self, Result<(), EngineError>>;

    fn handle(&mut self, msg: DeleteBot, _: &mut Self::Context) -> Self::Result {
        let Some(entry) = self.bots.get_mut(&msg.name) else {
            return AtomicResponse::new(Box::pin(fut::ready(Err(Self::not_found(&msg.name)))));
        };
        // Refuse new messages at once; what runs finishes on its own.
        entry.queue.set_admission(Admission::ShuttingDown);
        entry.generation += 1;
        if let Some(addr) = entry.addr.take() {
            addr.do_send(Drain {
                deadline: Instant::now(),
            });
        }
        let n = msg.name.as_str().to_owned();
        let purge = msg.purge;
        let store = self.store.clone();
        AtomicResponse::new(Box::pin(
            async move { store.write_ordered(move |c| queries::delete_bot(c, &n, purge)).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    res?;
                    act.drain_queue(&msg.name, "was deleted");
                    act.event(&msg.name, "deleted", &msg.subject, serde_json::json!({ "purge": purge }));
                    if let Some(mut entry) = act.bots.remove(&msg.name) {
                        for w in entry.stop_waiters.drain(..).chain(entry.start_waiters.drain(..)) {
                            let _ = w.send(Err(EngineError::BotNotFound(msg.name.to_string())));
                        }
                    }
                    info!(act.log, "A bot was deleted."; "bot" => msg.name.as_str(), "subject" => &msg.subject);
                    Ok(())
                }),
        ))
    }
}

/// Routes a message to its bot (or the least-loaded running bot of its pool) and queues
/// it; the ticket waits for the answer.
#[derive(Message)]
#[rtype(result = "Result<Ticket, EngineError>")]
pub struct SendMessage(pub Inbound);

impl Handler<SendMessage> for Registry {
    type Result = Result<Ticket, EngineError>;

    fn handle(&mut self, msg: SendMessage, _: &mut Self::Context) -> Self::Result {
        let msg = msg.0;
        #[cfg(feature = "fault-injection")]
        if msg.content == "__botd_fault:hang_registry__" {
            // Blocks the Registry's thread: a hung actor system, for the watchdog test.
            std::thread::sleep(Duration::from_secs(30));
        }
        let name = match &msg.target {
            Target::Bot(name) => name.clone(),
            Target::Pool(pool) => self.pick_member(pool, msg.conversation.as_str())?,
        };
        let entry = self.bots.get(&name).ok_or_else(|| Self::not_found(&name))?;
        let (tx, rx) = oneshot::channel();
        let deadline = msg.deadline;
        let cancel = msg.cancel.clone();
        let seq = entry
            .queue
            .push(msg, tx, name.as_str(), || self.llm.refusal())
            .map_err(|(e, _)| e)?;
        if let Some(addr) = &entry.addr {
            addr.do_send(Poke);
        }
        Ok(Ticket {
            rx: Some(rx),
            queue: entry.queue.clone(),
            store: self.store.clone(),
            bot: name,
            seq,
            deadline,
            cancel,
        })
    }
}

/// Stops every bot for a daemon shutdown, without changing their desired state, and
/// answers once all have stopped or the deadline passed.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shutdown {
    pub timeout: Duration,
}

impl Handler<Shutdown> for Registry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Shutdown, _: &mut Self::Context) -> Self::Result {
        self.shutting_down = true;
        let deadline = Instant::now() + msg.timeout;
        let mut waits = Vec::new();
        for entry in self.bots.values_mut() {
            match entry.state {
                BotState::Running | BotState::Starting => {
                    entry.state = BotState::Stopping;
                    entry.queue.set_admission(Admission::ShuttingDown);
                    let (tx, rx) = oneshot::channel();
                    entry.stop_waiters.push(tx);
                    waits.push(rx);
                    if let Some(addr) = &entry.addr {
                        addr.do_send(Drain { deadline });
                    }
                }
                BotState::Backoff => {
                    entry.generation += 1;
                    entry.state = BotState::Stopped;
                    entry.queue.set_admission(Admission::NotRunning);
                }
                _ => {}
            }
        }
        let names: Vec<BotName> = self.bots.keys().cloned().collect();
        for name in &names {
            self.drain_queue(name, "stopped: the daemon is shutting down");
        }
        Box::pin(
            async move {
                let all = futures::future::join_all(waits);
                // A little past the bots' own deadline, for their last answers.
                let _ = tokio::time::timeout(msg.timeout + Duration::from_millis(500), all).await;
            }
            .into_actor(self),
        )
    }
}

/// Answers at once: the liveness check and the watchdog's ping.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Ping;

impl Handler<Ping> for Registry {
    type Result = ();

    fn handle(&mut self, _: Ping, _: &mut Self::Context) {}
}

/// A queued message's claim on its answer. Dropping it before the answer (the caller went
/// away) cancels the message; its deadline passing answers 504 `deadline_exceeded`.
pub struct Ticket {
    rx: Option<oneshot::Receiver<Result<Answer, EngineError>>>,
    queue: Arc<BotQueue>,
    store: StoreHandle,
    /// The bot the message went to.
    pub bot: BotName,
    seq: u64,
    deadline: Instant,
    cancel: tokio_util::sync::CancellationToken,
}

impl Ticket {
    /// Waits for the answer, or the deadline.
    pub async fn wait(mut self) -> Result<Answer, EngineError> {
        let Some(rx) = self.rx.as_mut() else {
            return Err(EngineError::Internal("a ticket was waited on twice".into()));
        };
        let deadline = tokio::time::Instant::from_std(self.deadline);
        let result = tokio::select! {
            r = &mut *rx => r.unwrap_or_else(|_| Err(EngineError::Internal("the bot dropped the message".into()))),
            _ = tokio::time::sleep_until(deadline) => {
                // Still waiting: take it out and answer it here. Running: the job was
                // cancelled by its own deadline and answers shortly.
                match self.queue.withdraw(self.seq) {
                    Some(job) => {
                        answer_unprocessed_in(&self.store, self.bot.as_str(), job, EngineError::DeadlineExceeded);
                        Err(EngineError::DeadlineExceeded)
                    }
                    None => match (&mut *rx).await {
                        Ok(r) => r,
                        Err(_) => Err(EngineError::DeadlineExceeded),
                    },
                }
            }
        };
        self.rx = None;
        result
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.rx.is_none() {
            return;
        }
        // The caller went away before its answer.
        self.cancel.cancel();
        if let Some(job) = self.queue.withdraw(self.seq) {
            answer_unprocessed_in(&self.store, self.bot.as_str(), job, EngineError::Cancelled);
        }
    }
}

/// The HTTP layer's view of the Registry: one async method per operation.
#[derive(Clone)]
pub struct RegistryHandle {
    addr: Addr<Registry>,
}

fn gone<T>(_: MailboxError) -> Result<T, EngineError> {
    Err(EngineError::Internal(
        "the registry is not answering".into(),
    ))
}

impl RegistryHandle {
    pub fn new(addr: Addr<Registry>) -> Self {
        Self { addr }
    }

    pub fn addr(&self) -> &Addr<Registry> {
        &self.addr
    }

    pub async fn restore(&self) -> Result<usize, EngineError> {
        self.addr.send(RestoreBots).await.or_else(gone)?
    }

    pub async fn create(&self, msg: CreateBot) -> Result<BotInfo, EngineError> {
        self.addr.send(msg).await.or_else(gone)?
    }

    pub async fn get(&self, name: BotName) -> Result<BotInfo, EngineError> {
        self.addr.send(GetBot { name }).await.or_else(gone)?
    }

    pub async fn list(
        &self,
        pool: Option<PoolName>,
        state: Option<BotState>,
    ) -> Result<Vec<BotInfo>, EngineError> {
        self.addr.send(ListBots { pool, state }).await.or_else(gone)
    }

    pub async fn counts(&self) -> Result<BTreeMap<&'static str, usize>, EngineError> {
        self.addr.send(CountBots).await.or_else(gone)
    }

    pub async fn update(
        &self,
        name: BotName,
        patch: BotPatch,
        subject: Subject,
    ) -> Result<BotInfo, EngineError> {
        self.addr
            .send(UpdateBot {
                name,
                patch,
                subject,
            })
            .await
            .or_else(gone)?
    }

    pub async fn delete(
        &self,
        name: BotName,
        purge: bool,
        subject: Subject,
    ) -> Result<(), EngineError> {
        self.addr
            .send(DeleteBot {
                name,
                purge,
                subject,
            })
            .await
            .or_else(gone)?
    }

    pub async fn start(&self, name: BotName, subject: Subject) -> Result<BotInfo, EngineError> {
        self.addr
            .send(StartBot { name, subject })
            .await
            .or_else(gone)?
    }

    pub async fn stop(
        &self,
        name: BotName,
        timeout: Option<Duration>,
        subject: Subject,
    ) -> Result<BotInfo, EngineError> {
        self.stop_then(name, timeout, subject, false).await
    }

    /// Stops a running bot and starts it again; starts a stopped or failed one.
    pub async fn restart(&self, name: BotName, subject: Subject) -> Result<BotInfo, EngineError> {
        let info = self.get(name.clone()).await?;
        match info.state {
            BotState::Stopped | BotState::Failed => self.start(name, subject).await,
            BotState::Stopping => Err(EngineError::Conflict(format!("bot '{name}' is stopping"))),
            _ => self.stop_then(name, None, subject, true).await,
        }
    }

    async fn stop_then(
        &self,
        name: BotName,
        timeout: Option<Duration>,
        subject: Subject,
        then_start: bool,
    ) -> Result<BotInfo, EngineError> {
        let rx = self
            .addr
            .send(StopBot {
                name: name.clone(),
                timeout,
                subject,
                then_start,
            })
            .await
            .or_else(gone)??;
        rx.await
            .unwrap_or_else(|_| Err(EngineError::Internal(format!("bot '{name}' vanished"))))
    }

    pub async fn send(&self, msg: Inbound) -> Result<Ticket, EngineError> {
        self.addr.send(SendMessage(msg)).await.or_else(gone)?
    }

    pub async fn put_pool(&self, msg: PutPool) -> Result<PoolInfo, EngineError> {
        self.addr.send(msg).await.or_else(gone)?
    }

    pub async fn get_pool(&self, name: PoolName) -> Result<PoolInfo, EngineError> {
        self.addr.send(GetPool { name }).await.or_else(gone)?
    }

    pub async fn list_pools(&self) -> Result<Vec<PoolInfo>, EngineError> {
        self.addr.send(ListPools).await.or_else(gone)
    }

    pub async fn delete_pool(&self, name: PoolName, subject: Subject) -> Result<(), EngineError> {
        self.addr
            .send(DeletePool { name, subject })
            .await
            .or_else(gone)?
    }

    pub async fn ping(&self) -> bool {
        self.addr.send(Ping).await.is_ok()
    }

    pub async fn shutdown(&self, timeout: Duration) {
        let _ = self.addr.send(Shutdown { timeout }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_by_half_and_is_capped() {
        let s = SupervisorSettings::default();
        assert_eq!(backoff_delay(&s, 0, 0.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(&s, 1, 0.0), Duration::from_millis(150));
        assert_eq!(backoff_delay(&s, 2, 0.0), Duration::from_millis(225));
        assert_eq!(backoff_delay(&s, 40, 0.0), Duration::from_millis(30_000));
        assert_eq!(backoff_delay(&s, 0, 0.2), Duration::from_millis(120));
        assert_eq!(backoff_delay(&s, 0, -0.5), Duration::from_millis(80));
    }
}
