//! Tests of the Ollama wire encoders (kept beside `wire.rs`, which they test through `super`).

use super::*;
use crate::engine::{Timings, Usage};

fn epoch() -> SystemTime {
    SystemTime::UNIX_EPOCH
}

fn completion() -> Completion {
    let timings = Timings {
        prefill: Duration::from_millis(2),
        decode: Duration::from_millis(3),
        total: Duration::from_millis(6),
        ..Timings::default()
    };
    Completion {
        finish: FinishReason::Length,
        usage: Usage {
            prompt_tokens: 2,
            completion_tokens: 2,
            ..Default::default()
        },
        timings,
    }
}

fn data(f: &Frame) -> &Value {
    match f {
        Frame::Json { data, .. } => data,
        other => panic!("{other:?}"),
    }
}

#[test]
fn generate_stream_lines() {
    let mut s = OllamaStream::new("m".into(), Mode::Generate { prompt: vec![5, 6] }, epoch);
    assert!(s.start().is_empty());
    assert!(s.delta("", &[TokenInfo::new(7)]).is_empty());
    let d = s.delta("é", &[TokenInfo::new(8)]);
    assert_eq!(
        data(&d[0]),
        &json!({"model": "m", "created_at": "1970-01-01T00:00:00.000000000Z", "response": "é", "done": false})
    );
    let end = s.done(&completion());
    let v = data(&end[0]);
    assert_eq!(v["done"], true);
    assert_eq!(v["done_reason"], "length");
    assert_eq!(v["context"], json!([5, 6, 7, 8]));
    assert_eq!(
        (v["total_duration"].as_u64(), v["eval_duration"].as_u64()),
        (Some(6_000_000), Some(3_000_000))
    );
    assert_eq!(
        (v["prompt_eval_count"].as_u64(), v["eval_count"].as_u64()),
        (Some(2), Some(2))
    );
}

#[test]
fn chat_lines_and_whole() {
    let mut s = OllamaStream::new("m".into(), Mode::Chat, epoch);
    let d = s.delta("hi", &[]);
    assert_eq!(
        data(&d[0])["message"],
        json!({"role": "assistant", "content": "hi"})
    );
    let whole = OllamaStream::new("m".into(), Mode::Chat, epoch).whole(&Collected {
        prompt: vec![],
        text: "hi".into(),
        tokens: vec![],
        completion: completion(),
    });
    assert_eq!(whole["message"]["content"], "hi");
    assert!(whole.get("context").is_none());
    let e = s.error(&EngineError::Model("x".into()));
    assert!(data(&e[0])["error"].as_str().unwrap().contains('x'));
}

const CALLS: &str = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa}ris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"add\", \"arguments\": {}}\n</tool_call>";

fn collected(text: &str, finish: FinishReason) -> Collected {
    Collected {
        prompt: vec![],
        text: text.into(),
        tokens: vec![],
        completion: Completion {
            finish,
            ..completion()
        },
    }
}

#[test]
fn tool_calls_stream_whole_once_complete() {
    for step in [1, 3, 7, CALLS.len()] {
        let mut s = OllamaStream::new("m".into(), Mode::Chat, epoch)
            .with_tools(Some(parse::Reading::auto(&parse::HERMES)));
        let chars: Vec<char> = CALLS.chars().collect();
        let mut lines = Vec::new();
        for chunk in chars.chunks(step) {
            lines.extend(s.delta(&chunk.iter().collect::<String>(), &[]));
        }
        lines.extend(s.done(&collected("", FinishReason::Eos).completion));
        let lines: Vec<&Value> = lines.iter().map(data).collect();
        assert_eq!(
            lines.len(),
            3,
            "two calls and the last line, split every {step}"
        );
        assert_eq!(
            lines[0],
            &json!({"model": "m", "created_at": "1970-01-01T00:00:00.000000000Z", "done": false,
                    "message": {"role": "assistant", "content": "",
                                "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Pa}ris"}}}]}})
        );
        assert_eq!(
            lines[1]["message"]["tool_calls"],
            json!([{"function": {"name": "add", "arguments": {}}}])
        );
        assert_eq!(
            (lines[2]["done"].as_bool(), lines[2]["done_reason"].as_str()),
            (Some(true), Some("stop"))
        );
        assert_eq!(
            lines[2]["message"],
            json!({"role": "assistant", "content": ""})
        );
    }
    // The first call goes out as soon as its arguments close, before the model writes anything more.
    let mut s = OllamaStream::new("m".into(), Mode::Chat, epoch)
        .with_tools(Some(parse::Reading::auto(&parse::HERMES)));
    assert!(s
        .delta(
            "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": 1",
            &[]
        )
        .is_empty());
    let d = s.delta("}", &[]);
    assert_eq!(
        data(&d[0])["message"]["tool_calls"][0]["function"]["arguments"],
        json!({"a": 1})
    );
}

