//! Tool calling, shared by the three dialects: the tools a request offers and how the model may use them
//! ([`ToolSpec`]), the grammar that makes every call well-formed ([`ToolSpec::grammar`]), how tools and earlier
//! calls reach the model's prompt ([`prompt`]), and how calls are read back out of its text ([`parse`]).
//!
//! Calls are written in the served model's own [`parse::Format`] (Hermes / Qwen `<tool_call>` blocks, Llama 3.x
//! JSON, Mistral's list), chosen from its chat template; a template that knows about tools gets them as `tools`,
//! and for one that does not rill describes them in the system prompt (see [`prompt`]), in the Hermes format.
//! With a forced choice (`required`, a named tool) the grammar applies from the first token; with `auto` the
//! model may answer in text, and once it opens a call the grammar holds it to a valid one.

pub mod parse;
pub mod prompt;

use serde_json::{json, Value};

use super::error::ApiError;
use super::structured;
use crate::engine::grammar::Grammar;
use crate::engine::Shared;
use parse::{Format, Reading};

/// Most calls one answer may hold when parallel calls are allowed.
pub const MAX_PARALLEL_CALLS: usize = 8;

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: Option<String>,
    /// JSON schema of the arguments (an object schema).
    pub parameters: Value,
}

/// How the model may use the tools.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Never: plain text.
    None,
    /// Text or calls, as the model decides.
    Auto,
    /// At least one call, of any tool.
    Required,
    /// A call of this tool.
    Named(String),
}

/// The tools of a request and how they may be used.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub tools: Vec<Tool>,
    pub choice: Choice,
    /// More than one call per answer.
    pub parallel: bool,
}

impl Tool {
    /// A tool after checking its name and parameters (no parameters means no arguments: `{}`).
    pub fn new(
        name: &str,
        description: Option<String>,
        parameters: Option<Value>,
    ) -> Result<Self, ApiError> {
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
        if !valid {
            return Err(ApiError::bad_request(format!(
                "tool name `{name}` must be 1 to 64 letters, digits, `_`, `-` or `.`"
            )));
        }
        let parameters = match parameters {
            None | Some(Value::Null) => json!({ "type": "object", "properties": {} }),
            Some(p @ Value::Object(_)) if p.get("type").is_some_and(|t| t != "object") => {
                return Err(ApiError::bad_request(format!(
                    "the parameters of tool `{name}` must be an object schema (`\"type\": \"object\"`), got {p}"
                )))
            }
            Some(p @ Value::Object(_)) => p,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "the parameters of tool `{name}` must be a JSON schema object, got {other}"
                )))
            }
        };
        Ok(Self {
            name: name.to_string(),
            description,
            parameters,
        })
    }

    /// The tool as OpenAI describes it (and as chat templates expect `tools`).
    pub fn openai_json(&self) -> Value {
        let mut f = json!({ "name": self.name, "parameters": self.parameters });
        if let Some(d) = &self.description {
            f["description"] = json!(d);
        }
        json!({ "type": "function", "function": f })
    }
}

/// The call format of the served model's chat template (see [`Format::for_template`]).
pub fn format_of(shared: &Shared) -> &'static Format {
    Format::for_template(Some(&shared.chat.source()), shared.chat.takes_tools)
}

/// A tool in OpenAI's shape (`{"type": "function", "function": {"name", "description", "parameters"}}`, as
/// OpenAI and Ollama send them); Ollama may leave `type` out.
pub fn function_tool(t: &Value, type_optional: bool) -> Result<Tool, ApiError> {
    let untyped = type_optional && matches!(t.get("type"), None | Some(Value::Null));
    if !untyped && t["type"] != "function" {
        return Err(ApiError::bad_request(format!(
            "tool type {} is not supported; only `function`",
            t["type"]
        )));
    }
    let f = &t["function"];
    let name = f["name"]
        .as_str()
        .ok_or_else(|| ApiError::bad_request("every tool needs `function.name`"))?;
    let description = f["description"].as_str().map(str::to_string);
    Tool::new(name, description, f.get("parameters").cloned())
}

impl ToolSpec {
    /// Checks that names are unique and that a named choice names a tool.
    pub fn new(tools: Vec<Tool>, choice: Choice, parallel: bool) -> Result<Self, ApiError> {
        for (i, t) in tools.iter().enumerate() {
            if tools[..i].iter().any(|u| u.name == t.name) {
                return Err(ApiError::bad_request(format!(
                    "tool `{}` is defined twice",
                    t.name
                )));
            }
        }
        if let Choice::Named(n) = &choice {
            if !tools.iter().any(|t| &t.name == n) {
                return Err(ApiError::bad_request(format!(
                    "`tool_choice` names `{n}`, which is not among the tools"
                )));
            }
        }
        if tools.is_empty() && matches!(choice, Choice::Required | Choice::Named(_)) {
            return Err(ApiError::bad_request(
                "`tool_choice` asks for a call, but no tools were given",
            ));
        }
        Ok(Self {
            tools,
            choice,
            parallel,
        })
    }

    /// No tools at all.
    pub fn none() -> Self {
        Self {
            tools: Vec::new(),
            choice: Choice::None,
            parallel: false,
        }
    }

    /// Whether the answer may hold calls (and so must be read for them).
    pub fn may_call(&self) -> bool {
        !self.tools.is_empty() && self.choice != Choice::None
    }

