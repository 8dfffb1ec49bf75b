//! How requests become prompts, over a real socket: prompts as token ids, `/tokenize` counting exactly what a
//! chat completion reads, and a final assistant message continued (Anthropic's prefill, Ollama's open turn).

mod http_support;

use http_support::parity::*;
use http_support::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_as_token_ids_and_detokenize() {
    let s = Server::ready(tiny_engine()).await;
    let ids = s
        .post_json("/tokenize", &json!({"content": "Once upon a time"}), 200)
        .await["tokens"]
        .clone();
    let body = |prompt: Value| json!({"prompt": prompt, "max_tokens": 6, "temperature": 0});
    let by_text = s
        .post_json("/v1/completions", &body(json!("Once upon a time")), 200)
        .await;
    let by_ids = s
        .post_json("/v1/completions", &body(ids.clone()), 200)
        .await;
    let by_list = s
        .post_json("/v1/completions", &body(json!([ids])), 200)
        .await;
    assert_eq!(by_text["choices"][0]["text"], by_ids["choices"][0]["text"]);
    assert_eq!(by_text["choices"][0]["text"], by_list["choices"][0]["text"]);
    for field in ["prompt_tokens", "completion_tokens"] {
        assert_eq!(by_text["usage"][field], by_ids["usage"][field]);
    }
    // An empty prompt starts from the BOS token (GPT-2's `<|endoftext|>`), as OpenAI's completions do.
    let bos = s
        .post_json("/tokenize", &json!({"content": "<|endoftext|>"}), 200)
        .await["tokens"]
        .clone();
    assert_eq!(bos.as_array().unwrap().len(), 1, "{bos}");
    let empty = s.post_json("/v1/completions", &body(json!("")), 200).await;
    let from_bos = s.post_json("/v1/completions", &body(bos), 200).await;
    assert_eq!(empty["choices"][0]["text"], from_bos["choices"][0]["text"]);
    assert_eq!(empty["usage"]["prompt_tokens"], 1);
    s.post_json("/v1/completions", &body(json!([])), 400).await;
    let v = s
        .post_json("/v1/completions", &body(json!([1, 999_999])), 400)
        .await;
    assert!(v["error"]["message"].as_str().unwrap().contains("999999"));
    let v = s
        .post_json("/detokenize", &json!({"tokens": [999_999]}), 400)
        .await;
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let v = s
        .post_json(
            "/tokenize",
            &json!({"content": "a", "messages": user("b")}),
            400,
        )
        .await;
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("exactly one"));
}

/// Anthropic's prefill: a final assistant message is the start of the answer, and the model goes on from it
/// (and Ollama's `/api/chat` likewise).
/// The answer is exactly the greedy continuation of the rendered conversation followed by the prefill's text
/// (as `/v1/completions` of those ids gives it), streamed and whole alike, and the prefill counts as input.
/// A prefill ending in whitespace, or holding a tool call, is refused as Anthropic refuses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_anthropic_prefill_continues_the_answer() {
    let s = Server::ready(smollm2_engine()).await;
    let question = "What is the capital of France? Reply in JSON.";
    let prefill = "{\"capital\": \"";
    let msgs =
        json!([{"role": "user", "content": question}, {"role": "assistant", "content": prefill}]);
    let body = json!({"model": "smollm2", "messages": msgs, "max_tokens": 20, "temperature": 0});
    let answer = anthropic_parity(&s, body.clone()).await;
    assert!(answer.starts_with("Paris"), "{answer:?}");

    let turn = s
        .post_json("/tokenize", &json!({"messages": user(question)}), 200)
        .await;
    let start = json!({"content": prefill, "add_special": false});
    let start = s.post_json("/tokenize", &start, 200).await;
    let mut ids = turn["tokens"].as_array().unwrap().clone();
    ids.extend(start["tokens"].as_array().unwrap().iter().cloned());
    let plain = json!({"model": "smollm2", "prompt": ids, "max_tokens": 20, "temperature": 0});
    let plain = s.post_json("/v1/completions", &plain, 200).await;
    assert_eq!(plain["choices"][0]["text"], answer.as_str());
    let whole = s.post_json("/v1/messages", &body, 200).await;
    assert_eq!(
        whole["usage"]["input_tokens"].as_u64().unwrap() as usize,
        ids.len()
    );
    // Ollama's `/api/chat` continues a final assistant message the same way.
    let greedy = json!({"num_predict": 20, "temperature": 0, "repeat_penalty": 1.0});
    let ollama = json!({"model": "smollm2", "messages": msgs, "options": greedy});
    assert_eq!(ollama_parity(&s, "/api/chat", ollama).await, answer);

    for (last, why) in [
        (json!("The capital is "), "trailing whitespace"),
        (
            json!([{"type": "tool_use", "id": "t1", "name": "f", "input": {}}]),
            "may hold only text",
        ),
    ] {
        let mut bad = body.clone();
        bad["messages"][1]["content"] = last;
        let e = s.post_json("/v1/messages", &bad, 400).await;
        assert!(e["error"]["message"].as_str().unwrap().contains(why), "{e}");
    }
    // Tools offered for the model to use as it likes leave the prefill in place; a forced one is refused,
    // by `count_tokens` alike.
    let tools = json!([{"name": "lookup", "description": "Look a city up",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}]);
    let mut offered = body.clone();
    offered["tools"] = tools;
    let a = s.post_json("/v1/messages", &offered, 200).await;
    assert_eq!(a["content"][0]["type"], "text", "{a}");
    offered["tool_choice"] = json!({"type": "any"});
    for path in ["/v1/messages", "/v1/messages/count_tokens"] {
        let e = s.post_json(path, &offered, 400).await;
        let message = e["error"]["message"].as_str().unwrap();
        assert!(message.contains("forces a tool"), "{path}: {e}");
    }
}

/// `/tokenize` renders chat `messages` as a chat completion does, tools, earlier calls (`content: null`, as the
/// OpenAI SDK sends them) and tool results included: its count is the completion's `prompt_tokens`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenize_counts_what_a_chat_completion_reads() {
    let s = Server::ready(tiny_engine()).await;
    let call = json!({"id": "c1", "type": "function",
        "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}});
    let messages = json!([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C sunny"},
    ]);
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    for with_tools in [false, true] {
        let mut ask = json!({"messages": messages});
        if with_tools {
            ask["tools"] = tools.clone();
        }
        let counted = s.post_json("/tokenize", &ask, 200).await["count"].clone();
        ask["max_tokens"] = json!(1);
        let done = s.post_json("/v1/chat/completions", &ask, 200).await;
        assert_eq!(
            counted, done["usage"]["prompt_tokens"],
            "tools: {with_tools}"
        );
    }
}
