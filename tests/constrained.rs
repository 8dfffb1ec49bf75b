//! Constrained decoding in the engine, on the worst model there is: the tiny GPT-2 fixture has random weights,
//! so every structured answer below comes from the grammar, not from the model's good sense.
//! - sampled answers under a dozen schemas parse and match their schema, within the token budget (the answer is
//!   steered to close as the budget runs out, so it is never cut off mid-JSON);
//! - a tool-call grammar gives a well-formed call of an offered tool;
//! - constrained and free requests share batches, and the free ones get exactly the tokens they get alone;
//! - an invalid schema is refused when compiled, before anything is queued.

mod common;

use rill::api::structured;
use rill::api::tools::{parse, Choice, Tool, ToolSpec};
use rill::engine::grammar::{Grammar, GrammarError};
use rill::engine::{EngineConfig, EngineHandle, GenRequest, SamplingParams};
use serde_json::{json, Value};

fn engine() -> EngineHandle {
    common::engine("tiny-gpt2", EngineConfig::default())
}

fn request(
    e: &EngineHandle,
    grammar: Option<&Grammar>,
    seed: u64,
    max_tokens: usize,
) -> GenRequest {
    let shared = e.shared();
    let mut req = GenRequest::new(shared.tokenizer.encode("Answer in JSON:").unwrap());
    req.sampling = SamplingParams {
        temperature: 1.0,
        seed: Some(seed),
        ..SamplingParams::default()
    };
    req.max_tokens = Some(max_tokens);
    req.constraint = grammar.map(|g| shared.constraint(g).unwrap());
    req
}

fn run(e: &EngineHandle, req: GenRequest) -> (String, rill::engine::Completion) {
    let (text, _, done) = e.submit(req).unwrap().collect_blocking().unwrap();
    (text, done)
}

/// A schema and a check of what a value it allows must satisfy.
type Case = (Value, fn(&Value) -> bool);

