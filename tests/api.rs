//! The control API end to end: the daemon on port 0, a fresh SQLite database, the
//! simulated Ollama.

mod support;

use std::time::{Duration, Instant};

use botd::auth::{Claims, Role, TokenKind, ISSUER};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ollama_sim::Reply;
use serde_json::{json, Value};
use support::{spawn_app, spawn_app_with, SECRET};

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bot_lives_through_create_start_send_history_stop_delete() {
    let app = spawn_app().await;
    let (s, bot) = app
        .post(
            "/api/v1/bots",
            &app.admin,
            json!({"name": "support-1", "system_prompt": "Be brief.", "options": {"temperature": 0.5}}),
        )
        .await;
    assert_eq!(s, 201, "{bot}");
    assert_eq!(bot["state"], "stopped");
    assert_eq!(bot["model"], "mistral");
    assert_eq!(bot["restart"], "permanent");
    assert_eq!(bot["concurrency"], 4);
    assert_eq!(bot["mailbox_capacity"], 64);
    assert_eq!(bot["options"]["temperature"], 0.5);

    let (s, bot) = app
        .post("/api/v1/bots/support-1/start", &app.operator, json!({}))
        .await;
    assert_eq!(s, 200, "{bot}");
    assert_eq!(bot["state"], "running");
    assert_eq!(bot["desired_state"], "running");

    let (s, answer) = app.send("support-1", "Hello there").await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(answer["bot"], "support-1");
    assert_eq!(answer["conversation"], "default");
    assert_eq!(answer["reply"]["role"], "assistant");
    assert_eq!(answer["reply"]["content"], "echo: Hello there");
    assert!(answer["id"].as_str().unwrap().parse::<i64>().is_ok());
    assert!(answer["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    let (s, history) = app
        .get("/api/v1/bots/support-1/messages", &app.viewer)
        .await;
    assert_eq!(s, 200, "{history}");
    let msgs = history["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    // Newest first: the reply, then the user message, answered.
    assert_eq!(msgs[0]["role"], "assistant");
    assert_eq!(msgs[0]["content"], "echo: Hello there");
    assert_eq!(msgs[1]["role"], "user");
    assert_eq!(msgs[1]["content"], "Hello there");
    assert_eq!(msgs[1]["status"], "complete");
    assert_eq!(msgs[1]["id"], answer["id"]);
    assert_eq!(msgs[0]["id"], answer["reply"]["id"]);

    let (s, bot) = app
        .post("/api/v1/bots/support-1/stop", &app.operator, json!({}))
        .await;
    assert_eq!(s, 200, "{bot}");
    assert_eq!(bot["state"], "stopped");
    assert_eq!(bot["desired_state"], "stopped");

    let (s, _) = app.delete("/api/v1/bots/support-1", &app.admin).await;
    assert_eq!(s, 204);
    let (s, body) = app.get("/api/v1/bots/support-1", &app.viewer).await;
    assert_eq!(s, 404);
    assert_eq!(code(&body), "bot_not_found");
    // History outlives the bot.
    let (s, history) = app
        .get("/api/v1/bots/support-1/messages", &app.viewer)
        .await;
    assert_eq!(s, 200);
    assert_eq!(history["messages"].as_array().unwrap().len(), 2);

    let (s, events) = app.get("/api/v1/events?bot=support-1", &app.viewer).await;
    assert_eq!(s, 200);
    let kinds: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["deleted", "stopped", "started", "created"]);
    assert!(events["events"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["subject"] == "test-user"));
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_conflicts_have_their_codes() {
    let app = spawn_app().await;
    app.running_bot("b1", json!({})).await;
    let (s, body) = app
        .post("/api/v1/bots", &app.admin, json!({"name": "b1"}))
        .await;
    assert_eq!((s, code(&body)), (409, "bot_exists"));
    let (s, body) = app
        .post("/api/v1/bots/b1/start", &app.operator, json!({}))
        .await;
    assert_eq!((s, code(&body)), (409, "bot_already_running"));
    app.post("/api/v1/bots/b1/stop", &app.operator, json!({}))
        .await;
    let (s, body) = app.send("b1", "hi").await;
    assert_eq!((s, code(&body)), (409, "bot_not_running"));
    let (s, body) = app
        .post("/api/v1/bots/b1/stop", &app.operator, json!({}))
        .await;
    assert_eq!((s, code(&body)), (409, "bot_not_running"));
    let (s, body) = app.send("nobody", "hi").await;
    assert_eq!((s, code(&body)), (404, "bot_not_found"));
    let (s, body) = app
        .post("/api/v1/bots/nobody/start", &app.operator, json!({}))
        .await;
    assert_eq!((s, code(&body)), (404, "bot_not_found"));
    // A restart of a stopped bot starts it.
    let (s, body) = app
        .post("/api/v1/bots/b1/restart", &app.operator, json!({}))
        .await;
    assert_eq!((s, body["state"].as_str()), (200, Some("running")));
    let (s, body) = app
        .post("/api/v1/bots/b1/restart", &app.operator, json!({}))
        .await;
    assert_eq!(
        (s, body["state"].as_str()),
        (200, Some("running")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_names_and_fields_are_400_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({"name": "Bad Name"}), "name"),
        (json!({"name": "-x"}), "name"),
        (json!({"name": "b", "model": "no spaces"}), "model"),
        (json!({"name": "b", "concurrency": 0}), "concurrency"),
        (json!({"name": "b", "concurrency": 1025}), "concurrency"),
        (
            json!({"name": "b", "mailbox_capacity": 100001}),
            "mailbox_capacity",
        ),
        (
            json!({"name": "b", "context_messages": -1}),
            "context_messages",
        ),
        (json!({"name": "b", "restart": "sometimes"}), "restart"),
        (json!({"name": "b", "options": [1, 2]}), "options"),
        (json!({"name": "b", "pool": "P"}), "pool"),
        (json!({"name": "b", "concurrency": "four"}), "concurrency"),
        (
            json!({"name": "b", "system_prompt": "x".repeat(32 * 1024 + 1)}),
            "system_prompt",
        ),
        (json!({"name": "b", "colour": "red"}), "colour"),
        (json!({"model": "mistral"}), "name"),
    ];
    for (body, field) in cases {
        let (s, resp) = app.post("/api/v1/bots", &app.admin, body.clone()).await;
        assert_eq!(s, 400, "{body}: {resp}");
        assert_eq!(code(&resp), "invalid_field", "{body}: {resp}");
        let msg = resp["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with(field), "{body}: {msg}");
    }
    app.running_bot("b", json!({})).await;
    let sends = [
        (json!({"content": "x", "priority": 4}), "priority"),
        (json!({"content": "x", "timeout_ms": 0}), "timeout_ms"),
        (
            json!({"content": "x", "conversation": "has space"}),
            "conversation",
        ),
        (json!({"content": "x", "extra": 1}), "extra"),
        (json!({"conversation": "c"}), "content"),
    ];
    for (body, field) in sends {
        let (s, resp) = app
            .post("/api/v1/bots/b/messages", &app.operator, body.clone())
            .await;
        assert_eq!((s, code(&resp)), (400, "invalid_field"), "{body}: {resp}");
        assert!(
            resp["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with(field),
            "{resp}"
        );
    }
    let (s, resp) = app
        .get("/api/v1/bots/b/messages?limit=501", &app.viewer)
        .await;
    assert_eq!((s, code(&resp)), (400, "invalid_field"));
    let (s, resp) = app
        .get("/api/v1/bots/b/messages?colour=red", &app.viewer)
        .await;
    assert_eq!((s, code(&resp)), (400, "invalid_field"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_that_is_not_json_is_invalid_json_and_limits_hold() {
    let app = spawn_app().await;
    let r = app
        .http
        .post(app.url("/api/v1/bots"))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (s, body) = support::status_json(r).await;
    assert_eq!((s, code(&body)), (400, "invalid_json"));
    assert!(body["error"]["request_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));

    let r = app
        .http
        .post(app.url("/api/v1/bots"))
        .bearer_auth(&app.admin)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    let (s, body) = support::status_json(r).await;
    assert_eq!((s, code(&body)), (415, "unsupported_media_type"));

    let big = "x".repeat(1024 * 1024 + 1);
    // The server answers 413 without reading the body and closes that connection: use a
    // client of its own so no later request reuses it.
    let r = reqwest::Client::new()
        .post(app.url("/api/v1/bots"))
        .bearer_auth(&app.admin)
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    let (s, body) = support::status_json(r).await;
    assert_eq!((s, code(&body)), (413, "payload_too_large"));

    app.running_bot("b", json!({})).await;
    let (s, body) = app
        .post(
            "/api/v1/bots/b/messages",
            &app.operator,
            json!({"content": "x".repeat(65537)}),
        )
        .await;
    assert_eq!((s, code(&body)), (400, "invalid_field"));
    let (s, body) = app.get("/api/v1/nowhere", &app.viewer).await;
    assert_eq!((s, code(&body)), (404, "not_found"));
}

fn token_with(claims: Value, alg: Algorithm, key: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), &claims, &EncodingKey::from_secret(key)).unwrap()
}

fn b64(v: &Value) -> String {
    use base64_like::encode;
    encode(v.to_string().as_bytes())
}

/// base64url without padding, enough for hand-made tokens.
mod base64_like {
    pub fn encode(bytes: &[u8]) -> String {
        const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
            let chars = chunk.len() + 1;
            for i in 0..chars {
                out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_bad_token_is_the_same_401_and_roles_are_enforced() {
    let app = spawn_app().await;
    let now = botd::auth::unix_now();
    let good = json!({"sub": "x", "role": "admin", "kind": "service", "iat": now, "exp": now + 600, "iss": ISSUER});
    let mut tokens: Vec<(String, Option<String>)> = vec![
        ("none".into(), None),
        ("garbage".into(), Some("garbage".into())),
        (
            "bad signature".into(),
            Some(token_with(
                good.clone(),
                Algorithm::HS256,
                b"another-secret-another-secret-xx",
            )),
        ),
        (
            "HS512".into(),
            Some(token_with(
                good.clone(),
                Algorithm::HS512,
                SECRET.as_bytes(),
            )),
        ),
        (
            "alg none".into(),
            Some(format!(
                "{}.{}.",
                b64(&json!({"alg": "none", "typ": "JWT"})),
                b64(&good)
            )),
        ),
    ];
    let mut expired = good.clone();
    expired["exp"] = json!(now - 120);
    tokens.push((
        "expired".into(),
        Some(token_with(expired, Algorithm::HS256, SECRET.as_bytes())),
    ));
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("someone-else");
    tokens.push((
        "wrong iss".into(),
        Some(token_with(wrong_iss, Algorithm::HS256, SECRET.as_bytes())),
    ));
    for claim in ["sub", "role", "kind", "iat", "exp", "iss"] {
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove(claim);
        tokens.push((
            format!("no {claim}"),
            Some(token_with(c, Algorithm::HS256, SECRET.as_bytes())),
        ));
    }
    let mut first: Option<Value> = None;
    for (what, token) in tokens {
        let mut req = app.http.get(app.url("/api/v1/bots"));
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        let (s, mut body) = support::status_json(req.send().await.unwrap()).await;
        assert_eq!(s, 401, "{what}: {body}");
        body["error"]["request_id"] = json!("");
        match &first {
            None => first = Some(body),
            Some(f) => assert_eq!(&body, f, "{what}"),
        }
    }
    // Within the 30 s leeway an expired token still works.
    let mut recent = good.clone();
    recent["exp"] = json!(now - 5);
    let t = token_with(recent, Algorithm::HS256, SECRET.as_bytes());
    let (s, _) = app.get("/api/v1/bots", &t).await;
    assert_eq!(s, 200);
    let _: Claims = app.keys.verify(&app.admin).unwrap();

    app.post("/api/v1/bots", &app.admin, json!({"name": "b"}))
        .await;
    let (s, body) = app
        .post("/api/v1/bots/b/start", &app.viewer, json!({}))
        .await;
    assert_eq!((s, code(&body)), (403, "forbidden"));
    let (s, body) = app
        .post("/api/v1/bots", &app.operator, json!({"name": "c"}))
        .await;
    assert_eq!((s, code(&body)), (403, "forbidden"));
    let viewer_token = app.keys.mint(
        "v",
        Role::Viewer,
        TokenKind::Service,
        Duration::from_secs(60),
    );
    let (s, _) = app.get("/api/v1/bots/b", &viewer_token).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn history_survives_a_restart_and_each_bot_keeps_its_own() {
    let mut app = spawn_app().await;
    app.running_bot("a", json!({})).await;
    app.running_bot("b", json!({})).await;
    for i in 0..3 {
        let (s, _) = app.send("a", &format!("to a {i}")).await;
        assert_eq!(s, 200);
    }
    let (s, _) = app.send("b", "to b").await;
    assert_eq!(s, 200);
    app.restart();
    // Desired state running: the bots are back.
    let (_, bot) = app.get("/api/v1/bots/a", &app.viewer).await;
    assert_eq!(bot["state"], "running", "{bot}");
    let (_, history) = app.get("/api/v1/bots/a/messages", &app.viewer).await;
    let msgs = history["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 6);
    assert!(msgs.iter().all(|m| m["bot"] == "a"));
    assert!(msgs
        .iter()
        .all(|m| !m["content"].as_str().unwrap().contains("to b")));
    let (_, history) = app.get("/api/v1/bots/b/messages", &app.viewer).await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 2);
    // Paging by id.
    let (_, page) = app
        .get("/api/v1/bots/a/messages?limit=4", &app.viewer)
        .await;
    assert_eq!(page["messages"].as_array().unwrap().len(), 4);
    let before = page["next_before"].as_str().unwrap().to_owned();
    let (_, rest) = app
        .get(
            &format!("/api/v1/bots/a/messages?limit=4&before={before}"),
            &app.viewer,
        )
        .await;
    assert_eq!(rest["messages"].as_array().unwrap().len(), 2);
    assert!(rest["next_before"].is_null());
}

#[tokio::test(flavor = "multi_thread")]
async fn large_and_multibyte_content_round_trips_intact() {
    let app = spawn_app().await;
    app.running_bot("b", json!({"context_messages": 0})).await;
    // 64 KiB exactly, with multi-byte characters in it.
    let mut big = "é→世🎉".repeat(4096);
    while big.len() < 65536 {
        big.push('x');
    }
    big.truncate(65536);
    while !big.is_char_boundary(big.len()) {
        big.pop();
    }
    app.sim.set_reply(Reply::Fixed("ok".into()));
    let (s, answer) = app.send("b", &big).await;
    assert_eq!(s, 200, "{answer}");
    let seen = app.sim.chat_requests();
    let last = seen.last().unwrap();
    let msgs = last["messages"].as_array().unwrap();
    assert_eq!(msgs.last().unwrap()["content"].as_str().unwrap(), big);
    let (_, history) = app
        .get("/api/v1/bots/b/messages?limit=2", &app.viewer)
        .await;
    assert_eq!(history["messages"][1]["content"].as_str().unwrap(), big);

    // A reply whose characters are cut across network chunks arrives intact.
    let reply = "Grüße aus Köln — 東京から 🎉🎊 <tags> & \"quotes\"".repeat(20);
    app.sim.set_reply(Reply::Fixed(reply.clone()));
    app.sim.set_chunk_bytes(Some(1));
    let (s, answer) = app.send("b", "hi").await;
    assert_eq!(s, 200, "{answer}");
    assert_eq!(answer["reply"]["content"].as_str().unwrap(), reply);
    let r = app
        .http
        .post(app.url("/api/v1/bots/b/messages"))
        .bearer_auth(&app.operator)
        .json(&json!({"content": "stream it", "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let mut streamed = String::new();
    let mut done = None;
    for block in text.split("\n\n") {
        let event = block
            .lines()
            .find_map(|l| l.strip_prefix("event:"))
            .map(str::trim);
        let data: String = block
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(str::trim_start)
            .collect();
        match event {
            Some("token") => {
                let v: Value = serde_json::from_str(&data).unwrap();
                streamed.push_str(v["content"].as_str().unwrap());
            }
            Some("done") => done = Some(serde_json::from_str::<Value>(&data).unwrap()),
            _ => {}
        }
    }
    assert_eq!(streamed, reply);
    assert_eq!(done.unwrap()["reply"]["content"].as_str().unwrap(), reply);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_system_prompt_and_earlier_turns_reach_the_model() {
    let app = spawn_app().await;
    app.running_bot(
        "b",
        json!({"system_prompt": "You are terse.", "context_messages": 4}),
    )
    .await;
    for text in ["one", "two", "three"] {
        let (s, _) = app
            .post(
                "/api/v1/bots/b/messages",
                &app.operator,
                json!({"content": text, "conversation": "c1"}),
            )
            .await;
        assert_eq!(s, 200);
    }
    // Another conversation stays out of c1's context.
    app.post(
        "/api/v1/bots/b/messages",
        &app.operator,
        json!({"content": "other", "conversation": "c2"}),
    )
    .await;
    app.post(
        "/api/v1/bots/b/messages",
        &app.operator,
        json!({"content": "four", "conversation": "c1"}),
    )
    .await;
    let last = app.sim.chat_requests().last().cloned().unwrap();
    let roles_contents: Vec<(String, String)> = last["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap().into(),
                m["content"].as_str().unwrap().into(),
            )
        })
        .collect();
    let expect: Vec<(String, String)> = [
        ("system", "You are terse."),
        ("user", "two"),
        ("assistant", "echo: two"),
        ("user", "three"),
        ("assistant", "echo: three"),
        ("user", "four"),
    ]
    .iter()
    .map(|(r, c)| (r.to_string(), c.to_string()))
    .collect();
    assert_eq!(roles_contents, expect);
    assert_eq!(last["model"], "mistral");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_is_503_mailbox_full_with_retry_after() {
    let app = spawn_app().await;
    app.running_bot("b", json!({"concurrency": 1, "mailbox_capacity": 1}))
        .await;
    let gate = app.sim.gate();
    gate.close();
    let first = tokio::spawn({
        let (http, url, t) = (
            app.http.clone(),
            app.url("/api/v1/bots/b/messages"),
            app.operator.clone(),
        );
        async move {
            http.post(url)
                .bearer_auth(t)
                .json(&json!({"content": "1", "conversation": "a"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    assert!(
        app.sim
            .wait_for(Duration::from_secs(10), |s| s.in_flight() == 1)
            .await
    );
    let second = tokio::spawn({
        let (http, url, t) = (
            app.http.clone(),
            app.url("/api/v1/bots/b/messages"),
            app.operator.clone(),
        );
        async move {
            http.post(url)
                .bearer_auth(t)
                .json(&json!({"content": "2", "conversation": "b"}))
                .send()
                .await
                .unwrap()
                .status()
        }
    });
    app.wait_for_bot("b", Duration::from_secs(10), |b| b["mailbox_depth"] == 1)
        .await;
    let r = app
        .http
        .post(app.url("/api/v1/bots/b/messages"))
        .bearer_auth(&app.operator)
        .json(&json!({"content": "3", "conversation": "c"}))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);
    let (s, body) = support::status_json(r).await;
    assert_eq!((s, code(&body)), (503, "mailbox_full"));
    gate.open();
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(second.await.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_nothing_listening_a_send_is_503_llm_unavailable_quickly() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let app = spawn_app_with(|c| {
        c.llm.ollama_url = format!("http://127.0.0.1:{port}");
        c.llm.request_timeout_secs = 300;
    })
    .await;
    app.running_bot("b", json!({})).await;
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(10), app.send("b", "hi"))
        .await
        .expect("answered within the test deadline");
    assert_eq!((r.0, code(&r.1)), (503, "llm_unavailable"), "{}", r.1);
    assert!(started.elapsed() < Duration::from_secs(10));
    let (_, history) = app.get("/api/v1/bots/b/messages", &app.viewer).await;
    let msgs = history["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "only the user message, no reply");
    assert_eq!(msgs[0]["status"], "failed");
    assert_eq!(msgs[0]["error"], "llm_unavailable");
}

#[tokio::test(flavor = "multi_thread")]
async fn model_server_errors_have_the_documented_codes() {
    let app = spawn_app_with(|c| c.llm.retries = 2).await;
    app.running_bot("b", json!({})).await;

    // A bot naming a model the server lacks is refused at creation.
    let (s, body) = app
        .post(
            "/api/v1/bots",
            &app.admin,
            json!({"name": "nope", "model": "no-such-model"}),
        )
        .await;
    assert_eq!((s, code(&body)), (400, "invalid_field"), "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("model"));
    // A model removed later is the model server's 404 on the call: 502, not retried.
    app.running_bot("ghost", json!({"model": "llama3"})).await;
    app.sim.set_models(&["mistral:latest"]);
    let before = app.sim.chat_requests().len();
    let (s, body) = app.send("ghost", "hi").await;
    assert_eq!((s, code(&body)), (502, "llm_error"), "{body}");
    assert_eq!(
        app.sim.chat_requests().len() - before,
        1,
        "a 4xx is never retried"
    );

    // A 5xx is retried; after the retries it is 502.
    let before = app.sim.chat_requests().len();
    app.sim.fail_next(3, 500, "runner failed");
    let (s, body) = app.send("b", "hi").await;
    assert_eq!((s, code(&body)), (502, "llm_error"), "{body}");
    assert_eq!(
        app.sim.chat_requests().len() - before,
        3,
        "one call and two retries"
    );

    // A 5xx that heals within the retries is answered.
    app.sim.fail_next(
        1,
        503,
        "server busy, please try again.  maximum pending requests exceeded",
    );
    let (s, body) = app.send("b", "hi").await;
    assert_eq!(s, 200, "{body}");

    // An error line mid-stream.
    app.sim.error_after_tokens(Some(1), "model runner crashed");
    let (s, body) = app.send("b", "hi").await;
    assert_eq!((s, code(&body)), (502, "llm_error"), "{body}");
    app.sim.error_after_tokens(None, "");

    let (_, history) = app.get("/api/v1/bots/b/messages", &app.viewer).await;
    let msgs = history["messages"].as_array().unwrap();
    // Every answered message has its reply; failed ones have none.
    let answered = msgs.iter().filter(|m| m["role"] == "assistant").count();
    let complete = msgs
        .iter()
        .filter(|m| m["role"] == "user" && m["status"] == "complete")
        .count();
    assert_eq!((answered, complete), (1, 1));
    assert_eq!(msgs.iter().filter(|m| m["status"] == "failed").count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_request_ids() {
    let app = spawn_app().await;
    let r = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.headers()["x-request-id"].is_empty());
    let r = app
        .http
        .get(app.url("/readyz"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let (s, body) = support::status_json(r).await;
    assert_eq!(s, 200);
    assert_eq!(
        body,
        json!({"status": "ready", "checks": {"database": "ok", "llm": "ok", "redis": "disabled"}})
    );
    let (s, body) = app.get("/api/v1/status", &app.viewer).await;
    assert_eq!(s, 200);
    assert_eq!(body["llm"]["capacity"], 4);
    assert_eq!(body["bots"]["running"], 0);
    let r = app
        .http
        .get(app.url("/api/v1/bots"))
        .header("x-request-id", "abc")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc");
    let (_, body) = support::status_json(r).await;
    assert_eq!(body["error"]["request_id"], "abc");
}

/// The OpenAPI document's `minimum`/`maximum` on request fields are the bounds the
/// handlers enforce: each bound is accepted, one past it is 400 naming the field.
#[tokio::test]
async fn the_documented_ranges_are_the_ones_enforced() {
    let app = spawn_app().await;
    let doc: Value = serde_json::from_str(botd::http::openapi::document_json()).unwrap();
    let ranges = |schema: &str| -> Vec<(String, i64, i64)> {
        let props = doc["components"]["schemas"][schema]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no schema {schema}"));
        let out: Vec<_> = props
            .iter()
            .filter_map(|(k, p)| Some((k.clone(), p["minimum"].as_i64()?, p["maximum"].as_i64()?)))
            .collect();
        assert!(!out.is_empty(), "{schema} declares no ranges");
        out
    };
    // `field = v` of `schema` answered `s`: 2xx when `ok`, else 400 naming the field.
    let check = |schema: &str, field: &str, v: i64, ok: bool, (s, body): (u16, Value)| {
        if ok {
            assert!(
                (200..300).contains(&s),
                "{schema}.{field} = {v}: {s} {body}"
            );
        } else {
            assert_eq!(s, 400, "{schema}.{field} = {v}: {body}");
            let msg = body["error"]["message"].as_str().unwrap();
            assert!(
                msg.starts_with(&format!("{field}:")),
                "{field} = {v}: {msg}"
            );
        }
    };
    let bounds = |lo: i64, hi: i64| [(lo - 1, false), (lo, true), (hi, true), (hi + 1, false)];
    let mut n = 0;
    for (field, lo, hi) in ranges("CreateBotRequest") {
        for (v, ok) in bounds(lo, hi) {
            n += 1;
            let body = json!({"name": format!("r{n}"), field.as_str(): v});
            let answer = app.post("/api/v1/bots", &app.admin, body).await;
            assert!(!ok || answer.0 == 201, "{answer:?}");
            check("CreateBotRequest", &field, v, ok, answer);
        }
    }
    for (field, lo, hi) in ranges("PutPoolRequest") {
        for (v, ok) in bounds(lo, hi) {
            n += 1;
            // min_bots is bounded by max_bots too, and members cost a start each.
            let body = json!({"min_bots": 0, "max_bots": 1000, field.as_str(): v});
            let path = format!("/api/v1/pools/p{n}");
            let req = app
                .http
                .put(app.url(&path))
                .bearer_auth(&app.admin)
                .json(&body);
            let answer = support::status_json(req.send().await.unwrap()).await;
            assert!(!ok || answer.0 == 200 || answer.0 == 201, "{answer:?}");
            check("PutPoolRequest", &field, v, ok, answer);
            if ok {
                app.delete(&path, &app.admin).await;
            }
        }
    }
    app.running_bot("target", json!({})).await;
    for (field, lo, hi) in ranges("SendRequest") {
        // A deadline of 1 ms may pass before the answer; only the refusals and the upper
        // bound are exact.
        for (v, ok) in bounds(lo, hi).into_iter().filter(|&(v, _)| v != lo) {
            let body = json!({"content": "hi", field.as_str(): v});
            let answer = app
                .post("/api/v1/bots/target/messages", &app.operator, body)
                .await;
            assert!(!ok || answer.0 == 200, "{answer:?}");
            check("SendRequest", &field, v, ok, answer);
        }
    }
}
