//! Refusals before the first byte, each with a real status and its dialect's error shape: malformed bodies,
//! invalid fields, unknown models, over-long prompts, oversized bodies, missing API keys; CORS off by default.

mod http_support;

use http_support::*;
use rill::api::{ApiConfig, AppState};
use rill::engine::EngineConfig;
use serde_json::{json, Value};

fn fake() -> rill::engine::EngineHandle {
    let ids = gpt2_tokenizer().encode(" fine").unwrap();
    fake_engine(FakeLm::script(ids).context(64), EngineConfig::default())
}

async fn server(config: ApiConfig) -> Server {
    Server::start(AppState::ready(fake(), config)).await
}

fn user(text: &str) -> Value {
    json!([{ "role": "user", "content": text }])
}

#[derive(Clone, Copy, Debug)]
enum Shape {
    OpenAi,
    Ollama,
    Anthropic,
}

/// Sends `body` (JSON, or raw bytes when a string) and checks status and error shape; returns the message.
async fn refused(s: &Server, path: &str, body: Value, status: u16, shape: Shape) -> String {
    let req = s.http.post(s.url(path));
    let req = match body {
        Value::String(raw) => req.body(raw),
        v => req.json(&v),
    };
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), status, "{path}");
    assert_eq!(
        resp.headers()["content-type"],
        "application/json",
        "{path}: errors are never a stream"
    );
    let v: Value = resp.json().await.unwrap();
    match shape {
        Shape::OpenAi => {
            let e = v["error"].as_object().unwrap_or_else(|| panic!("{v}"));
            assert!(
                ["message", "type", "param", "code"]
                    .iter()
                    .all(|k| e.contains_key(*k)),
                "{v}"
            );
            v["error"]["message"].as_str().unwrap().to_string()
        }
        Shape::Ollama => {
            assert_eq!(v.as_object().unwrap().len(), 1, "{v}");
            v["error"]
                .as_str()
                .unwrap_or_else(|| panic!("{v}"))
                .to_string()
        }
        Shape::Anthropic => {
            assert_eq!(v["type"], "error", "{v}");
            assert!(v["error"]["type"].is_string(), "{v}");
            v["error"]["message"].as_str().unwrap().to_string()
        }
    }
}

