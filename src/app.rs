//! The daemon's life: build everything in start order, serve, and stop gracefully.
//!
//! Start order: database and migrations → actors → bots restored → HTTP listening. The
//! actors live on an actix `System` in a thread of their own; HTTP runs on its own
//! multi-threaded tokio runtime and talks to them through their addresses. Tests start
//! the daemon with the same [`Daemon::start`] as `main`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::Context as _;
use botd_actors::cache::{ContextCache, RedisConn};
use botd_actors::llm::pool::{LlmService, SetLimits};
use botd_actors::registry::{Registry, RegistryHandle};
use botd_actors::settings::LlmSettings;
use botd_actors::store::{Db, StoreHandle};
use slog::{info, warn, Logger};
use tokio_util::sync::CancellationToken;

use crate::auth::{load_secret, JwtKeys};
use crate::config::{Config, SqliteSynchronous};
use crate::notify::{self, Notifier};
use crate::server::{self, ServeOptions};
use crate::state::{AppState, Phase, PhaseCell};
use crate::telemetry::{LevelSwitch, LogHub};

/// A running daemon.
pub struct Daemon {
    /// Where the HTTP listener is bound (port 0 resolved).
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    shutdown: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    level: LevelSwitch,
    /// The configuration in force: the start-up one, then each reloaded one.
    current: std::sync::Mutex<Config>,
}

/// Opens the database and runs the migrations (also `botd migrate`).
pub fn open_database(config: &Config, log: &Logger) -> anyhow::Result<Db> {
    let sync = match config.database.sqlite_synchronous {
        SqliteSynchronous::Normal => "normal",
        SqliteSynchronous::Full => "full",
    };
    let db = Db::connect(&config.database.url, config.database.pool_size, sync)
        .map_err(|e| anyhow::anyhow!("database.url: {e}"))?;
    let applied = db
        .run_migrations()
        .map_err(|e| anyhow::anyhow!("database migrations failed: {e}"))?;
    info!(log, "The database is ready."; "backend" => db.backend(), "migrations_applied" => applied.len());
    Ok(db)
}

