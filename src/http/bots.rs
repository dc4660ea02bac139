//! `/api/v1/bots…` and `/api/v1/events`: the bot lifecycle and its events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use botd_actors::model::{BotPatch, BotSpec, BotState, BotTemplate, RestartPolicy};
use botd_actors::names::{BotName, ModelName, PoolName};
use botd_actors::registry::CreateBot;
use botd_actors::settings::check_range;
use botd_actors::store::queries;
use http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::error::ApiError;
use super::view::{BotList, BotView, EventList, EventView};
use super::{auth, json_body, json_reply, optional_json_body, respond, with_state};
use crate::auth::{Claims, Role};
use crate::state::AppState;

/// `POST /api/v1/bots`: a spec and `autostart`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBotRequest {
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub name: String,
    #[schema(pattern = r"^[A-Za-z0-9._:/-]{1,200}$")]
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,55}$")]
    pub pool: Option<String>,
    /// `permanent` (default), `transient` or `temporary`.
    #[schema(pattern = r"^(permanent|transient|temporary)$")]
    pub restart: Option<String>,
    #[schema(minimum = 1, maximum = 1024)]
    pub concurrency: Option<i64>,
    #[schema(minimum = 1, maximum = 100000)]
    pub mailbox_capacity: Option<i64>,
    #[schema(minimum = 0, maximum = 1000)]
    pub context_messages: Option<i64>,
    #[schema(value_type = Option<Object>)]
    pub options: Option<serde_json::Value>,
    /// Start the bot at once.
    pub autostart: Option<bool>,
}

/// Deserialises a field that may be absent (None), null (Some(None)) or a value.
fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// `PATCH /api/v1/bots/{name}`: the fields to change; `null` clears `system_prompt` and `pool`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchBotRequest {
    #[schema(pattern = r"^[A-Za-z0-9._:/-]{1,200}$")]
    pub model: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub system_prompt: Option<Option<String>>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>, pattern = r"^[a-z0-9][a-z0-9_-]{0,55}$")]
    pub pool: Option<Option<String>>,
    #[schema(pattern = r"^(permanent|transient|temporary)$")]
    pub restart: Option<String>,
    #[schema(minimum = 1, maximum = 1024)]
    pub concurrency: Option<i64>,
    #[schema(minimum = 1, maximum = 100000)]
    pub mailbox_capacity: Option<i64>,
    #[schema(minimum = 0, maximum = 1000)]
    pub context_messages: Option<i64>,
    #[schema(value_type = Option<Object>)]
    pub options: Option<serde_json::Value>,
}

/// `POST /api/v1/bots/{name}/stop`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    #[schema(minimum = 1, maximum = 3600000)]
    pub timeout_ms: Option<i64>,
}

pub fn field<T>(key: &str, r: Result<T, impl std::fmt::Display>) -> Result<T, ApiError> {
    r.map_err(|e| ApiError::invalid_field(format!("{key}: {e}")))
}

pub fn ranged(key: &str, v: i64, lo: i64, hi: i64) -> Result<u32, ApiError> {
    check_range(key, v, lo, hi).map_err(|e| ApiError::invalid_field(e.to_string()))?;
    Ok(v as u32)
}

fn parse_restart(s: &str) -> Result<RestartPolicy, ApiError> {
    RestartPolicy::parse(s).ok_or_else(|| {
        ApiError::invalid_field("restart: must be permanent, transient or temporary")
    })
}

fn parse_prompt(state: &AppState, s: String) -> Result<String, ApiError> {
    let max = state.config.limits.max_system_prompt_bytes;
    if s.len() > max {
        return Err(ApiError::invalid_field(format!(
            "system_prompt: at most {max} bytes, got {}",
            s.len()
        )));
    }
    Ok(s)
}

fn parse_options(
    v: serde_json::Value,
) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    let serde_json::Value::Object(map) = v else {
        return Err(ApiError::invalid_field("options: must be a JSON object"));
    };
    let size = serde_json::to_vec(&map)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > 16 * 1024 {
        return Err(ApiError::invalid_field(format!(
            "options: at most 16384 bytes of JSON, got {size}"
        )));
    }
    Ok(map)
}

/// Parses a bot name from a path segment.
pub fn bot_name(s: &str) -> Result<BotName, ApiError> {
    field("name", BotName::parse(s))
}

