//! The daemon as a child process: nothing answered (a 200, a stream's `done`, a WebSocket
//! `reply` frame) is lost to `kill -9` (SQLite and PostgreSQL), desired state survives,
//! and the signals do what ARCHITECTURE.md says.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use botd::auth::{JwtKeys, Role, TokenKind};
use botd_actors::store::testing::TestDb;
use ollama_sim::Simulator;
use serde_json::{json, Value};

const SECRET: &str = "durability-test-secret-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(30);

struct Proc {
    child: Child,
    addr: String,
    lines: Arc<Mutex<Vec<Value>>>,
}

fn write_config(dir: &Path, db: &str, ollama: &str, extra: &str) -> PathBuf {
    let path = dir.join("botd.toml");
    std::fs::write(
        &path,
        format!(
            "[http]\nlisten = \"127.0.0.1:0\"\n[database]\nurl = \"{db}\"\npool_size = 4\n\
             [llm]\nollama_url = \"{ollama}\"\n[auth]\njwt_secret_file = \"{}\"\n\
             [supervisor]\nstop_timeout_ms = 2000\n{extra}",
            dir.join("botd.secret").display()
        ),
    )
    .unwrap();
    path
}

fn spawn(config: &Path) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_botd"))
        .arg("--config")
        .arg(config)
        .env("BOTD_AUTH__JWT_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let lines = lines.clone();
        // Under `.ci/run` the child's log also goes where the canary check reads.
        let mut copy = std::env::var_os("BOTD_TEST_LOG_DIR").map(|d| {
            std::fs::create_dir_all(&d).expect("the log folder");
            std::fs::File::create(
                PathBuf::from(d).join(format!("child-{}.log", rand::random::<u64>())),
            )
            .expect("a log file")
        });
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(f) = copy.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["msg"] == "botd is listening." {
                        let _ = tx.send(v["addr"].as_str().unwrap_or("").to_owned());
                    }
                    lines.lock().unwrap().push(v);
                }
            }
        });
    }
    let addr = rx.recv_timeout(WAIT).expect("the daemon listens");
    Proc { child, addr, lines }
}

impl Proc {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn signal(&self, sig: &str) {
        assert!(Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
    }

    fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let until = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            assert!(Instant::now() < until, "the daemon did not exit");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    async fn wait_log(&self, pred: impl Fn(&Value) -> bool) -> Value {
        let until = Instant::now() + WAIT;
        loop {
            if let Some(v) = self.lines.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            assert!(Instant::now() < until, "no such log record");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn token() -> String {
    JwtKeys::new(SECRET.as_bytes()).mint(
        "durability",
        Role::Admin,
        TokenKind::Service,
        Duration::from_secs(3600),
    )
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> (u16, Value) {
    match http.post(url).bearer_auth(token()).json(&body).send().await {
        Ok(r) => {
            let s = r.status().as_u16();
            (s, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Sends streamed messages (SSE) until the daemon goes away; collects each `done` answer.
async fn sse_client(http: reqwest::Client, base: String, c: usize, out: Arc<Mutex<Vec<Value>>>) {
    for i in 0.. {
        let bot = ["k1", "k2", "k3"][(c + i) % 3];
        let r = http
            .post(format!("{base}/api/v1/bots/{bot}/messages"))
            .bearer_auth(token())
            .json(&json!({"content": format!("sse {c} message {i}"), "conversation": format!("s{c}"), "stream": true}))
            .send()
            .await;
        let Ok(r) = r else { return };
        // A stream cut by the kill ends without its `done`, which promised nothing.
        let Ok(text) = r.text().await else { return };
        for event in text.split("\n\n") {
            let field = |name: &str| {
                event.lines().find_map(|l| {
                    l.strip_prefix(name)
                        .map(|v| v.strip_prefix(' ').unwrap_or(v).to_owned())
                })
            };
            if field("event:").as_deref() == Some("done") {
                let data = field("data:").expect("a done event has data");
                out.lock()
                    .unwrap()
                    .push(serde_json::from_str(&data).unwrap());
            }
        }
    }
}

/// Keeps three messages running over one WebSocket until the daemon goes away; collects
/// each `reply` frame, as an answer (its `message_id` as `id`).
async fn ws_client(addr: String, out: Arc<Mutex<Vec<Value>>>) {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let mut req = format!("ws://{addr}/api/v1/ws")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", token()).parse().unwrap(),
    );
    let Ok((mut socket, _)) = tokio_tungstenite::connect_async(req).await else {
        return;
    };
    let mut next = 0usize;
    let frame = |i: usize| {
        let bot = ["k1", "k2", "k3"][i % 3];
        Message::text(
            json!({"type": "message", "id": format!("w{i}"), "bot": bot,
                   "content": format!("ws message {i}"), "conversation": format!("w{}", i % 3)})
            .to_string(),
        )
    };
    for _ in 0..3 {
        if socket.send(frame(next)).await.is_err() {
            return;
        }
        next += 1;
    }
    while let Some(Ok(m)) = socket.next().await {
        let Message::Text(t) = m else { continue };
        let mut f: Value = serde_json::from_str(&t).unwrap();
        match f["type"].as_str() {
            Some("reply") => {
                f["id"] = f["message_id"].clone();
                out.lock().unwrap().push(f);
            }
            Some("error") => {}
            _ => continue,
        }
        if socket.send(frame(next)).await.is_err() {
            return;
        }
        next += 1;
    }
}

/// Several clients send until the daemon is killed; every 200 must survive.
async fn nothing_answered_is_lost_to_kill_9(db: TestDb) {
    let sim = Simulator::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), db.url(), &sim.url(), "");
    let mut p = spawn(&config);
    let http = reqwest::Client::new();
    for b in ["k1", "k2", "k3"] {
        let (s, body) = post(
            &http,
            p.url("/api/v1/bots"),
            json!({"name": b, "autostart": true}),
        )
        .await;
        assert_eq!(s, 201, "{body}");
    }
    let answered = Arc::new(Mutex::new(Vec::<Value>::new()));
    let mut clients = Vec::new();
    for c in 0..6 {
        let (http, base, answered) = (http.clone(), p.url(""), answered.clone());
        clients.push(tokio::spawn(async move {
            for i in 0.. {
                let bot = ["k1", "k2", "k3"][(c + i) % 3];
                let (s, body) = post(
                    &http,
                    format!("{base}/api/v1/bots/{bot}/messages"),
                    json!({"content": format!("client {c} message {i}"), "conversation": format!("c{c}")}),
                )
                .await;
                match s {
                    200 => answered.lock().unwrap().push(body),
                    0 => return,
                    _ => {}
                }
            }
        }));
    }
    // Streams: every `done` event and every WebSocket `reply` frame is a promise too.
    let streamed = Arc::new(Mutex::new(Vec::<Value>::new()));
    for c in 0..2 {
        let (http, base, streamed) = (http.clone(), p.url(""), streamed.clone());
        clients.push(tokio::spawn(sse_client(http, base, c, streamed)));
    }
    let framed = Arc::new(Mutex::new(Vec::<Value>::new()));
    clients.push(tokio::spawn(ws_client(p.addr.clone(), framed.clone())));
    // Kill mid-load, once a good number have been answered in each way.
    let until = Instant::now() + WAIT;
    while answered.lock().unwrap().len() < 60
        || streamed.lock().unwrap().len() < 4
        || framed.lock().unwrap().len() < 4
    {
        assert!(
            Instant::now() < until,
            "answered {} plain, {} streamed, {} over the WebSocket",
            answered.lock().unwrap().len(),
            streamed.lock().unwrap().len(),
            framed.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    p.signal("KILL");
    p.wait_exit(WAIT);
    for c in clients {
        c.await.unwrap();
    }
    let mut answered = answered.lock().unwrap().clone();
    let (n_streamed, n_framed) = (streamed.lock().unwrap().len(), framed.lock().unwrap().len());
    answered.extend(streamed.lock().unwrap().iter().cloned());
    answered.extend(framed.lock().unwrap().iter().cloned());
    assert!(n_streamed >= 4 && n_framed >= 4);
    let p = spawn(&config);
    for b in ["k1", "k2", "k3"] {
        let r = http
            .get(p.url(&format!("/api/v1/bots/{b}")))
            .bearer_auth(token())
            .send()
            .await
            .unwrap();
        let bot: Value = r.json().await.unwrap();
        assert_eq!(
            bot["state"], "running",
            "desired state survives kill -9: {bot}"
        );
    }
    let mut stored = std::collections::HashMap::new();
    for b in ["k1", "k2", "k3"] {
        let mut before: Option<String> = None;
        loop {
            let mut url = p.url(&format!("/api/v1/bots/{b}/messages?limit=500"));
            if let Some(id) = &before {
                url.push_str(&format!("&before={id}"));
            }
            let page: Value = http
                .get(url)
                .bearer_auth(token())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for m in page["messages"].as_array().unwrap() {
                stored.insert(m["id"].as_str().unwrap().to_owned(), m.clone());
            }
            match page["next_before"].as_str() {
                Some(id) => before = Some(id.to_owned()),
                None => break,
            }
        }
    }
    assert!(answered.len() >= 60);
    for a in &answered {
        let user = &stored[a["id"].as_str().unwrap()];
        assert_eq!(user["status"], "complete", "{user}");
        let reply = &stored[a["reply"]["id"].as_str().unwrap()];
        assert_eq!(reply["content"], a["reply"]["content"]);
        assert_eq!(reply["reply_to"], a["id"]);
    }
    // Nothing is left pending after the restart.
    assert!(stored.values().all(|m| m["status"] != "pending"));
    let mut p = p;
    p.signal("TERM");
    assert_eq!(p.wait_exit(WAIT), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_answered_is_lost_to_kill_9_on_sqlite() {
    nothing_answered_is_lost_to_kill_9(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_answered_is_lost_to_kill_9_on_postgres() {
    if let Some(db) = TestDb::postgres() {
        nothing_answered_is_lost_to_kill_9(db).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_answers_in_flight_requests_and_a_second_signal_exits_at_once() {
    let sim = Simulator::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::sqlite();
    let config = write_config(dir.path(), db.url(), &sim.url(), "");
    let http = reqwest::Client::new();

    // One: in flight at SIGTERM, answered (its bot finishes within the stop deadline).
    let mut p = spawn(&config);
    post(
        &http,
        p.url("/api/v1/bots"),
        json!({"name": "s", "autostart": true}),
    )
    .await;
    let gate = sim.gate();
    gate.close();
    let inflight = tokio::spawn({
        let (http, url) = (http.clone(), p.url("/api/v1/bots/s/messages"));
        async move { post(&http, url, json!({"content": "in flight"})).await }
    });
    assert!(sim.wait_for(WAIT, |s| s.in_flight() == 1).await);
    p.signal("TERM");
    p.wait_log(|v| v["msg"] == "botd is shutting down.").await;
    gate.open();
    let (s, body) = inflight.await.unwrap();
    assert!(
        s == 200 || (s == 503 && body["error"]["code"] == "shutting_down"),
        "{s} {body}"
    );
    assert_eq!(p.wait_exit(WAIT), Some(0));

    // Two: a second signal while the first waits for a held call exits at once with 1.
    let config = write_config(dir.path(), db.url(), &sim.url(), "");
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("stop_timeout_ms = 2000", "stop_timeout_ms = 600000"),
    )
    .unwrap();
    let mut p = spawn(&config);
    gate.close();
    let held = tokio::spawn({
        let (http, url) = (http.clone(), p.url("/api/v1/bots/s/messages"));
        async move { post(&http, url, json!({"content": "held"})).await }
    });
    assert!(sim.wait_for(WAIT, |s| s.in_flight() == 1).await);
    p.signal("INT");
    p.wait_log(|v| v["msg"] == "botd is shutting down.").await;
    p.signal("INT");
    assert_eq!(p.wait_exit(WAIT), Some(1));
    gate.open();
    let _ = held.await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_the_log_level_and_pool_size_and_names_what_needs_a_restart() {
    let sim = Simulator::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::sqlite();
    let config = write_config(
        dir.path(),
        db.url(),
        &sim.url(),
        "[logging]\nlevel = \"info\"\n",
    );
    let mut p = spawn(&config);
    let http = reqwest::Client::new();
    let status = || {
        let (http, url) = (http.clone(), p.url("/api/v1/status"));
        async move {
            http.get(url)
                .bearer_auth(token())
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    assert_eq!(status().await["llm"]["capacity"], 4);
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("level = \"info\"", "level = \"debug\"")
        .replace("[llm]\n", "[llm]\nmax_concurrent = 9\n")
        .replace("pool_size = 4", "pool_size = 5");
    std::fs::write(&config, text).unwrap();
    p.signal("HUP");
    let reloaded = p
        .wait_log(|v| v["msg"] == "The configuration was reloaded.")
        .await;
    assert_eq!(reloaded["level"], "info");
    let warned = p
        .wait_log(|v| v["msg"] == "A changed setting takes effect only after a restart.")
        .await;
    assert_eq!(warned["key"], "database.pool_size");
    let until = Instant::now() + WAIT;
    while status().await["llm"]["capacity"] != 9 {
        assert!(Instant::now() < until);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Debug records now show: a request to an unknown token is logged at debug.
    http.get(p.url("/api/v1/bots"))
        .bearer_auth("garbage")
        .send()
        .await
        .unwrap();
    p.wait_log(|v| v["level"] == "debug").await;
    p.signal("TERM");
    assert_eq!(p.wait_exit(WAIT), Some(0));
}
