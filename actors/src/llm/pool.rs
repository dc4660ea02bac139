//! The LLM pool: at most `llm.max_concurrent` model calls in flight, a bounded queue
//! behind them served round-robin across bots, retries, and a circuit breaker.
//!
//! The `LlmPool` actor only hands out permits; the call itself runs in the caller's task
//! (on the caller's arbiter), so the network work is spread over the threads. A permit
//! dropped for any reason (answer, error, cancellation) frees its slot.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rand::Rng;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::client::{ChatReply, ChatRequest, LlmError, OllamaClient};
use crate::metrics::Metrics;
use crate::model::EngineError;
use crate::settings::LlmSettings;

/// A granted slot; dropping it gives the slot back.
pub struct Permit {
    pool: Addr<LlmPool>,
    granted: Instant,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.pool.do_send(Release {
            held: self.granted.elapsed(),
        });
    }
}

/// Asks for a slot for one of `bot`'s calls.
#[derive(Message)]
#[rtype(result = "Result<oneshot::Receiver<Permit>, EngineError>")]
pub struct Acquire {
    pub bot: Arc<str>,
}

/// A slot came back after `held`.
#[derive(Message)]
#[rtype(result = "()")]
struct Release {
    held: Duration,
}

/// Changes the pool's sizes live (SIGHUP).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetLimits {
    pub max_concurrent: usize,
    pub max_queue: usize,
}

/// The pool's live numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolLoad {
    pub in_flight: usize,
    pub queued: usize,
    pub capacity: usize,
}

/// Reads the pool's live numbers.
#[derive(Message)]
#[rtype(result = "PoolLoad")]
pub struct GetPoolLoad;

/// What the pool publishes for callers that should not wait for its actor: whether a new
/// call would be refused now, and the `Retry-After` it would get.
#[derive(Debug, Default)]
pub struct Fullness {
    full: AtomicBool,
    queued: AtomicUsize,
    retry_after_secs: AtomicU64,
}

impl Fullness {
    /// The refusal a new call would get now, if the pool is full.
    pub fn refusal(&self) -> Option<EngineError> {
        self.full
            .load(Ordering::Acquire)
            .then(|| EngineError::LlmOverloaded {
                queued: self.queued.load(Ordering::Relaxed),
                retry_after_secs: self.retry_after_secs.load(Ordering::Relaxed),
            })
    }
}

/// The permit scheduler.
pub struct LlmPool {
    max_concurrent: usize,
    max_queue: usize,
    in_flight: usize,
    /// Waiting calls per bot, each answered through its channel.
    waiting: HashMap<Arc<str>, VecDeque<oneshot::Sender<Permit>>>,
    /// Bots with waiting calls, in round-robin order.
    turn: VecDeque<Arc<str>>,
    queued: usize,
    /// Exponentially weighted mean of how long a permit is held, in seconds.
    mean_service_secs: f64,
    breaker: Arc<Breaker>,
    client: OllamaClient,
    open_secs: u64,
    fullness: Arc<Fullness>,
}

impl LlmPool {
    pub fn new(
        settings: &LlmSettings,
        breaker: Arc<Breaker>,
        client: OllamaClient,
        fullness: Arc<Fullness>,
    ) -> Self {
        Self {
            max_concurrent: settings.max_concurrent,
            max_queue: settings.max_queue,
            in_flight: 0,
            waiting: HashMap::new(),
            turn: VecDeque::new(),
            queued: 0,
            mean_service_secs: 0.0,
            breaker,
            client,
            open_secs: settings.breaker_open_secs,
            fullness,
        }
    }

    /// Whether [`Acquire`] would refuse a call now.
    fn is_full(&self) -> bool {
        let grants_at_once = self.in_flight < self.max_concurrent && self.queued == 0;
        !grants_at_once && self.queued >= self.max_queue
    }

    fn permit(&self, ctx: &Context<Self>) -> Permit {
        Permit {
            pool: ctx.address(),
            granted: Instant::now(),
        }
    }

    /// Grants free slots to waiting calls, one bot at a time in turn.
    fn grant(&mut self, ctx: &Context<Self>) {
        while self.in_flight < self.max_concurrent {
            let Some(bot) = self.turn.pop_front() else {
                return;
            };
            let Some(queue) = self.waiting.get_mut(&bot) else {
                continue;
            };
            let Some(tx) = queue.pop_front() else {
                self.waiting.remove(&bot);
                continue;
            };
            self.queued -= 1;
            if queue.is_empty() {
                self.waiting.remove(&bot);
            } else {
                self.turn.push_back(bot);
            }
            if tx.is_closed() {
                // Its caller went away while waiting.
                continue;
            }
            self.in_flight += 1;
            // A refused permit (receiver gone just now) drops and releases itself.
            let _ = tx.send(self.permit(ctx));
        }
    }

