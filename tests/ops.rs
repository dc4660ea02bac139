//! Operations: `botd backup` while traffic runs (restored and read back), its refusal on
//! PostgreSQL, and retention deleting old messages in batches while new ones are answered.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use botd_actors::store::{queries, Db};
use serde_json::{json, Value};
use support::{spawn_app, spawn_app_with, TestApp};

fn botd_backup(dir: &Path, database_url: &str, target: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_botd"))
        .current_dir(dir)
        .env_remove("BOTD_CONFIG")
        .env("BOTD_DATABASE__URL", database_url)
        .arg("backup")
        .arg(target)
        .output()
        .expect("botd backup runs")
}

/// Every message of a bot, oldest first (pages through the history).
async fn history(app: &TestApp, bot: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut path = format!("/api/v1/bots/{bot}/messages?limit=500");
        if let Some(b) = &before {
            path.push_str(&format!("&before={b}"));
        }
        let (status, body) = app.get(&path, &app.viewer).await;
        assert_eq!(status, 200, "{body}");
        all.extend(body["messages"].as_array().unwrap().iter().cloned());
        match body["next_before"].as_str() {
            Some(b) => before = Some(b.to_owned()),
            None => break,
        }
    }
    all.sort_by_key(|m| m["id"].as_str().unwrap().parse::<i64>().unwrap());
    all
}