#[test]
fn text_streams_as_usual_with_tools() {
    let mut s = OllamaStream::new("m".into(), Mode::Chat, epoch)
        .with_tools(Some(parse::Reading::auto(&parse::HERMES)));
    assert!(
        s.delta("<tool", &[]).is_empty(),
        "perhaps a call: held back"
    );
    let d = s.delta("s are fun", &[]);
    assert_eq!(
        data(&d[0])["message"],
        json!({"role": "assistant", "content": "<tools are fun"})
    );
    let d = s.delta(" indeed", &[]);
    assert_eq!(data(&d[0])["message"]["content"], " indeed");
    let end = s.done(&completion());
    assert_eq!(end.len(), 1);
    // Text that only looked like the start of a call comes out at the end.
    let mut s = OllamaStream::new("m".into(), Mode::Chat, epoch)
        .with_tools(Some(parse::Reading::auto(&parse::HERMES)));
    assert!(s.delta("<tool_", &[]).is_empty());
    let end = s.done(&completion());
    assert_eq!(data(&end[0])["message"]["content"], "<tool_");
    assert_eq!(data(&end[1])["done"], true);
}

#[test]
fn a_call_cut_short_stays_text() {
    let cut = "<tool_call>\n{\"name\": \"add\", \"arguments\": {\"a\": ";
    let mut s = OllamaStream::new("m".into(), Mode::Chat, epoch)
        .with_tools(Some(parse::Reading::auto(&parse::HERMES)));
    assert!(s.delta(cut, &[]).is_empty());
    let end = s.done(&completion());
    assert_eq!(data(&end[0])["message"]["content"], cut);
    assert!(data(&end[0])["message"].get("tool_calls").is_none());
    assert_eq!(data(&end[1])["done_reason"], "length");
    let whole = OllamaStream::new("m".into(), Mode::Chat, epoch)
        .with_tools(Some(parse::Reading::auto(&parse::HERMES)))
        .whole(&collected(cut, FinishReason::Length));
    assert_eq!(
        whole["message"],
        json!({"role": "assistant", "content": cut})
    );
    assert_eq!(whole["done_reason"], "length");
}

#[test]
fn whole_answers_carry_calls_as_objects() {
    let whole = OllamaStream::new("m".into(), Mode::Chat, epoch)
        .with_tools(Some(parse::Reading::auto(&parse::HERMES)))
        .whole(&collected(CALLS, FinishReason::Eos));
    assert_eq!(
        whole["message"],
        json!({"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Pa}ris"}}},
            {"function": {"name": "add", "arguments": {}}}]})
    );
    assert_eq!(
        (whole["done"].as_bool(), whole["done_reason"].as_str()),
        (Some(true), Some("stop"))
    );
    let text = OllamaStream::new("m".into(), Mode::Chat, epoch)
        .with_tools(Some(parse::Reading::auto(&parse::HERMES)))
        .whole(&collected("Hello", FinishReason::Eos));
    assert_eq!(
        text["message"],
        json!({"role": "assistant", "content": "Hello"})
    );
    // Without tools the text is never read for calls.
    let plain = OllamaStream::new("m".into(), Mode::Chat, epoch)
        .whole(&collected(CALLS, FinishReason::Eos));
    assert_eq!(plain["message"]["content"], CALLS);
}

#[test]
fn call_lines_carry_their_log_probabilities() {
    let mut s = OllamaStream::new("m".into(), Mode::Chat, epoch)
        .with_tools(Some(parse::Reading::auto(&parse::HERMES)))
        .with_logprobs(true);
    let lp = |id| {
        let mut t = TokenInfo::new(id);
        t.logprobs = Some(Box::new(crate::engine::logprobs::Logprobs {
            chosen: crate::engine::logprobs::TokenLogprob {
                id,
                bytes: vec![b'x'],
                logprob: -0.5,
            },
            top: vec![],
        }));
        t
    };
    assert!(s
        .delta(
            "<tool_call>\n{\"name\": \"add\", \"arguments\": {",
            &[lp(1)]
        )
        .is_empty());
    let d = s.delta("}\n</tool_call>", &[lp(2)]);
    assert_eq!(data(&d[0])["logprobs"].as_array().unwrap().len(), 2);
}

#[test]
fn show_reports_tools_and_the_template() {
    let info = ModelInfo {
        name: "m".into(),
        arch: "llama".into(),
        quantization: "Q8_0".into(),
        vocab_size: 10,
        context_length: 20,
        n_params: 1000,
        kv_bytes_per_token: 1,
    };
    let l = Listing {
        name: "m",
        info: &info,
        size: 1,
        modified: epoch(),
        template: "{{ messages }}".into(),
    };
    let v = l.show();
    assert_eq!(v["capabilities"], json!(["completion", "tools"]));
    assert_eq!(v["template"], "{{ messages }}");
}

#[test]
fn sizes() {
    assert_eq!(parameter_size(134_515_008), "134.5M");
    assert_eq!(parameter_size(1_240_000_000), "1.2B");
}
