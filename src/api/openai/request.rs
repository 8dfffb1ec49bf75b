//! OpenAI request bodies and their translation into an engine request: messages (tool calls and results
//! included) through the chat template, prompts through the tokenizer, sampling fields checked against OpenAI's
//! ranges, `response_format` and `tools` compiled into a grammar. Unsupported features (n > 1, non-text
//! content, suffix) are refused with a 400 rather than silently ignored.

use serde::Deserialize;
use serde_json::{Number, Value};

use crate::api::error::ApiError;
use crate::api::logprobs;
use crate::api::params::{self, Limits, OneOrMany, SamplingFields};
use crate::api::structured;
use crate::api::tools::parse::Reading;
use crate::api::tools::{self, Choice, ToolSpec};
use crate::engine::{GenRequest, SamplingParams, Shared};
use crate::tokenizer::ChatMessage;

const LIMITS: Limits = Limits {
    max_temperature: 2.0,
    repetition_penalty: "repetition_penalty",
};

/// `max_tokens` of `/v1/completions` when the request gives none, as OpenAI documents.
pub const COMPLETIONS_DEFAULT_MAX_TOKENS: usize = 16;

/// Fields shared by chat and text completions.
#[derive(Debug, Default, Deserialize)]
pub struct Common {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub stop: Option<OneOrMany>,
    pub seed: Option<Number>,
    pub n: Option<i64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    /// vLLM's extension: keep generating past end-of-sequence.
    pub ignore_eos: Option<bool>,
    /// Token id (as a string) → bias in [-100, 100] added to its logit before sampling.
    pub logit_bias: Option<std::collections::HashMap<String, f32>>,
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<Message>,
    pub max_completion_tokens: Option<i64>,
    /// Return each generated token's log probability.
    pub logprobs: Option<bool>,
    /// And this many most likely alternatives (0 to 20; needs `logprobs`).
    pub top_logprobs: Option<i64>,
    pub tools: Option<Vec<Value>>,
    /// `none`, `auto`, `required`, or `{"type": "function", "function": {"name": …}}`.
    pub tool_choice: Option<Value>,
    /// Whether one answer may hold several calls (default true).
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<Value>,
    #[serde(flatten)]
    pub common: Common,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Option<Content>,
    /// An assistant's earlier calls.
    pub tool_calls: Option<Vec<Value>>,
    /// On a `tool` message: the call it answers.
    pub tool_call_id: Option<String>,
    pub name: Option<String>,
}

/// Message content: a string, or a list of parts of which rill understands `text`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
pub struct Part {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Prompt,
    /// Return the prompt before the completion (with its log probabilities when `logprobs` is set).
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    pub best_of: Option<i64>,
    /// Log probabilities of each token and of this many most likely alternatives (0 to 20).
    pub logprobs: Option<Value>,
    /// vLLM's extension: name tokens `token_id:<id>` in the log probabilities instead of by their text.
    pub return_tokens_as_token_ids: Option<bool>,
    #[serde(flatten)]
    pub common: Common,
}

/// A prompt as text or token ids; a list must hold exactly one prompt.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

/// An engine request and how to answer it.
#[derive(Debug)]
pub struct Prepared {
    pub gen: GenRequest,
    pub stream: bool,
    pub include_usage: bool,
    /// Whether the answer carries log probabilities.
    pub logprobs: bool,
    /// The prompt's text, returned before the completion (`/v1/completions` with `echo`).
    pub echo: Option<String>,
    /// Name tokens by id in the log probabilities.
    pub token_ids: bool,
    /// The answer may hold tool calls, written in this format: read them out of the text.
    pub tools: Option<Reading>,
}

