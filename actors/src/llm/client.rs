//! botd's own Ollama chat client, on reqwest.
//!
//! Not ollama-rs for chat (ARCHITECTURE.md, "Sharp edges"): ollama-rs decodes UTF-8 per
//! network chunk and drops chunks that split a character, skips a mid-stream
//! `{"error": …}` line, loses the status of a non-2xx answer, has no timeout and drops
//! unknown option keys. This client decodes complete lines only ([`super::ndjson`]),
//! surfaces every failure as the [`LlmError`] the pool and the HTTP layer need, bounds the
//! whole call by `llm.request_timeout`, and passes `options` through untouched.
//! ollama-rs is only used for [`OllamaClient::model_exists`].

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use reqwest::Url;
use serde::{Deserialize, Serialize};

use super::ndjson::{LineDecoder, MAX_LINE_BYTES};

/// Errors of one model call, as the pool and the HTTP layer need to tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// Ollama could not be reached: connection refused, connect timeout, DNS.
    /// 503 `llm_unavailable`; retryable.
    #[error("Ollama is unavailable: {0}")]
    Unavailable(String),
    /// `llm.request_timeout` passed before the reply was complete. 504 `llm_timeout`;
    /// not retried.
    #[error("the model call timed out")]
    Timeout,
    /// A non-2xx answer, with the message of its `{"error": …}` body. 502 `llm_error`;
    /// retryable when 5xx, never when 4xx.
    #[error("Ollama answered {status}: {message}")]
    Status {
        /// The HTTP status.
        status: u16,
        /// The `error` of the body, or the body as text, or the status's reason.
        message: String,
    },
    /// An `{"error": …}` line in the middle of a stream. 502 `llm_error`.
    #[error("Ollama failed mid-stream: {0}")]
    Stream(String),
    /// The connection broke (mid-body, or before an answer), or the stream ended without
    /// its final object. 502 `llm_error`; retryable only before the first token was
    /// forwarded (the pool's decision).
    #[error("the connection to Ollama broke: {0}")]
    Broken(String),
    /// An answer that is not JSON of the expected shape (or a configuration that cannot
    /// make a request, such as an invalid URL). 502 `llm_error`.
    #[error("unexpected answer from Ollama: {0}")]
    Protocol(String),
}

impl LlmError {
    /// Whether another attempt may succeed: [`Unavailable`](Self::Unavailable),
    /// [`Broken`](Self::Broken) and 5xx [`Status`](Self::Status).
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Unavailable(_) | LlmError::Broken(_) => true,
            LlmError::Status { status, .. } => *status >= 500,
            LlmError::Timeout | LlmError::Stream(_) | LlmError::Protocol(_) => false,
        }
    }

    /// Whether the failure says something about Ollama's health, for the circuit
    /// breaker: connection failures ([`Unavailable`](Self::Unavailable),
    /// [`Broken`](Self::Broken)) and 5xx answers.
    pub fn counts_for_breaker(&self) -> bool {
        match self {
            LlmError::Unavailable(_) | LlmError::Broken(_) => true,
            LlmError::Status { status, .. } => *status >= 500,
            LlmError::Timeout | LlmError::Stream(_) | LlmError::Protocol(_) => false,
        }
    }
}

/// One message of a conversation, as Ollama's `messages` carry it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// One chat call.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model, e.g. `mistral` (Ollama reads it as `mistral:latest`).
    pub model: String,
    /// The conversation, oldest first, the new user message last.
    pub messages: Vec<ChatMessage>,
    /// Model parameters, sent as `options` exactly as given (omitted when empty).
    #[serde(default)]
    pub options: serde_json::Map<String, serde_json::Value>,
    /// How long Ollama keeps the model loaded after the call (`"5m"`); Ollama's default
    /// when `None`.
    #[serde(default)]
    pub keep_alive: Option<String>,
}

/// The model's whole reply and what Ollama reported about it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChatReply {
    /// The whole reply text.
    pub content: String,
    /// `prompt_eval_count`.
    pub prompt_tokens: Option<u64>,
    /// `eval_count`.
    pub completion_tokens: Option<u64>,
    /// `stop`, `length`, `load` or `unload`.
    pub done_reason: Option<String>,
    /// `total_duration`, in nanoseconds.
    pub total_duration_ns: Option<u64>,
}