/// The schemas and their checks (written out by hand: the schemas are small).
fn cases() -> Vec<Case> {
    let s = |v: &Value| v.is_string();
    vec![
        (
            json!({"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}),
            |v| v["name"].is_string() && v.as_object().unwrap().len() == 1,
        ),
        (
            json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": 3, "maximum": 9}}, "required": ["n"]}),
            |v| v["n"].as_i64().is_some_and(|n| (3..=9).contains(&n)),
        ),
        (
            json!({"type": "object", "properties": {"x": {"type": "number", "exclusiveMinimum": 0, "maximum": 1}}, "required": ["x"]}),
            |v| v["x"].as_f64().is_some_and(|x| x > 0.0 && x <= 1.0),
        ),
        (
            json!({"type": "object", "properties": {"c": {"enum": ["red", "green", "blue"]}}, "required": ["c"]}),
            |v| ["red", "green", "blue"].contains(&v["c"].as_str().unwrap_or("")),
        ),
        (
            json!({"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 4}),
            |v| {
                v.as_array()
                    .is_some_and(|a| (2..=4).contains(&a.len()) && a.iter().all(Value::is_boolean))
            },
        ),
        (
            json!({"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3}}, "required": ["tags"]}),
            |v| {
                v["tags"].as_array().is_some_and(|a| {
                    a.len() <= 3
                        && a.iter()
                            .all(|t| t.as_str().is_some_and(|t| t.chars().count() <= 5))
                })
            },
        ),
        (
            json!({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "object", "properties": {"c": {"type": "integer"}}, "required": ["c"]}}, "required": ["b"]}}, "required": ["a"]}),
            |v| v["a"]["b"]["c"].is_i64(),
        ),
        (
            json!({"type": "object", "properties": {"v": {"anyOf": [{"type": "integer"}, {"type": "null"}]}}, "required": ["v"]}),
            |v| v["v"].is_i64() || v["v"].is_null(),
        ),
        (
            json!({"type": "object", "properties": {"id": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{3}$"}}, "required": ["id"]}),
            |v| {
                v["id"].as_str().is_some_and(|s| {
                    s.len() == 5
                        && s[..2].chars().all(|c| c.is_ascii_uppercase())
                        && s[2..].chars().all(|c| c.is_ascii_digit())
                })
            },
        ),
        (
            json!({"type": "object", "properties": {"k": {"const": "fixed"}, "opt": {"type": "string"}}, "required": ["k"]}),
            |v| {
                v["k"] == "fixed"
                    && v.as_object()
                        .unwrap()
                        .keys()
                        .all(|k| k == "k" || k == "opt")
            },
        ),
        (
            json!({"type": "object", "properties": {"people": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}, "required": ["name", "age"]}, "minItems": 1}}, "required": ["people"]}),
            |v| {
                v["people"].as_array().is_some_and(|a| {
                    !a.is_empty()
                        && a.iter().all(|p| {
                            p["name"].is_string() && p["age"].as_i64().is_some_and(|n| n >= 0)
                        })
                })
            },
        ),
        (json!({"type": "string", "minLength": 1}), s),
    ]
}

#[test]
fn random_weights_still_give_valid_json_for_every_schema() {
    let e = engine();
    for (i, (schema, ok)) in cases().into_iter().enumerate() {
        let grammar = structured::json_grammar(&schema).unwrap();
        for seed in 0..3 {
            let (text, done) = run(&e, request(&e, Some(&grammar), seed, 48));
            let v: Value = serde_json::from_str(&text)
                .unwrap_or_else(|err| panic!("schema {i}, seed {seed}: {err} in {text:?}"));
            assert!(
                ok(&v),
                "schema {i}, seed {seed}: {v} does not match {schema}"
            );
            assert!(
                done.usage.completion_tokens <= 48,
                "schema {i}: {}",
                done.usage.completion_tokens
            );
        }
    }
}

#[test]
fn a_forced_tool_call_is_well_formed_in_every_format() {
    let e = engine();
    for format in [&parse::HERMES, &parse::LLAMA_JSON, &parse::MISTRAL] {
        for (choice, seed) in [
            (Choice::Required, 1),
            (Choice::Named("add".into()), 2),
            (Choice::Required, 3),
        ] {
            let spec = ToolSpec::new(tools(), choice.clone(), true).unwrap();
            let grammar = spec.grammar(format, None).unwrap().unwrap();
            let (text, done) = run(&e, request(&e, Some(&grammar), seed, 400));
            assert_eq!(done.finish, rill::engine::FinishReason::Eos, "{text:?}");
            let parsed = parse::parse(&text, spec.calls(format).unwrap());
            assert_eq!(parsed.text, "", "{}: {text:?}", format.name);
            check_calls(&parsed, &text);
            if let Choice::Named(n) = &choice {
                assert_eq!(parsed.calls.len(), 1);
                assert_eq!(&parsed.calls[0].name, n);
            }
            if !format.parallel {
                assert_eq!(parsed.calls.len(), 1, "{}: {text:?}", format.name);
            }
        }
    }
}

#[test]
fn with_auto_an_answer_is_text_or_whole_calls() {
    let e = engine();
    for format in [&parse::HERMES, &parse::LLAMA_JSON, &parse::MISTRAL] {
        let spec = ToolSpec::new(tools(), Choice::Auto, true).unwrap();
        let grammar = spec.grammar(format, None).unwrap().unwrap();
        for seed in 0..6 {
            let (text, _) = run(&e, request(&e, Some(&grammar), seed, 200));
            let parsed = parse::parse(&text, spec.calls(format).unwrap());
            if text.trim_start().starts_with(format.trigger) {
                assert_eq!(parsed.text, "", "{}: {text:?}", format.name);
                check_calls(&parsed, &text);
            } else {
                assert!(parsed.calls.is_empty(), "{text:?}");
                assert_eq!(parsed.text, text);
            }
        }
    }
}

#[test]
fn with_auto_and_a_response_format_an_answer_is_that_json_or_calls() {
    let e = engine();
    let schema =
        json!({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]});
    let answer = structured::json_grammar(&schema).unwrap();
    let spec = ToolSpec::new(tools(), Choice::Auto, true).unwrap();
    let grammar = spec
        .grammar(&parse::HERMES, Some(&answer))
        .unwrap()
        .unwrap();
    for seed in 0..6 {
        let (text, _) = run(&e, request(&e, Some(&grammar), seed, 200));
        let parsed = parse::parse(&text, spec.calls(&parse::HERMES).unwrap());
        if parsed.calls.is_empty() {
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
            assert!(v["ok"].is_boolean(), "{text:?}");
        } else {
            assert_eq!(parsed.text, "", "{text:?}");
            check_calls(&parsed, &text);
        }
    }
}

fn tools() -> Vec<Tool> {
    vec![
        Tool::new("get_weather", None, Some(json!({"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}}, "required": ["city", "unit"]})))
        .unwrap(),
        Tool::new("add", None, Some(json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})))
            .unwrap(),
    ]
}

/// Every call names an offered tool and has arguments valid for it.
fn check_calls(parsed: &parse::Parsed, text: &str) {
    assert!(!parsed.calls.is_empty(), "{text:?}");
    for call in &parsed.calls {
        let args: Value =
            serde_json::from_str(&call.arguments).unwrap_or_else(|e| panic!("{e}: {text:?}"));
        match call.name.as_str() {
            "get_weather" => assert!(
                args["city"].is_string() && ["c", "f"].contains(&args["unit"].as_str().unwrap()),
                "{text:?}"
            ),
            "add" => assert!(args["a"].is_i64(), "{text:?}"),
            other => panic!("unknown tool {other}"),
        }
    }
}

#[test]
fn free_requests_are_untouched_by_constrained_companions() {
    let e = engine();
    let grammar = structured::json_grammar(&json!({"type": "object", "properties": {
        "a": {"type": "array", "items": {"type": "integer"}}}, "required": ["a"]}))
    .unwrap();
    let solo: Vec<String> = (0..2)
        .map(|seed| run(&e, request(&e, None, seed, 24)).0)
        .collect();
    let streams: Vec<_> = (0..4)
        .map(|i| {
            let g = (i % 2 == 1).then_some(&grammar);
            e.submit(request(&e, g, i / 2, 24)).unwrap()
        })
        .collect();
    let answers: Vec<String> = streams
        .into_iter()
        .map(|s| s.collect_blocking().unwrap().0)
        .collect();
    assert_eq!(answers[0], solo[0]);
    assert_eq!(answers[2], solo[1]);
    for constrained in [&answers[1], &answers[3]] {
        let v: Value = serde_json::from_str(constrained).unwrap();
        assert!(v["a"].is_array(), "{v}");
    }
}

#[test]
fn invalid_grammars_are_refused_when_compiled() {
    let e = engine();
    let shared = e.shared();
    for schema in [
        json!({"type": "object", "properties": {"a": {"type": "nonsense"}}}),
        json!({"type": "integer", "minimum": 5, "maximum": 1}),
        // No finite answer: these compile, and fail at the first token.
        json!({"$ref": "#"}),
        json!({"anyOf": [{"$ref": "#"}]}),
        json!({"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}),
    ] {
        let g = structured::json_grammar(&schema).unwrap();
        assert!(
            matches!(shared.constraint(&g), Err(GrammarError::Invalid(_))),
            "{schema}"
        );
    }
    assert!(matches!(
        shared.constraint(&Grammar::Lark("start: nope".into())),
        Err(GrammarError::Invalid(_))
    ));
}
