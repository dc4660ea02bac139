//! Messages: send (plain or streamed over SSE) and read history, for a bot or a pool.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use botd_actors::model::{Answer, EngineError, Inbound, Target};
use botd_actors::names::{Conversation, PoolName};
use botd_actors::registry::Ticket;
use botd_actors::settings::check_range;
use botd_actors::store::queries::{self, MessageScope};
use futures::Stream;
use http::StatusCode;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use warp::reply::Response;
use warp::sse::Event;
use warp::{Filter, Rejection, Reply};

use super::bots::{bot_name, limit, query};
use super::error::ApiError;
use super::view::{AnswerView, MessageList, MessageView};
use super::{auth, json_body, json_reply, request_id, respond, with_state};
use crate::auth::{Claims, Role};
use crate::state::{AppState, RequestId};

/// `POST …/messages`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendRequest {
    pub content: String,
    /// Default `default`.
    #[schema(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
    pub conversation: Option<String>,
    /// 0 (most urgent) to 3, default 2.
    #[schema(minimum = 0, maximum = 3)]
    pub priority: Option<i64>,
    /// The deadline of the whole exchange, default `bots.default_timeout_ms`.
    #[schema(minimum = 1, maximum = 3600000)]
    pub timeout_ms: Option<i64>,
    /// Answer with `text/event-stream`.
    pub stream: Option<bool>,
}

impl SendRequest {
    /// Validates the body into a message for `target`.
    pub fn into_inbound(
        self,
        state: &AppState,
        target: Target,
        cancel: CancellationToken,
        tokens: Option<mpsc::UnboundedSender<String>>,
    ) -> Result<Inbound, ApiError> {
        let received = Instant::now();
        let max = state.config.limits.max_content_bytes;
        if self.content.len() > max {
            return Err(ApiError::invalid_field(format!(
                "content: at most {max} bytes, got {}",
                self.content.len()
            )));
        }
        let conversation = match self.conversation {
            Some(c) => Conversation::parse(&c)
                .map_err(|e| ApiError::invalid_field(format!("conversation: {e}")))?,
            None => Conversation::default_name(),
        };
        let priority = match self.priority {
            Some(p) => {
                check_range("priority", p, 0, 3)
                    .map_err(|e| ApiError::invalid_field(e.to_string()))?;
                p as u8
            }
            None => 2,
        };
        let timeout_ms = match self.timeout_ms {
            Some(t) => {
                check_range("timeout_ms", t, 1, 3_600_000)
                    .map_err(|e| ApiError::invalid_field(e.to_string()))?;
                t as u64
            }
            None => state.config.bots.default_timeout_ms,
        };
        Ok(Inbound {
            target,
            content: self.content,
            conversation,
            priority,
            deadline: received + Duration::from_millis(timeout_ms),
            cancel,
            tokens,
            received,
        })
    }
}

