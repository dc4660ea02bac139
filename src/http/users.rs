//! `/api/v1/users…`: accounts for login. Admins manage them; a user may change their own
//! password (with the current one). Every change is an event (`user_created`,
//! `user_updated`, `user_deleted`) naming the token subject; no event or log line holds
//! a password or its hash.

use std::sync::Arc;

use botd_actors::model::{now_ms, EngineError};
use botd_actors::names::Username;
use botd_actors::store::queries::{self, NewEvent, UserRow};
use botd_actors::store::{DbConn, StoreError};
use http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::auth::require;
use super::error::ApiError;
use super::view::rfc3339;
use super::{json_body, json_reply, respond, with_state};
use crate::auth::{check_password_rule, hash_password, verify_password, Claims, Role, TokenKind};
use crate::state::AppState;

/// `POST /api/v1/users`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUserRequest {
    /// `^[a-z0-9][a-z0-9_-]{0,62}$`.
    #[schema(pattern = r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub username: String,
    /// 12 to 1024 characters; stored as an argon2id hash.
    #[schema(format = Password, min_length = 12, max_length = 1024)]
    pub password: String,
    pub role: Role,
}

/// `PATCH /api/v1/users/{username}`: an admin may change both; a user their own
/// password, giving `current_password`.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PatchUserRequest {
    /// The new password, 12 to 1024 characters.
    #[schema(format = Password, min_length = 12, max_length = 1024)]
    pub password: Option<String>,
    /// The new role (admins only).
    pub role: Option<Role>,
    /// The password now: needed when users change their own password without the
    /// admin role.
    #[schema(format = Password)]
    pub current_password: Option<String>,
}

/// A user as the API shows it (never the password hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub username: String,
    pub role: Role,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserList {
    /// Sorted by username.
    pub users: Vec<UserView>,
}

impl From<UserRow> for UserView {
    fn from(u: UserRow) -> Self {
        Self {
            username: u.username,
            // Rows are only written with a valid role.
            role: Role::parse(&u.role).unwrap_or(Role::Viewer),
            created_at: rfc3339(u.created_at),
            updated_at: rfc3339(u.updated_at),
        }
    }
}

fn user_not_found(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "user_not_found",
        format!("user '{name}' does not exist"),
    )
}

fn store_error(e: StoreError) -> ApiError {
    ApiError::from(EngineError::from(e))
}

fn username(s: &str) -> Result<Username, ApiError> {
    Username::parse(s).map_err(|e| ApiError::invalid_field(format!("username: {e}")))
}

fn password(key: &str, s: &str) -> Result<(), ApiError> {
    check_password_rule(s).map_err(|e| ApiError::invalid_field(format!("{key}: {e}")))
}

/// Hashes off the async threads (argon2 is slow on purpose).
async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|_| ApiError::internal())?
        .map_err(|_| ApiError::internal())
}

/// Records a user event, in the same store job as the change it describes.
fn user_event(c: &mut DbConn, kind: &str, subject: &str, detail: serde_json::Value) {
    let ev = NewEvent {
        ts: now_ms(),
        bot: None,
        pool: None,
        kind: kind.to_owned(),
        subject: subject.to_owned(),
        detail: detail.to_string(),
    };
    // The change is made; an event that cannot be written does not undo it.
    let _ = queries::insert_event(c, &ev);
}

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let users = warp::path("users");
    let s = || with_state(state.clone());
    let create = users
        .and(warp::path::end())
        .and(warp::post())
        .and(require(state.clone(), Role::Admin))
        .and(s())
        .and(json_body::<CreateUserRequest>(state.clone()))
        .then(create);
    let list = users
        .and(warp::path::end())
        .and(warp::get())
        .and(require(state.clone(), Role::Admin))
        .and(s())
        .then(list);
    let patch = users
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::patch())
        .and(require(state.clone(), Role::Viewer))
        .and(s())
        .and(json_body::<PatchUserRequest>(state.clone()))
        .then(patch);
    let delete = users
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::delete())
        .and(require(state.clone(), Role::Admin))
        .and(s())
        .then(delete);
    create.or(list).unify().or(patch).unify().or(delete).unify()
}

/// Creates a user (also `botd user add`); `user_exists` when the name is taken.
pub async fn create_user(
    state: &AppState,
    name: Username,
    password_text: String,
    role: Role,
    subject: String,
) -> Result<UserRow, ApiError> {
    password("password", &password_text)?;
    let password_hash = hash(password_text).await?;
    let now = now_ms();
    let row = UserRow {
        username: name.into_string(),
        password_hash,
        role: role.as_str().to_owned(),
        created_at: now,
        updated_at: now,
    };
    let stored = row.clone();
    let result = state
        .store
        .write(move |c| {
            queries::insert_user(c, &stored)?;
            let detail = serde_json::json!({"username": stored.username, "role": stored.role});
            user_event(c, "user_created", &subject, detail);
            Ok(())
        })
        .await;
    match result {
        Ok(()) => {
            state.users.forget(&row.username);
            Ok(row)
        }
        Err(StoreError::Conflict(_)) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "user_exists",
            format!("user '{}' already exists", row.username),
        )),
        Err(e) => Err(store_error(e)),
    }
}

