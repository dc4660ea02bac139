//! A lean HTTP/1.1 client: hyper connections kept in an idle stack and reused, so the
//! generator spends as little of the machine's two cores as it can.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{anyhow, Context as _};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

type Sender = SendRequest<Full<Bytes>>;

/// Connections to one server.
pub struct Http {
    addr: SocketAddr,
    host: String,
    /// Connections not in use; a request takes the most recent one or opens a new one.
    idle: Mutex<Vec<Sender>>,
}

/// A whole response.
pub struct Reply {
    pub status: u16,
    pub body: Bytes,
}

impl Http {
    /// A client for `base` (`http://HOST:PORT`, no path).
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let host = base
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("{base}: only http:// URLs"))?
            .trim_end_matches('/')
            .to_owned();
        let addr = host
            .parse()
            .with_context(|| format!("{host}: not an IP address and port"))?;
        Ok(Self {
            addr,
            host,
            idle: Mutex::new(Vec::new()),
        })
    }

    async fn connect(&self) -> anyhow::Result<Sender> {
        let stream = tokio::net::TcpStream::connect(self.addr).await?;
        stream.set_nodelay(true)?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn take(&self) -> anyhow::Result<Sender> {
        loop {
            let cached = self.idle.lock().map(|mut v| v.pop()).unwrap_or(None);
            match cached {
                Some(mut s) if !s.is_closed() => {
                    if s.ready().await.is_ok() {
                        return Ok(s);
                    }
                }
                Some(_) => continue,
                None => return self.connect().await,
            }
        }
    }

    fn give_back(&self, s: Sender) {
        if !s.is_closed() {
            if let Ok(mut v) = self.idle.lock() {
                v.push(s);
            }
        }
    }

    fn build(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Bytes,
    ) -> anyhow::Result<http::Request<Full<Bytes>>> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.host);
        if !body.is_empty() {
            b = b.header("content-type", "application/json");
        }
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        Ok(b.body(Full::new(body))?)
    }

    /// Sends a request and reads the whole answer.
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Bytes,
    ) -> anyhow::Result<Reply> {
        let req = self.build(method, path, token, body)?;
        let mut s = self.take().await?;
        let resp = s.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        self.give_back(s);
        Ok(Reply { status, body })
    }

    /// Sends a request and reads the answer to its end; returns the status and when the
    /// first body chunk for which `first` says yes arrived (streams: the first token).
    pub async fn call_until(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Bytes,
        mut first: impl FnMut(&[u8]) -> bool,
    ) -> anyhow::Result<(u16, Option<Instant>)> {
        let req = self.build(method, path, token, body)?;
        let mut s = self.take().await?;
        let resp = s.send_request(req).await?;
        let status = resp.status().as_u16();
        let mut body: Incoming = resp.into_body();
        let mut seen = None;
        while let Some(frame) = body.frame().await {
            let frame = frame?;
            if let Some(data) = frame.data_ref() {
                if seen.is_none() && first(data) {
                    seen = Some(Instant::now());
                }
            }
        }
        self.give_back(s);
        Ok((status, seen))
    }

    /// `call` with a JSON body and a JSON answer.
    pub async fn json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &serde_json::Value,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let body = if body.is_null() {
            Bytes::new()
        } else {
            Bytes::from(body.to_string())
        };
        let r = self.call(method, path, token, body).await?;
        let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
        Ok((r.status, v))
    }
}