pub(crate) fn pool_name(s: &str) -> Result<PoolName, ApiError> {
    PoolName::parse(s).map_err(|e| ApiError::invalid_field(format!("pool: {e}")))
}

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let s = || with_state(state.clone());
    let q = || warp::query::<HashMap<String, String>>();
    let send_bot = warp::path("bots")
        .and(warp::path::param::<String>())
        .and(warp::path("messages"))
        .and(warp::path::end())
        .and(warp::post())
        .and(auth(state.clone(), Role::Operator))
        .and(s())
        .and(request_id())
        .and(json_body::<SendRequest>(state.clone()))
        .then(
            |name: String, _: Claims, state: Arc<AppState>, id, body| async move {
                match bot_name(&name) {
                    Ok(n) => send(state, Target::Bot(n), id, body).await,
                    Err(e) => e.into_response(),
                }
            },
        );
    let send_pool = warp::path("pools")
        .and(warp::path::param::<String>())
        .and(warp::path("messages"))
        .and(warp::path::end())
        .and(warp::post())
        .and(auth(state.clone(), Role::Operator))
        .and(s())
        .and(request_id())
        .and(json_body::<SendRequest>(state.clone()))
        .then(
            |name: String, _: Claims, state: Arc<AppState>, id, body| async move {
                match pool_name(&name) {
                    Ok(p) => send(state, Target::Pool(p), id, body).await,
                    Err(e) => e.into_response(),
                }
            },
        );
    let history_bot = warp::path("bots")
        .and(warp::path::param::<String>())
        .and(warp::path("messages"))
        .and(warp::path::end())
        .and(warp::get())
        .and(auth(state.clone(), Role::Viewer))
        .and(s())
        .and(q())
        .then(
            |name: String, _: Claims, state: Arc<AppState>, q| async move {
                respond(
                    async {
                        let name = bot_name(&name)?;
                        let known = state.registry.get(name.clone()).await.is_ok();
                        history(
                            &state,
                            MessageScope::Bot(name.as_str().to_owned()),
                            &q,
                            (!known).then(|| EngineError::BotNotFound(name.to_string())),
                        )
                        .await
                    }
                    .await,
                )
            },
        );
    let history_pool = warp::path("pools")
        .and(warp::path::param::<String>())
        .and(warp::path("messages"))
        .and(warp::path::end())
        .and(warp::get())
        .and(auth(state.clone(), Role::Viewer))
        .and(s())
        .and(q())
        .then(
            |name: String, _: Claims, state: Arc<AppState>, q| async move {
                respond(
                    async {
                        let pool = pool_name(&name)?;
                        let missing = state.registry.get_pool(pool.clone()).await.err();
                        history(
                            &state,
                            MessageScope::Pool(pool.as_str().to_owned()),
                            &q,
                            missing,
                        )
                        .await
                    }
                    .await,
                )
            },
        );
    send_bot
        .or(send_pool)
        .unify()
        .or(history_bot)
        .unify()
        .or(history_pool)
        .unify()
}

/// Reads a page of history, newest first. `missing` is the error to give when the scope
/// has no history at all (history outlives its bot, so a deleted bot's is still readable).
async fn history(
    state: &AppState,
    scope: MessageScope,
    q: &HashMap<String, String>,
    missing: Option<EngineError>,
) -> Result<Response, ApiError> {
    query(q, &["conversation", "limit", "before"])?;
    let conversation = q
        .get("conversation")
        .map(|c| {
            Conversation::parse(c)
                .map(Conversation::into_string)
                .map_err(|e| ApiError::invalid_field(format!("conversation: {e}")))
        })
        .transpose()?;
    let limit = limit(q)?;
    let before = q
        .get("before")
        .map(|b| {
            b.parse::<i64>()
                .ok()
                .filter(|v| *v > 0)
                .ok_or_else(|| ApiError::invalid_field("before: must be a message id"))
        })
        .transpose()?;
    let mut rows = state
        .store
        .read(move |c| queries::history(c, &scope, conversation.as_deref(), before, limit + 1))
        .await
        .map_err(EngineError::from)?;
    if rows.is_empty() && before.is_none() {
        if let Some(e) = missing {
            return Err(e.into());
        }
    }
    let next_before = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|m| m.id.to_string())
    } else {
        None
    };
    Ok(json_reply(
        StatusCode::OK,
        &MessageList {
            messages: rows.into_iter().map(MessageView::from).collect(),
            next_before,
        },
    ))
}

/// Validates a message and queues it with the Registry: the one way in for plain, SSE and
/// WebSocket callers alike. `tokens` gets the pieces of a streamed reply.
pub(crate) async fn submit(
    state: &AppState,
    target: Target,
    body: SendRequest,
    tokens: Option<mpsc::UnboundedSender<String>>,
) -> Result<Ticket, ApiError> {
    let inbound = body.into_inbound(state, target, CancellationToken::new(), tokens)?;
    Ok(state.registry.send(inbound).await?)
}

