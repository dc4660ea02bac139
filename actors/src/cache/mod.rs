//! The conversation-context cache: the last `context_messages` turns of each
//! conversation, so that a bot's next turn need not read them from the database.
//!
//! Every entry is versioned by the id of the newest message of its conversation (in the
//! scope [`queries::context`] reads, [`MessageScope`]) at the time the entry was true. A
//! bot reads that id from the database ([`queries::last_message_id`]) before it stores
//! the user message, and uses an entry only when the versions agree; any message stored
//! since (another instance's turn, a failed or cancelled one) makes it a miss, and the
//! turns are read from the database again. So the cache can be lost, stale or shared and
//! the context still never disagrees with the database.
//!
//! With `redis.url` set, entries live in Redis ([`redis::RedisConn`], bb8-redis) under
//! `redis.key_prefix`; while Redis cannot be reached the in-process map
//! ([`memory::MemoryCache`]) serves instead, with a warning, and Redis is used again as
//! soon as it answers. Without Redis only the in-process map is used. A cache failure
//! never fails a message.
//!
//! [`queries::context`]: crate::store::queries::context
//! [`queries::last_message_id`]: crate::store::queries::last_message_id

pub mod memory;
pub mod redis;

use std::sync::{Arc, LazyLock};

use prometheus::{IntCounterVec, Opts};

use serde::{Deserialize, Serialize};

use crate::llm::client::ChatMessage;
use crate::store::queries::MessageScope;

pub use self::memory::MemoryCache;
pub use self::redis::RedisConn;

/// How long Redis keeps an entry nobody touches, in seconds.
const REDIS_TTL_SECS: u64 = 24 * 3600;

/// Counts a context look-up: `hit` (served by the cache) or `miss` (read from the
/// database), as `botd_context_cache_total{result}`.
pub fn count(result: &'static str) {
    static COUNTER: LazyLock<Option<IntCounterVec>> = LazyLock::new(|| {
        let c = IntCounterVec::new(
            Opts::new(
                "botd_context_cache_total",
                "Conversation-context look-ups by result (hit or miss).",
            ),
            &["result"],
        )
        .ok()?;
        for r in ["hit", "miss"] {
            c.with_label_values(&[r]);
        }
        crate::metrics::Metrics::get()
            .registry
            .register(Box::new(c.clone()))
            .ok()?;
        Some(c)
    });
    if let Some(c) = COUNTER.as_ref() {
        c.with_label_values(&[result]).inc();
    }
}

/// The cached context of one conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    /// The id of the conversation's newest message when these turns were its context.
    pub version: i64,
    /// How many turns were asked for; `turns` has fewer only when the conversation had
    /// no more.
    pub limit: u32,
    /// Oldest first: complete exchanges only, as the model receives them.
    pub turns: Vec<ChatMessage>,
}

impl Context {
    /// The last `n` turns, if this entry is for `version` and holds at least `n` turns
    /// (or all the conversation had).
    pub fn turns_for(&self, version: i64, n: u32) -> Option<Vec<ChatMessage>> {
        let whole = self.turns.len() < self.limit as usize;
        if self.version != version || (self.limit < n && !whole) {
            return None;
        }
        let skip = self.turns.len().saturating_sub(n as usize);
        Some(self.turns[skip..].to_vec())
    }

    /// The entry after one more exchange: its two turns appended, the oldest dropped
    /// beyond `limit`.
    pub fn advanced(mut self, version: i64, user: ChatMessage, reply: ChatMessage) -> Self {
        self.version = version;
        self.turns.push(user);
        self.turns.push(reply);
        let skip = self.turns.len().saturating_sub(self.limit as usize);
        self.turns.drain(..skip);
        self
    }
}

/// The cache key of a conversation in a scope, without the Redis prefix. Names cannot
/// hold `:`, so the key is unambiguous.
pub fn context_key(scope: &MessageScope, conversation: &str) -> String {
    match scope {
        MessageScope::Bot(b) => format!("ctx:bot:{b}:{conversation}"),
        MessageScope::Pool(p) => format!("ctx:pool:{p}:{conversation}"),
    }
}

/// The context cache every bot shares; cheap to clone.
#[derive(Clone)]
pub struct ContextCache {
    memory: Arc<MemoryCache>,
    redis: Option<RedisConn>,
}

impl Default for ContextCache {
    fn default() -> Self {
        Self::in_process()
    }
}

impl ContextCache {
    /// Entries in this process only.
    pub fn in_process() -> Self {
        Self {
            memory: Arc::new(MemoryCache::default()),
            redis: None,
        }
    }

    /// Entries in Redis, in this process while Redis is down.
    pub fn with_redis(redis: RedisConn) -> Self {
        Self {
            memory: Arc::new(MemoryCache::default()),
            redis: Some(redis),
        }
    }

    /// The Redis connection, when one is configured.
    pub fn redis(&self) -> Option<&RedisConn> {
        self.redis.as_ref()
    }

    /// The entry under `key`, if there is one.
    pub async fn get(&self, key: &str) -> Option<Context> {
        if let Some(r) = &self.redis {
            if r.available() {
                if let Some(value) = r.get(key).await {
                    return value.and_then(|v| serde_json::from_str(&v).ok());
                }
            }
        }
        self.memory.get(key)
    }

    /// Stores the entry under `key`.
    pub async fn put(&self, key: &str, context: Context) {
        if let Some(r) = &self.redis {
            if r.available() {
                if let Ok(value) = serde_json::to_string(&context) {
                    if r.set_ex(key, &value, REDIS_TTL_SECS).await {
                        return;
                    }
                }
            }
        }
        self.memory.put(key, context);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turn(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
        }
    }

    #[test]
    fn an_entry_serves_only_its_version_and_at_most_its_limit() {
        let c = Context {
            version: 7,
            limit: 2,
            turns: vec![turn("user", "a"), turn("assistant", "b")],
        };
        assert_eq!(c.turns_for(6, 2), None);
        assert_eq!(c.turns_for(7, 3), None, "a full entry cannot serve more");
        assert_eq!(c.turns_for(7, 1).unwrap(), vec![turn("assistant", "b")]);
        let short = Context {
            version: 7,
            limit: 10,
            turns: vec![turn("user", "a"), turn("assistant", "b")],
        };
        assert_eq!(
            short.turns_for(7, 50).unwrap().len(),
            2,
            "the whole history"
        );
    }

    #[test]
    fn advancing_keeps_the_newest_turns() {
        let c = Context {
            version: 2,
            limit: 3,
            turns: vec![turn("user", "a"), turn("assistant", "b")],
        };
        let c = c.advanced(4, turn("user", "c"), turn("assistant", "d"));
        assert_eq!(c.version, 4);
        assert_eq!(
            c.turns,
            vec![
                turn("assistant", "b"),
                turn("user", "c"),
                turn("assistant", "d")
            ]
        );
    }

    #[test]
    fn keys_tell_bots_pools_and_conversations_apart() {
        let a = context_key(&MessageScope::Bot("x".into()), "c:1");
        let b = context_key(&MessageScope::Pool("x".into()), "c:1");
        assert_ne!(a, b);
        assert_eq!(a, "ctx:bot:x:c:1");
    }
}
