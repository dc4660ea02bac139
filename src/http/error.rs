//! The one place errors become HTTP responses.
//!
//! Every error has the shape `{"error": {"code", "message", "request_id"}}`. A response is
//! made with its code and message and a [`PendingError`] extension; the server fills in
//! the request id (which only it knows for rejections) when it writes the body.

use botd_actors::model::EngineError;
use http::{HeaderValue, StatusCode};
use serde::Serialize;
use warp::reply::Response;
use warp::Reply;

/// An error answer, before the request id is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

/// Marks a response whose error body the server still has to write.
#[derive(Debug, Clone)]
pub struct PendingError(pub ApiError);

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    request_id: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        let retry_after = match status.as_u16() {
            429 | 503 => Some(1),
            _ => None,
        };
        Self {
            status,
            code,
            message: message.into(),
            retry_after,
        }
    }

    pub fn invalid_field(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
    }

    pub fn invalid_json(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_json", message)
    }

    /// Every credential failure is this same answer.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or invalid credentials",
        )
    }

    pub fn forbidden(need: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs the {need} role"),
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; it is logged with the request id",
        )
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// The JSON body with the request id filled in.
    pub fn body_json(&self, request_id: &str) -> String {
        serde_json::to_string(&Body {
            error: Inner {
                code: self.code,
                message: &self.message,
                request_id,
            },
        })
        .unwrap_or_default()
    }

    /// The `event: error` data of a stream and the WebSocket's error object.
    pub fn body_value(&self, request_id: &str) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code, "message": self.message, "request_id": request_id}})
    }

    /// The final response, as the server writes it.
    pub fn into_final_response(self, request_id: &str) -> Response {
        let mut resp = Response::new(self.body_json(request_id).into());
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                h.insert(http::header::RETRY_AFTER, v);
            }
        }
        if self.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was never read, so the connection cannot carry another
            // request: say so, and no client puts it back in its pool.
            h.insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let mut resp = Response::new(Default::default());
        *resp.status_mut() = self.status;
        resp.extensions_mut().insert(PendingError(self));
        resp
    }
}

impl warp::reject::Reject for ApiError {}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = match &e {
            // Details of a bug go to the log, not to the caller.
            EngineError::Internal(_) => ApiError::internal().message,
            EngineError::Store(_) => "the database is unavailable".to_owned(),
            other => other.to_string(),
        };
        Self {
            status,
            code: e.code(),
            message,
            retry_after: e.retry_after_secs(),
        }
    }
}

/// Turns warp's own rejections (no route, wrong method, …) into API errors.
pub async fn recover(rejection: warp::Rejection) -> Result<Response, std::convert::Infallible> {
    let err = if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if rejection.is_not_found() {
        ApiError::not_found("no such route")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is too large",
        )
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the body must be application/json",
        )
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::invalid_field(format!("query: {e}"))
    } else if rejection.find::<warp::reject::InvalidHeader>().is_some()
        || rejection.find::<warp::reject::MissingHeader>().is_some()
    {
        ApiError::invalid_field("a header is missing or malformed")
    } else {
        ApiError::internal()
    };
    Ok(err.into_response())
}
