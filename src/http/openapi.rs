//! `/api/v1/openapi.json`: the OpenAPI 3 document, generated from the code.
//!
//! Each operation is declared once, with `#[utoipa::path]` on a documentation-only
//! function in [`ops`] (the handlers are warp filters, which utoipa cannot read). Those
//! declarations list every status the handler can answer; [`SecurityAddon`] adds the
//! bearer scheme, [`CommonHeaders`] the headers every response (`X-Request-Id`) and
//! every 429 and 503 (`Retry-After`) carries, [`OptionalBodies`] fixes how utoipa
//! renders an optional body, and [`EventStreams`] describes the events of each
//! `text/event-stream` answer. The JSON is built once ([`document_json`]).
//! `tests/openapi.rs` checks the document against itself and against the route list of
//! `docs/api.md`; a route added to the API needs its declaration here.

use std::sync::OnceLock;

use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::SchemaType;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    HeaderBuilder, ObjectBuilder, OpenApi as OpenApiDoc, RefOr, Required, Schema, Type,
};
use utoipa::{Modify, OpenApi};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::auth::{LoginRequest, LoginResponse, WhoAmI};
use super::bots::{CreateBotRequest, PatchBotRequest, StopRequest, TemplateRequest};
use super::daemon::{Health, LlmStatus, Ready, ReadyChecks, Status};
use super::messages::SendRequest;
use super::pools::PutPoolRequest;
use super::users::{CreateUserRequest, PatchUserRequest, UserList, UserView};
use super::view::{
    AnswerView, BotList, BotView, ErrorBody, ErrorInner, EventList, EventView, MessageList,
    MessageView, PoolList, PoolMemberView, PoolView, ReplyView, TemplateView, TimingsView,
    UsageView,
};

/// The name of the bearer security scheme (the `security(...)` of each declaration in
/// [`ops`] spells it out: the attribute takes a literal).
pub const BEARER: &str = "bearerAuth";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "botd",
        description = "The botd HTTP API, version 1 (docs/api.md).\n\n\
            Request bodies are `application/json`, decoded strictly: an unknown field is 400 \
            `invalid_field`, a body that is not JSON 400 `invalid_json`. Every error answer has \
            the `ErrorBody` shape. Every response carries `X-Request-Id` (echoed from the \
            request when given). Every `/api/v1` route but this document needs a bearer JWT; \
            the least role an operation needs is in its `x-botd-role` extension."
    ),
    paths(
        ops::create_bot,
        ops::list_bots,
        ops::get_bot,
        ops::update_bot,
        ops::delete_bot,
        ops::start_bot,
        ops::stop_bot,
        ops::restart_bot,
        ops::list_bot_events,
        ops::list_events,
        ops::bot_logs,
        ops::logs,
        ops::metrics,
        ops::send_bot_message,
        ops::list_bot_messages,
        ops::send_pool_message,
        ops::list_pool_messages,
        ops::list_pools,
        ops::get_pool,
        ops::put_pool,
        ops::delete_pool,
        ops::get_status,
        ops::healthz,
        ops::readyz,
        ops::get_openapi,
        ops::login,
        ops::whoami,
        ops::create_user,
        ops::list_users,
        ops::update_user,
        ops::delete_user,
        ops::websocket,
    ),
    components(schemas(
        CreateBotRequest,
        TemplateRequest,
        PutPoolRequest,
        PoolView,
        PoolList,
        PoolMemberView,
        TemplateView,
        PatchBotRequest,
        StopRequest,
        SendRequest,
        BotView,
        BotList,
        AnswerView,
        ReplyView,
        UsageView,
        TimingsView,
        MessageView,
        MessageList,
        EventView,
        EventList,
        ErrorBody,
        ErrorInner,
        Health,
        Ready,
        ReadyChecks,
        Status,
        LlmStatus,
        LoginRequest,
        LoginResponse,
        WhoAmI,
        CreateUserRequest,
        PatchUserRequest,
        UserView,
        UserList,
        crate::auth::Role,
        crate::auth::TokenKind,
    )),
    modifiers(&SecurityAddon, &CommonHeaders, &OptionalBodies, &EventStreams),
    tags(
        (name = "bots", description = "Bots: create, configure, start, stop, delete."),
        (name = "pools", description = "Managed pools: a template, bounds and autoscaling."),
        (name = "messages", description = "Messages to bots and pools, and their history."),
        (name = "events", description = "Lifecycle and audit events."),
        (name = "logs", description = "Live log tails."),
        (name = "daemon", description = "Health, readiness, status and this document."),
        (name = "auth", description = "Login, the token's identity, and users."),
    )
)]
pub struct ApiDoc;

/// Adds the `bearerAuth` scheme (HS256 JWTs) that the operations refer to.
pub struct SecurityAddon;

