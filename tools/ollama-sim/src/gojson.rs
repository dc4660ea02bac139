//! JSON written the way Go's `encoding/json` writes it, and Go's time format.

use chrono::{DateTime, Timelike, Utc};
use serde::Serialize;

/// Serializes `value` as Go does: UTF-8 text as is, but `<`, `>`, `&`, U+2028 and U+2029
/// escaped (`\u003c`, `\u003e`, `\u0026`, `\u2028`, `\u2029`).
///
/// Those characters can only occur inside JSON strings, so escaping them in serde_json's
/// output is exact.
pub fn to_vec<T: Serialize>(value: &T) -> Vec<u8> {
    // Serializing our own plain structs and maps cannot fail.
    let plain = serde_json::to_vec(value).unwrap_or_else(|_| b"null".to_vec());
    escape_html(plain)
}

/// Like [`to_vec`] followed by a newline, as Go's `json.Encoder` writes a stream.
pub fn to_line<T: Serialize>(value: &T) -> Vec<u8> {
    let mut line = to_vec(value);
    line.push(b'\n');
    line
}

fn escape_html(plain: Vec<u8>) -> Vec<u8> {
    let needs = plain
        .iter()
        .any(|&b| matches!(b, b'<' | b'>' | b'&' | 0xE2));
    if !needs {
        return plain;
    }
    let mut out = Vec::with_capacity(plain.len() + 16);
    let mut i = 0;
    while i < plain.len() {
        let b = plain[i];
        match b {
            b'<' => out.extend_from_slice(b"\\u003c"),
            b'>' => out.extend_from_slice(b"\\u003e"),
            b'&' => out.extend_from_slice(b"\\u0026"),
            0xE2 if plain.get(i + 1) == Some(&0x80)
                && matches!(plain.get(i + 2), Some(0xA8) | Some(0xA9)) =>
            {
                out.extend_from_slice(if plain[i + 2] == 0xA8 {
                    b"\\u2028"
                } else {
                    b"\\u2029"
                });
                i += 3;
                continue;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    out
}

/// Formats a time as Go's `time.RFC3339Nano` does for a UTC time: nanoseconds with the
/// trailing zeros trimmed (no fraction at all when they are all zero), and `Z`.
pub fn rfc3339_nano(t: DateTime<Utc>) -> String {
    let mut s = t.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = t.nanosecond() % 1_000_000_000;
    if nanos != 0 {
        let frac = format!("{nanos:09}");
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// The current time in Go's format.
pub fn now() -> String {
    rfc3339_nano(Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn escapes_like_go() {
        let v = serde_json::json!({"a": "<b> & \u{2028}\u{2029} é 世界"});
        let s = String::from_utf8(to_vec(&v)).unwrap();
        assert_eq!(s, r#"{"a":"\u003cb\u003e \u0026 \u2028\u2029 é 世界"}"#);
        let back: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(back, v);
    }

    #[test]
    fn go_time_format() {
        let t = Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap();
        assert_eq!(rfc3339_nano(t), "2026-11-25T10:00:00Z");
        let t = t + chrono::Duration::nanoseconds(123_456_789);
        assert_eq!(rfc3339_nano(t), "2026-11-25T10:00:00.123456789Z");
        let t = Utc.with_ymd_and_hms(2026, 11, 25, 10, 0, 0).unwrap()
            + chrono::Duration::nanoseconds(120_000_000);
        assert_eq!(rfc3339_nano(t), "2026-11-25T10:00:00.12Z");
    }
}
