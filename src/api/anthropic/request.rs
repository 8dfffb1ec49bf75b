//! Anthropic Messages request bodies and their translation into an engine request: `system` (a string or text
//! blocks) first, then alternating user/assistant messages through the chat template. `max_tokens` is required,
//! as Anthropic requires it.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::error::ApiError;
use crate::api::params::{self, Limits, SamplingFields};
use crate::api::structured;
use crate::api::tools::parse::Reading;
use crate::api::tools::{self, Choice, Tool, ToolSpec};
use crate::engine::{GenRequest, SamplingParams, Shared};
use crate::tokenizer::ChatMessage;

const LIMITS: Limits = Limits {
    max_temperature: 1.0,
    repetition_penalty: "repetition_penalty",
};

/// `POST /v1/messages` (and `/v1/messages/count_tokens`, which ignores the generation fields).
#[derive(Debug, Deserialize)]
pub struct MessagesRequest {
    pub model: Option<String>,
    pub messages: Vec<Message>,
    pub system: Option<Content>,
    pub max_tokens: Option<i64>,
    pub stop_sequences: Option<Vec<String>>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    /// rill's extension (Anthropic has none): the same seed gives the same answer.
    pub seed: Option<serde_json::Number>,
    pub stream: Option<bool>,
    /// Client tools: `{"name", "description", "input_schema"}`.
    pub tools: Option<Vec<Value>>,
    /// `{"type": "auto" | "any" | "tool" | "none", "name"?, "disable_parallel_tool_use"?}`.
    pub tool_choice: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Content,
}

/// A string, or a list of content blocks: `text`, an assistant's `tool_use`, a user's `tool_result`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Blocks(Vec<Block>),
}

#[derive(Debug, Deserialize)]
pub struct Block {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    /// `tool_use`: the call's id, tool name and input.
    pub id: Option<String>,
    pub name: Option<String>,
    pub input: Option<Value>,
    /// `tool_result`: the call answered, and its content (a string or text blocks).
    pub tool_use_id: Option<String>,
    pub content: Option<Value>,
}

impl Content {
    /// The text of plain content (system prompts, and messages without tool blocks).
    fn text(self) -> Result<String, ApiError> {
        let mut turns = self.turns("user")?;
        match turns.len() {
            0 => Ok(String::new()),
            1 if turns[0].tool_calls.is_none() && turns[0].role != "tool" => {
                Ok(turns.remove(0).content)
            }
            _ => Err(ApiError::bad_request("`system` may hold only text blocks")),
        }
    }

    /// The template messages one Anthropic message becomes: its `tool_result` blocks as `tool` messages (they
    /// come first, as Anthropic requires), then its text, with an assistant's `tool_use` blocks as its calls.
    fn turns(self, role: &str) -> Result<Vec<ChatMessage>, ApiError> {
        let blocks = match self {
            Self::Text(t) => return Ok(vec![ChatMessage::new(role, &t)]),
            Self::Blocks(b) => b,
        };
        let (mut out, mut text, mut calls) = (Vec::new(), String::new(), Vec::new());
        for b in blocks {
            match b.kind.as_str() {
                "text" => text.push_str(b.text.as_deref().unwrap_or_default()),
                "tool_use" if role == "assistant" => calls.push(json!({
                    "id": b.id, "type": "function",
                    "function": { "name": b.name, "arguments": b.input.unwrap_or_else(|| json!({})) },
                })),
                "tool_result" if role == "user" => {
                    let mut m = ChatMessage::new("tool", &result_text(b.content)?);
                    m.tool_call_id = b.tool_use_id;
                    out.push(m);
                }
                kind => {
                    return Err(ApiError::bad_request(format!(
                        "content block `{kind}` is not supported in a {role} message"
                    )))
                }
            }
        }
        if !text.is_empty() || !calls.is_empty() || out.is_empty() {
            let mut m = ChatMessage::new(role, &text);
            m.tool_calls = (!calls.is_empty()).then_some(calls);
            out.push(m);
        }
        Ok(out)
    }
}

/// A `tool_result`'s content: a string, or text blocks joined.
fn result_text(content: Option<Value>) -> Result<String, ApiError> {
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .map(|b| match (b["type"].as_str(), b["text"].as_str()) {
                (Some("text"), Some(t)) => Ok(t),
                _ => Err(ApiError::bad_request(
                    "a `tool_result` may hold only text blocks",
                )),
            })
            .collect(),
        Some(other) => Err(ApiError::bad_request(format!(
            "`tool_result` content must be a string or text blocks, got {other}"
        ))),
    }
}

