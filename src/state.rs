//! What every request handler shares.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use botd_actors::cache::RedisConn;
use botd_actors::llm::pool::LlmService;
use botd_actors::registry::RegistryHandle;
use botd_actors::store::StoreHandle;
use slog::Logger;

use crate::auth::JwtKeys;
use crate::config::Config;
use crate::telemetry::LogHub;

/// Where the daemon is in its life, for `/readyz`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting = 0,
    Ready = 1,
    ShuttingDown = 2,
}

/// The daemon's phase, shared between the lifecycle code and the HTTP handlers.
#[derive(Debug, Default)]
pub struct PhaseCell(AtomicU8);

impl PhaseCell {
    pub fn get(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::ShuttingDown,
        }
    }

    pub fn set(&self, phase: Phase) {
        self.0.store(phase as u8, Ordering::Release);
    }
}

/// Shared by every handler; cheap to clone through its `Arc`.
pub struct AppState {
    /// The configuration the daemon started with.
    pub config: Arc<Config>,
    pub registry: RegistryHandle,
    pub store: StoreHandle,
    pub llm: LlmService,
    /// Redis, when `redis.url` is set (the context cache's; shareable).
    pub redis: Option<RedisConn>,
    /// Keys for checking (and minting) tokens.
    pub jwt: JwtKeys,
    /// When the daemon started, for `uptime_secs`.
    pub started: Instant,
    pub phase: PhaseCell,
    pub log: Logger,
    /// The log rings and followers' channel behind the tail endpoints.
    pub logs: LogHub,
    /// What the token check knows of the users table (user tokens).
    pub users: crate::auth::UserCheck,
    /// Request and login rate limits.
    pub limits: crate::ratelimit::RateLimits,
}

/// The request id of the current request, set by the server before routing.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// The client's address, set by the server before routing.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::SocketAddr);
