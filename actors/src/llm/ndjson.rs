//! Incremental NDJSON line decoding over network chunks.
//!
//! A network read can end anywhere: inside a line, inside `\r\n`, inside a multi-byte
//! UTF-8 character. [`LineDecoder`] buffers bytes and hands out complete lines only, and
//! decodes UTF-8 per complete line, never per chunk (the mistake ARCHITECTURE.md's
//! "Sharp edges" notes in ollama-rs).
//!
//! ```
//! use botd_actors::llm::ndjson::LineDecoder;
//! let mut d = LineDecoder::new();
//! d.push(b"{\"a\":\"h\xC3");
//! assert!(d.next_line().is_none()); // no complete line yet
//! d.push(b"\xA9\"}\r\n\n{\"b\":1}");
//! assert_eq!(d.next_line().unwrap().unwrap(), "{\"a\":\"h\u{e9}\"}");
//! assert!(d.next_line().is_none()); // the empty line is skipped, the last is incomplete
//! assert_eq!(d.finish().unwrap().unwrap(), "{\"b\":1}"); // end of stream
//! ```

/// The longest line accepted by default: 16 MiB.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// Why a line could not be handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    /// A line (complete or still growing) is longer than the limit. The decoder drops
    /// what it buffered.
    #[error("a line is longer than {limit} bytes")]
    TooLong {
        /// The limit, in bytes.
        limit: usize,
    },
    /// A complete line is not valid UTF-8.
    #[error("a line is not valid UTF-8 (after {valid_up_to} bytes)")]
    InvalidUtf8 {
        /// How many bytes of the line are valid.
        valid_up_to: usize,
    },
}

/// Buffers chunks and yields complete lines: `\n` or `\r\n` terminated, blank lines
/// skipped, the terminator removed.
#[derive(Debug)]
pub struct LineDecoder {
    buf: Vec<u8>,
    /// Where the first line not yet handed out begins.
    start: usize,
    /// How far `buf` has been searched for `\n` (from `start`).
    scanned: usize,
    max_line: usize,
}

impl Default for LineDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl LineDecoder {
    /// A decoder accepting lines up to [`MAX_LINE_BYTES`].
    pub fn new() -> Self {
        Self::with_max_line(MAX_LINE_BYTES)
    }

    /// A decoder accepting lines up to `max_line` bytes (without the terminator).
    pub fn with_max_line(max_line: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max_line,
        }
    }

    /// Adds the next bytes of the stream.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.start > 0 {
            if self.start == self.buf.len() {
                self.buf.clear();
                self.scanned = 0;
                self.start = 0;
            } else if self.start >= self.buf.len() / 2 {
                // Moves the partial line to the front; amortised, since at least half
                // of the buffer is dropped each time.
                self.buf.drain(..self.start);
                self.scanned -= self.start;
                self.start = 0;
            }
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete line, or `None` until more bytes are pushed.
    pub fn next_line(&mut self) -> Option<Result<&str, LineError>> {
        loop {
            let found = self.buf[self.scanned..].iter().position(|&b| b == b'\n');
            let Some(at) = found else {
                self.scanned = self.buf.len();
                if self.buf.len() - self.start > self.max_line {
                    return Some(Err(self.too_long()));
                }
                return None;
            };
            let begin = self.start;
            let mut end = self.scanned + at;
            self.start = end + 1;
            self.scanned = self.start;
            if end > begin && self.buf[end - 1] == b'\r' {
                end -= 1;
            }
            if end - begin > self.max_line {
                return Some(Err(self.too_long()));
            }
            if self.buf[begin..end].iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(decode(&self.buf[begin..end]));
        }
    }

    /// At the end of the stream: the last line if it had no terminator (`None` if there
    /// is none or it is blank). Empties the decoder.
    pub fn finish(&mut self) -> Option<Result<&str, LineError>> {
        let begin = self.start;
        let mut end = self.buf.len();
        self.start = end;
        self.scanned = end;
        if end > begin && self.buf[end - 1] == b'\r' {
            end -= 1;
        }
        if end - begin > self.max_line {
            return Some(Err(self.too_long()));
        }
        if self.buf[begin..end].iter().all(u8::is_ascii_whitespace) {
            return None;
        }
        Some(decode(&self.buf[begin..end]))
    }

    /// Bytes buffered and not yet handed out.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    fn too_long(&mut self) -> LineError {
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
        LineError::TooLong {
            limit: self.max_line,
        }
    }
}

