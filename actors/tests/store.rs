//! The store layer on both backends: migrations, every query, the Store actor.
//! PostgreSQL runs when `BOTD_TEST_POSTGRES_URL` is set (always under `CI=true`).

use std::time::{Duration, Instant};

use botd_actors::store::queries::{
    self, BotRow, MessageScope, NewEvent, NewMessage, PoolRow, UserRow,
};
use botd_actors::store::testing::TestDb;
use botd_actors::store::{Db, DbConn, StoreError, StoreHandle};
use diesel::connection::SimpleConnection;

fn open(db: &TestDb) -> Db {
    db.open(4)
}

/// Runs `f` on a migrated database of each backend, through the writer connection.
fn each_backend(f: impl Fn(&TestDb, &mut DbConn)) {
    TestDb::each(|db| {
        let d = open(db);
        let mut conn = d.writer.get().unwrap();
        f(db, &mut conn);
    });
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

/// A user message and its reply, the way a bot stores them.
fn exchange(c: &mut DbConn, bot: &str, conversation: &str, text: &str) -> (i64, i64) {
    exchange_in(c, None, bot, conversation, text)
}

fn exchange_in(
    c: &mut DbConn,
    pool: Option<&str>,
    bot: &str,
    conversation: &str,
    text: &str,
) -> (i64, i64) {
    let mut user = msg(bot, conversation, "user", text, "pending");
    user.pool = pool.map(Into::into);
    let id = queries::insert_message(c, &user).unwrap();
    let mut reply = msg(bot, conversation, "assistant", &format!("re: {text}"), "x");
    reply.pool = pool.map(Into::into);
    reply.model = Some("mistral".into());
    reply.prompt_tokens = Some(12);
    reply.completion_tokens = Some(4);
    reply.queue_ms = Some(1);
    reply.llm_ms = Some(950);
    reply.total_ms = Some(952);
    let reply_id = queries::complete_exchange(c, id, &reply).unwrap();
    (id, reply_id)
}

fn contents(rows: Vec<queries::MessageRow>) -> Vec<String> {
    rows.into_iter().map(|m| m.content).collect()
}

#[test]
fn migrations_apply_once_and_are_idempotent() {
    TestDb::each(|db| {
        let d = Db::connect(db.url(), 2, "normal").unwrap();
        assert_eq!(d.backend(), db.backend());
        let first = d.run_migrations().unwrap();
        assert_eq!(first, vec!["20261201000000".to_owned()], "{}", db.backend());
        let second = d.run_migrations().unwrap();
        assert!(second.is_empty(), "{}", db.backend());
        d.ping().unwrap();
        drop(d);
        // A later start (a new process) finds nothing to do, and every table is there.
        let d = Db::connect(db.url(), 2, "normal").unwrap();
        assert!(d.run_migrations().unwrap().is_empty(), "{}", db.backend());
        let mut c = d.readers.get().unwrap();
        assert!(queries::list_bots(&mut c).unwrap().is_empty());
        assert!(queries::list_pools(&mut c).unwrap().is_empty());
        assert!(queries::list_users(&mut c).unwrap().is_empty());
        assert!(queries::list_events(&mut c, None, None, None, 10)
            .unwrap()
            .is_empty());
        assert!(
            queries::history(&mut c, &MessageScope::Bot("b".into()), None, None, 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(c.backend(), db.backend());
    });
}

#[test]
fn sqlite_connections_run_in_wal_with_the_configured_pragmas() {
    use diesel::sql_types::BigInt;
    use diesel::{QueryableByName, RunQueryDsl};

    #[derive(QueryableByName)]
    struct Value {
        #[diesel(sql_type = BigInt)]
        value: i64,
    }
    #[derive(QueryableByName)]
    struct Mode {
        #[diesel(sql_type = diesel::sql_types::Text)]
        journal_mode: String,
    }
    for (sync, expected) in [("normal", 1), ("full", 2)] {
        let db = TestDb::sqlite();
        let d = Db::connect(db.url(), 3, sync).unwrap();
        d.run_migrations().unwrap();
        let w = d.writer.get().unwrap();
        let r1 = d.readers.get().unwrap();
        let r2 = d.readers.get().unwrap();
        for mut conn in [w, r1, r2] {
            let DbConn::Sqlite(c) = &mut *conn else {
                panic!("not sqlite")
            };
            let pragma = |c: &mut diesel::SqliteConnection, name: &str, column: &str| {
                diesel::sql_query(format!("SELECT {column} AS value FROM pragma_{name}"))
                    .get_result::<Value>(c)
                    .unwrap()
                    .value
            };
            // A pragma with a setter is not a table-valued function.
            #[derive(QueryableByName)]
            struct Autocheckpoint {
                #[diesel(sql_type = BigInt)]
                wal_autocheckpoint: i64,
            }
            let mode = diesel::sql_query("PRAGMA journal_mode")
                .get_result::<Mode>(c)
                .unwrap();
            assert_eq!(mode.journal_mode, "wal");
            assert_eq!(pragma(c, "synchronous", "synchronous"), expected);
            assert_eq!(pragma(c, "busy_timeout", "timeout"), 5000);
            assert_eq!(pragma(c, "foreign_keys", "foreign_keys"), 1);
            let autocheckpoint = diesel::sql_query("PRAGMA wal_autocheckpoint")
                .get_result::<Autocheckpoint>(c)
                .unwrap();
            assert_eq!(
                autocheckpoint.wal_autocheckpoint,
                i64::from(botd_actors::store::wal::SAFETY_NET_FRAMES)
            );
        }
    }
}

#[test]
fn bots_are_inserted_read_updated_and_deleted() {
    each_backend(|db, c| {
        let be = db.backend();
        queries::insert_bot(c, &bot("b")).unwrap();
        queries::insert_bot(c, &bot("a")).unwrap();
        assert!(
            matches!(
                queries::insert_bot(c, &bot("b")),
                Err(StoreError::Conflict(_))
            ),
            "{be}"
        );
        let names: Vec<String> = queries::list_bots(c)
            .unwrap()
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, vec!["a", "b"], "{be}");
        assert_eq!(queries::get_bot(c, "b").unwrap().unwrap(), bot("b"), "{be}");
        assert!(queries::get_bot(c, "zzz").unwrap().is_none());

        let mut changed = bot("b");
        changed.model = "llama3".into();
        changed.system_prompt = None;
        changed.pool = Some("p".into());
        changed.managed = 1;
        changed.options = "{}".into();
        changed.updated_at = 2000;
        queries::update_bot(c, &changed).unwrap();
        assert_eq!(queries::get_bot(c, "b").unwrap().unwrap(), changed, "{be}");
        assert_eq!(
            queries::update_bot(c, &bot("zzz")),
            Err(StoreError::NotFound)
        );

        queries::set_desired_state(c, "b", "running", 3000).unwrap();
        queries::set_failed(c, "b", Some("too many restarts"), 3001).unwrap();
        let row = queries::get_bot(c, "b").unwrap().unwrap();
        assert_eq!(row.desired_state, "running");
        assert_eq!(row.failed_reason.as_deref(), Some("too many restarts"));
        assert_eq!(row.updated_at, 3001);
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
        assert_eq!(
            queries::set_failed(c, "zzz", None, 1),
            Err(StoreError::NotFound)
        );
        let restore: Vec<(String, String)> = queries::list_bots_to_restore(c)
            .unwrap()
            .into_iter()
            .map(|b| (b.name, b.desired_state))
            .collect();
        assert_eq!(
            restore,
            vec![
                ("a".into(), "stopped".into()),
                ("b".into(), "running".into())
            ]
        );

        exchange(c, "b", "c", "hi");
        exchange(c, "a", "c", "hi");
        exchange_in(c, Some("p"), "b", "c", "for the pool");
        assert!(queries::delete_bot(c, "b", false).unwrap());
        assert!(!queries::delete_bot(c, "b", false).unwrap());
        // History outlives the bot unless purged.
        let scope = MessageScope::Bot("b".into());
        assert_eq!(
            queries::history(c, &scope, None, None, 10).unwrap().len(),
            4
        );
        queries::insert_bot(c, &bot("b")).unwrap();
        assert!(queries::delete_bot(c, "b", true).unwrap());
        // Purged: its own conversations; the pool keeps the turns it answered.
        assert_eq!(
            contents(queries::history(c, &scope, None, None, 10).unwrap()),
            vec!["re: for the pool", "for the pool"],
            "{be}"
        );
        let pool = MessageScope::Pool("p".into());
        assert_eq!(queries::history(c, &pool, None, None, 10).unwrap().len(), 2);
        // Another bot's history stays.
        let a = MessageScope::Bot("a".into());
        assert_eq!(queries::history(c, &a, None, None, 10).unwrap().len(), 2);
        // Purging the history of a bot that no longer exists still deletes it.
        assert!(queries::delete_bot(c, "a", false).unwrap());
        assert!(!queries::delete_bot(c, "a", true).unwrap());
        assert!(queries::history(c, &a, None, None, 10).unwrap().is_empty());
    });
}

#[test]
fn an_exchange_completes_atomically_and_history_pages_by_id() {
    each_backend(|db, c| {
        let be = db.backend();
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(exchange(c, "b", "c1", &format!("m{i}")));
        }
        exchange(c, "b", "c2", "other conversation");
        let (user, reply) = ids[0];
        let scope = MessageScope::Bot("b".into());
        let all = queries::history(c, &scope, Some("c1"), None, 100).unwrap();
        assert_eq!(all.len(), 10, "{be}");
        // Newest first, ids increasing with time.
        assert!(all.windows(2).all(|w| w[0].id > w[1].id), "{be}");
        let u = all.iter().find(|m| m.id == user).unwrap();
        let r = all.iter().find(|m| m.id == reply).unwrap();
        assert_eq!((u.status.as_str(), u.role.as_str()), ("complete", "user"));
        assert_eq!(u.reply_to, None);
        assert_eq!((r.status.as_str(), r.reply_to), ("complete", Some(user)));
        assert_eq!(r.role, "assistant");
        assert_eq!(r.content, "re: m0");
        assert_eq!(r.model.as_deref(), Some("mistral"));
        assert_eq!((r.prompt_tokens, r.completion_tokens), (Some(12), Some(4)));
        assert_eq!(
            (r.queue_ms, r.llm_ms, r.total_ms),
            (Some(1), Some(950), Some(952))
        );
        assert_eq!(r.created_at, 5000);
        assert!(reply > user);

        // Pages of 4 by id: 4, 4, 2, then nothing.
        let page = queries::history(c, &scope, Some("c1"), None, 4).unwrap();
        assert_eq!(page.len(), 4);
        assert_eq!(page[0].id, all[0].id);
        let next = queries::history(c, &scope, Some("c1"), Some(page[3].id), 4).unwrap();
        assert_eq!(next.len(), 4);
        assert_eq!(next[0].id, all[4].id, "{be}");
        let last = queries::history(c, &scope, Some("c1"), Some(next[3].id), 4).unwrap();
        assert_eq!(last.len(), 2);
        assert_eq!(last[1].id, user);
        assert!(queries::history(c, &scope, Some("c1"), Some(user), 4)
            .unwrap()
            .is_empty());
        // Without a conversation: all of the bot's.
        assert_eq!(
            queries::history(c, &scope, None, None, 100).unwrap().len(),
            12
        );
        assert!(queries::history(c, &scope, None, None, 0)
            .unwrap()
            .is_empty());

        // Completing a message that does not exist stores no reply.
        let missing =
            queries::complete_exchange(c, 999_999, &msg("b", "c1", "assistant", "x", "complete"));
        assert_eq!(missing, Err(StoreError::NotFound));
        assert_eq!(
            queries::history(c, &scope, None, None, 100).unwrap().len(),
            12
        );
    });
}

#[test]
fn a_reply_that_cannot_be_stored_leaves_its_user_message_pending() {
    each_backend(|db, c| {
        let be = db.backend();
        // The database refuses one reply: the transaction must leave no trace.
        let trigger = match c {
            DbConn::Sqlite(_) => {
                "CREATE TRIGGER refuse BEFORE INSERT ON messages WHEN NEW.content = 'refused' \
                 BEGIN SELECT RAISE(ABORT, 'refused by the test'); END;"
            }
            DbConn::Postgres(_) => {
                "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN \
                   IF NEW.content = 'refused' THEN RAISE EXCEPTION 'refused by the test'; END IF; \
                   RETURN NEW; END $$ LANGUAGE plpgsql; \
                 CREATE TRIGGER refuse BEFORE INSERT ON messages \
                   FOR EACH ROW EXECUTE FUNCTION refuse();"
            }
        };
        botd_actors::with_conn!(&mut *c, c => c.batch_execute(trigger)).unwrap();
        let id = queries::insert_message(c, &msg("b", "c", "user", "hi", "pending")).unwrap();
        let e =
            queries::complete_exchange(c, id, &msg("b", "c", "assistant", "refused", "complete"));
        assert!(
            matches!(&e, Err(StoreError::Query(m)) if m.contains("refused")),
            "{be}: {e:?}"
        );
        let rows = queries::history(c, &MessageScope::Bot("b".into()), None, None, 10).unwrap();
        assert_eq!(rows.len(), 1, "{be}");
        assert_eq!(
            (rows[0].id, rows[0].status.as_str()),
            (id, "pending"),
            "{be}"
        );
        // The connection is usable afterwards, and the exchange can still complete.
        let reply =
            queries::complete_exchange(c, id, &msg("b", "c", "assistant", "ok", "complete"))
                .unwrap();
        let rows = queries::history(c, &MessageScope::Bot("b".into()), None, None, 10).unwrap();
        assert_eq!(
            rows.iter()
                .map(|m| (m.id, m.status.as_str()))
                .collect::<Vec<_>>(),
            vec![(reply, "complete"), (id, "complete")],
            "{be}"
        );
    });
}

#[test]
fn context_holds_only_complete_turns_of_that_conversation_oldest_first() {
    each_backend(|db, c| {
        let be = db.backend();
        exchange(c, "b", "c1", "one");
        let failed =
            queries::insert_message(c, &msg("b", "c1", "user", "lost", "pending")).unwrap();
        queries::set_message_status(c, failed, "failed", Some("llm_error")).unwrap();
        let cancelled =
            queries::insert_message(c, &msg("b", "c1", "user", "gone", "pending")).unwrap();
        queries::set_message_status(c, cancelled, "cancelled", Some("cancelled")).unwrap();
        exchange(c, "b", "c2", "elsewhere");
        exchange(c, "other", "c1", "other bot");
        exchange_in(c, Some("p"), "b", "c1", "pooled");
        exchange(c, "b", "c1", "two");
        let pending =
            queries::insert_message(c, &msg("b", "c1", "user", "in flight", "pending")).unwrap();

        let scope = MessageScope::Bot("b".into());
        assert_eq!(
            contents(queries::context(c, &scope, "c1", 10).unwrap()),
            vec!["one", "re: one", "two", "re: two"],
            "{be}"
        );
        // The last n, still oldest first.
        assert_eq!(
            contents(queries::context(c, &scope, "c1", 3).unwrap()),
            vec!["re: one", "two", "re: two"],
            "{be}"
        );
        assert!(queries::context(c, &scope, "c1", 0).unwrap().is_empty());
        assert!(queries::context(c, &scope, "nope", 10).unwrap().is_empty());
        let ctx = queries::context(c, &scope, "c1", 10).unwrap();
        assert!(ctx.iter().all(|m| m.status == "complete" && m.bot == "b"));
        assert_eq!(
            contents(queries::context(c, &MessageScope::Bot("other".into()), "c1", 10).unwrap()),
            vec!["other bot", "re: other bot"]
        );
        assert_eq!(
            contents(queries::context(c, &MessageScope::Pool("p".into()), "c1", 10).unwrap()),
            vec!["pooled", "re: pooled"],
            "{be}"
        );
        // The failed and cancelled turns keep their status and error code.
        let rows = queries::history(c, &scope, Some("c1"), None, 100).unwrap();
        let status = |id: i64| {
            let m = rows.iter().find(|m| m.id == id).unwrap();
            (m.status.clone(), m.error.clone())
        };
        assert_eq!(status(failed), ("failed".into(), Some("llm_error".into())));
        assert_eq!(
            status(cancelled),
            ("cancelled".into(), Some("cancelled".into()))
        );
        assert_eq!(status(pending), ("pending".into(), None));
        // Setting the status of a message that is gone is not an error.
        queries::set_message_status(c, 999_999, "failed", Some("internal")).unwrap();

        assert_eq!(
            queries::last_message_id(c, &scope, "c1").unwrap(),
            Some(pending),
            "{be}"
        );
        assert!(queries::last_message_id(c, &scope, "nope")
            .unwrap()
            .is_none());
        let (_, reply) = exchange(c, "b", "c1", "three");
        assert_eq!(
            queries::last_message_id(c, &scope, "c1").unwrap(),
            Some(reply)
        );
        let pool_last = queries::last_message_id(c, &MessageScope::Pool("p".into()), "c1")
            .unwrap()
            .unwrap();
        assert!(pool_last < reply);
    });
}

#[test]
fn pool_history_holds_the_pool_conversation_across_members() {
    each_backend(|db, c| {
        let be = db.backend();
        exchange_in(c, Some("p"), "p-1", "c", "first");
        exchange_in(c, Some("p"), "p-2", "c", "second");
        exchange_in(c, Some("p"), "p-1", "other", "elsewhere");
        exchange_in(c, Some("q"), "q-1", "c", "other pool");
        exchange(c, "p-1", "c", "direct");

        let pool = MessageScope::Pool("p".into());
        let rows = queries::history(c, &pool, Some("c"), None, 100).unwrap();
        assert_eq!(
            contents(rows.clone()),
            vec!["re: second", "second", "re: first", "first"],
            "{be}"
        );
        assert_eq!(
            rows.iter().map(|m| m.bot.as_str()).collect::<Vec<_>>(),
            vec!["p-2", "p-2", "p-1", "p-1"]
        );
        assert!(rows.iter().all(|m| m.pool.as_deref() == Some("p")));
        let page = queries::history(c, &pool, Some("c"), Some(rows[1].id), 100).unwrap();
        assert_eq!(contents(page), vec!["re: first", "first"], "{be}");
        assert_eq!(
            queries::history(c, &pool, None, None, 100).unwrap().len(),
            6
        );
        // The context of a pool conversation spans its members.
        assert_eq!(
            contents(queries::context(c, &pool, "c", 10).unwrap()),
            vec!["first", "re: first", "second", "re: second"]
        );
        // A member's own history holds what it answered for the pool, and its own turns.
        let member = MessageScope::Bot("p-1".into());
        assert_eq!(
            contents(queries::history(c, &member, Some("c"), None, 100).unwrap()),
            vec!["re: direct", "direct", "re: first", "first"],
            "{be}"
        );
        // But its own conversation's context leaves out the pool's turns.
        assert_eq!(
            contents(queries::context(c, &member, "c", 10).unwrap()),
            vec!["direct", "re: direct"]
        );
    });
}

#[test]
fn pending_messages_fail_at_start_and_old_messages_go_in_batches() {
    each_backend(|db, c| {
        let be = db.backend();
        queries::insert_message(c, &msg("b", "c", "user", "left behind", "pending")).unwrap();
        queries::insert_message(c, &msg("b2", "c", "user", "also left", "pending")).unwrap();
        exchange(c, "b", "c", "done");
        assert_eq!(queries::fail_pending(c, "internal").unwrap(), 2, "{be}");
        assert_eq!(queries::fail_pending(c, "internal").unwrap(), 0, "{be}");
        let scope = MessageScope::Bot("b".into());
        let rows = queries::history(c, &scope, None, None, 10).unwrap();
        let left = rows.iter().find(|m| m.content == "left behind").unwrap();
        assert_eq!(
            (left.status.as_str(), left.error.as_deref()),
            ("failed", Some("internal"))
        );
        let done = rows.iter().find(|m| m.content == "done").unwrap();
        assert_eq!(
            (done.status.as_str(), done.error.as_deref()),
            ("complete", None)
        );

        // Five backdated rows, interleaved with newer ones.
        for i in 0..5 {
            let mut old = msg("b", "old", "user", &format!("old {i}"), "complete");
            old.created_at = 100 + i;
            queries::insert_message(c, &old).unwrap();
            let mut recent = msg("b", "old", "user", &format!("recent {i}"), "complete");
            recent.created_at = 10_000;
            queries::insert_message(c, &recent).unwrap();
        }
        let old_left = |c: &mut DbConn| {
            contents(queries::history(c, &scope, Some("old"), None, 100).unwrap())
                .into_iter()
                .filter(|m| m.starts_with("old"))
                .collect::<Vec<_>>()
        };
        assert_eq!(queries::delete_messages_older_than(c, 1000, 2).unwrap(), 2);
        // The oldest go first.
        assert_eq!(old_left(c), vec!["old 4", "old 3", "old 2"], "{be}");
        assert_eq!(queries::delete_messages_older_than(c, 1000, 2).unwrap(), 2);
        assert_eq!(queries::delete_messages_older_than(c, 1000, 2).unwrap(), 1);
        assert_eq!(queries::delete_messages_older_than(c, 1000, 2).unwrap(), 0);
        assert!(old_left(c).is_empty());
        assert_eq!(queries::delete_messages_older_than(c, 1000, 0).unwrap(), 0);
        // Everything newer than the cut-off stays (5 recent + 3 of the first exchange).
        assert_eq!(
            queries::history(c, &scope, None, None, 100).unwrap().len(),
            8,
            "{be}"
        );
        // The cut-off is exclusive: created_at 5000 survives a cut-off of 5000.
        assert_eq!(
            queries::delete_messages_older_than(c, 5000, 100).unwrap(),
            0
        );
        assert_eq!(
            queries::delete_messages_older_than(c, 5001, 100).unwrap(),
            4
        );
    });
}

#[test]
fn events_filter_newest_first() {
    each_backend(|db, c| {
        let be = db.backend();
        let ev = |bot: Option<&str>, pool: Option<&str>, kind: &str| NewEvent {
            ts: 1,
            bot: bot.map(Into::into),
            pool: pool.map(Into::into),
            kind: kind.into(),
            subject: "supervisor".into(),
            detail: r#"{"restarts":1}"#.into(),
        };
        let first = queries::insert_event(c, &ev(Some("a"), None, "created")).unwrap();
        queries::insert_event(c, &ev(Some("a"), Some("p"), "started")).unwrap();
        queries::insert_event(c, &ev(Some("b"), None, "created")).unwrap();
        let last = queries::insert_event(c, &ev(None, Some("p"), "scaled_up")).unwrap();
        assert!(last > first);
        let all = queries::list_events(c, None, None, None, 10).unwrap();
        assert_eq!(all.len(), 4, "{be}");
        assert!(all.windows(2).all(|w| w[0].id > w[1].id));
        assert_eq!(all[0].id, last);
        assert_eq!(
            (
                all[3].bot.as_deref(),
                all[3].pool.as_deref(),
                all[3].subject.as_str(),
                all[3].detail.as_str(),
                all[3].ts
            ),
            (Some("a"), None, "supervisor", r#"{"restarts":1}"#, 1)
        );
        let kinds = |rows: Vec<queries::EventRow>| -> Vec<String> {
            rows.into_iter().map(|e| e.kind).collect()
        };
        assert_eq!(
            kinds(queries::list_events(c, Some("a"), None, None, 10).unwrap()),
            vec!["started", "created"]
        );
        assert_eq!(
            kinds(queries::list_events(c, None, Some("p"), None, 10).unwrap()),
            vec!["scaled_up", "started"]
        );
        assert_eq!(
            kinds(queries::list_events(c, None, None, Some("created"), 10).unwrap()),
            vec!["created", "created"]
        );
        assert_eq!(
            kinds(queries::list_events(c, Some("a"), None, Some("created"), 10).unwrap()),
            vec!["created"]
        );
        assert_eq!(
            kinds(queries::list_events(c, Some("a"), Some("p"), None, 10).unwrap()),
            vec!["started"]
        );
        assert!(queries::list_events(c, Some("zzz"), None, None, 10)
            .unwrap()
            .is_empty());
        assert_eq!(
            kinds(queries::list_events(c, None, None, None, 2).unwrap()),
            vec!["scaled_up", "created"],
            "{be}"
        );
    });
}

#[test]
fn users_round_trip() {
    each_backend(|db, c| {
        let be = db.backend();
        let u = |name: &str| UserRow {
            username: name.into(),
            password_hash: "$argon2id$x".into(),
            role: "viewer".into(),
            created_at: 1,
            updated_at: 1,
        };
        queries::insert_user(c, &u("ann")).unwrap();
        queries::insert_user(c, &u("al")).unwrap();
        assert!(
            matches!(
                queries::insert_user(c, &u("ann")),
                Err(StoreError::Conflict(_))
            ),
            "{be}"
        );
        assert_eq!(queries::get_user(c, "ann").unwrap().unwrap(), u("ann"));
        assert!(queries::get_user(c, "bob").unwrap().is_none());

        queries::update_user(c, "ann", None, Some("admin"), 2).unwrap();
        let got = queries::get_user(c, "ann").unwrap().unwrap();
        assert_eq!(
            (
                got.role.as_str(),
                got.password_hash.as_str(),
                got.updated_at
            ),
            ("admin", "$argon2id$x", 2)
        );
        queries::update_user(c, "ann", Some("$argon2id$y"), None, 3).unwrap();
        let got = queries::get_user(c, "ann").unwrap().unwrap();
        assert_eq!(
            (
                got.role.as_str(),
                got.password_hash.as_str(),
                got.updated_at
            ),
            ("admin", "$argon2id$y", 3)
        );
        queries::update_user(c, "ann", Some("$argon2id$z"), Some("operator"), 4).unwrap();
        let got = queries::get_user(c, "ann").unwrap().unwrap();
        assert_eq!(
            (
                got.role.as_str(),
                got.password_hash.as_str(),
                got.created_at
            ),
            ("operator", "$argon2id$z", 1)
        );
        queries::update_user(c, "ann", None, None, 5).unwrap();
        assert_eq!(queries::get_user(c, "ann").unwrap().unwrap().updated_at, 5);
        assert_eq!(
            queries::update_user(c, "bob", None, Some("admin"), 2),
            Err(StoreError::NotFound)
        );
        // Others are untouched.
        assert_eq!(queries::get_user(c, "al").unwrap().unwrap(), u("al"));
        let names: Vec<String> = queries::list_users(c)
            .unwrap()
            .into_iter()
            .map(|u| u.username)
            .collect();
        assert_eq!(names, vec!["al", "ann"]);
        assert!(queries::delete_user(c, "ann").unwrap());
        assert!(!queries::delete_user(c, "ann").unwrap());
        assert_eq!(queries::list_users(c).unwrap().len(), 1);
    });
}

#[test]
fn pools_are_upserted_read_and_deleted() {
    each_backend(|db, c| {
        let be = db.backend();
        let mut p = PoolRow {
            name: "p".into(),
            template: r#"{"model":"mistral"}"#.into(),
            min_bots: 1,
            max_bots: 3,
            scale_up_queue_depth: 5,
            scale_down_idle_secs: 300,
            created_at: 1,
            updated_at: 1,
        };
        queries::upsert_pool(c, &p).unwrap();
        assert_eq!(queries::get_pool(c, "p").unwrap().unwrap(), p, "{be}");
        let first = p.clone();
        p.template = r#"{"model":"llama3"}"#.into();
        p.min_bots = 2;
        p.max_bots = 7;
        p.scale_up_queue_depth = 9;
        p.scale_down_idle_secs = 60;
        p.created_at = 2;
        p.updated_at = 2;
        queries::upsert_pool(c, &p).unwrap();
        let got = queries::get_pool(c, "p").unwrap().unwrap();
        assert_eq!(
            got,
            PoolRow {
                created_at: first.created_at,
                ..p.clone()
            },
            "{be}: an update keeps created_at"
        );
        queries::upsert_pool(
            c,
            &PoolRow {
                name: "a".into(),
                ..p.clone()
            },
        )
        .unwrap();
        let names: Vec<String> = queries::list_pools(c)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, vec!["a", "p"]);
        assert!(queries::delete_pool(c, "p").unwrap());
        assert!(!queries::delete_pool(c, "p").unwrap());
        assert!(queries::get_pool(c, "p").unwrap().is_none());
    });
}

#[test]
fn connecting_fails_fast_and_clearly() {
    let started = Instant::now();
    let e = Db::connect("postgres://postgres@127.0.0.1:1/none", 2, "normal").unwrap_err();
    assert!(
        matches!(&e, StoreError::Unavailable(m) if m.contains("PostgreSQL") && m.contains("127.0.0.1")),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );

    let e = Db::connect("sqlite:///no/such/dir/botd.db", 2, "normal").unwrap_err();
    assert!(matches!(&e, StoreError::Unavailable(_)), "{e}");
    assert!(e.to_string().contains("/no/such/dir"), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");

    for bad in ["mysql://x", "botd.db", "sqlite://", "sqlite::memory:"] {
        assert!(
            matches!(Db::connect(bad, 2, "normal"), Err(StoreError::Config(_))),
            "{bad}"
        );
    }
    assert!(matches!(
        Db::connect("sqlite://x.db", 2, "off"),
        Err(StoreError::Config(_))
    ));
}

#[test]
fn connecting_to_a_server_that_never_answers_gives_up_within_seconds() {
    // Accepts TCP connections and says nothing: libpq waits for the server's greeting.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in listener.incoming().take(4).flatten() {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(15));
    });
    let started = Instant::now();
    let e = Db::connect(
        &format!("postgres://postgres@127.0.0.1:{port}/none?connect_timeout=2"),
        2,
        "normal",
    )
    .unwrap_err();
    let took = started.elapsed();
    assert!(matches!(&e, StoreError::Unavailable(_)), "{e}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    drop(held);
}

#[test]
fn an_exhausted_pool_is_unavailable_after_the_timeout() {
    let db = TestDb::sqlite();
    let d = db.open(1);
    let held = d.readers.get().unwrap();
    let started = Instant::now();
    let e = d.readers.get().map(|_| ()).map_err(StoreError::from);
    assert!(matches!(&e, Err(StoreError::Unavailable(_))), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(8));
    drop(held);
    d.ping().unwrap();
}

#[actix::test]
async fn the_store_actor_reads_and_writes_and_sqlite_serialises_concurrent_writers() {
    TestDb::each_async(|db| async move {
        let be = db.backend();
        let store = StoreHandle::start(open(&db));
        assert_eq!(store.backend(), be);
        store.ping().await.unwrap();
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
        // Readers run alongside the writers without "database is locked".
        for _ in 0..4 {
            let store = store.clone();
            tasks.push(actix::spawn(async move {
                for _ in 0..50 {
                    store
                        .read(|c| {
                            queries::history(c, &MessageScope::Bot("b".into()), None, None, 20)
                        })
                        .await
                        .unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let rows = store
            .read(|c| queries::history(c, &MessageScope::Bot("b".into()), None, None, 1000))
            .await
            .unwrap();
        assert_eq!(rows.len(), 800, "{be}");
        for t in 0..8 {
            let mine: Vec<String> = rows
                .iter()
                .rev()
                .filter(|m| m.conversation == format!("c{t}"))
                .map(|m| m.content.clone())
                .collect();
            // Each writer's messages landed in the order it wrote them.
            assert_eq!(
                mine,
                (0..100).map(|i| format!("{t}-{i}")).collect::<Vec<_>>(),
                "{be}"
            );
        }

        // Errors come back as they are.
        let e = store
            .write(|c| queries::insert_bot(c, &bot("dup")))
            .await
            .and(store.write(|c| queries::insert_bot(c, &bot("dup"))).await);
        assert!(matches!(e, Err(StoreError::Conflict(_))), "{be}: {e:?}");
        assert_eq!(
            store.read(|c| queries::update_bot(c, &bot("nobody"))).await,
            Err(StoreError::NotFound)
        );

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
        let got = store
            .write_ordered(|c| queries::get_bot(c, "dup"))
            .await
            .unwrap();
        assert!(got.is_some());
    })
    .await;
}

#[actix::test]
async fn a_panicking_job_is_an_error_and_leaves_no_open_transaction() {
    TestDb::each_async(|db| async move {
        let be = db.backend();
        // One connection per pool, so the next jobs get the connection the panic used
        // (or its replacement).
        let store = StoreHandle::start(db.open(1));
        for _ in 0..3 {
            let e = store
                .write(botd_actors::store::testing::panic_inside_a_transaction)
                .await;
            assert!(
                matches!(&e, Err(StoreError::Query(m)) if m.contains("boom inside a transaction")),
                "{be}: {e:?}"
            );
            let e = store
                .read(|_| -> Result<(), StoreError> { panic!("boom") })
                .await;
            assert!(matches!(e, Err(StoreError::Query(_))), "{be}");
        }
        // The writer thread survived; the panicked transaction was rolled back, and what
        // is written now is committed (visible to a reader connection).
        store
            .write(|c| {
                queries::insert_user(
                    c,
                    &UserRow {
                        username: "real".into(),
                        password_hash: "h".into(),
                        role: "viewer".into(),
                        created_at: 1,
                        updated_at: 1,
                    },
                )
            })
            .await
            .unwrap();
        let names: Vec<String> = store
            .read(queries::list_users)
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.username)
            .collect();
        assert_eq!(names, vec!["real"], "{be}");
        let direct = Db::connect(db.url(), 1, "normal").unwrap();
        let mut c = direct.readers.get().unwrap();
        assert!(queries::get_user(&mut c, "real").unwrap().is_some(), "{be}");
        assert!(
            queries::get_user(&mut c, "ghost").unwrap().is_none(),
            "{be}"
        );
    })
    .await;
}

/// Writes that never pause (one commit each, as fast as the writer takes them), with a
/// reader beside them: the WAL must start over through the checkpointer and the writer's
/// pass between groups, and never grow to the size at which SQLite's own in-commit
/// checkpoint (the safety net) would have done it.
#[actix::test]
async fn the_wal_starts_over_under_writes_that_never_pause() {
    use botd_actors::store::wal::{RESTART_FRAMES, SAFETY_NET_FRAMES};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let db = TestDb::sqlite();
    let d = open(&db);
    let wal = d.wal().expect("a SQLite database has a checkpointer");
    let store = StoreHandle::start(d);
    let sqlite = |f: fn(&mut diesel::SqliteConnection) -> diesel::QueryResult<()>| {
        move |c: &mut DbConn| match c {
            DbConn::Sqlite(c) => f(c).map_err(StoreError::from),
            DbConn::Postgres(_) => unreachable!("a SQLite test"),
        }
    };
    store
        .write(sqlite(|c| c.batch_execute("CREATE TABLE filler (x BLOB)")))
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, stop) = (store.clone(), stop.clone());
        actix::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                store
                    .read(sqlite(|c| c.batch_execute("SELECT max(rowid) FROM filler")))
                    .await
                    .unwrap();
            }
        })
    };
    let mut writes = 0u64;
    let until = Instant::now() + Duration::from_secs(120);
    while wal.restarts() < 5 {
        assert!(
            Instant::now() < until,
            "the WAL started over {} times in {writes} writes",
            wal.restarts()
        );
        store
            .write(sqlite(|c| {
                c.batch_execute("INSERT INTO filler VALUES (randomblob(100))")
            }))
            .await
            .unwrap();
        writes += 1;
    }
    stop.store(true, Ordering::Relaxed);
    reader.await.unwrap();
    let path = db.dir().unwrap().join(
        db.url()
            .rsplit('/')
            .next()
            .map(|f| format!("{f}-wal"))
            .unwrap(),
    );
    let size = std::fs::metadata(&path).unwrap().len();
    let safety_net = u64::from(SAFETY_NET_FRAMES) * 4096;
    assert!(
        size < safety_net,
        "the WAL reached {size} bytes in {writes} writes (restarting at {RESTART_FRAMES} \
         frames; the safety net is {safety_net} bytes)"
    );
}
