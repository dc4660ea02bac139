//! `POST /api/chat` and `POST /api/generate`: scripted faults, the simulated generation,
//! and the streamed or whole answer.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::server::{self, Body, Cut};
use crate::{gojson, models, CallGuard, Gate, Reply, State};

/// Which endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Chat,
    Generate,
}

#[derive(Deserialize)]
struct MessageIn {
    role: Option<String>,
    content: Option<String>,
}

/// The fields of a chat or generate request the simulator reads (Go ignores the others,
/// and accepts `null` for any of them).
#[derive(Deserialize)]
struct CallIn {
    model: Option<String>,
    messages: Option<Vec<MessageIn>>,
    prompt: Option<String>,
    system: Option<String>,
    stream: Option<bool>,
    options: Option<serde_json::Map<String, serde_json::Value>>,
    keep_alive: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct MessageOut<'a> {
    role: &'a str,
    content: &'a str,
}

/// The counts and durations of a final object; Go omits the zero ones.
#[derive(Serialize, Default, Clone, Copy)]
struct Metrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    total_duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    load_duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_eval_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt_eval_duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_count: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_duration: Option<u64>,
}

#[derive(Serialize)]
struct ChatOut<'a> {
    model: &'a str,
    created_at: String,
    message: MessageOut<'a>,
    done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    done_reason: Option<&'a str>,
    #[serde(flatten)]
    metrics: Metrics,
}

#[derive(Serialize)]
struct GenerateOut<'a> {
    model: &'a str,
    created_at: String,
    response: &'a str,
    done: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    done_reason: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    context: Option<&'a [u32]>,
    #[serde(flatten)]
    metrics: Metrics,
}

/// Handles one chat or generate call.
pub(crate) async fn call(
    state: Arc<State>,
    kind: Kind,
    bytes: Bytes,
) -> Result<Response<Body>, Cut> {
    let mut guard = CallGuard::new(state.clone());

    // Scripted faults that come before anything else.
    enum Fault {
        Fail(u16, String),
        Hang,
    }
    let fault = {
        let mut s = state.script();
        if s.fail_left > 0 {
            s.fail_left -= 1;
            Some(Fault::Fail(s.fail_status, s.fail_message.clone()))
        } else if s.hang_left > 0 {
            s.hang_left -= 1;
            Some(Fault::Hang)
        } else {
            None
        }
    };
    match fault {
        Some(Fault::Fail(status, message)) => {
            guard.finish();
            return Ok(server::error(status, &message));
        }
        Some(Fault::Hang) => {
            // Held until hyper drops this future: the client closed, or the simulator
            // went down. The guard then counts it.
            std::future::pending::<()>().await;
            return Err(Cut);
        }
        None => {}
    }

    // The request, checked as Ollama checks it.
    if bytes.is_empty() {
        guard.finish();
        return Ok(server::error(400, "missing request body"));
    }
    let req: CallIn = match serde_json::from_slice(&bytes) {
        Ok(r) => r,
        Err(e) => {
            guard.finish();
            return Ok(server::error(400, &e.to_string()));
        }
    };
    let model = req.model.clone().unwrap_or_default();
    if model.is_empty() {
        guard.finish();
        return Ok(server::error(400, "model is required"));
    }
    let normalized = models::normalize(&model);

    let plan = {
        let mut s = state.script();
        if !s.accept_any_model && !s.models.iter().any(|m| m.name == normalized) {
            drop(s);
            guard.finish();
            return Ok(server::error(404, &format!("model '{model}' not found")));
        }
        if s.fail_rate > 0.0 && rand::thread_rng().gen_bool(s.fail_rate) {
            let status = s.fail_rate_status;
            drop(s);
            guard.finish();
            let message = if status == 503 {
                "server busy, please try again.  maximum pending requests exceeded"
            } else {
                "simulated failure"
            };
            return Ok(server::error(status, message));
        }
        match keep_alive(req.keep_alive.as_ref()) {
            Some(d) if d.is_zero() => {
                s.loaded.remove(&normalized);
            }
            d => {
                let d = d.unwrap_or(Duration::from_secs(300));
                let expires = chrono::Utc::now()
                    + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(3650));
                s.loaded.insert(normalized, expires);
            }
        }
        Plan::new(&s, &state.gate, kind, model, &req)
    };

    let Some(plan) = plan else {
        // Nothing to generate from: Ollama just loads the model and says so.
        guard.finish();
        return Ok(load_answer(kind, req.model.as_deref().unwrap_or_default()));
    };

    let mut gen = Generation::new(plan);
    if req.stream.unwrap_or(true) {
        stream_answer(gen, guard).await
    } else {
        let mut content = String::new();
        loop {
            match gen.advance().await {
                Step::Piece(p) => content.push_str(&p),
                Step::Done => {
                    let body = gen.final_line(&content, false);
                    let chunk = gen.plan.chunk_bytes;
                    guard.finish();
                    return Ok(match chunk {
                        None => server::json_bytes(StatusCode::OK, body.into()),
                        Some(n) => {
                            let mut pending = VecDeque::new();
                            push_chunks(&mut pending, body, Some(n));
                            server::json_body(StatusCode::OK, chunks_body(pending))
                        }
                    });
                }
                Step::Error(m) => {
                    guard.finish();
                    return Ok(server::error(500, &m));
                }
                Step::Break => {
                    guard.cut();
                    return Err(Cut);
                }
            }
        }
    }
}

