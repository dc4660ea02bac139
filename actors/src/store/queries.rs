//! Every query botd runs, as plain functions over a connection of either backend.

use diesel::prelude::*;
use serde::Serialize;

use super::schema::{bots, events, messages, pools, users};
use super::{DbConn, StoreError};
use crate::with_conn;

type Result<T> = std::result::Result<T, StoreError>;

/// A bot's row: its spec, desired state and failure.
#[derive(
    Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, AsChangeset, Serialize,
)]
#[diesel(table_name = bots, treat_none_as_null = true)]
pub struct BotRow {
    pub name: String,
    pub model: String,
    pub system_prompt: Option<String>,
    pub pool: Option<String>,
    /// 1 when the pool's autoscaler created it.
    pub managed: i32,
    pub restart: String,
    pub concurrency: i32,
    pub mailbox_capacity: i32,
    pub context_messages: i32,
    /// A JSON object.
    pub options: String,
    /// `running` or `stopped`: what the operator asked for.
    pub desired_state: String,
    /// Set while the bot is failed (restart limit reached).
    pub failed_reason: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A pool's row.
#[derive(
    Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable, AsChangeset, Serialize,
)]
#[diesel(table_name = pools)]
pub struct PoolRow {
    pub name: String,
    /// The members' spec as JSON.
    pub template: String,
    pub min_bots: i32,
    pub max_bots: i32,
    pub scale_up_queue_depth: i32,
    pub scale_down_idle_secs: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A stored message (a user's or a reply).
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Serialize)]
#[diesel(table_name = messages)]
pub struct MessageRow {
    pub id: i64,
    pub bot: String,
    pub pool: Option<String>,
    pub conversation: String,
    pub role: String,
    pub content: String,
    pub status: String,
    pub reply_to: Option<i64>,
    pub model: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub queue_ms: Option<i64>,
    pub llm_ms: Option<i64>,
    pub total_ms: Option<i64>,
    pub error: Option<String>,
    pub created_at: i64,
}

/// A message to store. `None` is bound as NULL (every optional column defaults to NULL),
/// so the INSERT's text is the same for every row and its prepared statement is cached.
#[derive(Debug, Clone, Default, PartialEq, Eq, Insertable)]
#[diesel(table_name = messages, treat_none_as_default_value = false)]
pub struct NewMessage {
    pub bot: String,
    pub pool: Option<String>,
    pub conversation: String,
    pub role: String,
    pub content: String,
    pub status: String,
    pub reply_to: Option<i64>,
    pub model: Option<String>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub queue_ms: Option<i64>,
    pub llm_ms: Option<i64>,
    pub total_ms: Option<i64>,
    pub error: Option<String>,
    pub created_at: i64,
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Serialize)]
#[diesel(table_name = events)]
pub struct EventRow {
    pub id: i64,
    pub ts: i64,
    pub bot: Option<String>,
    pub pool: Option<String>,
    pub kind: String,
    pub subject: String,
    /// A JSON object; never a secret.
    pub detail: String,
}

/// An event to store (`None` bound as NULL, as for [`NewMessage`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Insertable)]
#[diesel(table_name = events, treat_none_as_default_value = false)]
pub struct NewEvent {
    pub ts: i64,
    pub bot: Option<String>,
    pub pool: Option<String>,
    pub kind: String,
    pub subject: String,
    pub detail: String,
}

/// A user's row.
#[derive(Debug, Clone, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub struct UserRow {
    pub username: String,
    pub password_hash: String,
    pub role: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Whose messages: a bot's own conversations, or a pool's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageScope {
    Bot(String),
    Pool(String),
}

/// Runs `f` in one transaction: every write it makes commits, or none does.
pub fn in_transaction<R>(conn: &mut DbConn, f: impl FnOnce(&mut DbConn) -> Result<R>) -> Result<R> {
    use diesel::connection::{AnsiTransactionManager, TransactionManager};
    with_conn!(conn, c => AnsiTransactionManager::begin_transaction(c))?;
    match f(conn) {
        Ok(r) => {
            with_conn!(conn, c => AnsiTransactionManager::commit_transaction(c))?;
            Ok(r)
        }
        Err(e) => {
            // The error that ended the transaction is the one worth reporting.
            let _ = with_conn!(conn, c => AnsiTransactionManager::rollback_transaction(c));
            Err(e)
        }
    }
}

// ---- bots ----

/// Stores a new bot; `Conflict` when the name is taken.
pub fn insert_bot(conn: &mut DbConn, row: &BotRow) -> Result<()> {
    with_conn!(conn, c => diesel::insert_into(bots::table).values(row).execute(c))?;
    Ok(())
}

