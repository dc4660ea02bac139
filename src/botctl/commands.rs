//! One function per subcommand: the request it makes and how it shows the answer.

use std::io::Read;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Map, Value};

use super::client::{error_from_value, Answer, Client, CtlError, Request};
use super::output::{
    self, cell, flat, log_line, pairs, print, print_flush, print_raw, since, text, time, Table,
};
use super::sse::SseEvent;
use super::{Cli, Command, SpecArgs, TemplateArgs};

/// The order `status` names bot states in: the ones that work first.
const STATUS_ORDER: &[&str] = &[
    "running", "starting", "stopping", "backoff", "failed", "stopped",
];

/// How long a lifecycle call (create, delete, start, restart) may take: the daemon
/// answers when the bot has reached its state.
pub(super) const LIFECYCLE_TIMEOUT: Duration = Duration::from_secs(120);
/// Slack over a caller's own `--timeout-ms` before botctl gives up on the daemon.
pub(super) const SLACK: Duration = Duration::from_secs(30);

pub async fn run(cli: Cli) -> Result<(), CtlError> {
    let token = cli.token.filter(|t| !t.is_empty());
    let client = Client::with_ca(&cli.url, token, cli.ca_file.as_deref())?;
    let json = cli.json;
    match cli.command {
        Command::Status => status(&client, json).await,
        Command::List { pool, state } => list(&client, json, pool, state).await,
        Command::Get { name } => get(&client, json, &name).await,
        Command::Create { name, spec, start } => create(&client, json, &name, spec, start).await,
        Command::Edit {
            name,
            spec,
            no_pool,
            no_options,
        } => edit(&client, json, &name, spec, no_pool, no_options).await,
        Command::Delete { name, purge } => delete(&client, json, &name, purge).await,
        Command::Start { name } => lifecycle(&client, json, &name, "start", None).await,
        Command::Stop { name, timeout_ms } => {
            lifecycle(&client, json, &name, "stop", timeout_ms).await
        }
        Command::Restart { name } => lifecycle(&client, json, &name, "restart", None).await,
        Command::Send {
            name,
            text,
            conversation,
            priority,
            timeout_ms,
            stream,
        } => {
            let content = message_text(text)?;
            let mut body = json!({ "content": content });
            put(&mut body, "conversation", conversation.map(Value::from));
            put(&mut body, "priority", priority.map(Value::from));
            put(&mut body, "timeout_ms", timeout_ms.map(Value::from));
            let timeout = timeout_ms.map(|ms| Duration::from_millis(ms.into()) + SLACK);
            if stream {
                send_stream(&client, json, "bots", &name, body, timeout).await
            } else {
                send(&client, json, "bots", &name, body, timeout).await
            }
        }
        Command::Chat {
            name,
            pool,
            conversation,
        } => {
            let peer = match (name, pool) {
                (_, Some(p)) => super::chat::Peer::Pool(p),
                (Some(n), None) => super::chat::Peer::Bot(n),
                (None, None) => return Err(CtlError::Usage("name a bot or --pool".into())),
            };
            super::chat::chat(&client, json, peer, conversation).await
        }
        Command::History {
            name,
            conversation,
            limit,
            before,
        } => history(&client, json, "bots", &name, conversation, limit, before).await,
        Command::Events {
            name,
            pool,
            kind,
            limit,
        } => events(&client, json, name, pool, kind, limit).await,
        Command::Logs {
            bot,
            follow,
            level,
            tail,
        } => logs(&client, json, bot, follow, level, tail).await,
        Command::Pools { command } => super::pools::run(&client, json, command).await,
        Command::Login { username, export } => login(&client, json, &username, export).await,
        // Handled before there is a client (it needs no daemon).
        Command::Completions { .. } => Ok(()),
    }
}

/// Sets `key` in a JSON object when there is a value.
pub(super) fn put(body: &mut Value, key: &str, v: Option<Value>) {
    if let (Some(map), Some(v)) = (body.as_object_mut(), v) {
        map.insert(key.to_owned(), v);
    }
}

/// `TEXT`, or stdin for `-` (without its final newline).
pub(super) fn message_text(text: String) -> Result<String, CtlError> {
    if text != "-" {
        return Ok(text);
    }
    let mut s = String::new();
    std::io::stdin()
        .read_to_string(&mut s)
        .map_err(|e| CtlError::Usage(format!("cannot read the message from stdin: {e}")))?;
    if s.ends_with('\n') {
        s.pop();
        if s.ends_with('\r') {
            s.pop();
        }
    }
    Ok(s)
}

