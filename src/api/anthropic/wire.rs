//! Engine events → Anthropic Messages JSON, as pure functions: `message_start`, `content_block_start`, `ping`,
//! `content_block_delta`s, `content_block_stop`, `message_delta` (stop reason, output tokens), `message_stop`;
//! and the whole `message` object for non-streaming requests.

use serde_json::{json, Value};

use super::error;
use crate::api::error::ApiError;
use crate::api::frame::Frame;
use crate::api::stream::{Collected, Encoder};
use crate::engine::{Completion, EngineError, FinishReason, TokenInfo};

/// `stop_reason` and `stop_sequence` for a finish.
pub fn stop_reason(f: &FinishReason) -> (&'static str, Value) {
    match f {
        FinishReason::Eos => ("end_turn", Value::Null),
        FinishReason::StopSequence(s) => ("stop_sequence", json!(s)),
        FinishReason::Length => ("max_tokens", Value::Null),
    }
}

/// The streaming encoder.
pub struct AnthropicStream {
    id: String,
    model: String,
    input_tokens: usize,
}

impl AnthropicStream {
    pub fn new(id: String, model: String, input_tokens: usize) -> Self {
        Self {
            id,
            model,
            input_tokens,
        }
    }
}

impl Encoder for AnthropicStream {
    fn start(&mut self) -> Vec<Frame> {
        let message = json!({
            "id": self.id, "type": "message", "role": "assistant", "content": [], "model": self.model,
            "stop_reason": null, "stop_sequence": null,
            "usage": { "input_tokens": self.input_tokens, "output_tokens": 0 },
        });
        vec![
            Frame::event(
                "message_start",
                json!({ "type": "message_start", "message": message }),
            ),
            Frame::event(
                "content_block_start",
                json!({ "type": "content_block_start", "index": 0, "content_block": { "type": "text", "text": "" } }),
            ),
            ping(),
        ]
    }

    fn delta(&mut self, text: &str, _: &[TokenInfo]) -> Vec<Frame> {
        if text.is_empty() {
            return vec![];
        }
        let delta = json!({ "type": "content_block_delta", "index": 0, "delta": { "type": "text_delta", "text": text } });
        vec![Frame::event("content_block_delta", delta)]
    }

    fn done(&mut self, c: &Completion) -> Vec<Frame> {
        let (reason, seq) = stop_reason(&c.finish);
        vec![
            Frame::event(
                "content_block_stop",
                json!({ "type": "content_block_stop", "index": 0 }),
            ),
            Frame::event(
                "message_delta",
                json!({
                    "type": "message_delta",
                    "delta": { "stop_reason": reason, "stop_sequence": seq },
                    "usage": { "output_tokens": c.usage.completion_tokens },
                }),
            ),
            Frame::event("message_stop", json!({ "type": "message_stop" })),
        ]
    }

    fn error(&mut self, e: &EngineError) -> Vec<Frame> {
        vec![Frame::event(
            "error",
            error::body(&ApiError::Engine(e.clone())),
        )]
    }

    fn keepalive(&self) -> Option<Frame> {
        Some(ping())
    }
}

fn ping() -> Frame {
    Frame::event("ping", json!({ "type": "ping" }))
}

/// A whole `message`.
pub fn message(id: &str, model: &str, c: &Collected) -> Value {
    let (reason, seq) = stop_reason(&c.completion.finish);
    json!({
        "id": id, "type": "message", "role": "assistant", "model": model,
        "content": [{ "type": "text", "text": c.text }],
        "stop_reason": reason, "stop_sequence": seq,
        "usage": {
            "input_tokens": c.completion.usage.prompt_tokens,
            "output_tokens": c.completion.usage.completion_tokens,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Timings, Usage};

    fn parts(f: &Frame) -> (Option<&'static str>, &Value) {
        match f {
            Frame::Json { event, data } => (*event, data),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn event_sequence_and_types_agree() {
        let mut s = AnthropicStream::new("msg_1".into(), "m".into(), 25);
        let mut frames = s.start();
        assert!(s.delta("", &[]).is_empty());
        frames.extend(s.delta("Hi", &[]));
        let c = Completion {
            finish: FinishReason::StopSequence("\n".into()),
            usage: Usage {
                prompt_tokens: 25,
                completion_tokens: 4,
                ..Default::default()
            },
            timings: Timings::default(),
        };
        frames.extend(s.done(&c));
        let names: Vec<_> = frames.iter().map(|f| parts(f).0.unwrap()).collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "ping",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        for f in &frames {
            let (ev, data) = parts(f);
            assert_eq!(
                data["type"],
                ev.unwrap(),
                "the event name repeats the data's type"
            );
        }
        assert_eq!(parts(&frames[0]).1["message"]["usage"]["input_tokens"], 25);
        assert_eq!(
            parts(&frames[3]).1["delta"],
            json!({"type": "text_delta", "text": "Hi"})
        );
        assert_eq!(
            parts(&frames[5]).1["delta"],
            json!({"stop_reason": "stop_sequence", "stop_sequence": "\n"})
        );
        assert_eq!(parts(&frames[5]).1["usage"]["output_tokens"], 4);
    }

    #[test]
    fn whole_message_and_error() {
        let c = Collected {
            prompt: vec![],
            text: "yo".into(),
            tokens: vec![],
            completion: Completion {
                finish: FinishReason::Length,
                usage: Usage {
                    prompt_tokens: 1,
                    completion_tokens: 2,
                    ..Default::default()
                },
                timings: Timings::default(),
            },
        };
        let m = message("msg_1", "m", &c);
        assert_eq!(m["content"], json!([{"type": "text", "text": "yo"}]));
        assert_eq!(
            (m["stop_reason"].as_str(), &m["stop_sequence"]),
            (Some("max_tokens"), &Value::Null)
        );
        let mut s = AnthropicStream::new("msg_1".into(), "m".into(), 1);
        let frames = s.error(&EngineError::Model("x".into()));
        let (ev, data) = parts(&frames[0]);
        assert_eq!(ev, Some("error"));
        assert_eq!(data["error"]["type"], "api_error");
    }
}