impl Daemon {
    /// Builds and starts everything; returns once the listener accepts requests.
    pub fn start(
        config: Config,
        log: Logger,
        level: LevelSwitch,
        logs: LogHub,
    ) -> anyhow::Result<Daemon> {
        let secret = load_secret(
            config.auth.jwt_secret.as_deref(),
            &config.auth.jwt_secret_file,
            true,
        )?
        .context("the JWT secret could not be created")?;
        let tls = server::tls_config(&config.http)?;
        let config = Arc::new(config);
        let shutdown = CancellationToken::new();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = {
            let (config, log, shutdown) = (config.clone(), log.clone(), shutdown.clone());
            std::thread::Builder::new()
                .name("botd-actors".into())
                .spawn(move || {
                    let system = System::new();
                    system.block_on(run(config, secret, tls, log, logs, shutdown, ready_tx));
                })
                .context("cannot start the actor thread")?
        };
        match ready_rx.recv() {
            Ok(Ok((addr, state))) => Ok(Daemon {
                addr,
                current: std::sync::Mutex::new((*state.config).clone()),
                state,
                shutdown,
                thread: Some(thread),
                level,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                anyhow::bail!("the daemon stopped while starting")
            }
        }
    }

    /// Begins a graceful shutdown (SIGTERM): stop accepting, stop every bot with the
    /// deadline, flush.
    pub fn begin_shutdown(&self) {
        self.shutdown.cancel();
    }

    /// Shuts down and waits until everything has stopped.
    pub fn stop(mut self) {
        self.begin_shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Waits until the daemon has stopped (after `begin_shutdown`).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Applies what can change live from a re-read configuration (SIGHUP), and logs each
    /// changed key that needs a restart.
    pub fn reload(&self, new: &Config) {
        let log = &self.state.log;
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let old = &*current;
        self.level.set(new.logging.level);
        self.state
            .limits
            .requests
            .set_per_minute(new.rate_limit.requests_per_minute);
        if new.llm.max_concurrent != old.llm.max_concurrent
            || new.llm.max_queue != old.llm.max_queue
        {
            self.state.llm.pool().do_send(SetLimits {
                max_concurrent: new.llm.max_concurrent,
                max_queue: new.llm.max_queue,
            });
            publish_llm_limits(&new.llm);
        }
        for key in restart_only_changes(old, new) {
            warn!(log, "A changed setting takes effect only after a restart."; "key" => &key);
        }
        info!(log, "The configuration was reloaded."; "log_level" => format!("{:?}", new.logging.level).to_lowercase());
        *current = new.clone();
    }
}

/// The keys that differ between two configurations and cannot change live.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut keys = Vec::new();
    macro_rules! check {
        ($($path:ident).+) => {
            if old.$($path).+ != new.$($path).+ {
                keys.push(stringify!($($path).+).replace(' ', ""));
            }
        };
    }
    check!(http.listen);
    check!(http.max_body_bytes);
    check!(http.header_read_timeout_ms);
    check!(http.max_connections);
    check!(http.tls_cert);
    check!(http.tls_key);
    check!(http.cors_origins);
    check!(limits);
    check!(database.url);
    check!(database.pool_size);
    check!(database.sqlite_synchronous);
    check!(redis.url);
    check!(redis.key_prefix);
    check!(llm.ollama_url);
    check!(llm.default_model);
    check!(llm.connect_timeout_ms);
    check!(llm.request_timeout_secs);
    check!(llm.retries);
    check!(llm.breaker_failures);
    check!(llm.breaker_open_secs);
    check!(bots);
    check!(pools);
    check!(auth);
    check!(supervisor);
    check!(logging.format);
    check!(logging.ring_records);
    check!(logging.bot_ring_records);
    check!(logging.follow_buffer_records);
    check!(retention);
    keys
}

/// Publishes the LLM pool's limits, so that alerts can compare depth with capacity.
fn publish_llm_limits(llm: &LlmSettings) {
    let m = botd_actors::metrics::Metrics::get();
    // Both are bounded by the configuration's checks.
    m.llm_queue_capacity.set(llm.max_queue as i64);
    m.llm_max_concurrent.set(llm.max_concurrent as i64);
}

type Ready = anyhow::Result<(SocketAddr, Arc<AppState>)>;

/// The actor thread's life.
async fn run(
    config: Arc<Config>,
    secret: Vec<u8>,
    tls: Option<Arc<rustls::ServerConfig>>,
    log: Logger,
    logs: LogHub,
    shutdown: CancellationToken,
    ready: std::sync::mpsc::Sender<Ready>,
) {
    let built = build(config.clone(), secret, log.clone(), logs).await;
    let (state, http_rt, listener) = match built {
        Ok(x) => x,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    let options = ServeOptions {
        max_connections: config.http.max_connections,
        header_read_timeout: Duration::from_millis(config.http.header_read_timeout_ms),
        drain_timeout: Duration::from_millis(config.supervisor.stop_timeout_ms + 2000),
        tls,
        cors_origins: Arc::new(config.http.cors_origins.clone()),
    };
    let http_stop = CancellationToken::new();
    let server = {
        let filter = crate::http::routes(state.clone());
        let (stop, log) = (http_stop.clone(), log.clone());
        http_rt.spawn(async move {
            // Tokio's listener must be registered on the runtime that polls it.
            match tokio::net::TcpListener::from_std(listener) {
                Ok(l) => server::serve(l, filter, options, stop, log).await,
                Err(e) => {
                    slog::error!(log, "The listener cannot be used."; "error" => e.to_string())
                }
            }
        })
    };
    state.phase.set(Phase::Ready);
    info!(log, "botd is listening."; "addr" => addr.to_string(), "version" => env!("CARGO_PKG_VERSION"));
    let notifier = Notifier::from_env(log.clone());
    if notifier.enabled() {
        let counts = state.registry.counts().await.unwrap_or_default();
        notifier.ready(&notify::status_line(&counts));
        http_rt.spawn(
            notifier
                .clone()
                .keep_alive(state.registry.clone(), shutdown.clone()),
        );
    }
    http_rt.spawn(crate::retention::run(
        state.store.clone(),
        config.retention.clone(),
        log.clone(),
        shutdown.clone(),
    ));
    let _ = ready.send(Ok((addr, state.clone())));

    shutdown.cancelled().await;
    let started = Instant::now();
    info!(log, "botd is shutting down.");
    notifier.stopping();
    state.phase.set(Phase::ShuttingDown);
    // Bots first, while HTTP still answers the requests they complete; new messages get
    // 503 shutting_down from the stopping bots.
    state
        .registry
        .shutdown(Duration::from_millis(config.supervisor.stop_timeout_ms))
        .await;
    http_stop.cancel();
    let _ = server.await;
    // The server has drained; what is left (idle keep-alive tasks) is dropped.
    http_rt.shutdown_background();
    info!(log, "botd has stopped."; "duration_ms" => started.elapsed().as_millis() as u64);
    System::current().stop();
}

async fn build(
    config: Arc<Config>,
    secret: Vec<u8>,
    log: Logger,
    logs: LogHub,
) -> anyhow::Result<(
    Arc<AppState>,
    tokio::runtime::Runtime,
    std::net::TcpListener,
)> {
    let db = {
        let (config, log) = (config.clone(), log.clone());
        // Connecting and migrating block: keep them off the actor thread's executor.
        tokio::task::spawn_blocking(move || open_database(&config, &log))
            .await
            .context("the database task failed")??
    };
    let store = StoreHandle::start(db);
    server::precreate_metrics();
    let llm = LlmService::start(&config.llm).map_err(|e| anyhow::anyhow!("{e}"))?;
    publish_llm_limits(&config.llm);
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let arbiters: Vec<ArbiterHandle> = (0..threads).map(|_| Arbiter::new().handle()).collect();
    let redis = match &config.redis.url {
        Some(url) => Some(
            RedisConn::new(url, &config.redis.key_prefix, log.clone())
                .map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        None => None,
    };
    let cache = redis
        .clone()
        .map_or_else(ContextCache::in_process, ContextCache::with_redis);
    let registry = {
        let (store, llm, sup, pools, log) = (
            store.clone(),
            llm.clone(),
            config.supervisor.clone(),
            config.pools.clone(),
            log.clone(),
        );
        Registry::start_in_arbiter(&Arbiter::new().handle(), move |_| {
            Registry::new(store, llm, sup, arbiters, log)
                .with_pool_settings(pools)
                .with_cache(cache)
        })
    };
    let registry = RegistryHandle::new(registry);
    registry
        .restore()
        .await
        .map_err(|e| anyhow::anyhow!("restoring bots failed: {e}"))?;
    let listener = std::net::TcpListener::bind(config.http.listen)
        .with_context(|| format!("http.listen: cannot listen on {}", config.http.listen))?;
    listener.set_nonblocking(true)?;
    let http_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("botd-http")
        .enable_all()
        .build()
        .context("cannot start the HTTP runtime")?;
    let limits = crate::ratelimit::RateLimits::new(
        config.rate_limit.requests_per_minute,
        config.auth.login_attempts_per_minute,
        config.redis.url.as_deref(),
        &config.redis.key_prefix,
        &log,
    );
    let users = crate::auth::UserCheck::new(Duration::from_secs(config.auth.user_check_secs));
    let state = Arc::new(AppState {
        config,
        registry,
        store,
        llm,
        redis,
        jwt: JwtKeys::new(&secret),
        started: Instant::now(),
        phase: PhaseCell::default(),
        log,
        logs,
        users,
        limits,
    });
    Ok((state, http_rt, listener))
}
