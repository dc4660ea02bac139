//! The `botd` command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use slog::{error, info};

use crate::app::{open_database, Daemon};
use crate::auth::{load_secret, JwtKeys, Role, TokenKind};
use crate::config::{Config, ConfigSource};
use crate::telemetry::{self, LevelSwitch, LogHub};

#[derive(Debug, Parser)]
#[command(
    name = "botd",
    version,
    about = "A supervisor daemon for fleets of LLM-backed bots"
)]
pub struct Cli {
    /// The configuration file (default ./config.toml, or BOTD_CONFIG).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Apply the database migrations and exit.
    Migrate,
    /// Check the configuration: print it (secrets masked) or the one line that is wrong.
    CheckConfig,
    /// Mint a service token from the configured secret and print it alone on stdout.
    Token {
        /// The token's subject.
        #[arg(long)]
        sub: String,
        /// viewer, operator or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// How long it is valid, e.g. 1h, 30m, 7d.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: Duration,
    },
    /// Write a consistent copy of the SQLite database to PATH while botd runs (VACUUM
    /// INTO); PostgreSQL is backed up with pg_dump.
    Backup {
        /// Where the copy goes; it must not exist yet.
        #[arg(value_name = "PATH")]
        path: PathBuf,
    },
    /// Manage login accounts on this host's database.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user; the password is read from stdin (one line).
    Add {
        /// The username: ^[a-z0-9][a-z0-9_-]{0,62}$.
        name: String,
        /// viewer, operator or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
    },
}

fn parse_role(s: &str) -> Result<Role, String> {
    Role::parse(s).ok_or_else(|| format!("{s:?} is not viewer, operator or admin"))
}

/// Runs the command line; returns the exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let source = ConfigSource::resolve(cli.config.clone(), std::env::var("BOTD_CONFIG").ok());
    let loaded = Config::load(&source, std::env::vars());
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => match loaded {
            Ok(config) => {
                print!("{}", config.to_masked_toml());
                0
            }
            Err(e) => {
                eprintln!("{e}");
                1
            }
        },
        Command::Migrate => {
            let config = match loaded {
                Ok(c) => c,
                Err(e) => return fail(&e.to_string()),
            };
            let log = telemetry::logger(
                config.logging.format,
                LevelSwitch::new(config.logging.level),
            );
            match open_database(&config, &log) {
                Ok(_) => 0,
                Err(e) => fail(&format!("{e:#}")),
            }
        }
        Command::Token { sub, role, ttl } => {
            let config = match loaded {
                Ok(c) => c,
                Err(e) => return fail(&e.to_string()),
            };
            if sub.is_empty() {
                return fail("--sub must not be empty");
            }
            match load_secret(
                config.auth.jwt_secret.as_deref(),
                config.secret_file(),
                false,
            ) {
                Ok(Some(secret)) => {
                    println!(
                        "{}",
                        JwtKeys::new(&secret).mint(&sub, role, TokenKind::Service, ttl)
                    );
                    0
                }
                Ok(None) => fail(&format!(
                    "auth.jwt_secret_file: {} does not exist yet; start botd once to create it",
                    config.secret_file().display()
                )),
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Backup { path } => match loaded {
            Ok(config) => backup(&config, &path),
            Err(e) => fail(&e.to_string()),
        },
        Command::User {
            command: UserCommand::Add { name, role },
        } => match loaded {
            Ok(config) => match add_user(&config, &name, role, std::io::stdin().lock()) {
                Ok(()) => {
                    eprintln!("botd: user {name:?} added with role {}", role.as_str());
                    0
                }
                Err(e) => fail(&e),
            },
            Err(e) => fail(&e.to_string()),
        },
        Command::Run => match loaded {
            Ok(config) => run(config, source),
            Err(e) => fail(&e.to_string()),
        },
    }
}

