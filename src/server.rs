//! botd's own accept loop for the warp filter (warp 0.4's `Server` has no TLS and hides
//! its accept trait). This one loop is where TLS, the connection cap, the header read
//! timeout, request ids, the security headers, CORS and graceful shutdown live.
//!
//! - TLS (`http.tls_cert` + `http.tls_key`): rustls with TLS 1.2 and 1.3 only; the
//!   handshake runs in the connection's own task, within the header read timeout, so a
//!   slow handshake never holds up the accept loop. Responses then carry HSTS.
//! - CORS is off unless `http.cors_origins` names origins: a request from one of them
//!   gets `Access-Control-Allow-Origin`, and its preflight (`OPTIONS` with
//!   `Access-Control-Request-Method`) is answered 204 here. Other origins get no CORS
//!   headers at all (the browser refuses the answer).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use slog::{debug, info, warn, Logger};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use warp::Filter;

use botd_actors::metrics::Metrics;

use crate::http::error::PendingError;
use crate::state::{ClientAddr, RequestId};

/// How the accept loop behaves.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Open connections at most; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// Time a client has to send its request headers.
    pub header_read_timeout: Duration,
    /// How long in-flight requests get once shutdown begins.
    pub drain_timeout: Duration,
    /// When set, every connection is HTTPS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Origins CORS allows (`http.cors_origins`); empty: CORS is off.
    pub cors_origins: Arc<Vec<String>>,
}

/// Why the TLS files could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("http.tls_cert: cannot read certificates from {path}: {error}")]
    Cert { path: String, error: String },
    #[error("http.tls_key: cannot read a private key from {path}: {error}")]
    Key { path: String, error: String },
    #[error("http.tls_cert: {0}")]
    Config(String),
}

