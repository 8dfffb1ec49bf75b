//! Engine events → OpenAI JSON, as pure functions: the `chat.completion(.chunk)` and `text_completion` objects,
//! streaming and not. Chunk order: role chunk, content deltas, one finish chunk with an empty delta, the usage
//! chunk (`choices: []`) only when the request asked for it, then `data: [DONE]`.
//!
//! Log probabilities ride on the chunk that carries their tokens' text: chat's `logprobs.content[]` entries,
//! and the legacy `{tokens, token_logprobs, top_logprobs, text_offset}` object of text completions (whose
//! `echo` sends the prompt, with its log probabilities, first). Tokens whose text the engine holds back wait
//! for the next chunk with text, so every token appears exactly once.

use crate::api::tools::parse::{self, CallParser, Format, Piece, Reading};
use serde_json::{json, Value};

use super::error;
use crate::api::error::ApiError;
use crate::api::frame::Frame;
use crate::api::logprobs::{entry_json, token_label};
use crate::api::stream::{Collected, Encoder};
use crate::api::util;
use crate::engine::logprobs::Logprobs;
use crate::engine::{Completion, EngineError, FinishReason, PromptToken, TokenInfo, Usage};

/// What every object of one response shares.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub id: String,
    pub created: u64,
    pub model: String,
}

impl Meta {
    pub fn new(prefix: &str, model: &str) -> Self {
        Self {
            id: util::new_id(prefix),
            created: util::unix_secs(std::time::SystemTime::now()),
            model: model.to_string(),
        }
    }
}

pub fn finish_reason(f: &FinishReason) -> &'static str {
    match f {
        FinishReason::Eos | FinishReason::StopSequence(_) => "stop",
        FinishReason::Length => "length",
    }
}

/// The finish reason of an answer that made calls: `tool_calls`, unless it was cut off.
pub fn call_finish_reason(f: &FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        _ => "tool_calls",
    }
}

pub fn usage(u: &Usage) -> Value {
    let total = u.prompt_tokens + u.completion_tokens;
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": total,
        "prompt_tokens_details": { "cached_tokens": u.cached_prompt_tokens },
    })
}

/// Which OpenAI object a stream is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Chat,
    Text,
}

/// `/v1/completions`' legacy log probabilities, built token by token: parallel lists of token texts, their
/// log probabilities (`null` for the prompt's first token), `{text: logprob}` maps of the alternatives (the
/// chosen token included, as OpenAI's legacy API did) and each token's character offset in the returned text.
#[derive(Debug, Default)]
pub struct Legacy {
    tokens: Vec<String>,
    token_logprobs: Vec<Option<f32>>,
    top_logprobs: Vec<Value>,
    text_offset: Vec<usize>,
    /// Characters of token text so far.
    offset: usize,
    /// Name tokens `token_id:<id>` instead of by their text.
    as_ids: bool,
}

impl Legacy {
    pub fn new(as_ids: bool) -> Self {
        Self {
            as_ids,
            ..Self::default()
        }
    }

    fn push(&mut self, id: u32, bytes: &[u8], lp: Option<&Logprobs>) {
        let text = String::from_utf8_lossy(bytes);
        self.text_offset.push(self.offset);
        self.offset += text.chars().count();
        self.tokens.push(token_label(id, bytes, self.as_ids));
        self.token_logprobs.push(lp.map(|l| l.chosen.logprob));
        self.top_logprobs.push(match lp {
            None => Value::Null,
            Some(l) => {
                let mut top = serde_json::Map::new();
                for t in l.top.iter().chain([&l.chosen]) {
                    top.insert(token_label(t.id, &t.bytes, self.as_ids), json!(t.logprob));
                }
                Value::Object(top)
            }
        });
    }

    pub fn push_prompt(&mut self, t: &PromptToken) {
        self.push(t.id, &t.bytes, t.logprobs.as_ref());
    }

    pub fn push_generated(&mut self, lp: &Logprobs) {
        self.push(lp.chosen.id, &lp.chosen.bytes, Some(lp));
    }

    fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The object for the tokens pushed since the last call (offsets keep counting).
    pub fn take_json(&mut self) -> Value {
        json!({
            "tokens": std::mem::take(&mut self.tokens),
            "token_logprobs": std::mem::take(&mut self.token_logprobs),
            "top_logprobs": std::mem::take(&mut self.top_logprobs),
            "text_offset": std::mem::take(&mut self.text_offset),
        })
    }
}

