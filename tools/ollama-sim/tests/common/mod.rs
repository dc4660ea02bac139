//! Helpers shared by the simulator's tests.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Value};

/// How long a test waits for a condition before failing.
pub const DEADLINE: Duration = Duration::from_secs(10);

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

pub fn chat_body(model: &str, content: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": content}]})
}

/// Posts `body` and returns the status, the content type and the raw body.
pub async fn post(url: &str, body: &Value) -> (u16, String, Vec<u8>) {
    let resp = client().post(url).json(body).send().await.unwrap();
    let status = resp.status().as_u16();
    let ct = content_type(&resp);
    (status, ct, resp.bytes().await.unwrap().to_vec())
}

pub fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Parses NDJSON: one JSON value per non-empty line.
pub fn lines(body: &[u8]) -> Vec<Value> {
    std::str::from_utf8(body)
        .unwrap()
        .split('\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The concatenated `message.content` of chat lines.
pub fn chat_text(lines: &[Value]) -> String {
    lines
        .iter()
        .map(|l| l["message"]["content"].as_str().unwrap().to_owned())
        .collect()
}

/// Reads a body's raw chunks as they arrive; `Err` ends it with the error's text.
pub async fn raw_chunks(mut resp: reqwest::Response) -> (Vec<Vec<u8>>, Option<String>) {
    let mut chunks = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => chunks.push(c.to_vec()),
            Ok(None) => return (chunks, None),
            Err(e) => return (chunks, Some(format!("{e:?}"))),
        }
    }
}
