//! # Layout
//!
//! `botd-actors` is botd's engine; it has no HTTP in it.
//!
//! - [`settings`]: the configuration sections the engine reads, with their checks.
//! - [`names`]: validated names (bots, pools, users, conversations, models).
//! - [`model`]: bot specs and states, messages and answers, and [`model::EngineError`].
//! - [`registry`]: the Registry actor (lifecycle, routing, supervision) and its handle.
//! - [`bot`]: the Bot actor and the task that handles one message.
//! - [`cache`]: the conversation-context cache (in-process, or Redis through bb8-redis).
//! - [`queue`]: a bot's bounded priority queue, shared so that a crash loses nothing.
//! - [`llm`]: the Ollama chat client and the LLM pool (permits, retries, breaker).
//! - [`metrics`]: the Prometheus metrics botd exports.
//! - [`store`]: diesel on PostgreSQL or SQLite, migrations, plain query functions and the
//!   `Store` actor that runs them on a `SyncArbiter`.
pub mod bot;
pub mod cache;
pub mod llm;
pub mod metrics;
pub mod model;
pub mod names;
pub mod queue;
pub mod registry;
pub mod settings;
pub mod store;