/// Chat's `logprobs` object for some entries.
fn chat_logprobs(entries: Vec<Value>) -> Value {
    json!({ "content": entries, "refusal": null })
}

/// The streaming encoder for both endpoints.
pub struct OpenAiStream {
    meta: Meta,
    kind: Kind,
    include_usage: bool,
    /// Whether chunks carry log probabilities.
    logprobs: bool,
    /// Text completions with `echo`: the prompt's text, sent before the completion.
    echo: Option<String>,
    /// Chat entries of tokens whose text has not been sent yet.
    pending_chat: Vec<Value>,
    /// The same for text completions.
    pending_legacy: Legacy,
    /// Reads tool calls out of the text when the request offered tools.
    calls: Option<CallParser>,
    /// The ids given to the calls so far.
    call_ids: Vec<String>,
    /// The format calls are written in (it decides their ids).
    call_format: &'static Format,
}

impl OpenAiStream {
    pub fn new(meta: Meta, kind: Kind, include_usage: bool) -> Self {
        Self {
            meta,
            kind,
            include_usage,
            logprobs: false,
            echo: None,
            pending_chat: Vec::new(),
            pending_legacy: Legacy::default(),
            calls: None,
            call_ids: Vec::new(),
            call_format: &parse::HERMES,
        }
    }

    /// Streams tool calls as OpenAI does when the answer may hold them.
    pub fn with_tools(mut self, reading: Option<Reading>) -> Self {
        self.calls = reading.map(CallParser::new);
        self.call_format = reading.map_or(&parse::HERMES, |r| r.format);
        self
    }

    /// Chunks for pieces of a tool-reading answer: text as content, a call's start with its id, type, name and
    /// empty arguments, then its argument fragments.
    fn pieces(&mut self, pieces: Vec<Piece>) -> Vec<Frame> {
        let mut frames = Vec::new();
        for p in pieces {
            let delta = match p {
                Piece::Text(t) => {
                    frames.push(self.text_chunk(&t));
                    continue;
                }
                Piece::Start { index, name } => {
                    let id = self.call_format.call_id("call_");
                    self.call_ids.push(id.clone());
                    json!({ "index": index, "id": id, "type": "function",
                            "function": { "name": name, "arguments": "" } })
                }
                Piece::Args { index, fragment } => {
                    json!({ "index": index, "function": { "arguments": fragment } })
                }
            };
            let choices = json!([{ "index": 0, "delta": { "tool_calls": [delta] }, "logprobs": null,
                                   "finish_reason": null }]);
            frames.push(self.chunk(choices));
        }
        frames
    }

    /// Carry log probabilities (tokens named by id with `token_ids`); for text completions also echo `echo`
    /// (the prompt) first.
    pub fn with(mut self, logprobs: bool, echo: Option<String>, token_ids: bool) -> Self {
        self.logprobs = logprobs;
        self.echo = echo;
        self.pending_legacy = Legacy::new(token_ids);
        self
    }