/// `botd backup PATH`: `VACUUM INTO` on SQLite, which reads one consistent snapshot while
/// the daemon goes on writing; on PostgreSQL it says how to use pg_dump and fails.
fn backup(config: &Config, path: &std::path::Path) -> i32 {
    use botd_actors::store::{conn::Target, queries, Db};

    match Target::parse(&config.database.url) {
        Ok(Target::Sqlite(db)) if !db.is_file() => {
            return fail(&format!(
                "database.url: {} does not exist; there is nothing to back up",
                db.display()
            ))
        }
        Ok(Target::Sqlite(_)) => {}
        Ok(Target::Postgres(_)) => {
            eprintln!(
                "botd: backup copies SQLite databases only; database.url names PostgreSQL.\n\
                 Back it up with pg_dump, e.g.\n  \
                 pg_dump --format=custom --file=botd.dump \"$BOTD_DATABASE__URL\"\n\
                 and restore with\n  \
                 pg_restore --clean --if-exists --dbname=\"$BOTD_DATABASE__URL\" botd.dump"
            );
            return 2;
        }
        Err(e) => return fail(&format!("database.url: {e}")),
    }
    if path.exists() {
        return fail(&format!(
            "{} exists already; name a new file",
            path.display()
        ));
    }
    let Some(target) = path.to_str() else {
        return fail("the backup path must be valid UTF-8");
    };
    let db = match Db::connect(&config.database.url, 1, "normal") {
        Ok(db) => db,
        Err(e) => return fail(&format!("database.url: {e}")),
    };
    let result = db
        .readers
        .get()
        .map_err(botd_actors::store::StoreError::from)
        .and_then(|mut conn| queries::vacuum_into(&mut conn, target));
    match result {
        Ok(()) => {
            println!("{}", path.display());
            0
        }
        Err(e) => fail(&format!("the backup failed: {e}")),
    }
}
/// `botd user add`: reads the password (one line) from `input`, hashes it with argon2id
/// and stores the user, with a `user_created` event whose subject is `cli`.
pub fn add_user(
    config: &Config,
    name: &str,
    role: Role,
    mut input: impl std::io::BufRead,
) -> Result<(), String> {
    use botd_actors::store::queries::{self, NewEvent, UserRow};
    let name = botd_actors::names::Username::parse(name).map_err(|e| e.to_string())?;
    let mut password = String::new();
    input
        .read_line(&mut password)
        .map_err(|e| format!("cannot read the password from stdin: {e}"))?;
    let password = password.trim_end_matches(['\n', '\r']);
    crate::auth::check_password_rule(password).map_err(|e| format!("the password {e}"))?;
    let hash = crate::auth::hash_password(password)?;
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let db = open_database(config, &log).map_err(|e| format!("{e:#}"))?;
    let mut conn = db
        .writer
        .get()
        .map_err(|e| format!("the database is unavailable: {e}"))?;
    let now = botd_actors::model::now_ms();
    let row = UserRow {
        username: name.as_str().to_owned(),
        password_hash: hash,
        role: role.as_str().to_owned(),
        created_at: now,
        updated_at: now,
    };
    match queries::insert_user(&mut conn, &row) {
        Ok(()) => {}
        Err(botd_actors::store::StoreError::Conflict(_)) => {
            return Err(format!("user {:?} already exists", name.as_str()))
        }
        Err(e) => return Err(e.to_string()),
    }
    let event = NewEvent {
        ts: now,
        bot: None,
        pool: None,
        kind: "user_created".into(),
        subject: "cli".into(),
        detail: serde_json::json!({"username": row.username, "role": row.role}).to_string(),
    };
    queries::insert_event(&mut conn, &event).map_err(|e| e.to_string())?;
    Ok(())
}

/// Prints one line (libpq's messages, say, span several) and gives status 1.
fn fail(message: &str) -> i32 {
    let line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    eprintln!("botd: {line}");
    1
}

/// Runs the daemon until SIGTERM or SIGINT; a second signal exits at once with status 1.
fn run(config: Config, source: ConfigSource) -> i32 {
    let level = LevelSwitch::new(config.logging.level);
    let l = &config.logging;
    let hub = LogHub::new(l.ring_records, l.bot_ring_records, l.follow_buffer_records);
    let log = telemetry::logger_with_hub(
        config.logging.format,
        level.clone(),
        std::io::stdout(),
        Some(hub.clone()),
    );
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(&format!("cannot start the signal runtime: {e}")),
    };
    // The handlers are in place before the daemon starts, so a stop signal that arrives
    // once systemd has READY=1 (or during start-up) is a graceful stop, not a kill.
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        let _runtime = rt.enter();
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::hangup()),
        )
    };
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = signals else {
        return fail("cannot install signal handlers");
    };
    let daemon = match Daemon::start(config, log.clone(), level, hub) {
        Ok(d) => d,
        Err(e) => {
            error!(log, "botd could not start."; "error" => format!("{e:#}"));
            return fail(&format!("{e:#}"));
        }
    };
    let status = rt.block_on(async {
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    match Config::load(&source, std::env::vars()) {
                        Ok(new) => daemon.reload(&new),
                        Err(e) => error!(log, "The configuration was not reloaded."; "error" => e.to_string()),
                    }
                }
            }
        }
        info!(log, "A stop signal arrived; stopping. A second one exits at once.");
        daemon.begin_shutdown();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            daemon.join();
            let _ = done_tx.send(());
        });
        tokio::select! {
            _ = done_rx => 0,
            _ = term.recv() => 1,
            _ = int.recv() => 1,
        }
    });
    status
}