/// The request body, borrowed from a [`ChatRequest`].
#[derive(Serialize)]
struct WireRequest<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    stream: bool,
    #[serde(skip_serializing_if = "map_is_empty")]
    options: &'a serde_json::Map<String, serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    keep_alive: Option<&'a str>,
}

fn map_is_empty(m: &&serde_json::Map<String, serde_json::Value>) -> bool {
    m.is_empty()
}

/// One object of a chat answer (a piece, the final object, or an error).
#[derive(Deserialize)]
struct WireChunk<'a> {
    #[serde(borrow, default)]
    message: Option<WireMessage<'a>>,
    #[serde(default)]
    done: Option<bool>,
    #[serde(default)]
    done_reason: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    prompt_eval_count: Option<u64>,
    #[serde(default)]
    eval_count: Option<u64>,
    #[serde(default)]
    total_duration: Option<u64>,
}

#[derive(Deserialize)]
struct WireMessage<'a> {
    /// Borrowed from the line unless it holds escapes.
    #[serde(borrow, default)]
    content: Cow<'a, str>,
}

#[derive(Deserialize)]
struct WireError {
    error: String,
}

#[derive(Deserialize)]
struct WireVersion {
    version: String,
}

/// Folds the lines of a streamed chat answer into the reply, passing each piece on.
#[derive(Debug, Default)]
pub(crate) struct ChatStream {
    reply: ChatReply,
    done: bool,
}

impl ChatStream {
    pub(crate) fn new() -> Self {
        Self {
            reply: ChatReply {
                content: String::with_capacity(256),
                ..ChatReply::default()
            },
            done: false,
        }
    }

    /// Takes one line; returns whether it was the final object.
    pub(crate) fn line(
        &mut self,
        line: &str,
        on_token: &mut dyn FnMut(&str),
    ) -> Result<bool, LlmError> {
        let chunk: WireChunk<'_> = serde_json::from_str(line)
            .map_err(|e| LlmError::Protocol(format!("a line of the stream is not valid: {e}")))?;
        if let Some(error) = chunk.error {
            return Err(LlmError::Stream(error));
        }
        let done = chunk.done.unwrap_or(false);
        match &chunk.message {
            Some(m) if !m.content.is_empty() => {
                on_token(&m.content);
                self.reply.content.push_str(&m.content);
            }
            Some(_) => {}
            None if !done => {
                return Err(LlmError::Protocol(
                    "a line of the stream has no message, done or error".into(),
                ))
            }
            None => {}
        }
        if done {
            self.done = true;
            self.reply.prompt_tokens = chunk.prompt_eval_count;
            self.reply.completion_tokens = chunk.eval_count;
            self.reply.done_reason = chunk.done_reason;
            self.reply.total_duration_ns = chunk.total_duration;
        }
        Ok(done)
    }

    /// The reply, once the final object was seen; [`LlmError::Broken`] otherwise.
    pub(crate) fn finish(self) -> Result<ChatReply, LlmError> {
        if self.done {
            Ok(self.reply)
        } else {
            Err(LlmError::Broken(
                "the stream ended without its final object".into(),
            ))
        }
    }
}

/// Parses a whole (non-streamed) chat answer.
fn parse_whole(body: &[u8]) -> Result<ChatReply, LlmError> {
    let chunk: WireChunk<'_> = serde_json::from_slice(body)
        .map_err(|e| LlmError::Protocol(format!("the answer is not valid: {e}")))?;
    if let Some(error) = chunk.error {
        return Err(LlmError::Stream(error));
    }
    if chunk.done != Some(true) {
        return Err(LlmError::Protocol("the answer is not marked done".into()));
    }
    Ok(ChatReply {
        content: chunk
            .message
            .map(|m| m.content.into_owned())
            .unwrap_or_default(),
        prompt_tokens: chunk.prompt_eval_count,
        completion_tokens: chunk.eval_count,
        done_reason: chunk.done_reason,
        total_duration_ns: chunk.total_duration,
    })
}

