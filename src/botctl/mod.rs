//! `botctl`: the operator's command line for botd (`src/bin/botctl.rs` is its thin main).
//!
//! # Layout
//!
//! - this file: the command line ([`Cli`]) and [`main`], which turns every outcome into
//!   an exit status;
//! - [`commands`]: one function per subcommand: the request it makes and how it shows
//!   the answer;
//! - [`client`]: the HTTP exchange and the error type ([`client::CtlError`]) with its
//!   stderr line and exit status;
//! - [`sse`]: the `text/event-stream` parser behind `send --stream`;
//! - [`chat`]: `botctl chat`, a conversation over the WebSocket;
//! - [`output`]: tables, key/value blocks, times.
//!
//! # Contract
//!
//! - Output: readable aligned tables by default; `--json` prints the daemon's JSON body
//!   exactly as it came (for scripts). `send --stream --json` prints one JSON object per
//!   SSE event, `{"event": "token"|"done"|"error", "data": …}`.
//! - An error prints ONE line to stderr, `botctl: CODE: MESSAGE`, with the API's code and
//!   message, or `usage`, `unreachable`, `timeout` or `bad_response` for botctl's own.
//! - Exit status: 0 success, 1 an API error (any non-2xx, or an answer that cannot be
//!   read), 2 a usage error (clap's own and bad flag values), 3 the daemon cannot be
//!   reached (connection refused, DNS, timeout, a connection that broke).
//! - The token is never printed (`--help` hides `BOTD_TOKEN`'s value), except by `login`,
//!   whose output it is: `botctl login NAME` prints the token alone, `--export` an
//!   `export BOTD_TOKEN=…` line for `eval`. No file is written.
//! - `--ca-file PATH` (or `BOTD_CA_FILE`) trusts a daemon's own certificate for HTTPS.
//!
//! # Logs
//!
//! `botctl logs [BOT] [-f] [--level L] [-n N]` reads API.md's NDJSON ("Logs and events")
//! from `GET /api/v1/logs` or `/api/v1/bots/{name}/logs` with
//! [`client::Client::lines`]: one record a line, shown as
//! `TIMESTAMP LEVEL [bot] msg key=value …` ([`output::log_line`]), coloured by level
//! only on a terminal without `NO_COLOR`; `--json` prints the lines as they came. A
//! `{"missed": N}` line becomes a warning line. With `-f` the stream only ends when the
//! daemon goes away, which is exit 3 like any broken connection.

pub mod chat;
pub mod client;
pub mod commands;
pub mod output;
pub mod pools;
pub mod sse;

use clap::{Args, CommandFactory, Parser, Subcommand};
use serde_json::Value;

use client::Secret;

/// The event kinds of API.md ("Logs and events").
pub const EVENT_KINDS: &[&str] = &[
    "created",
    "updated",
    "started",
    "stopped",
    "crashed",
    "backoff",
    "restarted",
    "failed",
    "deleted",
    "pool_created",
    "pool_updated",
    "pool_deleted",
    "scaled_up",
    "scaled_down",
    "user_created",
    "user_updated",
    "user_deleted",
];

const BOT_STATES: &[&str] = &[
    "stopped", "starting", "running", "stopping", "backoff", "failed",
];
/// The log levels of API.md, lowest first.
const LOG_LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "critical"];
const RESTART_POLICIES: &[&str] = &["permanent", "transient", "temporary"];

