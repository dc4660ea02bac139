//! Rate limits: token buckets per key, in process or shared through Redis.
//!
//! A [`Limiter`] holds one bucket per key (a token subject, a client IP, a client IP and
//! username for logins): `per_minute` tokens refilled evenly over a minute, a burst of the
//! same number. With `redis.url` set the buckets live in Redis under `redis.key_prefix`
//! (one atomic Lua script per request, with Redis's own clock), so every daemon on that
//! Redis spends one budget. When Redis cannot be reached, the limiter falls back to its
//! local buckets with a warning, and tries Redis again after [`REDIS_RETRY`]: a Redis
//! outage never fails a request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bb8_redis::RedisConnectionManager;
use bb8_redis::{bb8, redis};
use slog::{info, warn, Logger};

/// How long a Redis call may take before the local buckets answer instead.
const REDIS_TIMEOUT: Duration = Duration::from_millis(500);
/// How long the limiter stays local after Redis failed, before trying it again.
const REDIS_RETRY: Duration = Duration::from_secs(1);
/// Local buckets kept at most; full (idle) ones are dropped first when there are more.
const MAX_LOCAL_BUCKETS: usize = 100_000;

/// One token bucket: the whole-minute budget, refilled evenly.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Takes a token, or says how long until one is there.
    fn take(&mut self, per_minute: u32, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(per_minute);
        let per_sec = burst / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / per_sec))
        }
    }

    fn is_full(&self, per_minute: u32, now: Instant) -> bool {
        let per_sec = f64::from(per_minute) / 60.0;
        self.tokens + now.saturating_duration_since(self.at).as_secs_f64() * per_sec
            >= f64::from(per_minute)
    }
}

/// The token bucket in Redis: a hash of `tokens` and `ts` (ms, Redis's clock), kept a
/// little over a minute after its last use. Returns `{allowed, wait_ms}`.
const BUCKET_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local burst = tonumber(ARGV[1])
local per_ms = burst / 60000
local v = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(v[1])
local ts = tonumber(v[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * per_ms)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) / per_ms)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], 61000)
return {allowed, wait}
"#;

/// The shared Redis side of every limiter: one pool, made on first use (it must be made
/// on the runtime that uses it), and what is known of Redis's health.
pub struct RedisBuckets {
    url: String,
    prefix: String,
    pool: tokio::sync::OnceCell<bb8::Pool<RedisConnectionManager>>,
    /// While set and in the future, the local buckets answer without asking Redis.
    down_until: Mutex<Option<Instant>>,
    /// Whether the last attempt failed (so the warning and the recovery are logged once).
    down: AtomicBool,
    log: Logger,
}

impl RedisBuckets {
    pub fn new(url: &str, prefix: &str, log: Logger) -> Self {
        Self {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            pool: tokio::sync::OnceCell::new(),
            down_until: Mutex::new(None),
            down: AtomicBool::new(false),
            log,
        }
    }

    async fn pool(&self) -> Result<&bb8::Pool<RedisConnectionManager>, String> {
        self.pool
            .get_or_try_init(|| async {
                let manager =
                    RedisConnectionManager::new(self.url.as_str()).map_err(|e| e.to_string())?;
                bb8::Pool::builder()
                    .max_size(16)
                    .connection_timeout(REDIS_TIMEOUT)
                    .build(manager)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
    }

    async fn take_remote(
        &self,
        key: &str,
        per_minute: u32,
    ) -> Result<Result<(), Duration>, String> {
        let pool = self.pool().await?;
        let mut conn = pool.get().await.map_err(|e| e.to_string())?;
        // EVAL (not EVALSHA): the script is short, and a Redis restart forgets scripts.
        let (allowed, wait_ms): (i64, i64) = redis::cmd("EVAL")
            .arg(BUCKET_SCRIPT)
            .arg(1)
            .arg(format!("{}rl:{key}", self.prefix))
            .arg(per_minute)
            .query_async(&mut *conn)
            .await
            .map_err(|e| e.to_string())?;
        Ok(if allowed == 1 {
            Ok(())
        } else {
            Err(Duration::from_millis(wait_ms.max(1) as u64))
        })
    }

    /// Takes a token from the shared bucket; `None` when Redis could not answer.
    async fn take(&self, key: &str, per_minute: u32) -> Option<Result<(), Duration>> {
        let skip = self
            .down_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| Instant::now() < t);
        if skip {
            return None;
        }
        let outcome = tokio::time::timeout(REDIS_TIMEOUT, self.take_remote(key, per_minute))
            .await
            .unwrap_or_else(|_| Err("timed out".into()));
        match outcome {
            Ok(r) => {
                if self.down.swap(false, Ordering::AcqRel) {
                    info!(
                        self.log,
                        "Redis answers again; rate limits are shared again."
                    );
                }
                Some(r)
            }
            Err(error) => {
                *self.down_until.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(Instant::now() + REDIS_RETRY);
                if !self.down.swap(true, Ordering::AcqRel) {
                    warn!(self.log, "Redis cannot be reached; rate limits fall back to this daemon's own buckets."; "error" => error);
                }
                None
            }
        }
    }
}

/// A rate limit: one bucket per key, `per_minute` tokens a minute (changed live).
pub struct Limiter {
    /// Part of every Redis key, so limits of different kinds never share a bucket.
    namespace: &'static str,
    per_minute: AtomicU32,
    local: Mutex<HashMap<String, Bucket>>,
    redis: Option<Arc<RedisBuckets>>,
}

impl Limiter {
    pub fn new(namespace: &'static str, per_minute: u32, redis: Option<Arc<RedisBuckets>>) -> Self {
        Self {
            namespace,
            per_minute: AtomicU32::new(per_minute.max(1)),
            local: Mutex::new(HashMap::new()),
            redis,
        }
    }