fn decode(line: &[u8]) -> Result<&str, LineError> {
    std::str::from_utf8(line).map_err(|e| LineError::InvalidUtf8 {
        valid_up_to: e.valid_up_to(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` and collects every line, the unterminated last one included.
    fn collect(d: &mut LineDecoder, chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        for c in chunks {
            d.push(c);
            while let Some(line) = d.next_line() {
                out.push(line.unwrap().to_owned());
            }
        }
        if let Some(line) = d.finish() {
            out.push(line.unwrap().to_owned());
        }
        out
    }

    #[test]
    fn every_split_of_multibyte_lines() {
        let text = "{\"content\":\"héllo → 世界 🎉\"}\n{\"content\":\"ß\"}\r\n";
        let bytes = text.as_bytes();
        let want = ["{\"content\":\"héllo → 世界 🎉\"}", "{\"content\":\"ß\"}"];
        for i in 0..=bytes.len() {
            let mut d = LineDecoder::new();
            assert_eq!(
                collect(&mut d, &[&bytes[..i], &bytes[i..]]),
                want,
                "split at {i}"
            );
        }
        // And two cuts at every pair of positions.
        for i in 0..=bytes.len() {
            for j in i..=bytes.len() {
                let mut d = LineDecoder::new();
                let got = collect(&mut d, &[&bytes[..i], &bytes[i..j], &bytes[j..]]);
                assert_eq!(got, want, "splits at {i} and {j}");
            }
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let text = "héllo → 世界 🎉\nsecond line\n";
        let chunks: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
        let mut d = LineDecoder::new();
        assert_eq!(collect(&mut d, &chunks), ["héllo → 世界 🎉", "second line"]);
    }

    #[test]
    fn several_lines_in_one_chunk_and_blank_lines() {
        let mut d = LineDecoder::new();
        d.push(b"a\n\n\r\n  \nb\r\nc\n");
        assert_eq!(d.next_line(), Some(Ok("a")));
        assert_eq!(d.next_line(), Some(Ok("b")));
        assert_eq!(d.next_line(), Some(Ok("c")));
        assert_eq!(d.next_line(), None);
        assert_eq!(d.finish(), None);
        assert_eq!(d.buffered(), 0);
    }

    #[test]
    fn final_line_without_newline() {
        let mut d = LineDecoder::new();
        d.push(b"first\nlast");
        assert_eq!(d.next_line(), Some(Ok("first")));
        assert_eq!(d.next_line(), None);
        assert_eq!(d.buffered(), 4);
        assert_eq!(d.finish(), Some(Ok("last")));
        assert_eq!(d.finish(), None);
        // A trailing `\r` is not part of it.
        let mut d = LineDecoder::new();
        d.push(b"last\r");
        assert_eq!(d.finish(), Some(Ok("last")));
    }

    #[test]
    fn crlf_split_between_chunks() {
        let mut d = LineDecoder::new();
        assert_eq!(
            collect(&mut d, &[b"abc\r", b"\ndef\r", b"\n"]),
            ["abc", "def"]
        );
    }

    #[test]
    fn invalid_utf8_is_an_error_of_its_line_only() {
        let mut d = LineDecoder::new();
        d.push(b"ok\nbad \xC3(\nfine\n");
        assert_eq!(d.next_line(), Some(Ok("ok")));
        assert_eq!(
            d.next_line(),
            Some(Err(LineError::InvalidUtf8 { valid_up_to: 4 }))
        );
        assert_eq!(d.next_line(), Some(Ok("fine")));
        // A character cut off by the end of the stream.
        let mut d = LineDecoder::new();
        d.push("é".as_bytes().get(..1).unwrap());
        assert!(matches!(
            d.finish(),
            Some(Err(LineError::InvalidUtf8 { .. }))
        ));
    }

    #[test]
    fn line_length_is_bounded() {
        let mut d = LineDecoder::with_max_line(8);
        d.push(b"12345678\n");
        assert_eq!(d.next_line(), Some(Ok("12345678")));
        // A growing line is refused before its end arrives.
        d.push(b"12345");
        assert_eq!(d.next_line(), None);
        d.push(b"6789");
        assert_eq!(d.next_line(), Some(Err(LineError::TooLong { limit: 8 })));
        assert_eq!(d.buffered(), 0);
        // A complete line over the limit, in one chunk.
        d.push(b"123456789\nok\n");
        assert_eq!(d.next_line(), Some(Err(LineError::TooLong { limit: 8 })));
        // The default limit is 16 MiB.
        assert_eq!(LineDecoder::new().max_line, 16 * 1024 * 1024);
    }

    #[test]
    fn buffer_is_compacted() {
        let mut d = LineDecoder::new();
        for i in 0..10_000 {
            d.push(format!("line {i}\npartial").as_bytes());
            assert_eq!(d.next_line().unwrap().unwrap(), format!("line {i}"));
            assert_eq!(d.next_line(), None);
            d.push(b" rest\n");
            assert_eq!(d.next_line(), Some(Ok("partial rest")));
        }
        assert!(d.buf.capacity() < 1024, "{}", d.buf.capacity());
    }
}
