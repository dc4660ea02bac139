//! `GET /api/v1/ws`: messages to bots and pools over one WebSocket (API.md "Messages").
//!
//! A session authenticates with the upgrade's `Authorization` header or, without one,
//! with a first frame `{"type":"auth","token":"…"}`; then it says `ready`. Each message
//! frame is validated and queued exactly like `POST …/messages` with `"stream": true`
//! ([`messages::submit`]), in the order the frames came, and then driven by
//! [`messages::relay`] in a task of its own, so that several messages run at once and
//! their frames interleave, told apart by the client's `id`. A frame that cannot be
//! handled is answered with an error frame and the socket stays open; only
//! authentication failures and oversized frames close it. When the socket closes, every
//! message still running is cancelled (their model calls are dropped).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use botd_actors::model::Target;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use slog::debug;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use warp::filters::ws::{Message, WebSocket, Ws};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::bots::bot_name;
use super::error::ApiError;
use super::messages::{self, pool_name, Relayed, SendRequest};
use super::view::AnswerView;
use super::{parse_json, request_id, with_state};
use crate::auth::{Claims, Role};
use crate::state::{AppState, RequestId};

/// Close code for a failed authentication (RFC 6455 "policy violation").
const CLOSE_POLICY: u16 = 1008;
/// Close code for a frame over `http.max_body_bytes` (RFC 6455 "message too big").
const CLOSE_TOO_BIG: u16 = 1009;
/// Frames waiting to be written to one socket.
const OUT_BUFFER: usize = 256;
/// The longest client `id`, in bytes.
const MAX_ID_BYTES: usize = 128;

/// A `message` frame, after its `type`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageFrame {
    /// The client's own id, echoed in every frame about this message.
    id: String,
    bot: Option<String>,
    pool: Option<String>,
    content: String,
    conversation: Option<String>,
    priority: Option<i64>,
    timeout_ms: Option<i64>,
}

/// An `auth` frame, after its `type`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFrame {
    token: String,
}

/// A frame the client sent, decoded.
enum Incoming {
    Auth(AuthFrame),
    Message(MessageFrame),
}

/// Why a frame was refused: the error, and the client's id when the frame had one.
struct Refusal {
    id: Option<String>,
    error: ApiError,
}

impl Refusal {
    fn new(id: Option<String>, error: ApiError) -> Self {
        Self { id, error }
    }
}

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    // A plain GET (no upgrade headers) still reaches the handler, which explains.
    let upgrade = warp::ws().map(Some).or(warp::any().map(|| None)).unify();
    warp::path("ws")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .and(request_id())
        .and(warp::header::optional::<String>("authorization"))
        .and(upgrade)
        .then(handshake)
}

