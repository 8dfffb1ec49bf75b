//! Every dialect over real models on a real socket: streaming and non-streaming answers agree (greedy and
//! seeded), usage and counts are exact, stop strings never leak, and the listing routes describe the model.
//! tiny-gpt2 (fast, gibberish) carries most checks; SmolLM2 (a real chat model) checks each dialect once.

mod http_support;

use http_support::parity::*;
use http_support::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_gpt2_stream_equals_whole_in_every_dialect() {
    let s = Server::ready(tiny_engine()).await;
    for sampling in [
        json!({"temperature": 0}),
        json!({"temperature": 0.9, "seed": 7}),
    ] {
        let mut chat =
            json!({"model": "tiny-gpt2", "messages": user("Hello there"), "max_tokens": 20});
        merge(&mut chat, &sampling);
        let a = openai_chat_parity(&s, chat).await;
        assert!(!a.is_empty());
        let mut comp =
            json!({"model": "tiny-gpt2", "prompt": "Once upon a time", "max_tokens": 20});
        merge(&mut comp, &sampling);
        openai_completion_parity(&s, comp).await;
        let opts = json!({"num_predict": 20, "temperature": sampling["temperature"], "seed": sampling.get("seed")});
        ollama_parity(
            &s,
            "/api/generate",
            json!({"model": "tiny-gpt2", "prompt": "Hello there", "options": opts}),
        )
        .await;
        ollama_parity(
            &s,
            "/api/chat",
            json!({"model": "tiny-gpt2", "messages": user("Hello there"), "options": opts}),
        )
        .await;
        let mut msg =
            json!({"model": "tiny-gpt2", "messages": user("Hello there"), "max_tokens": 20});
        merge(&mut msg, &sampling);
        let c = anthropic_parity(&s, msg).await;
        // Same prompt, same sampling defaults: OpenAI and Anthropic give the same answer.
        assert_eq!(a, c, "{sampling}");
    }
}