/// A bot spec's fields other than `name` and `pool`: what a bot and a pool's template
/// share. Absent fields take the configured defaults.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateRequest {
    #[schema(pattern = r"^[A-Za-z0-9._:/-]{1,200}$")]
    pub model: Option<String>,
    pub system_prompt: Option<String>,
    /// `permanent` (default), `transient` or `temporary`.
    #[schema(pattern = r"^(permanent|transient|temporary)$")]
    pub restart: Option<String>,
    #[schema(minimum = 1, maximum = 1024)]
    pub concurrency: Option<i64>,
    #[schema(minimum = 1, maximum = 100000)]
    pub mailbox_capacity: Option<i64>,
    #[schema(minimum = 0, maximum = 1000)]
    pub context_messages: Option<i64>,
    #[schema(value_type = Option<Object>)]
    pub options: Option<serde_json::Value>,
}

impl TemplateRequest {
    /// Validates every field (the error names it) and fills in the defaults.
    pub fn into_template(self, state: &AppState) -> Result<BotTemplate, ApiError> {
        let d = &state.config.bots;
        Ok(BotTemplate {
            model: field(
                "model",
                ModelName::parse(
                    self.model
                        .as_deref()
                        .unwrap_or(&state.config.llm.default_model),
                ),
            )?,
            system_prompt: self
                .system_prompt
                .map(|s| parse_prompt(state, s))
                .transpose()?,
            restart: self
                .restart
                .as_deref()
                .map(parse_restart)
                .transpose()?
                .unwrap_or(RestartPolicy::Permanent),
            concurrency: match self.concurrency {
                Some(v) => ranged("concurrency", v, 1, 1024)?,
                None => d.default_concurrency,
            },
            mailbox_capacity: match self.mailbox_capacity {
                Some(v) => ranged("mailbox_capacity", v, 1, 100_000)?,
                None => d.default_mailbox_capacity,
            },
            context_messages: match self.context_messages {
                Some(v) => ranged("context_messages", v, 0, 1000)?,
                None => d.default_context_messages,
            },
            options: self
                .options
                .map(parse_options)
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

impl CreateBotRequest {
    fn into_spec(self, state: &AppState) -> Result<(BotSpec, bool), ApiError> {
        let name = bot_name(&self.name)?;
        let pool = self
            .pool
            .map(|p| field("pool", PoolName::parse(&p)))
            .transpose()?;
        let template = TemplateRequest {
            model: self.model,
            system_prompt: self.system_prompt,
            restart: self.restart,
            concurrency: self.concurrency,
            mailbox_capacity: self.mailbox_capacity,
            context_messages: self.context_messages,
            options: self.options,
        }
        .into_template(state)?;
        Ok((template.spec(name, pool), self.autostart.unwrap_or(false)))
    }
}

impl PatchBotRequest {
    fn into_patch(self, state: &AppState) -> Result<BotPatch, ApiError> {
        Ok(BotPatch {
            model: self
                .model
                .map(|m| field("model", ModelName::parse(&m)))
                .transpose()?,
            system_prompt: match self.system_prompt {
                Some(Some(s)) => Some(Some(parse_prompt(state, s)?)),
                other => other.map(|_| None),
            },
            pool: match self.pool {
                Some(Some(p)) => Some(Some(field("pool", PoolName::parse(&p))?)),
                other => other.map(|_| None),
            },
            restart: self.restart.as_deref().map(parse_restart).transpose()?,
            concurrency: self
                .concurrency
                .map(|v| ranged("concurrency", v, 1, 1024))
                .transpose()?,
            mailbox_capacity: self
                .mailbox_capacity
                .map(|v| ranged("mailbox_capacity", v, 1, 100_000))
                .transpose()?,
            context_messages: self
                .context_messages
                .map(|v| ranged("context_messages", v, 0, 1000))
                .transpose()?,
            options: self.options.map(parse_options).transpose()?,
        })
    }
}

/// Query parameters, with unknown ones refused.
pub fn query(q: &HashMap<String, String>, allowed: &[&str]) -> Result<(), ApiError> {
    for k in q.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::invalid_field(format!(
                "{k}: unknown query parameter"
            )));
        }
    }
    Ok(())
}

/// `limit` from a query: 1..=500, default 50.
pub fn limit(q: &HashMap<String, String>) -> Result<i64, ApiError> {
    match q.get("limit") {
        None => Ok(50),
        Some(s) => {
            let v: i64 = field("limit", s.parse::<i64>())?;
            check_range("limit", v, 1, 500).map_err(|e| ApiError::invalid_field(e.to_string()))?;
            Ok(v)
        }
    }
}

pub fn bool_param(q: &HashMap<String, String>, key: &str) -> Result<bool, ApiError> {
    match q.get(key).map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::invalid_field(format!(
            "{key}: must be true or false"
        ))),
    }
}

