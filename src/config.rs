//! The configuration: `config.toml`, then `BOTD_SECTION__KEY` environment overrides.
//!
//! Every key and default is ARCHITECTURE.md's table. Unknown keys and bad values are
//! refused with one line that names the key (and the environment variable it came from,
//! when it came from one).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use botd_actors::settings::{
    check_range, BotDefaults, InvalidSetting, Limits, LlmSettings, PoolSettings, SupervisorSettings,
};
use serde::{Deserialize, Serialize};

/// The configuration file used when neither `--config` nor `BOTD_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "config.toml";

/// Prefix of the environment variables that override keys.
const ENV_PREFIX: &str = "BOTD_";

/// Why the configuration was refused: one line, naming the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The dotted key, or empty when the file as a whole is at fault.
    pub key: String,
    /// What is wrong.
    pub message: String,
    /// Where the value came from (a file or an environment variable).
    pub source: Option<String>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration: ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, " (from {source})")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl From<InvalidSetting> for ConfigError {
    fn from(e: InvalidSetting) -> Self {
        Self {
            key: e.key,
            message: e.message,
            source: None,
        }
    }
}

/// The whole configuration, typed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub http: HttpSettings,
    pub limits: Limits,
    pub database: DatabaseSettings,
    pub redis: RedisSettings,
    pub llm: LlmSettings,
    pub bots: BotDefaults,
    pub pools: PoolSettings,
    pub auth: AuthSettings,
    pub rate_limit: RateLimitSettings,
    pub supervisor: SupervisorSettings,
    pub logging: LoggingSettings,
    pub retention: RetentionSettings,
}

/// `[http]`: the listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSettings {
    /// Address and port to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// A request body in bytes at most; past it, 413.
    pub max_body_bytes: u64,
    /// Time a client has to send its request headers.
    pub header_read_timeout_ms: u64,
    /// Open connections at most; further ones wait in the listen backlog.
    pub max_connections: usize,
    /// PEM certificate chain; with `tls_key`, HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Origins allowed by CORS; empty means CORS is off.
    pub cors_origins: Vec<String>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            max_body_bytes: 1 << 20,
            header_read_timeout_ms: 10_000,
            max_connections: 1024,
            tls_cert: None,
            tls_key: None,
            cors_origins: Vec::new(),
        }
    }
}

/// How SQLite commits: `normal` survives a process crash, `full` also power loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    Normal,
    Full,
}

/// `[database]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` (relative to the working directory) or `postgres://…`.
    pub url: String,
    /// Connections in the pool.
    pub pool_size: u32,
    /// SQLite's `synchronous` pragma.
    pub sqlite_synchronous: SqliteSynchronous,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            url: "sqlite://botd.db".into(),
            pool_size: 20,
            sqlite_synchronous: SqliteSynchronous::Normal,
        }
    }
}

/// `[redis]`: optional shared cache and rate limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://…`; unset means in-process cache and rate limits.
    pub url: Option<String>,
    /// Prefix of every key botd writes.
    pub key_prefix: String,
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: None,
            key_prefix: "botd:".into(),
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthSettings {
    /// The JWT secret itself (prefer the environment or the file).
    pub jwt_secret: Option<String>,
    /// A file holding the secret; created with 32 random bytes on first start.
    pub jwt_secret_file: PathBuf,
    /// Lifetime of a login token.
    pub token_ttl_secs: u64,
    /// How stale a user token's user and role may be.
    pub user_check_secs: u64,
    /// Login attempts per client IP and username per minute.
    pub login_attempts_per_minute: u32,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_secret_file: PathBuf::from("botd.secret"),
            token_ttl_secs: 3600,
            user_check_secs: 5,
            login_attempts_per_minute: 10,
        }
    }
}

/// `[rate_limit]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Requests per minute per token subject (burst: the same number).
    pub requests_per_minute: u32,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            requests_per_minute: 1000,
        }
    }
}

/// Log levels, written in full and lower case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Critical,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn to_slog(self) -> slog::Level {
        match self {
            LogLevel::Critical => slog::Level::Critical,
            LogLevel::Error => slog::Level::Error,
            LogLevel::Warn => slog::Level::Warning,
            LogLevel::Info => slog::Level::Info,
            LogLevel::Debug => slog::Level::Debug,
            LogLevel::Trace => slog::Level::Trace,
        }
    }
}