/// Checks what can be checked before the upgrade: a token in the header (401/403 as for
/// any route), and that this is an upgrade at all.
async fn handshake(
    state: Arc<AppState>,
    rid: RequestId,
    header: Option<String>,
    ws: Option<Ws>,
) -> Response {
    let claims = match header {
        Some(h) => match authorize(&state, Some(&h)).await {
            Ok(c) => Some(c),
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    let Some(ws) = ws else {
        return ApiError::invalid_field(
            "upgrade: GET /api/v1/ws takes a WebSocket upgrade (Connection: upgrade, Upgrade: websocket)",
        )
        .into_response();
    };
    let max = state.config.http.max_body_bytes as usize;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| session(state, rid, claims, socket))
        .into_response()
}

/// A token's claims, if it is valid and its role may use the WebSocket.
async fn authorize(state: &AppState, header: Option<&str>) -> Result<Claims, ApiError> {
    // The same check as every route's: a user token follows its user's row.
    let token = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(ApiError::unauthorized)?;
    let claims = super::auth::authenticate_token(state, token).await?;
    if claims.role < Role::Operator {
        return Err(ApiError::forbidden(Role::Operator.as_str()));
    }
    Ok(claims)
}

/// One socket's life.
async fn session(state: Arc<AppState>, rid: RequestId, claims: Option<Claims>, socket: WebSocket) {
    let (mut sink, mut stream) = socket.split();
    let (out, mut out_rx) = mpsc::channel::<Message>(OUT_BUFFER);
    let writer = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if sink.send(frame).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    // Tripped when the socket closes: every message still running is cancelled.
    let closed = CancellationToken::new();
    let running: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut subject = claims.map(|c| c.sub);
    if let Some(sub) = &subject {
        let _ = out.send(ready_frame(sub)).await;
    }
    let auth_wait = Duration::from_millis(state.config.http.header_read_timeout_ms);
    let auth_deadline = tokio::time::Instant::now() + auth_wait;
    loop {
        let next = if subject.is_some() {
            stream.next().await
        } else {
            match tokio::time::timeout_at(auth_deadline, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    let e = ApiError::unauthorized();
                    let _ = out.send(error_frame(None, &e, &rid)).await;
                    let _ = out
                        .send(Message::close_with(CLOSE_POLICY, "no auth frame in time"))
                        .await;
                    break;
                }
            }
        };
        let msg = match next {
            None => break,
            Some(Ok(msg)) => msg,
            Some(Err(e)) => {
                if too_big(&e) {
                    let max = state.config.http.max_body_bytes;
                    let err = ApiError::new(
                        http::StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        format!("a frame is over {max} bytes"),
                    );
                    let _ = out.send(error_frame(None, &err, &rid)).await;
                    let _ = out
                        .send(Message::close_with(CLOSE_TOO_BIG, "frame too large"))
                        .await;
                }
                break;
            }
        };
        if msg.is_close() {
            break;
        }
        if msg.is_ping() || msg.is_pong() {
            continue;
        }
        let incoming = match msg.to_str() {
            Ok(text) => decode(text),
            Err(()) => Err(Refusal::new(
                None,
                ApiError::invalid_json("frames must be text frames holding JSON"),
            )),
        };
        match (incoming, &subject) {
            (Ok(Incoming::Auth(frame)), None) => {
                let header = format!("Bearer {}", frame.token);
                match authorize(&state, Some(&header)).await {
                    Ok(c) => {
                        let _ = out.send(ready_frame(&c.sub)).await;
                        subject = Some(c.sub);
                    }
                    Err(e) => {
                        let _ = out.send(error_frame(None, &e, &rid)).await;
                        let _ = out
                            .send(Message::close_with(CLOSE_POLICY, "unauthorized"))
                            .await;
                        break;
                    }
                }
            }
            (Ok(_) | Err(_), None) => {
                // Nothing but an auth frame is read before authentication.
                let e = ApiError::unauthorized();
                let _ = out.send(error_frame(None, &e, &rid)).await;
                let _ = out
                    .send(Message::close_with(CLOSE_POLICY, "unauthorized"))
                    .await;
                break;
            }
            (Ok(Incoming::Auth(_)), Some(_)) => {
                let e = ApiError::invalid_field("type: the socket is authenticated already");
                let _ = out.send(error_frame(None, &e, &rid)).await;
            }
            (Ok(Incoming::Message(frame)), Some(_)) => {
                if let Err(r) = start(&state, &rid, frame, &out, &closed, &running).await {
                    let _ = out.send(error_frame(r.id, &r.error, &rid)).await;
                }
            }
            (Err(r), Some(_)) => {
                let _ = out.send(error_frame(r.id, &r.error, &rid)).await;
            }
        }
    }
    closed.cancel();
    let left = running.lock().map(|r| r.len()).unwrap_or(0);
    debug!(state.log, "A WebSocket closed."; "request_id" => &*rid.0, "cancelled" => left);
    drop(out);
    let _ = writer.await;
}

/// Queues one message (in frame order) and spawns the task that relays its frames.
async fn start(
    state: &Arc<AppState>,
    rid: &RequestId,
    frame: MessageFrame,
    out: &mpsc::Sender<Message>,
    closed: &CancellationToken,
    running: &Arc<Mutex<HashSet<String>>>,
) -> Result<(), Refusal> {
    let id = frame.id;
    let refuse = |e: ApiError| Refusal::new(Some(id.clone()), e);
    let target = match (frame.bot, frame.pool) {
        (Some(b), None) => Target::Bot(bot_name(&b).map_err(refuse)?),
        (None, Some(p)) => Target::Pool(pool_name(&p).map_err(refuse)?),
        _ => {
            return Err(refuse(ApiError::invalid_field(
                "bot: a message names exactly one of bot and pool",
            )))
        }
    };
    let fresh = running
        .lock()
        .map(|mut r| r.insert(id.clone()))
        .unwrap_or(false);
    if !fresh {
        return Err(refuse(ApiError::invalid_field(
            "id: a message with this id is still running on this socket",
        )));
    }
    let body = SendRequest {
        content: frame.content,
        conversation: frame.conversation,
        priority: frame.priority,
        timeout_ms: frame.timeout_ms,
        stream: Some(true),
    };
    let (tx, tokens) = mpsc::unbounded_channel();
    let ticket = match messages::submit(state, target, body, Some(tx)).await {
        Ok(t) => t,
        Err(e) => {
            forget(running, &id);
            return Err(refuse(e));
        }
    };
    let bot = ticket.bot.as_str().to_owned();
    let (state, rid, out, closed, running) = (
        state.clone(),
        rid.clone(),
        out.clone(),
        closed.clone(),
        running.clone(),
    );
    tokio::spawn(async move {
        messages::relay(ticket, tokens, &out, closed.cancelled(), |r| match r {
            Relayed::Token(piece) => text_frame(json!({
                "type": "token", "id": id, "bot": bot, "content": piece,
            })),
            Relayed::Done(result) => {
                // The id is free again before the client can read the answer.
                forget(&running, &id);
                match result {
                    Ok(answer) => reply_frame(&id, AnswerView::from(answer)),
                    Err(e) => {
                        messages::log_internal(&state, &e, &rid);
                        error_frame(Some(id.clone()), &ApiError::from(e), &rid)
                    }
                }
            }
        })
        .await;
    });
    Ok(())
}

