//! How tools and earlier tool calls reach the model. A chat template that reads `tools` gets them (and
//! assistant `tool_calls` and `tool` messages) as HuggingFace passes them. A template that does not (SmolLM2's,
//! plain ChatML, the built-in fallback) gets rill's generic rendering instead:
//! - the tools are described at the top of the system message, with the `<tool_call>` format to answer in;
//! - an assistant's earlier calls become `<tool_call>` blocks in its text, exactly as the grammar writes them;
//! - a tool's result becomes a user message holding a `<tool_response>` block.

use serde_json::Value;

use super::{parse, Choice, ToolSpec};
use crate::api::error::ApiError;
use crate::engine::Shared;
use crate::tokenizer::ChatMessage;

/// The prompt text for `messages`, with `tools` offered as they may be used.
pub fn render(
    shared: &Shared,
    messages: Vec<ChatMessage>,
    tools: Option<&ToolSpec>,
) -> Result<String, ApiError> {
    let offered = tools.filter(|t| !t.tools.is_empty() && t.choice != Choice::None);
    let has_tool_turns = messages
        .iter()
        .any(|m| m.tool_calls.is_some() || m.role == "tool");
    if shared.chat.takes_tools {
        let list: Option<Vec<Value>> =
            offered.map(|t| t.tools.iter().map(|t| t.openai_json()).collect());
        return Ok(shared
            .chat
            .render_with_tools(&messages, list.as_deref(), true)?);
    }
    if offered.is_none() && !has_tool_turns {
        return Ok(shared.chat.render(&messages, true)?);
    }
    let mut messages: Vec<ChatMessage> = messages.into_iter().map(generic_turn).collect();
    if let Some(spec) = offered {
        let intro = describe(spec);
        match messages.first_mut().filter(|m| m.role == "system") {
            Some(system) => system.content = format!("{}\n\n{intro}", system.content),
            None => messages.insert(0, ChatMessage::new("system", &intro)),
        }
    }
    Ok(shared.chat.render(&messages, true)?)
}

/// The tools and the answer format, as the start of a system message.
fn describe(spec: &ToolSpec) -> String {
    let mut s = String::from("You can call these tools, described as JSON schemas:\n<tools>\n");
    for t in &spec.tools {
        s.push_str(&t.openai_json().to_string());
        s.push('\n');
    }
    s.push_str("</tools>\nTo call a tool, answer with one block per call:\n");
    s.push_str(&call_block("<tool name>", "{<arguments>}"));
    s
}

/// A call as rill's generic rendering writes it (the [`parse::HERMES`] format).
pub fn call_block(name: &str, arguments: &str) -> String {
    parse::HERMES.call(name, arguments)
}

/// One message in rill's generic rendering: calls into the assistant's text, results into user messages.
fn generic_turn(mut m: ChatMessage) -> ChatMessage {
    if let Some(calls) = m.tool_calls.take() {
        let blocks: Vec<String> = calls
            .iter()
            .map(|c| {
                let f = &c["function"];
                let args = match &f["arguments"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                call_block(f["name"].as_str().unwrap_or_default(), &args)
            })
            .collect();
        let calls = blocks.join(parse::HERMES.sep);
        m.content = if m.content.is_empty() {
            calls
        } else {
            format!("{}\n{calls}", m.content)
        };
    }
    if m.role == "tool" {
        let mut turn = ChatMessage::new(
            "user",
            &format!("<tool_response>\n{}\n</tool_response>", m.content),
        );
        turn.name = m.name;
        return turn;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn earlier_calls_and_results_become_text() {
        let mut a = ChatMessage::new("assistant", "");
        a.tool_calls = Some(vec![json!({"id": "c1", "type": "function",
            "function": {"name": "add", "arguments": {"a": 1}}})]);
        let a = generic_turn(a);
        assert_eq!(a.content, call_block("add", "{\"a\":1}"));
        assert_eq!(
            parse::parse(&a.content, parse::Reading::auto(&parse::HERMES)).calls[0].name,
            "add"
        );
        let mut t = ChatMessage::new("tool", "3");
        t.tool_call_id = Some("c1".into());
        let t = generic_turn(t);
        assert_eq!(t.role, "user");
        assert_eq!(t.content, "<tool_response>\n3\n</tool_response>");
    }
}