const CHAT: &str = "/v1/chat/completions";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_invalid_requests_are_400_in_each_shape() {
    let s = server(test_config()).await;
    for (path, shape) in [
        (CHAT, Shape::OpenAi),
        ("/api/chat", Shape::Ollama),
        ("/v1/messages", Shape::Anthropic),
    ] {
        let m = refused(&s, path, json!("{\"messages\": [}"), 400, shape).await;
        assert!(m.contains("JSON"), "{path}: {m}");
        refused(
            &s,
            path,
            json!({"messages": "not a list", "model": "fake"}),
            400,
            shape,
        )
        .await;
    }
    let m = refused(&s, CHAT, json!({"stream": true}), 400, Shape::OpenAi).await;
    assert!(m.contains("messages"), "{m}");
    for (body, needle) in [
        (json!({"messages": user("x"), "n": 2}), "`n`"),
        (
            json!({"messages": user("x"), "temperature": 3}),
            "temperature",
        ),
        (
            json!({"messages": user("x"), "max_tokens": 0}),
            "max_tokens",
        ),
        (json!({"messages": user("x"), "top_p": 1.5}), "top_p"),
        (
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}),
            "image_url",
        ),
        (
            json!({"messages": [{"role": "function", "content": "x"}]}),
            "function",
        ),
        (
            json!({"messages": user("x"), "tool_choice": "required"}),
            "no tools",
        ),
        (
            json!({"messages": user("x"), "tools": [{"type": "function", "function": {"name": "a b"}}]}),
            "tool name",
        ),
        (
            json!({"messages": user("x"), "response_format": {"type": "json_schema",
                   "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": "bogus"}}}}}}),
            "invalid schema",
        ),
        (json!({"messages": user("x"), "seed": 1.5}), "seed"),
        (
            json!({"messages": user("x"), "logit_bias": {"abc": 1}}),
            "logit_bias",
        ),
        (
            json!({"messages": user("x"), "logit_bias": {"5": 101}}),
            "logit_bias",
        ),
        (json!({"messages": []}), "messages"),
    ] {
        let m = refused(&s, CHAT, body.clone(), 400, Shape::OpenAi).await;
        assert!(m.contains(needle), "{body}: {m}");
    }
    let m = refused(
        &s,
        "/v1/completions",
        json!({"prompt": ["a", "b"]}),
        400,
        Shape::OpenAi,
    )
    .await;
    assert!(m.contains("one prompt"), "{m}");
    let m = refused(
        &s,
        "/v1/messages",
        json!({"messages": user("x")}),
        400,
        Shape::Anthropic,
    )
    .await;
    assert!(m.contains("max_tokens"), "{m}");
    let m = refused(
        &s,
        "/v1/messages",
        json!({"messages": user("x"), "max_tokens": 5, "temperature": 1.5}),
        400,
        Shape::Anthropic,
    )
    .await;
    assert!(m.contains("temperature"), "{m}");
    let m = refused(
        &s,
        "/api/chat",
        json!({"messages": user("x")}),
        400,
        Shape::Ollama,
    )
    .await;
    assert!(m.contains("model"), "{m}");
    let m = refused(
        &s,
        "/api/generate",
        json!({"model": "fake", "prompt": "x", "format": "yaml"}),
        400,
        Shape::Ollama,
    )
    .await;
    assert!(m.contains("format"), "{m}");
    let m = refused(
        &s,
        "/api/chat",
        json!({"model": "fake", "messages": user("x"), "format": {"type": "object", "properties": {"a": {"type": "bogus"}}}}),
        400,
        Shape::Ollama,
    )
    .await;
    assert!(m.contains("invalid schema"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_models_and_routes_are_404() {
    let s = server(test_config()).await;
    let m = refused(
        &s,
        CHAT,
        json!({"model": "gpt-4o", "messages": user("x"), "stream": true}),
        404,
        Shape::OpenAi,
    )
    .await;
    assert!(m.contains("gpt-4o") && m.contains("fake"), "{m}");
    refused(
        &s,
        "/v1/messages",
        json!({"model": "claude", "messages": user("x"), "max_tokens": 3}),
        404,
        Shape::Anthropic,
    )
    .await;
    refused(
        &s,
        "/api/generate",
        json!({"model": "llama3", "prompt": "x"}),
        404,
        Shape::Ollama,
    )
    .await;
    refused(
        &s,
        "/api/show",
        json!({"model": "llama3"}),
        404,
        Shape::Ollama,
    )
    .await;
    assert_eq!(s.get("/v1/models/gpt-4o").await.status(), 404);
    let nf = s.get("/v2/nothing").await;
    assert_eq!(nf.status(), 404);
    assert!(nf.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("/v2/nothing"));
    let wrong = s.get(CHAT).await;
    assert_eq!(wrong.status(), 405);
    assert!(wrong.json::<Value>().await.unwrap()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("GET"));
    let wrong = s.get("/api/chat").await;
    assert_eq!(wrong.status(), 405);
    assert!(wrong.json::<Value>().await.unwrap()["error"].is_string());
    let nf = s.get("/api/nothing").await;
    assert_eq!(nf.status(), 404);
    assert!(nf.json::<Value>().await.unwrap()["error"].is_string());

    // With --any-model, OpenAI and Anthropic clients may send any name; Ollama's must still match.
    let s = server(ApiConfig {
        any_model: true,
        ..test_config()
    })
    .await;
    let v = s
        .post_json(
            CHAT,
            &json!({"model": "gpt-4o", "messages": user("x")}),
            200,
        )
        .await;
    assert_eq!(v["model"], "fake", "answers name the served model");
    s.post_json(
        "/v1/messages",
        &json!({"model": "claude-x", "messages": user("x"), "max_tokens": 3}),
        200,
    )
    .await;
    refused(
        &s,
        "/api/chat",
        json!({"model": "llama3", "messages": user("x")}),
        404,
        Shape::Ollama,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prompts_longer_than_the_context_are_400_naming_both_lengths() {
    let s = server(test_config()).await;
    let long = " word".repeat(100);
    let raw = s
        .post_json("/tokenize", &json!({"content": long}), 200)
        .await["count"]
        .as_u64()
        .unwrap();
    let chat = s
        .post_json("/tokenize", &json!({"messages": user(&long)}), 200)
        .await["count"]
        .as_u64()
        .unwrap();
    assert_eq!(raw, 100);
    for (path, body, shape, n) in [
        (
            CHAT,
            json!({"messages": user(&long), "stream": true}),
            Shape::OpenAi,
            chat,
        ),
        (
            "/v1/completions",
            json!({"prompt": long}),
            Shape::OpenAi,
            raw,
        ),
        (
            "/api/generate",
            json!({"model": "fake", "prompt": long, "raw": true}),
            Shape::Ollama,
            raw,
        ),
        (
            "/api/chat",
            json!({"model": "fake", "messages": user(&long)}),
            Shape::Ollama,
            chat,
        ),
        (
            "/v1/messages",
            json!({"messages": user(&long), "max_tokens": 5, "stream": true}),
            Shape::Anthropic,
            chat,
        ),
    ] {
        let m = refused(&s, path, body, 400, shape).await;
        assert!(
            m.contains(&format!("{n} tokens")) && m.contains("64 tokens"),
            "{path}: {m}"
        );
    }
    // A text far beyond the context is refused from its length, before it is encoded, in every dialect.
    let huge = "a ".repeat(500_000);
    for (path, body, shape) in [
        (CHAT, json!({"messages": user(&huge)}), Shape::OpenAi),
        ("/v1/completions", json!({"prompt": huge}), Shape::OpenAi),
        (
            "/api/generate",
            json!({"model": "fake", "prompt": huge, "raw": true}),
            Shape::Ollama,
        ),
        (
            "/v1/messages",
            json!({"messages": user(&huge), "max_tokens": 5}),
            Shape::Anthropic,
        ),
    ] {
        let m = refused(&s, path, body, 400, shape).await;
        assert!(
            m.contains("at least") && m.contains("bytes of text") && m.contains("64 tokens"),
            "{path}: {m}"
        );
    }
    // Ollama's num_ctx narrows the context; a prompt that does not fit is refused, not cut.
    let m = refused(
        &s,
        "/api/generate",
        json!({"model": "fake", "prompt": " word".repeat(10), "raw": true, "options": {"num_ctx": 8}}),
        400,
        Shape::Ollama,
    )
    .await;
    assert!(m.contains("10 tokens") && m.contains("8 tokens"), "{m}");
}

/// A request whose worst-case KV cache exceeds the server's budget is a 400 in every dialect, before any byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_kv_budget_are_400() {
    let ids = gpt2_tokenizer().encode(" fine").unwrap();
    // The fake model costs 4 bytes per position: a 40-byte budget holds 10 positions.
    let config = EngineConfig {
        kv_budget_bytes: 40,
        ..EngineConfig::default()
    };
    let engine = fake_engine(FakeLm::script(ids).context(64), config);
    let s = Server::start(AppState::ready(engine, test_config())).await;
    for (path, body, shape) in [
        (
            CHAT,
            json!({"messages": user("hi"), "max_tokens": 30, "stream": true}),
            Shape::OpenAi,
        ),
        (
            "/api/generate",
            json!({"model": "fake", "prompt": "hi", "options": {"num_predict": 30}}),
            Shape::Ollama,
        ),
        (
            "/v1/messages",
            json!({"messages": user("hi"), "max_tokens": 30}),
            Shape::Anthropic,
        ),
    ] {
        let m = refused(&s, path, body, 400, shape).await;
        assert!(
            m.contains("KV cache") && m.contains("budget of 40 bytes"),
            "{path}: {m}"
        );
    }
    // A request that fits is served.
    let ok = s
        .post_json(
            "/v1/completions",
            &json!({"prompt": "hi", "max_tokens": 3}),
            200,
        )
        .await;
    assert_eq!(ok["choices"][0]["text"], " fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_413() {
    let s = server(ApiConfig {
        body_limit: 1024,
        ..test_config()
    })
    .await;
    let big = "x".repeat(2000);
    refused(
        &s,
        CHAT,
        json!({"messages": user(&big)}),
        413,
        Shape::OpenAi,
    )
    .await;
    refused(
        &s,
        "/api/chat",
        json!({"model": "fake", "messages": user(&big)}),
        413,
        Shape::Ollama,
    )
    .await;
    let m = refused(
        &s,
        "/v1/messages",
        json!({"messages": user(&big), "max_tokens": 3}),
        413,
        Shape::Anthropic,
    )
    .await;
    assert!(m.contains("1024"), "{m}");
    // A declared length over the limit is a 413 at once, with no body sent (not a wait for the body timeout).
    let addr = s.addr;
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(20)))
            .unwrap();
        let head =
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 999999999\r\n\r\n";
        tcp.write_all(head.as_bytes()).unwrap();
        let mut buf = [0u8; 512];
        let n = tcp.read(&mut buf).unwrap_or(0);
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer:?}");
    s.post_json(CHAT, &json!({"messages": user("small")}), 200)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_guards_every_model_route() {
    let s = server(ApiConfig {
        api_key: Some("sekret".into()),
        ..test_config()
    })
    .await;
    let m = refused(&s, CHAT, json!({"messages": user("x")}), 401, Shape::OpenAi).await;
    assert!(m.contains("API key"), "{m}");
    refused(
        &s,
        "/api/chat",
        json!({"model": "fake", "messages": user("x")}),
        401,
        Shape::Ollama,
    )
    .await;
    refused(
        &s,
        "/v1/messages",
        json!({"messages": user("x"), "max_tokens": 3}),
        401,
        Shape::Anthropic,
    )
    .await;
    refused(&s, "/tokenize", json!({"content": "x"}), 401, Shape::OpenAi).await;
    for path in ["/v1/models", "/api/tags", "/api/ps", "/api/version"] {
        assert_eq!(s.get(path).await.status(), 401, "{path}");
    }
    let wrong = s
        .http
        .get(s.url("/v1/models"))
        .bearer_auth("nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let bearer = s
        .http
        .post(s.url(CHAT))
        .bearer_auth("sekret")
        .json(&json!({"messages": user("x")}))
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let header = s
        .http
        .post(s.url("/v1/messages"))
        .header("x-api-key", "sekret")
        .header("anthropic-version", "2023-06-01");
    let resp = header
        .json(&json!({"messages": user("x"), "max_tokens": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(s.get("/health").await.status(), 200, "health stays open");
    assert_eq!(
        s.get("/").await.status(),
        200,
        "the liveness text stays open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_unless_an_origin_is_allowed() {
    let origin = "http://app.example";
    let s = server(test_config()).await;
    let r = s
        .http
        .get(s.url("/v1/models"))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("access-control-allow-origin"));

    let s = server(ApiConfig {
        cors_origins: vec![origin.into()],
        ..test_config()
    })
    .await;
    let r = s
        .http
        .get(s.url("/v1/models"))
        .header("origin", origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], origin);
    let pre = s
        .http
        .request(reqwest::Method::OPTIONS, s.url(CHAT))
        .header("origin", origin)
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type,authorization",
        )
        .send()
        .await
        .unwrap();
    assert!(pre.status().is_success(), "{}", pre.status());
    assert_eq!(pre.headers()["access-control-allow-origin"], origin);
    // Named, not `*`: a wildcard does not cover `Authorization`, where browser SDKs send the key.
    let allowed = pre.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap();
    assert!(allowed.contains("authorization"), "{allowed}");
    let other = s
        .http
        .get(s.url("/v1/models"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}