impl ChatRequest {
    pub fn prepare(self, shared: &Shared) -> Result<Prepared, ApiError> {
        let top = logprobs::top_count(
            "top_logprobs",
            self.top_logprobs,
            shared.config.max_logprobs,
        )?;
        let want_logprobs = self.logprobs == Some(true);
        if self.top_logprobs.is_some() && !want_logprobs {
            return Err(ApiError::bad_request(
                "`top_logprobs` needs `logprobs` set to true",
            ));
        }
        let tools = tool_spec(
            self.tools.unwrap_or_default(),
            self.tool_choice.as_ref(),
            self.parallel_tool_calls.unwrap_or(true),
        )?;
        // Calls follow the tools' grammar; an answer that is not a call follows the response format.
        let format = tools::format_of(shared);
        let answer = structured::openai_response_format(self.response_format.as_ref())?;
        let grammar = tools.grammar(format, answer.as_ref())?;
        let constraint = grammar
            .map(|g| structured::compile(shared, &g))
            .transpose()?;
        let prompt = shared.encode_prompt(&chat_prompt_text(shared, self.messages, &tools)?)?;
        let max = params::positive("max_completion_tokens", self.max_completion_tokens)?;
        let mut p = self
            .common
            .prepare(prompt, max, None, shared.info.vocab_size)?;
        if want_logprobs {
            p.gen.logprobs = Some(top);
            p.logprobs = true;
        }
        p.gen.constraint = constraint;
        p.tools = tools.calls(format);
        Ok(p)
    }
}

impl CompletionRequest {
    pub fn prepare(self, shared: &Shared) -> Result<Prepared, ApiError> {
        let top = completion_logprobs(self.logprobs.as_ref(), shared.config.max_logprobs)?;
        if self.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(ApiError::bad_request("`suffix` is not supported"));
        }
        if self.best_of.is_some_and(|b| b != 1) {
            return Err(ApiError::bad_request("`best_of` must be 1"));
        }
        let (prompt, text) = prompt_ids(self.prompt, shared)?;
        let mut p = self.common.prepare(
            prompt,
            None,
            Some(COMPLETIONS_DEFAULT_MAX_TOKENS),
            shared.info.vocab_size,
        )?;
        p.token_ids = self.return_tokens_as_token_ids == Some(true);
        let echo = self.echo == Some(true);
        if echo {
            p.echo = Some(match text {
                Some(t) => t,
                None => shared.tokenizer.decode(&p.gen.prompt, false)?,
            });
        }
        if let Some(k) = top {
            p.logprobs = true;
            p.gen.logprobs = Some(k);
            p.gen.prompt_logprobs = echo.then_some(k);
        }
        Ok(p)
    }
}

impl Common {
    fn prepare(
        self,
        prompt: Vec<u32>,
        max_override: Option<usize>,
        default_max: Option<usize>,
        vocab_size: usize,
    ) -> Result<Prepared, ApiError> {
        if let Some(n) = self.n.filter(|&n| n != 1) {
            return Err(ApiError::bad_request(format!(
                "`n` must be 1 (got {n}): one choice per request is supported"
            )));
        }
        let max_tokens = max_override
            .or(params::positive("max_tokens", self.max_tokens)?)
            .or(default_max);
        let fields = SamplingFields {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            repeat_last_n: None,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            seed: params::seed(self.seed.as_ref())?,
        };
        let mut sampling = fields.build(SamplingParams::default(), LIMITS)?;
        sampling.logit_bias = logit_bias(self.logit_bias, vocab_size)?;
        let stream = self.stream.unwrap_or(false);
        let include_usage = stream
            && self
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false);
        let gen = GenRequest {
            constraint: None,
            prompt,
            sampling,
            max_tokens,
            stop: params::stops(self.stop),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            logprobs: None,
            prompt_logprobs: None,
        };
        Ok(Prepared {
            gen,
            stream,
            include_usage,
            logprobs: false,
            echo: None,
            token_ids: false,
            tools: None,
        })
    }
}

/// `/v1/completions`' `logprobs`: absent or null for none, else an integer count of alternatives, 0 to `max`.
fn completion_logprobs(v: Option<&Value>, max: usize) -> Result<Option<usize>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.is_i64() => {
            logprobs::top_count("logprobs", n.as_i64(), max).map(Some)
        }
        Some(other) => Err(ApiError::bad_request(format!(
            "`logprobs` must be an integer between 0 and {max}, got {other}"
        ))),
    }
}

