//! The LLM pool under load, against the simulator's scripted faults: the concurrency
//! bound, load shedding, round-robin fairness, timeouts, the circuit breaker,
//! cancellation, priorities and deadlines.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{spawn_app_with, TestApp};

const WAIT: Duration = Duration::from_secs(20);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

fn last_user_contents(app: &TestApp) -> Vec<String> {
    app.sim
        .chat_requests()
        .iter()
        .map(|r| {
            r["messages"]
                .as_array()
                .and_then(|m| m.last())
                .and_then(|m| m["content"].as_str())
                .unwrap_or("")
                .to_owned()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn in_flight_calls_never_exceed_max_concurrent() {
    let app = spawn_app_with(|c| c.llm.max_concurrent = 2).await;
    app.running_bot("b", json!({"concurrency": 8})).await;
    let gate = app.sim.gate();
    gate.close();
    let sends: Vec<_> = (0..6)
        .map(|i| {
            app.send_bg(
                "b",
                json!({"content": format!("m{i}"), "conversation": format!("c{i}")}),
            )
        })
        .collect();
    assert!(app.sim.wait_for(WAIT, |s| s.in_flight() == 2).await);
    // The other four wait in the pool's queue, not at Ollama.
    app.wait_for_status(WAIT, |st| {
        st["llm"]["queued"] == 4 && st["llm"]["in_flight"] == 2
    })
    .await;
    gate.open();
    for s in sends {
        assert_eq!(s.await.unwrap().0, 200);
    }
    assert_eq!(app.sim.peak_in_flight(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_llm_queue_sheds_with_503_llm_overloaded_and_retry_after() {
    let app = spawn_app_with(|c| {
        c.llm.max_concurrent = 1;
        c.llm.max_queue = 1;
    })
    .await;
    app.running_bot("b", json!({"concurrency": 8})).await;
    let gate = app.sim.gate();
    gate.close();
    let first = app.send_bg("b", json!({"content": "1", "conversation": "a"}));
    assert!(app.sim.wait_for(WAIT, |s| s.in_flight() == 1).await);
    let second = app.send_bg("b", json!({"content": "2", "conversation": "b"}));
    app.wait_for_bot("b", WAIT, |b| b["in_flight"] == 2).await;
    app.wait_for_status(WAIT, |st| st["llm"]["queued"] == 1)
        .await;
    let r = app
        .http
        .post(app.url("/api/v1/bots/b/messages"))
        .bearer_auth(&app.operator)
        .json(&json!({"content": "3", "conversation": "c"}))
        .send()
        .await
        .unwrap();
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let (s, body) = support::status_json(r).await;
    assert_eq!((s, code(&body)), (503, "llm_overloaded"), "{body}");
    gate.open();
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(second.await.unwrap().0, 200);
    // Refused on arrival, so never stored; the two accepted exchanges are.
    let (s, refused) = app
        .get("/api/v1/bots/b/messages?conversation=c", &app.viewer)
        .await;
    assert_eq!(s, 200);
    assert_eq!(refused["messages"], json!([]), "{refused}");
    let (_, all) = app.get("/api/v1/bots/b/messages", &app.viewer).await;
    assert_eq!(all["messages"].as_array().unwrap().len(), 4, "{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bot_with_a_long_backlog_cannot_starve_another() {
    let app = spawn_app_with(|c| {
        c.llm.max_concurrent = 1;
        c.llm.max_queue = 1000;
    })
    .await;
    app.running_bot("a", json!({"concurrency": 200, "mailbox_capacity": 300}))
        .await;
    app.running_bot("b", json!({})).await;
    let gate = app.sim.gate();
    gate.close();
    let mut backlog = Vec::new();
    for i in 0..200 {
        backlog.push(app.send_bg(
            "a",
            json!({"content": format!("a{i}"), "conversation": format!("c{i}")}),
        ));
    }
    // All of A's calls are in the pool: one at Ollama, 199 queued.
    app.wait_for_status(WAIT, |st| st["llm"]["queued"] == 199)
        .await;
    let b = app.send_bg("b", json!({"content": "b-only"}));
    app.wait_for_status(WAIT, |st| st["llm"]["queued"] == 200)
        .await;
    gate.open();
    assert_eq!(b.await.unwrap().0, 200);
    for h in backlog {
        assert_eq!(h.await.unwrap().0, 200);
    }
    let order = last_user_contents(&app);
    let pos = order.iter().position(|c| c == "b-only").unwrap();
    // Round robin: the call at Ollama, A's next turn, then B's. FIFO would put it last.
    assert!(pos <= 2, "B's call was number {pos} of {}", order.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_request_timeout_is_504_llm_timeout_and_not_retried() {
    let app = spawn_app_with(|c| {
        c.llm.request_timeout_secs = 1;
        c.llm.retries = 3;
    })
    .await;
    app.running_bot("b", json!({})).await;
    app.sim.hang_next(1);
    let (s, body) = app.send("b", "hang").await;
    assert_eq!((s, code(&body)), (504, "llm_timeout"), "{body}");
    assert_eq!(app.sim.chat_requests().len(), 1);
    assert!(app.sim.wait_for(WAIT, |s| s.client_closed() == 1).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_breaker_opens_fails_fast_and_closes_when_ollama_is_back() {
    let app = spawn_app_with(|c| {
        c.llm.breaker_failures = 2;
        c.llm.breaker_open_secs = 1;
        c.llm.retries = 0;
    })
    .await;
    app.running_bot("b", json!({})).await;
    app.sim.fail_next(2, 500, "runner failed");
    for _ in 0..2 {
        let (s, body) = app.send("b", "hi").await;
        assert_eq!((s, code(&body)), (502, "llm_error"), "{body}");
    }
    let seen = app.sim.chat_requests().len();
    let (s, body) = app.send("b", "hi").await;
    assert_eq!((s, code(&body)), (503, "llm_unavailable"), "{body}");
    assert_eq!(
        app.sim.chat_requests().len(),
        seen,
        "an open breaker calls nobody"
    );

    // Down and back on the same port: the probe closes the breaker by itself.
    app.sim.down().await;
    let r = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the LLM does not decide readiness");
    let (_, ready) = support::status_json(r).await;
    assert_eq!(ready["checks"]["llm"], "down");
    app.sim.up().await.unwrap();
    let until = std::time::Instant::now() + WAIT;
    loop {
        let (_, ready) =
            support::status_json(app.http.get(app.url("/readyz")).send().await.unwrap()).await;
        if ready["checks"]["llm"] == "ok" {
            break;
        }
        assert!(std::time::Instant::now() < until, "{ready}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let versions = app
        .sim
        .requests()
        .iter()
        .filter(|r| r.path == "/api/version")
        .count();
    assert!(versions >= 1);
    let (s, _) = app.send("b", "hi").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_disconnects_cancels_its_model_call() {
    let app = spawn_app_with(|c| c.llm.max_concurrent = 1).await;
    app.running_bot("b", json!({})).await;
    let gate = app.sim.gate();
    gate.close();
    let leaving = app.send_bg("b", json!({"content": "leaving", "conversation": "c1"}));
    assert!(app.sim.wait_for(WAIT, |s| s.in_flight() == 1).await);
    leaving.abort();
    assert!(
        app.sim.wait_for(WAIT, |s| s.client_closed() == 1).await,
        "the call was not dropped"
    );
    let (_, history) = app
        .get("/api/v1/bots/b/messages?conversation=c1", &app.viewer)
        .await;
    let until = std::time::Instant::now() + WAIT;
    let mut history = history;
    while history["messages"][0]["status"] != "cancelled" {
        assert!(std::time::Instant::now() < until, "{history}");
        tokio::time::sleep(Duration::from_millis(10)).await;
        history = app
            .get("/api/v1/bots/b/messages?conversation=c1", &app.viewer)
            .await
            .1;
    }
    assert_eq!(
        history["messages"].as_array().unwrap().len(),
        1,
        "no reply stored"
    );
    // The slot is free again.
    gate.open();
    let (s, _) = app.send("b", "next").await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn priority_zero_goes_first_and_fifo_within_a_priority() {
    let app = spawn_app_with(|_| {}).await;
    app.running_bot("b", json!({"concurrency": 1})).await;
    let gate = app.sim.gate();
    gate.close();
    let first = app.send_bg("b", json!({"content": "running", "conversation": "r"}));
    assert!(app.sim.wait_for(WAIT, |s| s.in_flight() == 1).await);
    let mut handles = Vec::new();
    for (i, (text, prio)) in [("a", 2), ("b", 0), ("c", 2), ("d", 0), ("e", 3), ("f", 1)]
        .iter()
        .enumerate()
    {
        handles.push(app.send_bg(
            "b",
            json!({"content": text, "priority": prio, "conversation": format!("q{i}")}),
        ));
        app.wait_for_bot("b", WAIT, |b| b["mailbox_depth"] == i + 1)
            .await;
    }
    gate.open();
    assert_eq!(first.await.unwrap().0, 200);
    for h in handles {
        assert_eq!(h.await.unwrap().0, 200);
    }
    assert_eq!(
        last_user_contents(&app),
        vec!["running", "b", "d", "f", "a", "c", "e"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn deadlines_answer_504_in_the_queue_without_a_model_call_and_during_one() {
    let app = spawn_app_with(|_| {}).await;
    app.running_bot("b", json!({"concurrency": 1})).await;
    let gate = app.sim.gate();
    gate.close();
    let first = app.send_bg(
        "b",
        json!({"content": "slow", "conversation": "a", "timeout_ms": 300}),
    );
    assert!(app.sim.wait_for(WAIT, |s| s.in_flight() == 1).await);
    let (s, body) = app
        .post(
            "/api/v1/bots/b/messages",
            &app.operator,
            json!({"content": "waits", "conversation": "b", "timeout_ms": 100}),
        )
        .await;
    assert_eq!((s, code(&body)), (504, "deadline_exceeded"), "{body}");
    let (s, body) = first.await.unwrap();
    assert_eq!((s, code(&body)), (504, "deadline_exceeded"), "{body}");
    assert!(
        app.sim.wait_for(WAIT, |s| s.client_closed() == 1).await,
        "the call was cancelled"
    );
    gate.open();
    assert_eq!(
        last_user_contents(&app),
        vec!["slow"],
        "the queued one never reached the model"
    );
    let (_, history) = app
        .get("/api/v1/bots/b/messages?conversation=b", &app.viewer)
        .await;
    assert_eq!(history["messages"][0]["status"], "failed");
    assert_eq!(history["messages"][0]["error"], "deadline_exceeded");
}

/// The events of an SSE answer, as (event, data) pairs.
async fn sse(app: &TestApp, bot: &str, content: &str) -> Vec<(String, Value)> {
    let r = app
        .http
        .post(app.url(&format!("/api/v1/bots/{bot}/messages")))
        .bearer_auth(&app.operator)
        .json(&json!({"content": content, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    text.split("\n\n")
        .filter_map(|block| {
            let event = block
                .lines()
                .find_map(|l| l.strip_prefix("event:"))?
                .trim()
                .to_owned();
            let data: String = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim_start)
                .collect();
            Some((event, serde_json::from_str(&data).unwrap_or(Value::Null)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plain_call_is_retried_after_a_broken_stream_but_a_stream_only_before_its_first_token() {
    let app = spawn_app_with(|c| {
        c.llm.retries = 2;
        // Keep the breaker out of it: these failures are in a row.
        c.llm.breaker_failures = 100;
    })
    .await;
    app.running_bot("b", json!({})).await;

    // Plain: every attempt breaks after two pieces; all three attempts are made.
    app.sim.break_after_tokens(Some(2));
    let (s, body) = app.send("b", "plain").await;
    assert_eq!((s, code(&body)), (502, "llm_error"), "{body}");
    assert_eq!(app.sim.chat_requests().len(), 3);

    // Streamed: the pieces were forwarded, so no retry; the stream ends with an error
    // event in the API's error shape, and no truncated reply is stored.
    let events = sse(&app, "b", "streamed").await;
    assert_eq!(
        app.sim.chat_requests().len(),
        4,
        "no retry after a forwarded token"
    );
    let (last, data) = events.last().unwrap();
    assert_eq!(last, "error");
    assert_eq!(data["error"]["code"], "llm_error");
    assert!(events.iter().any(|(e, _)| e == "token"));
    let (_, history) = app.get("/api/v1/bots/b/messages", &app.viewer).await;
    assert!(history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["role"] == "user"));

    // Broken before the first token: a stream may still retry, and then succeeds.
    app.sim.break_after_tokens(None);
    app.sim.fail_next(1, 500, "runner failed");
    let events = sse(&app, "b", "retried").await;
    assert_eq!(events.last().unwrap().0, "done", "{events:?}");
    assert_eq!(app.sim.chat_requests().len(), 6);
}