    fn publish(&self) {
        let m = Metrics::get();
        m.llm_in_flight.set(self.in_flight as i64);
        m.llm_queue_depth.set(self.queued as i64);
        let f = &self.fullness;
        f.queued.store(self.queued, Ordering::Relaxed);
        f.retry_after_secs
            .store(self.retry_after_secs(), Ordering::Relaxed);
        f.full.store(self.is_full(), Ordering::Release);
    }

    fn retry_after_secs(&self) -> u64 {
        let secs = self.queued as f64 * self.mean_service_secs / self.max_concurrent as f64;
        (secs.ceil() as u64).max(1)
    }
}

impl Actor for LlmPool {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // The breaker's probe: while open, one `GET /api/version` per period.
        ctx.run_interval(Duration::from_secs(self.open_secs), |act, ctx| {
            if !act.breaker.is_open() || act.breaker.probing.swap(true, Ordering::AcqRel) {
                return;
            }
            let client = act.client.clone();
            let breaker = act.breaker.clone();
            ctx.spawn(
                async move {
                    let ok = client.version().await.is_ok();
                    breaker.probed(ok);
                }
                .into_actor(act),
            );
        });
    }
}

impl Handler<Acquire> for LlmPool {
    type Result = Result<oneshot::Receiver<Permit>, EngineError>;

    fn handle(&mut self, msg: Acquire, ctx: &mut Self::Context) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        if self.in_flight < self.max_concurrent && self.queued == 0 {
            self.in_flight += 1;
            self.publish();
            let _ = tx.send(self.permit(ctx));
            return Ok(rx);
        }
        if self.is_full() {
            return Err(EngineError::LlmOverloaded {
                queued: self.queued,
                retry_after_secs: self.retry_after_secs(),
            });
        }
        let queue = self.waiting.entry(msg.bot.clone()).or_default();
        if queue.is_empty() {
            self.turn.push_back(msg.bot);
        }
        queue.push_back(tx);
        self.queued += 1;
        self.publish();
        Ok(rx)
    }
}

impl Handler<Release> for LlmPool {
    type Result = ();

    fn handle(&mut self, msg: Release, ctx: &mut Self::Context) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let held = msg.held.as_secs_f64();
        self.mean_service_secs = if self.mean_service_secs == 0.0 {
            held
        } else {
            0.9 * self.mean_service_secs + 0.1 * held
        };
        self.grant(ctx);
        self.publish();
    }
}

impl Handler<SetLimits> for LlmPool {
    type Result = ();

    fn handle(&mut self, msg: SetLimits, ctx: &mut Self::Context) {
        self.max_concurrent = msg.max_concurrent.max(1);
        self.max_queue = msg.max_queue;
        self.grant(ctx);
        self.publish();
    }
}

impl Handler<GetPoolLoad> for LlmPool {
    type Result = MessageResult<GetPoolLoad>;

    fn handle(&mut self, _: GetPoolLoad, _: &mut Self::Context) -> Self::Result {
        MessageResult(PoolLoad {
            in_flight: self.in_flight,
            queued: self.queued,
            capacity: self.max_concurrent,
        })
    }
}

/// The circuit breaker: counts failed attempts in a row; open, it fails calls fast.
pub struct Breaker {
    threshold: u32,
    failures: AtomicU32,
    open: AtomicBool,
    probing: AtomicBool,
    /// Attempts refused while open, for metrics.
    pub rejected: AtomicU64,
}

impl Breaker {
    pub fn new(threshold: u32) -> Arc<Self> {
        Arc::new(Self {
            threshold: threshold.max(1),
            failures: AtomicU32::new(0),
            open: AtomicBool::new(false),
            probing: AtomicBool::new(false),
            rejected: AtomicU64::new(0),
        })
    }

    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    fn success(&self) {
        self.failures.store(0, Ordering::Release);
    }

