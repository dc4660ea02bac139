//! `botctl pools …`: managed pools, and messages to a pool.

use std::time::Duration;

use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{Answer, Client, CtlError, Request};
use super::commands::{
    common_fields, history, message_text, put, send, send_stream, LIFECYCLE_TIMEOUT, SLACK,
};
use super::output::{pairs, print, print_raw, text, time, Table};
use super::TemplateArgs;

#[derive(Subcommand)]
pub enum PoolCommand {
    /// List pools: managed ones and those that bots merely name.
    List,
    /// Show one pool: its settings, template and bots.
    Get {
        /// The pool's name.
        pool: String,
    },
    /// Create a managed pool or replace its settings (admin). Every setting not given
    /// takes its default (min 1, max 10, queue depth 5, idle 300 s), as with the API's PUT.
    Put {
        /// The pool's name: ^[a-z0-9][a-z0-9_-]{0,55}$.
        pool: String,
        /// Bots kept at least (0..max).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1000))]
        min_bots: Option<u32>,
        /// Bots at most (1..1000).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        max_bots: Option<u32>,
        /// Scale up when the bots' average queue reaches this (1..100000).
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
        scale_up_queue_depth: Option<u32>,
        /// Scale down a bot idle this long (1..86400).
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u32).range(1..=86_400))]
        scale_down_idle_secs: Option<u32>,
        #[command(flatten)]
        template: TemplateArgs,
    },
    /// Delete a managed pool (admin): its bots are stopped and deleted, their history kept.
    Delete {
        /// The pool's name.
        pool: String,
    },
    /// Send a message to the least-loaded bot of a pool (operator) and print its reply.
    Send {
        /// The pool's name.
        pool: String,
        /// The message; `-` reads it from stdin.
        text: String,
        /// The conversation (default `default`).
        #[arg(long, short = 'c', value_name = "ID")]
        conversation: Option<String>,
        /// 0 (most urgent) to 3 (default 2).
        #[arg(long, value_name = "P", value_parser = clap::value_parser!(u8).range(0..=3))]
        priority: Option<u8>,
        /// The deadline of the whole exchange (1..3600000).
        #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u32).range(1..=3_600_000))]
        timeout_ms: Option<u32>,
        /// Print the reply's tokens as they arrive.
        #[arg(long)]
        stream: bool,
    },
    /// A pool's message history, newest first, each message naming its bot.
    History {
        /// The pool's name.
        pool: String,
        /// Only this conversation.
        #[arg(long, short = 'c', value_name = "ID")]
        conversation: Option<String>,
        /// How many messages (1..500, default 50).
        #[arg(long, short = 'n', value_name = "N", value_parser = clap::value_parser!(u16).range(1..=500))]
        limit: Option<u16>,
        /// Only messages older than this message id (the `next_before` of a page).
        #[arg(long, value_name = "ID")]
        before: Option<String>,
    },
}