/// OpenAI's `logit_bias`: token ids below the vocabulary size, biases within [-100, 100]; sorted by id.
fn logit_bias(
    bias: Option<std::collections::HashMap<String, f32>>,
    vocab_size: usize,
) -> Result<Vec<(u32, f32)>, ApiError> {
    let mut out = Vec::new();
    for (key, value) in bias.unwrap_or_default() {
        let id = key
            .parse::<u32>()
            .ok()
            .filter(|&id| (id as usize) < vocab_size)
            .ok_or_else(|| {
                ApiError::bad_request(format!(
                    "`logit_bias` key `{key}` is not a token id of this model (0 to {})",
                    vocab_size - 1
                ))
            })?;
        if !(-100.0..=100.0).contains(&value) {
            return Err(ApiError::bad_request(format!(
                "`logit_bias` for token {id} must be between -100 and 100 (got {value})"
            )));
        }
        out.push((id, value));
    }
    out.sort_by_key(|b| b.0);
    Ok(out)
}

/// OpenAI's `tools` and `tool_choice` (absent: `auto` when there are tools).
pub fn tool_spec(
    tools: Vec<Value>,
    choice: Option<&Value>,
    parallel: bool,
) -> Result<ToolSpec, ApiError> {
    let tools = tools
        .iter()
        .map(|t| tools::function_tool(t, false))
        .collect::<Result<Vec<_>, _>>()?;
    let choice = match choice {
        None | Some(Value::Null) if tools.is_empty() => Choice::None,
        None | Some(Value::Null) => Choice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => Choice::None,
            "auto" => Choice::Auto,
            "required" => Choice::Required,
            other => {
                return Err(ApiError::bad_request(format!(
                    "`tool_choice` `{other}` is not one of none, auto, required"
                )))
            }
        },
        Some(v) => match v["function"]["name"].as_str() {
            Some(name) if v["type"] == "function" => Choice::Named(name.to_string()),
            _ => {
                return Err(ApiError::bad_request(format!(
                    "`tool_choice` must be none, auto, required or {{\"type\": \"function\", \"function\": {{\"name\": …}}}}, got {v}"
                )))
            }
        },
    };
    ToolSpec::new(tools, choice, parallel)
}

/// The prompt text of chat `messages` with `tools` offered as they may be used: what a chat completion
/// generates from, and what `/tokenize` counts for the same messages and tools.
pub fn chat_prompt_text(
    shared: &Shared,
    messages: Vec<Message>,
    tools: &ToolSpec,
) -> Result<String, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::bad_request(
            "`messages` must hold at least one message",
        ));
    }
    let messages = messages
        .into_iter()
        .map(chat_message)
        .collect::<Result<Vec<_>, _>>()?;
    tools::prompt::render(shared, messages, Some(tools))
}

/// One OpenAI message as a template message: `developer` counts as `system`; only text content is accepted;
/// an assistant's `tool_calls` (arguments as objects, as templates expect) and a `tool` message's call id
/// are kept.
fn chat_message(m: Message) -> Result<ChatMessage, ApiError> {
    let role = match m.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        other => {
            return Err(ApiError::bad_request(format!(
                "message role `{other}` is not supported; use system, developer, user, assistant or tool"
            )))
        }
    };
    let content = match m.content {
        // Only an assistant message may go without (its tool calls say what it did), as OpenAI's API has it.
        None if role == "assistant" => String::new(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a {} message needs `content`",
                m.role
            )))
        }
        Some(Content::Text(t)) => t,
        Some(Content::Parts(parts)) => {
            let mut text = String::new();
            for p in parts {
                match (p.kind.as_str(), p.text) {
                    ("text", Some(t)) => text.push_str(&t),
                    (kind, _) => {
                        return Err(ApiError::bad_request(format!(
                            "content part `{kind}` is not supported; only text"
                        )))
                    }
                }
            }
            text
        }
    };
    let mut msg = ChatMessage::new(role, &content);
    if role == "assistant" {
        msg.tool_calls = m
            .tool_calls
            .filter(|c| !c.is_empty())
            .map(|calls| calls.into_iter().map(call_for_template).collect());
    }
    if role == "tool" {
        msg.tool_call_id = m.tool_call_id;
        msg.name = m.name;
    }
    Ok(msg)
}

/// An OpenAI tool call with its `arguments` string parsed into an object, as chat templates read them.
fn call_for_template(mut call: Value) -> Value {
    if let Some(args) = call["function"]["arguments"].as_str() {
        if let Ok(v) = serde_json::from_str::<Value>(args) {
            call["function"]["arguments"] = v;
        }
    }
    call
}

