//! A simulator of the Ollama HTTP protocol with scripted faults, for botd's tests and
//! benchmarks.
//!
//! It speaks the protocol described in `design/OLLAMA.md`: Go-style JSON (`<`, `>`, `&`
//! escaped), `created_at` with nanoseconds, NDJSON streaming (`application/x-ndjson`) by
//! default, a final object with the counts and durations, `{"error": …}` bodies with
//! Ollama's statuses. Endpoints: `POST /api/chat`, `POST /api/generate`, `GET /api/tags`,
//! `GET /api/version`, `POST /api/show`, `GET /api/ps` and `GET /`.
//!
//! Tests start it in-process on a random port and script its behaviour at any time:
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use ollama_sim::{Reply, Simulator};
//! let sim = Simulator::start().await?;
//! sim.set_reply(Reply::Fixed("héllo → 世界 🎉".into()));
//! sim.set_chunk_bytes(Some(1)); // every line goes out one byte at a time
//! let gate = sim.gate();
//! gate.close(); // calls now wait before their first token
//! // … start calls against sim.url() …
//! sim.wait_for(std::time::Duration::from_secs(5), |s| s.gate().waiting() == 3).await;
//! gate.open();
//! # Ok(()) }
//! ```
//!
//! Faults are deterministic (fail the next N calls, hang, gate, break or send an error
//! line after N pieces, chunk lines into N-byte writes, go down and come back on the same
//! port); [`Simulator::set_fail_rate`] is random and meant for benchmarks only.

mod generate;
pub mod gojson;
mod models;
mod server;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, watch, Notify};

pub use models::normalize as normalize_model_name;

/// The version `GET /api/version` reports.
pub const VERSION: &str = "0.12.0";

/// The models the simulator knows when started.
pub const DEFAULT_MODELS: [&str; 2] = ["mistral:latest", "llama3:latest"];

/// What the simulated model answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `"echo: "` followed by the content of the last `user` message (chat) or the prompt
    /// (generate). The default.
    Echo,
    /// Always this text, cut into pieces of [`Simulator::set_piece_chars`] characters.
    Fixed(String),
    /// Exactly these pieces, one per streamed object (the piece size is ignored).
    Pieces(Vec<String>),
}

/// One HTTP request the simulator received.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// `GET`, `POST`, …
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The body parsed as JSON, or `Null` when it is empty or not JSON.
    pub body: serde_json::Value,
    /// When the request's body had been read.
    pub received: Instant,
}

/// The scripted behaviour, read by every call when it starts.
#[derive(Debug)]
struct Script {
    reply: Reply,
    latency: Duration,
    token_delay: Duration,
    piece_chars: usize,
    fail_left: usize,
    fail_status: u16,
    fail_message: String,
    hang_left: usize,
    break_after: Option<usize>,
    error_after: Option<(usize, String)>,
    chunk_bytes: Option<usize>,
    fail_rate: f64,
    fail_rate_status: u16,
    models: Vec<models::Model>,
    accept_any_model: bool,
    /// Models "loaded in memory", with when they expire (for `/api/ps`).
    loaded: HashMap<String, chrono::DateTime<chrono::Utc>>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            reply: Reply::Echo,
            latency: Duration::ZERO,
            token_delay: Duration::ZERO,
            piece_chars: 4,
            fail_left: 0,
            fail_status: 500,
            fail_message: String::new(),
            hang_left: 0,
            break_after: None,
            error_after: None,
            chunk_bytes: None,
            fail_rate: 0.0,
            fail_rate_status: 500,
            models: DEFAULT_MODELS
                .iter()
                .map(|m| models::Model::named(m))
                .collect(),
            accept_any_model: false,
            loaded: HashMap::new(),
        }
    }
}

/// What the connection tasks share.
struct State {
    script: Mutex<Script>,
    records: Mutex<Vec<RecordedRequest>>,
    in_flight: AtomicUsize,
    peak_in_flight: AtomicUsize,
    client_closed: AtomicUsize,
    completed: AtomicUsize,
    connections: AtomicUsize,
    /// Set while the simulator is going down, so that the connections it drops itself are
    /// not counted as closed by their clients.
    going_down: AtomicBool,
    /// Woken on every observable change, for [`Simulator::wait_for`].
    changed: Arc<Notify>,
    gate: Gate,
    started_at: String,
}

