//! Secrets and message content never reach the logs: every path a message can take runs
//! here at trace level with a canary in its content, and the test (and `.ci/run`, over
//! every daemon log of the run) searches the logs for it.

mod support;

use serde_json::json;
use support::spawn_app_with;

const CANARY: &str = "CANARY";

#[tokio::test(flavor = "multi_thread")]
async fn message_content_and_secrets_never_appear_in_the_logs() {
    let app = spawn_app_with(|c| c.logging.level = botd::config::LogLevel::Trace).await;
    app.running_bot(
        "c",
        json!({"system_prompt": format!("prompt {CANARY} prompt")}),
    )
    .await;
    let content = format!("hello {CANARY} there");
    let (s, _) = app.send("c", &content).await;
    assert_eq!(s, 200);
    // Streamed.
    let r = app
        .http
        .post(app.url("/api/v1/bots/c/messages"))
        .bearer_auth(&app.operator)
        .json(&json!({"content": content, "stream": true}))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(
        text.contains("event:done") || text.contains("event: done"),
        "{text}"
    );
    // Failing at the model server, mid-stream, and refused at the edge.
    app.sim.fail_next(3, 500, "runner failed");
    assert_eq!(app.send("c", &content).await.0, 502);
    app.sim.error_after_tokens(Some(1), "model runner crashed");
    assert_eq!(app.send("c", &content).await.0, 502);
    app.sim.error_after_tokens(None, "");
    let (s, _) = app
        .post(
            "/api/v1/bots/c/messages",
            &app.operator,
            json!({"content": content, "priority": 9}),
        )
        .await;
    assert_eq!(s, 400);
    let (s, _) = app
        .post(
            "/api/v1/bots/c/messages",
            &app.operator,
            json!({"content": content, "bogus": CANARY}),
        )
        .await;
    assert_eq!(s, 400);
    // A token that is refused, carrying the canary.
    let (s, _) = app
        .get("/api/v1/bots", &format!("{CANARY}.{CANARY}.{CANARY}"))
        .await;
    assert_eq!(s, 401);
    #[cfg(feature = "fault-injection")]
    {
        // A crash while handling a message.
        assert_eq!(app.send("c", "__botd_fault:panic__").await.0, 500);
        app.wait_for_bot("c", std::time::Duration::from_secs(20), |b| {
            b["state"] == "running"
        })
        .await;
    }
    // The log tail endpoints serve the same records.
    let (_, tail) = app
        .get("/api/v1/logs?tail=10000&level=trace", &app.viewer)
        .await;
    let tail = tail.as_str().unwrap_or_default().to_owned();
    assert!(!tail.is_empty());
    assert!(!tail.contains(CANARY), "the log tail holds the canary");
    let logs = app.logs();
    assert!(
        logs.lines().count() > 8,
        "the daemon logged at trace level: {logs}"
    );
    assert!(!logs.contains(CANARY), "the daemon's log holds the canary");
    // The secret holds the canary too (support::SECRET).
    assert!(support::SECRET.contains(CANARY));
}
