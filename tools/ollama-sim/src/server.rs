//! The accept loop, the connections, the routing and the small endpoints.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::models::{self, PsEntry, ShowResponse, TagEntry};
use crate::{generate, gojson, RecordedRequest, Running, State};

/// Every answer's body.
pub(crate) type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The largest request body read.
const MAX_REQUEST_BYTES: usize = 64 << 20;

/// Returned by a handler to make hyper drop the connection without an answer.
#[derive(Debug)]
pub(crate) struct Cut;

impl std::fmt::Display for Cut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection cut by the simulator")
    }
}

impl std::error::Error for Cut {}

/// Binds a listener with `SO_REUSEADDR`, so that [`crate::Simulator::up`] gets its port
/// back while old connections linger in `TIME_WAIT`.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Starts the accept loop on `listener`.
pub(crate) fn spawn(listener: TcpListener, state: Arc<State>) -> Running {
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(accept_loop(listener, state, stopped));
    Running { stop, task }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>, mut stop: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // A send or the sender's drop both mean stop.
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    state.connections.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    connections.spawn(serve_connection(stream, state.clone()));
                }
                // Out of descriptors and the like: let the peer retry.
                Err(_) => tokio::task::yield_now().await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Aborts every connection and waits until they are all dropped.
    connections.shutdown().await;
}

async fn serve_connection(stream: tokio::net::TcpStream, state: Arc<State>) {
    let service = service_fn(move |req| handle(state.clone(), req));
    let _ = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<Body>, Cut> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let bytes = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(Cut),
    };
    let body = if bytes.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
    };
    state.records().push(RecordedRequest {
        method: method.as_str().to_owned(),
        path: path.clone(),
        body,
        received: Instant::now(),
    });
    state.changed();

    let head = method == Method::HEAD;
    match (&method, path.as_str()) {
        (&Method::GET | &Method::HEAD, "/") => Ok(text(StatusCode::OK, "Ollama is running", head)),
        (&Method::GET | &Method::HEAD, "/api/version") => Ok(json(
            StatusCode::OK,
            &serde_json::json!({ "version": crate::VERSION }),
        )),
        (&Method::GET, "/api/tags") => Ok(tags(&state)),
        (&Method::GET, "/api/ps") => Ok(ps(&state)),
        (&Method::POST, "/api/show") => Ok(show(&state, &bytes)),
        (&Method::POST, "/api/chat") => {
            generate::call(state.clone(), generate::Kind::Chat, bytes).await
        }
        (&Method::POST, "/api/generate") => {
            generate::call(state.clone(), generate::Kind::Generate, bytes).await
        }
        _ => Ok(text(StatusCode::NOT_FOUND, "404 page not found", head)),
    }
}

/// A whole body.
pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed_unsync()
}

fn text(status: StatusCode, s: &'static str, head: bool) -> Response<Body> {
    let mut resp = Response::new(if head { full(Bytes::new()) } else { full(s) });
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// A JSON answer written the way Go writes it.
pub(crate) fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    json_bytes(status, gojson::to_vec(value).into())
}

/// A JSON answer from bytes already encoded.
pub(crate) fn json_bytes(status: StatusCode, bytes: Bytes) -> Response<Body> {
    json_body(status, full(bytes))
}

/// A JSON answer with a body of any shape.
pub(crate) fn json_body(status: StatusCode, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// `{"error": message}` with `status` (an invalid status becomes 500).
pub(crate) fn error(status: u16, message: &str) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json(status, &serde_json::json!({ "error": message }))
}

fn tags(state: &State) -> Response<Body> {
    let script = state.script();
    let entries: Vec<TagEntry<'_>> = script
        .models
        .iter()
        .map(|m| TagEntry {
            name: &m.name,
            model: &m.name,
            modified_at: &state.started_at,
            size: m.size,
            digest: &m.digest,
            details: &m.details,
        })
        .collect();
    json(StatusCode::OK, &serde_json::json!({ "models": entries }))
}

fn ps(state: &State) -> Response<Body> {
    let mut script = state.script();
    let now = chrono::Utc::now();
    script.loaded.retain(|_, expires| *expires > now);
    let script = &*script;
    let mut entries: Vec<PsEntry<'_>> = Vec::new();
    let mut loaded: Vec<_> = script.loaded.iter().collect();
    loaded.sort();
    let generic: Vec<models::Model> = loaded
        .iter()
        .filter(|(name, _)| !script.models.iter().any(|m| &&m.name == name))
        .map(|(name, _)| models::Model::named(name))
        .collect();
    for (name, expires) in loaded {
        let Some(m) = script
            .models
            .iter()
            .chain(generic.iter())
            .find(|m| &m.name == name)
        else {
            continue;
        };
        entries.push(PsEntry {
            name: &m.name,
            model: &m.name,
            size: m.size,
            digest: &m.digest,
            details: &m.details,
            expires_at: gojson::rfc3339_nano(*expires),
            size_vram: m.size,
            context_length: 4096,
        });
    }
    json(StatusCode::OK, &serde_json::json!({ "models": entries }))
}

#[derive(Deserialize)]
struct ShowIn {
    model: Option<String>,
    /// The deprecated spelling, still accepted (ollama-rs sends it).
    name: Option<String>,
}

fn show(state: &State, bytes: &[u8]) -> Response<Body> {
    if bytes.is_empty() {
        return error(400, "missing request body");
    }
    let req: ShowIn = match serde_json::from_slice(bytes) {
        Ok(r) => r,
        Err(e) => return error(400, &e.to_string()),
    };
    let name = match (req.model, req.name) {
        (Some(m), _) if !m.is_empty() => m,
        (_, Some(n)) if !n.is_empty() => n,
        _ => return error(400, "model is required"),
    };
    let script = state.script();
    let normalized = models::normalize(&name);
    let generic;
    let model = match script.models.iter().find(|m| m.name == normalized) {
        Some(m) => m,
        None if script.accept_any_model => {
            generic = models::Model::named(&name);
            &generic
        }
        None => return error(404, &format!("model '{name}' not found")),
    };
    let resp = ShowResponse {
        license: "Apache License\nVersion 2.0, January 2004",
        modelfile: format!(
            "# Modelfile generated by \"ollama show\"\nFROM /models/blobs/sha256-{}\nTEMPLATE \"\"\"[INST] {{{{ .Prompt }}}} [/INST]\"\"\"\n",
            model.digest
        ),
        parameters: "stop                           \"[INST]\"\nstop                           \"[/INST]\"",
        template: "[INST] {{ .Prompt }} [/INST]",
        details: &model.details,
        model_info: serde_json::json!({
            "general.architecture": "llama",
            "general.parameter_count": 7_241_732_096u64,
            "llama.context_length": 32768,
        }),
        capabilities: ["completion"],
        modified_at: &state.started_at,
    };
    json(StatusCode::OK, &resp)
}