/// A client of one Ollama server. Cheap to clone; clones share one connection pool.
#[derive(Clone)]
pub struct OllamaClient {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    chat_url: Url,
    version_url: Url,
    connect_timeout: Duration,
    request_timeout: Duration,
    ollama: ollama_rs::Ollama,
}

impl std::fmt::Debug for OllamaClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OllamaClient")
            .field("base", &self.inner.base.as_str())
            .field("connect_timeout", &self.inner.connect_timeout)
            .field("request_timeout", &self.inner.request_timeout)
            .finish()
    }
}

impl OllamaClient {
    /// A client of the Ollama at `base_url` (`http://` or `https://`, a host, optionally
    /// a path prefix). `connect_timeout` bounds each connection attempt;
    /// `request_timeout` bounds each call as a whole.
    pub fn new(
        base_url: &str,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<Self, LlmError> {
        let invalid =
            |why: &str| LlmError::Protocol(format!("invalid Ollama URL {base_url:?}: {why}"));
        let mut base = Url::parse(base_url).map_err(|e| invalid(&e.to_string()))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(invalid("the scheme must be http or https"));
        }
        if base.host_str().is_none_or(str::is_empty) {
            return Err(invalid("it has no host"));
        }
        if base.query().is_some() || base.fragment().is_some() {
            return Err(invalid("it must not have a query or a fragment"));
        }
        if !base.username().is_empty() || base.password().is_some() {
            return Err(invalid("it must not carry credentials"));
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let join = |path: &str| base.join(path).map_err(|e| invalid(&e.to_string()));
        let chat_url = join("api/chat")?;
        let version_url = join("api/version")?;
        let http = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| {
                LlmError::Protocol(format!("cannot build the HTTP client: {}", describe(&e)))
            })?;
        let ollama = ollama_rs::Ollama::builder()
            .url(base.clone())
            .reqwest_client(http.clone())
            .build();
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                chat_url,
                version_url,
                connect_timeout,
                request_timeout,
                ollama,
            }),
        })
    }

    /// The base URL, with a trailing `/`.
    pub fn base_url(&self) -> &str {
        self.inner.base.as_str()
    }

    /// Non-streaming call (`"stream": false`): one JSON object with the whole reply.
    pub async fn chat(&self, req: &ChatRequest) -> Result<ChatReply, LlmError> {
        let call = async {
            let resp = self.send_chat(req, false).await?;
            let body = read_bounded(resp, MAX_LINE_BYTES)
                .await
                .map_err(|e| LlmError::Broken(describe(&e)))?;
            match body {
                Some(body) => parse_whole(&body),
                None => Err(LlmError::Protocol(format!(
                    "the answer is longer than {MAX_LINE_BYTES} bytes"
                ))),
            }
        };
        tokio::time::timeout(self.inner.request_timeout, call)
            .await
            .unwrap_or(Err(LlmError::Timeout))
    }

    /// Streaming call: every piece is passed to `on_token` as it arrives (before the next
    /// network read); returns the whole reply once the final object arrived.
    pub async fn chat_stream(
        &self,
        req: &ChatRequest,
        on_token: &mut (dyn FnMut(&str) + Send),
    ) -> Result<ChatReply, LlmError> {
        let call = async {
            let mut resp = self.send_chat(req, true).await?;
            let mut lines = LineDecoder::new();
            let mut stream = ChatStream::new();
            loop {
                match resp.chunk().await {
                    Ok(Some(bytes)) => {
                        lines.push(&bytes);
                        while let Some(line) = lines.next_line() {
                            let line = line.map_err(|e| LlmError::Protocol(e.to_string()))?;
                            if stream.line(line, on_token)? {
                                release(resp);
                                return stream.finish();
                            }
                        }
                    }
                    Ok(None) => {
                        if let Some(line) = lines.finish() {
                            let line = line.map_err(|e| LlmError::Protocol(e.to_string()))?;
                            stream.line(line, on_token)?;
                        }
                        return stream.finish();
                    }
                    Err(e) => return Err(LlmError::Broken(describe(&e))),
                }
            }
        };
        tokio::time::timeout(self.inner.request_timeout, call)
            .await
            .unwrap_or(Err(LlmError::Timeout))
    }

    /// `GET /api/version`: the breaker's probe, bounded by the connect timeout.
    pub async fn version(&self) -> Result<String, LlmError> {
        let call = async {
            let resp = self
                .inner
                .http
                .get(self.inner.version_url.clone())
                .send()
                .await
                .map_err(request_error)?;
            let resp = check_status(resp).await?;
            let body = resp
                .bytes()
                .await
                .map_err(|e| LlmError::Broken(describe(&e)))?;
            let v: WireVersion = serde_json::from_slice(&body)
                .map_err(|e| LlmError::Protocol(format!("the version answer is not valid: {e}")))?;
            Ok(v.version)
        };
        tokio::time::timeout(self.inner.connect_timeout, call)
            .await
            .unwrap_or(Err(LlmError::Timeout))
    }

    /// Whether Ollama has `model` (a name without a tag means `:latest`), from the list
    /// of local models (ollama-rs `list_local_models`, `GET /api/tags`).
    pub async fn model_exists(&self, model: &str) -> Result<bool, LlmError> {
        let wanted = canonical_model(model);
        let call = async {
            match self.inner.ollama.list_local_models().await {
                Ok(models) => Ok(models.iter().any(|m| canonical_model(&m.name) == wanted)),
                Err(ollama_rs::error::OllamaError::ReqwestError(e)) => Err(request_error(e)),
                Err(ollama_rs::error::OllamaError::JsonError(e)) => Err(LlmError::Protocol(
                    format!("the list of models is not valid: {e}"),
                )),
                // ollama-rs keeps the body of a non-2xx answer but not its status.
                Err(e) => Err(LlmError::Protocol(format!(
                    "Ollama refused to list its models: {}",
                    error_message(e.to_string().as_bytes())
                ))),
            }
        };
        tokio::time::timeout(self.inner.request_timeout, call)
            .await
            .unwrap_or(Err(LlmError::Timeout))
    }

    /// Posts a chat request; a non-2xx answer becomes [`LlmError::Status`].
    async fn send_chat(
        &self,
        req: &ChatRequest,
        stream: bool,
    ) -> Result<reqwest::Response, LlmError> {
        let body = WireRequest {
            model: &req.model,
            messages: &req.messages,
            stream,
            options: &req.options,
            keep_alive: req.keep_alive.as_deref(),
        };
        let resp = self
            .inner
            .http
            .post(self.inner.chat_url.clone())
            .json(&body)
            .send()
            .await
            .map_err(request_error)?;
        check_status(resp).await
    }
}