#[derive(Parser)]
#[command(
    name = "botctl",
    version,
    about = "The operator's command line for botd",
    after_help = "Exit status: 0 success, 1 an API error, 2 a usage error, 3 botd cannot be reached."
)]
pub struct Cli {
    /// botd's base URL.
    #[arg(
        long,
        global = true,
        env = "BOTD_URL",
        default_value = "http://127.0.0.1:8000",
        value_name = "URL"
    )]
    pub url: String,
    /// The bearer token (from `botd token` or a login). Never printed.
    #[arg(
        long,
        global = true,
        env = "BOTD_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        value_parser = parse_secret
    )]
    pub token: Option<Secret>,
    /// Print the API's JSON as is, for scripts.
    #[arg(long, global = true)]
    pub json: bool,
    /// PEM certificates to trust for an https:// URL (a self-signed daemon, a private CA).
    #[arg(long, global = true, env = "BOTD_CA_FILE", value_name = "PATH")]
    pub ca_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// The daemon's version, uptime, bots by state and LLM load.
    Status,
    /// List bots, sorted by name.
    List {
        /// Only the bots of this pool.
        #[arg(long, value_name = "POOL")]
        pool: Option<String>,
        /// Only the bots in this state.
        #[arg(long, value_name = "STATE", value_parser = clap::builder::PossibleValuesParser::new(BOT_STATES))]
        state: Option<String>,
    },
    /// Show one bot: its spec and live status.
    Get {
        /// The bot's name.
        name: String,
    },
    /// Create a bot (admin).
    Create {
        /// The bot's name: ^[a-z0-9][a-z0-9_-]{0,62}$.
        name: String,
        #[command(flatten)]
        spec: SpecArgs,
        /// Start it at once.
        #[arg(long)]
        start: bool,
    },
    /// Change a bot's spec (admin); applies from its next start.
    Edit {
        /// The bot's name.
        name: String,
        #[command(flatten)]
        spec: SpecArgs,
        /// Take the bot out of its pool.
        #[arg(long, conflicts_with = "pool")]
        no_pool: bool,
        /// Clear the bot's options (`--option` replaces the whole options object).
        #[arg(long, conflicts_with = "option")]
        no_options: bool,
    },
    /// Delete a bot (admin), stopping it first; its history is kept unless --purge.
    Delete {
        /// The bot's name.
        name: String,
        /// Delete its message history too.
        #[arg(long)]
        purge: bool,
    },
    /// Start a bot (operator); answers once it is running.
    Start {
        /// The bot's name.
        name: String,
    },
    /// Stop a bot (operator); answers once it is stopped.
    Stop {
        /// The bot's name.
        name: String,
        /// How long queued messages have to be answered (1..3600000).
        #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u32).range(1..=3_600_000))]
        timeout_ms: Option<u32>,
    },
    /// Restart a bot (operator); starts a stopped or failed one.
    Restart {
        /// The bot's name.
        name: String,
    },
    /// Send a message to a bot (operator) and print its reply.
    Send {
        /// The bot's name.
        name: String,
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
    /// Chat with a bot (or a pool) over the WebSocket (operator): each line of stdin is a
    /// turn, its reply streams to stdout.
    Chat {
        /// The bot's name.
        #[arg(required_unless_present = "pool", conflicts_with = "pool")]
        name: Option<String>,
        /// Talk to this pool instead of one bot.
        #[arg(long, value_name = "POOL")]
        pool: Option<String>,
        /// The conversation to continue (default: a new `chat-…` one).
        #[arg(long, short = 'c', value_name = "ID")]
        conversation: Option<String>,
    },
    /// A bot's message history, newest first.
    History {
        /// The bot's name.
        name: String,
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
    /// Lifecycle and audit events, newest first: all of them, or one bot's.
    Events {
        /// Only this bot's events.
        name: Option<String>,
        /// Only this pool's events.
        #[arg(long, value_name = "POOL", conflicts_with = "name")]
        pool: Option<String>,
        /// Only events of this kind.
        #[arg(long, value_name = "KIND", value_parser = clap::builder::PossibleValuesParser::new(EVENT_KINDS))]
        kind: Option<String>,
        /// How many events (1..500, default 50).
        #[arg(long, short = 'n', value_name = "N", value_parser = clap::value_parser!(u16).range(1..=500))]
        limit: Option<u16>,
    },
    /// The daemon's log records (or one bot's), oldest first; `-f` keeps following.
    Logs {
        /// Only this bot's records.
        bot: Option<String>,
        /// Keep the stream open and print new records as they come (until Ctrl-C or the
        /// daemon goes away).
        #[arg(long, short = 'f')]
        follow: bool,
        /// The lowest level shown.
        #[arg(long, value_name = "L", default_value = "info", value_parser = clap::builder::PossibleValuesParser::new(LOG_LEVELS))]
        level: String,
        /// How many past records to show first (0..10000).
        #[arg(long, short = 'n', value_name = "N", default_value_t = 100, value_parser = clap::value_parser!(u16).range(0..=10_000))]
        tail: u16,
    },
    /// Managed pools: list, show, create or change, delete; messages and history.
    Pools {
        #[command(subcommand)]
        command: pools::PoolCommand,
    },
    /// Log in: reads the password (one line) from stdin and prints the token.
    Login {
        /// The username.
        username: String,
        /// Print `export BOTD_TOKEN=…` for `eval "$(botctl login NAME --export)"`.
        #[arg(long)]
        export: bool,
    },
    /// Print a shell completion script: `botctl completions bash > /etc/bash_completion.d/botctl`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// The spec flags of `create` and `edit`.
#[derive(Args)]
pub struct SpecArgs {
    #[command(flatten)]
    pub template: TemplateArgs,
    /// The pool whose routing the bot takes part in.
    #[arg(long, value_name = "POOL")]
    pub pool: Option<String>,
}

/// The spec flags a bot and a pool's template share.
#[derive(Args)]
pub struct TemplateArgs {
    /// The model (default: the daemon's `llm.default_model`).
    #[arg(long, value_name = "MODEL")]
    pub model: Option<String>,
    /// The system prompt; `''` means none (on `edit`: clears it).
    #[arg(long, value_name = "TEXT")]
    pub system_prompt: Option<String>,
    /// When the supervisor restarts it.
    #[arg(long, value_name = "POLICY", value_parser = clap::builder::PossibleValuesParser::new(RESTART_POLICIES))]
    pub restart: Option<String>,
    /// Messages handled at once (1..1024).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub concurrency: Option<u32>,
    /// Messages that may wait (1..100000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub mailbox_capacity: Option<u32>,
    /// Messages of history given to the model (0..1000).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1000))]
    pub context_messages: Option<u32>,
    /// An Ollama option, repeatable: the value is JSON if it parses (`0.7`, `true`,
    /// `["a"]`), else a string. Together they make the bot's whole options object.
    #[arg(long = "option", value_name = "KEY=VALUE", value_parser = parse_option)]
    pub option: Vec<(String, Value)>,
}

fn parse_secret(s: &str) -> Result<Secret, String> {
    Ok(Secret::new(s.trim().to_owned()))
}

/// `key=value` with a JSON value, or the text as a string.
fn parse_option(s: &str) -> Result<(String, Value), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))?;
    let k = k.trim();
    if k.is_empty() {
        return Err(format!("{s:?} has an empty key"));
    }
    let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
    Ok((k.to_owned(), value))
}