impl Modify for SecurityAddon {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An HS256 JWT signed with the server secret, with the claims `sub`, \
                         `role`, `kind`, `iat`, `exp` and `iss` = `botd`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Adds `X-Request-Id` to every response and `Retry-After` to every 429 and 503, so that
/// no declaration can forget them.
pub struct CommonHeaders;

impl Modify for CommonHeaders {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let request_id = HeaderBuilder::new()
            .schema(ObjectBuilder::new().schema_type(Type::String).build())
            .description(Some(
                "The request's id: the request's own `X-Request-Id` when it gave a valid one, \
                 else one the server made.",
            ))
            .build();
        let retry_after = HeaderBuilder::new()
            .schema(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
                    .build(),
            )
            .description(Some(
                "Whole seconds to wait before trying again (at least 1).",
            ))
            .build();
        for op in operations_mut(openapi) {
            for (status, response) in op.responses.responses.iter_mut() {
                let RefOr::T(response) = response else {
                    continue;
                };
                response
                    .headers
                    .insert("X-Request-Id".to_owned(), request_id.clone());
                if status == "429" || status == "503" {
                    response
                        .headers
                        .insert("Retry-After".to_owned(), retry_after.clone());
                }
            }
        }
    }
}

/// An optional request body is one that may be absent (an empty body), not one that may
/// be JSON `null` (which the strict decoder refuses): utoipa renders `Option<T>` bodies as
/// `oneOf: [null, T]`, so this puts `T` back, leaving `required` unset.
pub struct OptionalBodies;

impl Modify for OptionalBodies {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        let is_null = |s: &RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == SchemaType::Type(Type::Null));
        for op in operations_mut(openapi) {
            let Some(body) = op.request_body.as_mut() else {
                continue;
            };
            if body.required == Some(Required::True) {
                continue;
            }
            for content in body.content.values_mut() {
                let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema else {
                    continue;
                };
                let mut rest = one_of.items.iter().filter(|s| !is_null(s));
                if let (Some(only), None) = (rest.next(), rest.next()) {
                    content.schema = Some(only.clone());
                }
            }
        }
    }
}

/// Describes each event of the `text/event-stream` answers. Before OpenAPI 3.2 (this
/// document is 3.1) a sequential media type's `schema` is the schema of one event: an
/// object with the event's name and its `data`, a JSON text whose own schema is the
/// JSON Schema keyword `contentSchema`. utoipa has no field for that keyword, so it goes
/// into the data schema's extension map, which serializes its keys as they are.
pub struct EventStreams;

impl EventStreams {
    /// One event: `event: NAME` with `data` holding JSON that `content` describes.
    fn event(name: &str, content: RefOr<Schema>) -> RefOr<Schema> {
        let mut data = ObjectBuilder::new()
            .schema_type(Type::String)
            .content_media_type("application/json")
            .build();
        let content = serde_json::to_value(content).expect("a schema is plain data");
        data.extensions
            .get_or_insert_with(Default::default)
            .insert("contentSchema".to_owned(), content);
        ObjectBuilder::new()
            .property(
                "event",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some([name])),
            )
            .required("event")
            .property("data", data)
            .required("data")
            .into()
    }

    fn one_of(events: Vec<RefOr<Schema>>) -> RefOr<Schema> {
        let mut one_of = utoipa::openapi::OneOf::new();
        one_of.items = events;
        Schema::OneOf(one_of).into()
    }

    /// A message's stream: `token` pieces, then `done` with the answer or `error`.
    fn message() -> RefOr<Schema> {
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let token = ObjectBuilder::new()
            .property("content", string())
            .required("content")
            .into();
        Self::one_of(vec![
            Self::event("token", token),
            Self::event(
                "done",
                RefOr::Ref(utoipa::openapi::Ref::from_schema_name("AnswerView")),
            ),
            Self::event(
                "error",
                RefOr::Ref(utoipa::openapi::Ref::from_schema_name("ErrorBody")),
            ),
        ])
    }

    /// A log tail: `log` records, and `missed` with how many a slow follower lost.
    fn logs() -> RefOr<Schema> {
        let string = || ObjectBuilder::new().schema_type(Type::String);
        let record = ObjectBuilder::new()
            .property("ts", string())
            .required("ts")
            .property("level", string())
            .required("level")
            .property("msg", string())
            .required("msg")
            .into();
        let missed = ObjectBuilder::new()
            .property(
                "missed",
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1)),
            )
            .required("missed")
            .into();
        Self::one_of(vec![
            Self::event("log", record),
            Self::event("missed", missed),
        ])
    }
}

impl Modify for EventStreams {
    fn modify(&self, openapi: &mut OpenApiDoc) {
        for op in operations_mut(openapi) {
            let schema = match op.operation_id.as_deref() {
                Some("send_bot_message" | "send_pool_message") => Self::message(),
                Some("bot_logs" | "logs") => Self::logs(),
                _ => continue,
            };
            let Some(RefOr::T(ok)) = op.responses.responses.get_mut("200") else {
                continue;
            };
            if let Some(content) = ok.content.get_mut("text/event-stream") {
                content.schema = Some(schema);
            }
        }
    }
}