/// Parses Ollama's `keep_alive`: a Go duration string (`"5m"`, `"1h30m"`, `"10s"`), a
/// number of seconds, negative for "forever". `None` when absent or unreadable.
fn keep_alive(v: Option<&serde_json::Value>) -> Option<Duration> {
    const FOREVER: Duration = Duration::from_secs(10 * 365 * 86_400);
    match v? {
        serde_json::Value::Number(n) => {
            let secs = n.as_f64()?;
            Some(if secs < 0.0 {
                FOREVER
            } else {
                Duration::from_secs_f64(secs)
            })
        }
        serde_json::Value::String(s) => {
            let s = s.trim();
            if s.starts_with('-') {
                return Some(FOREVER);
            }
            if let Ok(secs) = s.parse::<f64>() {
                return Some(Duration::from_secs_f64(secs));
            }
            let mut total = 0.0;
            let mut num = String::new();
            let mut chars = s.chars().peekable();
            while let Some(c) = chars.next() {
                if c.is_ascii_digit() || c == '.' {
                    num.push(c);
                    continue;
                }
                let mut unit = c.to_string();
                if c == 'm' && chars.peek() == Some(&'s') {
                    unit.push('s');
                    chars.next();
                }
                let n: f64 = num.parse().ok()?;
                num.clear();
                total += n * match unit.as_str() {
                    "h" => 3600.0,
                    "m" => 60.0,
                    "s" => 1.0,
                    "ms" => 0.001,
                    _ => return None,
                };
            }
            if !num.is_empty() {
                return None;
            }
            Some(Duration::from_secs_f64(total))
        }
        _ => None,
    }
}

/// The answer to a call with no messages (chat) or an empty prompt (generate).
fn load_answer(kind: Kind, model: &str) -> Response<Body> {
    let bytes = match kind {
        Kind::Chat => gojson::to_vec(&ChatOut {
            model,
            created_at: gojson::now(),
            message: MessageOut {
                role: "assistant",
                content: "",
            },
            done: true,
            done_reason: Some("load"),
            metrics: Metrics::default(),
        }),
        Kind::Generate => gojson::to_vec(&GenerateOut {
            model,
            created_at: gojson::now(),
            response: "",
            done: true,
            done_reason: Some("load"),
            context: None,
            metrics: Metrics::default(),
        }),
    };
    server::json_bytes(StatusCode::OK, bytes.into())
}

