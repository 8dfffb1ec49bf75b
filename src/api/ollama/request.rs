//! Ollama request bodies and their translation into an engine request. `options` carries sampling and limits
//! with Ollama's names and defaults; `num_ctx` narrows the context, and a prompt that does not fit is a 400
//! naming both lengths (never a silent truncation). An empty prompt or message list is Ollama's "load" call.

use crate::api::structured;
use crate::engine::grammar::Constraint;
use serde::Deserialize;
use serde_json::{Number, Value};

use crate::api::error::ApiError;
use crate::api::logprobs;
use crate::api::params::{self, Limits, OneOrMany, SamplingFields};
use crate::engine::{EngineError, GenRequest, SamplingParams, Shared};
use crate::tokenizer::ChatMessage;

const LIMITS: Limits = Limits {
    max_temperature: 100.0,
};

/// Ollama's sampling defaults, which its clients expect when they send no options.
pub fn defaults() -> SamplingParams {
    SamplingParams {
        temperature: 0.8,
        top_p: 0.9,
        top_k: 40,
        repetition_penalty: 1.1,
        repeat_last_n: 64,
        ..SamplingParams::default()
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct Options {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    /// Most tokens to generate; negative means no limit.
    pub num_predict: Option<i64>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<Number>,
    pub repeat_penalty: Option<f32>,
    pub repeat_last_n: Option<i64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    /// Context size for this request: at most the model's.
    pub num_ctx: Option<i64>,
}

/// Fields both endpoints share.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub options: Option<Options>,
    pub format: Option<Value>,
    pub keep_alive: Option<Value>,
    /// Return each generated token's log probability.
    pub logprobs: Option<bool>,
    /// And this many most likely alternatives (0 to 20).
    pub top_logprobs: Option<i64>,
}

/// `POST /api/generate`.
#[derive(Debug, Deserialize)]
pub struct GenerateRequest {
    #[serde(default)]
    pub prompt: String,
    pub system: Option<String>,
    pub template: Option<String>,
    /// Send the prompt as is, without the chat template.
    pub raw: Option<bool>,
    /// Token ids returned by an earlier response, continued by this prompt.
    pub context: Option<Vec<u32>>,
    pub images: Option<Vec<Value>>,
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub common: Common,
}

/// `POST /api/chat`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub messages: Vec<Message>,
    pub tools: Option<Vec<Value>>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: String,
    pub images: Option<Vec<Value>>,
}

/// What a request asks for.
#[derive(Debug)]
pub enum Plan {
    /// Only to load the model (empty prompt): answered at once with `done_reason: "load"`.
    Load,
    Generate {
        gen: GenRequest,
        stream: bool,
    },
}

impl Common {
    /// The model name, which Ollama requires.
    pub fn model(&self) -> Result<&str, ApiError> {
        self.model
            .as_deref()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| ApiError::bad_request("`model` is required"))
    }

    /// The request's `format` compiled for the served model (a bad schema is a 400 here, before anything runs).
    fn constraint(&self, shared: &Shared) -> Result<Option<Constraint>, ApiError> {
        structured::ollama_format(self.format.as_ref())?
            .map(|g| structured::compile(shared, &g))
            .transpose()
    }

    /// Plans generation of `prompt` for the served model, under `constraint` when one is given.
    fn plan(
        self,
        prompt: Vec<u32>,
        shared: &Shared,
        constraint: Option<Constraint>,
    ) -> Result<Plan, ApiError> {
        let (context, max_logprobs) = (shared.info.context_length, shared.config.max_logprobs);
        self.plan_within(prompt, context, max_logprobs, constraint)
    }

    /// `context`: the model's context length; `max_logprobs`: the server's limit on alternatives.
    fn plan_within(
        self,
        prompt: Vec<u32>,
        context: usize,
        max_logprobs: usize,
        constraint: Option<Constraint>,
    ) -> Result<Plan, ApiError> {
        let top = logprobs::top_count("top_logprobs", self.top_logprobs, max_logprobs)?;
        // Asking for alternatives turns log probabilities on, as a count above zero implies.
        let logprobs = (self.logprobs == Some(true) || top > 0).then_some(top);
        let opts = self.options.unwrap_or_default();
        let limit = match opts.num_ctx {
            Some(n) if n > 0 => (n as usize).min(context),
            _ => context,
        };
        if prompt.len() >= limit {
            return Err(EngineError::PromptTooLong {
                prompt: prompt.len(),
                context: limit,
            }
            .into());
        }
        let room = limit - prompt.len();
        let max_tokens = Some(
            opts.num_predict
                .filter(|&n| n > 0)
                .map_or(room, |n| (n as usize).min(room)),
        );
        let fields = SamplingFields {
            temperature: opts.temperature,
            top_p: opts.top_p,
            top_k: opts.top_k,
            min_p: opts.min_p,
            repetition_penalty: opts.repeat_penalty,
            repeat_last_n: opts.repeat_last_n,
            presence_penalty: opts.presence_penalty,
            frequency_penalty: opts.frequency_penalty,
            seed: params::seed(opts.seed.as_ref())?,
        };
        let sampling = fields.build(defaults(), LIMITS)?;
        let gen = GenRequest {
            constraint,
            prompt,
            sampling,
            max_tokens,
            stop: params::stops(opts.stop),
            ignore_eos: false,
            logprobs,
            prompt_logprobs: None,
        };
        Ok(Plan::Generate {
            gen,
            stream: self.stream.unwrap_or(true),
        })
    }
}

