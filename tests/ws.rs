//! `GET /api/v1/ws`: authentication, concurrent messages told apart by id, streamed
//! tokens, error frames that keep the socket open, a clean close, and cancellation of
//! running messages when the socket closes.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use support::{spawn_app, spawn_app_with, TestApp};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

const WAIT: Duration = Duration::from_secs(20);

fn ws_url(app: &TestApp) -> String {
    format!("{}/api/v1/ws", app.base.replace("http://", "ws://"))
}

/// Opens a socket, with `token` in the `Authorization` header when given.
async fn open(app: &TestApp, token: Option<&str>) -> Socket {
    let mut req = ws_url(app).into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let (socket, resp) = tokio_tungstenite::connect_async(req)
        .await
        .expect("the upgrade succeeds");
    assert_eq!(resp.status(), 101);
    socket
}

/// An authenticated socket, past its `ready` frame.
async fn ready(app: &TestApp) -> Socket {
    let mut s = open(app, Some(&app.operator)).await;
    let f = next_frame(&mut s).await;
    assert_eq!(f, json!({"type": "ready", "sub": "test-user"}));
    s
}

async fn send(s: &mut Socket, v: Value) {
    s.send(Message::text(v.to_string())).await.unwrap();
}

/// The next text frame as JSON; panics on a close or after `WAIT`.
async fn next_frame(s: &mut Socket) -> Value {
    loop {
        let m = tokio::time::timeout(WAIT, s.next())
            .await
            .expect("a frame in time")
            .expect("the socket is open")
            .expect("a readable frame");
        match m {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
}

/// Reads until the close frame; returns its code.
async fn close_code(s: &mut Socket) -> Option<u16> {
    loop {
        match tokio::time::timeout(WAIT, s.next()).await.expect("in time") {
            Some(Ok(Message::Close(c))) => return c.map(|c| c.code.into()),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn several_messages_to_several_bots_stream_over_one_socket() {
    let app = spawn_app().await;
    app.running_bot("ws-a", json!({})).await;
    app.running_bot("ws-b", json!({})).await;
    app.sim.set_piece_chars(3);
    let mut s = ready(&app).await;
    send(&mut s, json!({"type": "message", "id": "m1", "bot": "ws-a", "content": "first one", "conversation": "c1"})).await;
    send(
        &mut s,
        json!({"type": "message", "id": "m2", "bot": "ws-b", "content": "second one"}),
    )
    .await;
    send(&mut s, json!({"type": "message", "id": "m3", "bot": "ws-a", "content": "third one", "conversation": "c3", "priority": 0, "timeout_ms": 60000})).await;
    let mut tokens: HashMap<String, String> = HashMap::new();
    let mut replies: HashMap<String, Value> = HashMap::new();
    while replies.len() < 3 {
        let f = next_frame(&mut s).await;
        let id = f["id"]
            .as_str()
            .expect("every frame names its id")
            .to_owned();
        match f["type"].as_str().unwrap() {
            "token" => {
                assert!(!replies.contains_key(&id), "a token after its reply: {f}");
                let bot = if id == "m2" { "ws-b" } else { "ws-a" };
                assert_eq!(f["bot"], bot, "{f}");
                tokens
                    .entry(id)
                    .or_default()
                    .push_str(f["content"].as_str().unwrap());
            }
            "reply" => {
                replies.insert(id, f);
            }
            other => panic!("unexpected frame {other}: {f}"),
        }
    }
    for (id, content, bot, conv) in [
        ("m1", "first one", "ws-a", "c1"),
        ("m2", "second one", "ws-b", "default"),
        ("m3", "third one", "ws-a", "c3"),
    ] {
        let r = &replies[id];
        let text = format!("echo: {content}");
        assert_eq!(r["reply"]["content"], text.as_str(), "{r}");
        assert_eq!(tokens[id], text, "the tokens make up the reply of {id}");
        assert_eq!(r["bot"], bot);
        assert_eq!(r["conversation"], conv);
        assert!(r["usage"]["completion_tokens"].as_u64().unwrap() > 0);
        // The reply frame is durable: history has both rows.
        let (st, h) = app
            .get(
                &format!("/api/v1/bots/{bot}/messages?conversation={conv}"),
                &app.viewer,
            )
            .await;
        assert_eq!(st, 200, "{h}");
        let msgs = h["messages"].as_array().unwrap();
        assert_eq!(msgs[0]["id"], r["reply"]["id"]);
        assert_eq!(msgs[1]["id"], r["message_id"]);
        assert_eq!(msgs[1]["status"], "complete");
    }
    s.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    assert_eq!(
        close_code(&mut s).await,
        Some(1000),
        "the close is answered"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_can_authenticate_with_a_first_frame() {
    let app = spawn_app().await;
    app.running_bot("ws-auth", json!({})).await;
    let mut s = open(&app, None).await;
    send(&mut s, json!({"type": "auth", "token": app.operator})).await;
    assert_eq!(
        next_frame(&mut s).await,
        json!({"type": "ready", "sub": "test-user"})
    );
    send(
        &mut s,
        json!({"type": "message", "id": "x", "bot": "ws-auth", "content": "hi"}),
    )
    .await;
    loop {
        let f = next_frame(&mut s).await;
        if f["type"] == "reply" {
            assert_eq!(f["reply"]["content"], "echo: hi");
            break;
        }
        assert_eq!(f["type"], "token", "{f}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_are_refused_at_the_upgrade_or_by_frame() {
    let app = spawn_app().await;
    // A header with a bad token, or a viewer's: the upgrade itself is refused.
    for (token, status, code) in [
        ("not-a-CANARY-token", 401, "unauthorized"),
        (app.viewer.as_str(), 403, "forbidden"),
    ] {
        let mut req = ws_url(&app).into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status(), status);
                let body: Value =
                    serde_json::from_slice(resp.body().as_deref().unwrap_or_default()).unwrap();
                assert_eq!(body["error"]["code"], code, "{body}");
            }
            other => panic!("expected HTTP {status}, got {other:?}"),
        }
    }
    // A plain GET without the upgrade is a 400 that says so.
    let (st, body) = app.get("/api/v1/ws", &app.operator).await;
    assert_eq!(
        (st, body["error"]["code"].as_str()),
        (400, Some("invalid_field"))
    );

    // By frame: a bad token, a viewer's, or any other frame first close the socket
    // with 1008 after an error frame.
    let bad_auth = json!({"type": "auth", "token": "CANARY-nope"});
    let viewer_auth = json!({"type": "auth", "token": app.viewer});
    let too_soon = json!({"type": "message", "id": "1", "bot": "b", "content": "x"});
    for (frame, code) in [
        (bad_auth, "unauthorized"),
        (viewer_auth, "forbidden"),
        (too_soon, "unauthorized"),
    ] {
        let mut s = open(&app, None).await;
        send(&mut s, frame.clone()).await;
        let f = next_frame(&mut s).await;
        assert_eq!(f["type"], "error", "{frame}: {f}");
        assert_eq!(f["error"]["code"], code, "{frame}: {f}");
        assert_eq!(close_code(&mut s).await, Some(1008), "{frame}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_socket_without_an_auth_frame_is_closed_after_the_header_timeout() {
    let app = spawn_app_with(|c| c.http.header_read_timeout_ms = 200).await;
    let mut s = open(&app, None).await;
    let f = next_frame(&mut s).await;
    assert_eq!(f["error"]["code"], "unauthorized", "{f}");
    assert_eq!(close_code(&mut s).await, Some(1008));
}

#[tokio::test(flavor = "multi_thread")]
async fn errors_are_frames_and_the_socket_stays_open() {
    let app = spawn_app().await;
    app.running_bot("ws-e", json!({})).await;
    app.post("/api/v1/bots", &app.admin, json!({"name": "ws-stopped"}))
        .await;
    let mut s = ready(&app).await;
    let cases: Vec<(Message, Option<&str>, &str)> = vec![
        (Message::text("{not json"), None, "invalid_json"),
        (Message::binary(vec![1u8, 2, 3]), None, "invalid_json"),
        (Message::text("[1,2]"), None, "invalid_field"),
        (
            Message::text(json!({"id": "t"}).to_string()),
            Some("t"),
            "invalid_field",
        ),
        (
            Message::text(json!({"type": "shout", "id": "u"}).to_string()),
            Some("u"),
            "invalid_field",
        ),
        (
            Message::text(json!({"type": "auth", "token": app.operator}).to_string()),
            None,
            "invalid_field",
        ),
        (
            Message::text(
                json!({"type": "message", "id": "a", "bot": "nobody", "content": "x"}).to_string(),
            ),
            Some("a"),
            "bot_not_found",
        ),
        (
            Message::text(
                json!({"type": "message", "id": "b", "pool": "nopool", "content": "x"}).to_string(),
            ),
            Some("b"),
            "pool_not_found",
        ),
        (
            Message::text(
                json!({"type": "message", "id": "c", "bot": "ws-stopped", "content": "x"})
                    .to_string(),
            ),
            Some("c"),
            "bot_not_running",
        ),
        (
            Message::text(
                json!({"type": "message", "id": "d", "bot": "Bad Name", "content": "x"})
                    .to_string(),
            ),
            Some("d"),
            "invalid_field",
        ),
        (
            Message::text(
                json!({"type": "message", "id": "e", "bot": "ws-e", "pool": "p", "content": "x"})
                    .to_string(),
            ),
            Some("e"),
            "invalid_field",
        ),
        (
            Message::text(json!({"type": "message", "id": "f", "content": "x"}).to_string()),
            Some("f"),
            "invalid_field",
        ),
        (
            Message::text(
                json!({"type": "message", "id": "g", "bot": "ws-e", "content": "x", "priority": 9})
                    .to_string(),
            ),
            Some("g"),
            "invalid_field",
        ),
        (
            Message::text(
                json!({"type": "message", "id": "h", "bot": "ws-e", "content": "x", "extra": 1})
                    .to_string(),
            ),
            Some("h"),
            "invalid_field",
        ),
        (
            Message::text(
                json!({"type": "message", "id": "", "bot": "ws-e", "content": "x"}).to_string(),
            ),
            Some(""),
            "invalid_field",
        ),
        (
            Message::text(json!({"type": "message", "bot": "ws-e", "content": "x"}).to_string()),
            None,
            "invalid_field",
        ),
    ];
    for (frame, id, code) in cases {
        let shown = format!("{frame:?}");
        s.send(frame).await.unwrap();
        let f = next_frame(&mut s).await;
        assert_eq!(f["type"], "error", "{shown}: {f}");
        assert_eq!(f["error"]["code"], code, "{shown}: {f}");
        assert_eq!(f.get("id").and_then(Value::as_str), id, "{shown}: {f}");
        assert!(f["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // A model error is an error frame too; the socket still works afterwards.
    app.sim.fail_next(1, 404, "model 'x' not found");
    send(
        &mut s,
        json!({"type": "message", "id": "m", "bot": "ws-e", "content": "x"}),
    )
    .await;
    let f = next_frame(&mut s).await;
    assert_eq!(
        (f["type"].as_str(), f["id"].as_str()),
        (Some("error"), Some("m")),
        "{f}"
    );
    assert_eq!(f["error"]["code"], "llm_error");
    send(
        &mut s,
        json!({"type": "message", "id": "m", "bot": "ws-e", "content": "again"}),
    )
    .await;
    loop {
        let f = next_frame(&mut s).await;
        assert_eq!(f["id"], "m");
        if f["type"] == "reply" {
            assert_eq!(f["reply"]["content"], "echo: again");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_still_running_cannot_be_reused() {
    let app = spawn_app().await;
    app.running_bot("ws-dup", json!({})).await;
    let gate = app.sim.gate();
    gate.close();
    let mut s = ready(&app).await;
    send(
        &mut s,
        json!({"type": "message", "id": "same", "bot": "ws-dup", "content": "1"}),
    )
    .await;
    assert!(app.sim.wait_for(WAIT, |s| s.in_flight() == 1).await);
    send(
        &mut s,
        json!({"type": "message", "id": "same", "bot": "ws-dup", "content": "2"}),
    )
    .await;
    let f = next_frame(&mut s).await;
    assert_eq!(
        (f["type"].as_str(), f["id"].as_str()),
        (Some("error"), Some("same"))
    );
    assert_eq!(f["error"]["code"], "invalid_field");
    gate.open();
    loop {
        let f = next_frame(&mut s).await;
        if f["type"] == "reply" {
            assert_eq!(f["reply"]["content"], "echo: 1");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_frame_over_the_body_limit_closes_the_socket_with_1009() {
    let app = spawn_app_with(|c| c.http.max_body_bytes = 4096).await;
    let mut s = ready(&app).await;
    let big = "x".repeat(8192);
    send(
        &mut s,
        json!({"type": "message", "id": "big", "bot": "b", "content": big}),
    )
    .await;
    let f = next_frame(&mut s).await;
    assert_eq!(f["error"]["code"], "payload_too_large", "{f}");
    assert_eq!(close_code(&mut s).await, Some(1009));
}

#[tokio::test(flavor = "multi_thread")]
async fn closing_the_socket_cancels_its_running_messages() {
    let app = spawn_app().await;
    app.running_bot("ws-c", json!({"concurrency": 2})).await;
    let gate = app.sim.gate();
    gate.close_after_tokens(1);
    let mut s = ready(&app).await;
    send(
        &mut s,
        json!({"type": "message", "id": "1", "bot": "ws-c", "content": "one", "conversation": "x"}),
    )
    .await;
    send(
        &mut s,
        json!({"type": "message", "id": "2", "bot": "ws-c", "content": "two", "conversation": "y"}),
    )
    .await;
    // Both calls have streamed a token and are held.
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        let f = next_frame(&mut s).await;
        assert_eq!(f["type"], "token", "{f}");
        seen.insert(f["id"].as_str().unwrap().to_owned());
    }
    drop(s);
    assert!(
        app.sim.wait_for(WAIT, |s| s.client_closed() == 2).await,
        "both model calls were dropped; the simulator saw {} closed",
        app.sim.client_closed()
    );
    gate.open();
    let until = std::time::Instant::now() + WAIT;
    loop {
        let (_, h) = app.get("/api/v1/bots/ws-c/messages", &app.viewer).await;
        let msgs = h["messages"].as_array().unwrap().clone();
        if msgs.len() == 2 && msgs.iter().all(|m| m["status"] == "cancelled") {
            break;
        }
        assert!(std::time::Instant::now() < until, "{h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_can_go_to_a_pool() {
    let app = spawn_app().await;
    app.running_bot("wsp-1", json!({"pool": "wsp"})).await;
    let mut s = ready(&app).await;
    send(
        &mut s,
        json!({"type": "message", "id": "p", "pool": "wsp", "content": "hi", "conversation": "pc"}),
    )
    .await;
    loop {
        let f = next_frame(&mut s).await;
        assert_eq!(f["bot"], "wsp-1", "{f}");
        if f["type"] == "reply" {
            assert_eq!(f["reply"]["content"], "echo: hi");
            break;
        }
    }
    let (_, h) = app
        .get("/api/v1/pools/wsp/messages?conversation=pc", &app.viewer)
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 2, "{h}");
}
