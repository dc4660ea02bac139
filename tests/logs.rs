//! The log tail endpoints against a daemon on port 0.

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use support::{spawn_app, spawn_app_with};

fn lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_daemon_and_bot_tails_hold_json_records_with_the_fixed_keys() {
    let app = spawn_app().await;
    app.running_bot("t1", json!({})).await;
    app.running_bot("t2", json!({})).await;
    let r = app
        .http
        .get(app.url("/api/v1/logs?tail=1000&level=debug"))
        .bearer_auth(&app.viewer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/x-ndjson");
    let all = lines(&r.text().await.unwrap());
    assert!(all.iter().any(|l| l["msg"] == "botd is listening."));
    for l in &all {
        assert!(
            l["ts"].is_string() && l["level"].is_string() && l["msg"].is_string(),
            "{l}"
        );
    }
    let created: Vec<&Value> = all
        .iter()
        .filter(|l| l["msg"] == "A bot was created.")
        .collect();
    assert_eq!(created.len(), 2);

    let r = app
        .http
        .get(app.url("/api/v1/bots/t1/logs?tail=100&level=trace"))
        .bearer_auth(&app.viewer)
        .send()
        .await
        .unwrap();
    let mine = lines(&r.text().await.unwrap());
    assert!(!mine.is_empty());
    assert!(mine.iter().all(|l| l["bot"] == "t1"), "{mine:?}");

    let (_, body) = app
        .get("/api/v1/logs?tail=1000&level=warn", &app.viewer)
        .await;
    // One JSON value per line: with no warnings yet, the body is empty.
    assert_eq!(body, Value::String(String::new()));
    let (s, body) = app.get("/api/v1/logs?level=loud", &app.viewer).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("invalid_field"))
    );
    let (s, body) = app.get("/api/v1/logs?tail=10001", &app.viewer).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (400, Some("invalid_field"))
    );
    let (s, body) = app.get("/api/v1/bots/nobody/logs", &app.viewer).await;
    assert_eq!(
        (s, body["error"]["code"].as_str()),
        (404, Some("bot_not_found"))
    );
    let (_, body) = app.get("/api/v1/logs?tail=0", &app.viewer).await;
    assert_eq!(
        body,
        Value::String(String::new()),
        "tail=0 sends no backlog"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn following_streams_new_records_as_ndjson_and_as_sse() {
    let app = spawn_app().await;
    for sse in [false, true] {
        let mut req = app
            .http
            .get(app.url("/api/v1/logs?tail=0&follow=true"))
            .bearer_auth(&app.viewer);
        if sse {
            req = req.header("accept", "text/event-stream");
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200);
        let name = format!("f{}", sse as u8);
        app.running_bot(&name, json!({})).await;
        let mut body = r.bytes_stream();
        let mut seen = String::new();
        let until = Instant::now() + Duration::from_secs(20);
        while !seen.contains("A bot was created.") {
            let chunk = tokio::time::timeout_at(until.into(), body.next())
                .await
                .expect("a record arrives")
                .unwrap()
                .unwrap();
            seen.push_str(std::str::from_utf8(&chunk).unwrap());
        }
        if sse {
            assert!(seen.starts_with("event: log\ndata: {"), "{seen}");
        } else {
            let first: Value = serde_json::from_str(seen.lines().next().unwrap()).unwrap();
            assert!(first["msg"].is_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_that_stops_reading_never_stalls_the_daemon() {
    let app = spawn_app_with(|c| c.logging.follow_buffer_records = 4).await;
    // Opened and never read again.
    let stalled = app
        .http
        .get(app.url("/api/v1/logs?tail=0&follow=true&level=trace"))
        .bearer_auth(&app.viewer)
        .send()
        .await
        .unwrap();
    app.running_bot("s", json!({})).await;
    for i in 0..200 {
        let (s, _) = app.send("s", &format!("m{i}")).await;
        assert_eq!(s, 200);
    }
    drop(stalled);
}