async fn status(c: &Client, json: bool) -> Result<(), CtlError> {
    let a = c.call(Request::new(Method::GET, &["status"])).await?;
    if json {
        print_raw(&a.text);
        return Ok(());
    }
    let v = a.value()?;
    let bots = &v["bots"];
    let total: u64 = bots
        .as_object()
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    let mut by_state: Vec<String> = STATUS_ORDER
        .iter()
        .filter_map(|s| {
            let n = bots.get(*s).and_then(Value::as_u64).unwrap_or(0);
            (n > 0).then(|| format!("{s} {n}"))
        })
        .collect();
    // States this botctl does not know yet still count.
    if let Some(m) = bots.as_object() {
        for (k, n) in m {
            let n = n.as_u64().unwrap_or(0);
            if n > 0 && !STATUS_ORDER.contains(&k.as_str()) {
                by_state.push(format!("{k} {n}"));
            }
        }
    }
    let bots_line = if by_state.is_empty() {
        total.to_string()
    } else {
        format!("{total} ({})", by_state.join(", "))
    };
    let llm = &v["llm"];
    print(&pairs(&[
        ("daemon", c.shown_base()),
        ("version", text(v, "version")),
        (
            "uptime",
            v["uptime_secs"]
                .as_u64()
                .map(output::duration)
                .unwrap_or_else(|| "-".into()),
        ),
        ("bots", bots_line),
        (
            "llm",
            format!(
                "{} in flight, {} queued, capacity {}",
                text(llm, "in_flight"),
                text(llm, "queued"),
                text(llm, "capacity")
            ),
        ),
    ]));
    Ok(())
}

/// A bot's uptime: how long since it started, while it runs.
fn uptime(b: &Value) -> String {
    match b["state"].as_str() {
        Some("running") | Some("stopping") => since(b, "started_at").unwrap_or_else(|| "-".into()),
        _ => "-".into(),
    }
}

async fn list(
    c: &Client,
    json: bool,
    pool: Option<String>,
    state: Option<String>,
) -> Result<(), CtlError> {
    let a = c
        .call(
            Request::new(Method::GET, &["bots"])
                .query("pool", pool)
                .query("state", state),
        )
        .await?;
    if json {
        print_raw(&a.text);
        return Ok(());
    }
    let empty = Vec::new();
    let bots = a.value()?["bots"].as_array().unwrap_or(&empty);
    if bots.is_empty() {
        print("no bots\n");
        return Ok(());
    }
    let mut t = Table::new(&[
        "NAME",
        "STATE",
        "MODEL",
        "POOL",
        "RESTARTS",
        "QUEUE",
        "IN-FLIGHT",
        "HANDLED",
        "UPTIME",
    ]);
    for b in bots {
        t.row(vec![
            text(b, "name"),
            text(b, "state"),
            text(b, "model"),
            text(b, "pool"),
            text(b, "restarts"),
            text(b, "mailbox_depth"),
            text(b, "in_flight"),
            text(b, "messages_handled"),
            uptime(b),
        ]);
    }
    print(&t.render());
    Ok(())
}

/// A bot as a key/value block.
fn bot_block(b: &Value) -> String {
    let state = match (b["state"].as_str(), b["desired_state"].as_str()) {
        (Some(s), Some(d)) if s != d => format!("{s} (desired {d})"),
        (Some(s), _) => s.to_owned(),
        _ => "-".into(),
    };
    let started = match b["started_at"].as_str() {
        Some(_) if uptime(b) != "-" => format!("{} (up {})", time(b, "started_at"), uptime(b)),
        Some(_) => time(b, "started_at"),
        None => "-".into(),
    };
    let options = match b.get("options") {
        Some(Value::Object(m)) if m.is_empty() => "-".into(),
        Some(v) => cell(v),
        None => "-".into(),
    };
    pairs(&[
        ("name", text(b, "name")),
        ("state", state),
        ("model", text(b, "model")),
        ("pool", text(b, "pool")),
        ("restart", text(b, "restart")),
        ("concurrency", text(b, "concurrency")),
        (
            "mailbox",
            format!(
                "{} / {}",
                text(b, "mailbox_depth"),
                text(b, "mailbox_capacity")
            ),
        ),
        ("in flight", text(b, "in_flight")),
        (
            "context",
            format!("{} messages", text(b, "context_messages")),
        ),
        ("handled", text(b, "messages_handled")),
        ("restarts", text(b, "restarts")),
        ("last error", flat(&text(b, "last_error"))),
        ("started", started),
        ("created", time(b, "created_at")),
        ("updated", time(b, "updated_at")),
        ("options", options),
        ("system prompt", flat(&text(b, "system_prompt"))),
    ])
}