fn bot_json(status: StatusCode, info: botd_actors::model::BotInfo) -> Response {
    json_reply(status, &BotView::from(info))
}

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let bots = warp::path("bots");
    let s = || with_state(state.clone());
    let q = || warp::query::<HashMap<String, String>>();

    let create = bots
        .and(warp::path::end())
        .and(warp::post())
        .and(auth(state.clone(), Role::Admin))
        .and(s())
        .and(json_body::<CreateBotRequest>(state.clone()))
        .then(create);
    let list = bots
        .and(warp::path::end())
        .and(warp::get())
        .and(auth(state.clone(), Role::Viewer))
        .and(s())
        .and(q())
        .then(list);
    let get = bots
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::get())
        .and(auth(state.clone(), Role::Viewer))
        .and(s())
        .then(get);
    let patch = bots
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::patch())
        .and(auth(state.clone(), Role::Admin))
        .and(s())
        .and(json_body::<PatchBotRequest>(state.clone()))
        .then(patch);
    let delete = bots
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::delete())
        .and(auth(state.clone(), Role::Admin))
        .and(s())
        .and(q())
        .then(delete);
    let start = bots
        .and(warp::path::param::<String>())
        .and(warp::path("start"))
        .and(warp::path::end())
        .and(warp::post())
        .and(auth(state.clone(), Role::Operator))
        .and(s())
        .then(start);
    let stop = bots
        .and(warp::path::param::<String>())
        .and(warp::path("stop"))
        .and(warp::path::end())
        .and(warp::post())
        .and(auth(state.clone(), Role::Operator))
        .and(s())
        .and(optional_json_body::<StopRequest>(state.clone()))
        .then(stop);
    let restart = bots
        .and(warp::path::param::<String>())
        .and(warp::path("restart"))
        .and(warp::path::end())
        .and(warp::post())
        .and(auth(state.clone(), Role::Operator))
        .and(s())
        .then(restart);
    let bot_events = bots
        .and(warp::path::param::<String>())
        .and(warp::path("events"))
        .and(warp::path::end())
        .and(warp::get())
        .and(auth(state.clone(), Role::Viewer))
        .and(s())
        .and(q())
        .then(bot_events);
    let events = warp::path("events")
        .and(warp::path::end())
        .and(warp::get())
        .and(auth(state.clone(), Role::Viewer))
        .and(s())
        .and(q())
        .then(events);

    create
        .or(list)
        .unify()
        .or(get)
        .unify()
        .or(patch)
        .unify()
        .or(delete)
        .unify()
        .or(start)
        .unify()
        .or(stop)
        .unify()
        .or(restart)
        .unify()
        .or(bot_events)
        .unify()
        .or(events)
        .unify()
}

/// Refuses a model the model server says it does not have. When the server cannot be
/// asked (down, slow), the bot is accepted and the first message will tell.
pub async fn check_model(state: &AppState, model: &ModelName) -> Result<(), ApiError> {
    let ask = state.llm.client().model_exists(model.as_str());
    match tokio::time::timeout(Duration::from_secs(2), ask).await {
        Ok(Ok(false)) => Err(ApiError::invalid_field(format!(
            "model: the model server has no model '{model}' (pull it first)"
        ))),
        Ok(Ok(true)) => Ok(()),
        Ok(Err(e)) => {
            slog::warn!(state.log, "The model could not be checked."; "model" => model.as_str(), "error" => e.to_string());
            Ok(())
        }
        Err(_) => {
            slog::warn!(state.log, "The model could not be checked in time."; "model" => model.as_str());
            Ok(())
        }
    }
}

async fn create(claims: Claims, state: Arc<AppState>, body: CreateBotRequest) -> Response {
    respond(
        async {
            let (spec, autostart) = body.into_spec(&state)?;
            check_model(&state, &spec.model).await?;
            let info = state
                .registry
                .create(CreateBot {
                    spec,
                    managed: false,
                    autostart,
                    subject: claims.sub,
                })
                .await?;
            Ok(bot_json(StatusCode::CREATED, info))
        }
        .await,
    )
}

