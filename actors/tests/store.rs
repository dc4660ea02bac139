//! The store layer on both backends: migrations, every query, the Store actor.
//! PostgreSQL runs when `BOTD_TEST_POSTGRES_URL` is set (always under CI).

use std::time::{Duration, Instant};

use botd_actors::store::queries::{self, BotRow, MessageScope, NewEvent, NewMessage, UserRow};
use botd_actors::store::testing::TestDb;
use botd_actors::store::{Db, DbConn, StoreError, StoreHandle};

fn open(db: &TestDb) -> Db {
    let d = Db::connect(db.url(), 4, "normal").expect("connects");
    d.run_migrations().expect("migrates");
    d
}

fn each_backend(f: impl Fn(&TestDb, &mut DbConn)) {
    for db in TestDb::all() {
        let d = open(&db);
        let mut conn = d.writer.get().unwrap();
        f(&db, &mut conn);
    }
}

fn bot(name: &str) -> BotRow {
    BotRow {
        name: name.into(),
        model: "mistral".into(),
        system_prompt: Some("Be kind.".into()),
        pool: None,
        managed: 0,
        restart: "permanent".into(),
        concurrency: 4,
        mailbox_capacity: 64,
        context_messages: 20,
        options: r#"{"temperature":0.5}"#.into(),
        desired_state: "stopped".into(),
        failed_reason: None,
        created_at: 1000,
        updated_at: 1000,
    }
}

fn msg(bot: &str, conversation: &str, role: &str, content: &str, status: &str) -> NewMessage {
    NewMessage {
        bot: bot.into(),
        conversation: conversation.into(),
        role: role.into(),
        content: content.into(),
        status: status.into(),
        created_at: 5000,
        ..NewMessage::default()
    }
}

fn exchange(c: &mut DbConn, bot: &str, conversation: &str, text: &str) -> (i64, i64) {
    let id = queries::insert_message(c, &msg(bot, conversation, "user", text, "pending")).unwrap();
    let reply = queries::complete_exchange(
        c,
        id,
        &msg(
            bot,
            conversation,
            "assistant",
            &format!("re: {text}"),
            "complete",
        ),
    )
    .unwrap();
    (id, reply)
}

#[test]
fn migrations_apply_once_and_are_idempotent() {
    for db in TestDb::all() {
        let d = Db::connect(db.url(), 2, "normal").unwrap();
        let first = d.run_migrations().unwrap();
        assert_eq!(first.len(), 1, "{}", db.backend());
        let second = d.run_migrations().unwrap();
        assert!(second.is_empty(), "{}", db.backend());
        d.ping().unwrap();
        assert_eq!(d.backend(), db.backend());
    }
}

#[test]
fn bots_are_inserted_read_updated_and_deleted() {
    each_backend(|db, c| {
        queries::insert_bot(c, &bot("b")).unwrap();
        queries::insert_bot(c, &bot("a")).unwrap();
        assert!(
            matches!(
                queries::insert_bot(c, &bot("b")),
                Err(StoreError::Conflict(_))
            ),
            "{}",
            db.backend()
        );
        let names: Vec<String> = queries::list_bots(c)
            .unwrap()
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, vec!["a", "b"]);
        assert_eq!(queries::get_bot(c, "b").unwrap().unwrap(), bot("b"));
        assert!(queries::get_bot(c, "zzz").unwrap().is_none());

        let mut changed = bot("b");
        changed.model = "llama3".into();
        changed.system_prompt = None;
        changed.updated_at = 2000;
        queries::update_bot(c, &changed).unwrap();
        assert_eq!(queries::get_bot(c, "b").unwrap().unwrap(), changed);
        assert_eq!(
            queries::update_bot(c, &bot("zzz")),
            Err(StoreError::NotFound)
        );

        queries::set_desired_state(c, "b", "running", 3000).unwrap();
        queries::set_failed(c, "b", Some("too many restarts"), 3001).unwrap();
        let row = queries::get_bot(c, "b").unwrap().unwrap();
        assert_eq!(row.desired_state, "running");
        assert_eq!(row.failed_reason.as_deref(), Some("too many restarts"));
        queries::set_failed(c, "b", None, 3002).unwrap();
        assert!(queries::get_bot(c, "b")
            .unwrap()
            .unwrap()
            .failed_reason
            .is_none());
        assert_eq!(
            queries::set_desired_state(c, "zzz", "running", 1),
            Err(StoreError::NotFound)
        );

        exchange(c, "b", "c", "hi");
        assert!(queries::delete_bot(c, "b", false).unwrap());
        assert!(!queries::delete_bot(c, "b", false).unwrap());
        // History outlives the bot unless purged.
        let scope = MessageScope::Bot("b".into());
        assert_eq!(
            queries::history(c, &scope, None, None, 10).unwrap().len(),
            2
        );
        queries::insert_bot(c, &bot("b")).unwrap();
        assert!(queries::delete_bot(c, "b", true).unwrap());
        assert!(queries::history(c, &scope, None, None, 10)
            .unwrap()
            .is_empty());
    });
}

