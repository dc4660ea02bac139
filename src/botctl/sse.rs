//! A small incremental parser for `text/event-stream` (the subset botd sends: `event:`,
//! `data:`, comments, blank-line dispatch).

/// One dispatched event. `event` is `message` when the stream named none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// Feed it bytes as they arrive; it hands back every event completed so far.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
    has_data: bool,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=i).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            // A line ends at an ASCII newline, so it never splits a UTF-8 character.
            let line = String::from_utf8_lossy(&line).into_owned();
            if let Some(e) = self.line(&line) {
                out.push(e);
            }
        }
        out
    }

    /// The end of the stream: an event without its closing blank line still counts.
    pub fn finish(&mut self) -> Vec<SseEvent> {
        let mut out = Vec::new();
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let line = String::from_utf8_lossy(&rest).into_owned();
            if let Some(e) = self.line(line.trim_end_matches('\r')) {
                out.push(e);
            }
        }
        if let Some(e) = self.line("") {
            out.push(e);
        }
        out
    }

    fn line(&mut self, line: &str) -> Option<SseEvent> {
        if line.is_empty() {
            let event = self.event.take();
            if !self.has_data {
                return None;
            }
            self.has_data = false;
            let data = std::mem::take(&mut self.data).join("\n");
            return Some(SseEvent {
                event: event.unwrap_or_else(|| "message".into()),
                data,
            });
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => self.event = Some(value.to_owned()),
            "data" => {
                self.data.push(value.to_owned());
                self.has_data = true;
            }
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_anywhere() {
        let text = ": keep-alive\n\nevent: token\ndata: {\"content\":\"é\"}\n\nevent:done\r\ndata: {}\r\n\r\n";
        let bytes = text.as_bytes();
        for cut in 0..bytes.len() {
            let mut p = SseParser::default();
            let mut got = p.push(&bytes[..cut]);
            got.extend(p.push(&bytes[cut..]));
            got.extend(p.finish());
            assert_eq!(
                got,
                vec![
                    SseEvent {
                        event: "token".into(),
                        data: "{\"content\":\"é\"}".into()
                    },
                    SseEvent {
                        event: "done".into(),
                        data: "{}".into()
                    },
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn multi_line_data_and_an_unterminated_last_event() {
        let mut p = SseParser::default();
        let mut got = p.push(b"data: a\ndata: b\n\nevent: done\ndata: x");
        got.extend(p.finish());
        assert_eq!(got[0].event, "message");
        assert_eq!(got[0].data, "a\nb");
        assert_eq!(got[1].event, "done");
        assert_eq!(got[1].data, "x");
    }
}