/// Everything one call does, fixed when it starts.
struct Plan {
    kind: Kind,
    /// The model as the request named it (Ollama echoes it as given).
    model: String,
    pieces: VecDeque<String>,
    done_reason: &'static str,
    prompt_tokens: u64,
    latency: Duration,
    token_delay: Duration,
    break_after: Option<usize>,
    error_after: Option<(usize, String)>,
    chunk_bytes: Option<usize>,
    gate: Gate,
}

impl Plan {
    /// `None` when there is nothing to answer (a load request).
    fn new(
        s: &crate::Script,
        gate: &Gate,
        kind: Kind,
        model: String,
        req: &CallIn,
    ) -> Option<Plan> {
        let (input, prompt_chars) = match kind {
            Kind::Chat => {
                let messages = req.messages.as_deref().unwrap_or_default();
                if messages.is_empty() {
                    return None;
                }
                let last_user = messages
                    .iter()
                    .rev()
                    .find(|m| m.role.as_deref() == Some("user"))
                    .and_then(|m| m.content.as_deref())
                    .unwrap_or_default();
                let chars: usize = messages
                    .iter()
                    .map(|m| m.content.as_deref().unwrap_or_default().chars().count() + 16)
                    .sum();
                (last_user, chars)
            }
            Kind::Generate => {
                let prompt = req.prompt.as_deref().unwrap_or_default();
                if prompt.is_empty() {
                    return None;
                }
                let system = req.system.as_deref().unwrap_or_default();
                (prompt, prompt.chars().count() + system.chars().count() + 16)
            }
        };
        let mut pieces: VecDeque<String> = match &s.reply {
            Reply::Echo => cut(&format!("echo: {input}"), s.piece_chars),
            Reply::Fixed(text) => cut(text, s.piece_chars),
            Reply::Pieces(p) => p.iter().cloned().collect(),
        };
        let mut done_reason = "stop";
        let limit = req
            .options
            .as_ref()
            .and_then(|o| o.get("num_predict"))
            .and_then(|v| v.as_i64());
        if let Some(limit) = limit {
            if let Ok(limit) = usize::try_from(limit) {
                if pieces.len() > limit {
                    pieces.truncate(limit);
                    done_reason = "length";
                }
            }
        }
        Some(Plan {
            kind,
            model,
            pieces,
            done_reason,
            prompt_tokens: (prompt_chars as u64).div_ceil(4).max(1),
            latency: s.latency,
            token_delay: s.token_delay,
            break_after: s.break_after,
            error_after: s.error_after.clone(),
            chunk_bytes: s.chunk_bytes,
            gate: gate.clone(),
        })
    }
}

/// Cuts `text` into pieces of `n` characters.
fn cut(text: &str, n: usize) -> VecDeque<String> {
    let mut pieces = VecDeque::new();
    let mut piece = String::new();
    let mut count = 0;
    for c in text.chars() {
        piece.push(c);
        count += 1;
        if count == n {
            pieces.push_back(std::mem::take(&mut piece));
            count = 0;
        }
    }
    if !piece.is_empty() {
        pieces.push_back(piece);
    }
    pieces
}

/// What a call produces next.
enum Step {
    Piece(String),
    Done,
    Error(String),
    Break,
}

/// The simulated generation of one call.
struct Generation {
    plan: Plan,
    /// Pieces produced so far.
    sent: usize,
    started: Instant,
    first_piece: Option<Instant>,
}

impl Generation {
    fn new(plan: Plan) -> Generation {
        Generation {
            plan,
            sent: 0,
            started: Instant::now(),
            first_piece: None,
        }
    }