/// The TLS server configuration of `http.tls_cert` and `http.tls_key` (PEM), TLS 1.2 and
/// 1.3 only; `None` when neither is set (plain HTTP).
pub fn tls_config(
    http: &crate::config::HttpSettings,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&http.tls_cert, &http.tls_key) else {
        return Ok(None);
    };
    let cert_err = |error: String| TlsError::Cert {
        path: cert.display().to_string(),
        error,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.display().to_string(),
        error: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

/// HSTS, on every response served over TLS.
const HSTS: &str = "max-age=31536000";

/// The methods and headers a CORS preflight may ask for.
const CORS_METHODS: &str = "GET, POST, PUT, PATCH, DELETE";
const CORS_HEADERS: &str = "authorization, content-type, x-request-id";
const CORS_EXPOSE: &str = "x-request-id, retry-after";

/// The request's `Origin` when CORS allows it.
fn allowed_origin(req: &Request<Incoming>, allowed: &[String]) -> Option<HeaderValue> {
    let origin = req.headers().get(http::header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    allowed
        .iter()
        .any(|o| o.eq_ignore_ascii_case(text))
        .then(|| origin.clone())
}

fn cors_headers(headers: &mut http::HeaderMap, origin: HeaderValue, preflight: bool) {
    use http::header;
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    headers.append(header::VARY, HeaderValue::from_static("origin"));
    if preflight {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(CORS_METHODS),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static(CORS_HEADERS),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    } else {
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(CORS_EXPOSE),
        );
    }
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Headers on every response, errors and streams included.
const SECURITY_HEADERS: [(&str, &str); 4] = [
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    (
        "content-security-policy",
        "default-src 'none'; frame-ancestors 'none'",
    ),
    ("referrer-policy", "no-referrer"),
];

fn request_id(req: &Request<Incoming>) -> Arc<str> {
    req.headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(Arc::from)
        .unwrap_or_else(|| {
            let mut bytes = [0u8; 12];
            rand::Rng::fill(&mut rand::thread_rng(), &mut bytes);
            Arc::from(hex::encode(bytes))
        })
}

/// Serves `filter` on `listener` until `shutdown` is tripped, then lets open requests
/// finish for `drain_timeout`.
pub async fn serve<F, R>(
    listener: TcpListener,
    filter: F,
    options: ServeOptions,
    shutdown: CancellationToken,
    log: Logger,
) where
    F: Filter<Extract = (R,), Error = Infallible> + Clone + Send + Sync + 'static,
    F::Future: Send,
    R: warp::Reply,
{
    let service = warp::service(filter);
    let permits = Arc::new(Semaphore::new(options.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout);
    let builder = Arc::new(builder);
    loop {
        // Wait for a free connection slot before accepting: the rest wait in the backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(log, "Accepting a connection failed."; "error" => e.to_string());
                    // Out of file descriptors and the like: don't spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = service.clone();
        let tls_on = options.tls.is_some();
        let cors = options.cors_origins.clone();
        let hyper_service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            let started = std::time::Instant::now();
            let route = route_of(req.uri().path());
            let method = req.method().clone();
            let id = request_id(&req);
            req.extensions_mut().insert(RequestId(id.clone()));
            req.extensions_mut().insert(ClientAddr(peer));
            let origin = allowed_origin(&req, &cors);
            let preflight = origin.is_some()
                && method == http::Method::OPTIONS
                && req
                    .headers()
                    .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD);
            let mut svc = svc.clone();
            async move {
                let mut resp = if preflight {
                    let mut r = warp::reply::Response::new(Default::default());
                    *r.status_mut() = http::StatusCode::NO_CONTENT;
                    r
                } else {
                    match svc.call(req).await {
                        Ok(r) => r,
                        Err(never) => match never {},
                    }
                };
                if let Some(PendingError(err)) = resp.extensions_mut().remove::<PendingError>() {
                    Metrics::get().rejection(err.code);
                    let extra = std::mem::take(resp.headers_mut());
                    resp = err.into_final_response(&id);
                    for (k, v) in extra.iter() {
                        resp.headers_mut().entry(k).or_insert_with(|| v.clone());
                    }
                }
                let headers = resp.headers_mut();
                if let Ok(v) = HeaderValue::from_str(&id) {
                    headers.insert(X_REQUEST_ID.clone(), v);
                }
                for (k, v) in SECURITY_HEADERS {
                    headers
                        .entry(k)
                        .or_insert_with(|| HeaderValue::from_static(v));
                }
                if tls_on {
                    headers.insert(
                        http::header::STRICT_TRANSPORT_SECURITY,
                        HeaderValue::from_static(HSTS),
                    );
                }
                if let Some(origin) = origin {
                    cors_headers(headers, origin, preflight);
                }
                let m = Metrics::get();
                m.http_requests
                    .with_label_values(&[route, method_label(&method), resp.status().as_str()])
                    .inc();
                m.http_duration
                    .with_label_values(&[route])
                    .observe(started.elapsed().as_secs_f64());
                Ok::<_, Infallible>(into_body(resp))
            }
        });
        let watcher = graceful.watcher();
        let log = log.clone();
        let builder = builder.clone();
        let tls = options.tls.clone();
        let handshake_timeout = options.header_read_timeout;
        tokio::spawn(async move {
            let result = match tls {
                None => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), hyper_service);
                    watcher.watch(conn.into_owned()).await
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let stream = match tokio::time::timeout(
                        handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            debug!(log, "A TLS handshake failed."; "error" => e.to_string());
                            return;
                        }
                        Err(_) => {
                            debug!(log, "A TLS handshake took too long.");
                            return;
                        }
                    };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), hyper_service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = result {
                debug!(log, "A connection ended with an error."; "error" => e.to_string());
            }
            drop(permit);
        });
    }
    info!(log, "The listener is closed; waiting for open requests."; "duration_ms" => options.drain_timeout.as_millis() as u64);
    if tokio::time::timeout(options.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        warn!(
            log,
            "Some connections were still open at the drain deadline."
        );
    }
}

/// The body the server writes: warp's, or a stream a handler left in a
/// [`StreamingBody`] (warp 0.4 has no public way to make a streaming body).
pub type ServerBody = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A byte stream to send as a response body, placed in the response's extensions.
#[derive(Clone)]
pub struct StreamingBody(pub Arc<std::sync::Mutex<Option<ByteStream>>>);

