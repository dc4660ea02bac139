//! `/api/v1/openapi.json`: the OpenAPI 3 document, generated from the code.

use utoipa::OpenApi;
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

#[derive(OpenApi)]
#[openapi(info(title = "botd", description = "The botd HTTP API, version 1 (docs/api.md)."))]
pub struct ApiDoc;

pub fn route() -> impl Filter<Extract = (Response,), Error = Rejection> + Clone + Send + Sync + 'static {
    warp::path("openapi.json")
        .and(warp::path::end())
        .and(warp::get())
        .map(|| warp::reply::json(&ApiDoc::openapi()).into_response())
}
