//! `spawn_app()`: the daemon on port 0 with a fresh database and a simulated Ollama on a
//! random port, and typed helpers to talk to it.
#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use botd::app::Daemon;
use botd::auth::{JwtKeys, Role, TokenKind};
use botd::config::{Config, LogFormat, LogLevel};
use botd::telemetry::{logger_with_hub, LevelSwitch, LogHub};
use botd_actors::store::testing::TestDb;
use ollama_sim::Simulator;
use serde_json::{json, Value};

/// A secret with a canary in it: it must never show up in a log.
pub const SECRET: &str = "botd-test-secret-0123456789abcdef-CANARY-secret";

pub struct TestApp {
    pub daemon: Option<Daemon>,
    pub base: String,
    pub sim: Simulator,
    pub http: reqwest::Client,
    pub config: Config,
    pub keys: JwtKeys,
    pub admin: String,
    pub operator: String,
    pub viewer: String,
    pub log_path: PathBuf,
    pub db: TestDb,
    _dir: tempfile::TempDir,
}

/// The daemon on SQLite against a fresh simulator.
pub async fn spawn_app() -> TestApp {
    spawn_with(TestDb::sqlite(), |_| {}).await
}

/// The daemon with configuration changes.
pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_with(TestDb::sqlite(), tweak).await
}

pub async fn spawn_with(db: TestDb, tweak: impl FnOnce(&mut Config)) -> TestApp {
    let sim = Simulator::start().await.expect("simulator starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = Config::default();
    config.http.listen = "127.0.0.1:0".parse().unwrap();
    config.database.url = db.url().to_owned();
    config.database.pool_size = 4;
    config.llm.ollama_url = sim.url();
    config.llm.connect_timeout_ms = 500;
    config.llm.request_timeout_secs = 30;
    config.auth.jwt_secret = Some(SECRET.to_owned());
    config.auth.jwt_secret_file = dir.path().join("botd.secret");
    config.supervisor.backoff_initial_ms = 10;
    config.supervisor.backoff_max_ms = 50;
    config.supervisor.stop_timeout_ms = 2000;
    config.logging.level = LogLevel::Debug;
    config.logging.format = LogFormat::Json;
    tweak(&mut config);
    let keys = JwtKeys::new(SECRET.as_bytes());
    let token = |role| {
        keys.mint(
            "test-user",
            role,
            TokenKind::Service,
            Duration::from_secs(3600),
        )
    };
    let (admin, operator, viewer) = (
        token(Role::Admin),
        token(Role::Operator),
        token(Role::Viewer),
    );
    // Under `.ci/run` every daemon log of the test run lands in one folder, which is then
    // searched for the canary.
    let log_path = match std::env::var_os("BOTD_TEST_LOG_DIR") {
        Some(d) => {
            let d = PathBuf::from(d);
            std::fs::create_dir_all(&d).expect("the log folder");
            d.join(format!("daemon-{}.log", rand::random::<u64>()))
        }
        None => dir.path().join("daemon.log"),
    };
    let mut app = TestApp {
        daemon: None,
        base: String::new(),
        sim,
        http: reqwest::Client::new(),
        config,
        keys,
        admin,
        operator,
        viewer,
        log_path,
        db,
        _dir: dir,
    };
    app.start();
    app
}

impl TestApp {
    /// Starts the daemon (again) on the same database.
    pub fn start(&mut self) {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("log file");
        let level = LevelSwitch::new(self.config.logging.level);
        let l = &self.config.logging;
        let hub = LogHub::new(l.ring_records, l.bot_ring_records, l.follow_buffer_records);
        let log = logger_with_hub(
            self.config.logging.format,
            level.clone(),
            file,
            Some(hub.clone()),
        );
        let daemon =
            Daemon::start(self.config.clone(), log, level, hub).expect("the daemon starts");
        self.base = format!("http://{}", daemon.addr);
        self.daemon = Some(daemon);
    }

    /// Stops the daemon gracefully and waits for it.
    pub fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
    }

    /// Stops and starts again on the same database.
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub async fn get(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        status_json(r).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request");
        status_json(r).await
    }

    pub async fn patch(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .patch(self.url(path))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .expect("request");
        status_json(r).await
    }

    pub async fn delete(&self, path: &str, token: &str) -> (u16, Value) {
        let r = self
            .http
            .delete(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        status_json(r).await
    }

    /// Creates a bot with `extra` spec fields and starts it.
    pub async fn running_bot(&self, name: &str, extra: Value) -> Value {
        let mut spec = json!({"name": name, "autostart": true});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                s.insert(k.clone(), v.clone());
            }
        }
        let (status, body) = self.post("/api/v1/bots", &self.admin, spec).await;
        assert_eq!(status, 201, "{body}");
        body
    }

    pub async fn send(&self, bot: &str, content: &str) -> (u16, Value) {
        self.post(
            &format!("/api/v1/bots/{bot}/messages"),
            &self.operator,
            json!({"content": content}),
        )
        .await
    }

    /// Sends a message in the background; the handle gives (status, body).
    pub fn send_bg(&self, bot: &str, body: Value) -> tokio::task::JoinHandle<(u16, Value)> {
        self.post_bg(&format!("/api/v1/bots/{bot}/messages"), body)
    }

    /// POSTs `body` to `path` as the operator in the background; the handle gives
    /// (status, body).
    pub fn post_bg(&self, path: &str, body: Value) -> tokio::task::JoinHandle<(u16, Value)> {
        let (http, url, token) = (self.http.clone(), self.url(path), self.operator.clone());
        tokio::spawn(async move {
            let r = http
                .post(url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
                .unwrap();
            status_json(r).await
        })
    }

    /// Polls `/api/v1/status` until `pred` holds, or panics after `deadline`.
    pub async fn wait_for_status(&self, deadline: Duration, pred: impl Fn(&Value) -> bool) {
        let until = Instant::now() + deadline;
        loop {
            let (_, st) = self.get("/api/v1/status", &self.viewer).await;
            if pred(&st) {
                return;
            }
            assert!(
                Instant::now() < until,
                "the status never got there; last: {st}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Polls a bot until `pred` holds for it, or panics after `deadline`.
    pub async fn wait_for_bot(
        &self,
        name: &str,
        deadline: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let until = Instant::now() + deadline;
        loop {
            let (status, body) = self
                .get(&format!("/api/v1/bots/{name}"), &self.viewer)
                .await;
            if status == 200 && pred(&body) {
                return body;
            }
            assert!(
                Instant::now() < until,
                "bot {name} never got there; last: {body}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop();
    }
}

pub async fn status_json(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap_or_default();
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}
