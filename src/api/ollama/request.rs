//! Ollama request bodies and their translation into an engine request. `options` carries sampling and limits
//! with Ollama's names and defaults; `num_ctx` narrows the context, and a prompt that does not fit is a 400
//! naming both lengths (never a silent truncation). An empty prompt or message list is Ollama's "load" call.
//!
//! `/api/chat` takes Ollama's `tools` (OpenAI-shaped function descriptions; an empty list is none). Ollama has
//! no `tool_choice`: with tools the model decides (`auto`), may make several calls, and a call it starts is
//! held to the tools' grammar, which then takes the place of `format`. Earlier calls come back on assistant
//! messages as `tool_calls` with `arguments` as an object, and results as `tool` messages.

use crate::api::structured;
use crate::api::tools::parse::Reading;
use crate::api::tools::{self, Choice, ToolSpec};
use crate::engine::grammar::Constraint;
use serde::Deserialize;
use serde_json::{json, Number, Value};

use crate::api::error::ApiError;
use crate::api::logprobs;
use crate::api::params::{self, Limits, OneOrMany, SamplingFields};
use crate::engine::{EngineError, GenRequest, SamplingParams, Shared};
use crate::tokenizer::ChatMessage;

const LIMITS: Limits = Limits {
    max_temperature: 100.0,
    repetition_penalty: "repeat_penalty",
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
    /// Text; may be null or left out (an assistant turn that only called tools).
    pub content: Option<String>,
    pub images: Option<Vec<Value>>,
    /// An assistant's earlier calls: `[{"function": {"name", "arguments": {…}}}]`.
    pub tool_calls: Option<Vec<Value>>,
    /// On a `tool` message: the tool that answered (`name` is accepted too).
    pub tool_name: Option<String>,
    pub name: Option<String>,
    /// On a `tool` message: the call it answers, when the client sends one.
    pub tool_call_id: Option<String>,
}

/// What a request asks for.
#[derive(Debug)]
pub enum Plan {
    /// Only to load the model (empty prompt): answered at once with `done_reason: "load"`.
    Load,
    Generate {
        /// Boxed: a request is large beside `Load`'s nothing.
        gen: Box<GenRequest>,
        stream: bool,
        /// The answer may hold tool calls: read them out of the text.
        tools: Option<Reading>,
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

    /// The request's `format` compiled for the served model (a bad schema is a 400 here, before anything runs);
    /// a `tools` grammar, when given, takes its place (`format` is still checked).
    fn constraint(
        &self,
        shared: &Shared,
        tools: &ToolSpec,
    ) -> Result<Option<Constraint>, ApiError> {
        let answer = structured::ollama_format(self.format.as_ref())?;
        tools
            .grammar(tools::format_of(shared), answer.as_ref())?
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
            gen: Box::new(gen),
            stream: self.stream.unwrap_or(true),
            tools: None,
        })
    }
}

impl GenerateRequest {
    pub fn plan(self, shared: &Shared) -> Result<Plan, ApiError> {
        let constraint = self.common.constraint(shared, &ToolSpec::none())?;
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
        prompt.extend(shared.encode_prompt(&text)?);
        self.common.plan(prompt, shared, constraint)
    }
}

impl ChatRequest {
    pub fn plan(self, shared: &Shared) -> Result<Plan, ApiError> {
        let spec = tool_spec(self.tools.unwrap_or_default())?;
        let format = tools::format_of(shared);
        let constraint = self.common.constraint(shared, &spec)?;
        if self.messages.is_empty() {
            return Ok(Plan::Load);
        }
        let mut msgs = self
            .messages
            .into_iter()
            .map(chat_message)
            .collect::<Result<Vec<_>, _>>()?;
        // A final assistant message without calls is continued, as Ollama's templates leave it open: the
        // answer goes on from its text (an empty one is just the assistant's turn opening). Not under `format`
        // or `tools`, whose grammar holds a whole answer from its start: there it stays a finished turn.
        let start = match msgs.last() {
            Some(m) if m.role == "assistant" && m.tool_calls.is_none() && constraint.is_none() => {
                msgs.pop().map(|m| m.content)
            }
            _ => None,
        };
        let mut text = tools::prompt::render(shared, msgs, Some(&spec))?;
        text.push_str(start.as_deref().unwrap_or_default());
        let prompt = shared.encode_prompt(&text)?;
        let mut plan = self.common.plan(prompt, shared, constraint)?;
        if let Plan::Generate { tools, .. } = &mut plan {
            *tools = spec.calls(format);
        }
        Ok(plan)
    }
}

/// Ollama's `tools`: functions (`type` may be left out), used as the model decides, several per answer.
fn tool_spec(tools: Vec<Value>) -> Result<ToolSpec, ApiError> {
    let tools = tools
        .iter()
        .map(|t| tools::function_tool(t, true))
        .collect::<Result<Vec<_>, _>>()?;
    let choice = if tools.is_empty() {
        Choice::None
    } else {
        Choice::Auto
    };
    ToolSpec::new(tools, choice, true)
}