#[test]
fn an_exchange_completes_atomically_and_history_pages_by_id() {
    each_backend(|db, c| {
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(exchange(c, "b", "c1", &format!("m{i}")));
        }
        let (user, reply) = ids[0];
        let scope = MessageScope::Bot("b".into());
        let all = queries::history(c, &scope, None, None, 100).unwrap();
        assert_eq!(all.len(), 10, "{}", db.backend());
        // Newest first, ids increasing with time.
        assert!(all.windows(2).all(|w| w[0].id > w[1].id));
        let u = all.iter().find(|m| m.id == user).unwrap();
        let r = all.iter().find(|m| m.id == reply).unwrap();
        assert_eq!((u.status.as_str(), u.role.as_str()), ("complete", "user"));
        assert_eq!((r.status.as_str(), r.reply_to), ("complete", Some(user)));
        assert_eq!(r.content, "re: m0");

        let page = queries::history(c, &scope, None, None, 4).unwrap();
        assert_eq!(page.len(), 4);
        let next = queries::history(c, &scope, None, Some(page[3].id), 4).unwrap();
        assert_eq!(next.len(), 4);
        assert!(next[0].id < page[3].id);
        let last = queries::history(c, &scope, None, Some(next[3].id), 4).unwrap();
        assert_eq!(last.len(), 2);

        // Completing a message that does not exist stores no reply.
        let missing =
            queries::complete_exchange(c, 999_999, &msg("b", "c1", "assistant", "x", "complete"));
        assert_eq!(missing, Err(StoreError::NotFound));
        assert_eq!(
            queries::history(c, &scope, None, None, 100).unwrap().len(),
            10
        );
    });
}