    /// Changes the budget (SIGHUP); buckets keep their tokens, capped at the new burst.
    pub fn set_per_minute(&self, per_minute: u32) {
        self.per_minute.store(per_minute.max(1), Ordering::Release);
    }

    pub fn per_minute(&self) -> u32 {
        self.per_minute.load(Ordering::Acquire)
    }

    /// Takes a token for `key`, or answers how long to wait (whole seconds, at least 1).
    pub async fn check(&self, key: &str) -> Result<(), u64> {
        let per_minute = self.per_minute();
        let result = match &self.redis {
            Some(redis) => match redis
                .take(&format!("{}:{key}", self.namespace), per_minute)
                .await
            {
                Some(r) => r,
                None => self.take_local(key, per_minute),
            },
            None => self.take_local(key, per_minute),
        };
        result.map_err(|wait| wait.as_secs_f64().ceil().max(1.0) as u64)
    }

    fn take_local(&self, key: &str, per_minute: u32) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.local.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_LOCAL_BUCKETS && !buckets.contains_key(key) {
            buckets.retain(|_, b| !b.is_full(per_minute, now));
            if buckets.len() >= MAX_LOCAL_BUCKETS {
                buckets.clear();
            }
        }
        buckets
            .entry(key.to_owned())
            .or_insert(Bucket {
                tokens: f64::from(per_minute),
                at: now,
            })
            .take(per_minute, now)
    }
}

/// The daemon's limits: requests per subject (or client IP), and logins per client IP and
/// username.
pub struct RateLimits {
    /// `rate_limit.requests_per_minute`.
    pub requests: Limiter,
    /// `auth.login_attempts_per_minute`.
    pub logins: Limiter,
}

impl RateLimits {
    /// Shared through Redis when `redis_url` is set.
    pub fn new(
        requests_per_minute: u32,
        logins_per_minute: u32,
        redis_url: Option<&str>,
        redis_prefix: &str,
        log: &Logger,
    ) -> Self {
        let redis =
            redis_url.map(|url| Arc::new(RedisBuckets::new(url, redis_prefix, log.clone())));
        Self {
            requests: Limiter::new("req", requests_per_minute, redis.clone()),
            logins: Limiter::new("login", logins_per_minute, redis),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bucket_allows_its_burst_then_says_how_long_to_wait() {
        let l = Limiter::new("t", 3, None);
        for _ in 0..3 {
            assert_eq!(l.check("a").await, Ok(()));
        }
        // One token comes back every 20 s.
        let wait = l.check("a").await.unwrap_err();
        assert!((1..=20).contains(&wait), "{wait}");
        // Another key has its own bucket.
        assert_eq!(l.check("b").await, Ok(()));
    }

    #[tokio::test]
    async fn a_raised_budget_applies_at_once() {
        let l = Limiter::new("t", 1, None);
        assert_eq!(l.check("a").await, Ok(()));
        assert!(l.check("a").await.is_err());
        l.set_per_minute(600_000);
        // Refilled at the new rate: 10 000 a second.
        let until = Instant::now() + Duration::from_secs(5);
        while l.check("a").await.is_err() {
            assert!(Instant::now() < until, "the new budget never applied");
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn refilling_never_passes_the_burst() {
        let now = Instant::now();
        let mut b = Bucket {
            tokens: 0.0,
            at: now,
        };
        assert!(b.take(60, now).is_err());
        let later = now + Duration::from_secs(3600);
        assert!(b.is_full(60, later));
        for _ in 0..60 {
            assert!(b.take(60, later).is_ok());
        }
        assert!(b.take(60, later).is_err());
    }
}
