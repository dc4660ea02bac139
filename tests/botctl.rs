//! `botctl` as an operator runs it: the real binary against a daemon in this process.

mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{spawn_app, TestApp};

/// What one run of botctl did.
#[derive(Debug)]
struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Out {
    #[track_caller]
    fn ok(&self) -> &str {
        assert_eq!(self.code, 0, "botctl failed: {self:?}");
        assert!(self.stderr.is_empty(), "stderr on success: {self:?}");
        &self.stdout
    }

    #[track_caller]
    fn json(&self) -> Value {
        serde_json::from_str(self.ok()).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// The one stderr line of a failure with `code`.
    #[track_caller]
    fn fails(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "{self:?}");
        assert!(self.stderr.ends_with('\n'), "{self:?}");
        let line = self.stderr.trim_end_matches('\n');
        assert!(
            !line.contains('\n'),
            "more than one line on stderr: {self:?}"
        );
        assert!(line.starts_with("botctl: "), "{self:?}");
        line
    }

    /// An API error: exit 1 and `botctl: CODE: …`.
    #[track_caller]
    fn api_error(&self, code: &str) -> &str {
        let line = self.fails(1);
        assert!(
            line.starts_with(&format!("botctl: {code}: ")),
            "wanted {code}: {self:?}"
        );
        assert!(self.stdout.is_empty(), "{self:?}");
        line
    }

    /// A usage error from clap or botctl: exit 2 (clap's message may span lines).
    #[track_caller]
    fn usage_error(&self) {
        assert_eq!(self.code, 2, "{self:?}");
        assert!(!self.stderr.is_empty(), "{self:?}");
        assert!(self.stdout.is_empty(), "{self:?}");
    }
}

fn command(url: &str, token: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_botctl"));
    cmd.env_remove("BOTD_URL")
        .env_remove("BOTD_TOKEN")
        .env("BOTD_URL", url)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(t) = token {
        cmd.env("BOTD_TOKEN", t);
    }
    cmd
}

fn finish(o: std::process::Output) -> Out {
    Out {
        code: o.status.code().expect("botctl exited, not killed"),
        stdout: String::from_utf8(o.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(o.stderr).expect("UTF-8 stderr"),
    }
}

/// Runs botctl with `BOTD_URL` and `BOTD_TOKEN` set, off the runtime's threads.
async fn run_at(url: &str, token: Option<&str>, args: &[&str], stdin: Option<&str>) -> Out {
    let mut cmd = command(url, token, args);
    let stdin = stdin.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        if stdin.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("botctl starts");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("stdin piped");
            pipe.write_all(text.as_bytes()).expect("stdin written");
        }
        finish(child.wait_with_output().expect("botctl runs"))
    })
    .await
    .expect("the blocking task")
}

async fn ctl(app: &TestApp, token: &str, args: &[&str]) -> Out {
    run_at(&app.base, Some(token), args, None).await
}

/// A URL where nothing listens.
fn dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    format!("http://127.0.0.1:{port}")
}

async fn bot(app: &TestApp, name: &str) -> Value {
    let (s, b) = app.get(&format!("/api/v1/bots/{name}"), &app.viewer).await;
    assert_eq!(s, 200, "{b}");
    b
}