impl GenerateRequest {
    pub fn plan(self, shared: &Shared) -> Result<Plan, ApiError> {
        let constraint = self.common.constraint(shared)?;
        if self.images.as_ref().is_some_and(|i| !i.is_empty()) {
            return Err(ApiError::bad_request(
                "`images` are not supported: the served model reads text only",
            ));
        }
        if self.template.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::bad_request(
                "`template` overrides are not supported",
            ));
        }
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad_request("`suffix` is not supported"));
        }
        if self.prompt.is_empty() && self.context.is_none() {
            return Ok(Plan::Load);
        }
        let text = if self.raw == Some(true) {
            self.prompt
        } else {
            let mut msgs = Vec::new();
            if let Some(s) = self.system.filter(|s| !s.is_empty()) {
                msgs.push(ChatMessage::new("system", &s));
            }
            msgs.push(ChatMessage::new("user", &self.prompt));
            shared.chat.render(&msgs, true)?
        };
        let mut prompt = self.context.unwrap_or_default();
        if let Some(bad) = prompt
            .iter()
            .find(|&&id| id as usize >= shared.info.vocab_size)
        {
            return Err(ApiError::bad_request(format!(
                "`context` holds token id {bad}, outside the vocabulary"
            )));
        }
        prompt.extend(shared.tokenizer.encode(&text)?);
        self.common.plan(prompt, shared, constraint)
    }
}

impl ChatRequest {
    pub fn plan(self, shared: &Shared) -> Result<Plan, ApiError> {
        let constraint = self.common.constraint(shared)?;
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::bad_request("`tools` are not supported yet"));
        }
        if self.messages.is_empty() {
            return Ok(Plan::Load);
        }
        let mut msgs = Vec::with_capacity(self.messages.len());
        for m in self.messages {
            if m.images.as_ref().is_some_and(|i| !i.is_empty()) {
                return Err(ApiError::bad_request(
                    "`images` are not supported: the served model reads text only",
                ));
            }
            if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                return Err(ApiError::bad_request(format!(
                    "message role `{}` is not supported; use system, user or assistant",
                    m.role
                )));
            }
            msgs.push(ChatMessage::new(&m.role, &m.content));
        }
        let prompt = shared.tokenizer.encode(&shared.chat.render(&msgs, true)?)?;
        self.common.plan(prompt, shared, constraint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn common(json: &str) -> Common {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn options_map_with_ollama_defaults() {
        let p = common(r#"{"options":{"num_predict":5,"stop":["\n"],"seed":3,"temperature":0}}"#)
            .plan_within(vec![1, 2], 10, 20, None)
            .unwrap();
        let Plan::Generate { gen, stream } = p else {
            panic!()
        };
        assert!(stream, "Ollama streams by default");
        assert_eq!(
            (gen.max_tokens, gen.stop, gen.sampling.seed),
            (Some(5), vec!["\n".to_string()], Some(3))
        );
        assert_eq!(
            (
                gen.sampling.temperature,
                gen.sampling.top_k,
                gen.sampling.repetition_penalty
            ),
            (0.0, 40, 1.1)
        );
    }

    #[test]
    fn num_ctx_limits_and_refuses_long_prompts() {
        let Plan::Generate { gen, .. } = common(r#"{"options":{"num_ctx":4},"stream":false}"#)
            .plan_within(vec![1, 2], 10, 20, None)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(gen.max_tokens, Some(2));
        let err = common(r#"{"options":{"num_ctx":2}}"#)
            .plan_within(vec![1, 2], 10, 20, None)
            .unwrap_err();
        assert_eq!(
            err,
            ApiError::Engine(EngineError::PromptTooLong {
                prompt: 2,
                context: 2
            })
        );
    }

    #[test]
    fn model_is_required() {
        assert!(common("{}").model().is_err());
    }
}