/// `mistral` → `mistral:latest`; the default registry's prefixes are dropped.
fn canonical_model(name: &str) -> String {
    let name = name.trim();
    let name = name.strip_prefix("registry.ollama.ai/").unwrap_or(name);
    let name = name.strip_prefix("library/").unwrap_or(name);
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// Hands a finished stream's response back: if its end has already arrived, the
/// connection returns to the pool now; otherwise a task reads the (normally empty) rest so
/// that it can, instead of closing the connection.
fn release(mut resp: reqwest::Response) {
    if let Some(Ok(None)) = resp.chunk().now_or_never() {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            let drain = async {
                let mut left = 64 * 1024usize;
                while let Ok(Some(b)) = resp.chunk().await {
                    left = match left.checked_sub(b.len()) {
                        Some(l) => l,
                        None => return,
                    };
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(5), drain).await;
        });
    }
}

/// Passes a 2xx answer through; turns any other into [`LlmError::Status`] with the
/// message of its `{"error": …}` body.
async fn check_status(resp: reqwest::Response) -> Result<reqwest::Response, LlmError> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = read_bounded(resp, 64 * 1024)
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    let mut message = error_message(&body);
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("no message").to_owned();
    }
    Err(LlmError::Status {
        status: status.as_u16(),
        message,
    })
}

