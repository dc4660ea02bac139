//! Conversation context: what the model receives is the bot's system prompt plus the
//! last `context_messages` turns of complete exchanges of that conversation, exactly as
//! history shows them, whether the cache is in-process or in Redis, stale, or cut off.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use botd_actors::cache::RedisConn;
use serde_json::{json, Value};
use support::{spawn_app, spawn_app_with, TestApp};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;

const WAIT: Duration = Duration::from_secs(20);

/// The test Redis (`BOTD_TEST_REDIS_URL`), or `None` with a note when it is not there;
/// under `CI=true` a missing Redis fails the test.
async fn redis_url() -> Option<String> {
    let url = std::env::var("BOTD_TEST_REDIS_URL").ok();
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    let reachable = match &url {
        Some(u) => {
            let conn = RedisConn::new(u, "botd-test-probe:", discard()).expect("a Redis URL");
            conn.ping().await
        }
        None => false,
    };
    if reachable {
        return url;
    }
    assert!(!ci, "Redis is needed under CI: BOTD_TEST_REDIS_URL={url:?}");
    eprintln!("note: skipped, no Redis at BOTD_TEST_REDIS_URL={url:?}");
    None
}

fn discard() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

fn prefix() -> String {
    format!("botd-test-{}:", rand::random::<u64>())
}

/// A TCP proxy the test owns: `cut` closes its connections and refuses new ones until
/// `restore`.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    kill: broadcast::Sender<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let (kill, _) = broadcast::channel(4);
        let (c, k) = (cut.clone(), kill.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut killed = k.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = killed.recv() => {}
                    }
                });
            }
        });
        Proxy { addr, cut, kill }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        let _ = self.kill.send(());
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

fn redis_addr(url: &str) -> SocketAddr {
    use std::net::ToSocketAddrs;
    let rest = url
        .trim_start_matches("redis://")
        .rsplit('@')
        .next()
        .unwrap();
    let hostport = rest.split('/').next().unwrap();
    hostport.to_socket_addrs().unwrap().next().unwrap()
}

/// The context history implies for the next turn: the last `n` messages of complete
/// exchanges, oldest first, as `{role, content}`.
async fn expected_context(app: &TestApp, path: &str, conversation: &str, n: usize) -> Vec<Value> {
    let (s, h) = app
        .get(
            &format!("{path}?conversation={conversation}&limit=500"),
            &app.viewer,
        )
        .await;
    assert_eq!(s, 200, "{h}");
    let mut rows: Vec<Value> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["status"] == "complete")
        .map(|m| json!({"role": m["role"], "content": m["content"]}))
        .collect();
    rows.reverse();
    let skip = rows.len().saturating_sub(n);
    rows.split_off(skip)
}

/// The `messages` of the newest chat call the simulator received.
fn last_chat_messages(app: &TestApp) -> Vec<Value> {
    let reqs = app.sim.chat_requests();
    reqs.last().expect("a chat call")["messages"]
        .as_array()
        .unwrap()
        .clone()
}

/// Sends one turn and checks the model got exactly system prompt + history + the turn.
async fn turn(app: &TestApp, target: &str, conversation: &str, content: &str, n: usize) -> Value {
    let history_path = format!("/api/v1/{target}/messages");
    let mut expect = vec![json!({"role": "system", "content": "Be brief."})];
    expect.extend(expected_context(app, &history_path, conversation, n).await);
    expect.push(json!({"role": "user", "content": content}));
    let (s, body) = app
        .post(
            &history_path,
            &app.operator,
            json!({"content": content, "conversation": conversation}),
        )
        .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        last_chat_messages(app),
        expect,
        "the context of {content:?} in {conversation}"
    );
    body
}

