//! Engine events → Ollama JSON, as pure functions: one NDJSON line per delta, a final line with `done_reason`,
//! nanosecond timings and counts (`context` too for `/api/generate`), and the model listings. With
//! `logprobs`, each line carries the `logprobs` entries of the tokens whose text it brings.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::error;
use crate::api::error::ApiError;
use crate::api::frame::Frame;
use crate::api::logprobs::entry_json;
use crate::api::stream::{Collected, Encoder};
use crate::api::util;
use crate::engine::{Completion, EngineError, FinishReason, TokenInfo};
use crate::model::ModelInfo;

/// Which endpoint a response belongs to.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// `/api/generate`, carrying the prompt ids so the final line can return `context`.
    Generate {
        prompt: Vec<u32>,
    },
    Chat,
}

/// The streaming encoder; `clock` stamps `created_at`.
pub struct OllamaStream {
    model: String,
    mode: Mode,
    generated: Vec<u32>,
    clock: fn() -> SystemTime,
    /// Whether lines carry log probabilities.
    logprobs: bool,
    /// Entries of tokens whose text has not been sent yet.
    pending: Vec<Value>,
}

impl OllamaStream {
    pub fn new(model: String, mode: Mode, clock: fn() -> SystemTime) -> Self {
        Self {
            model,
            mode,
            generated: Vec::new(),
            clock,
            logprobs: false,
            pending: Vec::new(),
        }
    }

    pub fn with_logprobs(mut self, on: bool) -> Self {
        self.logprobs = on;
        self
    }

    /// Adds the pending log probabilities to `v` (when they are on).
    fn attach_logprobs(&mut self, v: &mut Value) {
        if self.logprobs {
            v["logprobs"] = Value::Array(std::mem::take(&mut self.pending));
        }
    }

    fn collect_logprobs(&mut self, tokens: &[TokenInfo]) {
        if self.logprobs {
            let entries = tokens.iter().filter_map(|t| t.logprobs.as_deref());
            self.pending.extend(entries.map(entry_json));
        }
    }

    fn line(&self, text: &str, done: bool) -> Value {
        let mut v = json!({ "model": self.model, "created_at": util::rfc3339((self.clock)()) });
        match self.mode {
            Mode::Generate { .. } => v["response"] = json!(text),
            Mode::Chat => v["message"] = json!({ "role": "assistant", "content": text }),
        }
        v["done"] = json!(done);
        v
    }

    /// The final object: `text` is empty when streaming, the whole answer otherwise.
    fn last(&self, text: &str, c: &Completion) -> Value {
        let mut v = self.line(text, true);
        let ns = |d: Duration| d.as_nanos() as u64;
        let t = &c.timings;
        v["done_reason"] = json!(done_reason(&c.finish));
        if let Mode::Generate { prompt } = &self.mode {
            v["context"] = json!(prompt.iter().chain(&self.generated).collect::<Vec<_>>());
        }
        v["total_duration"] = json!(ns(t.total));
        v["load_duration"] = json!(0);
        v["prompt_eval_count"] = json!(c.usage.prompt_tokens);
        v["prompt_eval_duration"] = json!(ns(t.prefill));
        v["eval_count"] = json!(c.usage.completion_tokens);
        v["eval_duration"] = json!(ns(t.decode));
        v
    }

    /// The single object of a non-streaming response.
    pub fn whole(mut self, c: &Collected) -> Value {
        self.generated = c.tokens.iter().map(|t| t.id).collect();
        self.collect_logprobs(&c.tokens);
        let mut v = self.last(&c.text, &c.completion);
        self.attach_logprobs(&mut v);
        v
    }
}

pub fn done_reason(f: &FinishReason) -> &'static str {
    match f {
        FinishReason::Eos | FinishReason::StopSequence(_) => "stop",
        FinishReason::Length => "length",
    }
}

impl Encoder for OllamaStream {
    fn start(&mut self) -> Vec<Frame> {
        vec![]
    }

    fn delta(&mut self, text: &str, tokens: &[TokenInfo]) -> Vec<Frame> {
        self.generated.extend(tokens.iter().map(|t| t.id));
        self.collect_logprobs(tokens);
        if text.is_empty() {
            return vec![];
        }
        let mut line = self.line(text, false);
        self.attach_logprobs(&mut line);
        vec![Frame::json(line)]
    }

    fn done(&mut self, c: &Completion) -> Vec<Frame> {
        let mut last = self.last("", c);
        if !self.pending.is_empty() {
            // Tokens whose text never showed (a stop string cut it) still report their log probabilities.
            self.attach_logprobs(&mut last);
        }
        vec![Frame::json(last)]
    }

    fn error(&mut self, e: &EngineError) -> Vec<Frame> {
        vec![Frame::json(error::body(&ApiError::Engine(e.clone())))]
    }

    fn keepalive(&self) -> Option<Frame> {
        None
    }
}

/// The answer to an empty prompt: the model is loaded.
pub fn load_response(model: &str, mode: &Mode, now: SystemTime) -> Value {
    let mut v = json!({ "model": model, "created_at": util::rfc3339(now) });
    match mode {
        Mode::Generate { .. } => v["response"] = json!(""),
        Mode::Chat => v["message"] = json!({ "role": "assistant", "content": "" }),
    }
    v["done"] = json!(true);
    v["done_reason"] = json!("load");
    v
}

