//! A tiny run of the generator against an in-process simulator: every scheduled request
//! is sent, answered and counted under its status.

use std::sync::Arc;
use std::time::Duration;

use botd_loadgen::client::Http;
use botd_loadgen::load::{closed_loop, open_loop, Outcome, Plan};
use bytes::Bytes;
use ollama_sim::Simulator;

fn chat() -> Bytes {
    Bytes::from_static(
        br#"{"model":"mistral","messages":[{"role":"user","content":"hi"}],"stream":true}"#,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_loop_run_sends_every_scheduled_request_and_counts_each_answer() {
    let sim = Simulator::start().await.expect("simulator");
    let http = Arc::new(Http::new(&sim.url()).expect("client"));
    let plan = Plan {
        rate: 200.0,
        warmup: Duration::from_millis(50),
        duration: Duration::from_millis(200),
        grace: Duration::from_secs(10),
    };
    let h = http.clone();
    let stats = open_loop(plan, move |i| {
        let h = h.clone();
        async move {
            // Every fifth request asks for a model the simulator does not have: a 404.
            let body = if i % 5 == 4 {
                Bytes::from_static(br#"{"model":"nope","messages":[],"stream":true}"#)
            } else {
                chat()
            };
            match h.call("POST", "/api/chat", None, body).await {
                Ok(r) => Outcome::status(r.status),
                Err(_) => Outcome::failed(),
            }
        }
    })
    .await;
    // 10 warm-up requests are sent but not counted; the 40 after them are.
    assert_eq!(stats.sent, 40);
    assert_eq!(
        stats.count(200) + stats.count(404),
        40,
        "{}",
        stats.statuses()
    );
    assert_eq!(stats.count(404), 8, "{}", stats.statuses());
    assert_eq!(stats.errors(), 8);
    assert_eq!(stats.unanswered, 0);
    // The warm-up's requests reached the simulator too.
    let chats = sim
        .requests()
        .iter()
        .filter(|r| r.path == "/api/chat")
        .count();
    assert_eq!(chats, 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_run_counts_what_its_callers_sent() {
    let sim = Simulator::start().await.expect("simulator");
    let http = Arc::new(Http::new(&sim.url()).expect("client"));
    let h = http.clone();
    let stats = closed_loop(2, Duration::ZERO, Duration::from_millis(200), move |_| {
        let h = h.clone();
        async move {
            match h.call("GET", "/api/version", None, Bytes::new()).await {
                Ok(r) => Outcome::status(r.status),
                Err(_) => Outcome::failed(),
            }
        }
    })
    .await;
    assert!(stats.sent > 0);
    assert_eq!(stats.count(200), stats.sent, "{}", stats.statuses());
}