async fn create(claims: Claims, state: Arc<AppState>, body: CreateUserRequest) -> Response {
    respond(
        async {
            let name = username(&body.username)?;
            let row = create_user(&state, name, body.password, body.role, claims.sub).await?;
            slog::info!(state.log, "A user was created."; "user" => &row.username, "role" => &row.role);
            Ok(json_reply(StatusCode::CREATED, &UserView::from(row)))
        }
        .await,
    )
}

async fn list(_: Claims, state: Arc<AppState>) -> Response {
    respond(
        async {
            let rows = state
                .store
                .read(queries::list_users)
                .await
                .map_err(store_error)?;
            Ok(json_reply(
                StatusCode::OK,
                &UserList {
                    users: rows.into_iter().map(UserView::from).collect(),
                },
            ))
        }
        .await,
    )
}

async fn patch(
    name: String,
    claims: Claims,
    state: Arc<AppState>,
    body: PatchUserRequest,
) -> Response {
    respond(
        async {
            let name = username(&name)?;
            let admin = claims.role >= Role::Admin;
            let own = claims.kind == TokenKind::User && claims.sub == name.as_str();
            if !admin && (!own || body.role.is_some()) {
                return Err(ApiError::forbidden("admin"));
            }
            if body.password.is_none() && body.role.is_none() {
                return Err(ApiError::invalid_field(
                    "password or role: give at least one to change",
                ));
            }
            if let Some(p) = &body.password {
                password("password", p)?;
            }
            let key = name.as_str().to_owned();
            let row = state
                .store
                .read(move |c| queries::get_user(c, &key))
                .await
                .map_err(store_error)?
                .ok_or_else(|| user_not_found(name.as_str()))?;
            if !admin {
                let current = body.current_password.clone().ok_or_else(|| {
                    ApiError::invalid_field("current_password: is required to change your own password")
                })?;
                let hash_now = row.password_hash.clone();
                let matches =
                    tokio::task::spawn_blocking(move || verify_password(&hash_now, &current))
                        .await
                        .unwrap_or(false);
                if !matches {
                    return Err(ApiError::invalid_field(
                        "current_password: does not match",
                    ));
                }
            }
            let new_hash = match body.password {
                Some(p) => Some(hash(p).await?),
                None => None,
            };
            let role = body.role.map(|r| r.as_str().to_owned());
            let mut changed = Vec::new();
            if new_hash.is_some() {
                changed.push("password");
            }
            if role.is_some() {
                changed.push("role");
            }
            let key = name.as_str().to_owned();
            let subject = claims.sub.clone();
            let now = now_ms();
            let updated = state
                .store
                .write(move |c| {
                    queries::update_user(c, &key, new_hash.as_deref(), role.as_deref(), now)?;
                    let mut detail = serde_json::json!({"username": key, "changed": changed});
                    if let Some(r) = &role {
                        detail["role"] = serde_json::Value::from(r.as_str());
                    }
                    user_event(c, "user_updated", &subject, detail);
                    queries::get_user(c, &key)
                })
                .await;
            state.users.forget(name.as_str());
            let row = match updated {
                Ok(Some(row)) => row,
                Ok(None) | Err(StoreError::NotFound) => return Err(user_not_found(name.as_str())),
                Err(e) => return Err(store_error(e)),
            };
            slog::info!(state.log, "A user was changed."; "user" => name.as_str(), "subject" => &claims.sub);
            Ok(json_reply(StatusCode::OK, &UserView::from(row)))
        }
        .await,
    )
}

async fn delete(name: String, claims: Claims, state: Arc<AppState>) -> Response {
    respond(
        async {
            let name = username(&name)?;
            let key = name.as_str().to_owned();
            let subject = claims.sub.clone();
            let existed = state
                .store
                .write(move |c| {
                    let existed = queries::delete_user(c, &key)?;
                    if existed {
                        user_event(c, "user_deleted", &subject, serde_json::json!({"username": key}));
                    }
                    Ok(existed)
                })
                .await
                .map_err(store_error)?;
            state.users.forget(name.as_str());
            if !existed {
                return Err(user_not_found(name.as_str()));
            }
            slog::info!(state.log, "A user was deleted."; "user" => name.as_str(), "subject" => &claims.sub);
            Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
        }
        .await,
    )
}