    fn failure(&self) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.threshold {
            self.open.store(true, Ordering::Release);
            Metrics::get().llm_breaker_open.set(1);
        }
    }

    fn probed(&self, ok: bool) {
        if ok {
            self.failures.store(0, Ordering::Release);
            self.open.store(false, Ordering::Release);
            Metrics::get().llm_breaker_open.set(0);
        }
        self.probing.store(false, Ordering::Release);
    }
}

/// A call's place in the pool: a slot granted or a place in the queue, given back when
/// dropped. Taken before the message is stored, so that a full queue refuses it before
/// any database work.
pub struct Ticket {
    rx: oneshot::Receiver<Permit>,
    queued_at: Instant,
}

/// One model call as a bot asks for it.
pub struct CallSpec<'a> {
    pub ticket: Ticket,
    pub request: &'a ChatRequest,
    /// Where streamed pieces go; `None` for a plain caller.
    pub tokens: Option<&'a tokio::sync::mpsc::UnboundedSender<String>>,
    pub cancel: &'a CancellationToken,
    pub deadline: Instant,
}

/// A finished call: the reply and the time the model took.
pub struct CallOutcome {
    pub reply: ChatReply,
    /// From the first attempt's start to the answer (retries included), excluding the
    /// wait for a slot.
    pub llm_time: Duration,
    pub queue_time: Duration,
}

/// Why a call ended without a reply, before mapping to the API's errors.
#[derive(Debug)]
pub enum CallError {
    Engine(EngineError),
    /// The caller's token was tripped.
    Cancelled,
    /// The caller's deadline passed.
    Deadline,
}

/// What bots use to call the model: the pool's address, the client and the breaker.
#[derive(Clone)]
pub struct LlmService {
    pool: Addr<LlmPool>,
    client: OllamaClient,
    breaker: Arc<Breaker>,
    fullness: Arc<Fullness>,
    retries: u32,
    request_timeout_secs: u64,
}

impl LlmService {
    /// Starts the pool actor on its own arbiter.
    pub fn start(settings: &LlmSettings) -> Result<Self, EngineError> {
        let client = OllamaClient::new(
            &settings.ollama_url,
            settings.connect_timeout(),
            settings.request_timeout(),
        )
        .map_err(|e| EngineError::InvalidField(format!("llm.ollama_url: {e}")))?;
        let breaker = Breaker::new(settings.breaker_failures);
        let fullness = Arc::new(Fullness::default());
        let pool = {
            let (s, b, c, f) = (
                settings.clone(),
                breaker.clone(),
                client.clone(),
                fullness.clone(),
            );
            LlmPool::start_in_arbiter(&Arbiter::new().handle(), move |_| LlmPool::new(&s, b, c, f))
        };
        Ok(Self {
            pool,
            client,
            breaker,
            fullness,
            retries: settings.retries,
            request_timeout_secs: settings.request_timeout_secs,
        })
    }

    /// The refusal a new call would get now (503 `llm_overloaded`), read without a trip
    /// to the pool's actor: the Registry sheds with it before a message is queued.
    pub fn refusal(&self) -> Option<EngineError> {
        self.fullness.refusal()
    }

    pub fn pool(&self) -> &Addr<LlmPool> {
        &self.pool
    }