    /// How to read the answer's calls (written in `format`), when it may hold any.
    pub fn calls(&self, format: &'static Format) -> Option<Reading> {
        self.may_call().then_some(Reading {
            format,
            forced: matches!(self.choice, Choice::Required | Choice::Named(_)),
        })
    }

    /// The grammar for the answer, calls written in `format`, or `None` when the model answers freely (no
    /// tools, or `none`). With `auto`, the answer is text or calls; when the request also asked for a response
    /// format (`answer`, a JSON schema), it is an answer in that schema or calls.
    pub fn grammar(
        &self,
        format: &'static Format,
        answer: Option<&Grammar>,
    ) -> Result<Option<Grammar>, ApiError> {
        if !self.may_call() {
            return Ok(answer.cloned());
        }
        let offered: Vec<&Tool> = match &self.choice {
            Choice::Named(n) => self.tools.iter().filter(|t| &t.name == n).collect(),
            _ => self.tools.iter().collect(),
        };
        let lit = |s: &str| format!("\"{}\"", lark_escape(s));
        // A named tool is called once, as clients that name one expect.
        let several = self.parallel && format.parallel && !matches!(self.choice, Choice::Named(_));
        let mut calls = if several {
            format!(
                "call ({} call){{0,{}}}",
                lit(format.sep),
                MAX_PARALLEL_CALLS - 1
            )
        } else {
            "call".to_string()
        };
        if !format.prefix.is_empty() {
            calls = format!("{} {calls}", lit(format.prefix));
        }
        if !format.suffix.is_empty() {
            calls = format!("{calls} {}", lit(format.suffix));
        }
        let mut lark = String::new();
        let mut free_text = false;
        match (&self.choice, answer) {
            (Choice::Auto, Some(Grammar::JsonSchema(schema))) => {
                lark.push_str(&format!(
                    "start: answer | {calls}\nanswer: %json {schema}\n"
                ));
            }
            (Choice::Auto, _) if format.after_text => {
                // Text that never opens a call, then perhaps calls.
                free_text = true;
                lark.push_str(&format!("start: TEXT | TEXT? {calls}\n"));
                lark.push_str(&format!(
                    "TEXT: /(.|\\n)+/ & ~/(.|\\n)*{}(.|\\n)*/\n",
                    regex_escape(format.trigger)
                ));
            }
            (Choice::Auto, _) => {
                // Text that does not open with a call, or calls.
                free_text = true;
                lark.push_str(&format!("start: TEXT | {calls}\n"));
                lark.push_str(&format!(
                    "TEXT: /(.|\\n)*/ & ~/[ \\t\\r\\n]*{}(.|\\n)*/\n",
                    regex_escape(format.trigger)
                ));
            }
            _ => lark.push_str(&format!("start: {calls}\n")),
        }
        let bodies: Vec<String> = (0..offered.len()).map(|i| format!("fn_{i}")).collect();
        lark.push_str(&format!("call: {}\n", bodies.join(" | ")));
        for (i, t) in offered.iter().enumerate() {
            let Grammar::JsonSchema(schema) = structured::json_grammar(&t.parameters)? else {
                unreachable!("json_grammar makes a schema grammar")
            };
            let head = format!("{}{}{}", format.open, t.name, format.mid);
            lark.push_str(&format!(
                "fn_{i}: {} args_{i} {}\n",
                lit(&head),
                lit(format.close)
            ));
            lark.push_str(&format!("args_{i}: %json {schema}\n"));
        }
        Ok(Some(if free_text {
            Grammar::LarkWithText(lark)
        } else {
            Grammar::Lark(lark)
        }))
    }
}

/// A regex matching `s` literally.
fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let special = "\\.+*?()|[]{}^$/".contains(c);
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// A Lark string literal's body: backslashes, quotes and newlines escaped.
fn lark_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> Tool {
        Tool::new(
            "get_weather",
            Some("Weather now".into()),
            Some(json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]})),
        )
        .unwrap()
    }

    #[test]
    fn tools_are_checked() {
        assert!(Tool::new("bad name", None, None).is_err());
        assert!(Tool::new("f", None, Some(json!("x"))).is_err());
        assert!(Tool::new("f", None, Some(json!({"type": "integer"}))).is_err());
        assert_eq!(
            Tool::new("f", None, None).unwrap().parameters["type"],
            "object"
        );
        assert!(ToolSpec::new(vec![weather(), weather()], Choice::Auto, true).is_err());
        assert!(ToolSpec::new(vec![weather()], Choice::Named("nope".into()), true).is_err());
        assert!(ToolSpec::new(vec![], Choice::Required, true).is_err());
        assert!(!ToolSpec::new(vec![weather()], Choice::None, true)
            .unwrap()
            .may_call());
    }

    #[test]
    fn grammars_follow_the_choice() {
        let g = |choice, parallel| match ToolSpec::new(vec![weather()], choice, parallel)
            .unwrap()
            .grammar(&parse::HERMES, None)
            .unwrap()
        {
            Some(Grammar::Lark(s) | Grammar::LarkWithText(s)) => s,
            other => panic!("{other:?}"),
        };
        let required = g(Choice::Required, false);
        assert!(required.starts_with("start: call\n"), "{required}");
        assert!(required.contains("%json {"), "{required}");
        assert!(g(Choice::Auto, true).contains("start: TEXT | TEXT? call (\"\\n\" call){0,7}"));
        assert_eq!(
            ToolSpec::new(vec![weather()], Choice::None, true)
                .unwrap()
                .grammar(&parse::HERMES, None)
                .unwrap(),
            None
        );
    }
}