impl State {
    fn script(&self) -> MutexGuard<'_, Script> {
        self.script.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn records(&self) -> MutexGuard<'_, Vec<RecordedRequest>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.changed.notify_waiters();
    }
}

/// A running accept loop.
struct Running {
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// Owned by the [`Simulator`] handles; dropping the last one stops the server.
struct Shared {
    state: Arc<State>,
    addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

impl Shared {
    fn running(&self) -> MutexGuard<'_, Option<Running>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Dropping the stop sender ends the accept loop, which drops its connections.
        self.running().take();
    }
}

/// An in-process Ollama simulator. Cheap to clone; the server stops when the last clone
/// is dropped (or at [`Simulator::down`]).
#[derive(Clone)]
pub struct Simulator {
    shared: Arc<Shared>,
}

impl Simulator {
    /// Starts a simulator on `127.0.0.1` on a free port.
    pub async fn start() -> std::io::Result<Simulator> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a simulator listening on `addr` (port 0 picks a free port).
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<Simulator> {
        let listener = server::bind(addr)?;
        let addr = listener.local_addr()?;
        let changed = Arc::new(Notify::new());
        let state = Arc::new(State {
            script: Mutex::new(Script::default()),
            records: Mutex::new(Vec::new()),
            in_flight: AtomicUsize::new(0),
            peak_in_flight: AtomicUsize::new(0),
            client_closed: AtomicUsize::new(0),
            completed: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            going_down: AtomicBool::new(false),
            gate: Gate::new(changed.clone()),
            changed,
            started_at: gojson::now(),
        });
        let sim = Simulator {
            shared: Arc::new(Shared {
                state: state.clone(),
                addr,
                running: Mutex::new(None),
            }),
        };
        *sim.shared.running() = Some(server::spawn(listener, state));
        Ok(sim)
    }

    fn state(&self) -> &State {
        &self.shared.state
    }

    /// The address it listens on (the same across [`down`](Self::down) and
    /// [`up`](Self::up)).
    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// The base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    // ----- scripted behaviour -----

    /// Sets what the model answers (default [`Reply::Echo`]).
    pub fn set_reply(&self, reply: Reply) {
        self.state().script().reply = reply;
    }

    /// Sets the wait before the first piece of every call (default none).
    pub fn set_latency(&self, d: Duration) {
        self.state().script().latency = d;
    }

    /// Sets the wait between two pieces (default none).
    pub fn set_token_delay(&self, d: Duration) {
        self.state().script().token_delay = d;
    }

    /// Sets how many characters make one piece (default 4, at least 1). Pieces are cut
    /// between characters, never inside one.
    pub fn set_piece_chars(&self, n: usize) {
        self.state().script().piece_chars = n.max(1);
    }

    /// The next `n` chat/generate calls answer `status` with `{"error": message}`.
    pub fn fail_next(&self, n: usize, status: u16, message: &str) {
        let mut s = self.state().script();
        s.fail_left = n;
        s.fail_status = status;
        s.fail_message = message.to_owned();
    }

    /// The next `n` chat/generate calls are read and never answered, until their client
    /// closes the connection (or the simulator goes down).
    pub fn hang_next(&self, n: usize) {
        self.state().script().hang_left = n;
    }

    /// The simulator's gate (one per simulator), to hold calls until the test releases
    /// them.
    pub fn gate(&self) -> Gate {
        self.state().gate.clone()
    }

    /// Calls starting from now cut their connection after `n` pieces, without a final
    /// object (`n = 0`: before any answer). `None` turns it off.
    pub fn break_after_tokens(&self, n: Option<usize>) {
        self.state().script().break_after = n;
    }

    /// Calls starting from now send `{"error": message}` after `n` pieces instead of
    /// finishing (a non-streamed call answers 500 with it). `None` turns it off.
    pub fn error_after_tokens(&self, n: Option<usize>, message: &str) {
        self.state().script().error_after = n.map(|n| (n, message.to_owned()));
    }