fn merge(into: &mut Value, from: &Value) {
    for (k, v) in from.as_object().unwrap() {
        into[k] = v.clone();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_exact_and_only_when_asked() {
    let s = Server::ready(tiny_engine()).await;
    let messages = user("Count my tokens");
    let counted = s
        .post_json("/tokenize", &json!({"messages": messages}), 200)
        .await["count"]
        .as_u64()
        .unwrap();
    let base = json!({"messages": messages, "max_tokens": 5, "temperature": 0, "ignore_eos": true, "stream": true});
    for (options, expect_usage) in [
        (json!(null), false),
        (json!({}), false),
        (json!({"include_usage": false}), false),
        (json!({"include_usage": true}), true),
    ] {
        let mut body = base.clone();
        body["stream_options"] = options.clone();
        let events = sse(s.post("/v1/chat/completions", &body).await).await;
        let with_usage: Vec<Value> = events
            .iter()
            .filter(|e| e.data != "[DONE]")
            .map(|e| e.json())
            .filter(|v| v.get("usage").is_some_and(|u| !u.is_null()))
            .collect();
        if expect_usage {
            assert_eq!(with_usage.len(), 1, "{options}");
            let last = &events[events.len() - 2].json();
            assert_eq!(last["choices"], json!([]));
            // The same prompt ran three times before: the prefix cache gives all of it but its last token.
            assert_eq!(
                last["usage"],
                json!({"prompt_tokens": counted, "completion_tokens": 5, "total_tokens": counted + 5,
                       "prompt_tokens_details": {"cached_tokens": counted - 1}})
            );
            assert!(
                events[..events.len() - 2]
                    .iter()
                    .all(|e| e.json()["usage"].is_null()),
                "other chunks carry usage: null"
            );
        } else {
            assert!(with_usage.is_empty(), "{options}");
            assert!(events
                .iter()
                .filter(|e| e.data != "[DONE]")
                .all(|e| e.json().get("usage").is_none()));
        }
    }
    let whole = s
        .post_json(
            "/v1/chat/completions",
            &json!({"messages": messages, "max_tokens": 5, "temperature": 0, "ignore_eos": true}),
            200,
        )
        .await;
    assert_eq!(
        whole["usage"],
        json!({"prompt_tokens": counted, "completion_tokens": 5, "total_tokens": counted + 5,
               "prompt_tokens_details": {"cached_tokens": counted - 1}})
    );
    assert_eq!(whole["choices"][0]["finish_reason"], "length");
    let ol = s
        .post_json(
            "/api/chat",
            &json!({"model": "tiny-gpt2", "messages": messages, "stream": false, "options": {"num_predict": 5}}),
            200,
        )
        .await;
    assert_eq!(
        (ol["prompt_eval_count"].as_u64(), ol["eval_count"].as_u64()),
        (Some(counted), Some(5))
    );
    assert_eq!(ol["done_reason"], "length");
    let an = s
        .post_json(
            "/v1/messages",
            &json!({"messages": messages, "max_tokens": 5}),
            200,
        )
        .await;
    assert_eq!(
        an["usage"],
        json!({"input_tokens": counted, "output_tokens": 5})
    );
    let ct = s
        .post_json(
            "/v1/messages/count_tokens",
            &json!({"messages": messages}),
            200,
        )
        .await;
    assert_eq!(ct["input_tokens"], counted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ollama_generate_context_continues() {
    let s = Server::ready(tiny_engine()).await;
    let greedy4 = json!({"num_predict": 4, "temperature": 0});
    let body = json!({"model": "tiny-gpt2", "prompt": "Hi", "raw": true, "stream": false, "options": greedy4});
    let first = s.post_json("/api/generate", &body, 200).await;
    let ctx = first["context"].as_array().unwrap().clone();
    let prompt_ids = s
        .post_json("/tokenize", &json!({"content": "Hi"}), 200)
        .await["tokens"]
        .clone();
    assert_eq!(ctx.len(), prompt_ids.as_array().unwrap().len() + 4);
    assert_eq!(
        &ctx[..ctx.len() - 4],
        prompt_ids.as_array().unwrap().as_slice()
    );
    let decoded = s
        .post_json("/detokenize", &json!({"tokens": ctx}), 200)
        .await;
    assert_eq!(
        decoded["content"].as_str().unwrap(),
        format!("Hi{}", first["response"].as_str().unwrap())
    );
    let body =
        json!({"model": "tiny-gpt2", "prompt": "!", "raw": true, "context": ctx, "stream": false});
    let next = s.post_json("/api/generate", &body, 200).await;
    assert_eq!(
        next["prompt_eval_count"].as_u64().unwrap() as usize,
        ctx.len() + 1
    );
}

/// Greedy text, then the same request with a stop string taken from its middle: every dialect must end the
/// answer just before the stop string, streaming or not, and never send any of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_never_leak() {
    let s = Server::ready(tiny_engine()).await;
    let base = json!({"model": "tiny-gpt2", "messages": user("Tell me"), "max_tokens": 40, "temperature": 0, "ignore_eos": true});
    let full = s.post_json("/v1/chat/completions", &base, 200).await["choices"][0]["message"]
        ["content"]
        .as_str()
        .unwrap()
        .to_string();
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 12, "need a longer answer: {full:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let expected = &full[..full.find(&stop).unwrap()];
    let mut chat = base.clone();
    chat["stop"] = json!([stop, "never-appears"]);
    assert_eq!(openai_chat_parity(&s, chat.clone()).await, expected);
    let whole = s.post_json("/v1/chat/completions", &chat, 200).await;
    assert_eq!(whole["choices"][0]["finish_reason"], "stop");
    let mut msg = json!({"messages": user("Tell me"), "max_tokens": 40, "temperature": 0, "stop_sequences": [stop]});
    assert_eq!(anthropic_parity(&s, msg.clone()).await, expected);
    msg["stream"] = json!(false);
    let whole = s.post_json("/v1/messages", &msg, 200).await;
    assert_eq!(
        (
            whole["stop_reason"].as_str(),
            whole["stop_sequence"].as_str()
        ),
        (Some("stop_sequence"), Some(stop.as_str()))
    );
    let opts = json!({"num_predict": 40, "temperature": 0, "repeat_penalty": 1.0, "top_k": 0, "top_p": 1.0, "stop": [stop]});
    let text = ollama_parity(
        &s,
        "/api/chat",
        json!({"model": "tiny-gpt2", "messages": user("Tell me"), "options": opts}),
    )
    .await;
    assert_eq!(text, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_describe_the_served_model() {
    let s = Server::ready(tiny_engine()).await;
    let models = s.get("/v1/models").await;
    assert_eq!(models.headers()["x-rill-model"], "tiny-gpt2");
    let models: Value = models.json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny-gpt2");
    assert_eq!(models["data"][0]["owned_by"], "rill");
    assert_eq!(
        models["data"][0]["capabilities"],
        serde_json::json!(["completion", "tools", "structured_output"])
    );
    let one: Value = s.get("/v1/models/tiny-gpt2").await.json().await.unwrap();
    assert_eq!(one["object"], "model");
    let tags: Value = s.get("/api/tags").await.json().await.unwrap();
    let tag = &tags["models"][0];
    assert_eq!(tag["name"], "tiny-gpt2:latest");
    assert_eq!(tag["details"]["family"], "gpt2");
    assert_eq!(tag["digest"].as_str().unwrap().len(), 64);
    let ps: Value = s.get("/api/ps").await.json().await.unwrap();
    assert_eq!(ps["models"][0]["name"], "tiny-gpt2:latest");
    let show = s
        .post_json("/api/show", &json!({"model": "tiny-gpt2:latest"}), 200)
        .await;
    assert_eq!(show["model_info"]["gpt2.context_length"], 256);
    assert_eq!(show["capabilities"], json!(["completion", "tools"]));
    assert!(
        show["template"].as_str().unwrap().contains("messages"),
        "{show}"
    );
    let version: Value = s.get("/api/version").await.json().await.unwrap();
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    let root = s.get("/").await;
    assert_eq!(root.status(), 200);
    assert!(root.text().await.unwrap().contains("rill is running"));
    let health: Value = s.get("/health").await.json().await.unwrap();
    assert_eq!(
        (health["status"].as_str(), health["model"].as_str()),
        (Some("ok"), Some("tiny-gpt2"))
    );
    let load = s
        .post_json("/api/generate", &json!({"model": "tiny-gpt2"}), 200)
        .await;
    assert_eq!(
        (load["done"].as_bool(), load["done_reason"].as_str()),
        (Some(true), Some("load"))
    );
    let load = s
        .post_json(
            "/api/chat",
            &json!({"model": "tiny-gpt2", "messages": []}),
            200,
        )
        .await;
    assert_eq!(
        (
            load["message"]["content"].as_str(),
            load["done_reason"].as_str()
        ),
        (Some(""), Some("load"))
    );
    let head = s.http.head(s.url("/")).send().await.unwrap();
    assert_eq!(head.status(), 200, "clients probe HEAD /");
    // Clients configured without the /v1 prefix reach the same routes.
    let bare: Value = s.get("/models").await.json().await.unwrap();
    assert_eq!(bare["data"][0]["id"], "tiny-gpt2");
    let v = s
        .post_json(
            "/chat/completions",
            &json!({"messages": user("x"), "max_tokens": 2}),
            200,
        )
        .await;
    assert_eq!(v["object"], "chat.completion");
    let v = s
        .post_json(
            "/completions",
            &json!({"prompt": "x", "max_tokens": 2}),
            200,
        )
        .await;
    assert_eq!(v["object"], "text_completion");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logit_bias_bans_and_forces_tokens() {
    let s = Server::ready(tiny_engine()).await;
    let first = |bias: Value| {
        let s = &s;
        async move {
            let v = s
                .post_json(
                    "/v1/completions",
                    &json!({"prompt": "Once upon a time", "max_tokens": 1, "temperature": 0, "logit_bias": bias}),
                    200,
                )
                .await;
            let text = v["choices"][0]["text"].clone();
            let ids = s
                .post_json("/tokenize", &json!({"content": text}), 200)
                .await;
            ids["tokens"][0].as_u64().unwrap()
        }
    };
    let free = first(json!({})).await;
    let banned = first(json!({ free.to_string(): -100 })).await;
    assert_ne!(banned, free, "a -100 bias must ban the greedy pick");
    let forced = first(json!({"262": 100})).await;
    assert_eq!(forced, 262, "a +100 bias must force the token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streaming_answers_carry_timings() {
    let s = Server::ready(tiny_engine()).await;
    let resp = s
        .post(
            "/v1/chat/completions",
            &json!({"messages": user("x"), "max_tokens": 2}),
        )
        .await;
    let timing = resp.headers()["server-timing"]
        .to_str()
        .unwrap()
        .to_string();
    for k in [
        "queue;dur=",
        "prefill;dur=",
        "ttft;dur=",
        "decode;dur=",
        "total;dur=",
    ] {
        assert!(timing.contains(k), "{timing}");
    }
}

/// SmolLM2, a real chat model: each dialect once, greedy and seeded, stream equal to whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_stream_equals_whole_in_every_dialect() {
    let s = Server::ready(smollm2_engine()).await;
    let q = user("What is the capital of France? Answer in one word.");
    let a = openai_chat_parity(
        &s,
        json!({"model": "smollm2", "messages": q, "max_tokens": 16, "temperature": 0}),
    )
    .await;
    assert!(a.contains("Paris"), "{a:?}");
    openai_chat_parity(
        &s,
        json!({"model": "smollm2", "messages": q, "max_tokens": 16, "temperature": 0.8, "seed": 11}),
    )
    .await;
    openai_completion_parity(
        &s,
        json!({"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0}),
    )
    .await;
    let greedy = json!({"num_predict": 16, "temperature": 0, "repeat_penalty": 1.0});
    let b = ollama_parity(
        &s,
        "/api/chat",
        json!({"model": "smollm2", "messages": q, "options": greedy}),
    )
    .await;
    assert!(b.contains("Paris"), "{b:?}");
    ollama_parity(
        &s,
        "/api/generate",
        json!({"model": "smollm2:latest", "prompt": "Say hello.", "options": {"num_predict": 12, "seed": 5}}),
    )
    .await;
    let c = anthropic_parity(
        &s,
        json!({"model": "smollm2", "messages": q, "max_tokens": 16, "temperature": 0, "system": "Be brief."}),
    )
    .await;
    assert!(c.contains("Paris"), "{c:?}");
    anthropic_parity(
        &s,
        json!({"model": "smollm2", "messages": q, "max_tokens": 16, "temperature": 1.0, "seed": 3}),
    )
    .await;
}

/// Ollama tools on `/api/chat`: earlier calls (arguments as objects) and a system prompt lead SmolLM2 to call
/// again; the call comes back whole with its arguments as an object, streamed in one line of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smollm2_ollama_tool_calls() {
    let s = Server::ready(smollm2_engine()).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather",
        "description": "Get the current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]);
    let mut messages =
        vec![json!({"role": "system", "content": "You only answer by calling a tool."})];
    for city in ["London", "Berlin", "Rome"] {
        messages.push(json!({"role": "user", "content": format!("Weather in {city}?")}));
        messages.push(json!({"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": city}}}]}));
    }
    messages.push(json!({"role": "user", "content": "Weather in Paris?"}));
    let body = json!({"model": "smollm2", "messages": messages, "tools": tools,
                      "options": {"temperature": 0, "num_predict": 60}, "stream": false});
    let whole = s.post_json("/api/chat", &body, 200).await;
    let call = json!({"function": {"name": "get_weather", "arguments": {"city": "Paris"}}});
    assert_eq!(
        whole["message"],
        json!({"role": "assistant", "content": "", "tool_calls": [call]}),
        "{whole}"
    );
    assert_eq!(whole["done_reason"], "stop");
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let lines = ndjson(s.post("/api/chat", &sbody).await).await;
    let calls: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"].get("tool_calls").is_some())
        .collect();
    assert_eq!(calls.len(), 1, "{lines:?}");
    assert_eq!(calls[0]["message"]["tool_calls"], json!([call]));
    assert_eq!(calls[0]["done"], false);
    let (text, last) = ollama_text(&lines);
    assert_eq!(
        (text.as_str(), last["done_reason"].as_str()),
        ("", Some("stop"))
    );
    // The call's result goes back as a `tool` message, and the conversation goes on.
    let mut then = body.clone();
    let history = then["messages"].as_array_mut().unwrap();
    history.push(whole["message"].clone());
    history.push(json!({"role": "tool", "content": "21 C, sunny", "tool_name": "get_weather"}));
    let v = s.post_json("/api/chat", &then, 200).await;
    assert_eq!(v["done"], true, "{v}");
    // The ollama SDK always sends a list: empty means no tools, and the answer is text.
    let mut plain = body.clone();
    plain["tools"] = json!([]);
    plain["messages"] = json!([{"role": "user", "content": "Say hi."}]);
    let v = s.post_json("/api/chat", &plain, 200).await;
    assert!(v["message"].get("tool_calls").is_none(), "{v}");
    let mut bad = body.clone();
    bad["tools"][0]["function"]["name"] = json!("no spaces allowed");
    let resp = s.post("/api/chat", &bad).await;
    assert_eq!(resp.status(), 400);
}
