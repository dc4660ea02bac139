//! Logging: slog records as JSON lines (or terminal text) on stdout, with a level that
//! SIGHUP can change while the daemon runs.
//!
//! Records carry `ts`, `level` (in full, lower case), `msg` and their fields. Message
//! content, passwords, tokens and the secret are never passed to a logger.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use slog::{o, Drain, Level, Logger, OwnedKVList, Record};

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