    /// Cuts every written line (or non-streamed body) into chunks of `n` bytes, each sent
    /// as its own HTTP chunk and flushed with its own write, so that chunks end inside
    /// multi-byte characters. `None` (the default) writes whole lines, one HTTP chunk
    /// each; lines ready at the same moment (no token delay) may share a write.
    pub fn set_chunk_bytes(&self, n: Option<usize>) {
        self.state().script().chunk_bytes = n.map(|n| n.max(1));
    }

    /// Fails each chat/generate call with probability `p` with `status` (503 uses
    /// Ollama's "server busy" message). Random: for benchmarks, never for tests.
    pub fn set_fail_rate(&self, p: f64, status: u16) {
        let mut s = self.state().script();
        s.fail_rate = p.clamp(0.0, 1.0);
        s.fail_rate_status = status;
    }

    /// Replaces the known models (names without a tag get `:latest`).
    pub fn set_models(&self, names: &[&str]) {
        self.state().script().models = names.iter().map(|m| models::Model::named(m)).collect();
    }

    /// Adds a known model, if not already known.
    pub fn add_model(&self, name: &str) {
        let model = models::Model::named(name);
        let mut s = self.state().script();
        if !s.models.iter().any(|m| m.name == model.name) {
            s.models.push(model);
        }
    }

    /// When on, chat/generate/show accept any model name (for benchmarks).
    pub fn set_accept_any_model(&self, on: bool) {
        self.state().script().accept_any_model = on;
    }

    /// Stops listening and drops every open connection; returns once they are gone.
    pub async fn down(&self) {
        let running = self.shared.running().take();
        if let Some(running) = running {
            self.state().going_down.store(true, Ordering::SeqCst);
            let _ = running.stop.send(());
            let _ = running.task.await;
            self.state().going_down.store(false, Ordering::SeqCst);
            self.state().changed();
        }
    }

    /// Listens again, on the same address. Does nothing when already up.
    pub async fn up(&self) -> std::io::Result<()> {
        if self.is_up() {
            return Ok(());
        }
        let listener = server::bind(self.shared.addr)?;
        let mut running = self.shared.running();
        if running.is_none() {
            *running = Some(server::spawn(listener, self.shared.state.clone()));
        }
        drop(running);
        self.state().changed();
        Ok(())
    }

    /// Whether it is listening.
    pub fn is_up(&self) -> bool {
        self.shared.running().is_some()
    }

    // ----- what it saw -----

    /// Every request received, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state().records().clone()
    }

    /// The bodies of the `POST /api/chat` requests, in arrival order.
    pub fn chat_requests(&self) -> Vec<serde_json::Value> {
        self.bodies("/api/chat")
    }

    /// The bodies of the `POST /api/generate` requests, in arrival order.
    pub fn generate_requests(&self) -> Vec<serde_json::Value> {
        self.bodies("/api/generate")
    }

    fn bodies(&self, path: &str) -> Vec<serde_json::Value> {
        self.state()
            .records()
            .iter()
            .filter(|r| r.method == "POST" && r.path == path)
            .map(|r| r.body.clone())
            .collect()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.state().records().clear();
    }

    /// Chat/generate calls being handled now (from reading the request until the last
    /// byte of the answer was handed to the connection).
    pub fn in_flight(&self) -> usize {
        self.state().in_flight.load(Ordering::SeqCst)
    }

    /// The most chat/generate calls in flight at once since start or
    /// [`reset_peak`](Self::reset_peak).
    pub fn peak_in_flight(&self) -> usize {
        self.state().peak_in_flight.load(Ordering::SeqCst)
    }

    /// Resets [`peak_in_flight`](Self::peak_in_flight) to the number in flight now.
    pub fn reset_peak(&self) {
        let now = self.in_flight();
        self.state().peak_in_flight.store(now, Ordering::SeqCst);
    }

    /// Chat/generate calls whose client closed the connection before the answer was
    /// finished (Ollama's 499). Connections the simulator cuts itself do not count.
    pub fn client_closed(&self) -> usize {
        self.state().client_closed.load(Ordering::SeqCst)
    }

    /// Chat/generate calls answered to the end (including scripted error answers and
    /// error lines; not breaks, hangs or calls their client abandoned).
    pub fn completed(&self) -> usize {
        self.state().completed.load(Ordering::SeqCst)
    }

    /// TCP connections accepted since start (a client that reuses its connections opens
    /// few).
    pub fn connections_accepted(&self) -> usize {
        self.state().connections.load(Ordering::SeqCst)
    }