    pub fn client(&self) -> &OllamaClient {
        &self.client
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    pub async fn load(&self) -> PoolLoad {
        self.pool.send(GetPoolLoad).await.unwrap_or_default()
    }

    /// Asks the pool for a slot or a place in its queue for one of `bot`'s calls:
    /// 503 `llm_overloaded` when the queue is full.
    pub async fn admit(&self, bot: &Arc<str>) -> Result<Ticket, EngineError> {
        let queued_at = Instant::now();
        let rx = self
            .pool
            .send(Acquire { bot: bot.clone() })
            .await
            .map_err(|_| EngineError::Internal("the LLM pool is gone".into()))??;
        Ok(Ticket { rx, queued_at })
    }

    /// Waits for the ticket's slot, then calls the model with retries, honouring the
    /// caller's token and deadline.
    pub async fn call(&self, spec: CallSpec<'_>) -> Result<CallOutcome, CallError> {
        if self.breaker.is_open() {
            self.breaker.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(CallError::Engine(EngineError::LlmUnavailable(
                "the circuit breaker is open after repeated failures".into(),
            )));
        }
        let Ticket { rx, queued_at } = spec.ticket;
        let deadline = tokio::time::Instant::from_std(spec.deadline);
        let permit = tokio::select! {
            p = rx => p.map_err(|_| CallError::Engine(EngineError::Internal("the LLM pool dropped a call".into())))?,
            _ = spec.cancel.cancelled() => return Err(CallError::Cancelled),
            _ = tokio::time::sleep_until(deadline) => return Err(CallError::Deadline),
        };
        let queue_time = queued_at.elapsed();
        let metrics = Metrics::get();
        metrics.llm_queue_wait.observe(queue_time.as_secs_f64());
        let started = Instant::now();
        let mut forwarded = false;
        let mut attempt = 0u32;
        let result = loop {
            if self.breaker.is_open() {
                break Err(LlmError::Unavailable(
                    "the circuit breaker is open after repeated failures".into(),
                ));
            }
            // Always streamed from Ollama, so that a failure mid-generation arrives as
            // the error line it is, and a plain caller's reply is assembled here.
            let call = async {
                let mut on_token = |piece: &str| {
                    if let Some(tx) = spec.tokens {
                        forwarded = true;
                        let _ = tx.send(piece.to_owned());
                    }
                };
                self.client.chat_stream(spec.request, &mut on_token).await
            };
            let outcome = tokio::select! {
                r = call => r,
                _ = spec.cancel.cancelled() => return Err(CallError::Cancelled),
                _ = tokio::time::sleep_until(deadline) => return Err(CallError::Deadline),
            };
            match outcome {
                Ok(reply) => {
                    self.breaker.success();
                    metrics.llm_requests.with_label_values(&["ok"]).inc();
                    break Ok(reply);
                }
                Err(e) => {
                    metrics
                        .llm_requests
                        .with_label_values(&[attempt_outcome(&e)])
                        .inc();
                    if e.counts_for_breaker() {
                        self.breaker.failure();
                    }
                    let may_retry = e.is_retryable()
                        && attempt < self.retries
                        && !forwarded
                        && !self.breaker.is_open();
                    if !may_retry {
                        break Err(e);
                    }
                    attempt += 1;
                    metrics.llm_retries.inc();
                    let backoff = retry_delay(attempt);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = spec.cancel.cancelled() => return Err(CallError::Cancelled),
                        _ = tokio::time::sleep_until(deadline) => return Err(CallError::Deadline),
                    }
                }
            }
        };
        drop(permit);
        let llm_time = started.elapsed();
        metrics.llm_duration.observe(llm_time.as_secs_f64());
        match result {
            Ok(reply) => {
                if let Some(n) = reply.prompt_tokens {
                    metrics.llm_tokens.with_label_values(&["prompt"]).inc_by(n);
                }
                if let Some(n) = reply.completion_tokens {
                    metrics
                        .llm_tokens
                        .with_label_values(&["completion"])
                        .inc_by(n);
                }
                Ok(CallOutcome {
                    reply,
                    llm_time,
                    queue_time,
                })
            }
            Err(e) => Err(CallError::Engine(self.map_error(e))),
        }
    }

    fn map_error(&self, e: LlmError) -> EngineError {
        match e {
            LlmError::Unavailable(m) => EngineError::LlmUnavailable(m),
            LlmError::Timeout => EngineError::LlmTimeout(self.request_timeout_secs),
            LlmError::Status { status, message } => {
                EngineError::LlmError(format!("status {status}: {message}"))
            }
            LlmError::Stream(m) => EngineError::LlmError(format!("error in the stream: {m}")),
            LlmError::Broken(m) => EngineError::LlmError(format!("the stream broke: {m}")),
            LlmError::Protocol(m) => EngineError::LlmError(format!("bad answer: {m}")),
        }
    }
}

/// The `botd_llm_requests_total` outcome of a failed attempt.
fn attempt_outcome(e: &LlmError) -> &'static str {
    match e {
        LlmError::Unavailable(_) => "unavailable",
        LlmError::Timeout => "timeout",
        LlmError::Status { status, .. } if *status >= 500 => "status_5xx",
        LlmError::Status { .. } => "status_4xx",
        LlmError::Stream(_) => "stream_error",
        LlmError::Broken(_) => "broken",
        LlmError::Protocol(_) => "protocol",
    }
}

/// 50 ms × 2^(attempt-1), ±20 %, at most 2 s.
fn retry_delay(attempt: u32) -> Duration {
    let base = 50.0 * 2f64.powi(attempt.saturating_sub(1).min(10) as i32);
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    Duration::from_millis((base * jitter).min(2000.0) as u64)
}
