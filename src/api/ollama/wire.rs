//! Engine events → Ollama JSON, as pure functions: one NDJSON line per delta, a final line with `done_reason`,
//! nanosecond timings and counts (`context` too for `/api/generate`), and the model listings. With
//! `logprobs`, each line carries the `logprobs` entries of the tokens whose text it brings.
//!
//! When the request offered tools, the answer is read for calls: each one goes out as Ollama sends it, whole
//! and once complete, on a line of its own (`message.tool_calls: [{"function": {"name", "arguments": {…}}}]`,
//! arguments an object, content empty); text streams as usual. A call cut short (token limit, stop string)
//! stays text, as Ollama leaves what it cannot parse in `content`. `done_reason` is `stop` or `length` either
//! way, as Ollama reports it.

use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::error;
use crate::api::error::ApiError;
use crate::api::frame::Frame;
use crate::api::logprobs::entry_json;
use crate::api::stream::{Collected, Encoder};
use crate::api::tools::parse::{self, CallParser, Format, Piece, Reading};
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
    /// Reads tool calls out of the text when the request offered tools.
    calls: Option<CallParser>,
    /// The call being generated, name and arguments so far: sent whole once its arguments are complete.
    open_call: Option<(String, String)>,
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
            calls: None,
            open_call: None,
        }
    }

    /// Reads the answer for tool calls (when the request offered tools).
    pub fn with_tools(mut self, reading: Option<Reading>) -> Self {
        self.calls = reading.map(CallParser::new);
        self
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
        let Some(reading) = self.calls.as_ref().map(CallParser::reading) else {
            let mut v = self.last(&c.text, &c.completion);
            self.attach_logprobs(&mut v);
            return v;
        };
        let format = reading.format;
        let parsed = parse::parse(&c.text, reading);
        let mut text = parsed.text;
        let mut calls = Vec::new();
        for call in &parsed.calls {
            match tool_call(&call.name, &call.arguments) {
                Some(v) => calls.push(v),
                None => text.push_str(&unfinished(format, &call.name, &call.arguments)),
            }
        }
        let mut v = self.last(&text, &c.completion);
        if !calls.is_empty() {
            v["message"]["tool_calls"] = Value::Array(calls);
        }
        self.attach_logprobs(&mut v);
        v
    }

    /// A line of streamed text.
    fn text_line(&mut self, text: &str) -> Frame {
        let mut line = self.line(text, false);
        self.attach_logprobs(&mut line);
        Frame::json(line)
    }

    /// Lines for pieces of a tool-reading answer: text as it comes, each call whole once its arguments close.
    fn pieces(&mut self, pieces: Vec<Piece>) -> Vec<Frame> {
        let mut frames = Vec::new();
        for p in pieces {
            match p {
                Piece::Text(t) => frames.push(self.text_line(&t)),
                Piece::Start { name, .. } => {
                    frames.extend(self.flush_call());
                    self.open_call = Some((name, String::new()));
                }
                Piece::Args { fragment, .. } => {
                    let Some((name, args)) = self.open_call.as_mut() else {
                        continue;
                    };
                    args.push_str(&fragment);
                    // Complete arguments end the object; a prefix never parses as one.
                    let call = args.ends_with('}').then(|| tool_call(name, args)).flatten();
                    if let Some(call) = call {
                        self.open_call = None;
                        let mut line = self.line("", false);
                        line["message"]["tool_calls"] = json!([call]);
                        self.attach_logprobs(&mut line);
                        frames.push(Frame::json(line));
                    }
                }
            }
        }
        frames
    }

    /// A call left unfinished when the answer ends goes out as text.
    fn flush_call(&mut self) -> Option<Frame> {
        let (name, args) = self.open_call.take()?;
        let format = self
            .calls
            .as_ref()
            .map_or(&parse::HERMES, |p| p.reading().format);
        Some(self.text_line(&unfinished(format, &name, &args)))
    }
}

/// A call as Ollama answers it, `{"function": {"name", "arguments": {…}}}`, when `arguments` is a whole JSON
/// object.
pub fn tool_call(name: &str, arguments: &str) -> Option<Value> {
    match serde_json::from_str::<Value>(arguments) {
        Ok(args @ Value::Object(_)) => {
            Some(json!({ "function": { "name": name, "arguments": args } }))
        }
        _ => None,
    }
}

/// The text the model wrote for a call that never completed.
fn unfinished(format: &Format, name: &str, arguments: &str) -> String {
    format!("{}{name}{}{arguments}", format.open, format.mid)
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
        if let Some(parser) = self.calls.as_mut() {
            let pieces = parser.push(text);
            return self.pieces(pieces);
        }
        vec![self.text_line(text)]
    }

    fn done(&mut self, c: &Completion) -> Vec<Frame> {
        let mut frames = Vec::new();
        if let Some(mut parser) = self.calls.take() {
            let rest = parser.finish();
            frames.extend(self.pieces(rest));
            frames.extend(self.flush_call());
        }
        let mut last = self.last("", c);
        if !self.pending.is_empty() {
            // Tokens whose text never showed (a stop string cut it) still report their log probabilities.
            self.attach_logprobs(&mut last);
        }
        frames.push(Frame::json(last));
        frames
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
    /// The chat template's source text.
    pub template: String,
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

    /// `POST /api/show`. Tools work whatever the template (rill describes them itself to one that does not
    /// take them), so `tools` is always among the capabilities.
    pub fn show(&self) -> Value {
        let arch = &self.info.arch;
        json!({
            "license": "", "modelfile": format!("# served by rill\nFROM {}\n", self.name), "parameters": "",
            "template": self.template, "details": self.details(),
            "model_info": {
                "general.architecture": arch,
                "general.parameter_count": self.info.n_params,
                format!("{arch}.context_length"): self.info.context_length,
                format!("{arch}.vocab_size"): self.info.vocab_size,
            },
            "capabilities": ["completion", "tools"],
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
#[path = "wire_tests.rs"]
mod tests;
