//! Pools: `PUT/GET/DELETE /api/v1/pools/{pool}`, least-loaded routing, pool conversations,
//! autoscaling and pools across a daemon restart.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{spawn_app, spawn_app_with, status_json, TestApp};

const WAIT: Duration = Duration::from_secs(10);

async fn put(app: &TestApp, pool: &str, token: &str, body: Value) -> (u16, Value) {
    let r = app
        .http
        .put(app.url(&format!("/api/v1/pools/{pool}")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    status_json(r).await
}

async fn send_pool(app: &TestApp, pool: &str, body: Value) -> (u16, Value) {
    app.post(
        &format!("/api/v1/pools/{pool}/messages"),
        &app.operator,
        body,
    )
    .await
}

fn send_pool_bg(app: &TestApp, pool: &str, body: Value) -> tokio::task::JoinHandle<(u16, Value)> {
    app.post_bg(&format!("/api/v1/pools/{pool}/messages"), body)
}

fn names(pool: &Value) -> Vec<String> {
    pool["bots"]
        .as_array()
        .expect("bots")
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Polls the pool until `pred` holds for it.
async fn wait_for_pool(app: &TestApp, pool: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let until = Instant::now() + WAIT;
    loop {
        let (status, body) = app.get(&format!("/api/v1/pools/{pool}"), &app.viewer).await;
        if status == 200 && pred(&body) {
            return body;
        }
        assert!(
            Instant::now() < until,
            "pool {pool} never got there; last: {body}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn all_running(pool: &Value, n: usize) -> bool {
    let bots = pool["bots"].as_array().unwrap();
    bots.len() == n && bots.iter().all(|b| b["state"] == "running")
}

/// The pool's events of `kind`, newest first, once there are at least `n` (events are
/// written after the change they record).
async fn events_n(app: &TestApp, pool: &str, kind: &str, n: usize) -> Vec<Value> {
    let until = Instant::now() + WAIT;
    loop {
        let (status, body) = app
            .get(
                &format!("/api/v1/events?pool={pool}&kind={kind}&limit=500"),
                &app.viewer,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let events = body["events"].as_array().unwrap().clone();
        if events.len() >= n {
            return events;
        }
        assert!(
            Instant::now() < until,
            "never {n} {kind} events: {events:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn events(app: &TestApp, pool: &str, kind: &str) -> Vec<Value> {
    events_n(app, pool, kind, 1).await
}

/// Pools whose autoscaler checks often and never waits for a cooldown.
async fn fast_app() -> TestApp {
    spawn_app_with(|c| {
        c.pools.check_interval_ms = 20;
        c.pools.scale_cooldown_secs = 0;
    })
    .await
}

#[tokio::test]
async fn put_creates_the_first_members_and_get_shows_the_pool() {
    let app = spawn_app().await;
    let (status, pool) = put(
        &app,
        "support",
        &app.admin,
        json!({"template": {"system_prompt": "Be kind.", "concurrency": 2},
               "min_bots": 2, "max_bots": 4, "scale_up_queue_depth": 3, "scale_down_idle_secs": 60}),
    )
    .await;
    assert_eq!(status, 200, "{pool}");
    assert_eq!(pool["managed"], true);
    assert_eq!(pool["min_bots"], 2);
    assert_eq!(pool["max_bots"], 4);
    assert_eq!(pool["scale_up_queue_depth"], 3);
    assert_eq!(pool["scale_down_idle_secs"], 60);
    assert_eq!(pool["template"]["system_prompt"], "Be kind.");
    assert_eq!(pool["template"]["concurrency"], 2);
    assert_eq!(names(&pool), ["support-1", "support-2"]);
    assert!(all_running(&pool, 2), "{pool}");

    let (_, bot) = app.get("/api/v1/bots/support-2", &app.viewer).await;
    assert_eq!(bot["pool"], "support");
    assert_eq!(bot["system_prompt"], "Be kind.");
    assert_eq!(bot["concurrency"], 2);

    let (status, list) = app.get("/api/v1/pools", &app.viewer).await;
    assert_eq!(status, 200);
    assert_eq!(list["pools"].as_array().unwrap().len(), 1);
    assert_eq!(list["pools"][0]["name"], "support");

    let created = events(&app, "support", "pool_created").await;
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["subject"], "test-user");
    assert!(created[0]["bot"].is_null());
}

#[tokio::test]
async fn put_defaults_and_refuses_bad_specs_naming_the_field() {
    let app = spawn_app().await;
    let (status, pool) = put(&app, "p", &app.admin, json!({})).await;
    assert_eq!(status, 200, "{pool}");
    assert_eq!(
        (
            &pool["min_bots"],
            &pool["max_bots"],
            &pool["scale_up_queue_depth"],
            &pool["scale_down_idle_secs"]
        ),
        (&json!(1), &json!(10), &json!(5), &json!(300))
    );
    assert_eq!(pool["template"]["model"], app.config.llm.default_model);

    let bad = [
        (json!({"min_bots": 3, "max_bots": 2}), "min_bots"),
        (json!({"max_bots": 0}), "max_bots"),
        (json!({"max_bots": 1001}), "max_bots"),
        (json!({"scale_up_queue_depth": 0}), "scale_up_queue_depth"),
        (
            json!({"scale_down_idle_secs": 86401}),
            "scale_down_idle_secs",
        ),
        (json!({"template": {"name": "x"}}), "name"),
        (json!({"template": {"pool": "x"}}), "pool"),
        (json!({"template": {"concurrency": 0}}), "concurrency"),
        (json!({"template": {"restart": "sometimes"}}), "restart"),
        (json!({"autoscale": true}), "autoscale"),
    ];
    for (body, named) in bad {
        let (status, err) = put(&app, "q", &app.admin, body.clone()).await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error"]["code"], "invalid_field", "{body}: {err}");
        let message = err["error"]["message"].as_str().unwrap();
        assert!(message.contains(named), "{body}: {message}");
    }
    let (status, err) = put(&app, "Bad%20Pool", &app.admin, json!({})).await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (400, &json!("invalid_field"))
    );
    let long = "p".repeat(57);
    let (status, _) = put(&app, &long, &app.admin, json!({})).await;
    assert_eq!(status, 400, "pool names have at most 56 characters");

    let (status, err) = put(&app, "q", &app.operator, json!({})).await;
    assert_eq!((status, &err["error"]["code"]), (403, &json!("forbidden")));
    let (status, _) = app.get("/api/v1/pools/q", &app.viewer).await;
    assert_eq!(status, 404, "no refused PUT created the pool");
}

#[tokio::test]
async fn taken_names_are_skipped() {
    let app = spawn_app().await;
    app.running_bot("team-1", json!({})).await;
    let (status, pool) = put(&app, "team", &app.admin, json!({"min_bots": 2})).await;
    assert_eq!(status, 200, "{pool}");
    assert_eq!(names(&pool), ["team-2", "team-3"]);
    let (_, outsider) = app.get("/api/v1/bots/team-1", &app.viewer).await;
    assert!(outsider["pool"].is_null(), "the outsider is left alone");
}

#[tokio::test]
async fn messages_go_to_the_least_loaded_member() {
    let app = spawn_app().await;
    let (status, _) = put(
        &app,
        "p",
        &app.admin,
        json!({"min_bots": 3, "max_bots": 3, "scale_up_queue_depth": 1000}),
    )
    .await;
    assert_eq!(status, 200);
    let gate = app.sim.gate();
    gate.close();
    let sends: Vec<_> = (0..6)
        .map(|i| {
            send_pool_bg(
                &app,
                "p",
                json!({"content": "hi", "conversation": format!("c{i}")}),
            )
        })
        .collect();
    // Six messages over three members: two each, whatever order they came in.
    let until = Instant::now() + WAIT;
    let loads = loop {
        let pool = wait_for_pool(&app, "p", |_| true).await;
        let mut loads = Vec::new();
        for name in names(&pool) {
            let (_, bot) = app.get(&format!("/api/v1/bots/{name}"), &app.viewer).await;
            loads.push(bot["in_flight"].as_u64().unwrap() + bot["mailbox_depth"].as_u64().unwrap());
        }
        if loads.iter().sum::<u64>() == 6 {
            break loads;
        }
        assert!(
            Instant::now() < until,
            "the messages never all arrived: {loads:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(loads, [2, 2, 2], "spread evenly");
    gate.open();
    let mut answered = BTreeSet::new();
    for s in sends {
        let (status, body) = s.await.unwrap();
        assert_eq!(status, 200, "{body}");
        answered.insert(body["bot"].as_str().unwrap().to_owned());
    }
    assert_eq!(answered.len(), 3, "every member answered: {answered:?}");
}

#[tokio::test]
async fn a_conversation_stays_on_its_member_and_its_context_is_the_pool_history() {
    let app = spawn_app().await;
    let (status, _) = put(
        &app,
        "p",
        &app.admin,
        json!({"min_bots": 2, "max_bots": 2, "scale_up_queue_depth": 1000}),
    )
    .await;
    assert_eq!(status, 200);
    let gate = app.sim.gate();
    gate.close();
    let first = send_pool_bg(
        &app,
        "p",
        json!({"content": "turn one", "conversation": "c"}),
    );
    assert!(app.sim.wait_for(WAIT, |s| s.in_flight() == 1).await);
    // The member holding turn one is busier than the other; turn two follows it anyway.
    let second = send_pool_bg(
        &app,
        "p",
        json!({"content": "turn two", "conversation": "c"}),
    );
    let until = Instant::now() + WAIT;
    let holder = loop {
        let pool = wait_for_pool(&app, "p", |_| true).await;
        let mut found = None;
        for name in names(&pool) {
            let (_, bot) = app.get(&format!("/api/v1/bots/{name}"), &app.viewer).await;
            if bot["in_flight"] == 1 && bot["mailbox_depth"] == 1 {
                found = Some(name);
            }
        }
        if let Some(name) = found {
            break name;
        }
        assert!(
            Instant::now() < until,
            "turn two never queued behind turn one"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    gate.open();
    let (s1, a1) = first.await.unwrap();
    let (s2, a2) = second.await.unwrap();
    assert_eq!((s1, s2), (200, 200), "{a1} {a2}");
    assert_eq!(a1["bot"], holder.as_str());
    assert_eq!(a2["bot"], holder.as_str());

    // Turn three may go to either member: its context is the pool's history of "c".
    app.sim.clear_requests();
    let (status, a3) = send_pool(
        &app,
        "p",
        json!({"content": "turn three", "conversation": "c"}),
    )
    .await;
    assert_eq!(status, 200, "{a3}");
    let chats = app.sim.chat_requests();
    let contents: Vec<&str> = chats[0]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(contents.len(), 5, "{contents:?}");
    assert_eq!(contents[0], "turn one");
    assert_eq!(contents[2], "turn two");
    assert_eq!(contents[4], "turn three");

    let (status, history) = app
        .get("/api/v1/pools/p/messages?conversation=c", &app.viewer)
        .await;
    assert_eq!(status, 200, "{history}");
    let msgs = history["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 6);
    assert!(msgs
        .iter()
        .all(|m| m["bot"].as_str().is_some_and(|b| b.starts_with("p-"))));
}

#[tokio::test]
async fn unknown_pools_are_404_and_a_pool_without_running_bots_is_503() {
    let app = fast_app().await;
    let (status, err) = send_pool(&app, "nope", json!({"content": "hi"})).await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (404, &json!("pool_not_found"))
    );
    let (status, _) = app.get("/api/v1/pools/nope", &app.viewer).await;
    assert_eq!(status, 404);
    let (status, _) = app.get("/api/v1/pools/nope/messages", &app.viewer).await;
    assert_eq!(status, 404);

    // A pool that bots name, none of them running.
    let (status, _) = app
        .post(
            "/api/v1/bots",
            &app.admin,
            json!({"name": "idle", "pool": "named"}),
        )
        .await;
    assert_eq!(status, 201);
    let r = app
        .http
        .post(app.url("/api/v1/pools/named/messages"))
        .bearer_auth(&app.operator)
        .json(&json!({"content": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let (_, err) = status_json(r).await;
    assert_eq!(err["error"]["code"], "no_bot_available");
    let (status, named) = app.get("/api/v1/pools/named", &app.viewer).await;
    assert_eq!(status, 200);
    assert_eq!(named["managed"], false);
    assert!(named["min_bots"].is_null());
    assert_eq!(named["bots"][0]["managed"], false);

    // A managed pool at zero bots answers 503 and starts one for the next message.
    let (status, _) = put(
        &app,
        "lazy",
        &app.admin,
        json!({"min_bots": 0, "max_bots": 2}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, err) = send_pool(&app, "lazy", json!({"content": "hi"})).await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (503, &json!("no_bot_available"))
    );
    wait_for_pool(&app, "lazy", |p| all_running(p, 1)).await;
    let (status, body) = send_pool(&app, "lazy", json!({"content": "hi"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["bot"], "lazy-1");
    let up = events(&app, "lazy", "scaled_up").await;
    assert_eq!(up.len(), 1);
    assert_eq!(up[0]["subject"], "autoscaler");
    assert_eq!(up[0]["detail"]["reason"], "demand");
}

#[tokio::test]
async fn the_autoscaler_adds_a_member_when_the_queue_is_deep_and_stops_at_max() {
    let app = fast_app().await;
    let (status, _) = put(
        &app,
        "p",
        &app.admin,
        json!({"template": {"concurrency": 1}, "min_bots": 1, "max_bots": 2,
               "scale_up_queue_depth": 1, "scale_down_idle_secs": 3600}),
    )
    .await;
    assert_eq!(status, 200);
    let gate = app.sim.gate();
    gate.close();
    let sends: Vec<_> = (0..4)
        .map(|i| {
            send_pool_bg(
                &app,
                "p",
                json!({"content": "hi", "conversation": format!("c{i}")}),
            )
        })
        .collect();
    let pool = wait_for_pool(&app, "p", |p| all_running(p, 2)).await;
    assert_eq!(names(&pool), ["p-1", "p-2"]);
    let up = events(&app, "p", "scaled_up").await;
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0]["subject"], "autoscaler");
    assert_eq!(up[0]["bot"], "p-2");
    assert_eq!(up[0]["detail"]["reason"], "queue_depth");
    // Once all four are in (a slow sender's may have reached p-2 after it started), a
    // message sent now goes to the less loaded member: p-2 unless it took half or more.
    let load = |b: &Value| b["mailbox_depth"].as_u64().unwrap() + b["in_flight"].as_u64().unwrap();
    let until = Instant::now() + WAIT;
    let (one, two) = loop {
        let (_, one) = app.get("/api/v1/bots/p-1", &app.viewer).await;
        let (_, two) = app.get("/api/v1/bots/p-2", &app.viewer).await;
        if load(&one) + load(&two) == 4 {
            break (load(&one), load(&two));
        }
        assert!(
            Instant::now() < until,
            "the four messages never all arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let expected = if two < one { "p-2" } else { "p-1" };
    let extra = send_pool_bg(&app, "p", json!({"content": "hi", "conversation": "late"}));
    assert!(app.sim.wait_for(WAIT, |s| s.in_flight() == 2).await);
    gate.open();
    for s in sends {
        assert_eq!(s.await.unwrap().0, 200);
    }
    let (status, late) = extra.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(late["bot"], expected, "loads p-1 {one}, p-2 {two}");
    // p-1 still had messages queued above the threshold while p-2 took one: max_bots held.
    let pool = wait_for_pool(&app, "p", |_| true).await;
    assert_eq!(names(&pool).len(), 2);
}

#[tokio::test]
async fn idle_members_scale_down_from_the_highest_number_and_keep_their_history() {
    let app = fast_app().await;
    let (status, _) = put(
        &app,
        "p",
        &app.admin,
        json!({"min_bots": 3, "max_bots": 3, "scale_up_queue_depth": 1000}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = app.send("p-3", "remember me").await;
    assert_eq!(status, 200);
    let (status, _) = put(
        &app,
        "p",
        &app.admin,
        json!({"min_bots": 1, "max_bots": 3, "scale_up_queue_depth": 1000, "scale_down_idle_secs": 1}),
    )
    .await;
    assert_eq!(status, 200);
    let pool = wait_for_pool(&app, "p", |p| names(p) == ["p-1"]).await;
    assert!(all_running(&pool, 1));
    let down: Vec<String> = events_n(&app, "p", "scaled_down", 2)
        .await
        .iter()
        .rev()
        .map(|e| e["bot"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(down, ["p-3", "p-2"], "highest number first");
    let (status, _) = app.get("/api/v1/bots/p-3", &app.viewer).await;
    assert_eq!(status, 404, "a scaled-down bot is deleted");
    let (status, history) = app.get("/api/v1/bots/p-3/messages", &app.viewer).await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(history["messages"].as_array().unwrap().len(), 2);
    assert_eq!(events(&app, "p", "pool_updated").await.len(), 1);
}

#[tokio::test]
async fn lowering_max_bots_scales_down_at_once_after_the_queue_is_answered() {
    let app = spawn_app().await;
    let (status, _) = put(&app, "p", &app.admin, json!({"min_bots": 2, "max_bots": 2})).await;
    assert_eq!(status, 200);
    let gate = app.sim.gate();
    gate.close();
    let held = app.send_bg("p-2", json!({"content": "in flight"}));
    assert!(app.sim.wait_for(WAIT, |s| s.in_flight() == 1).await);
    let (status, pool) = put(&app, "p", &app.admin, json!({"min_bots": 1, "max_bots": 1})).await;
    assert_eq!(status, 200, "{pool}");
    let (_, bot) = app.get("/api/v1/bots/p-2", &app.viewer).await;
    assert_eq!(
        bot["state"], "stopping",
        "it finishes its queue first: {bot}"
    );
    gate.open();
    let (status, body) = held.await.unwrap();
    assert_eq!(status, 200, "the message it held is answered: {body}");
    wait_for_pool(&app, "p", |p| names(p) == ["p-1"]).await;
}

#[tokio::test]
async fn deleting_a_pool_deletes_its_bots_and_keeps_the_history() {
    let app = spawn_app().await;
    let (status, _) = put(&app, "p", &app.admin, json!({"min_bots": 2})).await;
    assert_eq!(status, 200);
    app.running_bot("helper", json!({"pool": "p"})).await;
    let (status, _) = send_pool(&app, "p", json!({"content": "hello", "conversation": "c"})).await;
    assert_eq!(status, 200);

    let (status, _) = app.delete("/api/v1/pools/p", &app.operator).await;
    assert_eq!(status, 403);
    let (status, _) = app.delete("/api/v1/pools/p", &app.admin).await;
    assert_eq!(status, 204);
    for bot in ["p-1", "p-2"] {
        let (status, _) = app.get(&format!("/api/v1/bots/{bot}"), &app.viewer).await;
        assert_eq!(status, 404, "{bot} is deleted");
    }
    let (status, helper) = app.get("/api/v1/bots/helper", &app.viewer).await;
    assert_eq!(status, 200, "a bot that names the pool itself stays");
    assert_eq!(helper["state"], "running");
    let (_, pool) = app.get("/api/v1/pools/p", &app.viewer).await;
    assert_eq!(pool["managed"], false, "{pool}");
    let (status, history) = app
        .get("/api/v1/pools/p/messages?conversation=c", &app.viewer)
        .await;
    assert_eq!(status, 200);
    assert_eq!(history["messages"].as_array().unwrap().len(), 2);
    let deleted = events(&app, "p", "pool_deleted").await;
    assert_eq!(deleted.len(), 1);
    assert_eq!(deleted[0]["subject"], "test-user");

    let (status, err) = app.delete("/api/v1/pools/p", &app.admin).await;
    assert_eq!((status, &err["error"]["code"]), (409, &json!("conflict")));
    let (status, err) = app.delete("/api/v1/pools/none", &app.admin).await;
    assert_eq!(
        (status, &err["error"]["code"]),
        (404, &json!("pool_not_found"))
    );
}

#[tokio::test]
async fn pools_survive_a_daemon_restart_and_take_a_new_template_from_the_next_start() {
    let mut app = spawn_app().await;
    let (status, _) = put(
        &app,
        "p",
        &app.admin,
        json!({"template": {"system_prompt": "old"}, "min_bots": 2, "max_bots": 5}),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = put(
        &app,
        "p",
        &app.admin,
        json!({"template": {"system_prompt": "new"}, "min_bots": 2, "max_bots": 5}),
    )
    .await;
    assert_eq!(status, 200);
    app.sim.clear_requests();
    let (status, _) = app.send("p-1", "hi").await;
    assert_eq!(status, 200);
    assert_eq!(
        app.sim.chat_requests()[0]["messages"][0]["content"],
        "old",
        "a running member keeps its spec until its next start"
    );

    app.restart();
    let pool = wait_for_pool(&app, "p", |p| all_running(p, 2)).await;
    assert_eq!(pool["managed"], true);
    assert_eq!(pool["max_bots"], 5);
    assert_eq!(pool["template"]["system_prompt"], "new");
    assert_eq!(names(&pool), ["p-1", "p-2"]);
    app.sim.clear_requests();
    let (status, _) = app.send("p-1", "hi").await;
    assert_eq!(status, 200);
    assert_eq!(app.sim.chat_requests()[0]["messages"][0]["content"], "new");
}

#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn a_crashed_member_is_supervised_like_any_bot() {
    let app = spawn_app().await;
    let (status, _) = put(&app, "p", &app.admin, json!({"min_bots": 1, "max_bots": 1})).await;
    assert_eq!(status, 200);
    let (status, _) = app.send("p-1", "__botd_fault:panic__").await;
    assert_eq!(status, 500);
    let bot = app
        .wait_for_bot("p-1", WAIT, |b| {
            b["state"] == "running" && b["restarts"] == 1
        })
        .await;
    assert_eq!(bot["pool"], "p");
    let (status, body) = send_pool(&app, "p", json!({"content": "still here"})).await;
    assert_eq!(status, 200, "{body}");
}