/// Every operation of the document.
fn operations_mut(openapi: &mut OpenApiDoc) -> impl Iterator<Item = &mut Operation> {
    openapi.paths.paths.values_mut().flat_map(|item| {
        [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
    })
}

/// The document as JSON, built once.
pub fn document_json() -> &'static str {
    static DOC: OnceLock<String> = OnceLock::new();
    DOC.get_or_init(|| {
        ApiDoc::openapi()
            .to_json()
            .expect("the OpenAPI document is plain data and always serializes")
    })
}

pub fn route(
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::path("openapi.json")
        .and(warp::path::end())
        .and(warp::get())
        .map(|| {
            warp::reply::with_header(document_json(), "content-type", "application/json")
                .into_response()
        })
}

/// Documentation-only declarations, one per operation; nothing calls them.
#[allow(dead_code)]
mod ops {
    use utoipa::{IntoParams, ToSchema};

    use crate::http::bots::{CreateBotRequest, PatchBotRequest, StopRequest};
    use crate::http::daemon::{Health, Ready, Status};
    use crate::http::messages::SendRequest;
    use crate::http::pools::PutPoolRequest;
    use crate::http::view::{
        AnswerView, BotList, BotView, ErrorBody, EventList, MessageList, PoolList, PoolView,
    };

    const E400: &str = "`invalid_json` (the body is not JSON) or `invalid_field` (the message \
        names the field or parameter and the rule).";
    const E400_PARAMS: &str =
        "`invalid_field`: a path or query parameter is malformed, out of range or unknown.";
    const E401: &str = "`unauthorized`: the token is missing, malformed, expired or badly signed.";
    const E403_VIEWER: &str = "`forbidden`: this needs the `viewer` role.";
    const E403_OPERATOR: &str = "`forbidden`: this needs the `operator` role.";
    const E403_ADMIN: &str = "`forbidden`: this needs the `admin` role.";
    const E404_BOT: &str = "`bot_not_found`.";
    const E413: &str = "`payload_too_large`: the body is over `http.max_body_bytes` (1 MiB).";
    const E415: &str = "`unsupported_media_type`: the body is not `application/json`.";
    const E429: &str = "`rate_limited`.";
    const E500: &str = "`internal`: a bug, logged with the request id.";
    const E503_STORE: &str = "`not_ready`: the database is unavailable.";