/// The `error` of an `{"error": …}` body, or the body as text (at most 512 characters).
fn error_message(body: &[u8]) -> String {
    if let Ok(e) = serde_json::from_slice::<WireError>(body) {
        return e.error;
    }
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(512) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

/// Reads a whole body; `None` when it is longer than `limit`.
async fn read_bounded(
    mut resp: reqwest::Response,
    limit: usize,
) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::with_capacity(
        resp.content_length()
            .map_or(1024, |n| n.min(limit as u64) as usize),
    );
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > limit {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

/// Maps a failure to send a request or to get its answer's head.
fn request_error(e: reqwest::Error) -> LlmError {
    if e.is_connect() {
        LlmError::Unavailable(describe(&e))
    } else if e.is_timeout() {
        LlmError::Timeout
    } else if e.is_builder() {
        LlmError::Protocol(describe(&e))
    } else {
        // The connection closed or reset before an answer.
        LlmError::Broken(describe(&e))
    }
}

/// An error with its chain of causes (reqwest's own message hides the cause).
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Runs the stream parser over `chunks` the way `chat_stream` does.
    fn parse_chunks(chunks: &[&[u8]]) -> (Vec<String>, Result<ChatReply, LlmError>) {
        let mut pieces = Vec::new();
        let mut on_token = |p: &str| pieces.push(p.to_owned());
        let result = (|| {
            let mut lines = LineDecoder::new();
            let mut stream = ChatStream::new();
            for c in chunks {
                lines.push(c);
                while let Some(line) = lines.next_line() {
                    let line = line.map_err(|e| LlmError::Protocol(e.to_string()))?;
                    if stream.line(line, &mut on_token)? {
                        return stream.finish();
                    }
                }
            }
            if let Some(line) = lines.finish() {
                let line = line.map_err(|e| LlmError::Protocol(e.to_string()))?;
                stream.line(line, &mut on_token)?;
            }
            stream.finish()
        })();
        (pieces, result)
    }

    fn piece(content: &str) -> String {
        format!(
            "{}\n",
            json!({"model": "mistral", "created_at": "2026-11-25T10:00:00.123456789Z",
                   "message": {"role": "assistant", "content": content}, "done": false})
        )
    }

    const FINAL: &str = "{\"model\":\"mistral\",\"created_at\":\"2026-11-25T10:00:00.5Z\",\"message\":{\"role\":\"assistant\",\"content\":\"\"},\"done\":true,\"done_reason\":\"stop\",\"total_duration\":512000000,\"load_duration\":2000000,\"prompt_eval_count\":26,\"prompt_eval_duration\":130000000,\"eval_count\":3,\"eval_duration\":380000000}\n";

    #[test]
    fn a_stream_becomes_pieces_and_a_reply() {
        let text = format!(
            "{}{}{}{FINAL}",
            piece("héllo"),
            piece(" → 世界"),
            piece(" 🎉")
        );
        let (pieces, reply) = parse_chunks(&[text.as_bytes()]);
        assert_eq!(pieces, ["héllo", " → 世界", " 🎉"]);
        assert_eq!(
            reply.unwrap(),
            ChatReply {
                content: "héllo → 世界 🎉".into(),
                prompt_tokens: Some(26),
                completion_tokens: Some(3),
                done_reason: Some("stop".into()),
                total_duration_ns: Some(512_000_000),
            }
        );
    }

    #[test]
    fn every_split_position_gives_the_same_reply() {
        let text = format!(
            "{}{}{FINAL}",
            piece("héllo → 世界 🎉"),
            piece("\u{3c}b\u{3e}&")
        );
        let bytes = text.as_bytes();
        for i in 0..=bytes.len() {
            let (pieces, reply) = parse_chunks(&[&bytes[..i], &bytes[i..]]);
            assert_eq!(pieces, ["héllo → 世界 🎉", "<b>&"], "split at {i}");
            assert_eq!(reply.unwrap().content, "héllo → 世界 🎉<b>&");
        }
        let ones: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(
            parse_chunks(&ones).1.unwrap().content,
            "héllo → 世界 🎉<b>&"
        );
    }

    #[test]
    fn go_escapes_are_decoded() {
        let line = "{\"message\":{\"role\":\"assistant\",\"content\":\"\\u003cb\\u003e \\u0026\"},\"done\":false}\n";
        let (pieces, _) = parse_chunks(&[line.as_bytes()]);
        assert_eq!(pieces, ["<b> &"]);
    }

    #[test]
    fn an_error_line_mid_stream_is_a_stream_error() {
        let text = format!("{}{{\"error\":\"boom\"}}\n{}", piece("a"), piece("b"));
        let (pieces, reply) = parse_chunks(&[text.as_bytes()]);
        assert_eq!(pieces, ["a"]);
        assert_eq!(reply, Err(LlmError::Stream("boom".into())));
        // Even as the last line without a newline.
        let text = format!("{}{{\"error\":\"boom\"}}", piece("a"));
        assert_eq!(
            parse_chunks(&[text.as_bytes()]).1,
            Err(LlmError::Stream("boom".into()))
        );
    }

    #[test]
    fn a_stream_without_done_is_broken() {
        let text = format!("{}{}", piece("a"), piece("b"));
        let (pieces, reply) = parse_chunks(&[text.as_bytes()]);
        assert_eq!(pieces, ["a", "b"]);
        assert!(matches!(reply, Err(LlmError::Broken(_))), "{reply:?}");
        assert!(matches!(parse_chunks(&[]).1, Err(LlmError::Broken(_))));
        // A final object cut in the middle.
        let text = format!("{}{}", piece("a"), &FINAL[..40]);
        assert!(matches!(
            parse_chunks(&[text.as_bytes()]).1,
            Err(LlmError::Protocol(_))
        ));
    }

    #[test]
    fn a_final_line_without_newline_counts() {
        let text = format!("{}{}", piece("a"), FINAL.trim_end());
        assert_eq!(parse_chunks(&[text.as_bytes()]).1.unwrap().content, "a");
        // And with CRLF line ends.
        let text = format!(
            "{}{}",
            piece("a").replace('\n', "\r\n"),
            FINAL.replace('\n', "\r\n")
        );
        assert_eq!(parse_chunks(&[text.as_bytes()]).1.unwrap().content, "a");
    }

    #[test]
    fn bad_lines_are_protocol_errors() {
        for bad in [
            "not json\n",
            "[1,2]\n",
            "{}\n",
            "{\"done\":\"yes\"}\n",
            "{\"message\":{\"content\":5}}\n",
        ] {
            let (_, reply) = parse_chunks(&[bad.as_bytes()]);
            assert!(
                matches!(reply, Err(LlmError::Protocol(_))),
                "{bad}: {reply:?}"
            );
        }
        let (_, reply) = parse_chunks(&[b"{\"message\":{\"content\":\"\xC3(\"}}\n"]);
        assert!(matches!(reply, Err(LlmError::Protocol(_))), "{reply:?}");
    }

    #[test]
    fn a_final_piece_with_content_is_kept() {
        let line = "{\"message\":{\"role\":\"assistant\",\"content\":\"end\"},\"done\":true,\"done_reason\":\"length\"}\n";
        let (pieces, reply) = parse_chunks(&[piece("a").as_bytes(), line.as_bytes()]);
        assert_eq!(pieces, ["a", "end"]);
        let reply = reply.unwrap();
        assert_eq!(reply.content, "aend");
        assert_eq!(reply.done_reason.as_deref(), Some("length"));
        assert_eq!(reply.prompt_tokens, None);
    }

    #[test]
    fn whole_answers() {
        let body = br#"{"model":"m","created_at":"x","message":{"role":"assistant","content":"Hi \u0026 bye"},"done":true,"done_reason":"stop","eval_count":2}"#;
        let reply = parse_whole(body).unwrap();
        assert_eq!(reply.content, "Hi & bye");
        assert_eq!(reply.completion_tokens, Some(2));
        assert_eq!(
            parse_whole(br#"{"error":"boom"}"#),
            Err(LlmError::Stream("boom".into()))
        );
        assert!(matches!(
            parse_whole(br#"{"message":{"content":"x"},"done":false}"#),
            Err(LlmError::Protocol(_))
        ));
        assert!(matches!(parse_whole(b"<html>"), Err(LlmError::Protocol(_))));
    }

    #[test]
    fn the_request_body_passes_options_through() {
        let mut options = serde_json::Map::new();
        options.insert("temperature".into(), json!(0.7));
        options.insert("custom_key".into(), json!({"nested": [1, "two", null]}));
        let req = ChatRequest {
            model: "mistral".into(),
            messages: vec![ChatMessage {
                role: "user".into(),
                content: "hi".into(),
            }],
            options,
            keep_alive: Some("5m".into()),
        };
        let wire = WireRequest {
            model: &req.model,
            messages: &req.messages,
            stream: true,
            options: &req.options,
            keep_alive: req.keep_alive.as_deref(),
        };
        assert_eq!(
            serde_json::to_value(&wire).unwrap(),
            json!({"model": "mistral", "messages": [{"role": "user", "content": "hi"}],
                   "stream": true, "options": {"temperature": 0.7, "custom_key": {"nested": [1, "two", null]}},
                   "keep_alive": "5m"})
        );
        let bare = ChatRequest {
            model: "m".into(),
            ..ChatRequest::default()
        };
        let wire = WireRequest {
            model: &bare.model,
            messages: &bare.messages,
            stream: false,
            options: &bare.options,
            keep_alive: None,
        };
        assert_eq!(
            serde_json::to_value(&wire).unwrap(),
            json!({"model": "m", "messages": [], "stream": false})
        );
    }

    #[test]
    fn error_classes() {
        let status = |s| LlmError::Status {
            status: s,
            message: String::new(),
        };
        assert!(LlmError::Unavailable(String::new()).is_retryable());
        assert!(LlmError::Broken(String::new()).is_retryable());
        assert!(status(500).is_retryable() && status(503).is_retryable());
        assert!(!status(404).is_retryable() && !status(400).is_retryable());
        assert!(!LlmError::Timeout.is_retryable());
        assert!(!LlmError::Stream(String::new()).is_retryable());
        assert!(!LlmError::Protocol(String::new()).is_retryable());

        assert!(LlmError::Unavailable(String::new()).counts_for_breaker());
        assert!(LlmError::Broken(String::new()).counts_for_breaker());
        assert!(status(502).counts_for_breaker());
        assert!(!status(404).counts_for_breaker());
        assert!(!LlmError::Timeout.counts_for_breaker());
        assert!(!LlmError::Stream(String::new()).counts_for_breaker());
        assert!(!LlmError::Protocol(String::new()).counts_for_breaker());
    }

    #[test]
    fn urls_are_checked() {
        let t = Duration::from_secs(1);
        for bad in [
            "",
            "localhost:11434",
            "ftp://host",
            "http://",
            "http://h/?q=1",
            "http://u:p@h/",
        ] {
            assert!(
                matches!(OllamaClient::new(bad, t, t), Err(LlmError::Protocol(_))),
                "{bad}"
            );
        }
        let c = OllamaClient::new("http://127.0.0.1:11434", t, t).unwrap();
        assert_eq!(c.base_url(), "http://127.0.0.1:11434/");
        assert_eq!(c.inner.chat_url.as_str(), "http://127.0.0.1:11434/api/chat");
        let c = OllamaClient::new("https://gpu.example/ollama", t, t).unwrap();
        assert_eq!(
            c.inner.chat_url.as_str(),
            "https://gpu.example/ollama/api/chat"
        );
        assert_eq!(
            c.inner.version_url.as_str(),
            "https://gpu.example/ollama/api/version"
        );
    }

    #[test]
    fn model_names_are_canonical() {
        assert_eq!(canonical_model("mistral"), "mistral:latest");
        assert_eq!(canonical_model("mistral:latest"), "mistral:latest");
        assert_eq!(canonical_model("library/mistral"), "mistral:latest");
        assert_eq!(
            canonical_model("registry.ollama.ai/library/mistral:7b"),
            "mistral:7b"
        );
        assert_eq!(canonical_model("host:5000/ns/m"), "host:5000/ns/m:latest");
    }

    #[test]
    fn error_bodies() {
        assert_eq!(
            error_message(br#"{"error":"model 'x' not found"}"#),
            "model 'x' not found"
        );
        assert_eq!(error_message(b"  plain text \n"), "plain text");
        let long = "é".repeat(600);
        let m = error_message(long.as_bytes());
        assert_eq!(m.chars().count(), 513);
    }
}