    fn chunk(&self, choices: Value) -> Frame {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Text => "text_completion",
        };
        let mut v = json!({
            "id": self.meta.id, "object": object, "created": self.meta.created, "model": self.meta.model,
            "system_fingerprint": null, "choices": choices,
        });
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        Frame::json(v)
    }

    /// One choice; `logprobs` takes the pending log probabilities when `text` is sent and they are on.
    fn choice(&mut self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        let carry = self.logprobs && text.is_some() && finish.is_none() && !role;
        match self.kind {
            Kind::Chat => {
                let mut delta = json!({});
                if role {
                    delta["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    delta["content"] = json!(t);
                }
                let logprobs = if carry {
                    chat_logprobs(std::mem::take(&mut self.pending_chat))
                } else {
                    Value::Null
                };
                json!([{ "index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish }])
            }
            Kind::Text => {
                let logprobs = if carry {
                    self.pending_legacy.take_json()
                } else {
                    Value::Null
                };
                json!([{ "index": 0, "text": text.unwrap_or(""), "logprobs": logprobs, "finish_reason": finish }])
            }
        }
    }

    fn text_chunk(&mut self, text: &str) -> Frame {
        let choices = self.choice(Some(text), false, None);
        self.chunk(choices)
    }

    fn has_pending(&self) -> bool {
        !self.pending_chat.is_empty() || !self.pending_legacy.is_empty()
    }
}

impl Encoder for OpenAiStream {
    fn start(&mut self) -> Vec<Frame> {
        match self.kind {
            Kind::Chat => {
                let choices = self.choice(Some(""), true, None);
                vec![self.chunk(choices)]
            }
            // With logprobs the echo waits for the prompt's log probabilities.
            Kind::Text if !self.logprobs => match self.echo.take() {
                Some(echo) => vec![self.text_chunk(&echo)],
                None => vec![],
            },
            Kind::Text => vec![],
        }
    }

    fn prompt(&mut self, tokens: &[PromptToken]) -> Vec<Frame> {
        let Some(echo) = self.echo.take() else {
            return vec![];
        };
        tokens
            .iter()
            .for_each(|t| self.pending_legacy.push_prompt(t));
        vec![self.text_chunk(&echo)]
    }

    fn delta(&mut self, text: &str, tokens: &[TokenInfo]) -> Vec<Frame> {
        if self.logprobs {
            for lp in tokens.iter().filter_map(|t| t.logprobs.as_deref()) {
                match self.kind {
                    Kind::Chat => self.pending_chat.push(entry_json(lp)),
                    Kind::Text => self.pending_legacy.push_generated(lp),
                }
            }
        }
        if text.is_empty() {
            return vec![];
        }
        if let Some(parser) = self.calls.as_mut() {
            let pieces = parser.push(text);
            return self.pieces(pieces);
        }
        vec![self.text_chunk(text)]
    }

    fn done(&mut self, c: &Completion) -> Vec<Frame> {
        let mut frames = Vec::new();
        if let Some(mut parser) = self.calls.take() {
            let rest = parser.finish();
            frames.extend(self.pieces(rest));
        }
        if self.has_pending() {
            // Tokens whose text never showed (a stop string cut it): their log probabilities still arrive.
            frames.push(self.text_chunk(""));
        }
        let finish = if self.call_ids.is_empty() {
            finish_reason(&c.finish)
        } else {
            call_finish_reason(&c.finish)
        };
        let choices = self.choice(None, false, Some(finish));
        frames.push(self.chunk(choices));
        if self.include_usage {
            let mut last = self.chunk(json!([]));
            if let Frame::Json { data, .. } = &mut last {
                data["usage"] = usage(&c.usage);
            }
            frames.push(last);
        }
        frames.push(Frame::Done);
        frames
    }

    fn error(&mut self, e: &EngineError) -> Vec<Frame> {
        vec![Frame::json(error::body(&ApiError::Engine(e.clone())))]
    }

    fn keepalive(&self) -> Option<Frame> {
        Some(Frame::Comment("ping"))
    }
}

/// A whole `chat.completion`; with `logprobs`, every generated token's entry; with `tools`, the calls read
/// out of the text as `message.tool_calls`.
pub fn chat_completion(
    meta: &Meta,
    c: &Collected,
    logprobs: bool,
    tools: Option<Reading>,
) -> Value {
    let logprobs = if logprobs {
        chat_logprobs(
            c.tokens
                .iter()
                .filter_map(|t| t.logprobs.as_deref())
                .map(entry_json)
                .collect(),
        )
    } else {
        Value::Null
    };
    let parsed = parse::parse_if(&c.text, tools);
    let mut message = json!({ "role": "assistant", "content": parsed.text });
    let mut finish = finish_reason(&c.completion.finish);
    if !parsed.calls.is_empty() {
        let calls: Vec<Value> = parsed
            .calls
            .iter()
            .map(|call| {
                json!({ "id": tools.map_or(&parse::HERMES, |r| r.format).call_id("call_"), "type": "function",
                        "function": { "name": call.name, "arguments": call.arguments } })
            })
            .collect();
        if parsed.text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = json!(calls);
        finish = call_finish_reason(&c.completion.finish);
    }
    json!({
        "id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": logprobs,
            "finish_reason": finish,
        }],
        "usage": usage(&c.completion.usage),
    })
}

/// A whole `text_completion`: `echo` (the prompt's text) before the completion, and with `logprobs` the
/// legacy object over the echoed prompt's tokens and then the generated ones.
pub fn text_completion(
    meta: &Meta,
    c: &Collected,
    echo: Option<&str>,
    logprobs: bool,
    token_ids: bool,
) -> Value {
    let logprobs = if logprobs {
        let mut legacy = Legacy::new(token_ids);
        if echo.is_some() {
            c.prompt.iter().for_each(|t| legacy.push_prompt(t));
        }
        for lp in c.tokens.iter().filter_map(|t| t.logprobs.as_deref()) {
            legacy.push_generated(lp);
        }
        legacy.take_json()
    } else {
        Value::Null
    };
    let text = format!("{}{}", echo.unwrap_or(""), c.text);
    json!({
        "id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(&c.completion.finish),
        }],
        "usage": usage(&c.completion.usage),
    })
}