pub async fn run(c: &Client, json: bool, command: PoolCommand) -> Result<(), CtlError> {
    match command {
        PoolCommand::List => list(c, json).await,
        PoolCommand::Get { pool } => {
            let a = c.call(Request::new(Method::GET, &["pools", &pool])).await?;
            show_pool(&a, json)
        }
        PoolCommand::Put {
            pool,
            min_bots,
            max_bots,
            scale_up_queue_depth,
            scale_down_idle_secs,
            template,
        } => {
            let mut t = json!({});
            common_fields(&mut t, &template);
            put(
                &mut t,
                "system_prompt",
                template
                    .system_prompt
                    .filter(|s| !s.is_empty())
                    .map(Value::from),
            );
            let mut body = json!({ "template": t });
            put(&mut body, "min_bots", min_bots.map(Value::from));
            put(&mut body, "max_bots", max_bots.map(Value::from));
            put(
                &mut body,
                "scale_up_queue_depth",
                scale_up_queue_depth.map(Value::from),
            );
            put(
                &mut body,
                "scale_down_idle_secs",
                scale_down_idle_secs.map(Value::from),
            );
            let a = c
                .call(
                    Request::new(Method::PUT, &["pools", &pool])
                        .body(body)
                        .timeout(Some(LIFECYCLE_TIMEOUT)),
                )
                .await?;
            show_pool(&a, json)
        }
        PoolCommand::Delete { pool } => {
            let a = c
                .call(
                    Request::new(Method::DELETE, &["pools", &pool])
                        .timeout(Some(LIFECYCLE_TIMEOUT)),
                )
                .await?;
            if json {
                if !a.text.trim().is_empty() {
                    print_raw(&a.text);
                }
            } else {
                print(&format!("{pool}: deleted with its bots, history kept\n"));
            }
            Ok(())
        }
        PoolCommand::Send {
            pool,
            text,
            conversation,
            priority,
            timeout_ms,
            stream,
        } => {
            let mut body = json!({ "content": message_text(text)? });
            put(&mut body, "conversation", conversation.map(Value::from));
            put(&mut body, "priority", priority.map(Value::from));
            put(&mut body, "timeout_ms", timeout_ms.map(Value::from));
            let timeout = timeout_ms.map(|ms| Duration::from_millis(ms.into()) + SLACK);
            if stream {
                send_stream(c, json, "pools", &pool, body, timeout).await
            } else {
                send(c, json, "pools", &pool, body, timeout).await
            }
        }
        PoolCommand::History {
            pool,
            conversation,
            limit,
            before,
        } => history(c, json, "pools", &pool, conversation, limit, before).await,
    }
}

async fn list(c: &Client, json: bool) -> Result<(), CtlError> {
    let a = c.call(Request::new(Method::GET, &["pools"])).await?;
    if json {
        print_raw(&a.text);
        return Ok(());
    }
    let empty = Vec::new();
    let pools = a.value()?["pools"].as_array().unwrap_or(&empty);
    if pools.is_empty() {
        print("no pools\n");
        return Ok(());
    }
    let mut t = Table::new(&["NAME", "MANAGED", "BOTS", "RUNNING", "MIN", "MAX", "MODEL"]);
    for p in pools {
        let bots = p["bots"].as_array().unwrap_or(&empty);
        let running = bots.iter().filter(|b| b["state"] == "running").count();
        t.row(vec![
            text(p, "name"),
            if p["managed"] == true { "yes" } else { "no" }.into(),
            bots.len().to_string(),
            running.to_string(),
            text(p, "min_bots"),
            text(p, "max_bots"),
            text(&p["template"], "model"),
        ]);
    }
    print(&t.render());
    Ok(())
}

fn show_pool(a: &Answer, json: bool) -> Result<(), CtlError> {
    if json {
        print_raw(&a.text);
        return Ok(());
    }
    let p = a.value()?;
    let bots: Vec<String> = p["bots"]
        .as_array()
        .map(|bots| {
            bots.iter()
                .map(|b| format!("{} ({})", text(b, "name"), text(b, "state")))
                .collect()
        })
        .unwrap_or_default();
    let mut rows = vec![
        ("name", text(p, "name")),
        (
            "managed",
            if p["managed"] == true { "yes" } else { "no" }.into(),
        ),
    ];
    if p["managed"] == true {
        let t = &p["template"];
        rows.extend([
            ("min bots", text(p, "min_bots")),
            ("max bots", text(p, "max_bots")),
            ("scale up at queue", text(p, "scale_up_queue_depth")),
            (
                "scale down idle",
                format!("{} s", text(p, "scale_down_idle_secs")),
            ),
            ("model", text(t, "model")),
            ("system prompt", text(t, "system_prompt")),
            ("restart", text(t, "restart")),
            ("concurrency", text(t, "concurrency")),
            ("mailbox", text(t, "mailbox_capacity")),
            ("context", text(t, "context_messages")),
            ("created", time(p, "created_at")),
        ]);
    }
    rows.push((
        "bots",
        if bots.is_empty() {
            "-".into()
        } else {
            bots.join(", ")
        },
    ));
    print(&pairs(&rows));
    Ok(())
}
