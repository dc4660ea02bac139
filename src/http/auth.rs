//! Authentication at the edge: the bearer check every route uses, the rate limit in
//! front of the API, `POST /api/v1/auth/login` and `GET /api/v1/auth/whoami`.
//!
//! Every credential failure is [`ApiError::unauthorized`], the same status, code and
//! message whatever was wrong; the reason goes to the debug log only, never the token.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use botd_actors::names::Username;
use botd_actors::store::queries;
use http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::error::ApiError;
use super::view::rfc3339;
use super::{json_body, json_reply, respond, with_state};
use crate::auth::{
    check_password_rule, decoy_hash, verify_password, Claims, Role, TokenKind, UserCheckError,
};
use crate::state::{AppState, ClientAddr};

/// `POST /api/v1/auth/login`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    /// 12 to 1024 characters.
    #[schema(format = Password)]
    pub password: String,
}

impl std::fmt::Debug for LoginRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginRequest")
            .field("username", &self.username)
            .field("password", &"********")
            .finish()
    }
}

/// A login's answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    /// A user token (`kind: "user"`), valid until `expires_at`.
    pub token: String,
    pub expires_at: String,
    /// `viewer`, `operator` or `admin`.
    pub role: Role,
}

/// Who the token speaks for.
#[derive(Debug, Serialize, ToSchema)]
pub struct WhoAmI {
    pub sub: String,
    /// The role in force: for a user token, the users table's (at most
    /// `auth.user_check_secs` old).
    pub role: Role,
    /// `user` (from a login) or `service` (from `botd token`).
    pub kind: TokenKind,
    pub expires_at: String,
}

/// The bearer token of an `Authorization` header, if it has the form `Bearer <token>`.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Checks a request's bearer token: signature, claims and, for a user token, the users
/// table. The claims carry the role in force.
pub async fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Claims, ApiError> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    authenticate_token(state, token).await
}

/// Checks a bearer token as [`authenticate`] does (the WebSocket's first frame carries
/// one).
pub async fn authenticate_token(state: &AppState, token: &str) -> Result<Claims, ApiError> {
    let claims = state.jwt.verify(token).map_err(|e| {
        slog::debug!(state.log, "A token was refused."; "error" => e.to_string());
        ApiError::unauthorized()
    })?;
    let store = state.store.clone();
    let checked = state
        .users
        .check(claims, |name| async move {
            let row = store
                .read(move |c| queries::get_user(c, &name))
                .await
                .map_err(|e| e.to_string())?;
            Ok(row.and_then(|u| Role::parse(&u.role).map(|r| (r, u.created_at))))
        })
        .await;
    match checked {
        Ok(claims) => Ok(claims),
        Err(UserCheckError::Refused) => {
            slog::debug!(state.log, "A user token was refused: the user is gone.");
            Err(ApiError::unauthorized())
        }
        Err(UserCheckError::Store(e)) => {
            slog::warn!(state.log, "The users table could not be read for a token check."; "error" => e);
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the database is unavailable",
            ))
        }
    }
}

/// Checks the bearer token and that its role is at least `need`.
pub fn require(
    state: Arc<AppState>,
    need: Role,
) -> impl Filter<Extract = (Claims,), Error = Rejection> + Clone {
    warp::header::headers_cloned().and_then(move |headers: HeaderMap| {
        let state = state.clone();
        async move {
            let claims = authenticate(&state, &headers)
                .await
                .map_err(warp::reject::custom)?;
            if claims.role < need {
                return Err(warp::reject::custom(ApiError::forbidden(need.as_str())));
            }
            Ok(claims)
        }
    })
}

fn rate_limited(retry_after: u64) -> ApiError {
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "too many requests; try again after Retry-After seconds",
    )
    .with_retry_after(retry_after)
}

fn client_ip(addr: Option<ClientAddr>) -> String {
    addr.map(|a| a.0.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]))
        .to_string()
}

