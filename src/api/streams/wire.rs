//! The browser stream's events, as pure functions: engine events become named JSON events (`delta`, `done`,
//! `cancelled`, `error`), and each stored event becomes its SSE bytes with its `id:`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::api::openai;
use crate::engine::{Completion, EngineError, TokenInfo};

/// One event of a browser stream, before it is numbered.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// The SSE event name: `delta`, `done`, `cancelled` or `error`.
    pub event: &'static str,
    pub data: Value,
}

/// Whether an event ends the stream.
pub fn is_final(event: &str) -> bool {
    matches!(event, "done" | "cancelled" | "error")
}

/// Turns engine events into messages. Deltas without text are held back and their tokens counted into the next
/// delta that has text, so every `delta` event a browser sees changes the answer.
#[derive(Debug, Default)]
pub struct Encoder {
    pending_tokens: usize,
}

impl Encoder {
    pub fn delta(&mut self, text: &str, tokens: &[TokenInfo]) -> Option<Message> {
        self.pending_tokens += tokens.len();
        if text.is_empty() {
            return None;
        }
        let n = std::mem::take(&mut self.pending_tokens);
        Some(Message {
            event: "delta",
            data: json!({ "text": text, "tokens": n }),
        })
    }

    pub fn done(&mut self, c: &Completion) -> Message {
        let t = &c.timings;
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let data = json!({
            "finish_reason": openai::wire::finish_reason(&c.finish),
            "usage": {
                "prompt_tokens": c.usage.prompt_tokens,
                "completion_tokens": c.usage.completion_tokens,
                "cached_tokens": c.usage.cached_prompt_tokens,
            },
            "timings": {
                "queue_ms": ms(t.queued),
                "prefill_ms": ms(t.prefill),
                "ttft_ms": ms(t.ttft),
                "decode_ms": ms(t.decode),
                "total_ms": ms(t.total),
                "decode_tokens_per_sec": (t.decode_tokens_per_sec(c.usage.completion_tokens) * 10.0).round() / 10.0,
            },
        });
        Message {
            event: "done",
            data,
        }
    }

    pub fn error(&mut self, e: &EngineError) -> Message {
        Message {
            event: "error",
            data: openai::error::body(&ApiError::Engine(e.clone())),
        }
    }
}

/// The event that ends a stream stopped by its client (`DELETE`) or left without a reader past the window.
pub fn cancelled(reason: &str) -> Message {
    Message {
        event: "cancelled",
        data: json!({ "reason": reason }),
    }
}

/// The error a reader gets when the events after its `Last-Event-ID` were dropped to bound memory.
pub fn gap(last_seen: u64, first_kept: u64) -> Message {
    let e = ApiError::bad_request(format!(
        "cannot resume after event {last_seen}: events before {first_kept} were dropped to bound memory"
    ));
    Message {
        event: "error",
        data: openai::error::body(&e),
    }
}

/// The SSE bytes of message `id`.
pub fn frame(id: u64, m: &Message) -> Vec<u8> {
    let mut out = format!("id: {id}\n").into_bytes();
    out.extend(unnumbered(m));
    out
}

/// The SSE bytes of a message without an id, which leaves the client's `Last-Event-ID` where it was.
pub fn unnumbered(m: &Message) -> Vec<u8> {
    let mut out = format!("event: {}\ndata: ", m.event).into_bytes();
    // serde_json escapes control characters, so the payload never contains a raw newline.
    serde_json::to_writer(&mut out, &m.data).expect("JSON values serialize");
    out.extend_from_slice(b"\n\n");
    out
}

/// What opens every connection: how long a browser waits before reconnecting, in milliseconds.
pub fn retry(ms: u64) -> Vec<u8> {
    format!("retry: {ms}\n\n").into_bytes()
}

/// A comment that keeps proxies and clients from closing a silent connection.
pub const KEEPALIVE: &[u8] = b": keep-alive\n\n";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{FinishReason, Timings, Usage};

    fn token(id: u32) -> TokenInfo {
        TokenInfo::new(id)
    }

    #[test]
    fn empty_deltas_carry_their_tokens_forward() {
        let mut enc = Encoder::default();
        assert_eq!(enc.delta("", &[token(1)]), None);
        let m = enc.delta("é", &[token(2)]).unwrap();
        assert_eq!(m.data, json!({"text": "é", "tokens": 2}));
        let m = enc.delta("x", &[token(3)]).unwrap();
        assert_eq!(m.data["tokens"], 1);
    }

    #[test]
    fn frames_are_numbered_single_line_events() {
        let m = Message {
            event: "delta",
            data: json!({"text": "a\nb"}),
        };
        let s = String::from_utf8(frame(7, &m)).unwrap();
        assert_eq!(s, "id: 7\nevent: delta\ndata: {\"text\":\"a\\nb\"}\n\n");
    }

    #[test]
    fn done_reports_usage_and_timings() {
        let c = Completion {
            finish: FinishReason::Length,
            usage: Usage {
                prompt_tokens: 5,
                completion_tokens: 11,
                cached_prompt_tokens: 2,
            },
            timings: Timings {
                ttft: Duration::from_micros(12_345),
                decode: Duration::from_secs(1),
                ..Timings::default()
            },
        };
        let m = Encoder::default().done(&c);
        assert!(is_final(m.event));
        assert_eq!(m.data["finish_reason"], "length");
        assert_eq!(m.data["usage"]["cached_tokens"], 2);
        assert_eq!(m.data["timings"]["ttft_ms"], 12.345);
        assert_eq!(m.data["timings"]["decode_tokens_per_sec"], 10.0);
    }
}