    /// Waits as scripted, then produces the next step. After `Done`, `Error` or `Break`
    /// it must not be called again.
    async fn advance(&mut self) -> Step {
        let point = self.sent;
        self.plan.gate.pass(point).await;
        let more = !self.plan.pieces.is_empty();
        let wait = if point == 0 {
            self.plan.latency
        } else if more {
            self.plan.token_delay
        } else {
            Duration::ZERO
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        if self.plan.break_after == Some(point) {
            return Step::Break;
        }
        if let Some((k, message)) = &self.plan.error_after {
            if *k == point {
                return Step::Error(message.clone());
            }
        }
        match self.plan.pieces.pop_front() {
            Some(piece) => {
                self.sent += 1;
                self.first_piece.get_or_insert_with(Instant::now);
                Step::Piece(piece)
            }
            None => Step::Done,
        }
    }

    fn piece_line(&self, piece: &str) -> Vec<u8> {
        match self.plan.kind {
            Kind::Chat => gojson::to_line(&ChatOut {
                model: &self.plan.model,
                created_at: gojson::now(),
                message: MessageOut {
                    role: "assistant",
                    content: piece,
                },
                done: false,
                done_reason: None,
                metrics: Metrics::default(),
            }),
            Kind::Generate => gojson::to_line(&GenerateOut {
                model: &self.plan.model,
                created_at: gojson::now(),
                response: piece,
                done: false,
                done_reason: None,
                context: None,
                metrics: Metrics::default(),
            }),
        }
    }

    fn metrics(&self) -> Metrics {
        let now = Instant::now();
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        let first = self.first_piece.unwrap_or(now);
        let load = 1_000_000;
        let prompt_eval = ns(first - self.started);
        let eval = ns(now - first);
        let total = ns(now - self.started).max(load + prompt_eval + eval);
        Metrics {
            total_duration: Some(total),
            load_duration: Some(load),
            prompt_eval_count: Some(self.plan.prompt_tokens),
            prompt_eval_duration: Some(prompt_eval),
            eval_count: Some(self.sent as u64),
            eval_duration: Some(eval),
        }
    }

    /// The final object; `content` is the whole reply for a non-streamed answer and
    /// empty for a stream.
    fn final_line(&self, content: &str, newline: bool) -> Vec<u8> {
        let context: Vec<u32>;
        let mut out = match self.plan.kind {
            Kind::Chat => gojson::to_vec(&ChatOut {
                model: &self.plan.model,
                created_at: gojson::now(),
                message: MessageOut {
                    role: "assistant",
                    content,
                },
                done: true,
                done_reason: Some(self.plan.done_reason),
                metrics: self.metrics(),
            }),
            Kind::Generate => {
                let n = self.plan.prompt_tokens + self.sent as u64;
                context = (0..n.min(4096))
                    .map(|i| 1 + (i as u32 * 7919) % 32000)
                    .collect();
                gojson::to_vec(&GenerateOut {
                    model: &self.plan.model,
                    created_at: gojson::now(),
                    response: content,
                    done: true,
                    done_reason: Some(self.plan.done_reason),
                    context: Some(&context),
                    metrics: self.metrics(),
                })
            }
        };
        if newline {
            out.push(b'\n');
        }
        out
    }
}

/// Queues `line` as one chunk, or as chunks of `n` bytes.
fn push_chunks(pending: &mut VecDeque<Bytes>, line: Vec<u8>, n: Option<usize>) {
    let line = Bytes::from(line);
    match n {
        None => pending.push_back(line),
        Some(n) => {
            let mut at = 0;
            while at < line.len() {
                let end = (at + n).min(line.len());
                pending.push_back(line.slice(at..end));
                at = end;
            }
        }
    }
}

/// A body of chunks already made.
fn chunks_body(pending: VecDeque<Bytes>) -> Body {
    let stream = futures::stream::iter(pending.into_iter().map(|b| Ok(Frame::data(b))));
    StreamBody::new(Paced::new(Box::pin(stream))).boxed_unsync()
}

/// A streamed answer in progress; owns the call's guard, so that a client that goes
/// away (hyper drops the body) is counted.
struct Streaming {
    gen: Generation,
    guard: CallGuard,
    pending: VecDeque<Bytes>,
    ended: bool,
}

impl Streaming {
    fn push(&mut self, step: Step) {
        let chunk = self.gen.plan.chunk_bytes;
        match step {
            Step::Piece(p) => {
                let line = self.gen.piece_line(&p);
                push_chunks(&mut self.pending, line, chunk);
            }
            Step::Done => {
                let line = self.gen.final_line("", true);
                push_chunks(&mut self.pending, line, chunk);
                self.ended = true;
            }
            Step::Error(m) => {
                let line = gojson::to_line(&serde_json::json!({ "error": m }));
                push_chunks(&mut self.pending, line, chunk);
                self.ended = true;
            }
            Step::Break => {}
        }
    }
}

/// Streams the answer; the status and headers go out with the first line, as Ollama
/// sends them with its first write.
async fn stream_answer(mut gen: Generation, mut guard: CallGuard) -> Result<Response<Body>, Cut> {
    let chunked = gen.plan.chunk_bytes.is_some();
    let first = gen.advance().await;
    if let Step::Break = first {
        guard.cut();
        return Err(Cut);
    }
    let mut st = Streaming {
        gen,
        guard,
        pending: VecDeque::new(),
        ended: false,
    };
    st.push(first);
    let frames = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(b) = st.pending.pop_front() {
                return Some((Ok(Frame::data(b)), st));
            }
            if st.ended {
                st.guard.finish();
                return None;
            }
            match st.gen.advance().await {
                Step::Break => {
                    // Lets hyper find the body not ready and flush the pieces sent so
                    // far: it drops what it still buffers when the body fails.
                    tokio::task::yield_now().await;
                    st.guard.cut();
                    st.ended = true;
                    // An error frame makes hyper drop the connection mid-body.
                    let cut = std::io::Error::new(std::io::ErrorKind::ConnectionAborted, Cut);
                    return Some((Err(cut), st));
                }
                step => st.push(step),
            }
        }
    });
    let body = if chunked {
        StreamBody::new(Paced::new(Box::pin(frames))).boxed_unsync()
    } else {
        // Whole lines: hyper writes what is ready together, as a network would deliver it.
        StreamBody::new(frames).boxed_unsync()
    };
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    Ok(resp)
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send>>;

