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