/// The prompt's ids, and its text when it came as text. An empty text starts from the model's BOS token, as
/// OpenAI's completions do (a model without one has nothing to start from: the engine refuses the empty prompt).
fn prompt_ids(p: Prompt, shared: &Shared) -> Result<(Vec<u32>, Option<String>), ApiError> {
    let encode = |t: &str| -> Result<Vec<u32>, ApiError> {
        let ids = shared.encode_prompt(t)?;
        Ok(match shared.tokenizer.bos_id() {
            Some(bos) if ids.is_empty() => vec![bos],
            _ => ids,
        })
    };
    let one = |n: usize| {
        if n == 1 {
            Ok(())
        } else {
            Err(ApiError::bad_request(format!(
                "`prompt` must hold exactly one prompt, got {n}"
            )))
        }
    };
    let (ids, text) = match p {
        Prompt::Text(t) => (encode(&t)?, Some(t)),
        Prompt::Texts(mut v) => {
            one(v.len())?;
            let t = v.remove(0);
            (encode(&t)?, Some(t))
        }
        Prompt::Ids(ids) => (ids, None),
        Prompt::IdLists(mut v) => {
            one(v.len())?;
            (v.remove(0), None)
        }
    };
    if let Some(bad) = ids
        .iter()
        .find(|&&id| id as usize >= shared.info.vocab_size)
    {
        return Err(ApiError::bad_request(format!(
            "token id {bad} is outside the vocabulary of {}",
            shared.info.vocab_size
        )));
    }
    Ok((ids, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_parts_join_and_roles_map() {
        let m: Message = serde_json::from_str(
            r#"{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}"#,
        )
        .unwrap();
        assert_eq!(chat_message(m).unwrap(), ChatMessage::new("system", "ab"));
        let img: Message = serde_json::from_str(
            r#"{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}"#,
        )
        .unwrap();
        assert!(chat_message(img)
            .unwrap_err()
            .to_string()
            .contains("image_url"));
        let tool: Message =
            serde_json::from_str(r#"{"role":"tool","content":"x","tool_call_id":"c1"}"#).unwrap();
        assert_eq!(
            chat_message(tool).unwrap().tool_call_id.as_deref(),
            Some("c1")
        );
        let bare: Message = serde_json::from_str(r#"{"role":"user"}"#).unwrap();
        let e = chat_message(bare).unwrap_err();
        assert!(
            e.to_string().contains("a user message needs `content`"),
            "{e}"
        );
        let calls: Message = serde_json::from_str(
            r#"{"role":"assistant","tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]}"#,
        )
        .unwrap();
        assert_eq!(chat_message(calls).unwrap().content, "");
        let other: Message = serde_json::from_str(r#"{"role":"function","content":"x"}"#).unwrap();
        assert!(chat_message(other).is_err());
    }

    #[test]
    fn common_fields() {
        let c: Common = serde_json::from_str(r#"{"n":2}"#).unwrap();
        assert!(c
            .prepare(vec![1], None, None, 100)
            .unwrap_err()
            .to_string()
            .contains("`n`"));
        let c: Common = serde_json::from_str(
            r#"{"stream_options":{"include_usage":true},"max_tokens":5,"stop":"x","seed":7}"#,
        )
        .unwrap();
        let p = c.prepare(vec![1], None, None, 100).unwrap();
        assert!(!p.include_usage, "usage is only for streams");
        assert_eq!(
            (p.gen.max_tokens, p.gen.stop, p.gen.sampling.seed),
            (Some(5), vec!["x".to_string()], Some(7))
        );
        let c: Common = serde_json::from_str(r#"{"stream":true,"stream_options":{}}"#).unwrap();
        assert!(
            !c.prepare(vec![1], None, Some(16), 100)
                .unwrap()
                .include_usage
        );
    }

    #[test]
    fn prompt_forms_parse() {
        let r: CompletionRequest = serde_json::from_str(r#"{"prompt":[1,2,3]}"#).unwrap();
        assert!(matches!(r.prompt, Prompt::Ids(ref v) if v == &[1, 2, 3]));
        let r: CompletionRequest = serde_json::from_str(r#"{"prompt":["a","b"]}"#).unwrap();
        assert!(matches!(r.prompt, Prompt::Texts(ref v) if v.len() == 2));
    }
}
