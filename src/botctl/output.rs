//! How botctl shows things to a person: aligned tables, key/value blocks, short times.

use std::io::Write;

use serde_json::Value;

/// Writes to stdout; a closed pipe (`botctl list | head -1`) is not an error.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
}

/// Like [`print`] but says whether stdout is still there.
pub fn print_flush(text: &str) -> bool {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_ok()
}

/// Prints the daemon's JSON as it sent it, with one newline at the end.
pub fn print_raw(text: &str) {
    let mut s = text.trim_end_matches(['\r', '\n']).to_owned();
    s.push('\n');
    print(&s);
}

/// A table with a header row; columns are left-aligned and two spaces apart, and the
/// last column is not padded (so it may be long).
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Self {
        Self {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let n = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate().take(n) {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.header.iter().map(|h| (*h).to_owned()).collect();
        for r in std::iter::once(&header).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = r.get(i).map(String::as_str).unwrap_or("");
                if i + 1 == n {
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    let pad = w.saturating_sub(cell.chars().count()) + 2;
                    line.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key  value` lines with the values aligned.
pub fn pairs(rows: &[(&str, String)]) -> String {
    let w = rows
        .iter()
        .map(|(k, _)| k.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        let pad = w - k.chars().count() + 2;
        out.push_str(k);
        out.extend(std::iter::repeat_n(' ', pad));
        out.push_str(v);
        let len = out.trim_end().len();
        out.truncate(len);
        out.push('\n');
    }
    out
}

/// A field as text: strings bare, null or missing as `-`, anything else as JSON.
pub fn text(v: &Value, key: &str) -> String {
    cell(v.get(key).unwrap_or(&Value::Null))
}

pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Text on one line: newlines and tabs shown as escapes.
pub fn flat(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Seconds as `42s`, `5m12s`, `2h05m`, `3d04h`.
pub fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// An RFC 3339 time as `2026-11-25 10:00:00` (UTC), or as it came if it does not parse.
pub fn time(v: &Value, key: &str) -> String {
    match v.get(key).and_then(Value::as_str) {
        Some(s) => parse_time(s)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| s.to_owned()),
        None => "-".into(),
    }
}

/// How long ago an RFC 3339 time was, as a [`duration`].
pub fn since(v: &Value, key: &str) -> Option<String> {
    let t = parse_time(v.get(key)?.as_str()?)?;
    let secs = (chrono::Utc::now() - t).num_seconds().max(0) as u64;
    Some(duration(secs))
}

/// Whether to colour what goes to stdout: only on a terminal, and not with `NO_COLOR`
/// set (to anything but the empty string, as no-color.org says).
pub fn color_stdout() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

const RESET: &str = "\x1b[0m";
const DIM: &str = "\x1b[2m";

/// A log level as shown (five wide) and its ANSI colour.
fn level_style(level: &str) -> (String, &'static str) {
    let (shown, color) = match level {
        "trace" => ("TRACE", "\x1b[2m"),
        "debug" => ("DEBUG", "\x1b[36m"),
        "info" => ("INFO", "\x1b[32m"),
        "warn" => ("WARN", "\x1b[33m"),
        "error" => ("ERROR", "\x1b[31m"),
        "critical" => ("CRIT", "\x1b[1;31m"),
        other => return (format!("{:<5}", other.to_uppercase()), "\x1b[35m"),
    };
    (format!("{shown:<5}"), color)
}

/// An RFC 3339 time as `2026-11-25T10:00:00.123Z` (UTC, milliseconds), or as it came.
pub fn log_time(s: &str) -> String {
    parse_time(s)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|| flat(s))
}

/// A field's value in `key=value`: plain words bare, other strings quoted as JSON,
/// anything else as JSON.
fn field_value(v: &Value) -> String {
    match v {
        Value::String(s)
            if !s.is_empty()
                && !s
                    .chars()
                    .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '=')) =>
        {
            s.clone()
        }
        other => other.to_string(),
    }
}

/// One log record on one line: `TIMESTAMP LEVEL [bot] msg key=value …`, the level (and
/// the time, dimmed) in colour when `color`. A line that is not a JSON object comes back
/// as it is (on one line).
pub fn log_line(line: &str, color: bool) -> String {
    let map = match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(map)) => map,
        _ => return format!("{}\n", flat(line)),
    };
    if let (1, Some(n)) = (map.len(), map.get("missed").and_then(Value::as_u64)) {
        return missed_line(n, color);
    }
    let ts = map
        .get("ts")
        .and_then(Value::as_str)
        .map(log_time)
        .unwrap_or_else(|| "-".into());
    let level = map.get("level").and_then(Value::as_str).unwrap_or("-");
    let (shown, code) = level_style(level);
    let mut out = if color {
        format!("{DIM}{ts}{RESET} {code}{shown}{RESET}")
    } else {
        format!("{ts} {shown}")
    };
    if let Some(bot) = map.get("bot").filter(|b| !b.is_null()) {
        out.push_str(&format!(" [{}]", flat(&cell(bot))));
    }
    let msg = map.get("msg").map(cell).unwrap_or_default();
    out.push(' ');
    out.push_str(&flat(&msg));
    for (k, val) in &map {
        if matches!(k.as_str(), "ts" | "level" | "msg" | "bot") {
            continue;
        }
        out.push_str(&format!(" {}={}", flat(k), flat(&field_value(val))));
    }
    out.push('\n');
    out
}

/// The line for `{"missed": N}`: records a slow follower lost.
pub fn missed_line(n: u64, color: bool) -> String {
    let what = if n == 1 { "record" } else { "records" };
    let text = format!("… {n} {what} missed (the follower was too slow)");
    if color {
        format!("\x1b[1;33m{text}{RESET}\n")
    } else {
        format!("{text}\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tables_align() {
        let mut t = Table::new(&["NAME", "STATE", "NOTE"]);
        t.row(vec!["a".into(), "running".into(), "x y".into()]);
        t.row(vec!["longer-name".into(), "-".into(), "".into()]);
        assert_eq!(
            t.render(),
            "NAME         STATE    NOTE\na            running  x y\nlonger-name  -\n"
        );
    }

    #[test]
    fn log_lines() {
        let rec = r#"{"ts":"2026-11-25T10:00:00.123456Z","level":"warn","msg":"A bot crashed.","bot":"b1","error":"boom bang","restarts":2,"kind":"panic"}"#;
        let got = log_line(rec, false);
        assert!(
            got.starts_with("2026-11-25T10:00:00.123Z WARN  [b1] A bot crashed. "),
            "{got}"
        );
        assert!(got.contains(" error=\"boom bang\""), "{got}");
        assert!(got.contains(" restarts=2"), "{got}");
        assert!(got.contains(" kind=panic"), "{got}");
        assert!(got.ends_with('\n') && got.lines().count() == 1, "{got}");
        let colored = log_line(rec, true);
        assert!(colored.contains("\x1b[33mWARN \x1b[0m [b1]"), "{colored:?}");
        assert!(!got.contains('\x1b'));

        let no_bot = log_line(
            r#"{"ts":"2026-11-25T10:00:00Z","level":"critical","msg":"Multi\nline"}"#,
            false,
        );
        assert_eq!(no_bot, "2026-11-25T10:00:00.000Z CRIT  Multi\\nline\n");
        assert_eq!(
            log_line(r#"{"missed":12}"#, false),
            "… 12 records missed (the follower was too slow)\n"
        );
        assert_eq!(log_line("not json", false), "not json\n");
        assert_eq!(log_time("yesterday"), "yesterday");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(312), "5m12s");
        assert_eq!(duration(7500), "2h05m");
        assert_eq!(duration(3 * 86400 + 4 * 3600), "3d04h");
    }

    #[test]
    fn cells() {
        let v = json!({"a": null, "b": "x", "c": 3, "t": "2026-11-25T10:00:00.000Z"});
        assert_eq!(text(&v, "a"), "-");
        assert_eq!(text(&v, "missing"), "-");
        assert_eq!(text(&v, "b"), "x");
        assert_eq!(text(&v, "c"), "3");
        assert_eq!(time(&v, "t"), "2026-11-25 10:00:00");
        assert_eq!(flat("a\nb\tc"), "a\\nb\\tc");
    }
}