/// How log records are written to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Term,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingSettings {
    pub level: LogLevel,
    pub format: LogFormat,
    /// Records kept in the daemon-wide ring.
    pub ring_records: usize,
    /// Records kept per bot, allocated on first use.
    pub bot_ring_records: usize,
    /// A follower's buffer; when full, records are dropped and reported as missed.
    pub follow_buffer_records: usize,
}

impl Default for LoggingSettings {
    fn default() -> Self {
        Self {
            level: LogLevel::Info,
            format: LogFormat::Json,
            ring_records: 10_000,
            bot_ring_records: 500,
            follow_buffer_records: 1000,
        }
    }
}

/// `[retention]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetentionSettings {
    /// Messages older than this are deleted; 0 keeps everything.
    pub max_age_days: u32,
    /// Messages deleted per batch.
    pub batch_size: u32,
    /// Time between two retention runs.
    pub interval_secs: u64,
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            max_age_days: 0,
            batch_size: 1000,
            interval_secs: 3600,
        }
    }
}

/// Where the configuration comes from, as the command line and environment say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// Named with `--config` or `BOTD_CONFIG`: it must exist.
    Named(PathBuf),
    /// The default `./config.toml`: built-in defaults when it does not exist.
    Default,
}

impl ConfigSource {
    /// `--config PATH` wins over `BOTD_CONFIG`, which wins over the default.
    pub fn resolve(flag: Option<PathBuf>, env: Option<String>) -> Self {
        match flag.or_else(|| env.filter(|s| !s.is_empty()).map(PathBuf::from)) {
            Some(path) => ConfigSource::Named(path),
            None => ConfigSource::Default,
        }
    }
}

impl Config {
    /// Reads the file (if any), applies the `BOTD_SECTION__KEY` variables of `env`, and
    /// checks every value.
    pub fn load(
        source: &ConfigSource,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let (text, origin) = match source {
            ConfigSource::Named(path) => match std::fs::read_to_string(path) {
                Ok(text) => (text, path.display().to_string()),
                Err(e) => {
                    return Err(ConfigError {
                        key: String::new(),
                        message: format!("cannot read {}: {e}", path.display()),
                        source: None,
                    })
                }
            },
            ConfigSource::Default => match std::fs::read_to_string(DEFAULT_CONFIG_PATH) {
                Ok(text) => (text, DEFAULT_CONFIG_PATH.to_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    (String::new(), "built-in defaults".to_owned())
                }
                Err(e) => {
                    return Err(ConfigError {
                        key: String::new(),
                        message: format!("cannot read {DEFAULT_CONFIG_PATH}: {e}"),
                        source: None,
                    })
                }
            },
        };
        Self::from_parts(&text, &origin, env)
    }

