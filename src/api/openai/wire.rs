//! Engine events → OpenAI JSON, as pure functions: the `chat.completion(.chunk)` and `text_completion` objects,
//! streaming and not. Chunk order: role chunk, content deltas, one finish chunk with an empty delta, the usage
//! chunk (`choices: []`) only when the request asked for it, then `data: [DONE]`.

use serde_json::{json, Value};

use super::error;
use crate::api::error::ApiError;
use crate::api::frame::Frame;
use crate::api::stream::{Collected, Encoder};
use crate::api::util;
use crate::engine::{Completion, EngineError, FinishReason, TokenInfo, Usage};

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

/// The streaming encoder for both endpoints.
pub struct OpenAiStream {
    meta: Meta,
    kind: Kind,
    include_usage: bool,
}

impl OpenAiStream {
    pub fn new(meta: Meta, kind: Kind, include_usage: bool) -> Self {
        Self {
            meta,
            kind,
            include_usage,
        }
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

    fn choice(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        match self.kind {
            Kind::Chat => {
                let mut delta = json!({});
                if role {
                    delta["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    delta["content"] = json!(t);
                }
                json!([{ "index": 0, "delta": delta, "logprobs": null, "finish_reason": finish }])
            }
            Kind::Text => {
                json!([{ "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish }])
            }
        }
    }
}

impl Encoder for OpenAiStream {
    fn start(&mut self) -> Vec<Frame> {
        match self.kind {
            Kind::Chat => vec![self.chunk(self.choice(Some(""), true, None))],
            Kind::Text => vec![],
        }
    }

    fn delta(&mut self, text: &str, _: &[TokenInfo]) -> Vec<Frame> {
        if text.is_empty() {
            return vec![];
        }
        vec![self.chunk(self.choice(Some(text), false, None))]
    }

    fn done(&mut self, c: &Completion) -> Vec<Frame> {
        let mut frames = vec![self.chunk(self.choice(None, false, Some(finish_reason(&c.finish))))];
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

/// A whole `chat.completion`.
pub fn chat_completion(meta: &Meta, c: &Collected) -> Value {
    json!({
        "id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": c.text },
            "logprobs": null,
            "finish_reason": finish_reason(&c.completion.finish),
        }],
        "usage": usage(&c.completion.usage),
    })
}

/// A whole `text_completion`.
pub fn text_completion(meta: &Meta, c: &Collected) -> Value {
    json!({
        "id": meta.id, "object": "text_completion", "created": meta.created, "model": meta.model,
        "system_fingerprint": null,
        "choices": [{
            "index": 0, "text": c.text, "logprobs": null, "finish_reason": finish_reason(&c.completion.finish),
        }],
        "usage": usage(&c.completion.usage),
    })
}

/// `GET /v1/models` entry.
pub fn model_object(name: &str, created: u64) -> Value {
    json!({ "id": name, "object": "model", "created": created, "owned_by": "rill" })
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
            text: "hi".into(),
            tokens: vec![],
            completion: done(FinishReason::Eos),
        };
        let v = chat_completion(&meta(), &c);
        assert_eq!(
            v["choices"][0]["message"],
            json!({"role": "assistant", "content": "hi"})
        );
        assert_eq!(v["usage"]["total_tokens"], 5);
        assert_eq!(text_completion(&meta(), &c)["choices"][0]["text"], "hi");
    }
}
