//! The parts of the configuration the engine reads.
//!
//! The daemon's `config.toml` holds these as its `[llm]`, `[bots]`, `[pools]` and
//! `[supervisor]` sections; names and defaults follow ARCHITECTURE.md's table. Each
//! section checks its own ranges in `validate`, naming the key that is wrong.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A configuration value outside its allowed range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct InvalidSetting {
    /// The dotted key, e.g. `llm.max_concurrent`.
    pub key: String,
    /// What the rule is.
    pub message: String,
}

impl InvalidSetting {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Checks `lo <= value <= hi` for the key `section.name`.
pub fn check_range<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    lo: T,
    hi: T,
) -> Result<(), InvalidSetting> {
    if value < lo || value > hi {
        return Err(InvalidSetting::new(
            key,
            format!("must be between {lo} and {hi}, got {value}"),
        ));
    }
    Ok(())
}

/// `[llm]`: the Ollama server and the pool of calls to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LlmSettings {
    /// Base URL of the Ollama server.
    pub ollama_url: String,
    /// The model of a bot created without one.
    pub default_model: String,
    /// Model calls in flight at most.
    pub max_concurrent: usize,
    /// Calls waiting for a slot at most; past it, 503 `llm_overloaded`.
    pub max_queue: usize,
    /// Time to establish a connection to Ollama.
    pub connect_timeout_ms: u64,
    /// Time one model call may take in all.
    pub request_timeout_secs: u64,
    /// Extra attempts after a connection error or a 5xx.
    pub retries: u32,
    /// Failed attempts in a row that open the circuit breaker.
    pub breaker_failures: u32,
    /// How long the breaker stays open between probes.
    pub breaker_open_secs: u64,
}

impl Default for LlmSettings {
    fn default() -> Self {
        Self {
            ollama_url: "http://127.0.0.1:11434".into(),
            default_model: "mistral".into(),
            max_concurrent: 4,
            max_queue: 256,
            connect_timeout_ms: 2000,
            request_timeout_secs: 120,
            retries: 2,
            breaker_failures: 5,
            breaker_open_secs: 5,
        }
    }
}

impl LlmSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        if !(self.ollama_url.starts_with("http://") || self.ollama_url.starts_with("https://")) {
            return Err(InvalidSetting::new(
                "llm.ollama_url",
                format!(
                    "must be an http:// or https:// URL, got {:?}",
                    self.ollama_url
                ),
            ));
        }
        crate::names::ModelName::parse(&self.default_model)
            .map_err(|e| InvalidSetting::new("llm.default_model", e.to_string()))?;
        check_range("llm.max_concurrent", self.max_concurrent, 1, 4096)?;
        check_range("llm.max_queue", self.max_queue, 0, 1_000_000)?;
        check_range(
            "llm.connect_timeout_ms",
            self.connect_timeout_ms,
            1,
            600_000,
        )?;
        check_range(
            "llm.request_timeout_secs",
            self.request_timeout_secs,
            1,
            86_400,
        )?;
        check_range("llm.retries", self.retries, 0, 20)?;
        check_range("llm.breaker_failures", self.breaker_failures, 1, 10_000)?;
        check_range("llm.breaker_open_secs", self.breaker_open_secs, 1, 3600)?;
        Ok(())
    }

    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// `[bots]`: defaults for bots and messages that name none.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BotDefaults {
    /// A message's deadline when it names none.
    pub default_timeout_ms: u64,
    /// Messages a bot handles at once.
    pub default_concurrency: u32,
    /// Messages a bot holds waiting.
    pub default_mailbox_capacity: u32,
    /// Earlier messages of a conversation sent to the model.
    pub default_context_messages: u32,
}

impl Default for BotDefaults {
    fn default() -> Self {
        Self {
            default_timeout_ms: 120_000,
            default_concurrency: 4,
            default_mailbox_capacity: 64,
            default_context_messages: 20,
        }
    }
}

impl BotDefaults {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check_range(
            "bots.default_timeout_ms",
            self.default_timeout_ms,
            1,
            3_600_000,
        )?;
        check_range(
            "bots.default_concurrency",
            self.default_concurrency,
            1,
            1024,
        )?;
        check_range(
            "bots.default_mailbox_capacity",
            self.default_mailbox_capacity,
            1,
            100_000,
        )?;
        check_range(
            "bots.default_context_messages",
            self.default_context_messages,
            0,
            1000,
        )?;
        Ok(())
    }
}

/// `[pools]`: the autoscaler.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolSettings {
    /// Time between two scale-ups of one pool at least.
    pub scale_cooldown_secs: u64,
    /// How often pools are checked.
    pub check_interval_ms: u64,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            scale_cooldown_secs: 30,
            check_interval_ms: 1000,
        }
    }
}

impl PoolSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check_range(
            "pools.scale_cooldown_secs",
            self.scale_cooldown_secs,
            0,
            86_400,
        )?;
        check_range(
            "pools.check_interval_ms",
            self.check_interval_ms,
            10,
            3_600_000,
        )?;
        Ok(())
    }
}

/// `[supervisor]`: restart policy limits and backoff.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorSettings {
    /// Restarts allowed within `restart_window_secs`; one more marks the bot failed.
    pub max_restarts: u32,
    /// The window the restart limit counts in.
    pub restart_window_secs: u64,
    /// The first backoff delay.
    pub backoff_initial_ms: u64,
    /// The longest backoff delay.
    pub backoff_max_ms: u64,
    /// Healthy time after which the backoff starts again from the first delay.
    pub backoff_reset_secs: u64,
    /// A stop's deadline when the operator names none.
    pub stop_timeout_ms: u64,
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        Self {
            max_restarts: 5,
            restart_window_secs: 30,
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
            backoff_reset_secs: 30,
            stop_timeout_ms: 5000,
        }
    }
}

impl SupervisorSettings {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check_range("supervisor.max_restarts", self.max_restarts, 0, 10_000)?;
        check_range(
            "supervisor.restart_window_secs",
            self.restart_window_secs,
            1,
            86_400,
        )?;
        check_range(
            "supervisor.backoff_initial_ms",
            self.backoff_initial_ms,
            1,
            3_600_000,
        )?;
        check_range(
            "supervisor.backoff_max_ms",
            self.backoff_max_ms,
            self.backoff_initial_ms,
            3_600_000,
        )?;
        check_range(
            "supervisor.backoff_reset_secs",
            self.backoff_reset_secs,
            1,
            86_400,
        )?;
        check_range(
            "supervisor.stop_timeout_ms",
            self.stop_timeout_ms,
            1,
            3_600_000,
        )?;
        Ok(())
    }
}

/// `[limits]`: sizes of what callers send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// A message's `content` in UTF-8 bytes at most.
    pub max_content_bytes: usize,
    /// A bot's `system_prompt` in UTF-8 bytes at most.
    pub max_system_prompt_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_content_bytes: 65_536,
            max_system_prompt_bytes: 32_768,
        }
    }
}

impl Limits {
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        check_range(
            "limits.max_content_bytes",
            self.max_content_bytes,
            1,
            16 << 20,
        )?;
        check_range(
            "limits.max_system_prompt_bytes",
            self.max_system_prompt_bytes,
            0,
            16 << 20,
        )?;
        Ok(())
    }
}
