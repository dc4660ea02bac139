//! `/healthz`, `/readyz` and `/api/v1/status`.

use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::{auth, json_reply, with_state};
use crate::auth::{Claims, Role};
use crate::state::{AppState, Phase};

/// How long the actor system has to answer `/healthz`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unhealthy` when the actor system does not answer within 1 s.
    pub status: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ReadyChecks {
    /// `ok` or `down`.
    pub database: &'static str,
    /// What the LLM pool last saw: `ok` or `down` (does not decide readiness).
    pub llm: &'static str,
    /// `ok`, `disabled` or `down` (does not decide readiness).
    pub redis: &'static str,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// `ready` or `not_ready`.
    pub status: &'static str,
    /// `starting` or `shutting_down` when not ready for that reason.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<&'static str>,
    pub checks: ReadyChecks,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LlmStatus {
    pub in_flight: usize,
    pub queued: usize,
    /// `llm.max_concurrent`.
    pub capacity: usize,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    pub version: &'static str,
    pub uptime_secs: u64,
    /// Bots by state, every state present.
    #[schema(value_type = Object)]
    pub bots: std::collections::BTreeMap<&'static str, usize>,
    pub llm: LlmStatus,
}

/// The routes outside `/api/v1`, without auth.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let healthz = warp::path("healthz")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state.clone()))
        .then(healthz);
    let readyz = warp::path("readyz")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state.clone()))
        .then(readyz);
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .and(with_state(state))
        .then(metrics);
    healthz.or(readyz).unify().or(metrics).unify()
}

/// `/api/v1/status`.
pub fn api_routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::path("status")
        .and(warp::path::end())
        .and(warp::get())
        .and(auth(state.clone(), Role::Viewer))
        .and(with_state(state))
        .then(status)
}

async fn healthz(state: Arc<AppState>) -> Response {
    let alive = tokio::time::timeout(HEALTH_TIMEOUT, state.registry.ping())
        .await
        .unwrap_or(false);
    if alive {
        json_reply(StatusCode::OK, &Health { status: "ok" })
    } else {
        let mut r = json_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &Health {
                status: "unhealthy",
            },
        );
        r.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        r
    }
}

async fn readyz(state: Arc<AppState>) -> Response {
    let database = match tokio::time::timeout(HEALTH_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => "ok",
        _ => "down",
    };
    let llm = if state.llm.breaker_open() {
        "down"
    } else {
        "ok"
    };
    // Redis is reported, never decides readiness: without it the cache is in-process.
    let redis = match &state.redis {
        None => "disabled",
        Some(r) => {
            if r.ping().await {
                "ok"
            } else {
                "down"
            }
        }
    };
    let phase = state.phase.get();
    let ready = phase == Phase::Ready && database == "ok";
    let body = Ready {
        status: if ready { "ready" } else { "not_ready" },
        phase: match phase {
            Phase::Starting => Some("starting"),
            Phase::ShuttingDown => Some("shutting_down"),
            Phase::Ready => None,
        },
        checks: ReadyChecks {
            database,
            llm,
            redis,
        },
    };
    if ready {
        json_reply(StatusCode::OK, &body)
    } else {
        let mut r = json_reply(StatusCode::SERVICE_UNAVAILABLE, &body);
        r.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        r
    }
}

/// `/metrics`: the Prometheus text format. Gauges read at scrape time are refreshed first.
async fn metrics(state: Arc<AppState>) -> Response {
    let m = botd_actors::metrics::Metrics::get();
    if let Ok(counts) = state.registry.counts().await {
        for (st, n) in counts {
            m.bots.with_label_values(&[st]).set(n as i64);
        }
    }
    state.store.publish_pool_state();
    let mut r = Response::new(m.render().into());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

async fn status(_: Claims, state: Arc<AppState>) -> Response {
    let bots = state.registry.counts().await.unwrap_or_default();
    let load = state.llm.load().await;
    json_reply(
        StatusCode::OK,
        &Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: state.started.elapsed().as_secs(),
            bots,
            llm: LlmStatus {
                in_flight: load.in_flight,
                queued: load.queued,
                capacity: load.capacity,
            },
        },
    )
}