/// One Ollama message as a template message: an assistant's `tool_calls` in the OpenAI shape templates read
/// (`type: function`, `arguments` an object), a `tool` message's tool name and call id kept.
fn chat_message(m: Message) -> Result<ChatMessage, ApiError> {
    if m.images.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(ApiError::bad_request(
            "`images` are not supported: the served model reads text only",
        ));
    }
    if !matches!(m.role.as_str(), "system" | "user" | "assistant" | "tool") {
        return Err(ApiError::bad_request(format!(
            "message role `{}` is not supported; use system, user, assistant or tool",
            m.role
        )));
    }
    let mut msg = ChatMessage::new(&m.role, m.content.as_deref().unwrap_or_default());
    match m.role.as_str() {
        "assistant" => {
            msg.tool_calls = m
                .tool_calls
                .filter(|c| !c.is_empty())
                .map(|calls| {
                    calls
                        .iter()
                        .map(call_for_template)
                        .collect::<Result<Vec<_>, _>>()
                })
                .transpose()?;
        }
        "tool" => {
            msg.name = m.tool_name.or(m.name).filter(|n| !n.is_empty());
            msg.tool_call_id = m.tool_call_id.filter(|id| !id.is_empty());
        }
        _ => {}
    }
    Ok(msg)
}

/// An Ollama call (`{"function": {"name", "arguments": {…}, "index"?}}`) in the OpenAI shape templates read;
/// `arguments` sent as a JSON string are parsed.
fn call_for_template(call: &Value) -> Result<Value, ApiError> {
    let f = &call["function"];
    let name = f["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("every entry of `tool_calls` needs `function.name`")
        })?;
    let arguments = match &f["arguments"] {
        Value::Null => json!({}),
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| json!(s)),
        other => other.clone(),
    };
    let mut out =
        json!({ "type": "function", "function": { "name": name, "arguments": arguments } });
    if let Some(id) = call.get("id").and_then(Value::as_str) {
        out["id"] = json!(id);
    }
    Ok(out)
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
        let Plan::Generate { gen, stream, .. } = p else {
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
    fn messages_map_with_tool_calls_and_results() {
        let m = |json: &str| chat_message(serde_json::from_str(json).unwrap());
        let a = m(r#"{"role":"assistant","content":"","tool_calls":[
            {"function":{"index":0,"name":"get_weather","arguments":{"city":"Paris"}}},
            {"function":{"name":"add","arguments":"{\"a\": 1}"}}]}"#)
        .unwrap();
        assert_eq!(
            a.tool_calls,
            Some(vec![
                json!({"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}),
                json!({"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}),
            ])
        );
        let t = m(r#"{"role":"tool","content":"22 degrees","tool_name":"get_weather"}"#).unwrap();
        assert_eq!(
            (t.role.as_str(), t.content.as_str(), t.name.as_deref()),
            ("tool", "22 degrees", Some("get_weather"))
        );
        assert_eq!(
            m(r#"{"role":"tool","content":"1","name":"add"}"#)
                .unwrap()
                .name
                .as_deref(),
            Some("add")
        );
        // Content may be null (an assistant turn that only called), and empty call lists are no calls.
        let a = m(r#"{"role":"assistant","content":null,"tool_calls":[]}"#).unwrap();
        assert_eq!(a, ChatMessage::new("assistant", ""));
        assert!(m(r#"{"role":"assistant","tool_calls":[{"function":{}}]}"#).is_err());
        assert!(m(r#"{"role":"function","content":"x"}"#).is_err());
        assert!(m(r#"{"role":"user","content":"x","images":["aGk="]}"#).is_err());
    }

    #[test]
    fn tools_are_offered_as_the_model_decides() {
        let none = tool_spec(vec![]).unwrap();
        assert!(!none.may_call());
        assert_eq!(
            none.grammar(&crate::api::tools::parse::HERMES, None)
                .unwrap(),
            None
        );
        let spec = tool_spec(vec![json!({"type": "function", "function": {
            "name": "get_weather", "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})])
        .unwrap();
        assert_eq!((spec.choice.clone(), spec.parallel), (Choice::Auto, true));
        assert!(
            spec.grammar(&crate::api::tools::parse::HERMES, None)
                .unwrap()
                .is_some(),
            "a started call is held to the grammar"
        );
        assert!(tool_spec(vec![json!({"function": {"name": "f"}})])
            .unwrap()
            .may_call());
        assert!(tool_spec(vec![
            json!({"type": "retrieval", "function": {"name": "f"}})
        ])
        .is_err());
        assert!(tool_spec(vec![json!({"type": "function", "function": {}})]).is_err());
        let req: ChatRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"tools":[]}"#,
        )
        .unwrap();
        assert_eq!(
            req.tools,
            Some(vec![]),
            "the ollama SDK always sends a list"
        );
    }

    #[test]
    fn model_is_required() {
        assert!(common("{}").model().is_err());
    }
}