#[test]
fn context_holds_only_complete_turns_of_that_conversation_oldest_first() {
    each_backend(|db, c| {
        exchange(c, "b", "c1", "one");
        let failed =
            queries::insert_message(c, &msg("b", "c1", "user", "lost", "pending")).unwrap();
        queries::set_message_status(c, failed, "failed", Some("llm_error")).unwrap();
        let cancelled =
            queries::insert_message(c, &msg("b", "c1", "user", "gone", "pending")).unwrap();
        queries::set_message_status(c, cancelled, "cancelled", Some("cancelled")).unwrap();
        exchange(c, "b", "c2", "elsewhere");
        exchange(c, "other", "c1", "other bot");
        let mut pooled = msg("b", "c1", "user", "pooled", "pending");
        pooled.pool = Some("p".into());
        let pid = queries::insert_message(c, &pooled).unwrap();
        let mut pooled_reply = msg("b", "c1", "assistant", "re: pooled", "complete");
        pooled_reply.pool = Some("p".into());
        queries::complete_exchange(c, pid, &pooled_reply).unwrap();
        exchange(c, "b", "c1", "two");
        queries::insert_message(c, &msg("b", "c1", "user", "in flight", "pending")).unwrap();

        let scope = MessageScope::Bot("b".into());
        let ctx: Vec<String> = queries::context(c, &scope, "c1", 10)
            .unwrap()
            .into_iter()
            .map(|m| m.content)
            .collect();
        assert_eq!(
            ctx,
            vec!["one", "re: one", "two", "re: two"],
            "{}",
            db.backend()
        );
        let ctx: Vec<String> = queries::context(c, &scope, "c1", 3)
            .unwrap()
            .into_iter()
            .map(|m| m.content)
            .collect();
        assert_eq!(ctx, vec!["re: one", "two", "re: two"]);
        let pool_ctx: Vec<String> = queries::context(c, &MessageScope::Pool("p".into()), "c1", 10)
            .unwrap()
            .into_iter()
            .map(|m| m.content)
            .collect();
        assert_eq!(pool_ctx, vec!["pooled", "re: pooled"]);
        let pool_history =
            queries::history(c, &MessageScope::Pool("p".into()), Some("c1"), None, 10).unwrap();
        assert_eq!(pool_history.len(), 2);
        assert!(queries::last_message_id(c, &scope, "c1").unwrap().is_some());
        assert!(queries::last_message_id(c, &scope, "nope")
            .unwrap()
            .is_none());
        let only_c2 = queries::history(c, &scope, Some("c2"), None, 10).unwrap();
        assert_eq!(only_c2.len(), 2);
    });
}

#[test]
fn pending_messages_fail_at_start_and_old_messages_go_in_batches() {
    each_backend(|db, c| {
        queries::insert_message(c, &msg("b", "c", "user", "left behind", "pending")).unwrap();
        exchange(c, "b", "c", "done");
        assert_eq!(
            queries::fail_pending(c, "internal").unwrap(),
            1,
            "{}",
            db.backend()
        );
        let scope = MessageScope::Bot("b".into());
        let rows = queries::history(c, &scope, None, None, 10).unwrap();
        let left = rows.iter().find(|m| m.content == "left behind").unwrap();
        assert_eq!(
            (left.status.as_str(), left.error.as_deref()),
            ("failed", Some("internal"))
        );

        for i in 0..5 {
            let mut old = msg("b", "old", "user", &format!("old {i}"), "complete");
            old.created_at = 100;
            queries::insert_message(c, &old).unwrap();
        }
        assert_eq!(queries::delete_messages_older_than(c, 1000, 2).unwrap(), 2);
        assert_eq!(queries::delete_messages_older_than(c, 1000, 2).unwrap(), 2);
        assert_eq!(queries::delete_messages_older_than(c, 1000, 2).unwrap(), 1);
        assert_eq!(queries::delete_messages_older_than(c, 1000, 2).unwrap(), 0);
        assert_eq!(
            queries::history(c, &scope, None, None, 100).unwrap().len(),
            3
        );
    });
}

#[test]
fn events_filter_newest_first() {
    each_backend(|db, c| {
        let ev = |bot: Option<&str>, pool: Option<&str>, kind: &str| NewEvent {
            ts: 1,
            bot: bot.map(Into::into),
            pool: pool.map(Into::into),
            kind: kind.into(),
            subject: "supervisor".into(),
            detail: "{}".into(),
        };
        queries::insert_event(c, &ev(Some("a"), None, "created")).unwrap();
        queries::insert_event(c, &ev(Some("a"), Some("p"), "started")).unwrap();
        queries::insert_event(c, &ev(Some("b"), None, "created")).unwrap();
        queries::insert_event(c, &ev(None, Some("p"), "scaled_up")).unwrap();
        let all = queries::list_events(c, None, None, None, 10).unwrap();
        assert_eq!(all.len(), 4, "{}", db.backend());
        assert!(all.windows(2).all(|w| w[0].id > w[1].id));
        let a: Vec<String> = queries::list_events(c, Some("a"), None, None, 10)
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        assert_eq!(a, vec!["started", "created"]);
        assert_eq!(
            queries::list_events(c, None, Some("p"), None, 10)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            queries::list_events(c, None, None, Some("created"), 10)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            queries::list_events(c, None, None, None, 1).unwrap()[0].kind,
            "scaled_up"
        );
    });
}

