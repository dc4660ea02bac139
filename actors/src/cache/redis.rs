//! A Redis connection pool (bb8-redis) that knows whether Redis is up.
//!
//! Every command runs with a short timeout. The first failure marks Redis down and logs
//! one warning; while it is down, callers skip Redis ([`RedisConn::available`] is false)
//! except for one probe a second, so an outage costs requests almost nothing. The first
//! command that succeeds again marks it up and logs that. Shared by whatever keeps state
//! in Redis (the context cache; rate limits can use the same pool).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bb8_redis::bb8::Pool;
use bb8_redis::RedisConnectionManager;
use redis::FromRedisValue;
use slog::{info, warn, Logger};

use crate::model::{now_ms, EngineError};

/// How long one command (with getting its connection) may take.
const COMMAND_TIMEOUT: Duration = Duration::from_millis(500);
/// How long getting a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
/// While Redis is down, how often a command may try it anyway.
const PROBE_INTERVAL_MS: i64 = 1000;

/// A pooled Redis connection with up/down tracking; cheap to clone.
#[derive(Clone)]
pub struct RedisConn {
    pool: Pool<RedisConnectionManager>,
    /// `redis.key_prefix`, put before every key.
    prefix: Arc<str>,
    health: Arc<Health>,
    log: Logger,
}

#[derive(Default)]
struct Health {
    /// Whether the last command succeeded.
    down: AtomicBool,
    /// While down: when (Unix ms) the next probe may go.
    probe_at_ms: AtomicI64,
}

impl RedisConn {
    /// A pool for `url` (`redis://` or `rediss://`). Connects lazily: a Redis that is down
    /// at start is only reported down. Needs a tokio runtime.
    pub fn new(url: &str, prefix: &str, log: Logger) -> Result<Self, EngineError> {
        // The URL may hold a password: errors name the key, never the value.
        let manager = RedisConnectionManager::new(url)
            .map_err(|_| EngineError::InvalidField("redis.url: not a valid Redis URL".into()))?;
        let pool = Pool::builder()
            .max_size(16)
            .connection_timeout(CONNECT_TIMEOUT)
            // A broken multiplexed connection is only found by using it: check it on
            // every checkout so that a dead one is replaced.
            .test_on_check_out(true)
            .build_unchecked(manager);
        Ok(Self {
            pool,
            prefix: Arc::from(prefix),
            health: Arc::default(),
            log,
        })
    }

    /// `key` under `redis.key_prefix`.
    pub fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether the last command succeeded.
    pub fn is_up(&self) -> bool {
        !self.health.down.load(Ordering::Acquire)
    }

    /// Whether a command should try Redis now: it is up, or a probe is due.
    pub fn available(&self) -> bool {
        self.is_up() || now_ms() >= self.health.probe_at_ms.load(Ordering::Acquire)
    }

    /// Runs one command; `None` when Redis failed (and is now marked down).
    pub async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        let run = async {
            let mut conn = self.pool.get().await.map_err(|e| e.to_string())?;
            cmd.query_async::<T>(&mut *conn)
                .await
                .map_err(|e| e.to_string())
        };
        let result = match tokio::time::timeout(COMMAND_TIMEOUT, run).await {
            Ok(r) => r,
            Err(_) => Err("timed out".to_owned()),
        };
        match result {
            Ok(v) => {
                self.mark_up();
                Some(v)
            }
            Err(e) => {
                self.mark_down(&e);
                None
            }
        }
    }

    /// `GET` of `key` under the prefix: `None` when Redis failed, `Some(None)` when the
    /// key is not there.
    pub async fn get(&self, key: &str) -> Option<Option<String>> {
        self.query(redis::cmd("GET").arg(self.key(key))).await
    }

    /// `SET` of `key` under the prefix, expiring after `ttl_secs`; whether it was stored.
    pub async fn set_ex(&self, key: &str, value: &str, ttl_secs: u64) -> bool {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(key)).arg(value).arg("EX").arg(ttl_secs);
        self.query::<()>(&cmd).await.is_some()
    }

    /// Sends `PING` (for `/readyz`): whether Redis answered.
    pub async fn ping(&self) -> bool {
        self.query::<String>(&redis::cmd("PING")).await.is_some()
    }

    fn mark_up(&self) {
        if self.health.down.swap(false, Ordering::AcqRel) {
            info!(self.log, "Redis is reachable again; it is used again.");
        }
    }

    fn mark_down(&self, error: &str) {
        self.health
            .probe_at_ms
            .store(now_ms() + PROBE_INTERVAL_MS, Ordering::Release);
        if !self.health.down.swap(true, Ordering::AcqRel) {
            warn!(self.log, "Redis cannot be reached; the in-process cache serves meanwhile."; "error" => error);
        }
    }
}
