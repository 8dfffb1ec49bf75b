//! Framing: how one wire message becomes bytes. Server-sent events for OpenAI and Anthropic, newline-delimited
//! JSON for Ollama. Dialects produce [`Frame`]s; only this module knows the byte layout.

use serde_json::Value;

/// One message of a stream, before framing.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A JSON payload, with an SSE event name where the dialect uses one (Anthropic).
    Json {
        event: Option<&'static str>,
        data: Value,
    },
    /// OpenAI's end marker, `data: [DONE]`.
    Done,
    /// An SSE comment (`: ping`), ignored by clients; keeps proxies and clients from timing out.
    Comment(&'static str),
}

impl Frame {
    pub fn json(data: Value) -> Self {
        Self::Json { event: None, data }
    }

    pub fn event(event: &'static str, data: Value) -> Self {
        Self::Json {
            event: Some(event),
            data,
        }
    }
}

/// The byte layout of a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `text/event-stream`.
    Sse,
    /// `application/x-ndjson`.
    Ndjson,
}

impl Framing {
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Sse => "text/event-stream",
            Self::Ndjson => "application/x-ndjson",
        }
    }

    /// Appends the bytes of `frame` to `out`. Frames NDJSON cannot express (comments, `[DONE]`) are skipped.
    pub fn write(self, frame: &Frame, out: &mut Vec<u8>) {
        match (self, frame) {
            (Self::Sse, Frame::Json { event, data }) => {
                if let Some(ev) = event {
                    out.extend_from_slice(b"event: ");
                    out.extend_from_slice(ev.as_bytes());
                    out.push(b'\n');
                }
                out.extend_from_slice(b"data: ");
                // serde_json escapes control characters, so the payload never contains a raw newline.
                serde_json::to_writer(&mut *out, data).expect("JSON values serialize");
                out.extend_from_slice(b"\n\n");
            }
            (Self::Sse, Frame::Done) => out.extend_from_slice(b"data: [DONE]\n\n"),
            (Self::Sse, Frame::Comment(c)) => {
                out.extend_from_slice(b": ");
                out.extend_from_slice(c.as_bytes());
                out.extend_from_slice(b"\n\n");
            }
            (Self::Ndjson, Frame::Json { data, .. }) => {
                serde_json::to_writer(&mut *out, data).expect("JSON values serialize");
                out.push(b'\n');
            }
            (Self::Ndjson, Frame::Done | Frame::Comment(_)) => {}
        }
    }

    /// The bytes of several frames, in order.
    pub fn encode(self, frames: &[Frame]) -> Vec<u8> {
        let mut out = Vec::with_capacity(frames.len() * 160);
        for f in frames {
            self.write(f, &mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sse_layout() {
        let frames = [
            Frame::json(json!({"a": "x\ny"})),
            Frame::event("ping", json!({"type": "ping"})),
            Frame::Comment("ping"),
            Frame::Done,
        ];
        let s = String::from_utf8(Framing::Sse.encode(&frames)).unwrap();
        assert_eq!(
            s,
            "data: {\"a\":\"x\\ny\"}\n\nevent: ping\ndata: {\"type\":\"ping\"}\n\n: ping\n\ndata: [DONE]\n\n"
        );
    }

    #[test]
    fn ndjson_layout_skips_sse_only_frames() {
        let frames = [
            Frame::json(json!({"a": 1})),
            Frame::Comment("ping"),
            Frame::Done,
            Frame::json(json!({"b": "é"})),
        ];
        let s = String::from_utf8(Framing::Ndjson.encode(&frames)).unwrap();
        assert_eq!(s, "{\"a\":1}\n{\"b\":\"é\"}\n");
    }
}
