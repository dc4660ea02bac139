//! Logging: slog records as JSON lines (or terminal text) on stdout, with a level that
//! SIGHUP can change while the daemon runs.
//!
//! Records carry `ts`, `level` (in full, lower case), `msg` and their fields. Message
//! content, passwords, tokens and the secret are never passed to a logger.
//!
//! Every record also goes to a [`LogHub`]: a bounded daemon-wide ring, a bounded ring per
//! bot (allocated on first use), and a broadcast channel for followers. Writing to the
//! hub never waits: a follower that falls behind loses records and is told how many.

use std::collections::{HashMap, VecDeque};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use slog::{o, Drain, Level, Logger, OwnedKVList, Record, KV};
use tokio::sync::broadcast;

use crate::config::{LogFormat, LogLevel};

/// The level in force, changeable live.
#[derive(Debug, Clone)]
pub struct LevelSwitch(Arc<AtomicUsize>);

impl LevelSwitch {
    pub fn new(level: LogLevel) -> Self {
        Self(Arc::new(AtomicUsize::new(level.to_slog().as_usize())))
    }

    pub fn set(&self, level: LogLevel) {
        self.0.store(level.to_slog().as_usize(), Ordering::Release);
    }

    fn allows(&self, level: Level) -> bool {
        level.as_usize() <= self.0.load(Ordering::Acquire)
    }
}

/// A level's name as the API writes it.
pub fn level_name(level: Level) -> &'static str {
    match level {
        Level::Critical => "critical",
        Level::Error => "error",
        Level::Warning => "warn",
        Level::Info => "info",
        Level::Debug => "debug",
        Level::Trace => "trace",
    }
}

struct Filtered<D> {
    inner: D,
    level: LevelSwitch,
}

impl<D: Drain> Drain for Filtered<D> {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        if self.level.allows(record.level()) {
            // A log line that cannot be written is not worth failing a request for.
            let _ = self.inner.log(record, values);
        }
        Ok(())
    }
}

/// One log record as the tail endpoints send it.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub level: Level,
    /// The bot the record is about, if any.
    pub bot: Option<String>,
    /// The whole record as one JSON object (`ts`, `level`, `msg`, fields).
    pub json: Arc<str>,
}

/// The in-memory rings and the followers' channel.
#[derive(Clone)]
pub struct LogHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    rings: Mutex<Rings>,
    ring_records: usize,
    bot_ring_records: usize,
    tx: broadcast::Sender<Arc<LogRecord>>,
}

struct Rings {
    all: VecDeque<Arc<LogRecord>>,
    bots: HashMap<String, VecDeque<Arc<LogRecord>>>,
}

impl LogHub {
    /// `follow_buffer` is each follower's buffer, in records.
    pub fn new(ring_records: usize, bot_ring_records: usize, follow_buffer: usize) -> Self {
        let (tx, _) = broadcast::channel(follow_buffer.max(1));
        Self {
            inner: Arc::new(HubInner {
                rings: Mutex::new(Rings {
                    all: VecDeque::new(),
                    bots: HashMap::new(),
                }),
                ring_records,
                bot_ring_records,
                tx,
            }),
        }
    }

    fn push(&self, record: LogRecord) {
        let record = Arc::new(record);
        {
            let mut rings = self.inner.rings.lock().unwrap_or_else(|p| p.into_inner());
            if self.inner.ring_records > 0 {
                if rings.all.len() == self.inner.ring_records {
                    rings.all.pop_front();
                }
                rings.all.push_back(record.clone());
            }
            if let (Some(bot), true) = (&record.bot, self.inner.bot_ring_records > 0) {
                let cap = self.inner.bot_ring_records;
                let ring = rings.bots.entry(bot.clone()).or_default();
                if ring.len() == cap {
                    ring.pop_front();
                }
                ring.push_back(record.clone());
            }
        }
        // No follower is not an error; a slow one lags, and never makes this wait.
        let _ = self.inner.tx.send(record);
    }

