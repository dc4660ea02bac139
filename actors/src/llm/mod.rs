//! The model side: botd's own Ollama chat client and the LLM pool.
//!
//! - [`client`]: [`OllamaClient`], the chat client on reqwest, and [`LlmError`], the
//!   failures of one model call as the pool and the HTTP layer tell them apart.
//! - [`ndjson`]: the incremental line decoder the streaming client reads with.
//! - [`pool`]: the LLM pool (permits, queue, retries, circuit breaker).

pub mod client;
pub mod ndjson;
pub mod pool;

pub use client::{ChatMessage, ChatReply, ChatRequest, LlmError, OllamaClient};
