//! Tests of the call parser: whole answers, any split of the stream, every format, cut answers.

use super::*;

const TWO: &str = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris \\\"}{\", \"n\": [1, {\"a\": 2}]}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {}}\n</tool_call>";

#[test]
fn whole_answers() {
    let p = parse(TWO, Reading::auto(&HERMES));
    assert_eq!(p.text, "");
    assert_eq!(p.calls.len(), 2);
    assert_eq!(p.calls[0].name, "get_weather");
    let args: serde_json::Value = serde_json::from_str(&p.calls[0].arguments).unwrap();
    assert_eq!(args["city"], "Paris \"}{");
    assert_eq!(
        p.calls[1],
        Call {
            name: "add".into(),
            arguments: "{}".into()
        }
    );
    assert_eq!(
        parse("Hello <tool_call> there", Reading::auto(&HERMES)).text,
        "Hello <tool_call> there"
    );
    assert_eq!(parse("<tool", Reading::auto(&HERMES)).text, "<tool");
    assert_eq!(parse("  \n", Reading::auto(&HERMES)).text, "  \n");
}

/// `text` (Hermes calls) fed to a parser `step` characters at a time.
fn parse_in_steps(text: &str, step: usize) -> Parsed {
    let mut p = CallParser::new(Reading::auto(&HERMES));
    let mut parsed = Parsed::default();
    let chars: Vec<char> = text.chars().collect();
    for chunk in chars.chunks(step) {
        parsed.add(p.push(&chunk.iter().collect::<String>()));
    }
    parsed.add(p.finish());
    parsed
}

#[test]
fn any_split_gives_the_same_pieces() {
    let whole = parse(TWO, Reading::auto(&HERMES));
    for step in 1..8 {
        assert_eq!(parse_in_steps(TWO, step), whole, "split every {step}");
    }
}

#[test]
fn a_call_starts_as_soon_as_its_name_is_known() {
    let mut p = CallParser::new(Reading::auto(&HERMES));
    assert_eq!(p.push("<tool_call>\n{\"name\": \"ad"), vec![]);
    assert_eq!(
        p.push("d\", \"arguments\": {\"a\""),
        vec![
            Piece::Start {
                index: 0,
                name: "add".into()
            },
            Piece::Args {
                index: 0,
                fragment: "{\"a\"".into()
            }
        ]
    );
    assert_eq!(p.calls(), 1);
}

#[test]
fn other_families_formats() {
    let llama = "{\"name\": \"add\", \"parameters\": {\"a\": 1}}";
    let p = parse(llama, Reading::auto(&LLAMA_JSON));
    assert_eq!(
        p.calls,
        vec![Call {
            name: "add".into(),
            arguments: "{\"a\": 1}".into()
        }]
    );
    assert_eq!(p.text, "");
    let mistral =
        "[{\"name\": \"add\", \"arguments\": {\"a\": [1]}}, {\"name\": \"f\", \"arguments\": {}}]";
    let p = parse(mistral, Reading::auto(&MISTRAL));
    assert_eq!(p.calls.len(), 2);
    assert_eq!(
        p.calls[1],
        Call {
            name: "f".into(),
            arguments: "{}".into()
        }
    );
    assert_eq!(parse("[1, 2]", Reading::auto(&MISTRAL)).text, "[1, 2]");
    assert_eq!(
        LLAMA_JSON.call("f", "{}"),
        "{\"name\": \"f\", \"parameters\": {}}"
    );
}

#[test]
fn templates_choose_their_format() {
    assert_eq!(Format::for_template(None, false), &HERMES);
    assert_eq!(
        Format::for_template(Some("{{ tools }} <tool_call>"), true),
        &HERMES
    );
    assert_eq!(
        Format::for_template(Some("{{ tools }} [TOOL_CALLS]"), true),
        &MISTRAL
    );
    assert_eq!(
        Format::for_template(Some("<|python_tag|>{{ tools }}"), true),
        &LLAMA_JSON
    );
    assert_eq!(Format::for_template(Some("[TOOL_CALLS]"), false), &HERMES);
}

#[test]
fn a_call_may_follow_text_in_the_hermes_format() {
    let answer =
        "Let me check.\n<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1}}\n</tool_call>";
    let whole = parse(answer, Reading::auto(&HERMES));
    assert_eq!(whole.text, "Let me check.\n");
    assert_eq!(whole.calls.len(), 1);
    for step in 1..6 {
        assert_eq!(parse_in_steps(answer, step), whole, "split every {step}");
    }
    // Text with a `<` that starts no call is given back whole.
    assert_eq!(
        parse("a < b and <tool", Reading::auto(&HERMES)).text,
        "a < b and <tool"
    );
    // A bare brace after text is text in the JSON formats.
    assert_eq!(
        parse("x {\"name\": \"add\"", Reading::auto(&LLAMA_JSON)).text,
        "x {\"name\": \"add\""
    );
}

#[test]
fn a_call_cut_before_its_name_comes_back_as_text_unless_calls_were_forced() {
    let cut = "<tool_call>\n{\"name\": \"get_wea";
    assert_eq!(
        parse(cut, Reading::auto(&HERMES)),
        Parsed {
            text: cut.into(),
            calls: vec![]
        }
    );
    // Under a forced call the answer is never text: what there is of the opening is dropped.
    let forced = Reading {
        format: &HERMES,
        forced: true,
    };
    for cut in ["", "\n<tool_ca", cut] {
        assert_eq!(parse(cut, forced), Parsed::default(), "{cut:?}");
    }
    let named = parse("<tool_call>\n{\"name\": \"add\", \"argu", forced);
    assert_eq!(named.calls[0].name, "add");
    // Only the whitespace the grammar allows may precede a call.
    let odd = "\u{c}<tool_call>\n{\"name\": \"rm\", \"arguments\": {}}\n</tool_call>";
    assert!(parse(odd, Reading::auto(&LLAMA_JSON)).calls.is_empty());
}
