//! `/api/v1/pools…`: managed pools (a template, bounds and scaling settings).
//! Pool messages and history are in `messages.rs`.

use std::sync::Arc;

use botd_actors::model::PoolSpec;
use botd_actors::registry::PutPool;
use http::StatusCode;
use serde::Deserialize;
use utoipa::ToSchema;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::bots::{check_model, ranged, TemplateRequest};
use super::error::ApiError;
use super::messages::pool_name;
use super::view::{PoolList, PoolView};
use super::{auth, json_body, json_reply, respond, with_state};
use crate::auth::{Claims, Role};
use crate::state::AppState;

/// `PUT /api/v1/pools/{pool}`: the whole spec; absent fields take their defaults.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutPoolRequest {
    /// The members' spec without `name` and `pool`; absent fields take the bot defaults.
    #[serde(default)]
    pub template: TemplateRequest,
    /// Default 1; 0..=`max_bots`.
    #[schema(minimum = 0, maximum = 1000)]
    pub min_bots: Option<i64>,
    /// Default 10; 1..=1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_bots: Option<i64>,
    /// Default 5; 1..=100000.
    #[schema(minimum = 1, maximum = 100000)]
    pub scale_up_queue_depth: Option<i64>,
    /// Default 300; 1..=86400.
    #[schema(minimum = 1, maximum = 86400)]
    pub scale_down_idle_secs: Option<i64>,
}

impl PutPoolRequest {
    fn into_spec(self, name: &str, state: &AppState) -> Result<PoolSpec, ApiError> {
        let name = pool_name(name)?;
        let template = self.template.into_template(state)?;
        let max_bots = ranged("max_bots", self.max_bots.unwrap_or(10), 1, 1000)?;
        let min_bots = ranged("min_bots", self.min_bots.unwrap_or(1), 0, max_bots.into())?;
        Ok(PoolSpec {
            name,
            template,
            min_bots,
            max_bots,
            scale_up_queue_depth: ranged(
                "scale_up_queue_depth",
                self.scale_up_queue_depth.unwrap_or(5),
                1,
                100_000,
            )?,
            scale_down_idle_secs: ranged(
                "scale_down_idle_secs",
                self.scale_down_idle_secs.unwrap_or(300),
                1,
                86_400,
            )?
            .into(),
        })
    }
}

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    let pools = warp::path("pools");
    let s = || with_state(state.clone());

    let list = pools
        .and(warp::path::end())
        .and(warp::get())
        .and(auth(state.clone(), Role::Viewer))
        .and(s())
        .then(list);
    let get = pools
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::get())
        .and(auth(state.clone(), Role::Viewer))
        .and(s())
        .then(get);
    let put = pools
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::put())
        .and(auth(state.clone(), Role::Admin))
        .and(s())
        .and(json_body::<PutPoolRequest>(state.clone()))
        .then(put);
    let delete = pools
        .and(warp::path::param::<String>())
        .and(warp::path::end())
        .and(warp::delete())
        .and(auth(state.clone(), Role::Admin))
        .and(s())
        .then(delete);
    list.or(get).unify().or(put).unify().or(delete).unify()
}

async fn list(_: Claims, state: Arc<AppState>) -> Response {
    respond(
        async {
            let pools = state.registry.list_pools().await?;
            Ok(json_reply(
                StatusCode::OK,
                &PoolList {
                    pools: pools.into_iter().map(PoolView::from).collect(),
                },
            ))
        }
        .await,
    )
}

async fn get(name: String, _: Claims, state: Arc<AppState>) -> Response {
    respond(
        async {
            let info = state.registry.get_pool(pool_name(&name)?).await?;
            Ok(json_reply(StatusCode::OK, &PoolView::from(info)))
        }
        .await,
    )
}

async fn put(name: String, claims: Claims, state: Arc<AppState>, body: PutPoolRequest) -> Response {
    respond(
        async {
            let spec = body.into_spec(&name, &state)?;
            check_model(&state, &spec.template.model).await?;
            let info = state
                .registry
                .put_pool(PutPool {
                    spec,
                    subject: claims.sub,
                })
                .await?;
            Ok(json_reply(StatusCode::OK, &PoolView::from(info)))
        }
        .await,
    )
}

async fn delete(name: String, claims: Claims, state: Arc<AppState>) -> Response {
    respond(
        async {
            state
                .registry
                .delete_pool(pool_name(&name)?, claims.sub)
                .await?;
            Ok(warp::reply::with_status(warp::reply(), StatusCode::NO_CONTENT).into_response())
        }
        .await,
    )
}
