//! rill's chat-template renderer (minijinja with HuggingFace's settings and helpers) gives transformers' text,
//! byte for byte, on templates that use what the model families' templates rely on: whitespace control,
//! `raise_exception`, namespaces carried across loops, loop variables, Python string methods, `tojson`,
//! slicing, inline ifs and concatenation (`tests/fixtures/chat-templates/`; goldens from
//! `scripts/make-template-goldens.py`). A template that raises is an error, as it is in transformers.

mod common;

use rill::tokenizer::{ChatMessage, ChatTemplate};

fn case(name: &str) -> Vec<ChatMessage> {
    let m = ChatMessage::new;
    match name {
        "one-user" => vec![m("user", "Hello there")],
        "system-multi" => vec![
            m("system", "  Be brief.  "),
            m("user", "Hi  there, friend"),
            m("assistant", "Hello! How can I help?"),
            m("user", "What is 2+2?"),
        ],
        "unicode" => vec![m(
            "user",
            "Grüße 東京 🚀 \"quoted\" <b>tags</b>\nsecond line",
        )],
        "bad-order" => vec![m("assistant", "x"), m("user", "y")],
        other => panic!("unknown case {other}"),
    }
}

#[test]
fn templates_render_as_transformers_renders_them() {
    let golden = common::golden("chat-template-golden.json");
    let dir = common::root().join("tests/fixtures/chat-templates");
    let mut checked = 0;
    for (file, cases) in golden.as_object().unwrap() {
        let source = std::fs::read_to_string(dir.join(file)).unwrap();
        let t = ChatTemplate::new(Some(source), Some("<s>"), Some("</s>")).unwrap();
        for (key, want) in cases.as_object().unwrap() {
            let (name, mode) = key.split_once('/').unwrap();
            let got = t.render(&case(name), mode == "prompt");
            match want.get("text").and_then(|v| v.as_str()) {
                Some(text) => assert_eq!(got.unwrap(), text, "{file} {key}"),
                None => assert!(
                    got.is_err(),
                    "{file} {key}: transformers raised, rill rendered {got:?}"
                ),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 32, "every template and case");
}