fn forget(running: &Mutex<HashSet<String>>, id: &str) {
    if let Ok(mut r) = running.lock() {
        r.remove(id);
    }
}

/// Decodes a frame: JSON first (else `invalid_json`), then its `type`, then the fields of
/// that type, strictly, naming the field at fault.
fn decode(text: &str) -> Result<Incoming, Refusal> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        Refusal::new(
            None,
            ApiError::invalid_json(format!("the frame is not valid JSON: {e}")),
        )
    })?;
    let Value::Object(mut map) = value else {
        return Err(Refusal::new(
            None,
            ApiError::invalid_field("the frame must be a JSON object"),
        ));
    };
    let id = match map.get("id") {
        Some(Value::String(s)) => Some(s.clone()),
        _ => None,
    };
    let refuse = |e: ApiError| Refusal::new(id.clone(), e);
    let kind = match map.remove("type") {
        Some(Value::String(t)) => t,
        Some(_) => return Err(refuse(ApiError::invalid_field("type: must be a string"))),
        None => return Err(refuse(ApiError::invalid_field("type: is required"))),
    };
    let rest = |map: Map<String, Value>| Value::Object(map).to_string();
    match kind.as_str() {
        "auth" => Ok(Incoming::Auth(
            parse_json::<AuthFrame>(rest(map).as_bytes()).map_err(refuse)?,
        )),
        "message" => {
            let frame = parse_json::<MessageFrame>(rest(map).as_bytes()).map_err(refuse)?;
            if frame.id.is_empty() || frame.id.len() > MAX_ID_BYTES {
                return Err(refuse(ApiError::invalid_field(format!(
                    "id: 1 to {MAX_ID_BYTES} bytes"
                ))));
            }
            Ok(Incoming::Message(frame))
        }
        other => Err(refuse(ApiError::invalid_field(format!(
            "type: must be auth or message, got {:?}",
            other.chars().take(32).collect::<String>()
        )))),
    }
}

/// Whether a read failed because a frame or message was over the limit.
fn too_big(e: &warp::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(WsError::Capacity(_)) = s.downcast_ref::<WsError>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn text_frame(value: Value) -> Message {
    Message::text(value.to_string())
}

fn ready_frame(sub: &str) -> Message {
    text_frame(json!({"type": "ready", "sub": sub}))
}

/// `{"type":"reply","id",…answer…}`: the answer object with the client's `id`; the stored
/// user message's id, which the answer calls `id`, is `message_id` here.
fn reply_frame(id: &str, answer: AnswerView) -> Message {
    let mut value = serde_json::to_value(answer).unwrap_or_default();
    if let Value::Object(map) = &mut value {
        if let Some(message_id) = map.remove("id") {
            map.insert("message_id".into(), message_id);
        }
        map.insert("type".into(), "reply".into());
        map.insert("id".into(), id.into());
    }
    text_frame(value)
}

/// `{"type":"error","id"?,"error":{…}}`.
fn error_frame(id: Option<String>, e: &ApiError, rid: &RequestId) -> Message {
    let mut value = e.body_value(&rid.0);
    if let Value::Object(map) = &mut value {
        map.insert("type".into(), "error".into());
        if let Some(id) = id {
            map.insert("id".into(), id.into());
        }
    }
    text_frame(value)
}