    /// Waits until `f` holds or `deadline` has passed; returns whether it held. Wakes on
    /// every change the simulator makes (requests, calls starting and ending, gate
    /// arrivals) and re-checks at least every 20 ms for anything else.
    pub async fn wait_for<F: Fn(&Simulator) -> bool>(&self, deadline: Duration, f: F) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let notified = self.state().changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if f(self) {
                return true;
            }
            let now = tokio::time::Instant::now();
            if now >= until {
                return false;
            }
            let tick = (until - now).min(Duration::from_millis(20));
            let _ = tokio::time::timeout(tick, notified).await;
        }
    }
}

/// Where calls are held; see [`Simulator::gate`].
///
/// A closed gate holds every call that reaches its point: before the first piece
/// ([`close`](Gate::close)) or after `k` pieces ([`close_after_tokens`](Gate::close_after_tokens)).
/// Calls already past the point go on. [`open`](Gate::open) releases every held call.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

struct GateInner {
    state: watch::Sender<GateState>,
    waiting: AtomicUsize,
    changed: Arc<Notify>,
}

#[derive(Debug, Clone, Copy, Default)]
struct GateState {
    /// The point calls are held at, in pieces sent; `None` when open.
    closed_at: Option<usize>,
    /// Incremented by every `open`, which releases the calls held before it.
    opened: u64,
}

impl Gate {
    fn new(changed: Arc<Notify>) -> Gate {
        Gate {
            inner: Arc::new(GateInner {
                state: watch::Sender::new(GateState::default()),
                waiting: AtomicUsize::new(0),
                changed,
            }),
        }
    }

    /// Holds calls before their first piece (and before their answer's headers).
    pub fn close(&self) {
        self.close_after_tokens(0);
    }

    /// Holds calls once they have sent `k` pieces.
    pub fn close_after_tokens(&self, k: usize) {
        self.inner.state.send_modify(|s| s.closed_at = Some(k));
    }

    /// Opens the gate and releases every held call.
    pub fn open(&self) {
        self.inner.state.send_modify(|s| {
            s.closed_at = None;
            s.opened += 1;
        });
    }

    /// Whether the gate is closed.
    pub fn is_closed(&self) -> bool {
        self.inner.state.borrow().closed_at.is_some()
    }

    /// How many calls are held at the gate now.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }

    /// Holds the caller if the gate is closed at `point` (pieces sent so far).
    async fn pass(&self, point: usize) {
        let mut rx = self.inner.state.subscribe();
        let opened = {
            let s = rx.borrow_and_update();
            if s.closed_at != Some(point) {
                return;
            }
            s.opened
        };
        struct Waiting<'a>(&'a GateInner);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.waiting.fetch_sub(1, Ordering::SeqCst);
                self.0.changed.notify_waiters();
            }
        }
        self.inner.waiting.fetch_add(1, Ordering::SeqCst);
        self.inner.changed.notify_waiters();
        let _waiting = Waiting(&self.inner);
        // The sender lives as long as this gate, so `wait_for` cannot fail here.
        let _ = rx.wait_for(|s| s.opened != opened).await;
    }
}

/// Accounting of one chat/generate call: in flight while it lives; counted as closed by
/// the client when dropped before it was finished.
struct CallGuard {
    state: Arc<State>,
    open: bool,
}

impl CallGuard {
    fn new(state: Arc<State>) -> CallGuard {
        let n = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        state.peak_in_flight.fetch_max(n, Ordering::SeqCst);
        state.changed();
        CallGuard { state, open: true }
    }

    /// The answer was handed over in full.
    fn finish(&mut self) {
        if std::mem::replace(&mut self.open, false) {
            self.state.completed.fetch_add(1, Ordering::SeqCst);
            self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.state.changed();
        }
    }

    /// The simulator cut the call itself (a scripted break).
    fn cut(&mut self) {
        if std::mem::replace(&mut self.open, false) {
            self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.state.changed();
        }
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if std::mem::replace(&mut self.open, false) {
            if !self.state.going_down.load(Ordering::SeqCst) {
                self.state.client_closed.fetch_add(1, Ordering::SeqCst);
            }
            self.state.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.state.changed();
        }
    }
}