/// What a [`StreamingBody`] holds.
pub type ByteStream = std::pin::Pin<Box<dyn futures::Stream<Item = Bytes> + Send>>;

impl StreamingBody {
    pub fn new(stream: impl futures::Stream<Item = Bytes> + Send + 'static) -> Self {
        Self(Arc::new(std::sync::Mutex::new(Some(Box::pin(stream)))))
    }
}

fn into_body(resp: warp::reply::Response) -> http::Response<ServerBody> {
    let (mut parts, body) = resp.into_parts();
    let stream = parts
        .extensions
        .remove::<StreamingBody>()
        .and_then(|s| s.0.lock().ok().and_then(|mut g| g.take()));
    let body = match stream {
        Some(stream) => {
            use futures::StreamExt;
            let frames =
                stream.map(|b| Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Frame::data(b)));
            BodyExt::boxed_unsync(StreamBody::new(frames))
        }
        None => BodyExt::boxed_unsync(BodyExt::map_err(body, |e| {
            Box::new(e) as Box<dyn std::error::Error + Send + Sync>
        })),
    };
    http::Response::from_parts(parts, body)
}

/// The route templates, the only values of the `route` label.
pub const ROUTES: &[&str] = &[
    "/healthz",
    "/readyz",
    "/metrics",
    "/api/v1/openapi.json",
    "/api/v1/status",
    "/api/v1/events",
    "/api/v1/bots",
    "/api/v1/bots/{name}",
    "/api/v1/bots/{name}/start",
    "/api/v1/bots/{name}/stop",
    "/api/v1/bots/{name}/restart",
    "/api/v1/bots/{name}/events",
    "/api/v1/bots/{name}/messages",
    "/api/v1/bots/{name}/logs",
    "/api/v1/pools",
    "/api/v1/pools/{pool}",
    "/api/v1/pools/{pool}/messages",
    "/api/v1/logs",
    "/api/v1/ws",
    "/api/v1/auth/login",
    "/api/v1/auth/whoami",
    "/api/v1/users",
    "/api/v1/users/{username}",
    "other",
];

/// The route template of a path (a fixed set, so label values stay few).
pub fn route_of(path: &str) -> &'static str {
    let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
    let shape: Vec<&str> = match segs.as_slice() {
        ["api", "v1", "bots", _, rest @ ..] => ["api", "v1", "bots", "{name}"]
            .into_iter()
            .chain(rest.iter().copied())
            .collect(),
        ["api", "v1", "pools", _, rest @ ..] => ["api", "v1", "pools", "{pool}"]
            .into_iter()
            .chain(rest.iter().copied())
            .collect(),
        ["api", "v1", "users", _] => vec!["api", "v1", "users", "{username}"],
        other => other.to_vec(),
    };
    let joined = format!("/{}", shape.join("/"));
    ROUTES
        .iter()
        .find(|r| **r == joined)
        .copied()
        .unwrap_or("other")
}

fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::PATCH => "PATCH",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Creates the per-route series at start, so every family appears before traffic.
pub fn precreate_metrics() {
    let m = Metrics::get();
    for r in ROUTES {
        m.http_duration.with_label_values(&[r]);
    }
    m.http_requests
        .with_label_values(&["/healthz", "GET", "200"]);
}

/// Binds the listener (port 0 picks a free port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::route_of;

    #[test]
    fn paths_map_to_their_route_templates() {
        assert_eq!(
            route_of("/api/v1/bots/b1/messages"),
            "/api/v1/bots/{name}/messages"
        );
        assert_eq!(route_of("/api/v1/bots/b1"), "/api/v1/bots/{name}");
        assert_eq!(route_of("/api/v1/bots"), "/api/v1/bots");
        assert_eq!(
            route_of("/api/v1/pools/p/messages"),
            "/api/v1/pools/{pool}/messages"
        );
        assert_eq!(route_of("/api/v1/users/ann"), "/api/v1/users/{username}");
        assert_eq!(route_of("/healthz"), "/healthz");
        assert_eq!(route_of("/api/v1/bots/b1/nope"), "other");
        assert_eq!(route_of("/../etc/passwd"), "other");
    }
}
