//! Stream-against-whole checks for each dialect: one request sent both ways, the answers compared, the text
//! returned.

use serde_json::{json, Value};

use super::*;

/// Stream and non-stream answers of one OpenAI chat request; asserts they agree and returns the text.
pub async fn openai_chat_parity(s: &Server, body: Value) -> String {
    let whole = s.post_json("/v1/chat/completions", &body, 200).await;
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let events = sse(s.post("/v1/chat/completions", &sbody).await).await;
    let first = events[0].json();
    assert_eq!(
        first["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text = openai_text(&events);
    assert_eq!(
        text,
        whole["choices"][0]["message"]["content"].as_str().unwrap(),
        "{body}"
    );
    let finish = events[events.len() - 2].json();
    assert_eq!(finish["choices"][0]["delta"], json!({}));
    assert_eq!(
        finish["choices"][0]["finish_reason"],
        whole["choices"][0]["finish_reason"]
    );
    let ids: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| e.json()["id"].clone())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one id per stream");
    assert!(ids[0].as_str().unwrap().starts_with("chatcmpl-"));
    text
}

pub async fn openai_completion_parity(s: &Server, body: Value) -> String {
    let whole = s.post_json("/v1/completions", &body, 200).await;
    assert_eq!(whole["object"], "text_completion");
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let events = sse(s.post("/v1/completions", &sbody).await).await;
    let text = openai_text(&events);
    assert_eq!(
        text,
        whole["choices"][0]["text"].as_str().unwrap(),
        "{body}"
    );
    text
}

pub async fn ollama_parity(s: &Server, path: &str, body: Value) -> String {
    let mut nbody = body.clone();
    nbody["stream"] = json!(false);
    let whole = s.post_json(path, &nbody, 200).await;
    let (text, last) = ollama_text(&ndjson(s.post(path, &body).await).await);
    let whole_text = whole["response"]
        .as_str()
        .or(whole["message"]["content"].as_str())
        .unwrap();
    assert_eq!(text, whole_text, "{body}");
    for k in ["done_reason", "prompt_eval_count", "eval_count", "context"] {
        assert_eq!(last.get(k), whole.get(k), "{k}");
    }
    text
}

pub async fn anthropic_parity(s: &Server, body: Value) -> String {
    let whole = s.post_json("/v1/messages", &body, 200).await;
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let events = sse(s.post("/v1/messages", &sbody).await).await;
    let (text, delta) = anthropic_text(&events);
    assert_eq!(
        text,
        whole["content"][0]["text"].as_str().unwrap(),
        "{body}"
    );
    assert_eq!(delta["delta"]["stop_reason"], whole["stop_reason"]);
    assert_eq!(
        delta["usage"]["output_tokens"],
        whole["usage"]["output_tokens"]
    );
    assert_eq!(
        events[0].json()["message"]["usage"]["input_tokens"],
        whole["usage"]["input_tokens"]
    );
    text
}

pub fn user(text: &str) -> Value {
    json!([{ "role": "user", "content": text }])
}