    /// The last `n` records (of one bot, or all) at `min` level or more severe, oldest first.
    pub fn tail(&self, bot: Option<&str>, min: Level, n: usize) -> Vec<Arc<LogRecord>> {
        let rings = self.inner.rings.lock().unwrap_or_else(|p| p.into_inner());
        let ring = match bot {
            Some(b) => match rings.bots.get(b) {
                Some(r) => r,
                None => return Vec::new(),
            },
            None => &rings.all,
        };
        let mut out: Vec<Arc<LogRecord>> = ring
            .iter()
            .rev()
            .filter(|r| r.level.is_at_least(min))
            .take(n)
            .cloned()
            .collect();
        out.reverse();
        out
    }

    /// A follower: new records from now on.
    pub fn follow(&self) -> broadcast::Receiver<Arc<LogRecord>> {
        self.inner.tx.subscribe()
    }
}

/// Writes each record into the hub as one JSON object.
struct HubDrain {
    // The hub's lock and channel stay consistent across a panic (nothing panics while
    // holding them), so the drain may be shared across unwind boundaries.
    hub: std::panic::AssertUnwindSafe<LogHub>,
}

/// Collects a record's key-value pairs into a JSON map.
struct JsonFields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl slog::Serializer for JsonFields<'_> {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        self.0
            .entry(key.to_string())
            .or_insert_with(|| serde_json::Value::String(val.to_string()));
        Ok(())
    }

    fn emit_u64(&mut self, key: slog::Key, val: u64) -> slog::Result {
        self.0.entry(key.to_string()).or_insert(val.into());
        Ok(())
    }

    fn emit_i64(&mut self, key: slog::Key, val: i64) -> slog::Result {
        self.0.entry(key.to_string()).or_insert(val.into());
        Ok(())
    }

    fn emit_u32(&mut self, key: slog::Key, val: u32) -> slog::Result {
        self.emit_u64(key, val.into())
    }

    fn emit_i32(&mut self, key: slog::Key, val: i32) -> slog::Result {
        self.emit_i64(key, val.into())
    }

    fn emit_f64(&mut self, key: slog::Key, val: f64) -> slog::Result {
        self.0.entry(key.to_string()).or_insert(val.into());
        Ok(())
    }

    fn emit_usize(&mut self, key: slog::Key, val: usize) -> slog::Result {
        self.0.entry(key.to_string()).or_insert((val as u64).into());
        Ok(())
    }

    fn emit_bool(&mut self, key: slog::Key, val: bool) -> slog::Result {
        self.0.entry(key.to_string()).or_insert(val.into());
        Ok(())
    }
}

impl Drain for HubDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &Record, values: &OwnedKVList) -> Result<(), slog::Never> {
        let mut map = serde_json::Map::new();
        map.insert(
            "ts".into(),
            chrono::Utc::now()
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        map.insert("level".into(), level_name(record.level()).into());
        map.insert("msg".into(), record.msg().to_string().into());
        // The record's own fields win over the logger's (first written wins).
        let _ = record.kv().serialize(record, &mut JsonFields(&mut map));
        let _ = values.serialize(record, &mut JsonFields(&mut map));
        let bot = map.get("bot").and_then(|v| v.as_str()).map(str::to_owned);
        let json = serde_json::Value::Object(map).to_string();
        self.hub.push(LogRecord {
            level: record.level(),
            bot,
            json: Arc::from(json),
        });
        Ok(())
    }
}

/// Parses a level written in full (`trace` … `critical`).
pub fn parse_level(s: &str) -> Option<Level> {
    match s {
        "trace" => Some(Level::Trace),
        "debug" => Some(Level::Debug),
        "info" => Some(Level::Info),
        "warn" => Some(Level::Warning),
        "error" => Some(Level::Error),
        "critical" => Some(Level::Critical),
        _ => None,
    }
}