/// Runs botctl with the process's arguments; returns the exit status.
pub fn main() -> i32 {
    run(std::env::args_os())
}

/// Runs botctl with these arguments (the first is the program name).
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = match Cli::try_parse_from(args) {
        Ok(c) => c,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let _ = e.print();
            return e.exit_code();
        }
    };
    if let Command::Completions { shell } = cli.command {
        let mut cmd = Cli::command();
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd, "botctl", &mut buf);
        output::print(&String::from_utf8_lossy(&buf));
        return 0;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("botctl: internal: cannot start the runtime: {e}");
            return 1;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(()) => 0,
        Err(e) => {
            let line = e.line();
            if !line.is_empty() {
                eprintln!("{line}");
            }
            e.exit_code()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn options_parse_as_json_or_text() {
        assert_eq!(
            parse_option("temperature=0.7"),
            Ok(("temperature".into(), json!(0.7)))
        );
        assert_eq!(
            parse_option("stop=[\"a\"]"),
            Ok(("stop".into(), json!(["a"])))
        );
        assert_eq!(parse_option("name=bob"), Ok(("name".into(), json!("bob"))));
        assert_eq!(parse_option("x=a=b"), Ok(("x".into(), json!("a=b"))));
        assert!(parse_option("novalue").is_err());
        assert!(parse_option("=1").is_err());
    }
}