    /// A bot state, as the `state` filter takes it.
    #[derive(ToSchema)]
    #[schema(rename_all = "lowercase")]
    enum BotStateName {
        Stopped,
        Starting,
        Running,
        Stopping,
        Backoff,
        Failed,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    struct ListBotsQuery {
        /// Only the bots that name this pool.
        #[param(pattern = r"^[a-z0-9][a-z0-9_-]{0,55}$")]
        pool: Option<String>,
        /// Only the bots in this state.
        #[param(inline)]
        state: Option<BotStateName>,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    struct DeleteBotQuery {
        /// Delete the bot's message history too (kept by default; its events are always kept).
        #[param(default = false)]
        purge: Option<bool>,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    struct BotEventsQuery {
        /// At most this many events.
        #[param(minimum = 1, maximum = 500, default = 50)]
        limit: Option<i64>,
        /// Only events of this kind (`created`, `updated`, `started`, `stopped`,
        /// `crashed`, `backoff`, `restarted`, `failed`, `deleted`, …).
        kind: Option<String>,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    struct BotLogsQuery {
        /// Records of the backlog to send first (0: none).
        #[param(minimum = 0, maximum = 10000, default = 100)]
        tail: Option<i64>,
        /// Keep the answer open and stream new records.
        #[param(default = false)]
        follow: Option<bool>,
        /// The least severe level sent: `trace`, `debug`, `info`, `warn`, `error`, `critical`.
        #[param(default = "info", pattern = "^(trace|debug|info|warn|error|critical)$")]
        level: Option<String>,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    struct LogsQuery {
        /// Records of the backlog to send first (0: none).
        #[param(minimum = 0, maximum = 10000, default = 100)]
        tail: Option<i64>,
        /// Keep the answer open and stream new records.
        #[param(default = false)]
        follow: Option<bool>,
        /// The least severe level sent: `trace`, `debug`, `info`, `warn`, `error`, `critical`.
        #[param(default = "info", pattern = "^(trace|debug|info|warn|error|critical)$")]
        level: Option<String>,
        /// Only the records of this bot.
        #[param(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
        bot: Option<String>,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    struct EventsQuery {
        /// Only the events of this bot.
        #[param(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
        bot: Option<String>,
        /// Only the events of this pool.
        #[param(pattern = r"^[a-z0-9][a-z0-9_-]{0,55}$")]
        pool: Option<String>,
        /// Only events of this kind: bots `created`, `updated`, `started`, `stopped`,
        /// `crashed`, `backoff`, `restarted`, `failed`, `deleted`; pools `pool_created`,
        /// `pool_updated`, `pool_deleted`, `scaled_up`, `scaled_down`; users
        /// `user_created`, `user_updated`, `user_deleted`.
        kind: Option<String>,
        /// At most this many events.
        #[param(minimum = 1, maximum = 500, default = 50)]
        limit: Option<i64>,
    }

    #[derive(IntoParams)]
    #[into_params(parameter_in = Query)]
    struct HistoryQuery {
        /// Only this conversation (default: all of them).
        #[param(pattern = r"^[A-Za-z0-9._:-]{1,128}$")]
        conversation: Option<String>,
        /// At most this many messages.
        #[param(minimum = 1, maximum = 500, default = 50)]
        limit: Option<i64>,
        /// Only messages older than this message id (the previous page's `next_before`).
        #[param(pattern = r"^[1-9][0-9]*$")]
        before: Option<String>,
    }

    /// Creates a bot.
    ///
    /// The bot is stopped unless `autostart` is true. Absent spec fields take their
    /// defaults (`model` = `llm.default_model`, `restart` = `permanent`, `concurrency` = 4,
    /// `mailbox_capacity` = 64, `context_messages` = 20, `options` = `{}`).
    #[utoipa::path(
        post,
        path = "/api/v1/bots",
        tag = "bots",
        request_body = CreateBotRequest,
        responses(
            (status = 201, description = "The bot, created.", body = BotView),
            (status = 400, description = E400, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_ADMIN, body = ErrorBody),
            (status = 409, description = "`bot_exists`.", body = ErrorBody),
            (status = 413, description = E413, body = ErrorBody),
            (status = 415, description = E415, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = "`internal`: a bug, or the bot crashed while starting.", body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("admin"))),
    )]
    fn create_bot() {}

    /// Lists the bots.
    ///
    /// Sorted by name, optionally only those of one pool or in one state.
    #[utoipa::path(
        get,
        path = "/api/v1/bots",
        tag = "bots",
        params(ListBotsQuery),
        responses(
            (status = 200, description = "The bots, sorted by name.", body = BotList),
            (status = 400, description = E400_PARAMS, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_VIEWER, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("viewer"))),
    )]
    fn list_bots() {}

    /// Reads a bot.
    ///
    /// Its spec and live status.
    #[utoipa::path(
        get,
        path = "/api/v1/bots/{name}",
        tag = "bots",
        params(
            ("name" = String, Path, description = "The bot's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"),
        ),
        responses(
            (status = 200, description = "The bot.", body = BotView),
            (status = 400, description = E400_PARAMS, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_VIEWER, body = ErrorBody),
            (status = 404, description = E404_BOT, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("viewer"))),
    )]
    fn get_bot() {}