/// Prints a bot answer: raw JSON, or the block.
fn show_bot(a: &Answer, json: bool) -> Result<(), CtlError> {
    if json {
        print_raw(&a.text);
    } else {
        print(&bot_block(a.value()?));
    }
    Ok(())
}

async fn get(c: &Client, json: bool, name: &str) -> Result<(), CtlError> {
    let a = c.call(Request::new(Method::GET, &["bots", name])).await?;
    show_bot(&a, json)
}

fn options_of(spec: &TemplateArgs) -> Option<Value> {
    if spec.option.is_empty() {
        return None;
    }
    let map: Map<String, Value> = spec.option.iter().cloned().collect();
    Some(Value::Object(map))
}

/// The spec fields both `create` and `edit` send as they are.
pub(super) fn common_fields(body: &mut Value, spec: &TemplateArgs) {
    put(body, "model", spec.model.clone().map(Value::from));
    put(body, "restart", spec.restart.clone().map(Value::from));
    put(body, "concurrency", spec.concurrency.map(Value::from));
    put(
        body,
        "mailbox_capacity",
        spec.mailbox_capacity.map(Value::from),
    );
    put(
        body,
        "context_messages",
        spec.context_messages.map(Value::from),
    );
    put(body, "options", options_of(spec));
}

async fn create(
    c: &Client,
    json: bool,
    name: &str,
    spec: SpecArgs,
    start: bool,
) -> Result<(), CtlError> {
    let mut body = json!({ "name": name });
    common_fields(&mut body, &spec.template);
    put(
        &mut body,
        "system_prompt",
        spec.template
            .system_prompt
            .filter(|s| !s.is_empty())
            .map(Value::from),
    );
    put(&mut body, "pool", spec.pool.map(Value::from));
    if start {
        put(&mut body, "autostart", Some(Value::Bool(true)));
    }
    let a = c
        .call(
            Request::new(Method::POST, &["bots"])
                .body(body)
                .timeout(Some(LIFECYCLE_TIMEOUT)),
        )
        .await?;
    show_bot(&a, json)
}

async fn edit(
    c: &Client,
    json: bool,
    name: &str,
    spec: SpecArgs,
    no_pool: bool,
    no_options: bool,
) -> Result<(), CtlError> {
    let mut body = json!({});
    common_fields(&mut body, &spec.template);
    put(
        &mut body,
        "system_prompt",
        spec.template.system_prompt.map(|s| {
            if s.is_empty() {
                Value::Null
            } else {
                Value::from(s)
            }
        }),
    );
    if no_pool {
        put(&mut body, "pool", Some(Value::Null));
    } else {
        put(&mut body, "pool", spec.pool.map(Value::from));
    }
    if no_options {
        put(&mut body, "options", Some(json!({})));
    }
    if body.as_object().is_some_and(Map::is_empty) {
        return Err(CtlError::Usage(
            "edit: nothing to change; give at least one of --model, --system-prompt, --pool, \
             --no-pool, --restart, --concurrency, --mailbox-capacity, --context-messages, \
             --option, --no-options"
                .into(),
        ));
    }
    let a = c
        .call(
            Request::new(Method::PATCH, &["bots", name])
                .body(body)
                .timeout(Some(LIFECYCLE_TIMEOUT)),
        )
        .await?;
    show_bot(&a, json)
}

async fn delete(c: &Client, json: bool, name: &str, purge: bool) -> Result<(), CtlError> {
    let a = c
        .call(
            Request::new(Method::DELETE, &["bots", name])
                .query("purge", purge.then_some("true"))
                .timeout(Some(LIFECYCLE_TIMEOUT)),
        )
        .await?;
    if json {
        // 204: there is no JSON to print.
        if !a.text.trim().is_empty() {
            print_raw(&a.text);
        }
    } else if purge {
        print(&format!("{name}: deleted, history purged\n"));
    } else {
        print(&format!("{name}: deleted\n"));
    }
    Ok(())
}

