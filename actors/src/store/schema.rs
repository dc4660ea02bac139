//! The tables, declared once with types both backends read the same way.

diesel::table! {
    bots (name) {
        name -> Text,
        model -> Text,
        system_prompt -> Nullable<Text>,
        pool -> Nullable<Text>,
        managed -> Integer,
        restart -> Text,
        concurrency -> Integer,
        mailbox_capacity -> Integer,
        context_messages -> Integer,
        options -> Text,
        desired_state -> Text,
        failed_reason -> Nullable<Text>,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    pools (name) {
        name -> Text,
        template -> Text,
        min_bots -> Integer,
        max_bots -> Integer,
        scale_up_queue_depth -> Integer,
        scale_down_idle_secs -> BigInt,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}

diesel::table! {
    messages (id) {
        id -> BigInt,
        bot -> Text,
        pool -> Nullable<Text>,
        conversation -> Text,
        role -> Text,
        content -> Text,
        status -> Text,
        reply_to -> Nullable<BigInt>,
        model -> Nullable<Text>,
        prompt_tokens -> Nullable<BigInt>,
        completion_tokens -> Nullable<BigInt>,
        queue_ms -> Nullable<BigInt>,
        llm_ms -> Nullable<BigInt>,
        total_ms -> Nullable<BigInt>,
        error -> Nullable<Text>,
        created_at -> BigInt,
    }
}

diesel::table! {
    events (id) {
        id -> BigInt,
        ts -> BigInt,
        bot -> Nullable<Text>,
        pool -> Nullable<Text>,
        kind -> Text,
        subject -> Text,
        detail -> Text,
    }
}

diesel::table! {
    users (username) {
        username -> Text,
        password_hash -> Text,
        role -> Text,
        created_at -> BigInt,
        updated_at -> BigInt,
    }
}