/// Turns in two conversations, one of them failing, with a context of 3 messages.
async fn the_context_follows_history(app: &TestApp) {
    app.running_bot(
        "ctx",
        json!({"system_prompt": "Be brief.", "context_messages": 3}),
    )
    .await;
    turn(app, "bots/ctx", "c", "one", 3).await;
    turn(app, "bots/ctx", "other", "elsewhere", 3).await;
    turn(app, "bots/ctx", "c", "two", 3).await;
    // A failed exchange is stored but is not context; it changes the version.
    app.sim.fail_next(1, 404, "model 'x' not found");
    let (s, _) = app
        .post(
            "/api/v1/bots/ctx/messages",
            &app.operator,
            json!({"content": "lost", "conversation": "c"}),
        )
        .await;
    assert_eq!(s, 502);
    turn(app, "bots/ctx", "c", "three", 3).await;
    turn(app, "bots/ctx", "c", "four", 3).await;
    turn(app, "bots/ctx", "other", "again", 3).await;
    // A longer context after an edit and a restart of the bot.
    let (s, _) = app
        .patch(
            "/api/v1/bots/ctx",
            &app.admin,
            json!({"context_messages": 20}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .post("/api/v1/bots/ctx/restart", &app.operator, json!({}))
        .await;
    assert_eq!(s, 200);
    turn(app, "bots/ctx", "c", "five", 20).await;
    turn(app, "bots/ctx", "c", "six", 20).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_model_gets_the_system_prompt_and_the_history_in_process() {
    let app = spawn_app().await;
    the_context_follows_history(&app).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_model_gets_the_system_prompt_and_the_history_with_redis() {
    let Some(url) = redis_url().await else {
        return;
    };
    let prefix = prefix();
    let app = spawn_app_with(|c| {
        c.redis.url = Some(url.clone());
        c.redis.key_prefix = prefix.clone();
    })
    .await;
    the_context_follows_history(&app).await;
    // The entries are in Redis, under the prefix, at the latest version.
    let r = RedisConn::new(&url, &prefix, discard()).unwrap();
    let raw = r.get("ctx:bot:ctx:c").await.expect("Redis answers");
    let entry: Value = serde_json::from_str(&raw.expect("an entry for ctx/c")).unwrap();
    let (_, h) = app
        .get("/api/v1/bots/ctx/messages?conversation=c", &app.viewer)
        .await;
    assert_eq!(
        entry["version"].as_i64().unwrap().to_string(),
        h["messages"][0]["id"].as_str().unwrap()
    );
    let (_, ready) = app.get("/readyz", "").await;
    assert_eq!(ready["checks"]["redis"], "ok", "{ready}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_or_foreign_entry_in_redis_is_not_used() {
    let Some(url) = redis_url().await else {
        return;
    };
    let prefix = prefix();
    let app = spawn_app_with(|c| {
        c.redis.url = Some(url.clone());
        c.redis.key_prefix = prefix.clone();
    })
    .await;
    app.running_bot(
        "stale",
        json!({"system_prompt": "Be brief.", "context_messages": 10}),
    )
    .await;
    turn(&app, "bots/stale", "c", "one", 10).await;
    let r = RedisConn::new(&url, &prefix, discard()).unwrap();
    let key = "ctx:bot:stale:c";
    // An entry at an older version, and then one at a version from the future: both
    // disagree with the database's newest message, so neither is used.
    for version in [1, i64::MAX] {
        let bogus = json!({"version": version, "limit": 10,
            "turns": [{"role": "user", "content": "never said"}]});
        assert!(r.set_ex(key, &bogus.to_string(), 600).await);
        turn(&app, "bots/stale", "c", &format!("after {version}"), 10).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_redis_cut_off_messages_still_work_and_readyz_says_down_then_ok() {
    let Some(url) = redis_url().await else {
        return;
    };
    let proxy = Proxy::start(redis_addr(&url)).await;
    let prefix = prefix();
    let app = spawn_app_with(|c| {
        c.redis.url = Some(proxy.url());
        c.redis.key_prefix = prefix.clone();
    })
    .await;
    app.running_bot(
        "cut",
        json!({"system_prompt": "Be brief.", "context_messages": 10}),
    )
    .await;
    turn(&app, "bots/cut", "c", "one", 10).await;
    let (s, ready) = app.get("/readyz", "").await;
    assert_eq!(
        (s, &ready["checks"]["redis"]),
        (200, &json!("ok")),
        "{ready}"
    );

    proxy.cut();
    turn(&app, "bots/cut", "c", "two", 10).await;
    turn(&app, "bots/cut", "c", "three", 10).await;
    let (s, ready) = app.get("/readyz", "").await;
    assert_eq!(s, 200, "Redis does not decide readiness: {ready}");
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["redis"], "down", "{ready}");
    let until = Instant::now() + WAIT;
    while !app.logs().contains("Redis cannot be reached") {
        assert!(Instant::now() < until, "no warning was logged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    proxy.restore();
    let until = Instant::now() + WAIT;
    loop {
        let (_, ready) = app.get("/readyz", "").await;
        if ready["checks"]["redis"] == "ok" {
            break;
        }
        assert!(Instant::now() < until, "Redis never came back: {ready}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = turn(&app, "bots/cut", "c", "four", 10).await;
    // Redis is used again: it holds the entry of the turn just answered.
    let r = RedisConn::new(&url, &prefix, discard()).unwrap();
    let raw = r.get("ctx:bot:cut:c").await.expect("Redis answers");
    let entry: Value = serde_json::from_str(&raw.expect("an entry")).unwrap();
    assert_eq!(
        entry["version"].as_i64().unwrap().to_string(),
        answer["reply"]["id"].as_str().unwrap()
    );
    turn(&app, "bots/cut", "c", "five", 10).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_conversation_gets_the_pools_history_whichever_member_answers() {
    let app = spawn_app().await;
    for name in ["pc-a", "pc-b"] {
        app.running_bot(
            name,
            json!({"pool": "pc", "system_prompt": "Be brief.", "context_messages": 10}),
        )
        .await;
    }
    // A turn to a member directly is that bot's own, not the pool's.
    turn(&app, "bots/pc-a", "c", "direct", 10).await;
    let first = turn(&app, "pools/pc", "c", "one", 10).await;
    turn(&app, "pools/pc", "c", "two", 10).await;
    // The member that answered stops; the other answers with the pool's history.
    let answered = first["bot"].as_str().unwrap().to_owned();
    let (s, _) = app
        .post(
            &format!("/api/v1/bots/{answered}/stop"),
            &app.operator,
            json!({}),
        )
        .await;
    assert_eq!(s, 200);
    let third = turn(&app, "pools/pc", "c", "three", 10).await;
    assert_ne!(third["bot"], answered.as_str());
    turn(&app, "pools/pc", "c", "four", 10).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_context_messages_the_model_gets_the_turn_alone() {
    let app = spawn_app().await;
    app.running_bot(
        "noctx",
        json!({"system_prompt": "Be brief.", "context_messages": 0}),
    )
    .await;
    turn(&app, "bots/noctx", "c", "one", 0).await;
    turn(&app, "bots/noctx", "c", "two", 0).await;
}