/// `start`, `stop` and `restart`: the daemon answers with the bot once it got there.
async fn lifecycle(
    c: &Client,
    json: bool,
    name: &str,
    action: &str,
    timeout_ms: Option<u32>,
) -> Result<(), CtlError> {
    let mut req =
        Request::new(Method::POST, &["bots", name, action]).timeout(Some(LIFECYCLE_TIMEOUT));
    if let Some(ms) = timeout_ms {
        req = req
            .body(json!({ "timeout_ms": ms }))
            .timeout(Some(Duration::from_millis(ms.into()) + LIFECYCLE_TIMEOUT));
    }
    let a = c.call(req).await?;
    if json {
        print_raw(&a.text);
    } else {
        let b = a.value()?;
        print(&format!("{}: {}\n", text(b, "name"), text(b, "state")));
    }
    Ok(())
}

/// The reply's text with one newline at the end.
fn reply_line(answer: &Value) -> String {
    let mut s = answer["reply"]["content"].as_str().unwrap_or("").to_owned();
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

pub(super) async fn send(
    c: &Client,
    json: bool,
    kind: &str,
    name: &str,
    body: Value,
    timeout: Option<Duration>,
) -> Result<(), CtlError> {
    let a = c
        .call(
            Request::new(Method::POST, &[kind, name, "messages"])
                .body(body)
                .timeout(timeout),
        )
        .await?;
    if json {
        print_raw(&a.text);
    } else {
        print(&reply_line(a.value()?));
    }
    Ok(())
}

/// `send --stream`: tokens as they arrive, then the end of the line. With `--json`, one
/// `{"event", "data"}` object per event.
pub(super) async fn send_stream(
    c: &Client,
    json: bool,
    kind: &str,
    name: &str,
    mut body: Value,
    timeout: Option<Duration>,
) -> Result<(), CtlError> {
    put(&mut body, "stream", Some(Value::Bool(true)));
    let req = Request::new(Method::POST, &[kind, name, "messages"])
        .body(body)
        .timeout(timeout);
    let mut printed = String::new();
    let plain = c
        .stream(req, |e: SseEvent| on_event(e, json, &mut printed))
        .await?;
    // A daemon that answered with plain JSON instead of a stream.
    if let Some(a) = plain {
        if json {
            print_raw(&a.text);
        } else {
            print(&reply_line(a.value()?));
        }
    }
    Ok(())
}

/// Handles one SSE event; `Ok(false)` ends the stream (done, or stdout went away).
fn on_event(e: SseEvent, json: bool, printed: &mut String) -> Result<bool, CtlError> {
    let data: Value = serde_json::from_str(&e.data).unwrap_or(Value::String(e.data.clone()));
    if json {
        if !matches!(e.event.as_str(), "token" | "done" | "error") {
            return Ok(true);
        }
        let line = json!({ "event": e.event, "data": data }).to_string() + "\n";
        if !print_flush(&line) {
            return Ok(false);
        }
        return match e.event.as_str() {
            "done" => Ok(false),
            "error" => Err(stream_error(&data)),
            _ => Ok(true),
        };
    }
    match e.event.as_str() {
        "token" => {
            let piece = data["content"].as_str().unwrap_or("");
            printed.push_str(piece);
            Ok(print_flush(piece))
        }
        "done" => {
            // Tokens that never came (a model that does not stream) are in the answer.
            if printed.is_empty() {
                print(&reply_line(&data));
            } else if !printed.ends_with('\n') {
                print("\n");
            }
            Ok(false)
        }
        "error" => {
            if !printed.is_empty() && !printed.ends_with('\n') {
                print("\n");
            }
            Err(stream_error(&data))
        }
        _ => Ok(true),
    }
}

/// An `event: error`'s `{"error": {…}}` as an API error.
fn stream_error(data: &Value) -> CtlError {
    error_from_value(0, Some(data), None, true).unwrap_or_else(|| {
        CtlError::BadResponse(format!(
            "botd's stream ended with an unreadable error: {data}"
        ))
    })
}

pub(super) async fn history(
    c: &Client,
    json: bool,
    kind: &str,
    name: &str,
    conversation: Option<String>,
    limit: Option<u16>,
    before: Option<String>,
) -> Result<(), CtlError> {
    let a = c
        .call(
            Request::new(Method::GET, &[kind, name, "messages"])
                .query("conversation", conversation)
                .query("limit", limit)
                .query("before", before),
        )
        .await?;
    if json {
        print_raw(&a.text);
        return Ok(());
    }
    let v = a.value()?;
    let empty = Vec::new();
    let messages = v["messages"].as_array().unwrap_or(&empty);
    if messages.is_empty() {
        print("no messages\n");
        return Ok(());
    }
    let mut t = Table::new(&["ID", "TIME", "CONVERSATION", "ROLE", "STATUS", "CONTENT"]);
    for m in messages {
        let status = match m["error"].as_str() {
            Some(code) => format!("{} ({code})", text(m, "status")),
            None => text(m, "status"),
        };
        t.row(vec![
            text(m, "id"),
            time(m, "created_at"),
            text(m, "conversation"),
            text(m, "role"),
            status,
            flat(m["content"].as_str().unwrap_or("")),
        ]);
    }
    let mut out = t.render();
    if let Some(next) = v["next_before"].as_str() {
        let command = if kind == "pools" {
            "pools history"
        } else {
            "history"
        };
        out.push_str(&format!(
            "(older: botctl {command} {name} --before {next})\n"
        ));
    }
    print(&out);
    Ok(())
}

async fn events(
    c: &Client,
    json: bool,
    name: Option<String>,
    pool: Option<String>,
    kind: Option<String>,
    limit: Option<u16>,
) -> Result<(), CtlError> {
    let path: Vec<&str> = match &name {
        // The bot's own route: an unknown bot is 404 `bot_not_found`.
        Some(n) => vec!["bots", n, "events"],
        None => vec!["events"],
    };
    let a = c
        .call(
            Request::new(Method::GET, &path)
                .query("pool", pool)
                .query("kind", kind)
                .query("limit", limit),
        )
        .await?;
    if json {
        print_raw(&a.text);
        return Ok(());
    }
    let empty = Vec::new();
    let events = a.value()?["events"].as_array().unwrap_or(&empty);
    if events.is_empty() {
        print("no events\n");
        return Ok(());
    }
    let mut t = Table::new(&["ID", "TIME", "KIND", "BOT", "POOL", "SUBJECT", "DETAIL"]);
    for e in events {
        let detail = match e.get("detail") {
            Some(Value::Object(m)) if m.is_empty() => "-".into(),
            Some(v) => flat(&cell(v)),
            None => "-".into(),
        };
        t.row(vec![
            text(e, "id"),
            time(e, "ts"),
            text(e, "kind"),
            text(e, "bot"),
            text(e, "pool"),
            text(e, "subject"),
            detail,
        ]);
    }
    print(&t.render());
    Ok(())
}

/// `logs`: the last records, oldest first, then (with `--follow`) new ones as they come.
async fn logs(
    c: &Client,
    json: bool,
    bot: Option<String>,
    follow: bool,
    level: String,
    tail: u16,
) -> Result<(), CtlError> {
    let path: Vec<&str> = match &bot {
        // The bot's own route: an unknown bot is 404 `bot_not_found`.
        Some(n) => vec!["bots", n, "logs"],
        None => vec!["logs"],
    };
    let req = Request::new(Method::GET, &path)
        .query("tail", Some(tail))
        .query("follow", Some(follow))
        .query("level", Some(level))
        // A follow lasts as long as the operator wants; a tail as long as it takes.
        .timeout(if follow {
            None
        } else {
            Some(LIFECYCLE_TIMEOUT)
        });
    let color = !json && output::color_stdout();
    let ended = c
        .lines(req, |line| {
            let shown = if json {
                format!("{line}\n")
            } else {
                log_line(line, color)
            };
            // Stdout went away (`botctl logs -f | head`): stop quietly.
            Ok(print_flush(&shown))
        })
        .await?;
    if follow && ended {
        // The daemon never ends a follow on its own: it went away.
        return Err(CtlError::Unreachable(format!(
            "botd at {} closed the log stream (it stopped or went away)",
            c.shown_base()
        )));
    }
    Ok(())
}

/// `login`: the password comes from stdin (one line), the token goes to stdout.
async fn login(c: &Client, json: bool, username: &str, export: bool) -> Result<(), CtlError> {
    let mut password = String::new();
    std::io::stdin()
        .read_line(&mut password)
        .map_err(|e| CtlError::Usage(format!("cannot read the password from stdin: {e}")))?;
    let password = password.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        return Err(CtlError::Usage("no password on stdin".into()));
    }
    let answer = c
        .call(
            Request::new(Method::POST, &["auth", "login"])
                .body(json!({"username": username, "password": password})),
        )
        .await?;
    let v = answer.value()?;
    let token = v["token"].as_str().unwrap_or_default();
    if json {
        print_raw(&answer.text);
    } else if export {
        print(&format!("export BOTD_TOKEN={token}\n"));
    } else {
        print(&format!("{token}\n"));
    }
    Ok(())
}