/// Returns `Pending` once (waking itself) before every frame, so that hyper finds the
/// body not ready, flushes what it has, and writes every frame with its own write.
struct Paced {
    inner: FrameStream,
    yielded: bool,
}

impl Paced {
    fn new(inner: FrameStream) -> Paced {
        Paced {
            inner,
            yielded: false,
        }
    }
}

impl Stream for Paced {
    type Item = Result<Frame<Bytes>, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if !self.yielded {
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let next = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(_)) = next {
            self.yielded = false;
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_by_chars() {
        let p: Vec<_> = cut("héllo → 世界 🎉", 4).into_iter().collect();
        assert_eq!(p, ["héll", "o → ", "世界 🎉"]);
        assert_eq!(cut("", 4).len(), 0);
        assert_eq!(cut("ab", 1).len(), 2);
    }

    #[test]
    fn keep_alive_durations() {
        let j = |s: &str| keep_alive(Some(&serde_json::json!(s)));
        assert_eq!(j("5m"), Some(Duration::from_secs(300)));
        assert_eq!(j("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(j("10s"), Some(Duration::from_secs(10)));
        assert_eq!(j("0"), Some(Duration::ZERO));
        assert_eq!(j("500ms"), Some(Duration::from_millis(500)));
        assert!(j("-1").is_some_and(|d| d > Duration::from_secs(86_400)));
        assert_eq!(j("bogus"), None);
        assert_eq!(
            keep_alive(Some(&serde_json::json!(60))),
            Some(Duration::from_secs(60))
        );
        assert_eq!(keep_alive(None), None);
    }
}