/// Facts about the served model that the listing endpoints show.
#[derive(Debug, Clone)]
pub struct Listing<'a> {
    pub name: &'a str,
    pub info: &'a ModelInfo,
    pub size: u64,
    pub modified: SystemTime,
}

impl Listing<'_> {
    /// The name as Ollama lists it, with a tag.
    pub fn tagged(&self) -> String {
        format!("{}:latest", self.name)
    }

    pub fn details(&self) -> Value {
        let format = if self.info.quantization.starts_with(['Q', 'q', 'I']) {
            "gguf"
        } else {
            "safetensors"
        };
        json!({
            "parent_model": "", "format": format, "family": self.info.arch, "families": [self.info.arch],
            "parameter_size": parameter_size(self.info.n_params), "quantization_level": self.info.quantization,
        })
    }

    /// A stable 64-hex identifier of the served model (name, shape and size), not a hash of its file.
    pub fn digest(&self) -> String {
        use std::hash::{Hash, Hasher};
        (0..4u64)
            .map(|salt| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                (
                    salt,
                    self.name,
                    &self.info.arch,
                    &self.info.quantization,
                    self.info.n_params,
                    self.size,
                )
                    .hash(&mut h);
                format!("{:016x}", h.finish())
            })
            .collect()
    }

    /// An entry of `GET /api/tags`.
    pub fn tag(&self) -> Value {
        json!({
            "name": self.tagged(), "model": self.tagged(), "modified_at": util::rfc3339(self.modified),
            "size": self.size, "digest": self.digest(), "details": self.details(),
        })
    }

    /// An entry of `GET /api/ps`: loaded, never expiring.
    pub fn running(&self) -> Value {
        json!({
            "name": self.tagged(), "model": self.tagged(), "size": self.size, "digest": self.digest(),
            "details": self.details(), "expires_at": "2318-01-01T00:00:00Z", "size_vram": 0,
            "context_length": self.info.context_length,
        })
    }

    /// `POST /api/show`.
    pub fn show(&self) -> Value {
        let arch = &self.info.arch;
        json!({
            "license": "", "modelfile": format!("# served by rill\nFROM {}\n", self.name), "parameters": "",
            "template": "", "details": self.details(),
            "model_info": {
                "general.architecture": arch,
                "general.parameter_count": self.info.n_params,
                format!("{arch}.context_length"): self.info.context_length,
                format!("{arch}.vocab_size"): self.info.vocab_size,
            },
            "capabilities": ["completion"],
            "modified_at": util::rfc3339(self.modified),
        })
    }
}

/// `134.5M`, `1.2B`: parameter counts the way Ollama prints them.
pub fn parameter_size(n: usize) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.1}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M", n / 1e6)
    } else {
        format!("{:.1}K", n / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Timings, Usage};

    fn epoch() -> SystemTime {
        SystemTime::UNIX_EPOCH
    }

    fn completion() -> Completion {
        let timings = Timings {
            prefill: Duration::from_millis(2),
            decode: Duration::from_millis(3),
            total: Duration::from_millis(6),
            ..Timings::default()
        };
        Completion {
            finish: FinishReason::Length,
            usage: Usage {
                prompt_tokens: 2,
                completion_tokens: 2,
                ..Default::default()
            },
            timings,
        }
    }

    fn data(f: &Frame) -> &Value {
        match f {
            Frame::Json { data, .. } => data,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn generate_stream_lines() {
        let mut s = OllamaStream::new("m".into(), Mode::Generate { prompt: vec![5, 6] }, epoch);
        assert!(s.start().is_empty());
        assert!(s.delta("", &[TokenInfo::new(7)]).is_empty());
        let d = s.delta("é", &[TokenInfo::new(8)]);
        assert_eq!(
            data(&d[0]),
            &json!({"model": "m", "created_at": "1970-01-01T00:00:00.000000000Z", "response": "é", "done": false})
        );
        let end = s.done(&completion());
        let v = data(&end[0]);
        assert_eq!(v["done"], true);
        assert_eq!(v["done_reason"], "length");
        assert_eq!(v["context"], json!([5, 6, 7, 8]));
        assert_eq!(
            (v["total_duration"].as_u64(), v["eval_duration"].as_u64()),
            (Some(6_000_000), Some(3_000_000))
        );
        assert_eq!(
            (v["prompt_eval_count"].as_u64(), v["eval_count"].as_u64()),
            (Some(2), Some(2))
        );
    }

    #[test]
    fn chat_lines_and_whole() {
        let mut s = OllamaStream::new("m".into(), Mode::Chat, epoch);
        let d = s.delta("hi", &[]);
        assert_eq!(
            data(&d[0])["message"],
            json!({"role": "assistant", "content": "hi"})
        );
        let whole = OllamaStream::new("m".into(), Mode::Chat, epoch).whole(&Collected {
            prompt: vec![],
            text: "hi".into(),
            tokens: vec![],
            completion: completion(),
        });
        assert_eq!(whole["message"]["content"], "hi");
        assert!(whole.get("context").is_none());
        let e = s.error(&EngineError::Model("x".into()));
        assert!(data(&e[0])["error"].as_str().unwrap().contains('x'));
    }

    #[test]
    fn sizes() {
        assert_eq!(parameter_size(134_515_008), "134.5M");
        assert_eq!(parameter_size(1_240_000_000), "1.2B");
    }
}
