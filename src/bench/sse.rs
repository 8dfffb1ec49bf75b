//! Server-sent events, read incrementally, and the OpenAI streaming frames they carry.
//!
//! [`SseParser`] takes the body as it arrives in network chunks of any size (a `data:` line may be split across
//! chunks, or one chunk may hold many events) and yields each complete event's data. Lines end with `\n` or
//! `\r\n`; comment lines (`: ping`) and fields other than `data` are skipped; several `data` lines in one event
//! are joined with `\n`, as the SSE specification says. [`Frame::parse`] then reads one event's data as an
//! OpenAI chat or text completion chunk, a usage chunk, an in-band error or the closing `[DONE]`.

use serde_json::Value;

/// Incremental SSE parser: feed it bytes, get back the data of every event completed by them.
#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of a line not yet ended.
    line: Vec<u8>,
    /// `data` lines of the event in progress.
    data: Vec<String>,
    /// Whether the event in progress has any `data` field (an empty `data:` still counts).
    has_data: bool,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `bytes` to the stream; returns the data of each event that ended within them, in order.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut events = Vec::new();
        let mut rest = bytes;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..pos]);
            rest = &rest[pos + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if let Some(data) = self.line_done(&line) {
                events.push(data);
            }
        }
        self.line.extend_from_slice(rest);
        events
    }

    /// The end of the body: an event left without its closing blank line is still delivered.
    pub fn finish(&mut self) -> Option<String> {
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            // The last line had no newline; an event can only end at a blank line, so this completes a field.
            let _ = self.line_done(&line);
        }
        self.dispatch()
    }

    /// Handles one complete line; a blank line ends the event.
    fn line_done(&mut self, line: &[u8]) -> Option<String> {
        if line.is_empty() {
            return self.dispatch();
        }
        if line[0] == b':' {
            return None;
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (text.as_ref(), ""),
        };
        if field == "data" {
            self.data.push(value.to_string());
            self.has_data = true;
        }
        None
    }

    fn dispatch(&mut self) -> Option<String> {
        let has = std::mem::replace(&mut self.has_data, false);
        let data = std::mem::take(&mut self.data);
        has.then(|| data.join("\n"))
    }
}

/// Token counts from a usage object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

/// What one event of an OpenAI stream says.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `data: [DONE]`: the stream is over.
    Done,
    /// An in-band error (`{"error": ...}`), with its message.
    Error(String),
    /// A completion chunk: generated text (chat `delta.content` or completions `text`; `None` when absent or
    /// empty), the finish reason once there is one, and usage when the chunk carries it.
    Chunk {
        text: Option<String>,
        finish_reason: Option<String>,
        usage: Option<Usage>,
    },
}

/// Event data that is neither `[DONE]` nor a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("SSE data is not a JSON object: {0}")]
pub struct BadFrame(pub String);

impl Frame {
    /// Reads one event's data.
    pub fn parse(data: &str) -> Result<Self, BadFrame> {
        let data = data.trim();
        if data == "[DONE]" {
            return Ok(Frame::Done);
        }
        let v: Value = serde_json::from_str(data).map_err(|_| BadFrame(clip(data, 200)))?;
        if !v.is_object() {
            return Err(BadFrame(clip(data, 200)));
        }
        if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
            let msg = e
                .get("message")
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string());
            return Ok(Frame::Error(msg));
        }
        let choice = v.get("choices").and_then(|c| c.get(0));
        let text = choice
            .and_then(|c| {
                c.get("delta")
                    .and_then(|d| d.get("content"))
                    .or_else(|| c.get("text"))
            })
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .map(str::to_string);
        let finish_reason = choice
            .and_then(|c| c.get("finish_reason"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let usage = v.get("usage").filter(|u| u.is_object()).map(|u| Usage {
            prompt_tokens: u.get("prompt_tokens").and_then(Value::as_u64),
            completion_tokens: u.get("completion_tokens").and_then(Value::as_u64),
        });
        Ok(Frame::Chunk {
            text,
            finish_reason,
            usage,
        })
    }
}

/// At most `n` characters of `s`, marked when cut.
pub fn clip(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(chunks: &[&[u8]]) -> Vec<String> {
        let mut p = SseParser::new();
        let mut out: Vec<String> = chunks.iter().flat_map(|c| p.feed(c)).collect();
        out.extend(p.finish());
        out
    }

    #[test]
    fn events_split_anywhere_across_chunks_come_out_whole() {
        let body =
            "data: {\"a\":1}\n\n: ping\n\ndata: {\"b\":\"é\"}\r\n\r\ndata: [DONE]\n\n".as_bytes();
        let whole = feed_all(&[body]);
        assert_eq!(whole, ["{\"a\":1}", "{\"b\":\"é\"}", "[DONE]"]);
        // Every split point, including inside `data:`, inside `\r\n` and inside the two bytes of `é`.
        for i in 0..body.len() {
            assert_eq!(feed_all(&[&body[..i], &body[i..]]), whole, "split at {i}");
        }
        let bytes: Vec<&[u8]> = body.chunks(1).collect();
        assert_eq!(feed_all(&bytes), whole, "one byte at a time");
    }

    #[test]
    fn multi_line_data_other_fields_and_an_unterminated_last_event() {
        let got = feed_all(&[b"event: x\nid: 3\ndata: one\ndata:two\n\nretry: 5\n\ndata: [DONE]"]);
        assert_eq!(got, ["one\ntwo", "[DONE]"]);
        assert!(feed_all(&[b": only a comment\n\n"]).is_empty());
    }

    #[test]
    fn chat_and_completion_chunks() {
        let role = r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#;
        assert_eq!(
            Frame::parse(role).unwrap(),
            Frame::Chunk {
                text: None,
                finish_reason: None,
                usage: None
            }
        );
        let delta = r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}],"usage":null}"#;
        assert_eq!(
            Frame::parse(delta).unwrap(),
            Frame::Chunk {
                text: Some("Hi".into()),
                finish_reason: None,
                usage: None
            }
        );
        let text = r#"{"choices":[{"index":0,"text":" there","finish_reason":"length"}]}"#;
        assert_eq!(
            Frame::parse(text).unwrap(),
            Frame::Chunk {
                text: Some(" there".into()),
                finish_reason: Some("length".into()),
                usage: None
            }
        );
    }

    #[test]
    fn usage_chunk_done_and_errors() {
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":32,"total_tokens":39}}"#;
        assert_eq!(
            Frame::parse(usage).unwrap(),
            Frame::Chunk {
                text: None,
                finish_reason: None,
                usage: Some(Usage {
                    prompt_tokens: Some(7),
                    completion_tokens: Some(32)
                })
            }
        );
        assert_eq!(Frame::parse(" [DONE] ").unwrap(), Frame::Done);
        let err = r#"{"error":{"message":"model failed","type":"server_error","param":null,"code":null}}"#;
        assert_eq!(
            Frame::parse(err).unwrap(),
            Frame::Error("model failed".into())
        );
        assert_eq!(
            Frame::parse(r#"{"error":"plain"}"#).unwrap(),
            Frame::Error("\"plain\"".into())
        );
        assert!(Frame::parse("not json").is_err());
        assert!(Frame::parse("[1,2]").is_err());
    }

    #[test]
    fn clip_cuts_on_characters() {
        assert_eq!(clip("héllo", 2), "hé…");
        assert_eq!(clip("hi", 5), "hi");
    }
}