    /// Changes a bot's spec.
    ///
    /// The change applies from the bot's next start. Absent fields stay as they are;
    /// `null` clears `system_prompt` and `pool`.
    #[utoipa::path(
        patch,
        path = "/api/v1/bots/{name}",
        tag = "bots",
        params(
            ("name" = String, Path, description = "The bot's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"),
        ),
        request_body = PatchBotRequest,
        responses(
            (status = 200, description = "The bot, changed.", body = BotView),
            (status = 400, description = E400, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_ADMIN, body = ErrorBody),
            (status = 404, description = E404_BOT, body = ErrorBody),
            (status = 413, description = E413, body = ErrorBody),
            (status = 415, description = E415, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("admin"))),
    )]
    fn update_bot() {}

    /// Deletes a bot.
    ///
    /// The bot is stopped first (its queued messages get 503 `shutting_down`); its message
    /// history is kept unless `purge=true`.
    #[utoipa::path(
        delete,
        path = "/api/v1/bots/{name}",
        tag = "bots",
        params(
            ("name" = String, Path, description = "The bot's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"),
            DeleteBotQuery,
        ),
        responses(
            (status = 204, description = "The bot is deleted."),
            (status = 400, description = E400_PARAMS, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_ADMIN, body = ErrorBody),
            (status = 404, description = E404_BOT, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("admin"))),
    )]
    fn delete_bot() {}

    /// Starts a bot.
    ///
    /// Starts a stopped or failed bot (a failure is cleared) and answers once it is running.
    #[utoipa::path(
        post,
        path = "/api/v1/bots/{name}/start",
        tag = "bots",
        params(
            ("name" = String, Path, description = "The bot's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"),
        ),
        responses(
            (status = 200, description = "The bot, running.", body = BotView),
            (status = 400, description = E400_PARAMS, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_OPERATOR, body = ErrorBody),
            (status = 404, description = E404_BOT, body = ErrorBody),
            (status = 409, description = "`bot_already_running` (running, starting or in backoff) or `conflict` (stopping).", body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = "`internal`: the bot crashed while starting, or a bug.", body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("operator"))),
    )]
    fn start_bot() {}

    /// Stops a bot.
    ///
    /// New messages are refused, queued ones are answered within the timeout, the rest
    /// get 503 `shutting_down`; answers once the bot is stopped. A bot in backoff or failed
    /// is set stopped at once. The body is optional.
    #[utoipa::path(
        post,
        path = "/api/v1/bots/{name}/stop",
        tag = "bots",
        params(
            ("name" = String, Path, description = "The bot's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"),
        ),
        request_body(
            content = Option<StopRequest>,
            description = "Optional: an empty body stops with the configured `supervisor.stop_timeout_ms` (5000).",
        ),
        responses(
            (status = 200, description = "The bot, stopped.", body = BotView),
            (status = 400, description = E400, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_OPERATOR, body = ErrorBody),
            (status = 404, description = E404_BOT, body = ErrorBody),
            (status = 409, description = "`bot_not_running` (stopped) or `conflict` (stopping).", body = ErrorBody),
            (status = 413, description = E413, body = ErrorBody),
            (status = 415, description = E415, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("operator"))),
    )]
    fn stop_bot() {}

    /// Restarts a bot.
    ///
    /// A running bot is stopped and started again, a stopped or failed one started;
    /// answers once it is running.
    #[utoipa::path(
        post,
        path = "/api/v1/bots/{name}/restart",
        tag = "bots",
        params(
            ("name" = String, Path, description = "The bot's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"),
        ),
        responses(
            (status = 200, description = "The bot, running again.", body = BotView),
            (status = 400, description = E400_PARAMS, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_OPERATOR, body = ErrorBody),
            (status = 404, description = E404_BOT, body = ErrorBody),
            (status = 409, description = "`conflict`: the bot is stopping.", body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = "`internal`: the bot crashed while starting, or a bug.", body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("operator"))),
    )]
    fn restart_bot() {}

    /// Lists a bot's events.
    ///
    /// Newest first.
    #[utoipa::path(
        get,
        path = "/api/v1/bots/{name}/events",
        tag = "events",
        params(
            ("name" = String, Path, description = "The bot's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"),
            BotEventsQuery,
        ),
        responses(
            (status = 200, description = "The bot's events, newest first.", body = EventList),
            (status = 400, description = E400_PARAMS, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_VIEWER, body = ErrorBody),
            (status = 404, description = E404_BOT, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("viewer"))),
    )]
    fn list_bot_events() {}

    /// Lists the events.
    ///
    /// Newest first; `bot` and `pool` of an event may be null.
    #[utoipa::path(
        get,
        path = "/api/v1/events",
        tag = "events",
        params(EventsQuery),
        responses(
            (status = 200, description = "The events, newest first.", body = EventList),
            (status = 400, description = E400_PARAMS, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_VIEWER, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("viewer"))),
    )]
    fn list_events() {}

    /// Sends a message to a bot.
    ///
    /// Answers with the reply. With `"stream": true` the answer is `text/event-stream`:
    /// `event: token` with `{"content": "…"}` for each piece, then one `event: done` with
    /// the answer object or one `event: error` with the error object (`ErrorBody`).
    /// A 200 (or a `done` event) means the message and its reply are both stored. A
    /// client that disconnects cancels its model call.
    #[utoipa::path(
        post,
        path = "/api/v1/bots/{name}/messages",
        tag = "messages",
        params(
            ("name" = String, Path, description = "The bot's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"),
        ),
        request_body = SendRequest,
        responses(
            (status = 200, description = "The reply, or with `stream` an event stream of it.", content(
                (AnswerView = "application/json"),
                (String = "text/event-stream", example = json!(
                    "event: token\ndata: {\"content\":\"Hi\"}\n\nevent: done\ndata: {\"id\":\"1\",\"bot\":\"support-1\",…}\n\n"
                )),
            )),
            (status = 400, description = E400, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_OPERATOR, body = ErrorBody),
            (status = 404, description = E404_BOT, body = ErrorBody),
            (status = 409, description = "`bot_not_running`: the bot is stopped or failed.", body = ErrorBody),
            (status = 413, description = E413, body = ErrorBody),
            (status = 415, description = E415, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 502, description = "`llm_error`: the model server answered with an error.", body = ErrorBody),
            (status = 503, description = "`mailbox_full`, `llm_overloaded`, `llm_unavailable`, `shutting_down` (the bot is stopping or stopped before answering) or `not_ready` (the database is unavailable).", body = ErrorBody),
            (status = 504, description = "`deadline_exceeded` (the message's `timeout_ms` passed) or `llm_timeout` (`llm.request_timeout_secs` passed first).", body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("operator"))),
    )]
    fn send_bot_message() {}

    /// Reads a bot's message history.
    ///
    /// Newest first, a page at a time. History belongs to the bot's name: it outlives
    /// the bot unless the bot was deleted with `purge=true`.
    #[utoipa::path(
        get,
        path = "/api/v1/bots/{name}/messages",
        tag = "messages",
        params(
            ("name" = String, Path, description = "The bot's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"),
            HistoryQuery,
        ),
        responses(
            (status = 200, description = "A page of messages, newest first.", body = MessageList),
            (status = 400, description = E400_PARAMS, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_VIEWER, body = ErrorBody),
            (status = 404, description = "`bot_not_found`: no such bot and no history under its name.", body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("viewer"))),
    )]
    fn list_bot_messages() {}

    /// Sends a message to a pool.
    ///
    /// The least-loaded running member (fewest queued plus in-flight) answers; while a
    /// turn of a conversation is queued or running, its next turns go to the same
    /// member. The answer names the `bot`; `"stream": true` works as for a bot.
    #[utoipa::path(
        post,
        path = "/api/v1/pools/{pool}/messages",
        tag = "messages",
        params(
            ("pool" = String, Path, description = "The pool's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,55}$"),
        ),
        request_body = SendRequest,
        responses(
            (status = 200, description = "The reply, or with `stream` an event stream of it.", content(
                (AnswerView = "application/json"),
                (String = "text/event-stream", example = json!(
                    "event: token\ndata: {\"content\":\"Hi\"}\n\nevent: done\ndata: {\"id\":\"1\",\"bot\":\"support-1\",…}\n\n"
                )),
            )),
            (status = 400, description = E400, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_OPERATOR, body = ErrorBody),
            (status = 404, description = "`pool_not_found`: no bot names this pool.", body = ErrorBody),
            (status = 413, description = E413, body = ErrorBody),
            (status = 415, description = E415, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 502, description = "`llm_error`: the model server answered with an error.", body = ErrorBody),
            (status = 503, description = "`no_bot_available` (no member is running), `mailbox_full`, `llm_overloaded`, `llm_unavailable`, `shutting_down` or `not_ready` (the database is unavailable).", body = ErrorBody),
            (status = 504, description = "`deadline_exceeded` (the message's `timeout_ms` passed) or `llm_timeout` (`llm.request_timeout_secs` passed first).", body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("operator"))),
    )]
    fn send_pool_message() {}

    /// Reads a pool's message history.
    ///
    /// Newest first, a page at a time, each message naming its `bot`.
    #[utoipa::path(
        get,
        path = "/api/v1/pools/{pool}/messages",
        tag = "messages",
        params(
            ("pool" = String, Path, description = "The pool's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,55}$"),
            HistoryQuery,
        ),
        responses(
            (status = 200, description = "A page of messages, newest first.", body = MessageList),
            (status = 400, description = E400_PARAMS, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_VIEWER, body = ErrorBody),
            (status = 404, description = "`pool_not_found`: no such pool (created, or named by a bot) and it has no history.", body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("viewer"))),
    )]
    fn list_pool_messages() {}

    /// Lists the pools.
    ///
    /// Managed pools (created with `PUT`) and pools that only exist because bots name
    /// them (`managed: false`), sorted by name, each with its bots.
    #[utoipa::path(
        get,
        path = "/api/v1/pools",
        tag = "pools",
        responses(
            (status = 200, description = "The pools, sorted by name.", body = PoolList),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_VIEWER, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("viewer"))),
    )]
    fn list_pools() {}

    /// Reads a pool.
    ///
    /// Its spec (null settings for a pool that bots merely name) and its bots' names and
    /// states.
    #[utoipa::path(
        get,
        path = "/api/v1/pools/{pool}",
        tag = "pools",
        params(
            ("pool" = String, Path, description = "The pool's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,55}$"),
        ),
        responses(
            (status = 200, description = "The pool.", body = PoolView),
            (status = 400, description = E400_PARAMS, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_VIEWER, body = ErrorBody),
            (status = 404, description = "`pool_not_found`.", body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("viewer"))),
    )]
    fn get_pool() {}

    /// Creates or replaces a managed pool.
    ///
    /// A new pool's first `min_bots` bots (`{pool}-{n}`) are created and started before
    /// the answer. Existing members take a changed template from their next start;
    /// members over a lowered `max_bots` are scaled down.
    #[utoipa::path(
        put,
        path = "/api/v1/pools/{pool}",
        tag = "pools",
        params(
            ("pool" = String, Path, description = "The pool's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,55}$"),
        ),
        request_body = PutPoolRequest,
        responses(
            (status = 200, description = "The pool, saved.", body = PoolView),
            (status = 400, description = E400, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_ADMIN, body = ErrorBody),
            (status = 413, description = E413, body = ErrorBody),
            (status = 415, description = E415, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("admin"))),
    )]
    fn put_pool() {}

    /// Deletes a managed pool.
    ///
    /// Its bots are stopped and deleted (their history is kept); bots that name the pool
    /// themselves are left alone.
    #[utoipa::path(
        delete,
        path = "/api/v1/pools/{pool}",
        tag = "pools",
        params(
            ("pool" = String, Path, description = "The pool's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,55}$"),
        ),
        responses(
            (status = 204, description = "The pool and its bots are deleted."),
            (status = 400, description = E400_PARAMS, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_ADMIN, body = ErrorBody),
            (status = 404, description = "`pool_not_found`.", body = ErrorBody),
            (status = 409, description = "`conflict`: the pool was not created with `PUT`; its bots name it themselves.", body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("admin"))),
    )]
    fn delete_pool() {}

    /// Reads the daemon's status.
    ///
    /// Version, uptime, bots by state and the LLM pool's load.
    #[utoipa::path(
        get,
        path = "/api/v1/status",
        tag = "daemon",
        responses(
            (status = 200, description = "The daemon's status.", body = Status),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_VIEWER, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("viewer"))),
    )]
    fn get_status() {}

    /// Tails a bot's log records.
    ///
    /// One JSON record per line (`ts`, `level`, `msg`, `bot` and its fields), oldest
    /// first; with `follow=true` new records follow. A follower too slow for the stream
    /// gets `{"missed": N}` in place of the N records it lost. `Accept:
    /// text/event-stream` gives SSE (`event: log`, `event: missed`).
    #[utoipa::path(
        get,
        path = "/api/v1/bots/{name}/logs",
        tag = "logs",
        params(
            ("name" = String, Path, description = "The bot's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"),
            BotLogsQuery,
        ),
        responses(
            (status = 200, description = "Log records.", content(
                (String = "application/x-ndjson"),
                (String = "text/event-stream"),
            )),
            (status = 400, description = E400_PARAMS, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_VIEWER, body = ErrorBody),
            (status = 404, description = E404_BOT, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("viewer"))),
    )]
    fn bot_logs() {}

    /// Tails the daemon's log records.
    ///
    /// As the bot route, over every record (or one bot's with `bot`).
    #[utoipa::path(
        get,
        path = "/api/v1/logs",
        tag = "logs",
        params(LogsQuery),
        responses(
            (status = 200, description = "Log records.", content(
                (String = "application/x-ndjson"),
                (String = "text/event-stream"),
            )),
            (status = 400, description = E400_PARAMS, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_VIEWER, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("viewer"))),
    )]
    fn logs() {}

    /// Metrics in the Prometheus text format.
    ///
    /// No auth: bind it where only scrapers reach.
    #[utoipa::path(
        get,
        path = "/metrics",
        tag = "daemon",
        responses(
            (status = 200, description = "The Prometheus text exposition format.", content_type = "text/plain", body = String),
        ),
    )]
    fn metrics() {}

    /// Liveness.
    ///
    /// Whether the actor system answers within 1 s. No auth, not rate limited.
    #[utoipa::path(
        get,
        path = "/healthz",
        tag = "daemon",
        responses(
            (status = 200, description = "`{\"status\": \"ok\"}`.", body = Health),
            (status = 503, description = "`{\"status\": \"unhealthy\"}`: the actor system did not answer within 1 s.", body = Health),
        ),
    )]
    fn healthz() {}

    /// Readiness.
    ///
    /// Ready once started, with a database, and not shutting down; `llm` and `redis` are
    /// reported but do not decide readiness. No auth, not rate limited.
    #[utoipa::path(
        get,
        path = "/readyz",
        tag = "daemon",
        responses(
            (status = 200, description = "`status` is `ready`.", body = Ready),
            (status = 503, description = "`status` is `not_ready`: starting, shutting down (see `phase`) or without a database.", body = Ready),
        ),
    )]
    fn readyz() {}

    /// This document.
    ///
    /// The OpenAPI document of the API. No auth.
    #[utoipa::path(
        get,
        path = "/api/v1/openapi.json",
        tag = "daemon",
        responses(
            (status = 200, description = "The OpenAPI 3 document of this API.", content_type = "application/json", body = Object),
            (status = 429, description = E429, body = ErrorBody),
        ),
    )]
    fn get_openapi() {}

    use crate::http::auth::{LoginRequest, LoginResponse, WhoAmI};
    use crate::http::users::{CreateUserRequest, PatchUserRequest, UserList, UserView};

    const E404_USER: &str = "`user_not_found`.";

    /// Logs in.
    ///
    /// Answers a user token (`kind: "user"`) valid for `auth.token_ttl_secs`. An unknown
    /// user and a wrong password get the same 401. Attempts are limited per client IP
    /// and username (`auth.login_attempts_per_minute`). No auth.
    #[utoipa::path(
        post,
        path = "/api/v1/auth/login",
        tag = "auth",
        request_body = LoginRequest,
        responses(
            (status = 200, description = "The token.", body = LoginResponse),
            (status = 400, description = E400, body = ErrorBody),
            (status = 401, description = "`unauthorized`: no such user, or the wrong password.", body = ErrorBody),
            (status = 413, description = E413, body = ErrorBody),
            (status = 415, description = E415, body = ErrorBody),
            (status = 429, description = "`rate_limited`: too many requests, or too many login attempts.", body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
    )]
    fn login() {}

    /// Who the token speaks for.
    ///
    /// For a user token, the role is the users table's (at most `auth.user_check_secs` old).
    #[utoipa::path(
        get,
        path = "/api/v1/auth/whoami",
        tag = "auth",
        responses(
            (status = 200, description = "The token's subject, role and expiry.", body = WhoAmI),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_VIEWER, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("viewer"))),
    )]
    fn whoami() {}

    /// Creates a user.
    ///
    /// The password is stored as an argon2id hash.
    #[utoipa::path(
        post,
        path = "/api/v1/users",
        tag = "auth",
        request_body = CreateUserRequest,
        responses(
            (status = 201, description = "The user, created.", body = UserView),
            (status = 400, description = E400, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_ADMIN, body = ErrorBody),
            (status = 409, description = "`user_exists`.", body = ErrorBody),
            (status = 413, description = E413, body = ErrorBody),
            (status = 415, description = E415, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("admin"))),
    )]
    fn create_user() {}

    /// Lists the users.
    ///
    /// Sorted by username; never a password or its hash.
    #[utoipa::path(
        get,
        path = "/api/v1/users",
        tag = "auth",
        responses(
            (status = 200, description = "The users.", body = UserList),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_ADMIN, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("admin"))),
    )]
    fn list_users() {}

    /// Changes a user's password or role.
    ///
    /// An admin may change both. Any user may change their own password with a user
    /// token, giving `current_password` (400 `invalid_field` when it is missing or wrong);
    /// anything else needs the admin role.
    #[utoipa::path(
        patch,
        path = "/api/v1/users/{username}",
        tag = "auth",
        params(
            ("username" = String, Path, description = "The user's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"),
        ),
        request_body = PatchUserRequest,
        responses(
            (status = 200, description = "The user, changed.", body = UserView),
            (status = 400, description = E400, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = "`forbidden`: this needs the `admin` role (a `viewer` may change only their own password).", body = ErrorBody),
            (status = 404, description = E404_USER, body = ErrorBody),
            (status = 413, description = E413, body = ErrorBody),
            (status = 415, description = E415, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("viewer"))),
    )]
    fn update_user() {}

    /// Deletes a user.
    ///
    /// Their tokens stop working within `auth.user_check_secs`.
    #[utoipa::path(
        delete,
        path = "/api/v1/users/{username}",
        tag = "auth",
        params(
            ("username" = String, Path, description = "The user's name.", pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$"),
        ),
        responses(
            (status = 204, description = "The user is deleted."),
            (status = 400, description = E400_PARAMS, body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_ADMIN, body = ErrorBody),
            (status = 404, description = E404_USER, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
            (status = 503, description = E503_STORE, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("admin"))),
    )]
    fn delete_user() {}
    /// Messages over a WebSocket.
    ///
    /// Authenticate with the `Authorization` header or, without one, with a first text
    /// frame `{"type":"auth","token":"…"}` (within `http.header_read_timeout_ms`).
    /// Frames in: `{"type":"message","id","bot"|"pool","content","conversation"?,
    /// "priority"?,"timeout_ms"?}` (the fields of `SendRequest`; `id` is the client's own
    /// string of 1 to 128 bytes, not reused while its message runs). Frames out:
    /// `{"type":"ready","sub"}`, `{"type":"token","id","bot","content"}`,
    /// `{"type":"reply","id","message_id",…the rest of AnswerView…}` and
    /// `{"type":"error","id"?,"error":{…}}`. An error frame leaves the socket open; a
    /// failed authentication closes it with 1008, a frame over `http.max_body_bytes`
    /// with 1009. Closing the socket cancels its running messages.
    #[utoipa::path(
        get,
        path = "/api/v1/ws",
        tag = "messages",
        responses(
            (status = 101, description = "Switching protocols: the WebSocket is open."),
            (status = 400, description = "`invalid_field`: the request is not a WebSocket upgrade.", body = ErrorBody),
            (status = 401, description = E401, body = ErrorBody),
            (status = 403, description = E403_OPERATOR, body = ErrorBody),
            (status = 429, description = E429, body = ErrorBody),
            (status = 500, description = E500, body = ErrorBody),
        ),
        security(("bearerAuth" = [])),
        extensions(("x-botd-role" = json!("operator"))),
    )]
    fn websocket() {}
}