/// Every table line's columns start where the header's do.
#[track_caller]
fn assert_aligned(table: &str, header: &[&str]) {
    let mut lines = table.lines();
    let head = lines.next().expect("a header");
    let words: Vec<&str> = head.split_whitespace().collect();
    assert_eq!(words, header, "{table}");
    let starts: Vec<usize> = header
        .iter()
        .map(|h| head.find(h).expect("column in header"))
        .collect();
    for line in lines {
        for &s in &starts[1..] {
            if line.len() > s {
                assert!(
                    line.as_bytes()[s - 1] == b' ' && line.as_bytes()[s] != b' ',
                    "misaligned at {s}: {line:?}\n{table}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn status_shows_the_daemon_and_its_json() {
    let app = spawn_app().await;
    app.running_bot("s-1", json!({})).await;
    let out = ctl(&app, &app.viewer, &["status"]).await;
    let text = out.ok();
    assert!(
        text.contains(&format!("version  {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("bots     1 (running 1)"), "{text}");
    assert!(text.contains("capacity"), "{text}");

    let v = ctl(&app, &app.viewer, &["status", "--json"]).await.json();
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["bots"]["running"], 1);

    // The flags work as well as the environment (and win over it).
    let out = run_at(
        &dead_url(),
        Some("garbage"),
        &[
            "--url",
            &app.base,
            "--token",
            &app.viewer,
            "--json",
            "status",
        ],
        None,
    )
    .await;
    assert_eq!(out.json()["bots"]["running"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn list_is_an_aligned_table_with_filters() {
    let app = spawn_app().await;
    app.running_bot("alpha", json!({"pool": "support"})).await;
    let out = ctl(
        &app,
        &app.admin,
        &["create", "beta-with-a-much-longer-name"],
    )
    .await;
    out.ok();

    let header = [
        "NAME",
        "STATE",
        "MODEL",
        "POOL",
        "RESTARTS",
        "QUEUE",
        "IN-FLIGHT",
        "HANDLED",
        "UPTIME",
    ];
    let out = ctl(&app, &app.viewer, &["list"]).await;
    let table = out.ok();
    assert_eq!(table.lines().count(), 3, "{table}");
    assert_aligned(table, &header);
    let alpha = table.lines().nth(1).unwrap();
    let cols: Vec<&str> = alpha.split_whitespace().collect();
    assert_eq!(
        &cols[..8],
        ["alpha", "running", "mistral", "support", "0", "0", "0", "0"]
    );
    assert!(cols[8].ends_with('s'), "uptime: {alpha}");
    let other: Vec<&str> = table.lines().nth(2).unwrap().split_whitespace().collect();
    assert_eq!(other[0], "beta-with-a-much-longer-name");
    assert_eq!(other[1], "stopped");
    assert_eq!(other[3], "-");
    assert_eq!(other[8], "-");

    let out = ctl(&app, &app.viewer, &["list", "--state", "stopped"]).await;
    let table = out.ok();
    assert_eq!(table.lines().count(), 2, "{table}");
    assert!(table.contains("beta-with-a-much-longer-name"));
    let v = ctl(&app, &app.viewer, &["--json", "list", "--pool", "support"])
        .await
        .json();
    let names: Vec<&str> = v["bots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha"]);
    let out = ctl(&app, &app.viewer, &["list", "--pool", "nobody-here"]).await;
    assert_eq!(out.ok(), "no bots\n");

    // A state that does not exist is refused before any request; a bad pool name by the API.
    ctl(&app, &app.viewer, &["list", "--state", "asleep"])
        .await
        .usage_error();
    ctl(&app, &app.viewer, &["list", "--pool", "Not A Pool"])
        .await
        .api_error("invalid_field");
}

#[tokio::test(flavor = "multi_thread")]
async fn get_shows_a_bot_or_says_it_does_not_exist() {
    let app = spawn_app().await;
    app.running_bot(
        "g-1",
        json!({"system_prompt": "Be\nbrief.", "options": {"temperature": 0.5}}),
    )
    .await;
    let out = ctl(&app, &app.viewer, &["get", "g-1"]).await;
    let text = out.ok();
    for want in [
        "name           g-1\n",
        "state          running\n",
        "model          mistral\n",
        "mailbox        0 / 64\n",
        "options        {\"temperature\":0.5}\n",
        "system prompt  Be\\nbrief.\n",
    ] {
        assert!(text.contains(want), "{want:?} in\n{text}");
    }
    let v = ctl(&app, &app.viewer, &["get", "g-1", "--json"])
        .await
        .json();
    let b = bot(&app, "g-1").await;
    assert_eq!(v["created_at"], b["created_at"]);
    assert_eq!(v["name"], "g-1");
    assert_eq!(v["options"]["temperature"], 0.5);

    let out = ctl(&app, &app.viewer, &["get", "nope"]).await;
    assert_eq!(
        out.api_error("bot_not_found"),
        "botctl: bot_not_found: bot 'nope' does not exist"
    );
    // The error line is the same with --json (stdout stays empty for scripts).
    ctl(&app, &app.viewer, &["--json", "get", "nope"])
        .await
        .api_error("bot_not_found");
}

#[tokio::test(flavor = "multi_thread")]
async fn create_sends_every_flag_and_refuses_bad_values() {
    let app = spawn_app().await;
    let out = ctl(
        &app,
        &app.admin,
        &[
            "create",
            "c-1",
            "--model",
            "mistral",
            "--system-prompt",
            "You are terse.",
            "--pool",
            "crew",
            "--restart",
            "transient",
            "--concurrency",
            "2",
            "--mailbox-capacity",
            "10",
            "--context-messages",
            "5",
            "--option",
            "temperature=0.25",
            "--option",
            "stop=[\"END\"]",
            "--option",
            "mood=calm",
            "--start",
        ],
    )
    .await;
    let text = out.ok();
    assert!(text.contains("name           c-1\n"), "{text}");
    let b = bot(&app, "c-1").await;
    assert_eq!(b["state"], "running");
    assert_eq!(b["system_prompt"], "You are terse.");
    assert_eq!(b["pool"], "crew");
    assert_eq!(b["restart"], "transient");
    assert_eq!(b["concurrency"], 2);
    assert_eq!(b["mailbox_capacity"], 10);
    assert_eq!(b["context_messages"], 5);
    assert_eq!(
        b["options"],
        json!({"temperature": 0.25, "stop": ["END"], "mood": "calm"})
    );

    // Defaults, JSON output, not started.
    let v = ctl(&app, &app.admin, &["create", "c-2", "--json"])
        .await
        .json();
    assert_eq!(v["name"], "c-2");
    assert_eq!(v["state"], "stopped");
    assert_eq!(v["system_prompt"], Value::Null);
    assert_eq!(v["restart"], "permanent");

    ctl(&app, &app.admin, &["create", "c-1"])
        .await
        .api_error("bot_exists");
    ctl(&app, &app.operator, &["create", "c-3"])
        .await
        .api_error("forbidden");
    ctl(&app, &app.admin, &["create", "Bad Name"])
        .await
        .api_error("invalid_field");
    for bad in [
        &["create", "c-4", "--concurrency", "0"][..],
        &["create", "c-4", "--concurrency", "many"],
        &["create", "c-4", "--mailbox-capacity", "100001"],
        &["create", "c-4", "--context-messages", "1001"],
        &["create", "c-4", "--restart", "sometimes"],
        &["create", "c-4", "--option", "novalue"],
        &["create", "c-4", "--no-such-flag"],
        &["create"],
    ] {
        ctl(&app, &app.admin, bad).await.usage_error();
    }
    let (s, _) = app.get("/api/v1/bots/c-4", &app.viewer).await;
    assert_eq!(s, 404, "a refused flag sends nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn edit_patches_and_clears() {
    let app = spawn_app().await;
    ctl(
        &app,
        &app.admin,
        &[
            "create",
            "e-1",
            "--system-prompt",
            "Old.",
            "--pool",
            "crew",
            "--option",
            "a=1",
        ],
    )
    .await
    .ok();

    let out = ctl(
        &app,
        &app.admin,
        &[
            "edit",
            "e-1",
            "--system-prompt",
            "New.",
            "--concurrency",
            "8",
            "--restart",
            "temporary",
        ],
    )
    .await;
    assert!(out.ok().contains("system prompt  New.\n"), "{out:?}");
    let b = bot(&app, "e-1").await;
    assert_eq!(b["system_prompt"], "New.");
    assert_eq!(b["concurrency"], 8);
    assert_eq!(b["restart"], "temporary");
    assert_eq!(b["pool"], "crew", "untouched fields stay");
    assert_eq!(b["options"], json!({"a": 1}));

    let v = ctl(
        &app,
        &app.admin,
        &[
            "edit",
            "e-1",
            "--system-prompt",
            "",
            "--no-pool",
            "--no-options",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(v["system_prompt"], Value::Null);
    assert_eq!(v["pool"], Value::Null);
    assert_eq!(v["options"], json!({}));
    assert_eq!(v["concurrency"], 8);

    ctl(&app, &app.admin, &["edit", "e-1", "--option", "b=x"])
        .await
        .ok();
    assert_eq!(bot(&app, "e-1").await["options"], json!({"b": "x"}));

    ctl(&app, &app.admin, &["edit", "nope", "--concurrency", "2"])
        .await
        .api_error("bot_not_found");
    ctl(&app, &app.viewer, &["edit", "e-1", "--concurrency", "2"])
        .await
        .api_error("forbidden");
    // Nothing to change, or contradicting flags: usage errors.
    let out = ctl(&app, &app.admin, &["edit", "e-1"]).await;
    assert!(out
        .fails(2)
        .starts_with("botctl: usage: edit: nothing to change"));
    ctl(
        &app,
        &app.admin,
        &["edit", "e-1", "--pool", "x", "--no-pool"],
    )
    .await
    .usage_error();
    ctl(&app, &app.admin, &["edit", "e-1", "--concurrency", "2000"])
        .await
        .usage_error();
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_keeps_or_purges_history() {
    let app = spawn_app().await;
    app.running_bot("d-1", json!({})).await;
    app.running_bot("d-2", json!({})).await;
    assert_eq!(app.send("d-1", "hi").await.0, 200);
    assert_eq!(app.send("d-2", "hi").await.0, 200);

    let out = ctl(&app, &app.admin, &["delete", "d-1"]).await;
    assert_eq!(out.ok(), "d-1: deleted\n");
    let (s, _) = app.get("/api/v1/bots/d-1", &app.viewer).await;
    assert_eq!(s, 404);
    let (s, h) = app.get("/api/v1/bots/d-1/messages", &app.viewer).await;
    assert_eq!(
        (s, h["messages"].as_array().map(Vec::len)),
        (200, Some(2)),
        "{h}"
    );

    let out = ctl(&app, &app.admin, &["delete", "d-2", "--purge", "--json"]).await;
    assert_eq!(out.ok(), "", "a 204 has no JSON to print");
    let (s, h) = app.get("/api/v1/bots/d-2/messages", &app.viewer).await;
    assert_eq!(s, 404, "purged history: {h}");

    ctl(&app, &app.admin, &["delete", "d-1"])
        .await
        .api_error("bot_not_found");
    app.running_bot("d-3", json!({})).await;
    ctl(&app, &app.operator, &["delete", "d-3"])
        .await
        .api_error("forbidden");
}

#[tokio::test(flavor = "multi_thread")]
async fn start_stop_restart_follow_the_state_table() {
    let app = spawn_app().await;
    ctl(&app, &app.admin, &["create", "l-1"]).await.ok();

    assert_eq!(
        ctl(&app, &app.operator, &["start", "l-1"]).await.ok(),
        "l-1: running\n"
    );
    ctl(&app, &app.operator, &["start", "l-1"])
        .await
        .api_error("bot_already_running");
    let v = ctl(&app, &app.operator, &["restart", "l-1", "--json"])
        .await
        .json();
    assert_eq!(v["state"], "running");
    let out = ctl(
        &app,
        &app.operator,
        &["stop", "l-1", "--timeout-ms", "1000"],
    )
    .await;
    assert_eq!(out.ok(), "l-1: stopped\n");
    ctl(&app, &app.operator, &["stop", "l-1"])
        .await
        .api_error("bot_not_running");
    // Restart starts a stopped bot.
    assert_eq!(
        ctl(&app, &app.operator, &["restart", "l-1"]).await.ok(),
        "l-1: running\n"
    );
    let v = ctl(&app, &app.operator, &["stop", "l-1", "--json"])
        .await
        .json();
    assert_eq!(v["state"], "stopped");

    let line = ctl(&app, &app.viewer, &["start", "l-1"])
        .await
        .api_error("forbidden")
        .to_owned();
    assert_eq!(line, "botctl: forbidden: this needs the operator role");
    ctl(&app, &app.viewer, &["stop", "l-1"])
        .await
        .api_error("forbidden");
    ctl(&app, &app.viewer, &["restart", "l-1"])
        .await
        .api_error("forbidden");
    for cmd in ["start", "stop", "restart"] {
        ctl(&app, &app.operator, &[cmd, "nope"])
            .await
            .api_error("bot_not_found");
    }
    ctl(&app, &app.operator, &["stop", "l-1", "--timeout-ms", "0"])
        .await
        .usage_error();
    ctl(&app, &app.operator, &["start"]).await.usage_error();
}

#[tokio::test(flavor = "multi_thread")]
async fn send_prints_the_reply() {
    let app = spawn_app().await;
    app.running_bot("m-1", json!({})).await;
    let out = ctl(&app, &app.operator, &["send", "m-1", "Hello there"]).await;
    assert_eq!(out.ok(), "echo: Hello there\n");

    let v = ctl(
        &app,
        &app.operator,
        &[
            "send",
            "m-1",
            "again",
            "--conversation",
            "c-9",
            "--priority",
            "0",
            "--timeout-ms",
            "30000",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(v["reply"]["content"], "echo: again");
    assert_eq!(v["conversation"], "c-9");
    assert_eq!(v["bot"], "m-1");

    // `-` reads the message from stdin.
    let out = run_at(
        &app.base,
        Some(&app.operator),
        &["send", "m-1", "-"],
        Some("from stdin\n"),
    )
    .await;
    assert_eq!(out.ok(), "echo: from stdin\n");

    ctl(&app, &app.operator, &["send", "nope", "hi"])
        .await
        .api_error("bot_not_found");
    ctl(&app, &app.viewer, &["send", "m-1", "hi"])
        .await
        .api_error("forbidden");
    ctl(
        &app,
        &app.operator,
        &["send", "m-1", "hi", "--conversation", "no spaces"],
    )
    .await
    .api_error("invalid_field");
    ctl(&app, &app.operator, &["stop", "m-1"]).await.ok();
    ctl(&app, &app.operator, &["send", "m-1", "hi"])
        .await
        .api_error("bot_not_running");
    for bad in [
        &["send", "m-1", "hi", "--priority", "4"][..],
        &["send", "m-1", "hi", "--timeout-ms", "0"],
        &["send", "m-1"],
    ] {
        ctl(&app, &app.operator, bad).await.usage_error();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn send_stream_prints_the_reply_as_it_streams() {
    let app = spawn_app().await;
    app.running_bot("st-1", json!({})).await;
    let out = ctl(
        &app,
        &app.operator,
        &["send", "st-1", "Hello streaming world", "--stream"],
    )
    .await;
    assert_eq!(out.ok(), "echo: Hello streaming world\n");

    // --json: one object per event, tokens then done.
    let out = ctl(
        &app,
        &app.operator,
        &["send", "st-1", "abc def", "--stream", "--json"],
    )
    .await;
    let events: Vec<Value> = out
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let (last, tokens) = events.split_last().expect("events");
    assert_eq!(last["event"], "done", "{events:?}");
    assert_eq!(last["data"]["reply"]["content"], "echo: abc def");
    let joined: String = tokens
        .iter()
        .map(|t| {
            assert_eq!(t["event"], "token");
            t["data"]["content"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(joined, "echo: abc def");
    assert!(tokens.len() > 1, "pieces, not one blob: {events:?}");

    // The tokens reach the terminal before the reply is complete: hold the model after
    // two pieces ("echo", ": he") and read what botctl printed meanwhile.
    let gate = app.sim.gate();
    gate.close_after_tokens(2);
    let mut child = command(
        &app.base,
        Some(&app.operator),
        &["send", "st-1", "hello world", "--stream"],
    )
    .spawn()
    .expect("botctl starts");
    let mut stdout = child.stdout.take().expect("stdout piped");
    let early = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut got = Vec::new();
            let mut buf = [0u8; 64];
            while !String::from_utf8_lossy(&got).contains("echo: he") {
                let n = stdout.read(&mut buf).expect("read stdout");
                assert!(
                    n > 0,
                    "botctl closed stdout early: {:?}",
                    String::from_utf8_lossy(&got)
                );
                got.extend_from_slice(&buf[..n]);
            }
            (got, stdout)
        }),
    )
    .await
    .expect("the first tokens arrive while the model is held")
    .expect("reader");
    let (mut got, mut stdout) = early;
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "botctl waits for the rest"
    );
    gate.open();
    let (got, status) = tokio::task::spawn_blocking(move || {
        stdout.read_to_end(&mut got).expect("read the rest");
        (got, child.wait().expect("botctl exits"))
    })
    .await
    .expect("reader");
    assert_eq!(status.code(), Some(0));
    assert_eq!(String::from_utf8(got).unwrap(), "echo: hello world\n");

    // Errors before the stream starts are plain API errors…
    ctl(&app, &app.operator, &["send", "nope", "hi", "--stream"])
        .await
        .api_error("bot_not_found");
    // …and one inside it (`event: error`) is the same one line with exit 1.
    app.sim.error_after_tokens(Some(1), "the model fell over");
    let out = ctl(
        &app,
        &app.operator,
        &["send", "st-1", "hi there", "--stream"],
    )
    .await;
    app.sim.error_after_tokens(None, "");
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.starts_with("botctl: llm_error: "), "{out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    assert!(
        out.stdout.starts_with("echo"),
        "the token before the error: {out:?}"
    );
    assert!(out.stdout.ends_with('\n'), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn history_pages_through_messages() {
    let app = spawn_app().await;
    app.running_bot("h-1", json!({})).await;
    ctl(&app, &app.operator, &["send", "h-1", "first", "-c", "a"])
        .await
        .ok();
    ctl(
        &app,
        &app.operator,
        &["send", "h-1", "two\nlines", "-c", "b"],
    )
    .await
    .ok();

    let out = ctl(&app, &app.viewer, &["history", "h-1"]).await;
    let table = out.ok();
    assert_aligned(
        table,
        &["ID", "TIME", "CONVERSATION", "ROLE", "STATUS", "CONTENT"],
    );
    let rows: Vec<&str> = table.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{table}");
    assert!(
        rows[0].contains("assistant") && rows[0].ends_with("echo: two\\nlines"),
        "{table}"
    );
    assert!(
        rows[1].contains(" user ") && rows[1].contains("complete"),
        "{table}"
    );
    assert!(rows[3].ends_with("first"), "{table}");

    let out = ctl(
        &app,
        &app.viewer,
        &["history", "h-1", "--conversation", "a"],
    )
    .await;
    assert_eq!(out.ok().lines().count(), 3, "{out:?}");

    let v = ctl(
        &app,
        &app.viewer,
        &["history", "h-1", "--limit", "1", "--json"],
    )
    .await
    .json();
    assert_eq!(v["messages"].as_array().unwrap().len(), 1);
    let next = v["next_before"].as_str().expect("another page").to_owned();
    let out = ctl(&app, &app.viewer, &["history", "h-1", "-n", "1"]).await;
    assert!(
        out.ok()
            .ends_with(&format!("(older: botctl history h-1 --before {next})\n")),
        "{out:?}"
    );
    let v = ctl(
        &app,
        &app.viewer,
        &[
            "history", "h-1", "--before", &next, "--limit", "500", "--json",
        ],
    )
    .await
    .json();
    assert_eq!(v["messages"].as_array().unwrap().len(), 3);
    assert_eq!(v["next_before"], Value::Null);

    ctl(&app, &app.viewer, &["history", "nope"])
        .await
        .api_error("bot_not_found");
    ctl(&app, &app.viewer, &["history", "h-1", "--before", "x"])
        .await
        .api_error("invalid_field");
    ctl(&app, &app.viewer, &["history", "h-1", "--limit", "501"])
        .await
        .usage_error();
}

#[tokio::test(flavor = "multi_thread")]
async fn events_of_all_or_one_bot() {
    let app = spawn_app().await;
    ctl(
        &app,
        &app.admin,
        &["create", "ev-1", "--start", "--pool", "crew"],
    )
    .await
    .ok();
    ctl(&app, &app.admin, &["create", "ev-2"]).await.ok();
    ctl(&app, &app.operator, &["stop", "ev-1"]).await.ok();

    let out = ctl(&app, &app.viewer, &["events"]).await;
    let table = out.ok();
    assert_aligned(
        table,
        &["ID", "TIME", "KIND", "BOT", "POOL", "SUBJECT", "DETAIL"],
    );
    assert!(table.contains("ev-2"), "{table}");
    let newest: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(newest[3], "stopped", "newest first: {table}");
    assert_eq!(newest[4], "ev-1");

    let v = ctl(&app, &app.viewer, &["events", "ev-1", "--json"])
        .await
        .json();
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["bot"], "ev-1");
            e["kind"].as_str().unwrap()
        })
        .collect();
    assert!(
        kinds.contains(&"created") && kinds.contains(&"stopped"),
        "{kinds:?}"
    );

    let v = ctl(
        &app,
        &app.viewer,
        &["events", "--kind", "created", "--limit", "1", "--json"],
    )
    .await
    .json();
    let evs = v["events"].as_array().unwrap();
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0]["kind"], "created");
    assert_eq!(evs[0]["bot"], "ev-2");
    let v = ctl(&app, &app.viewer, &["events", "--pool", "crew", "--json"])
        .await
        .json();
    assert!(
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["bot"] == "ev-1"),
        "{v}"
    );
    let out = ctl(&app, &app.viewer, &["events", "ev-2", "--kind", "crashed"]).await;
    assert_eq!(out.ok(), "no events\n");

    ctl(&app, &app.viewer, &["events", "nope"])
        .await
        .api_error("bot_not_found");
    ctl(&app, &app.viewer, &["events", "--kind", "exploded"])
        .await
        .usage_error();
    ctl(&app, &app.viewer, &["events", "ev-1", "--pool", "crew"])
        .await
        .usage_error();
}

/// A log line as botctl shows it: `2026-11-25T10:00:00.123Z LEVEL …`.
#[track_caller]
fn assert_log_line(line: &str) {
    let (ts, rest) = line.split_at(24.min(line.len()));
    assert!(
        ts.len() == 24 && ts.ends_with('Z') && &ts[10..11] == "T" && &ts[19..20] == ".",
        "{line}"
    );
    let level = rest.split_whitespace().next().unwrap_or("");
    assert!(
        ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "CRIT"].contains(&level),
        "{line}"
    );
    assert!(!line.contains('\x1b'), "no colour into a pipe: {line:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_show_records_by_bot_level_and_as_json() {
    let app = spawn_app().await;
    app.running_bot("lg-1", json!({})).await;
    app.running_bot("lg-2", json!({})).await;

    let out = ctl(&app, &app.viewer, &["logs"]).await;
    let text = out.ok();
    text.lines().for_each(assert_log_line);
    let created = text
        .lines()
        .find(|l| l.contains("A bot was created.") && l.contains("[lg-1]"))
        .unwrap_or_else(|| panic!("no created record for lg-1: {text}"));
    assert!(
        created.contains(" INFO  [lg-1] A bot was created."),
        "{created}"
    );
    assert!(created.contains(" subject="), "fields follow: {created}");
    assert!(text.contains("[lg-2] A bot was created."), "{text}");

    // One bot's records only.
    let out = ctl(&app, &app.viewer, &["logs", "lg-1", "-n", "1000"]).await;
    let mine = out.ok();
    assert!(mine.contains("A bot was created."), "{mine}");
    for l in mine.lines() {
        assert_log_line(l);
        assert!(l.contains(" [lg-1] "), "another bot's line: {l}");
    }

    // --level warn hides info records (there are no warnings yet).
    let out = ctl(
        &app,
        &app.viewer,
        &["logs", "--level", "warn", "--tail", "10000"],
    )
    .await;
    let warn = out.ok();
    assert!(!warn.contains("A bot was created."), "{warn}");
    assert!(warn.lines().all(|l| !l.contains(" INFO ")), "{warn}");
    // -n 0: no backlog.
    assert_eq!(ctl(&app, &app.viewer, &["logs", "-n", "0"]).await.ok(), "");

    // --json: the daemon's lines as they came.
    let out = ctl(
        &app,
        &app.viewer,
        &["logs", "--json", "--level", "debug", "-n", "1000"],
    )
    .await;
    let records: Vec<Value> = out
        .ok()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(records
        .iter()
        .all(|r| r["ts"].is_string() && r["level"].is_string() && r["msg"].is_string()));
    assert!(records
        .iter()
        .any(|r| r["msg"] == "A bot was created." && r["bot"] == "lg-2"));

    ctl(&app, &app.viewer, &["logs", "nobody"])
        .await
        .api_error("bot_not_found");
    ctl(&app, &app.viewer, &["logs", "-n", "10001"])
        .await
        .usage_error();
    ctl(&app, &app.viewer, &["logs", "--level", "loud"])
        .await
        .usage_error();
}

/// Spawns `botctl ARGS` and hands its stdout lines over a channel as they come.
fn spawn_lines(
    app: &TestApp,
    args: &[&str],
) -> (
    std::process::Child,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use std::io::BufRead;
    let mut child = command(&app.base, Some(&app.viewer), args)
        .spawn()
        .expect("botctl starts");
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Reads lines until one satisfies `pred`, or panics after `deadline`.
async fn line_where(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    deadline: Duration,
    pred: impl Fn(&str) -> bool,
) -> String {
    let until = Instant::now() + deadline;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(l)) if pred(&l) => return l,
            Ok(Some(_)) => {}
            Ok(None) => panic!("botctl closed stdout before the line came"),
            Err(_) => panic!("the line never came"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logs_follow_prints_new_records_until_the_daemon_goes_away() {
    let mut app = spawn_app().await;
    let (mut child, mut rx) = spawn_lines(&app, &["logs", "-f"]);
    // The backlog's first line: botctl is connected and following.
    line_where(&mut rx, Duration::from_secs(30), |_| true).await;
    app.running_bot("lg-follow", json!({})).await;
    let line = line_where(&mut rx, Duration::from_secs(30), |l| {
        l.contains("A bot was created.") && l.contains("[lg-follow]")
    })
    .await;
    assert_log_line(&line);
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "still following"
    );
    child.kill().expect("kill botctl");
    child.wait().expect("botctl ends");

    // A daemon that goes away mid-follow: exit 3 and one line.
    let (child, mut rx) = spawn_lines(&app, &["logs", "-f", "-n", "1"]);
    line_where(&mut rx, Duration::from_secs(30), |_| true).await;
    tokio::task::block_in_place(|| app.stop());
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || child.wait_with_output().expect("botctl runs")),
    )
    .await
    .expect("botctl ends when the daemon goes away")
    .expect("the blocking task");
    let out = finish(out);
    let line = out.fails(3);
    assert!(line.starts_with("botctl: unreachable: "), "{out:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn completions_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = run_at(&dead_url(), None, &["completions", shell], None).await;
        let script = out.ok();
        assert!(script.contains("botctl"), "{shell}");
        assert!(
            script.contains("history"),
            "{shell}: subcommands are completed"
        );
    }
    run_at(&dead_url(), None, &["completions", "tcsh"], None)
        .await
        .usage_error();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_daemon_is_exit_3() {
    let url = dead_url();
    for args in [
        &["status"][..],
        &["list"],
        &["get", "x"],
        &["--json", "start", "x"],
        &["send", "x", "hi"],
        &["send", "x", "hi", "--stream"],
        &["events"],
        &["logs"],
        &["logs", "-f"],
    ] {
        let out = run_at(&url, Some("t"), args, None).await;
        let line = out.fails(3);
        assert!(
            line.starts_with(&format!("botctl: unreachable: cannot reach botd at {url}/")),
            "{args:?}: {line}"
        );
        assert!(out.stdout.is_empty());
    }
    // A name that does not resolve is unreachable too; a URL that is not one is usage.
    let out = run_at("http://botd.invalid:1", None, &["status"], None).await;
    out.fails(3);
    let out = run_at("not a url", None, &["status"], None).await;
    assert!(out.fails(2).starts_with("botctl: usage: --url"), "{out:?}");
    let out = run_at("ftp://127.0.0.1/", None, &["status"], None).await;
    out.fails(2);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_tokens_are_401_and_tokens_are_never_printed() {
    let app = spawn_app().await;
    let out = run_at(&app.base, None, &["list"], None).await;
    let line = out.api_error("unauthorized");
    assert!(line.contains("BOTD_TOKEN"), "{line}");

    let canary = "eyJhbGciOiJIUzI1NiJ9.CANARY-token.sig";
    let out = run_at(&app.base, Some(canary), &["list"], None).await;
    let line = out.api_error("unauthorized");
    assert!(line.contains("check BOTD_TOKEN"), "{line}");
    assert!(!out.stderr.contains("CANARY") && !out.stdout.contains("CANARY"));

    // Not on errors, not in help (which would show env values), not in usage errors.
    for args in [
        &["get", "nope"][..],
        &["--help"],
        &["send", "--help"],
        &["list", "--state", "x"],
        &["completions", "bash"],
    ] {
        let out = run_at(&app.base, Some(&app.admin), args, None).await;
        assert!(
            !out.stdout.contains(&app.admin) && !out.stderr.contains(&app.admin),
            "{args:?} printed the token"
        );
    }
    let out = run_at(&app.base, Some(&app.admin), &["--help"], None).await;
    assert!(out.ok().contains("BOTD_TOKEN"));

    // A token passed as a flag is just as secret.
    let out = run_at(&dead_url(), None, &["--token", canary, "status"], None).await;
    out.fails(3);
    assert!(!out.stderr.contains("CANARY"));
}

#[tokio::test(flavor = "multi_thread")]
async fn help_and_version_exit_0_and_a_missing_command_exits_2() {
    let started = Instant::now();
    let out = run_at(&dead_url(), None, &["--version"], None).await;
    assert!(out.ok().contains(env!("CARGO_PKG_VERSION")));
    let out = run_at(&dead_url(), None, &["help", "send"], None).await;
    assert!(out.ok().contains("--stream"));
    run_at(&dead_url(), None, &[], None).await.usage_error();
    run_at(&dead_url(), None, &["frobnicate"], None)
        .await
        .usage_error();
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn pools_put_list_get_send_history_and_delete() {
    let app = spawn_app().await;
    let out = ctl(
        &app,
        &app.admin,
        &[
            "pools",
            "put",
            "team",
            "--min-bots",
            "2",
            "--max-bots",
            "4",
            "--system-prompt",
            "Be brief.",
            "--concurrency",
            "2",
        ],
    )
    .await;
    let shown = out.ok();
    assert!(
        shown.contains("team-1 (running), team-2 (running)"),
        "{shown}"
    );
    assert!(shown.contains("Be brief."), "{shown}");

    let pool = ctl(&app, &app.viewer, &["--json", "pools", "get", "team"])
        .await
        .json();
    assert_eq!(pool["max_bots"], 4);
    assert_eq!(pool["template"]["concurrency"], 2);
    let listed = ctl(&app, &app.viewer, &["pools", "list"]).await;
    let table = listed.ok();
    assert!(table.starts_with("NAME"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("team ") && l.contains(" yes ")),
        "{table}"
    );

    let answer = ctl(
        &app,
        &app.operator,
        &["--json", "pools", "send", "team", "hello", "-c", "c1"],
    )
    .await
    .json();
    assert!(
        answer["bot"].as_str().unwrap().starts_with("team-"),
        "{answer}"
    );
    let history = ctl(
        &app,
        &app.viewer,
        &["--json", "pools", "history", "team", "-c", "c1"],
    )
    .await
    .json();
    assert_eq!(history["messages"].as_array().unwrap().len(), 2);

    ctl(&app, &app.operator, &["pools", "delete", "team"])
        .await
        .api_error("forbidden");
    let gone = ctl(&app, &app.admin, &["pools", "delete", "team"]).await;
    assert_eq!(gone.ok(), "team: deleted with its bots, history kept\n");
    ctl(&app, &app.viewer, &["pools", "get", "team"])
        .await
        .api_error("pool_not_found");
    ctl(
        &app,
        &app.admin,
        &["pools", "put", "team", "--max-bots", "0"],
    )
    .await
    .usage_error();
}

/// Reads a child's stdout until it holds `want`, on a blocking thread, within 30 s.
async fn read_until(
    mut stdout: std::process::ChildStdout,
    mut got: Vec<u8>,
    want: &str,
) -> (Vec<u8>, std::process::ChildStdout) {
    let want = want.to_owned();
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 256];
            while !String::from_utf8_lossy(&got).contains(&want) {
                let n = stdout.read(&mut buf).expect("read stdout");
                assert!(
                    n > 0,
                    "stdout closed early: {:?}",
                    String::from_utf8_lossy(&got)
                );
                got.extend_from_slice(&buf[..n]);
            }
            (got, stdout)
        }),
    )
    .await
    .expect("the output arrives in time")
    .expect("reader")
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_is_a_conversation_of_stdin_lines_and_streamed_replies() {
    let app = spawn_app().await;
    app.running_bot("chatty", json!({"system_prompt": "Be brief."}))
        .await;
    app.sim.set_piece_chars(2);
    let mut child = command(
        &app.base,
        Some(&app.operator),
        &["chat", "chatty", "--conversation", "talk"],
    )
    .stdin(Stdio::piped())
    .spawn()
    .expect("botctl starts");
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    stdin.write_all(b"hello there\n").unwrap();
    let (got, stdout) = read_until(stdout, Vec::new(), "echo: hello there\n").await;
    // Each turn is answered before the next is read: the second line goes after.
    stdin.write_all(b"and again\n").unwrap();
    let (got, mut stdout) = read_until(stdout, got, "echo: and again\n").await;
    drop(stdin);
    let status = tokio::task::spawn_blocking(move || {
        let mut rest = Vec::new();
        stdout.read_to_end(&mut rest).unwrap();
        child.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success(), "end of input ends the chat cleanly");
    assert_eq!(
        String::from_utf8_lossy(&got),
        "echo: hello there\necho: and again\n"
    );
    // One conversation: the second turn had the first as context.
    let last = app.sim.chat_requests().last().unwrap()["messages"].clone();
    assert_eq!(
        last,
        json!([
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "hello there"},
            {"role": "assistant", "content": "echo: hello there"},
            {"role": "user", "content": "and again"},
        ])
    );
    let (_, h) = app
        .get(
            "/api/v1/bots/chatty/messages?conversation=talk",
            &app.viewer,
        )
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 4, "{h}");
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_talks_to_a_pool_and_reports_errors_without_ending() {
    let app = spawn_app().await;
    app.running_bot("cp-1", json!({"pool": "cp"})).await;
    app.sim.fail_next(1, 404, "model 'x' not found");
    let mut child = command(&app.base, Some(&app.operator), &["chat", "--pool", "cp"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("botctl starts");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"first\nsecond\n").unwrap();
    drop(stdin);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout, "echo: second\n", "stderr: {stderr}");
    assert!(stderr.contains("botctl: llm_error: "), "{stderr}");
    assert_eq!(
        out.status.code(),
        Some(1),
        "a failed turn makes the exit status 1"
    );
    // An unknown bot, and a viewer's token (refused at the upgrade).
    let o = finish(
        command(&app.base, Some(&app.operator), &["chat", "nobody"])
            .stdin(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(b"hi\n")?;
                c.wait_with_output()
            })
            .unwrap(),
    );
    o.api_error("bot_not_found");
    let o = finish(
        command(&app.base, Some(&app.viewer), &["chat", "cp-1"])
            .output()
            .unwrap(),
    );
    o.api_error("forbidden");
}