    /// Parses TOML text and applies environment overrides; `origin` names the text in errors.
    pub fn from_parts(
        text: &str,
        origin: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            key: String::new(),
            message: format!(
                "not valid TOML: {}",
                e.message().split_whitespace().collect::<Vec<_>>().join(" ")
            ),
            source: Some(origin.to_owned()),
        })?;
        // Which keys came from which variable, so an error can say so.
        let mut from_env = BTreeMap::new();
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k.contains("__"))
            .collect();
        overrides.sort();
        for (var, value) in overrides {
            let path = var[ENV_PREFIX.len()..].to_ascii_lowercase();
            let Some((section, key)) = path.split_once("__") else {
                continue;
            };
            if section.is_empty() || key.is_empty() || key.contains("__") {
                return Err(ConfigError {
                    key: path.replace("__", "."),
                    message: "an override must be BOTD_SECTION__KEY".into(),
                    source: Some(var),
                });
            }
            let dotted = format!("{section}.{key}");
            let entry = table
                .entry(section.to_owned())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let toml::Value::Table(section_table) = entry else {
                return Err(ConfigError {
                    key: section.to_owned(),
                    message: "must be a table".into(),
                    source: Some(origin.to_owned()),
                });
            };
            section_table.insert(key.to_owned(), env_value(&value));
            from_env.insert(dotted, var);
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
                let key = e.path().to_string();
                let key = if key == "." { String::new() } else { key };
                let mut message = e.into_inner().to_string();
                // serde's message for an unknown field lists every valid one; keep it
                // on one line.
                message = message.replace('\n', " ");
                // An unknown field is reported at its parent; name the field itself.
                let key = unknown_field_key(&key, &message).unwrap_or(key);
                let source = from_env
                    .get(&key)
                    .cloned()
                    .or_else(|| Some(origin.to_owned()));
                ConfigError {
                    key,
                    message,
                    source,
                }
            })?;
        config.validate().map_err(|mut e| {
            e.source = from_env.get(&e.key).cloned().or(Some(origin.to_owned()));
            e
        })?;
        Ok(config)
    }

    /// Checks every range and rule the types alone do not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let h = &self.http;
        check_range("http.max_body_bytes", h.max_body_bytes, 1024, 1 << 30)?;
        check_range(
            "http.header_read_timeout_ms",
            h.header_read_timeout_ms,
            1,
            3_600_000,
        )?;
        check_range("http.max_connections", h.max_connections, 1, 1_000_000)?;
        if h.tls_cert.is_some() != h.tls_key.is_some() {
            let key = if h.tls_cert.is_some() {
                "http.tls_key"
            } else {
                "http.tls_cert"
            };
            return Err(InvalidSetting::new(key, "tls_cert and tls_key go together").into());
        }
        for origin in &h.cors_origins {
            if !(origin.starts_with("http://") || origin.starts_with("https://"))
                || origin.ends_with('/')
            {
                return Err(InvalidSetting::new(
                    "http.cors_origins",
                    format!("{origin:?} is not an origin like https://example.com"),
                )
                .into());
            }
        }
        self.limits.validate()?;
        let d = &self.database;
        if !(d.url.starts_with("sqlite:")
            || d.url.starts_with("postgres://")
            || d.url.starts_with("postgresql://"))
        {
            return Err(InvalidSetting::new(
                "database.url",
                "must start with sqlite://, postgres:// or postgresql://",
            )
            .into());
        }
        check_range("database.pool_size", d.pool_size, 1, 1000)?;
        if let Some(url) = &self.redis.url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(InvalidSetting::new(
                    "redis.url",
                    "must start with redis:// or rediss://",
                )
                .into());
            }
        }
        if self.redis.key_prefix.is_empty() || self.redis.key_prefix.len() > 64 {
            return Err(InvalidSetting::new("redis.key_prefix", "must be 1 to 64 bytes").into());
        }
        self.llm.validate()?;
        self.bots.validate()?;
        self.pools.validate()?;
        let a = &self.auth;
        if let Some(secret) = &a.jwt_secret {
            if secret.trim().len() < 32 {
                return Err(
                    InvalidSetting::new("auth.jwt_secret", "must be at least 32 bytes").into(),
                );
            }
        }
        if a.jwt_secret_file.as_os_str().is_empty() {
            return Err(InvalidSetting::new("auth.jwt_secret_file", "must not be empty").into());
        }
        check_range("auth.token_ttl_secs", a.token_ttl_secs, 60, 31_536_000)?;
        check_range("auth.user_check_secs", a.user_check_secs, 1, 3600)?;
        check_range(
            "auth.login_attempts_per_minute",
            a.login_attempts_per_minute,
            1,
            100_000,
        )?;
        check_range(
            "rate_limit.requests_per_minute",
            self.rate_limit.requests_per_minute,
            1,
            100_000_000,
        )?;
        self.supervisor.validate()?;
        let l = &self.logging;
        check_range("logging.ring_records", l.ring_records, 0, 10_000_000)?;
        check_range("logging.bot_ring_records", l.bot_ring_records, 0, 1_000_000)?;
        check_range(
            "logging.follow_buffer_records",
            l.follow_buffer_records,
            1,
            1_000_000,
        )?;
        let r = &self.retention;
        check_range("retention.max_age_days", r.max_age_days, 0, 36_500)?;
        check_range("retention.batch_size", r.batch_size, 1, 1_000_000)?;
        check_range("retention.interval_secs", r.interval_secs, 1, 86_400 * 7)?;
        Ok(())
    }

    /// The effective configuration as TOML, with secrets masked.
    pub fn to_masked_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.auth.jwt_secret.is_some() {
            shown.auth.jwt_secret = Some("********".into());
        }
        shown.database.url = mask_url_password(&shown.database.url);
        shown.redis.url = shown.redis.url.as_deref().map(mask_url_password);
        toml::to_string(&shown).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }

    /// The secret file resolved against the working directory.
    pub fn secret_file(&self) -> &Path {
        &self.auth.jwt_secret_file
    }
}

/// An environment value as TOML: a number, boolean or array when it reads as one, else
/// the string itself (quote a string that looks like a number: `'"4"'`).
fn env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match doc.parse::<toml::Table>() {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.to_owned()),
    }
}