/// Builds the daemon's root logger writing to `out` and, when given, into `hub`.
pub fn logger_with_hub<W: Write + Send + 'static>(
    format: LogFormat,
    level: LevelSwitch,
    out: W,
    hub: Option<LogHub>,
) -> Logger {
    let base = logger_to(format, level.clone(), out);
    match hub {
        None => base,
        Some(hub) => {
            let drain = slog::Duplicate::new(
                base,
                Filtered {
                    inner: HubDrain {
                        hub: std::panic::AssertUnwindSafe(hub),
                    },
                    level,
                },
            )
            .fuse();
            Logger::root(drain, o!())
        }
    }
}

/// Builds the daemon's root logger writing to `out`.
pub fn logger_to<W: Write + Send + 'static>(
    format: LogFormat,
    level: LevelSwitch,
    out: W,
) -> Logger {
    match format {
        LogFormat::Json => {
            let json = slog_json::Json::new(out)
                .set_newlines(true)
                .add_key_value(o!(
                    "ts" => slog::PushFnValue(|_, ser| {
                        ser.emit(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
                    }),
                    "level" => slog::FnValue(|r: &Record| level_name(r.level())),
                    "msg" => slog::PushFnValue(|r: &Record, ser| ser.emit(r.msg())),
                ))
                .build();
            let drain = Mutex::new(json).map(slog::IgnoreResult::new);
            Logger::root(
                Filtered {
                    inner: drain,
                    level,
                }
                .fuse(),
                o!(),
            )
        }
        LogFormat::Term => {
            let decorator = slog_term::PlainSyncDecorator::new(out);
            let drain = slog_term::FullFormat::new(decorator).build().ignore_res();
            Logger::root(
                Filtered {
                    inner: drain,
                    level,
                }
                .fuse(),
                o!(),
            )
        }
    }
}

/// The daemon's root logger on stdout.
pub fn logger(format: LogFormat, level: LevelSwitch) -> Logger {
    logger_to(format, level, std::io::stdout())
}

#[cfg(test)]
mod tests {
    use super::*;
    use slog::{debug, info};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_hub_keeps_bounded_rings_and_followers_learn_what_they_missed() {
        let hub = LogHub::new(3, 2, 2);
        let log = logger_with_hub(
            LogFormat::Json,
            LevelSwitch::new(LogLevel::Debug),
            std::io::sink(),
            Some(hub.clone()),
        );
        let mut follower = hub.follow();
        for i in 0..5 {
            info!(log, "Numbered."; "n" => i, "bot" => if i % 2 == 0 { "a" } else { "b" });
        }
        debug!(log, "Detail.");
        let all = hub.tail(None, Level::Trace, 100);
        assert_eq!(all.len(), 3);
        assert!(all[2].json.contains("Detail."));
        let info_only = hub.tail(None, Level::Info, 100);
        assert_eq!(info_only.len(), 2);
        let a = hub.tail(Some("a"), Level::Trace, 100);
        assert_eq!(a.len(), 2, "the per-bot ring holds 2");
        let v: serde_json::Value = serde_json::from_str(&a[1].json).unwrap();
        assert_eq!((v["n"].as_u64(), v["bot"].as_str()), (Some(4), Some("a")));
        assert!(hub.tail(Some("nobody"), Level::Trace, 10).is_empty());
        // Six records into a follower buffer of two: it lagged by four.
        match follower.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(n)) => assert_eq!(n, 4),
            other => panic!("{other:?}"),
        }
        assert!(follower.try_recv().is_ok());
    }

    #[test]
    fn json_records_have_the_fixed_keys_and_respect_the_live_level() {
        let buf = Buf::default();
        let level = LevelSwitch::new(LogLevel::Info);
        let log = logger_to(LogFormat::Json, level.clone(), buf.clone());
        debug!(log, "Hidden.");
        info!(log, "A bot was started."; "bot" => "b1");
        level.set(LogLevel::Debug);
        debug!(log, "Shown.");
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0]["level"], "info");
        assert_eq!(lines[0]["msg"], "A bot was started.");
        assert_eq!(lines[0]["bot"], "b1");
        assert!(lines[0]["ts"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["level"], "debug");
    }
}
