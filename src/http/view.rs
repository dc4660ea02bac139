//! What the API answers with: the JSON shapes of API.md, built from engine and store rows.

use botd_actors::model::{Answer, BotInfo, BotTemplate, PoolInfo};
use botd_actors::store::queries::{EventRow, MessageRow};
use serde::Serialize;
use utoipa::ToSchema;

/// RFC 3339 UTC with milliseconds, from Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A bot: spec plus live status.
#[derive(Debug, Serialize, ToSchema)]
pub struct BotView {
    pub name: String,
    pub model: String,
    pub system_prompt: Option<String>,
    pub pool: Option<String>,
    /// `permanent`, `transient` or `temporary`.
    pub restart: String,
    pub concurrency: u32,
    pub mailbox_capacity: u32,
    pub context_messages: u32,
    #[schema(value_type = Object)]
    pub options: serde_json::Map<String, serde_json::Value>,
    /// `running` or `stopped`.
    pub desired_state: String,
    /// `stopped`, `starting`, `running`, `stopping`, `backoff` or `failed`.
    pub state: String,
    pub restarts: u32,
    pub last_error: Option<String>,
    pub mailbox_depth: usize,
    pub in_flight: usize,
    pub messages_handled: u64,
    pub started_at: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

impl From<BotInfo> for BotView {
    fn from(b: BotInfo) -> Self {
        Self {
            name: b.spec.name.into_string(),
            model: b.spec.model.into_string(),
            system_prompt: b.spec.system_prompt,
            pool: b.spec.pool.map(|p| p.into_string()),
            restart: b.spec.restart.as_str().into(),
            concurrency: b.spec.concurrency,
            mailbox_capacity: b.spec.mailbox_capacity,
            context_messages: b.spec.context_messages,
            options: b.spec.options,
            desired_state: b.desired_state.as_str().into(),
            state: b.state.as_str().into(),
            restarts: b.restarts,
            last_error: b.last_error,
            mailbox_depth: b.mailbox_depth,
            in_flight: b.in_flight,
            messages_handled: b.messages_handled,
            started_at: b.started_at.map(rfc3339),
            created_at: rfc3339(b.created_at),
            updated_at: rfc3339(b.updated_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BotList {
    pub bots: Vec<BotView>,
}

/// The model's reply.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReplyView {
    pub id: String,
    pub role: String,
    pub content: String,
    pub created_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UsageView {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TimingsView {
    pub queue_ms: u64,
    pub llm_ms: u64,
    pub total_ms: u64,
}

/// The answer to a message: both it and its reply are committed.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnswerView {
    /// The user message's id.
    pub id: String,
    pub bot: String,
    pub conversation: String,
    pub reply: ReplyView,
    pub model: String,
    pub usage: UsageView,
    pub timings: TimingsView,
}

impl From<Answer> for AnswerView {
    fn from(a: Answer) -> Self {
        Self {
            id: a.id.to_string(),
            bot: a.bot.into_string(),
            conversation: a.conversation.into_string(),
            reply: ReplyView {
                id: a.reply_id.to_string(),
                role: "assistant".into(),
                content: a.reply,
                created_at: rfc3339(a.reply_created_at),
            },
            model: a.model,
            usage: UsageView {
                prompt_tokens: a.usage.prompt_tokens,
                completion_tokens: a.usage.completion_tokens,
            },
            timings: TimingsView {
                queue_ms: a.timings.queue_ms,
                llm_ms: a.timings.llm_ms,
                total_ms: a.timings.total_ms,
            },
        }
    }
}

/// One stored message.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    pub id: String,
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
    pub conversation: String,
    pub bot: String,
    /// `complete`, `pending`, `failed` or `cancelled`.
    pub status: String,
    /// On a reply: the user message it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// On a failed or cancelled message: the error code it ended with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<UsageView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timings: Option<TimingsView>,
    pub created_at: String,
}

impl From<MessageRow> for MessageView {
    fn from(m: MessageRow) -> Self {
        let usage = match (m.prompt_tokens, m.completion_tokens) {
            (Some(p), Some(c)) => Some(UsageView {
                prompt_tokens: p.max(0) as u64,
                completion_tokens: c.max(0) as u64,
            }),
            _ => None,
        };
        let timings = match (m.queue_ms, m.llm_ms, m.total_ms) {
            (Some(q), Some(l), Some(t)) => Some(TimingsView {
                queue_ms: q.max(0) as u64,
                llm_ms: l.max(0) as u64,
                total_ms: t.max(0) as u64,
            }),
            _ => None,
        };
        Self {
            id: m.id.to_string(),
            role: m.role,
            content: m.content,
            conversation: m.conversation,
            bot: m.bot,
            status: m.status,
            reply_to: m.reply_to.map(|id| id.to_string()),
            error: m.error,
            usage,
            timings,
            created_at: rfc3339(m.created_at),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageList {
    pub messages: Vec<MessageView>,
    /// Pass as `before` for the next (older) page; null on the last page.
    pub next_before: Option<String>,
}

/// One lifecycle or audit event.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    pub id: String,
    pub ts: String,
    pub bot: Option<String>,
    pub pool: Option<String>,
    pub kind: String,
    pub subject: String,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
}

impl From<EventRow> for EventView {
    fn from(e: EventRow) -> Self {
        Self {
            id: e.id.to_string(),
            ts: rfc3339(e.ts),
            bot: e.bot,
            pool: e.pool,
            kind: e.kind,
            subject: e.subject,
            detail: serde_json::from_str(&e.detail).unwrap_or(serde_json::Value::Null),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventList {
    pub events: Vec<EventView>,
}

/// The error shape of every non-2xx answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorInner,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorInner {
    pub code: String,
    pub message: String,
    pub request_id: String,
}

/// What a pool's managed bots are made from.
#[derive(Debug, Serialize, ToSchema)]
pub struct TemplateView {
    pub model: String,
    pub system_prompt: Option<String>,
    /// `permanent`, `transient` or `temporary`.
    pub restart: String,
    pub concurrency: u32,
    pub mailbox_capacity: u32,
    pub context_messages: u32,
    #[schema(value_type = Object)]
    pub options: serde_json::Map<String, serde_json::Value>,
}

impl From<BotTemplate> for TemplateView {
    fn from(t: BotTemplate) -> Self {
        Self {
            model: t.model.into_string(),
            system_prompt: t.system_prompt,
            restart: t.restart.as_str().into(),
            concurrency: t.concurrency,
            mailbox_capacity: t.mailbox_capacity,
            context_messages: t.context_messages,
            options: t.options,
        }
    }
}

/// One bot of a pool.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolMemberView {
    pub name: String,
    /// `stopped`, `starting`, `running`, `stopping`, `backoff` or `failed`.
    pub state: String,
    /// Made by the pool (`{pool}-{n}`), not a bot that names the pool itself.
    pub managed: bool,
}

/// A pool: its spec when it was created with `PUT` (`managed`), and its bots. A pool
/// that only exists because bots name it has `managed: false` and null settings.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolView {
    pub name: String,
    pub managed: bool,
    pub template: Option<TemplateView>,
    pub min_bots: Option<u32>,
    pub max_bots: Option<u32>,
    pub scale_up_queue_depth: Option<u32>,
    pub scale_down_idle_secs: Option<u64>,
    pub bots: Vec<PoolMemberView>,
    pub created_at: Option<String>,
    pub updated_at: Option<String>,
}

impl From<PoolInfo> for PoolView {
    fn from(p: PoolInfo) -> Self {
        let spec = p.spec;
        Self {
            name: p.name.into_string(),
            managed: spec.is_some(),
            min_bots: spec.as_ref().map(|s| s.min_bots),
            max_bots: spec.as_ref().map(|s| s.max_bots),
            scale_up_queue_depth: spec.as_ref().map(|s| s.scale_up_queue_depth),
            scale_down_idle_secs: spec.as_ref().map(|s| s.scale_down_idle_secs),
            template: spec.map(|s| s.template.into()),
            bots: p
                .bots
                .into_iter()
                .map(|m| PoolMemberView {
                    name: m.name.into_string(),
                    state: m.state.as_str().into(),
                    managed: m.managed,
                })
                .collect(),
            created_at: p.created_at.map(rfc3339),
            updated_at: p.updated_at.map(rfc3339),
        }
    }
}

/// `GET /api/v1/pools`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PoolList {
    pub pools: Vec<PoolView>,
}