/// serde reports ``unknown field `x` `` at the parent's path; return `parent.x`.
fn unknown_field_key(parent: &str, message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let field = &rest[..rest.find('`')?];
    if parent == field || parent.ends_with(&format!(".{field}")) {
        return Some(parent.to_owned());
    }
    Some(if parent.is_empty() {
        field.to_owned()
    } else {
        format!("{parent}.{field}")
    })
}

/// `scheme://user:secret@host` → `scheme://user:********@host`.
fn mask_url_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let Some(at) = rest.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    match userinfo.find(':') {
        Some(colon) => format!(
            "{}://{}:********{}",
            &url[..scheme_end],
            &userinfo[..colon],
            &rest[at..]
        ),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::from_parts(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn an_empty_file_gives_the_documented_defaults() {
        let c = parse("", &[]).unwrap();
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(c.http.max_body_bytes, 1_048_576);
        assert_eq!(c.database.url, "sqlite://botd.db");
        assert_eq!(c.database.pool_size, 20);
        assert_eq!(c.llm.ollama_url, "http://127.0.0.1:11434");
        assert_eq!(c.llm.default_model, "mistral");
        assert_eq!(c.llm.max_concurrent, 4);
        assert_eq!(c.llm.max_queue, 256);
        assert_eq!(c.bots.default_mailbox_capacity, 64);
        assert_eq!(c.supervisor.max_restarts, 5);
        assert_eq!(c.supervisor.backoff_max_ms, 30_000);
        assert_eq!(c.auth.jwt_secret_file, PathBuf::from("botd.secret"));
        assert_eq!(c.auth.token_ttl_secs, 3600);
        assert_eq!(c.rate_limit.requests_per_minute, 1000);
        assert_eq!(c.logging.level, LogLevel::Info);
        assert_eq!(c.logging.format, LogFormat::Json);
        assert_eq!(c.retention.max_age_days, 0);
        assert_eq!(c.redis.url, None);
        assert_eq!(c.redis.key_prefix, "botd:");
    }

    #[test]
    fn the_shipped_config_toml_is_valid_and_uses_the_embedded_default() {
        let text = include_str!("../config.toml");
        let c = parse(text, &[]).unwrap();
        assert_eq!(c.database.url, "sqlite://botd.db");
        assert_eq!(c.http.listen.to_string(), "127.0.0.1:8000");
    }

    #[test]
    fn environment_variables_override_the_file() {
        let c = parse(
            "[llm]\nmax_concurrent = 2\n",
            &[
                ("BOTD_LLM__MAX_CONCURRENT", "8"),
                ("BOTD_DATABASE__URL", "postgres://u@h/db"),
                ("BOTD_HTTP__CORS_ORIGINS", r#"["https://a.example"]"#),
                ("BOTD_LOGGING__LEVEL", "debug"),
                ("BOTD_CONFIG", "ignored.toml"),
                ("BOTD_URL", "http://ignored"),
            ],
        )
        .unwrap();
        assert_eq!(c.llm.max_concurrent, 8);
        assert_eq!(c.database.url, "postgres://u@h/db");
        assert_eq!(c.http.cors_origins, vec!["https://a.example".to_string()]);
        assert_eq!(c.logging.level, LogLevel::Debug);
    }

    #[test]
    fn an_unknown_key_is_refused_naming_it() {
        let e = parse("[llm]\nmax_concurent = 2\n", &[]).unwrap_err();
        assert_eq!(e.key, "llm.max_concurent");
        assert!(e.to_string().contains("unknown field"), "{e}");
        assert!(!e.to_string().contains('\n'));
        let e = parse("[nope]\nx = 1\n", &[]).unwrap_err();
        assert_eq!(e.key, "nope");
        let e = parse("", &[("BOTD_LLM__NOPE", "1")]).unwrap_err();
        assert_eq!(e.key, "llm.nope");
        assert_eq!(e.source.as_deref(), Some("BOTD_LLM__NOPE"));
    }

    #[test]
    fn a_value_of_the_wrong_type_is_refused_naming_the_key() {
        let e = parse("[llm]\nmax_concurrent = \"many\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "llm.max_concurrent");
        let e = parse("", &[("BOTD_HTTP__LISTEN", "nowhere")]).unwrap_err();
        assert_eq!(e.key, "http.listen");
        assert_eq!(e.source.as_deref(), Some("BOTD_HTTP__LISTEN"));
        let e = parse("[logging]\nlevel = \"loud\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "logging.level");
        let e = parse("[database]\nsqlite_synchronous = \"off\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "database.sqlite_synchronous");
    }

    #[test]
    fn values_out_of_range_are_refused_naming_the_key() {
        let cases = [
            ("[llm]\nmax_concurrent = 0", "llm.max_concurrent"),
            ("[llm]\nollama_url = \"localhost:11434\"", "llm.ollama_url"),
            ("[llm]\ndefault_model = \"a b\"", "llm.default_model"),
            ("[database]\nurl = \"mysql://x\"", "database.url"),
            ("[database]\npool_size = 0", "database.pool_size"),
            ("[redis]\nurl = \"http://x\"", "redis.url"),
            ("[redis]\nkey_prefix = \"\"", "redis.key_prefix"),
            ("[http]\nmax_connections = 0", "http.max_connections"),
            ("[http]\ntls_cert = \"c.pem\"", "http.tls_key"),
            (
                "[http]\ncors_origins = [\"example.com\"]",
                "http.cors_origins",
            ),
            ("[auth]\njwt_secret = \"short\"", "auth.jwt_secret"),
            ("[auth]\ntoken_ttl_secs = 1", "auth.token_ttl_secs"),
            (
                "[bots]\ndefault_concurrency = 0",
                "bots.default_concurrency",
            ),
            (
                "[bots]\ndefault_mailbox_capacity = 100001",
                "bots.default_mailbox_capacity",
            ),
            (
                "[supervisor]\nbackoff_initial_ms = 0",
                "supervisor.backoff_initial_ms",
            ),
            (
                "[supervisor]\nbackoff_initial_ms = 500\nbackoff_max_ms = 100",
                "supervisor.backoff_max_ms",
            ),
            ("[pools]\ncheck_interval_ms = 1", "pools.check_interval_ms"),
            (
                "[logging]\nfollow_buffer_records = 0",
                "logging.follow_buffer_records",
            ),
            ("[retention]\nbatch_size = 0", "retention.batch_size"),
            (
                "[rate_limit]\nrequests_per_minute = 0",
                "rate_limit.requests_per_minute",
            ),
            (
                "[limits]\nmax_content_bytes = 0",
                "limits.max_content_bytes",
            ),
        ];
        for (text, key) in cases {
            let e = parse(text, &[]).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
        }
        let e = parse("", &[("BOTD_LLM__MAX_CONCURRENT", "0")]).unwrap_err();
        assert_eq!(e.source.as_deref(), Some("BOTD_LLM__MAX_CONCURRENT"));
    }

    #[test]
    fn text_that_is_not_toml_is_refused_in_one_line() {
        let e = parse("[llm\n", &[]).unwrap_err();
        assert!(e.message.starts_with("not valid TOML"));
        assert!(!e.to_string().contains('\n'), "{e}");
    }

    #[test]
    fn a_named_file_must_exist_and_the_default_may_be_missing() {
        let e = Config::load(
            &ConfigSource::Named("/nonexistent/botd.toml".into()),
            Vec::new(),
        )
        .unwrap_err();
        assert!(e.message.contains("/nonexistent/botd.toml"), "{e}");
        assert_eq!(
            ConfigSource::resolve(None, Some("x.toml".into())),
            ConfigSource::Named("x.toml".into())
        );
        assert_eq!(
            ConfigSource::resolve(Some("y.toml".into()), Some("x.toml".into())),
            ConfigSource::Named("y.toml".into())
        );
        assert_eq!(ConfigSource::resolve(None, None), ConfigSource::Default);
    }

    #[test]
    fn masking_hides_secrets_and_url_passwords() {
        let c = parse(
            "[auth]\njwt_secret = \"0123456789abcdef0123456789abcdef-canary\"\n\
             [database]\nurl = \"postgres://botd:hunter2-canary@db/botd\"\n\
             [redis]\nurl = \"redis://:pw-canary@127.0.0.1:6379\"\n",
            &[],
        )
        .unwrap();
        let shown = c.to_masked_toml();
        assert!(!shown.contains("canary"), "{shown}");
        assert!(
            shown.contains("postgres://botd:********@db/botd"),
            "{shown}"
        );
        assert!(
            shown.contains("redis://:********@127.0.0.1:6379"),
            "{shown}"
        );
    }
}
