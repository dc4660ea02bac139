//! The engine's domain types: bot specs and states, messages in and answers out, and the
//! one error type every engine operation answers with.

use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::names::{BotName, Conversation, ModelName, PoolName};

/// When the supervisor restarts a bot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestartPolicy {
    /// After a crash or a normal exit.
    Permanent,
    /// After a crash only.
    Transient,
    /// Never.
    Temporary,
}

impl RestartPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::Permanent => "permanent",
            RestartPolicy::Transient => "transient",
            RestartPolicy::Temporary => "temporary",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "permanent" => Some(Self::Permanent),
            "transient" => Some(Self::Transient),
            "temporary" => Some(Self::Temporary),
            _ => None,
        }
    }
}

/// A bot's lifecycle state, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BotState {
    Stopped,
    Starting,
    Running,
    Stopping,
    Backoff,
    Failed,
}

impl BotState {
    pub const ALL: [BotState; 6] = [
        BotState::Stopped,
        BotState::Starting,
        BotState::Running,
        BotState::Stopping,
        BotState::Backoff,
        BotState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BotState::Stopped => "stopped",
            BotState::Starting => "starting",
            BotState::Running => "running",
            BotState::Stopping => "stopping",
            BotState::Backoff => "backoff",
            BotState::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    Running,
    Stopped,
}

impl DesiredState {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Running => "running",
            DesiredState::Stopped => "stopped",
        }
    }
}

/// A bot's spec: everything an operator sets. Validated before it reaches the engine.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BotSpec {
    pub name: BotName,
    pub model: ModelName,
    pub system_prompt: Option<String>,
    pub pool: Option<PoolName>,
    pub restart: RestartPolicy,
    /// Messages handled at once, 1..=1024.
    pub concurrency: u32,
    /// Messages waiting at most, 1..=100000.
    pub mailbox_capacity: u32,
    /// Earlier messages of a conversation sent with each turn, 0..=1000.
    pub context_messages: u32,
    /// Ollama options, passed through as they are.
    pub options: serde_json::Map<String, serde_json::Value>,
}

/// A partial spec: the fields a PATCH names.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BotPatch {
    pub model: Option<ModelName>,
    /// `Some(None)` clears the prompt.
    pub system_prompt: Option<Option<String>>,
    /// `Some(None)` leaves the pool.
    pub pool: Option<Option<PoolName>>,
    pub restart: Option<RestartPolicy>,
    pub concurrency: Option<u32>,
    pub mailbox_capacity: Option<u32>,
    pub context_messages: Option<u32>,
    pub options: Option<serde_json::Map<String, serde_json::Value>>,
}

impl BotPatch {
    pub fn apply(self, spec: &mut BotSpec) {
        if let Some(v) = self.model {
            spec.model = v;
        }
        if let Some(v) = self.system_prompt {
            spec.system_prompt = v;
        }
        if let Some(v) = self.pool {
            spec.pool = v;
        }
        if let Some(v) = self.restart {
            spec.restart = v;
        }
        if let Some(v) = self.concurrency {
            spec.concurrency = v;
        }
        if let Some(v) = self.mailbox_capacity {
            spec.mailbox_capacity = v;
        }
        if let Some(v) = self.context_messages {
            spec.context_messages = v;
        }
        if let Some(v) = self.options {
            spec.options = v;
        }
    }
}

/// A bot as the API shows it: spec plus live status. Times are Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BotInfo {
    pub spec: BotSpec,
    pub managed: bool,
    pub desired_state: DesiredState,
    pub state: BotState,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub mailbox_depth: usize,
    pub in_flight: usize,
    pub messages_handled: u64,
    pub started_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a pool's managed bots are made from: a bot spec without name and pool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BotTemplate {
    pub model: ModelName,
    pub system_prompt: Option<String>,
    pub restart: RestartPolicy,
    pub concurrency: u32,
    pub mailbox_capacity: u32,
    pub context_messages: u32,
    pub options: serde_json::Map<String, serde_json::Value>,
}

impl BotTemplate {
    /// The spec of bot `name` made from this template.
    pub fn spec(&self, name: BotName, pool: Option<PoolName>) -> BotSpec {
        BotSpec {
            name,
            model: self.model.clone(),
            system_prompt: self.system_prompt.clone(),
            pool,
            restart: self.restart,
            concurrency: self.concurrency,
            mailbox_capacity: self.mailbox_capacity,
            context_messages: self.context_messages,
            options: self.options.clone(),
        }
    }
}

/// A managed pool's spec, as `PUT /api/v1/pools/{pool}` sets it. Validated before it
/// reaches the engine (`min_bots <= max_bots`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolSpec {
    pub name: PoolName,
    pub template: BotTemplate,
    pub min_bots: u32,
    pub max_bots: u32,
    /// Scale up when the members' average queued messages reach this.
    pub scale_up_queue_depth: u32,
    /// Scale down a member that had nothing queued or running this long.
    pub scale_down_idle_secs: u64,
}

/// One bot of a pool, as the pool shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolMember {
    pub name: BotName,
    pub state: BotState,
    /// Made by the pool (named `{pool}-{n}`), not a bot that names the pool itself.
    pub managed: bool,
}

/// A pool as the API shows it: its spec (none for a pool that only exists because bots
/// name it) and its members, sorted by name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PoolInfo {
    pub name: PoolName,
    pub spec: Option<PoolSpec>,
    pub bots: Vec<PoolMember>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Bot(BotName),
    Pool(PoolName),
}