async fn list(_: Claims, state: Arc<AppState>, q: HashMap<String, String>) -> Response {
    respond(
        async {
            query(&q, &["pool", "state"])?;
            let pool = q
                .get("pool")
                .map(|p| field("pool", PoolName::parse(p)))
                .transpose()?;
            let st = q
                .get("state")
                .map(|s| {
                    BotState::parse(s).ok_or_else(|| {
                        ApiError::invalid_field(
                            "state: must be stopped, starting, running, stopping, backoff or failed",
                        )
                    })
                })
                .transpose()?;
            let bots = state.registry.list(pool, st).await?;
            Ok(json_reply(
                StatusCode::OK,
                &BotList {
                    bots: bots.into_iter().map(BotView::from).collect(),
                },
            ))
        }
        .await,
    )
}

async fn get(name: String, _: Claims, state: Arc<AppState>) -> Response {
    respond(
        async {
            let info = state.registry.get(bot_name(&name)?).await?;
            Ok(bot_json(StatusCode::OK, info))
        }
        .await,
    )
}

async fn patch(
    name: String,
    claims: Claims,
    state: Arc<AppState>,
    body: PatchBotRequest,
) -> Response {
    respond(
        async {
            let name = bot_name(&name)?;
            let patch = body.into_patch(&state)?;
            if let Some(model) = &patch.model {
                check_model(&state, model).await?;
            }
            let info = state.registry.update(name, patch, claims.sub).await?;
            Ok(bot_json(StatusCode::OK, info))
        }
        .await,
    )
}

async fn delete(
    name: String,
    claims: Claims,
    state: Arc<AppState>,
    q: HashMap<String, String>,
) -> Response {
    respond(
        async {
            query(&q, &["purge"])?;
            let purge = bool_param(&q, "purge")?;
            state
                .registry
                .delete(bot_name(&name)?, purge, claims.sub)
                .await?;
            Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
        }
        .await,
    )
}

async fn start(name: String, claims: Claims, state: Arc<AppState>) -> Response {
    respond(
        async {
            let info = state.registry.start(bot_name(&name)?, claims.sub).await?;
            Ok(bot_json(StatusCode::OK, info))
        }
        .await,
    )
}

async fn stop(name: String, claims: Claims, state: Arc<AppState>, body: StopRequest) -> Response {
    respond(
        async {
            let name = bot_name(&name)?;
            let timeout = body
                .timeout_ms
                .map(|v| {
                    check_range("timeout_ms", v, 1, 3_600_000)
                        .map_err(|e| ApiError::invalid_field(e.to_string()))
                        .map(|_| Duration::from_millis(v as u64))
                })
                .transpose()?;
            let info = state.registry.stop(name, timeout, claims.sub).await?;
            Ok(bot_json(StatusCode::OK, info))
        }
        .await,
    )
}

async fn restart(name: String, claims: Claims, state: Arc<AppState>) -> Response {
    respond(
        async {
            let info = state.registry.restart(bot_name(&name)?, claims.sub).await?;
            Ok(bot_json(StatusCode::OK, info))
        }
        .await,
    )
}

async fn bot_events(
    name: String,
    _: Claims,
    state: Arc<AppState>,
    q: HashMap<String, String>,
) -> Response {
    respond(
        async {
            query(&q, &["limit", "kind"])?;
            let name = bot_name(&name)?;
            // The bot must exist (its events outlive it, but its route does not).
            state.registry.get(name.clone()).await?;
            let limit = limit(&q)?;
            let kind = q.get("kind").cloned();
            let bot = name.into_string();
            let rows = state
                .store
                .read(move |c| queries::list_events(c, Some(&bot), None, kind.as_deref(), limit))
                .await
                .map_err(botd_actors::model::EngineError::from)?;
            Ok(json_reply(
                StatusCode::OK,
                &EventList {
                    events: rows.into_iter().map(EventView::from).collect(),
                },
            ))
        }
        .await,
    )
}

async fn events(_: Claims, state: Arc<AppState>, q: HashMap<String, String>) -> Response {
    respond(
        async {
            query(&q, &["bot", "pool", "kind", "limit"])?;
            let bot = q
                .get("bot")
                .map(|b| bot_name(b).map(BotName::into_string))
                .transpose()?;
            let pool = q
                .get("pool")
                .map(|p| field("pool", PoolName::parse(p)).map(PoolName::into_string))
                .transpose()?;
            let kind = q.get("kind").cloned();
            let limit = limit(&q)?;
            let rows = state
                .store
                .read(move |c| {
                    queries::list_events(c, bot.as_deref(), pool.as_deref(), kind.as_deref(), limit)
                })
                .await
                .map_err(botd_actors::model::EngineError::from)?;
            Ok(json_reply(
                StatusCode::OK,
                &EventList {
                    events: rows.into_iter().map(EventView::from).collect(),
                },
            ))
        }
        .await,
    )
}