#[test]
fn users_and_pools_round_trip() {
    each_backend(|db, c| {
        let u = UserRow {
            username: "ann".into(),
            password_hash: "$argon2id$x".into(),
            role: "viewer".into(),
            created_at: 1,
            updated_at: 1,
        };
        queries::insert_user(c, &u).unwrap();
        assert!(
            matches!(queries::insert_user(c, &u), Err(StoreError::Conflict(_))),
            "{}",
            db.backend()
        );
        queries::update_user(c, "ann", None, Some("admin"), 2).unwrap();
        let got = queries::get_user(c, "ann").unwrap().unwrap();
        assert_eq!(
            (got.role.as_str(), got.password_hash.as_str()),
            ("admin", "$argon2id$x")
        );
        assert_eq!(
            queries::update_user(c, "bob", None, Some("admin"), 2),
            Err(StoreError::NotFound)
        );
        assert_eq!(queries::list_users(c).unwrap().len(), 1);
        assert!(queries::delete_user(c, "ann").unwrap());
        assert!(!queries::delete_user(c, "ann").unwrap());

        let mut p = queries::PoolRow {
            name: "p".into(),
            template: "{}".into(),
            min_bots: 1,
            max_bots: 3,
            scale_up_queue_depth: 5,
            scale_down_idle_secs: 300,
            created_at: 1,
            updated_at: 1,
        };
        queries::upsert_pool(c, &p).unwrap();
        p.max_bots = 7;
        p.updated_at = 2;
        queries::upsert_pool(c, &p).unwrap();
        let got = queries::get_pool(c, "p").unwrap().unwrap();
        assert_eq!((got.max_bots, got.created_at), (7, 1));
        assert_eq!(queries::list_pools(c).unwrap().len(), 1);
        assert!(queries::delete_pool(c, "p").unwrap());
    });
}

#[test]
fn connecting_fails_fast_and_clearly() {
    let started = Instant::now();
    let e = Db::connect("postgres://postgres@127.0.0.1:1/none", 2, "normal")
        .err()
        .unwrap();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let e = Db::connect("sqlite:///no/such/dir/botd.db", 2, "normal")
        .err()
        .unwrap();
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(Db::connect("mysql://x", 2, "normal").is_err());
    assert!(Db::connect("sqlite://x.db", 2, "off").is_err());
}

#[actix::test]
async fn the_store_actor_reads_and_writes_and_sqlite_serialises_concurrent_writers() {
    for db in TestDb::all() {
        let store = StoreHandle::start(open(&db));
        assert_eq!(store.backend(), db.backend());
        let mut tasks = Vec::new();
        for t in 0..8 {
            let store = store.clone();
            tasks.push(actix::spawn(async move {
                for i in 0..100 {
                    let m = msg(
                        "b",
                        &format!("c{t}"),
                        "user",
                        &format!("{t}-{i}"),
                        "complete",
                    );
                    store
                        .write(move |c| queries::insert_message(c, &m))
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let n = store
            .read(|c| queries::history(c, &MessageScope::Bot("b".into()), None, None, 1000))
            .await
            .unwrap()
            .len();
        assert_eq!(n, 800, "{}", db.backend());
        store.ping().await.unwrap();
        // Detached writes run in the order they were queued.
        for i in 0..10 {
            let e = NewEvent {
                ts: i,
                kind: format!("k{i}"),
                subject: "s".into(),
                detail: "{}".into(),
                ..NewEvent::default()
            };
            store.write_detached(move |c| queries::insert_event(c, &e).map(|_| ()));
        }
        store.flush_detached().await.unwrap();
        let events = store
            .read(|c| queries::list_events(c, None, None, None, 100))
            .await
            .unwrap();
        let kinds: Vec<String> = events.into_iter().rev().map(|e| e.kind).collect();
        assert_eq!(kinds, (0..10).map(|i| format!("k{i}")).collect::<Vec<_>>());
    }
}