/// One message to a bot, validated.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub target: Target,
    pub content: String,
    pub conversation: Conversation,
    /// 0 (most urgent) to 3.
    pub priority: u8,
    /// The whole exchange must finish by then.
    pub deadline: Instant,
    /// Tripped when the caller goes away.
    pub cancel: CancellationToken,
    /// Where streamed pieces go; `None` for a plain request.
    pub tokens: Option<tokio::sync::mpsc::UnboundedSender<String>>,
    /// When the request arrived, for the timings.
    pub received: Instant,
}

/// Token counts from the model's final object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// Where the time of one exchange went, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Timings {
    pub queue_ms: u64,
    pub llm_ms: u64,
    pub total_ms: u64,
}

/// The answer to one message: both rows are committed when it is given.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// The user message's id.
    pub id: i64,
    pub bot: BotName,
    pub conversation: Conversation,
    pub reply_id: i64,
    pub reply: String,
    pub reply_created_at: i64,
    pub model: String,
    pub usage: Usage,
    pub timings: Timings,
    /// Model time in microseconds, for the daemon-overhead histogram.
    pub llm_us: u64,
    /// Whole exchange in microseconds.
    pub total_us: u64,
}

/// Every way an engine operation can fail; the HTTP layer maps `code()` to a status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error("bot '{0}' does not exist")]
    BotNotFound(String),
    #[error("pool '{0}' does not exist")]
    PoolNotFound(String),
    #[error("bot '{0}' already exists")]
    BotExists(String),
    #[error("bot '{0}' is already running")]
    BotAlreadyRunning(String),
    #[error("bot '{0}' is not running")]
    BotNotRunning(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    InvalidField(String),
    #[error("bot '{bot}' has {capacity} messages waiting already")]
    MailboxFull {
        bot: String,
        capacity: u32,
        retry_after_secs: u64,
    },
    #[error("the model server has {queued} calls waiting already")]
    LlmOverloaded {
        queued: usize,
        retry_after_secs: u64,
    },
    #[error("the model server cannot be reached: {0}")]
    LlmUnavailable(String),
    #[error("the model server answered with an error: {0}")]
    LlmError(String),
    #[error("the model server did not answer within {0} s")]
    LlmTimeout(u64),
    #[error("the message's deadline passed")]
    DeadlineExceeded,
    #[error("no bot of pool '{0}' is running")]
    NoBotAvailable(String),
    #[error("{0}")]
    ShuttingDown(String),
    #[error("the request was cancelled")]
    Cancelled,
    #[error("{0}")]
    Internal(String),
    #[error("the database is unavailable: {0}")]
    Store(String),
}

impl EngineError {
    /// The API's error code.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::BotNotFound(_) => "bot_not_found",
            EngineError::PoolNotFound(_) => "pool_not_found",
            EngineError::BotExists(_) => "bot_exists",
            EngineError::BotAlreadyRunning(_) => "bot_already_running",
            EngineError::BotNotRunning(_) => "bot_not_running",
            EngineError::Conflict(_) => "conflict",
            EngineError::InvalidField(_) => "invalid_field",
            EngineError::MailboxFull { .. } => "mailbox_full",
            EngineError::LlmOverloaded { .. } => "llm_overloaded",
            EngineError::LlmUnavailable(_) => "llm_unavailable",
            EngineError::LlmError(_) => "llm_error",
            EngineError::LlmTimeout(_) => "llm_timeout",
            EngineError::DeadlineExceeded => "deadline_exceeded",
            EngineError::NoBotAvailable(_) => "no_bot_available",
            EngineError::ShuttingDown(_) => "shutting_down",
            // A caller that went away never reads its answer; 499 is what it would be.
            EngineError::Cancelled => "cancelled",
            EngineError::Internal(_) => "internal",
            EngineError::Store(_) => "not_ready",
        }
    }

    /// The HTTP status of `code()`.
    pub fn status(&self) -> u16 {
        match self {
            EngineError::BotNotFound(_) | EngineError::PoolNotFound(_) => 404,
            EngineError::BotExists(_)
            | EngineError::BotAlreadyRunning(_)
            | EngineError::BotNotRunning(_)
            | EngineError::Conflict(_) => 409,
            EngineError::InvalidField(_) => 400,
            EngineError::MailboxFull { .. }
            | EngineError::LlmOverloaded { .. }
            | EngineError::LlmUnavailable(_)
            | EngineError::NoBotAvailable(_)
            | EngineError::ShuttingDown(_)
            | EngineError::Store(_) => 503,
            EngineError::LlmError(_) => 502,
            EngineError::LlmTimeout(_) | EngineError::DeadlineExceeded => 504,
            EngineError::Cancelled => 499,
            EngineError::Internal(_) => 500,
        }
    }

    /// Seconds for `Retry-After` (every 503 carries one).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            EngineError::MailboxFull {
                retry_after_secs, ..
            }
            | EngineError::LlmOverloaded {
                retry_after_secs, ..
            } => Some((*retry_after_secs).max(1)),
            e if e.status() == 503 => Some(1),
            _ => None,
        }
    }

    /// The status a message row ends with after this error.
    pub fn message_status(&self) -> &'static str {
        match self {
            EngineError::Cancelled => "cancelled",
            _ => "failed",
        }
    }
}

impl From<crate::store::StoreError> for EngineError {
    fn from(e: crate::store::StoreError) -> Self {
        EngineError::Store(e.to_string())
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