/// Anthropic's `tools` and `tool_choice` (absent: `auto` when there are tools).
fn tool_spec(tools: Vec<Value>, choice: Option<&Value>) -> Result<ToolSpec, ApiError> {
    let tools = tools
        .iter()
        .map(|t| {
            if t.get("type").is_some_and(|k| k != "custom") {
                return Err(ApiError::bad_request(format!(
                    "tool type {} is not supported; only client tools with an `input_schema`",
                    t["type"]
                )));
            }
            let name = t["name"]
                .as_str()
                .ok_or_else(|| ApiError::bad_request("every tool needs a `name`"))?;
            let schema = t.get("input_schema").cloned().ok_or_else(|| {
                ApiError::bad_request(format!("tool `{name}` needs an `input_schema`"))
            })?;
            Tool::new(
                name,
                t["description"].as_str().map(str::to_string),
                Some(schema),
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    let parallel = choice
        .and_then(|c| c.get("disable_parallel_tool_use"))
        .and_then(Value::as_bool)
        != Some(true);
    let kind = choice.and_then(|c| c.get("type")).and_then(Value::as_str);
    let choice = match (kind, choice) {
        (None, None) | (None, Some(Value::Null)) if tools.is_empty() => Choice::None,
        (None, None) | (None, Some(Value::Null)) | (Some("auto"), _) => Choice::Auto,
        (Some("any"), _) => Choice::Required,
        (Some("none"), _) => Choice::None,
        (Some("tool"), Some(c)) => Choice::Named(
            c["name"]
                .as_str()
                .ok_or_else(|| {
                    ApiError::bad_request("`tool_choice` of type `tool` needs a `name`")
                })?
                .to_string(),
        ),
        _ => {
            return Err(ApiError::bad_request(
                "`tool_choice` must have a type of auto, any, tool or none",
            ))
        }
    };
    ToolSpec::new(tools, choice, parallel)
}

/// The text of a final assistant message, which the answer continues: text blocks only, and, as Anthropic's
/// API has it, not ending in whitespace (a tokenizer would end the prefill on a token that the answer's first
/// one rarely follows).
fn prefill_text(content: Content) -> Result<String, ApiError> {
    let mut turns = content.turns("assistant")?;
    let text = match turns.len() {
        1 if turns[0].tool_calls.is_none() => turns.remove(0).content,
        _ => {
            return Err(ApiError::bad_request(
                "a final assistant message (prefill) may hold only text",
            ))
        }
    };
    if text.ends_with(char::is_whitespace) {
        return Err(ApiError::bad_request(
            "final assistant content cannot end with trailing whitespace",
        ));
    }
    Ok(text)
}

/// An engine request and how to answer it.
#[derive(Debug)]
pub struct Prepared {
    pub gen: GenRequest,
    pub stream: bool,
    /// The answer may hold tool calls, written in this format: read them out of the text.
    pub tools: Option<Reading>,
}

impl MessagesRequest {
    /// The tools and how they may be used.
    fn tool_spec(&mut self) -> Result<ToolSpec, ApiError> {
        tool_spec(
            self.tools.take().unwrap_or_default(),
            self.tool_choice.as_ref(),
        )
    }

    /// The prompt ids: system, then the conversation, ending with the assistant's turn.
    pub fn prompt(mut self, shared: &Shared) -> Result<Vec<u32>, ApiError> {
        let tools = self.tool_spec()?;
        self.prompt_with(shared, &tools)
    }

    /// Whether the conversation ends with an assistant message: the start of the answer, which the model
    /// continues (a prefill).
    fn has_prefill(&self) -> bool {
        self.messages.last().is_some_and(|m| m.role == "assistant")
    }

    fn prompt_with(mut self, shared: &Shared, tools: &ToolSpec) -> Result<Vec<u32>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::bad_request(
                "`messages` must hold at least one message",
            ));
        }
        let prefill = if self.has_prefill() {
            // A forced call's grammar holds the whole answer from its start, which a prefill has already begun.
            if matches!(tools.choice, Choice::Required | Choice::Named(_)) {
                return Err(ApiError::bad_request(
                    "a final assistant message (prefill) cannot be combined with a `tool_choice` that forces a tool",
                ));
            }
            self.messages
                .pop()
                .map(|m| prefill_text(m.content))
                .transpose()?
        } else {
            None
        };
        let mut msgs = Vec::with_capacity(self.messages.len() + 1);
        if let Some(system) = self.system {
            let s = system.text()?;
            if !s.is_empty() {
                msgs.push(ChatMessage::new("system", &s));
            }
        }
        for m in self.messages {
            if !matches!(m.role.as_str(), "user" | "assistant") {
                return Err(ApiError::bad_request(format!(
                    "message role `{}` must be user or assistant; put system text in `system`",
                    m.role
                )));
            }
            msgs.extend(m.content.turns(&m.role)?);
        }
        let mut text = tools::prompt::render(shared, msgs, Some(tools))?;
        // The answer so far goes after the assistant's turn has opened, and the model goes on from it.
        text.push_str(prefill.as_deref().unwrap_or_default());
        Ok(shared.encode_prompt(&text)?)
    }

    pub fn prepare(mut self, shared: &Shared) -> Result<Prepared, ApiError> {
        let max_tokens = params::positive("max_tokens", self.max_tokens)?
            .ok_or_else(|| ApiError::bad_request("`max_tokens` is required"))?;
        let fields = SamplingFields {
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: params::seed(self.seed.as_ref())?,
            ..SamplingFields::default()
        };
        let sampling = fields.build(SamplingParams::default(), LIMITS)?;
        let stop = self
            .stop_sequences
            .take()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        let stream = self.stream.unwrap_or(false);
        let tools = self.tool_spec()?;
        let format = tools::format_of(shared);
        let constraint = tools
            .grammar(format, None)?
            .map(|g| structured::compile(shared, &g))
            .transpose()?;
        let calls = tools.calls(format);
        let prompt = self.prompt_with(shared, &tools)?;
        Ok(Prepared {
            gen: GenRequest {
                constraint,
                prompt,
                sampling,
                max_tokens: Some(max_tokens),
                stop,
                ignore_eos: false,
                logprobs: None,
                prompt_logprobs: None,
            },
            stream,
            tools: calls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_forms() {
        let c: Content =
            serde_json::from_str(r#"[{"type":"text","text":"a"},{"type":"text","text":"b"}]"#)
                .unwrap();
        assert_eq!(c.text().unwrap(), "ab");
        let c: Content = serde_json::from_str(r#"[{"type":"image","source":{}}]"#).unwrap();
        assert!(c.text().unwrap_err().to_string().contains("image"));
        let c: Content = serde_json::from_str(
            r#"[{"type":"tool_result","tool_use_id":"t1","content":[{"type":"text","text":"22C"}]},
                {"type":"text","text":"thanks"}]"#,
        )
        .unwrap();
        let turns = c.turns("user").unwrap();
        assert_eq!(turns.len(), 2);
        assert_eq!(
            (turns[0].role.as_str(), turns[0].content.as_str()),
            ("tool", "22C")
        );
        assert_eq!(turns[0].tool_call_id.as_deref(), Some("t1"));
        assert_eq!(turns[1], ChatMessage::new("user", "thanks"));
        let c: Content =
            serde_json::from_str(r#"[{"type":"tool_use","id":"t1","name":"add","input":{"a":1}}]"#)
                .unwrap();
        let turns = c.turns("assistant").unwrap();
        assert_eq!(
            turns[0].tool_calls.as_ref().unwrap()[0]["function"]["arguments"]["a"],
            1
        );
    }

    #[test]
    fn tool_choices() {
        let tools = vec![json!({"name": "add", "input_schema": {"type": "object"}})];
        let c = |v: Value| tool_spec(tools.clone(), Some(&v)).map(|s| (s.choice, s.parallel));
        assert_eq!(tool_spec(tools.clone(), None).unwrap().choice, Choice::Auto);
        assert_eq!(c(json!({"type": "any"})).unwrap(), (Choice::Required, true));
        assert_eq!(
            c(json!({"type": "tool", "name": "add", "disable_parallel_tool_use": true})).unwrap(),
            (Choice::Named("add".into()), false)
        );
        assert_eq!(c(json!({"type": "none"})).unwrap().0, Choice::None);
        assert!(c(json!({"type": "tool", "name": "nope"})).is_err());
        assert!(c(json!({"type": "sometimes"})).is_err());
        assert!(tool_spec(
            vec![json!({"type": "web_search_20250305", "name": "w"})],
            None
        )
        .is_err());
    }
}
