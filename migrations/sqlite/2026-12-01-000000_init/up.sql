-- botd's tables on SQLite. Times are milliseconds since the Unix epoch; ids increase.
CREATE TABLE bots (
    name TEXT PRIMARY KEY NOT NULL,
    model TEXT NOT NULL,
    system_prompt TEXT,
    pool TEXT,
    managed INTEGER NOT NULL DEFAULT 0,
    restart TEXT NOT NULL,
    concurrency INTEGER NOT NULL,
    mailbox_capacity INTEGER NOT NULL,
    context_messages INTEGER NOT NULL,
    options TEXT NOT NULL DEFAULT '{}',
    desired_state TEXT NOT NULL,
    failed_reason TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE pools (
    name TEXT PRIMARY KEY NOT NULL,
    template TEXT NOT NULL,
    min_bots INTEGER NOT NULL,
    max_bots INTEGER NOT NULL,
    scale_up_queue_depth INTEGER NOT NULL,
    scale_down_idle_secs BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    bot TEXT NOT NULL,
    pool TEXT,
    conversation TEXT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    status TEXT NOT NULL,
    reply_to BIGINT,
    model TEXT,
    prompt_tokens BIGINT,
    completion_tokens BIGINT,
    queue_ms BIGINT,
    llm_ms BIGINT,
    total_ms BIGINT,
    error TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX messages_bot_conversation ON messages (bot, conversation, id);
CREATE INDEX messages_bot ON messages (bot, id);
CREATE INDEX messages_pool_conversation ON messages (pool, conversation, id);
CREATE INDEX messages_created_at ON messages (created_at);
CREATE INDEX messages_pending ON messages (status) WHERE status = 'pending';

CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT NOT NULL,
    ts BIGINT NOT NULL,
    bot TEXT,
    pool TEXT,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX events_bot ON events (bot, id);
CREATE INDEX events_pool ON events (pool, id);
CREATE INDEX events_kind ON events (kind, id);

CREATE TABLE users (
    username TEXT PRIMARY KEY NOT NULL,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