/// The request rate limit: per token subject for a token that verifies, else per client
/// IP. Put in front of every rate-limited route.
pub fn rate_limit(state: Arc<AppState>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    warp::header::headers_cloned()
        .and(warp::ext::optional::<ClientAddr>())
        .and_then(move |headers: HeaderMap, addr: Option<ClientAddr>| {
            let state = state.clone();
            async move {
                // Only a verified subject gets its own budget: anyone can write a `sub`.
                let key = match bearer(&headers).and_then(|t| state.jwt.verify(t).ok()) {
                    Some(claims) => format!("sub:{}", claims.sub),
                    None => format!("ip:{}", client_ip(addr)),
                };
                state
                    .limits
                    .requests
                    .check(&key)
                    .await
                    .map_err(|wait| warp::reject::custom(rate_limited(wait)))
            }
        })
        .untuple_one()
}

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let auth = warp::path("auth");
    let login = auth
        .and(warp::path("login"))
        .and(warp::path::end())
        .and(warp::post())
        .and(with_state(state.clone()))
        .and(warp::ext::optional::<ClientAddr>())
        .and(json_body::<LoginRequest>(state.clone()))
        .then(login);
    let whoami = auth
        .and(warp::path("whoami"))
        .and(warp::path::end())
        .and(warp::get())
        .and(require(state.clone(), Role::Viewer))
        .then(whoami);
    login.or(whoami).unify()
}

async fn login(state: Arc<AppState>, addr: Option<ClientAddr>, body: LoginRequest) -> Response {
    respond(
        async {
            // Attempts count whether they succeed or not, per client IP and username (a
            // name no user can have shares one bucket, so keys stay short and few).
            let shown = match Username::parse(&body.username) {
                Ok(_) => body.username.as_str(),
                Err(_) => "-",
            };
            let key = format!("{}/{shown}", client_ip(addr));
            state
                .limits
                .logins
                .check(&key)
                .await
                .map_err(rate_limited)?;
            let LoginRequest { username, password } = body;
            // A name or password no user can have is a bad pair like any other.
            let name = Username::parse(&username).ok();
            let plausible = check_password_rule(&password).is_ok();
            let row = match (&name, plausible) {
                (Some(n), true) => {
                    let n = n.as_str().to_owned();
                    state
                        .store
                        .read(move |c| queries::get_user(c, &n))
                        .await
                        .map_err(botd_actors::model::EngineError::from)?
                }
                _ => None,
            };
            let role = row.as_ref().and_then(|u| Role::parse(&u.role));
            let hash = row.map(|u| u.password_hash);
            // Checked against a decoy when there is no such user, so that both cost alike.
            let ok = tokio::task::spawn_blocking(move || {
                let matched = verify_password(hash.as_deref().unwrap_or(decoy_hash()), &password);
                matched && hash.is_some() && plausible
            })
            .await
            .unwrap_or(false);
            let (Some(name), Some(role), true) = (name.clone(), role, ok) else {
                // Only a valid name is logged: a password typed into the name field is not.
                let shown = name.as_ref().map_or("(not a username)", |n| n.as_str());
                slog::info!(state.log, "A login was refused."; "subject" => shown);
                return Err(ApiError::unauthorized());
            };
            let ttl = Duration::from_secs(state.config.auth.token_ttl_secs);
            let token = state.jwt.mint(name.as_str(), role, TokenKind::User, ttl);
            let expires_at = state.jwt.verify(&token).map(|c| c.exp).unwrap_or_default();
            slog::info!(state.log, "A user logged in."; "subject" => name.as_str());
            Ok(json_reply(
                StatusCode::OK,
                &LoginResponse {
                    token,
                    expires_at: rfc3339(expires_at as i64 * 1000),
                    role,
                },
            ))
        }
        .await,
    )
}

async fn whoami(claims: Claims) -> Response {
    json_reply(
        StatusCode::OK,
        &WhoAmI {
            sub: claims.sub,
            role: claims.role,
            kind: claims.kind,
            expires_at: rfc3339(claims.exp as i64 * 1000),
        },
    )
}
