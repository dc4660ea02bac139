//! # Layout
//!
//! The daemon shell around the engine in `botd-actors`:
//!
//! - [`config`]: `config.toml` plus `BOTD_SECTION__KEY` overrides, typed and checked.
//! - [`cli`]: the `botd` command line (run, migrate, check-config, token, backup).
//! - [`app`]: start order, the running [`app::Daemon`], graceful shutdown, live reload.
//! - [`server`]: the accept loop that serves the warp filter (connection cap, header
//!   timeout, request ids, security headers, graceful drain).
//! - [`http`]: the routes of API.md and the one place errors become responses.
//! - [`auth`]: HS256 tokens, the secret file, passwords and the user check.
//! - [`ratelimit`]: token buckets per subject or client IP, local or shared in Redis.
//! - [`botctl`]: the operator's CLI (`src/bin/botctl.rs` is its thin main).
//! - [`state`]: what the handlers share.
//! - [`telemetry`]: slog JSON or terminal logs with a live level.
//! - [`notify`]: systemd's READY/STATUS/WATCHDOG/STOPPING, the watchdog pinging the Registry.
//! - [`retention`]: deletes messages past `retention.max_age_days`, in batches.

// The API is one warp filter; its nested future types pass the default limit (128) when
// the release build checks them for `Unpin`.
#![recursion_limit = "256"]
pub mod app;
pub mod auth;
pub mod botctl;
pub mod cli;
pub mod config;
pub mod http;
pub mod notify;
pub mod ratelimit;
pub mod retention;
pub mod server;
pub mod state;
pub mod telemetry;