pub fn get_bot(conn: &mut DbConn, name: &str) -> Result<Option<BotRow>> {
    Ok(
        with_conn!(conn, c => bots::table.find(name).select(BotRow::as_select()).first(c).optional())?,
    )
}

/// Every bot, sorted by name.
pub fn list_bots(conn: &mut DbConn) -> Result<Vec<BotRow>> {
    Ok(
        with_conn!(conn, c => bots::table.order(bots::name.asc()).select(BotRow::as_select()).load(c))?,
    )
}

/// The bots to consider at start-up: all of them, sorted by name. The caller runs those
/// whose `desired_state` is `running` and whose `failed_reason` is unset, and keeps the
/// others in their stopped or failed state.
pub fn list_bots_to_restore(conn: &mut DbConn) -> Result<Vec<BotRow>> {
    list_bots(conn)
}

/// Replaces a bot's row (spec, desired state, failure, `updated_at`); `NotFound` when
/// there is no such bot.
pub fn update_bot(conn: &mut DbConn, row: &BotRow) -> Result<()> {
    let n = with_conn!(conn, c => diesel::update(bots::table.find(&row.name)).set(row).execute(c))?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Sets what the operator asked for: `running` or `stopped`.
pub fn set_desired_state(conn: &mut DbConn, name: &str, state: &str, now: i64) -> Result<()> {
    let n = with_conn!(conn, c => diesel::update(bots::table.find(name))
        .set((bots::desired_state.eq(state), bots::updated_at.eq(now)))
        .execute(c))?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Marks a bot failed with its reason, or clears the failure with `None`.
pub fn set_failed(conn: &mut DbConn, name: &str, reason: Option<&str>, now: i64) -> Result<()> {
    let n = with_conn!(conn, c => diesel::update(bots::table.find(name))
        .set((bots::failed_reason.eq(reason), bots::updated_at.eq(now)))
        .execute(c))?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Deletes a bot; with `purge_history` also its own conversations (in one transaction).
/// The turns it answered for a pool stay: pool conversations belong to the pool. Purging
/// works when the row is already gone too. Returns whether the bot's row existed.
pub fn delete_bot(conn: &mut DbConn, name: &str, purge_history: bool) -> Result<bool> {
    let n = with_conn!(conn, c => c.transaction::<_, diesel::result::Error, _>(|c| {
        if purge_history {
            diesel::delete(
                messages::table
                    .filter(messages::bot.eq(name))
                    .filter(messages::pool.is_null()),
            )
            .execute(c)?;
        }
        diesel::delete(bots::table.find(name)).execute(c)
    }))?;
    Ok(n > 0)
}

// ---- pools ----

/// Creates a pool or replaces its settings; an existing pool keeps its `created_at`.
pub fn upsert_pool(conn: &mut DbConn, row: &PoolRow) -> Result<()> {
    use diesel::upsert::excluded;
    // One statement, so two concurrent upserts of one name cannot both insert.
    with_conn!(conn, c => diesel::insert_into(pools::table)
        .values(row)
        .on_conflict(pools::name)
        .do_update()
        .set((
            pools::template.eq(excluded(pools::template)),
            pools::min_bots.eq(excluded(pools::min_bots)),
            pools::max_bots.eq(excluded(pools::max_bots)),
            pools::scale_up_queue_depth.eq(excluded(pools::scale_up_queue_depth)),
            pools::scale_down_idle_secs.eq(excluded(pools::scale_down_idle_secs)),
            pools::updated_at.eq(excluded(pools::updated_at)),
        ))
        .execute(c))?;
    Ok(())
}

pub fn get_pool(conn: &mut DbConn, name: &str) -> Result<Option<PoolRow>> {
    Ok(
        with_conn!(conn, c => pools::table.find(name).select(PoolRow::as_select()).first(c).optional())?,
    )
}

/// Every pool, sorted by name.
pub fn list_pools(conn: &mut DbConn) -> Result<Vec<PoolRow>> {
    Ok(
        with_conn!(conn, c => pools::table.order(pools::name.asc()).select(PoolRow::as_select()).load(c))?,
    )
}

/// Deletes a pool's row (not its bots, not its history); returns whether it existed.
pub fn delete_pool(conn: &mut DbConn, name: &str) -> Result<bool> {
    let n = with_conn!(conn, c => diesel::delete(pools::table.find(name)).execute(c))?;
    Ok(n > 0)
}

// ---- messages ----

/// Stores a message (a user message is stored `pending`); returns its id.
pub fn insert_message(conn: &mut DbConn, row: &NewMessage) -> Result<i64> {
    Ok(with_conn!(conn, c => diesel::insert_into(messages::table)
        .values(row)
        .returning(messages::id)
        .get_result::<i64>(c))?)
}

/// Stores a reply and marks its user message complete, in one transaction: either both
/// happen or neither. The reply gets `reply_to = user_id` and status `complete` whatever
/// `reply` says. Returns the reply's id; `NotFound` (and nothing stored) when there is no
/// message `user_id`.
pub fn complete_exchange(conn: &mut DbConn, user_id: i64, reply: &NewMessage) -> Result<i64> {
    Ok(
        with_conn!(conn, c => c.transaction::<_, diesel::result::Error, _>(|c| {
            let n = diesel::update(messages::table.find(user_id))
                .set((messages::status.eq("complete"), messages::error.eq(None::<String>)))
                .execute(c)?;
            if n == 0 {
                return Err(diesel::result::Error::NotFound);
            }
            let mut reply = reply.clone();
            reply.reply_to = Some(user_id);
            reply.status = "complete".into();
            diesel::insert_into(messages::table)
                .values(&reply)
                .returning(messages::id)
                .get_result::<i64>(c)
        }))?,
    )
}

/// Sets a message's final status (`failed`, `cancelled`, …) and the error code it ended
/// with. A message that no longer exists (its bot was purged meanwhile) is not an error.
pub fn set_message_status(
    conn: &mut DbConn,
    id: i64,
    status: &str,
    error: Option<&str>,
) -> Result<()> {
    with_conn!(conn, c => diesel::update(messages::table.find(id))
        .set((messages::status.eq(status), messages::error.eq(error)))
        .execute(c))?;
    Ok(())
}

/// A page of history, newest first: ids below `before`, at most `limit`. A bot's scope
/// holds every message it handled (its pools' turns too); a pool's, its conversations.
/// The next page is `before = last row's id`.
pub fn history(
    conn: &mut DbConn,
    scope: &MessageScope,
    conversation: Option<&str>,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<MessageRow>> {
    Ok(with_conn!(conn, c => {
        let mut q = messages::table.select(MessageRow::as_select()).into_boxed();
        q = match scope {
            MessageScope::Bot(b) => q.filter(messages::bot.eq(b)),
            MessageScope::Pool(p) => q.filter(messages::pool.eq(p)),
        };
        if let Some(conv) = conversation {
            q = q.filter(messages::conversation.eq(conv));
        }
        if let Some(before) = before {
            q = q.filter(messages::id.lt(before));
        }
        q.order(messages::id.desc()).limit(limit.max(0)).load(c)
    })?)
}

/// The model's context: the last `n` complete messages of a conversation, oldest first.
/// A bot's own conversations leave out what it answered for a pool.
pub fn context(
    conn: &mut DbConn,
    scope: &MessageScope,
    conversation: &str,
    n: i64,
) -> Result<Vec<MessageRow>> {
    if n <= 0 {
        return Ok(Vec::new());
    }
    // One static query per scope, not a boxed one: diesel caches the prepared statement
    // of a static query, and this one runs for every message.
    macro_rules! base {
        () => {
            messages::table
                .select(MessageRow::as_select())
                .filter(messages::conversation.eq(conversation))
                .filter(messages::status.eq("complete"))
        };
    }
    let mut rows: Vec<MessageRow> = match scope {
        MessageScope::Bot(b) => with_conn!(conn, c => base!()
            .filter(messages::bot.eq(b))
            .filter(messages::pool.is_null())
            .order(messages::id.desc())
            .limit(n)
            .load(c))?,
        MessageScope::Pool(p) => with_conn!(conn, c => base!()
            .filter(messages::pool.eq(p))
            .order(messages::id.desc())
            .limit(n)
            .load(c))?,
    };
    rows.reverse();
    Ok(rows)
}

/// The newest message id of a conversation in the same scope as [`context`] (the context
/// cache's version: any message stored in it changes the answer).
pub fn last_message_id(
    conn: &mut DbConn,
    scope: &MessageScope,
    conversation: &str,
) -> Result<Option<i64>> {
    Ok(with_conn!(conn, c => {
        let mut q = messages::table
            .select(messages::id)
            .filter(messages::conversation.eq(conversation))
            .into_boxed();
        q = match scope {
            MessageScope::Bot(b) => q.filter(messages::bot.eq(b)).filter(messages::pool.is_null()),
            MessageScope::Pool(p) => q.filter(messages::pool.eq(p)),
        };
        q.order(messages::id.desc()).first::<i64>(c).optional()
    })?)
}

/// At start-up: messages left pending by a crash of the daemon become failed with
/// `error`; returns how many.
pub fn fail_pending(conn: &mut DbConn, error: &str) -> Result<usize> {
    Ok(
        with_conn!(conn, c => diesel::update(messages::table.filter(messages::status.eq("pending")))
        .set((messages::status.eq("failed"), messages::error.eq(error)))
        .execute(c))?,
    )
}

/// Deletes at most `batch` messages created before `cutoff_ms`; returns how many.
/// One batch of retention: deletes at most `batch_size` messages created before
/// `cutoff_ms`, oldest first, in one statement; returns how many. The caller loops (and
/// yields) until it returns less than `batch_size`.
pub fn delete_messages_older_than(
    conn: &mut DbConn,
    cutoff_ms: i64,
    batch_size: i64,
) -> Result<usize> {
    if batch_size <= 0 {
        return Ok(0);
    }
    // The subquery reads the same table under another name.
    let old = diesel::alias!(messages as old_messages);
    Ok(with_conn!(conn, c => {
        let ids = old
            .select(old.field(messages::id))
            .filter(old.field(messages::created_at).lt(cutoff_ms))
            .order(old.field(messages::id).asc())
            .limit(batch_size);
        diesel::delete(messages::table.filter(messages::id.eq_any(ids))).execute(c)
    })?)
}

/// Writes a consistent copy of a SQLite database to `path` with `VACUUM INTO` (a read
/// transaction: writers go on meanwhile). `path` must not exist. On PostgreSQL it is a
/// `Config` error: pg_dump is the tool there.
pub fn vacuum_into(conn: &mut DbConn, path: &str) -> Result<()> {
    match conn {
        DbConn::Sqlite(c) => {
            diesel::sql_query("VACUUM INTO ?")
                .bind::<diesel::sql_types::Text, _>(path)
                .execute(c)?;
            Ok(())
        }
        DbConn::Postgres(_) => Err(StoreError::Config(
            "a PostgreSQL database is backed up with pg_dump".into(),
        )),
    }
}

// ---- events ----

/// Stores an event; returns its id.
pub fn insert_event(conn: &mut DbConn, row: &NewEvent) -> Result<i64> {
    Ok(with_conn!(conn, c => diesel::insert_into(events::table)
        .values(row)
        .returning(events::id)
        .get_result::<i64>(c))?)
}

/// Events newest first, at most `limit`, optionally of one bot, pool and/or kind (the
/// filters combine).
pub fn list_events(
    conn: &mut DbConn,
    bot: Option<&str>,
    pool: Option<&str>,
    kind: Option<&str>,
    limit: i64,
) -> Result<Vec<EventRow>> {
    Ok(with_conn!(conn, c => {
        let mut q = events::table.select(EventRow::as_select()).into_boxed();
        if let Some(b) = bot {
            q = q.filter(events::bot.eq(b));
        }
        if let Some(p) = pool {
            q = q.filter(events::pool.eq(p));
        }
        if let Some(k) = kind {
            q = q.filter(events::kind.eq(k));
        }
        q.order(events::id.desc()).limit(limit.max(0)).load(c)
    })?)
}

// ---- users ----

/// Stores a new user; `Conflict` when the name is taken.
pub fn insert_user(conn: &mut DbConn, row: &UserRow) -> Result<()> {
    with_conn!(conn, c => diesel::insert_into(users::table).values(row).execute(c))?;
    Ok(())
}

pub fn get_user(conn: &mut DbConn, username: &str) -> Result<Option<UserRow>> {
    Ok(
        with_conn!(conn, c => users::table.find(username).select(UserRow::as_select()).first(c).optional())?,
    )
}

/// Every user, sorted by name.
pub fn list_users(conn: &mut DbConn) -> Result<Vec<UserRow>> {
    Ok(
        with_conn!(conn, c => users::table.order(users::username.asc()).select(UserRow::as_select()).load(c))?,
    )
}

/// What [`update_user`] changes: the fields given, and always `updated_at`.
#[derive(AsChangeset)]
#[diesel(table_name = users)]
struct UserChanges<'a> {
    password_hash: Option<&'a str>,
    role: Option<&'a str>,
    updated_at: i64,
}

/// Changes a user's password hash and/or role; `NotFound` when there is no such user.
pub fn update_user(
    conn: &mut DbConn,
    username: &str,
    password_hash: Option<&str>,
    role: Option<&str>,
    now: i64,
) -> Result<()> {
    let changes = UserChanges {
        password_hash,
        role,
        updated_at: now,
    };
    let n = with_conn!(conn, c => diesel::update(users::table.find(username)).set(&changes).execute(c))?;
    if n == 0 {
        return Err(StoreError::NotFound);
    }
    Ok(())
}

/// Deletes a user; returns whether it existed.
pub fn delete_user(conn: &mut DbConn, username: &str) -> Result<bool> {
    let n = with_conn!(conn, c => diesel::delete(users::table.find(username)).execute(c))?;
    Ok(n > 0)
}
