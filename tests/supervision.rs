//! Supervision proved from the outside, with the fault-injection strings of
//! ARCHITECTURE.md (built with `--features fault-injection`; without it they are ordinary
//! messages, which the last test shows).

mod support;

use std::time::Duration;

use serde_json::{json, Value};
#[cfg(feature = "fault-injection")]
use support::spawn_app_with;
use support::{spawn_app, TestApp};

const PANIC: &str = "__botd_fault:panic__";
#[cfg(feature = "fault-injection")]
const STOP: &str = "__botd_fault:stop__";
#[cfg(feature = "fault-injection")]
const EXIT: &str = "__botd_fault:exit__";

const WAIT: Duration = Duration::from_secs(20);

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[cfg(feature = "fault-injection")]
async fn kinds(app: &TestApp, bot: &str) -> Vec<(String, String)> {
    let (_, events) = app
        .get(&format!("/api/v1/events?bot={bot}&limit=500"), &app.viewer)
        .await;
    let mut v: Vec<(String, String)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_owned(),
                e["subject"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.reverse();
    v
}

/// Sends `content` in `conversation` in the background.
fn send_bg(
    app: &TestApp,
    bot: &str,
    content: &str,
    conversation: &str,
) -> tokio::task::JoinHandle<(u16, Value)> {
    app.send_bg(
        bot,
        json!({"content": content, "conversation": conversation}),
    )
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_is_answered_500_and_the_bot_is_restarted() {
    let app = spawn_app().await;
    app.running_bot("b", json!({})).await;
    app.running_bot("other", json!({})).await;
    let (s, body) = app.send("b", PANIC).await;
    assert_eq!((s, code(&body)), (500, "internal"), "{body}");
    let bot = app
        .wait_for_bot("b", WAIT, |b| b["state"] == "running" && b["restarts"] == 1)
        .await;
    assert!(
        bot["last_error"].as_str().unwrap().contains("panic"),
        "{bot}"
    );
    let (s, _) = app.send("b", "still there?").await;
    assert_eq!(s, 200);
    let (s, _) = app.send("other", "untouched").await;
    assert_eq!(s, 200);
    let (_, other) = app.get("/api/v1/bots/other", &app.viewer).await;
    assert_eq!(other["restarts"], 0);
    let events = kinds(&app, "b").await;
    let sup: Vec<&str> = events
        .iter()
        .filter(|(_, s)| s == "supervisor")
        .map(|(k, _)| k.as_str())
        .collect();
    assert_eq!(sup, vec!["crashed", "backoff", "restarted"]);
    // The panicking message is in the history as failed, with no reply.
    let (_, history) = app.get("/api/v1/bots/b/messages", &app.viewer).await;
    let msgs = history["messages"].as_array().unwrap();
    let failed: Vec<&Value> = msgs.iter().filter(|m| m["status"] == "failed").collect();
    assert_eq!(failed.len(), 1, "{history}");
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn an_unexpected_stop_is_a_crash_and_a_normal_exit_follows_the_policy() {
    let app = spawn_app().await;
    app.running_bot("perm", json!({})).await;
    app.running_bot("trans", json!({"restart": "transient"}))
        .await;
    app.running_bot("temp", json!({"restart": "temporary"}))
        .await;

    let (s, body) = app.send("perm", STOP).await;
    assert_eq!((s, code(&body)), (500, "internal"));
    app.wait_for_bot("perm", WAIT, |b| {
        b["state"] == "running" && b["restarts"] == 1
    })
    .await;
    // A permanent bot restarts after a normal exit too.
    app.send("perm", EXIT).await;
    app.wait_for_bot("perm", WAIT, |b| {
        b["state"] == "running" && b["restarts"] == 2
    })
    .await;

    // A transient bot restarts after a crash, and stays stopped after a normal exit.
    app.send("trans", STOP).await;
    app.wait_for_bot("trans", WAIT, |b| {
        b["state"] == "running" && b["restarts"] == 1
    })
    .await;
    app.send("trans", EXIT).await;
    let bot = app
        .wait_for_bot("trans", WAIT, |b| b["state"] == "stopped")
        .await;
    assert_eq!(bot["desired_state"], "stopped");

    // A temporary bot never restarts: stopped, with its error.
    app.send("temp", PANIC).await;
    let bot = app
        .wait_for_bot("temp", WAIT, |b| b["state"] == "stopped")
        .await;
    assert_eq!(bot["desired_state"], "stopped");
    assert!(bot["last_error"].as_str().unwrap().contains("panic"));
    assert_eq!(bot["restarts"], 0);
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn the_restart_limit_marks_a_bot_failed_until_an_operator_starts_it() {
    let mut app = spawn_app_with(|c| {
        c.supervisor.max_restarts = 2;
        c.supervisor.restart_window_secs = 60;
    })
    .await;
    app.running_bot("b", json!({})).await;
    for n in 1..=2 {
        app.send("b", PANIC).await;
        app.wait_for_bot("b", WAIT, |b| b["state"] == "running" && b["restarts"] == n)
            .await;
    }
    app.send("b", PANIC).await;
    let bot = app
        .wait_for_bot("b", WAIT, |b| b["state"] == "failed")
        .await;
    assert_eq!(bot["desired_state"], "running");
    assert!(
        bot["last_error"]
            .as_str()
            .unwrap()
            .contains("restarted 2 times"),
        "{bot}"
    );
    let (s, body) = app.send("b", "hi").await;
    assert_eq!((s, code(&body)), (409, "bot_not_running"));
    assert!(kinds(&app, "b")
        .await
        .contains(&("failed".into(), "supervisor".into())));

    // Failed stays failed across a daemon restart.
    app.restart();
    let (_, bot) = app.get("/api/v1/bots/b", &app.viewer).await;
    assert_eq!(bot["state"], "failed", "{bot}");

    let (s, bot) = app
        .post("/api/v1/bots/b/start", &app.operator, json!({}))
        .await;
    assert_eq!(s, 200, "{bot}");
    assert_eq!(bot["state"], "running");
    assert_eq!(bot["restarts"], 0);
    assert!(bot["last_error"].is_null());
    let (s, _) = app.send("b", "hi").await;
    assert_eq!(s, 200);
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn messages_queued_behind_a_crash_are_answered_after_the_restart() {
    let app = spawn_app().await;
    app.running_bot("b", json!({"concurrency": 1})).await;
    let gate = app.sim.gate();
    gate.close();
    let first = send_bg(&app, "b", "first", "c0");
    assert!(app.sim.wait_for(WAIT, |s| s.in_flight() == 1).await);
    let crash = send_bg(&app, "b", PANIC, "c1");
    app.wait_for_bot("b", WAIT, |b| b["mailbox_depth"] == 1)
        .await;
    let queued: Vec<_> = (0..3)
        .map(|i| send_bg(&app, "b", &format!("queued {i}"), &format!("q{i}")))
        .collect();
    app.wait_for_bot("b", WAIT, |b| b["mailbox_depth"] == 4)
        .await;
    gate.open();
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(crash.await.unwrap().0, 500);
    for q in queued {
        let (s, body) = q.await.unwrap();
        assert_eq!(s, 200, "{body}");
    }
    let (_, bot) = app.get("/api/v1/bots/b", &app.viewer).await;
    assert_eq!(bot["restarts"], 1);
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn messages_queued_behind_a_crash_that_fails_the_bot_get_503() {
    let app = spawn_app_with(|c| c.supervisor.max_restarts = 0).await;
    app.running_bot("b", json!({"concurrency": 1})).await;
    let gate = app.sim.gate();
    gate.close();
    let first = send_bg(&app, "b", "first", "c0");
    assert!(app.sim.wait_for(WAIT, |s| s.in_flight() == 1).await);
    let crash = send_bg(&app, "b", PANIC, "c1");
    app.wait_for_bot("b", WAIT, |b| b["mailbox_depth"] == 1)
        .await;
    let queued: Vec<_> = (0..3)
        .map(|i| send_bg(&app, "b", &format!("queued {i}"), &format!("q{i}")))
        .collect();
    app.wait_for_bot("b", WAIT, |b| b["mailbox_depth"] == 4)
        .await;
    gate.open();
    assert_eq!(first.await.unwrap().0, 200);
    assert_eq!(crash.await.unwrap().0, 500);
    for q in queued {
        let (s, body) = q.await.unwrap();
        assert_eq!((s, code(&body)), (503, "shutting_down"), "{body}");
    }
    app.wait_for_bot("b", WAIT, |b| b["state"] == "failed")
        .await;
    // Nothing was left pending: every queued message is in the history as failed.
    let (_, history) = app.get("/api/v1/bots/b/messages", &app.viewer).await;
    assert!(history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["status"] != "pending"));
}

#[cfg(feature = "fault-injection")]
#[tokio::test(flavor = "multi_thread")]
async fn fifty_bots_keep_answering_while_one_crash_loops() {
    let app = spawn_app_with(|c| {
        c.supervisor.max_restarts = 1000;
        c.supervisor.backoff_initial_ms = 1;
        c.supervisor.backoff_max_ms = 2;
    })
    .await;
    for i in 0..50 {
        app.running_bot(&format!("b{i}"), json!({})).await;
    }
    let looping = tokio::spawn({
        let (http, url, token) = (
            app.http.clone(),
            app.url("/api/v1/bots/b0/messages"),
            app.operator.clone(),
        );
        async move {
            let mut crashes = 0;
            for _ in 0..30 {
                let r = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"content": PANIC}))
                    .send()
                    .await
                    .unwrap();
                if r.status() == 500 {
                    crashes += 1;
                }
            }
            crashes
        }
    });
    for round in 0..3 {
        let mut handles = Vec::new();
        for i in 1..50 {
            handles.push(send_bg(
                &app,
                &format!("b{i}"),
                &format!("round {round}"),
                "c",
            ));
        }
        for h in handles {
            let (s, body) = h.await.unwrap();
            assert_eq!(s, 200, "{body}");
        }
    }
    assert!(looping.await.unwrap() > 0);
    for i in 1..50 {
        let (_, bot) = app.get(&format!("/api/v1/bots/b{i}"), &app.viewer).await;
        assert_eq!(bot["restarts"], 0);
        assert_eq!(bot["state"], "running");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_answers_queued_messages_within_the_deadline_and_refuses_new_ones() {
    let app = spawn_app().await;
    app.running_bot("b", json!({"concurrency": 1})).await;
    let gate = app.sim.gate();
    gate.close();
    let running = send_bg(&app, "b", "running", "c0");
    assert!(app.sim.wait_for(WAIT, |s| s.in_flight() == 1).await);
    let queued = send_bg(&app, "b", "queued", "c1");
    app.wait_for_bot("b", WAIT, |b| b["mailbox_depth"] == 1)
        .await;
    let stop = tokio::spawn({
        let (http, url, token) = (
            app.http.clone(),
            app.url("/api/v1/bots/b/stop"),
            app.operator.clone(),
        );
        async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&json!({"timeout_ms": 60000}))
                .send()
                .await
                .unwrap();
            support::status_json(r).await
        }
    });
    app.wait_for_bot("b", WAIT, |b| b["state"] == "stopping")
        .await;
    let (s, body) = app.send("b", "too late").await;
    assert_eq!((s, code(&body)), (503, "shutting_down"));
    gate.open();
    assert_eq!(running.await.unwrap().0, 200);
    assert_eq!(queued.await.unwrap().0, 200);
    let (s, bot) = stop.await.unwrap();
    assert_eq!((s, bot["state"].as_str()), (200, Some("stopped")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_deadline_answers_what_is_left_503() {
    let app = spawn_app().await;
    app.running_bot("b", json!({"concurrency": 1})).await;
    let gate = app.sim.gate();
    gate.close();
    let running = send_bg(&app, "b", "running", "c0");
    assert!(app.sim.wait_for(WAIT, |s| s.in_flight() == 1).await);
    let queued = send_bg(&app, "b", "queued", "c1");
    app.wait_for_bot("b", WAIT, |b| b["mailbox_depth"] == 1)
        .await;
    let (s, bot) = app
        .post(
            "/api/v1/bots/b/stop",
            &app.operator,
            json!({"timeout_ms": 50}),
        )
        .await;
    assert_eq!((s, bot["state"].as_str()), (200, Some("stopped")), "{bot}");
    let (s, body) = running.await.unwrap();
    assert_eq!((s, code(&body)), (503, "shutting_down"), "{body}");
    let (s, body) = queued.await.unwrap();
    assert_eq!((s, code(&body)), (503, "shutting_down"), "{body}");
    gate.open();
    // The model call was dropped.
    assert!(app.sim.wait_for(WAIT, |s| s.client_closed() >= 1).await);
}

#[cfg(not(feature = "fault-injection"))]
#[tokio::test(flavor = "multi_thread")]
async fn without_the_feature_the_fault_strings_are_ordinary_messages() {
    let app = spawn_app().await;
    app.running_bot("b", json!({})).await;
    for s in [
        PANIC,
        "__botd_fault:stop__",
        "__botd_fault:exit__",
        "__botd_fault:hang_registry__",
    ] {
        let (status, body) = app.send("b", s).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["reply"]["content"], format!("echo: {s}"));
    }
    let (_, bot) = app.get("/api/v1/bots/b", &app.viewer).await;
    assert_eq!(bot["restarts"], 0);
    assert_eq!(bot["state"], "running");
}
