//! Anthropic Messages request bodies and their translation into an engine request: `system` (a string or text
//! blocks) first, then alternating user/assistant messages through the chat template. `max_tokens` is required,
//! as Anthropic requires it.

use serde::Deserialize;
use serde_json::Value;

use crate::api::error::ApiError;
use crate::api::params::{self, Limits, SamplingFields};
use crate::engine::{GenRequest, SamplingParams, Shared};
use crate::tokenizer::ChatMessage;

const LIMITS: Limits = Limits {
    max_temperature: 1.0,
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
    pub tools: Option<Vec<Value>>,
}

#[derive(Debug, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: Content,
}

/// A string, or a list of content blocks of which rill understands `text`.
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
}

impl Content {
    fn text(self) -> Result<String, ApiError> {
        match self {
            Self::Text(t) => Ok(t),
            Self::Blocks(blocks) => {
                blocks.into_iter().try_fold(String::new(), |mut acc, b| {
                    match (b.kind.as_str(), b.text) {
                        ("text", Some(t)) => {
                            acc.push_str(&t);
                            Ok(acc)
                        }
                        (kind, _) => Err(ApiError::bad_request(format!(
                            "content block `{kind}` is not supported; only text"
                        ))),
                    }
                })
            }
        }
    }
}

/// An engine request and how to answer it.
#[derive(Debug)]
pub struct Prepared {
    pub gen: GenRequest,
    pub stream: bool,
}

impl MessagesRequest {
    /// The prompt ids: system, then the conversation, ending with the assistant's turn.
    pub fn prompt(self, shared: &Shared) -> Result<Vec<u32>, ApiError> {
        if self.tools.as_ref().is_some_and(|t| !t.is_empty()) {
            return Err(ApiError::bad_request("`tools` are not supported yet"));
        }
        if self.messages.is_empty() {
            return Err(ApiError::bad_request(
                "`messages` must hold at least one message",
            ));
        }
        if self.messages.last().is_some_and(|m| m.role == "assistant") {
            return Err(ApiError::bad_request(
                "a final assistant message (prefill) is not supported yet",
            ));
        }
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
            msgs.push(ChatMessage::new(&m.role, &m.content.text()?));
        }
        Ok(shared.tokenizer.encode(&shared.chat.render(&msgs, true)?)?)
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
        let prompt = self.prompt(shared)?;
        Ok(Prepared {
            gen: GenRequest {
                constraint: None,
                prompt,
                sampling,
                max_tokens: Some(max_tokens),
                stop,
                ignore_eos: false,
                logprobs: None,
                prompt_logprobs: None,
            },
            stream,
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
    }
}