/// `GET /v1/models` entry.
/// The served model as OpenAI lists models, plus what it can do (as some OpenAI-compatible servers add, and
/// clients that pick models by feature read): every model rill serves takes tools and structured output.
pub fn model_object(name: &str, created: u64) -> Value {
    json!({ "id": name, "object": "model", "created": created, "owned_by": "rill",
            "capabilities": ["completion", "tools", "structured_output"] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Timings;

    fn meta() -> Meta {
        Meta {
            id: "chatcmpl-1".into(),
            created: 7,
            model: "m".into(),
        }
    }

    fn done(finish: FinishReason) -> Completion {
        Completion {
            finish,
            usage: Usage {
                prompt_tokens: 3,
                completion_tokens: 2,
                ..Default::default()
            },
            timings: Timings::default(),
        }
    }

    fn data(f: &Frame) -> &Value {
        match f {
            Frame::Json { data, .. } => data,
            other => panic!("not JSON: {other:?}"),
        }
    }

    #[test]
    fn chat_stream_sequence_without_usage() {
        let mut s = OpenAiStream::new(meta(), Kind::Chat, false);
        let start = s.start();
        assert_eq!(
            data(&start[0])["choices"][0]["delta"],
            json!({"role": "assistant", "content": ""})
        );
        assert!(data(&start[0]).get("usage").is_none());
        assert!(s.delta("", &[]).is_empty(), "held-back text sends nothing");
        let d = s.delta("Hé", &[]);
        assert_eq!(data(&d[0])["choices"][0]["delta"], json!({"content": "Hé"}));
        assert_eq!(data(&d[0])["id"], "chatcmpl-1");
        let end = s.done(&done(FinishReason::StopSequence("x".into())));
        assert_eq!(end.len(), 2);
        assert_eq!(
            data(&end[0])["choices"][0],
            json!({"index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop"})
        );
        assert_eq!(end[1], Frame::Done);
    }

    #[test]
    fn usage_chunk_only_when_asked() {
        let mut s = OpenAiStream::new(meta(), Kind::Chat, true);
        assert_eq!(data(&s.start()[0])["usage"], Value::Null);
        let end = s.done(&done(FinishReason::Length));
        assert_eq!(end.len(), 3);
        assert_eq!(data(&end[0])["choices"][0]["finish_reason"], "length");
        assert_eq!(data(&end[0])["usage"], Value::Null);
        assert_eq!(data(&end[1])["choices"], json!([]));
        assert_eq!(
            data(&end[1])["usage"],
            json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "prompt_tokens_details": {"cached_tokens": 0}})
        );
        assert_eq!(end[2], Frame::Done);
    }

    #[test]
    fn text_stream_and_errors() {
        let mut s = OpenAiStream::new(meta(), Kind::Text, false);
        assert!(s.start().is_empty());
        let d = s.delta(" world", &[]);
        assert_eq!(data(&d[0])["object"], "text_completion");
        assert_eq!(data(&d[0])["choices"][0]["text"], " world");
        let e = s.error(&EngineError::Model("boom".into()));
        assert_eq!(data(&e[0])["error"]["type"], "server_error");
        assert!(data(&e[0])["error"]["message"]
            .as_str()
            .unwrap()
            .contains("boom"));
    }

    #[test]
    fn whole_objects() {
        let c = Collected {
            prompt: vec![],
            text: "hi".into(),
            tokens: vec![],
            completion: done(FinishReason::Eos),
        };
        let v = chat_completion(&meta(), &c, false, None);
        assert_eq!(
            v["choices"][0]["message"],
            json!({"role": "assistant", "content": "hi"})
        );
        assert_eq!(v["usage"]["total_tokens"], 5);
        assert_eq!(
            text_completion(&meta(), &c, None, false, false)["choices"][0]["text"],
            "hi"
        );
        assert_eq!(
            text_completion(&meta(), &c, Some("say "), false, false)["choices"][0]["text"],
            "say hi"
        );
    }
}
