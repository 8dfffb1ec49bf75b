//! Chat templates: the model's own Jinja template rendered with minijinja the way HuggingFace renders it
//! (trim_blocks, lstrip_blocks, Python string methods), or a plain fallback for models without one.

use minijinja::{context, Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use super::TokenizerError;

/// The template used when a model ships none (GPT-2): a plain transcript that ends with `Assistant:`.
///
/// ```text
/// <system prompt>\n\nUser: <message>\nAssistant: <message>\n...User: <message>\nAssistant:
/// ```
pub const FALLBACK_TEMPLATE: &str =
    "{% for m in messages %}{% if m.role == 'system' %}{{ m.content }}\n\n\
{% else %}{{ m.role | capitalize }}: {{ m.content }}\n{% endif %}{% endfor %}\
{% if add_generation_prompt %}Assistant:{% endif %}";

/// One message of a conversation. Assistant messages may carry the tool calls they made and `tool` messages
/// the id of the call they answer, in the shape HuggingFace templates read (`tool_calls[i].function.name`,
/// `.arguments` as an object).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<serde_json::Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// The tool's name, on a `tool` message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }
}

/// A compiled chat template and the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// False when the model has no template and [`FALLBACK_TEMPLATE`] is in use.
    pub is_model_template: bool,
    /// Whether the template reads a `tools` variable (so tools are given to it rather than described by rill).
    pub takes_tools: bool,
}

/// Template instructions one render may run: some 30 per message for common templates, so room for
/// conversations of hundreds of thousands of messages, while a template that loops for ever (a hostile
/// model file) fails in well under a second instead of hanging the request. Recursion has minijinja's own
/// depth limit.
const FUEL: u64 = 20_000_000;

impl ChatTemplate {
    /// Compiles `source`, or the fallback when `None`.
    pub fn new(
        source: Option<String>,
        bos: Option<&str>,
        eos: Option<&str>,
    ) -> Result<Self, TokenizerError> {
        let is_model_template = source.is_some();
        let takes_tools = source.as_deref().is_some_and(|s| s.contains("tools"));
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(FUEL));
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, Error> {
            Err(Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_function("strftime_now", |fmt: String| -> String {
            strftime_now(&fmt)
        });
        env.add_template_owned(
            "chat",
            source.unwrap_or_else(|| FALLBACK_TEMPLATE.to_string()),
        )
        .map_err(|e| TokenizerError::Template(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos.unwrap_or_default().to_string(),
            eos_token: eos.unwrap_or_default().to_string(),
            is_model_template,
            takes_tools,
        })
    }

    /// The template from a `tokenizer_config.json` value (a string, or a list of named templates).
    pub fn source_from_config(config: &serde_json::Value) -> Option<String> {
        match config.get("chat_template")? {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Array(list) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .or_else(|| list.first())
                .and_then(|t| t.get("template")?.as_str().map(str::to_string)),
            _ => None,
        }
    }

    /// The template's source text (the fallback's when the model ships none).
    pub fn source(&self) -> String {
        self.env
            .get_template("chat")
            .map(|t| t.source().to_string())
            .unwrap_or_default()
    }

    /// Renders a conversation into prompt text, ending with the assistant's turn when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        self.render_with_tools(messages, None, add_generation_prompt)
    }

    /// As [`ChatTemplate::render`], with `tools` (OpenAI-shaped function descriptions) for templates that
    /// take them.
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        tools: Option<&[serde_json::Value]>,
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| TokenizerError::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            tools => tools,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| TokenizerError::Template(e.to_string()))
    }
}

/// Today's date for templates that print it; supports the `%Y %m %d %b` fields templates use.
fn strftime_now(fmt: &str) -> String {
    let (y, m, d) = crate::time::today();
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    fmt.replace("%Y", &y.to_string())
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%b", MONTHS[(m - 1) as usize])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A template that loops for ever or recurses without end fails quickly with an error.
    #[test]
    fn hostile_templates_fail_in_bounded_time() {
        let msgs = [ChatMessage::new("user", "hi")];
        for source in [
            "{% for a in range(100000) %}{% for b in range(100000) %}{{ a }}{% endfor %}{% endfor %}",
            "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
        ] {
            let t = ChatTemplate::new(Some(source.into()), None, None).unwrap();
            let t0 = std::time::Instant::now();
            let e = t.render(&msgs, true).unwrap_err();
            assert!(matches!(e, TokenizerError::Template(_)), "{e}");
            assert!(t0.elapsed() < std::time::Duration::from_secs(10), "{:?}", t0.elapsed());
        }
    }

    const CHATML: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are helpful<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_default_system() {
        let t = ChatTemplate::new(Some(CHATML.into()), None, None).unwrap();
        let out = t.render(&[ChatMessage::new("user", "Hi")], true).unwrap();
        assert_eq!(out, "<|im_start|>system\nYou are helpful<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn fallback_is_a_plain_transcript() {
        let t = ChatTemplate::new(None, None, None).unwrap();
        let msgs = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Hi"),
            ChatMessage::new("assistant", "Hello"),
        ];
        assert_eq!(
            t.render(&msgs, true).unwrap(),
            "Be brief.\n\nUser: Hi\nAssistant: Hello\nAssistant:"
        );
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let src = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}{{ messages[0].content.strip() }}";
        let t = ChatTemplate::new(Some(src.into()), None, None).unwrap();
        assert_eq!(
            t.render(&[ChatMessage::new("user", "  x  ")], false)
                .unwrap(),
            "x"
        );
        let err = t
            .render(&[ChatMessage::new("system", "s")], false)
            .unwrap_err();
        assert!(err.to_string().contains("first must be user"));
    }
}
