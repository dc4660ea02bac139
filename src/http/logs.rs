//! `GET /api/v1/logs` and `GET /api/v1/bots/{name}/logs`: the last records from the
//! in-memory rings, then (with `follow=true`) new ones as they come. NDJSON by default,
//! SSE with `Accept: text/event-stream`. A follower too slow for the stream gets
//! `{"missed": N}` in place of the N records it lost; the daemon never waits for it.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::{HeaderValue, StatusCode};
use slog::Level;
use tokio::sync::broadcast;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::bots::{bot_name, query};
use super::error::ApiError;
use super::{auth, respond, with_state};
use crate::auth::{Claims, Role};
use crate::server::StreamingBody;
use crate::state::AppState;
use crate::telemetry::{parse_level, LogRecord};

/// How a tail is asked for.
struct TailQuery {
    tail: usize,
    follow: bool,
    level: Level,
    bot: Option<String>,
}

fn parse(q: &HashMap<String, String>, allowed: &[&str]) -> Result<TailQuery, ApiError> {
    query(q, allowed)?;
    let tail = match q.get("tail") {
        None => 100,
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| *n <= 10_000)
            .ok_or_else(|| ApiError::invalid_field("tail: must be between 0 and 10000"))?,
    };
    let follow = match q.get("follow").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::invalid_field("follow: must be true or false")),
    };
    let level = match q.get("level") {
        None => Level::Info,
        Some(l) => parse_level(l).ok_or_else(|| {
            ApiError::invalid_field("level: must be trace, debug, info, warn, error or critical")
        })?,
    };
    let bot = q
        .get("bot")
        .map(|b| bot_name(b).map(|n| n.into_string()))
        .transpose()?;
    Ok(TailQuery {
        tail,
        follow,
        level,
        bot,
    })
}

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let accept = || warp::header::optional::<String>("accept");
    let all = warp::path("logs")
        .and(warp::path::end())
        .and(warp::get())
        .and(auth(state.clone(), Role::Viewer))
        .and(with_state(state.clone()))
        .and(warp::query::<HashMap<String, String>>())
        .and(accept())
        .then(
            |_: Claims, state: Arc<AppState>, q, accept: Option<String>| async move {
                respond(
                    parse(&q, &["tail", "follow", "level", "bot"]).map(|t| tail(&state, t, accept)),
                )
            },
        );
    let one = warp::path("bots")
        .and(warp::path::param::<String>())
        .and(warp::path("logs"))
        .and(warp::path::end())
        .and(warp::get())
        .and(auth(state.clone(), Role::Viewer))
        .and(with_state(state))
        .and(warp::query::<HashMap<String, String>>())
        .and(accept())
        .then(
            |name: String, _: Claims, state: Arc<AppState>, q, accept: Option<String>| async move {
                respond(
                    async {
                        let name = bot_name(&name)?;
                        state.registry.get(name.clone()).await?;
                        let mut t = parse(&q, &["tail", "follow", "level"])?;
                        t.bot = Some(name.into_string());
                        Ok(tail(&state, t, accept))
                    }
                    .await,
                )
            },
        );
    all.or(one).unify()
}

fn wants_sse(accept: Option<&str>) -> bool {
    accept.is_some_and(|a| {
        a.split(',')
            .any(|p| p.trim().starts_with("text/event-stream"))
    })
}

/// One record (or a `missed` notice) as NDJSON or as an SSE event.
fn frame(json: &str, sse: bool, event: &str) -> Bytes {
    if sse {
        Bytes::from(format!("event: {event}\ndata: {json}\n\n"))
    } else {
        Bytes::from(format!("{json}\n"))
    }
}

fn tail(state: &AppState, t: TailQuery, accept: Option<String>) -> Response {
    let sse = wants_sse(accept.as_deref());
    // Subscribe before reading the backlog, so nothing falls between the two.
    let follower = t.follow.then(|| state.logs.follow());
    let backlog = state.logs.tail(t.bot.as_deref(), t.level, t.tail);
    let first = futures::stream::iter(
        backlog
            .into_iter()
            .map(move |r| frame(&r.json, sse, "log"))
            .collect::<Vec<_>>(),
    );
    let body: crate::server::ByteStream = match follower {
        None => Box::pin(first),
        Some(rx) => Box::pin(first.chain(follow(rx, t.bot, t.level, sse))),
    };
    let mut resp = Response::new(Default::default());
    *resp.status_mut() = StatusCode::OK;
    let ctype = if sse {
        "text/event-stream"
    } else {
        "application/x-ndjson"
    };
    resp.headers_mut()
        .insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache"),
    );
    resp.extensions_mut().insert(StreamingBody::new(body));
    resp.into_response()
}

/// New records as they come; a lag becomes one `{"missed": N}`.
fn follow(
    rx: broadcast::Receiver<Arc<LogRecord>>,
    bot: Option<String>,
    level: Level,
    sse: bool,
) -> impl Stream<Item = Bytes> + Send {
    futures::stream::unfold(rx, move |mut rx| {
        let bot = bot.clone();
        async move {
            loop {
                match rx.recv().await {
                    Ok(r) => {
                        let wanted = r.level.is_at_least(level)
                            && bot.as_deref().is_none_or(|b| r.bot.as_deref() == Some(b));
                        if wanted {
                            return Some((frame(&r.json, sse, "log"), rx));
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let json = format!("{{\"missed\":{n}}}");
                        return Some((frame(&json, sse, "missed"), rx));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{LogFormat, LogLevel};
    use crate::telemetry::{logger_with_hub, LevelSwitch, LogHub};

    #[tokio::test]
    async fn a_follower_that_fell_behind_gets_one_missed_notice_then_the_newest_records() {
        let hub = LogHub::new(100, 10, 4);
        let log = logger_with_hub(
            LogFormat::Json,
            LevelSwitch::new(LogLevel::Info),
            std::io::sink(),
            Some(hub.clone()),
        );
        let stream = follow(hub.follow(), None, Level::Info, false);
        futures::pin_mut!(stream);
        // Ten records while the follower reads nothing; its buffer holds four.
        for i in 0..10 {
            slog::info!(log, "Burst."; "n" => i);
        }
        let first = stream.next().await.unwrap();
        assert_eq!(&first[..], b"{\"missed\":6}\n");
        let next: serde_json::Value =
            serde_json::from_slice(&stream.next().await.unwrap()).unwrap();
        assert_eq!(next["n"], 6);
    }

    #[tokio::test]
    async fn followers_see_only_their_bot_and_level_and_sse_frames_name_the_event() {
        let hub = LogHub::new(100, 10, 100);
        let log = logger_with_hub(
            LogFormat::Json,
            LevelSwitch::new(LogLevel::Debug),
            std::io::sink(),
            Some(hub.clone()),
        );
        let stream = follow(hub.follow(), Some("a".into()), Level::Warning, true);
        futures::pin_mut!(stream);
        slog::warn!(log, "Other bot."; "bot" => "b");
        slog::info!(log, "Too low."; "bot" => "a");
        slog::warn!(log, "Wanted."; "bot" => "a");
        let frame = stream.next().await.unwrap();
        let text = std::str::from_utf8(&frame).unwrap();
        assert!(text.starts_with("event: log\ndata: {"), "{text}");
        assert!(text.contains("Wanted."), "{text}");
    }
}