async fn send(state: Arc<AppState>, target: Target, id: RequestId, body: SendRequest) -> Response {
    let (tx, rx) = if body.stream.unwrap_or(false) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Some(tx), Some(rx))
    } else {
        (None, None)
    };
    let ticket = match submit(&state, target, body, tx).await {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    match rx {
        None => match ticket.wait().await {
            Ok(answer) => json_reply(StatusCode::OK, &AnswerView::from(answer)),
            Err(e) => {
                log_internal(&state, &e, &id);
                ApiError::from(e).into_response()
            }
        },
        Some(rx) => {
            let events = sse_events(state.clone(), ticket, rx, id);
            warp::sse::reply(warp::sse::keep_alive().stream(events)).into_response()
        }
    }
}

/// Logs the details of a failure inside botd (they never reach the caller).
pub(crate) fn log_internal(state: &AppState, e: &EngineError, id: &RequestId) {
    if let EngineError::Internal(what) | EngineError::Store(what) = e {
        slog::error!(state.log, "A request failed inside botd."; "error" => what.as_str(), "request_id" => &*id.0);
    }
}

/// What a streamed message tells its caller: each piece as it arrives, then its end.
pub(crate) enum Relayed {
    Token(String),
    Done(Result<Answer, EngineError>),
}

/// Drives a ticket for a streaming caller (SSE or WebSocket): sends each piece, then the
/// answer, through `out` as `frame` makes them. It returns early when `gone` resolves (the
/// caller left) or `out` is closed; dropping the ticket then cancels the message, its
/// model call included.
pub(crate) async fn relay<T>(
    ticket: Ticket,
    mut tokens: mpsc::UnboundedReceiver<String>,
    out: &mpsc::Sender<T>,
    gone: impl std::future::Future<Output = ()>,
    mut frame: impl FnMut(Relayed) -> T,
) {
    let answer = ticket.wait();
    tokio::pin!(answer, gone);
    loop {
        tokio::select! {
            biased;
            _ = &mut gone => return,
            Some(piece) = tokens.recv() => {
                if out.send(frame(Relayed::Token(piece))).await.is_err() {
                    return;
                }
            }
            result = &mut answer => {
                // Pieces that arrived with the answer go out before it.
                let mut rest = String::new();
                while let Ok(p) = tokens.try_recv() {
                    rest.push_str(&p);
                }
                if !rest.is_empty() && out.send(frame(Relayed::Token(rest))).await.is_err() {
                    return;
                }
                let _ = out.send(frame(Relayed::Done(result))).await;
                return;
            }
        }
    }
}

fn token_event(piece: String) -> Event {
    Event::default()
        .event("token")
        .data(serde_json::json!({ "content": piece }).to_string())
}

/// `event: token` for each piece as it arrives, then one `event: done` or `event: error`.
/// A task drives the ticket; when the client leaves, the stream is dropped, the task
/// sees its channel closed and drops the ticket, which cancels the model call.
fn sse_events(
    state: Arc<AppState>,
    ticket: Ticket,
    tokens: mpsc::UnboundedReceiver<String>,
    id: RequestId,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + Sync {
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(64);
    tokio::spawn(async move {
        relay(ticket, tokens, &tx, tx.closed(), |r| {
            Ok(match r {
                Relayed::Token(piece) => token_event(piece),
                Relayed::Done(result) => final_event(&state, result, &id),
            })
        })
        .await
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// The final SSE event: `done` with the answer, or `error` with the error object.
fn final_event(state: &AppState, result: Result<Answer, EngineError>, id: &RequestId) -> Event {
    match result {
        Ok(answer) => {
            let data = serde_json::to_string(&AnswerView::from(answer)).unwrap_or_default();
            Event::default().event("done").data(data)
        }
        Err(e) => {
            log_internal(state, &e, id);
            let body = ApiError::from(e).body_value(&id.0);
            Event::default().event("error").data(body.to_string())
        }
    }
}
