//! Engine events → Anthropic Messages JSON, as pure functions: `message_start`, `content_block_start`, `ping`,
//! `content_block_delta`s, `content_block_stop`, `message_delta` (stop reason, output tokens), `message_stop`;
//! and the whole `message` object for non-streaming requests.

use serde_json::{json, Value};

use super::error;
use crate::api::error::ApiError;
use crate::api::frame::Frame;
use crate::api::stream::{Collected, Encoder};
use crate::api::tools::parse::{self, CallParser, Format, Piece, Reading};
use crate::engine::{Completion, EngineError, FinishReason, TokenInfo};

/// `stop_reason` and `stop_sequence` for a finish.
pub fn stop_reason(f: &FinishReason) -> (&'static str, Value) {
    match f {
        FinishReason::Eos => ("end_turn", Value::Null),
        FinishReason::StopSequence(s) => ("stop_sequence", json!(s)),
        FinishReason::Length => ("max_tokens", Value::Null),
    }
}

/// `stop_reason` for an answer that made tool calls: `tool_use`, unless it was cut off.
fn call_stop_reason(f: &FinishReason) -> (&'static str, Value) {
    match f {
        FinishReason::Length => ("max_tokens", Value::Null),
        _ => ("tool_use", Value::Null),
    }
}

/// The streaming encoder.
pub struct AnthropicStream {
    id: String,
    model: String,
    input_tokens: usize,
    /// Reads tool calls out of the text when the request offered tools; blocks then open as content arrives.
    calls: Option<CallParser>,
    /// The content block open now (its index), and how many were opened.
    open: Option<usize>,
    blocks: usize,
    called: bool,
    /// The format calls are written in (it decides their ids).
    call_format: &'static Format,
}

impl AnthropicStream {
    pub fn new(id: String, model: String, input_tokens: usize) -> Self {
        Self {
            id,
            model,
            input_tokens,
            calls: None,
            open: None,
            blocks: 0,
            called: false,
            call_format: &parse::HERMES,
        }
    }

    /// Streams tool calls as `tool_use` blocks when the answer may hold them.
    pub fn with_tools(mut self, reading: Option<Reading>) -> Self {
        self.calls = reading.map(CallParser::new);
        self.call_format = reading.map_or(&parse::HERMES, |r| r.format);
        self
    }

    /// Closes the open block and opens `block` as the next one.
    fn open_block(&mut self, block: Value) -> Vec<Frame> {
        let mut frames = self.close_block();
        let index = self.blocks;
        self.blocks += 1;
        self.open = Some(index);
        frames.push(Frame::event(
            "content_block_start",
            json!({ "type": "content_block_start", "index": index, "content_block": block }),
        ));
        frames
    }

    fn close_block(&mut self) -> Vec<Frame> {
        match self.open.take() {
            Some(index) => vec![Frame::event(
                "content_block_stop",
                json!({ "type": "content_block_stop", "index": index }),
            )],
            None => vec![],
        }
    }

    fn text_delta(&self, text: &str) -> Frame {
        let delta = json!({ "type": "content_block_delta", "index": self.open.unwrap_or(0),
                            "delta": { "type": "text_delta", "text": text } });
        Frame::event("content_block_delta", delta)
    }

    /// Frames for pieces of a tool-reading answer: text in a text block, each call in a `tool_use` block
    /// whose input arrives as `input_json_delta`s.
    fn pieces(&mut self, pieces: Vec<Piece>) -> Vec<Frame> {
        let mut frames = Vec::new();
        for p in pieces {
            match p {
                Piece::Text(t) => {
                    if self.open.is_none() || self.called {
                        frames.extend(self.open_block(json!({ "type": "text", "text": "" })));
                        self.called = false;
                    }
                    frames.push(self.text_delta(&t));
                }
                Piece::Start { name, .. } => {
                    let block = json!({ "type": "tool_use", "id": self.call_format.call_id("toolu_"), "name": name,
                                        "input": {} });
                    frames.extend(self.open_block(block));
                    self.called = true;
                }
                Piece::Args { fragment, .. } => {
                    let delta = json!({ "type": "content_block_delta", "index": self.open.unwrap_or(0),
                                        "delta": { "type": "input_json_delta", "partial_json": fragment } });
                    frames.push(Frame::event("content_block_delta", delta));
                }
            }
        }
        frames
    }
}

impl Encoder for AnthropicStream {
    fn start(&mut self) -> Vec<Frame> {
        let message = json!({
            "id": self.id, "type": "message", "role": "assistant", "content": [], "model": self.model,
            "stop_reason": null, "stop_sequence": null,
            "usage": { "input_tokens": self.input_tokens, "output_tokens": 0 },
        });
        let mut frames = vec![Frame::event(
            "message_start",
            json!({ "type": "message_start", "message": message }),
        )];
        if self.calls.is_none() {
            frames.extend(self.open_block(json!({ "type": "text", "text": "" })));
        }
        frames.push(ping());
        frames
    }

    fn delta(&mut self, text: &str, _: &[TokenInfo]) -> Vec<Frame> {
        if text.is_empty() {
            return vec![];
        }
        if let Some(parser) = self.calls.as_mut() {
            let pieces = parser.push(text);
            return self.pieces(pieces);
        }
        vec![self.text_delta(text)]
    }

    fn done(&mut self, c: &Completion) -> Vec<Frame> {
        let mut frames = Vec::new();
        let mut made_calls = false;
        if let Some(mut parser) = self.calls.take() {
            let rest = parser.finish();
            frames.extend(self.pieces(rest));
            made_calls = parser.calls() > 0;
            if self.blocks == 0 {
                frames.extend(self.open_block(json!({ "type": "text", "text": "" })));
            }
        }
        frames.extend(self.close_block());
        let (reason, seq) = if made_calls {
            call_stop_reason(&c.finish)
        } else {
            stop_reason(&c.finish)
        };
        frames.extend([
            Frame::event(
                "message_delta",
                json!({
                    "type": "message_delta",
                    "delta": { "stop_reason": reason, "stop_sequence": seq },
                    "usage": { "output_tokens": c.usage.completion_tokens },
                }),
            ),
            Frame::event("message_stop", json!({ "type": "message_stop" })),
        ]);
        frames
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

/// A whole `message`; with `tools`, the calls read out of the text as `tool_use` blocks after any text.
pub fn message(id: &str, model: &str, c: &Collected, tools: Option<Reading>) -> Value {
    let parsed = parse::parse_if(&c.text, tools);
    let mut content = Vec::new();
    if !parsed.text.is_empty() || parsed.calls.is_empty() {
        content.push(json!({ "type": "text", "text": parsed.text }));
    }
    for call in &parsed.calls {
        // A call cut off by max_tokens has no complete input: it is shown empty.
        let input: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
        let id = tools.map_or(&parse::HERMES, |r| r.format).call_id("toolu_");
        content.push(json!({ "type": "tool_use", "id": id, "name": call.name, "input": input }));
    }
    let (reason, seq) = if parsed.calls.is_empty() {
        stop_reason(&c.completion.finish)
    } else {
        call_stop_reason(&c.completion.finish)
    };
    json!({
        "id": id, "type": "message", "role": "assistant", "model": model,
        "content": content,
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
        let m = message("msg_1", "m", &c, None);
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