/// Sends messages in the background until stopped; gives the statuses.
fn traffic(app: &TestApp, bot: &str, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<u16>> {
    let (http, url, token) = (
        app.http.clone(),
        app.url(&format!("/api/v1/bots/{bot}/messages")),
        app.operator.clone(),
    );
    tokio::spawn(async move {
        let mut statuses = Vec::new();
        let mut i = 0;
        while !stop.load(Ordering::Relaxed) {
            let r = http
                .post(&url)
                .bearer_auth(&token)
                .json(&json!({"content": format!("during {i}"), "conversation": "live"}))
                .send()
                .await
                .unwrap();
            statuses.push(r.status().as_u16());
            i += 1;
        }
        statuses
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn a_backup_taken_while_messages_flow_restores_and_reads_back_the_history() {
    let app = spawn_app().await;
    app.running_bot("keeper", json!({})).await;
    for i in 0..5 {
        let (status, body) = app.send("keeper", &format!("before {i}")).await;
        assert_eq!(status, 200, "{body}");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let during = traffic(&app, "keeper", stop.clone());
    // Some traffic is under way when the copy starts.
    app.sim
        .wait_for(Duration::from_secs(10), |s| s.completed() >= 7)
        .await;

    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("backup.db");
    let url = app.config.database.url.clone();
    let out = {
        let (dir, copy) = (dir.path().to_owned(), copy.clone());
        tokio::task::spawn_blocking(move || botd_backup(&dir, &url, &copy))
            .await
            .unwrap()
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        copy.display().to_string()
    );
    stop.store(true, Ordering::Relaxed);
    let statuses = during.await.unwrap();
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|s| *s == 200),
        "traffic during the backup: {statuses:?}"
    );

    // A second backup to the same file is refused and leaves the copy alone.
    let again = botd_backup(dir.path(), &app.config.database.url, &copy);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists already"));

    // Restore: a daemon on the copy has the bot and its history.
    let restored_dir = tempfile::tempdir().unwrap();
    let restored_db = restored_dir.path().join("botd.db");
    std::fs::copy(&copy, &restored_db).unwrap();
    let restored = spawn_app_with(|c| {
        c.database.url = format!("sqlite://{}", restored_db.display());
    })
    .await;
    let (status, bot) = restored.get("/api/v1/bots/keeper", &restored.viewer).await;
    assert_eq!(status, 200, "{bot}");
    let messages = history(&restored, "keeper").await;
    for i in 0..5 {
        let content = format!("before {i}");
        let asked = messages
            .iter()
            .find(|m| m["content"] == content.as_str() && m["role"] == "user")
            .unwrap_or_else(|| panic!("{content} is not in the restored history"));
        assert_eq!(asked["status"], "complete");
        assert!(
            messages
                .iter()
                .any(|m| m["role"] == "assistant" && m["reply_to"] == asked["id"]),
            "the reply to {content} is not in the restored history"
        );
    }
    // Consistent: every stored reply's question is there too.
    for reply in messages.iter().filter(|m| m["role"] == "assistant") {
        assert!(messages.iter().any(|m| m["id"] == reply["reply_to"]));
    }
}

#[test]
fn backup_on_postgresql_explains_pg_dump_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = botd_backup(
        dir.path(),
        "postgres://botd@127.0.0.1:9/botd",
        &dir.path().join("x.db"),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pg_dump") && err.contains("pg_restore"),
        "{err}"
    );
    assert!(!dir.path().join("x.db").exists());
}

#[test]
fn backup_of_a_missing_sqlite_file_fails_without_creating_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("nothing.db");
    let out = botd_backup(
        dir.path(),
        &format!("sqlite://{}", db.display()),
        &dir.path().join("copy.db"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not exist"));
    assert!(!db.exists());
}

const DAY_MS: i64 = 86_400_000;

fn backdated(bot: &str, i: usize, created_at: i64) -> queries::NewMessage {
    queries::NewMessage {
        bot: bot.to_owned(),
        pool: None,
        conversation: "old".to_owned(),
        role: "user".to_owned(),
        content: format!("old {i}"),
        status: "complete".to_owned(),
        reply_to: None,
        model: None,
        prompt_tokens: None,
        completion_tokens: None,
        queue_ms: None,
        llm_ms: None,
        total_ms: None,
        error: None,
        created_at,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn retention_deletes_old_messages_in_batches_while_new_ones_are_answered() {
    let app = spawn_app_with(|c| {
        c.retention.max_age_days = 2;
        c.retention.interval_secs = 1;
        c.retention.batch_size = 4;
    })
    .await;
    app.running_bot("tidy", json!({})).await;
    // Rows from long ago and from yesterday, written behind the daemon's back.
    let now = chrono::Utc::now().timestamp_millis();
    let url = app.db.url().to_owned();
    tokio::task::spawn_blocking(move || {
        let db = Db::connect(&url, 1, "normal").unwrap();
        let mut conn = db.writer.get().unwrap();
        for i in 0..10 {
            queries::insert_message(&mut conn, &backdated("tidy", i, now - 30 * DAY_MS)).unwrap();
        }
        queries::insert_message(&mut conn, &backdated("tidy", 99, now - DAY_MS)).unwrap();
    })
    .await
    .unwrap();
    assert_eq!(history(&app, "tidy").await.len(), 11);

    // Messages keep being answered until the old rows are gone.
    let mut sent = 0;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = app.send("tidy", &format!("new {sent}")).await;
        assert_eq!(status, 200, "{body}");
        sent += 1;
        let left = history(&app, "tidy").await;
        if !left
            .iter()
            .any(|m| m["content"].as_str().unwrap().starts_with("old ") && m["content"] != "old 99")
        {
            break;
        }
        assert!(Instant::now() < until, "old messages are still there");
    }
    let left = history(&app, "tidy").await;
    assert!(
        left.iter().any(|m| m["content"] == "old 99"),
        "a message younger than max_age_days is kept"
    );
    for i in 0..sent {
        let content = format!("new {i}");
        assert!(
            left.iter().any(|m| m["content"] == content.as_str()),
            "{content} was deleted"
        );
    }
    assert_eq!(left.len(), 1 + 2 * sent, "each new message and its reply");
    // Ten rows in batches of at most four; every deletion is logged with its count.
    let deleted = || -> u64 {
        app.logs()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|r| r["msg"] == "Retention deleted old messages.")
            .map(|r| r["deleted"].as_u64().unwrap())
            .sum()
    };
    let until = Instant::now() + Duration::from_secs(10);
    while deleted() < 10 {
        assert!(
            Instant::now() < until,
            "the log reports {} deletions",
            deleted()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(deleted(), 10);
}
